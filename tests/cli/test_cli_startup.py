"""``cxsmtp send`` on an empty spool imports little (issue 12: cron starts it every few
minutes): no pydantic (Typer's value coercion), no rich, ssl, sqlite3 or email; and the
values Typer would reject are still rejected with Typer's own words."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cxsmtp

HEAVY = ("pydantic", "rich", "ssl", "sqlite3", "email", "dns", "carerix_smtp.smtp")
PROBE = """
import json, sys
sys.argv = ["cxsmtp", *sys.argv[1:]]
from carerix_smtp.cli.app import main
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
heavy = sorted({m.split(".")[0] if not m.startswith("carerix") else ".".join(m.split(".")[:2])
                for m in sys.modules})
mine = sorted(m for m in sys.modules if m.startswith("carerix_smtp."))
print(json.dumps({"code": code, "modules": heavy, "mine": mine}), file=sys.stderr)
"""


def _report(*args: str) -> Any:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, check=False
    )
    return json.loads(result.stderr.strip().splitlines()[-1])


def _imported(*args: str) -> tuple[Any, set[str]]:
    report = _report(*args)
    return report["code"], set(report["modules"])


def test_send_on_an_empty_spool_imports_no_heavy_module(tmp_path: Path, configured: Any) -> None:
    configured()
    spool = tmp_path / "empty"
    spool.mkdir()
    code, modules = _imported("send", str(spool))
    assert code in (0, None)
    assert modules.isdisjoint(HEAVY), sorted(modules & set(HEAVY))


def test_send_does_not_load_the_sink(tmp_path: Path, configured: Any) -> None:
    """`cxsmtp sink`'s option default comes from the sink package itself; its config
    module (dataclasses and rules, a few ms) loads only when the sink runs."""
    configured()
    spool = tmp_path / "empty"
    spool.mkdir()
    report = _report("send", str(spool))
    assert report["code"] in (0, None)
    assert "carerix_smtp.sink" in report["mine"]  # the package: DEFAULT_LISTEN
    assert [m for m in report["mine"] if m.startswith("carerix_smtp.sink.")] == []


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "Input should be greater than or equal to 1"),
        ("ten", "Input should be a valid integer, unable to parse string as an integer"),
    ],
    ids=["below-min", "not-a-number"],
)
def test_a_value_typer_rejects_keeps_typers_message(
    tmp_path: Path, configured: Any, value: str, message: str
) -> None:
    configured()
    result = run_cxsmtp("send", "--max-messages", value, str(tmp_path))
    assert result.returncode == 64
    assert f"Invalid value for '--max-messages' / '-n': {message}" in result.stderr


def test_plain_values_arrive_typed(tmp_path: Path, configured: Any) -> None:
    configured()
    spool = tmp_path / "spool"
    spool.mkdir()
    result = run_cxsmtp("send", "--dry-run", "--json", "-n", "3", str(spool))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["messages"] == 0
