"""``--json`` also on failure (issue 11): every command that has ``--json`` prints one
JSON object on stdout when it fails -- ``{"ok": false, "error": {code, kind, message,
hint}}`` -- while stderr keeps its ``cxsmtp: error:`` line and the exit code stays."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import typer.main
from conftest import Isolated, assert_no_traceback, run_cxsmtp
from typer.testing import CliRunner

from carerix_smtp.cli.app import app

runner = CliRunner()
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\S* ")


def json_commands() -> list[tuple[str, ...]]:
    """Every command of the real tree with a --json option."""
    found: list[tuple[str, ...]] = []

    def walk(command: Any, path: tuple[str, ...]) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, (*path, name))
        if not hasattr(command, "commands") and any(
            "--json" in getattr(p, "opts", ()) for p in command.params
        ):
            found.append(path)

    walk(typer.main.get_command(app), ())
    return sorted(found)


def unstamped(stderr: str) -> list[str]:
    """stderr's lines without the ISO timestamp ``send`` puts before them off a terminal."""
    return [STAMP.sub("", line) for line in stderr.splitlines()]


def error_object(stdout: str) -> dict[str, Any]:
    data = json.loads(stdout)  # exactly one JSON document, nothing else on stdout
    assert set(data) == {"ok", "error"} and data["ok"] is False
    assert set(data["error"]) == {"code", "kind", "message", "hint"}
    return dict(data["error"])


# A failure per command, with the exit code and error class it must report.  doctor
# reports what it finds wrong in its own JSON list (like a failed ``test``): only
# usage errors reach the edge, tested for every command below.
BROKEN = "[servers\n"  # not TOML
FAILURES: dict[tuple[str, ...], tuple[list[str], str | None, int, str] | None] = {
    ("server", "list"): (["server", "list"], BROKEN, 78, "ConfigError"),
    ("server", "show"): (["server", "show", "nope"], None, 78, "UnknownServerError"),
    ("settings", "show"): (["settings", "show"], BROKEN, 78, "ConfigError"),
    ("test",): (["test", "nope"], None, 78, "UnknownServerError"),
    ("send",): (["send", "{missing}"], None, 78, "SpoolError"),
    ("status",): (["status", "{missing}"], None, 78, "SpoolError"),
    ("queue", "list"): (["queue", "list", "{missing}"], None, 78, "SpoolError"),
    ("queue", "show"): (["queue", "show", "nope", "{missing}"], None, 78, "SpoolError"),
    ("queue", "purge"): (
        ["queue", "purge", "--older-than", "7d", "{missing}"],
        None,
        78,
        "SpoolError",
    ),
    ("dkim", "list"): (["dkim", "list"], BROKEN, 78, "ConfigError"),
    ("dkim", "show"): (["dkim", "show", "nope.example"], None, 78, "ConfigError"),
    ("doctor",): None,
    ("ledger", "show"): (["ledger", "show"], BROKEN, 78, "ConfigError"),  # issue 16
}


def test_every_json_command_has_a_failure_case() -> None:
    assert set(json_commands()) == set(FAILURES)


@pytest.mark.parametrize(
    "command", [c for c, case in FAILURES.items() if case], ids=lambda c: "-".join(c)
)
def test_error_is_one_json_object_same_exit_and_stderr(
    command: tuple[str, ...], isolated: Isolated, tmp_path: Path
) -> None:
    case = FAILURES[command]
    assert case is not None
    argv, config_text, code, kind = case
    if config_text is not None:
        isolated.config.parent.mkdir(parents=True, exist_ok=True)
        isolated.config.write_text(config_text)
    argv = [a.format(missing=tmp_path / "missing-spool") for a in argv]
    plain = runner.invoke(app, argv)
    result = runner.invoke(app, [*argv, "--json"])
    assert (plain.exit_code, result.exit_code) == (code, code)
    assert plain.stdout == ""
    error = error_object(result.stdout)
    assert (error["code"], error["kind"]) == (code, kind)
    lines = unstamped(result.stderr)
    assert lines == unstamped(plain.stderr)  # the same cxsmtp: error: line (and hint)
    assert lines[0] == f"cxsmtp: error: {error['message']}"
    hint = [line for line in lines if line.startswith("cxsmtp: hint: ")]
    assert error["hint"] == (hint[0].removeprefix("cxsmtp: hint: ") if hint else None)


@pytest.mark.parametrize("command", sorted(FAILURES), ids=lambda c: "-".join(c))
def test_usage_error_with_json_is_json_exit_64(command: tuple[str, ...]) -> None:
    result = runner.invoke(app, [*command, "--json", "--no-such-option"])
    assert result.exit_code == 64
    error = error_object(result.stdout)
    assert error == {
        "code": 64,
        "kind": "UsageError",
        "message": "No such option: --no-such-option",
        "hint": None,
    }
    assert "Error: No such option: --no-such-option" in result.stderr


def test_real_process_json_error_and_exit_code(tmp_path: Path) -> None:
    missing = tmp_path / "missing-spool"
    result = run_cxsmtp("status", str(missing), "--json", "--config", str(tmp_path / "c.toml"))
    assert result.returncode == 78
    error = error_object(result.stdout)
    assert error["kind"] == "SpoolError" and str(missing) in error["message"]
    assert f"cxsmtp: error: {error['message']}" in result.stderr
    result = run_cxsmtp("send", "--json", "--config", str(tmp_path / "c.toml"))
    assert result.returncode == 78  # no SPOOL and none configured (issue 13)
    error = error_object(result.stdout)
    assert error["kind"] == "NoSpoolError" and "cxsmtp settings set spool" in error["message"]


def test_without_json_usage_errors_print_nothing_on_stdout() -> None:
    result = runner.invoke(app, ["send", "--no-such-option"])
    assert (result.exit_code, result.stdout) == (64, "")


def test_success_output_is_unchanged() -> None:
    result = runner.invoke(app, ["server", "list", "--json"])
    assert (result.exit_code, json.loads(result.stdout)) == (0, [])


SCRIPT = """\
import errno, typer
from carerix_smtp.cli import app as cli

@cli.app.command("boom", hidden=True)
def boom(json_: bool = typer.Option(False, "--json")) -> None:
{body}

cli.main()
"""


def run_boom(body: str, *argv: str) -> subprocess.CompletedProcess[str]:
    script = SCRIPT.format(body=textwrap.indent(textwrap.dedent(body), "    "))
    result = subprocess.run(
        [sys.executable, "-c", script, "boom", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert_no_traceback(argv, result.stderr)
    return result


def test_unexpected_error_with_json_is_json_exit_70() -> None:
    result = run_boom("raise RuntimeError('the widget\\n broke')", "--json")
    assert result.returncode == 70
    assert error_object(result.stdout) == {
        "code": 70,
        "kind": "RuntimeError",
        "message": "unexpected RuntimeError: the widget broke",
        "hint": "run with --debug for the traceback",
    }
    assert result.stderr.startswith("cxsmtp: error: unexpected RuntimeError: the widget broke")


def test_unwrapped_os_error_with_json_is_a_storage_error() -> None:
    body = "raise OSError(errno.ENOSPC, 'No space left on device', '/var/spool/x/tmp/a')"
    result = run_boom(body, "--json")
    assert result.returncode == 75
    error = error_object(result.stdout)
    assert (error["code"], error["kind"]) == (75, "StorageError")
    assert error["message"] == "cannot access /var/spool/x/tmp/a: No space left on device"
