"""Global options after the subcommand (issue 11): ``cxsmtp send SPOOL --debug``,
``cxsmtp server list --config X`` -- through Typer's runner, as real subprocesses, and
the rewriting of the command line itself (cli/argv.py) on the real command tree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer.main
from conftest import Isolated, run_cxsmtp
from servers import smtp_server
from typer.testing import CliRunner

from carerix_smtp.cli.app import app
from carerix_smtp.cli.argv import hoist_global_options
from carerix_smtp.config.file import Config, ServerEntry, Settings, save_config

runner = CliRunner()


def write_config(path: Path, *names: str, host: str = "[127.0.0.1]:2525") -> Path:
    config = Config(path=path, settings=Settings(default_server=names[0] if names else None))
    for name in names:
        config.servers[name] = ServerEntry(
            name=name, host=host, connect_timeout=5.0, command_timeout=5.0
        )
    save_config(config)
    return path


@pytest.mark.parametrize(
    ("argv", "expected", "json_"),
    [
        pytest.param(
            ["send", "SP", "--debug"], ["--debug", "send", "SP"], False, id="flag-after-argument"
        ),
        pytest.param(
            ["server", "list", "--config", "X", "--json"],
            ["--config", "X", "server", "list", "--json"],
            True,
            id="nested-with-value",
        ),
        pytest.param(
            ["--config", "A", "send", "SP", "--config=B", "-v", "-q"],
            ["--config", "A", "--config=B", "-v", "send", "SP", "-q"],
            False,
            id="later-wins-equals-form",
        ),
        pytest.param(
            ["send", "--server", "--debug", "SP"],
            ["send", "--server", "--debug", "SP"],
            False,
            id="option-value-that-looks-global",
        ),
        pytest.param(
            ["enqueue", "SP", "--", "-v", "--debug"],
            ["enqueue", "SP", "--", "-v", "--debug"],
            False,
            id="after-double-dash",
        ),
        pytest.param(
            ["server", "add", "x", "H", "--password-command", "--json"],
            ["server", "add", "x", "H", "--password-command", "--json"],
            False,
            id="json-as-a-value-is-not-json",
        ),
        pytest.param(["nosuch", "--debug"], ["nosuch", "--debug"], False, id="unknown-command"),
    ],
)
def test_hoist_global_options(argv: list[str], expected: list[str], json_: bool) -> None:
    root = typer.main.get_command(app)
    with root.make_context("cxsmtp", ["--help"], resilient_parsing=True) as ctx:
        result = hoist_global_options(root, ctx, argv)
    assert (result.args, result.json) == (expected, json_)


def test_config_after_subcommand_is_used(tmp_path: Path) -> None:
    other = write_config(tmp_path / "other.toml", "elsewhere")
    before = runner.invoke(app, ["server", "list"])
    assert before.exit_code == 0 and "elsewhere" not in before.output
    for argv in (
        ["server", "list", "--config", str(other)],
        ["server", "list", f"--config={other}"],
        ["--config", "/nonexistent/ignored.toml", "server", "list", "--config", str(other)],
    ):
        result = runner.invoke(app, argv)
        assert result.exit_code == 0, result.output
        assert "elsewhere" in result.output and "no servers yet" not in result.output


def test_state_dir_after_subcommand_is_used(tmp_path: Path) -> None:
    state = tmp_path / "elsewhere-state"
    result = runner.invoke(app, ["doctor", "--json", "--state-dir", str(state)])
    checks = {check["name"]: check["detail"] for check in json.loads(result.stdout)}
    assert str(state) in checks["state dir"]


def test_debug_after_subcommand_shows_the_traceback(isolated: Isolated) -> None:
    write_config(isolated.config, "local")
    result = run_cxsmtp("server", "show", "nope", "--debug")
    assert result.returncode == 78
    assert "Traceback (most recent call last)" in result.stderr
    assert "cxsmtp: error: no server named 'nope'" in result.stderr
    plain = run_cxsmtp("server", "show", "nope")
    assert plain.returncode == 78 and "Traceback" not in plain.stderr


def test_verbose_and_debug_after_subcommand_log_a_real_test(isolated: Isolated) -> None:
    with smtp_server() as server:
        write_config(isolated.config, "local", host=server.host)
        quiet = run_cxsmtp("test", "local")
        verbose = run_cxsmtp("test", "local", "-v")
        debug = run_cxsmtp("test", "local", "--debug")
    assert (quiet.returncode, verbose.returncode, debug.returncode) == (0, 0, 0), debug.stderr
    assert "cxsmtp: INFO:" not in quiet.stderr and "cxsmtp: DEBUG:" not in quiet.stderr
    assert "cxsmtp: INFO:" in verbose.stderr and "cxsmtp: DEBUG:" not in verbose.stderr
    assert "cxsmtp: DEBUG:" in debug.stderr and "C: EHLO" in debug.stderr
    assert verbose.stdout.rstrip().endswith("PASSED")


def test_global_looking_value_stays_with_its_option(isolated: Isolated) -> None:
    write_config(isolated.config, "local")
    result = runner.invoke(app, ["send", str(isolated.config.parent), "--server", "--debug"])
    assert result.exit_code == 78
    assert "no server named '--debug'" in result.stderr


def test_subcommand_help_mentions_the_global_options() -> None:
    for argv in (["send", "--help"], ["server", "list", "--help"]):
        result = runner.invoke(app, argv)
        assert result.exit_code == 0
        assert "may also follow the command: --config PATH" in " ".join(result.output.split())
    root = runner.invoke(app, ["--help"])
    assert "may also follow the command (cxsmtp send SPOOL --debug)" in " ".join(
        root.output.split()
    )
