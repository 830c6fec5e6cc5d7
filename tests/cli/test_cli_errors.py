"""Errors at the CLI's edge (cli/errors.py): whatever goes wrong, cron gets one line
``cxsmtp: error: …`` and an exit code from the README's table -- a traceback only
with ``--debug``, never with locals.

The real ``cxsmtp`` entry point (``cli.app.main``) runs in a subprocess with one
extra hidden command, ``boom``, whose body raises what the test needs: the only
way to reach the guard with a bug the code does not have.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import TRACEBACK, assert_no_traceback, run_cxsmtp
from typer.testing import CliRunner

import carerix_smtp.config.file as config_file
from carerix_smtp.cli.app import app

HINT = "(run with --debug for the traceback)"

SCRIPT = """\
import errno, logging, os, threading
import typer
from carerix_smtp.cli import app as cli
from carerix_smtp.errors import ConfigError

@cli.app.command("boom", hidden=True)
def boom() -> None:
{body}

cli.main()
"""


def run_boom(body: str, *global_options: str) -> subprocess.CompletedProcess[str]:
    """``cxsmtp [global_options] boom`` with ``boom`` running ``body``."""
    script = SCRIPT.format(body=textwrap.indent(textwrap.dedent(body), "    "))
    argv = [*global_options, "boom"]
    result = subprocess.run(
        [sys.executable, "-c", script, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert_no_traceback(argv, result.stderr)
    return result


@pytest.mark.parametrize(
    ("body", "line"),
    [
        pytest.param(
            "raise RuntimeError('the widget\\n  broke')",
            f"cxsmtp: error: unexpected RuntimeError: the widget broke {HINT}",
            id="message-on-one-line",
        ),
        pytest.param(
            "raise KeyError('x')",
            f"cxsmtp: error: unexpected KeyError: 'x' {HINT}",
            id="key-error",
        ),
        pytest.param(
            "raise RuntimeError()",
            f"cxsmtp: error: unexpected RuntimeError {HINT}",
            id="no-message",
        ),
    ],
)
def test_unexpected_exception_is_one_line_exit_70(body: str, line: str) -> None:
    result = run_boom(body)
    assert (result.returncode, result.stdout) == (70, "")
    assert result.stderr.splitlines() == [line]


def test_a_huge_message_is_cut() -> None:
    result = run_boom("raise ValueError('x' * 100_000)")
    assert result.returncode == 70
    (line,) = result.stderr.splitlines()
    assert line.startswith("cxsmtp: error: unexpected ValueError: xxx") and line.endswith(HINT)
    assert len(line) < 600


def test_debug_shows_the_traceback_but_never_locals() -> None:
    body = """
    password = "hunter2-in-a-local"
    raise RuntimeError("boom " + str(len(password)))
    """
    result = run_boom(body, "--debug")
    assert result.returncode == 70
    assert TRACEBACK in result.stderr and "RuntimeError: boom 18" in result.stderr
    assert result.stderr.splitlines()[-1] == "cxsmtp: error: unexpected RuntimeError: boom 18"
    assert "hunter2-in-a-local" not in result.stderr


@pytest.mark.parametrize(
    ("code", "exit_code"),
    [
        pytest.param(errno.ENOSPC, 75, id="ENOSPC-later-run-may-succeed"),
        pytest.param(errno.EIO, 75, id="EIO"),
        pytest.param(errno.EACCES, 77, id="EACCES-permission"),
        pytest.param(errno.EROFS, 74, id="EROFS-ioerr"),
    ],
)
def test_an_os_error_the_core_did_not_wrap_names_path_and_reason(code: int, exit_code: int) -> None:
    path = "/var/spool/mail/.cxsmtp/journal"
    result = run_boom(f"raise OSError({code}, os.strerror({code}), {path!r})")
    assert result.returncode == exit_code
    assert result.stderr.splitlines() == [
        f"cxsmtp: error: cannot access {path}: {os.strerror(code)}"
    ]


def test_cxsmtp_errors_are_printed_as_before() -> None:
    result = run_boom("raise ConfigError('server x: bad port', hint='use 1-65535')")
    assert result.returncode == 78
    assert result.stderr.splitlines() == [
        "cxsmtp: error: server x: bad port",
        "cxsmtp: hint: use 1-65535",
    ]


def test_typer_exits_pass_through_unchanged() -> None:
    result = run_boom("raise typer.Exit(3)")
    assert (result.returncode, result.stdout, result.stderr) == (3, "", "")


def test_ctrl_c_outside_a_send_exits_130_quietly() -> None:
    """Today's behaviour, kept: click turns KeyboardInterrupt into exit 130."""
    result = run_boom("raise KeyboardInterrupt")
    assert (result.returncode, result.stderr) == (130, "")


def test_usage_errors_are_still_click_s_exit_64() -> None:
    result = run_cxsmtp("server", "show")
    assert result.returncode == 64
    assert "Usage:" in result.stderr and "Missing argument 'NAME'" in result.stderr
    unknown = run_cxsmtp("--no-such-option")
    assert unknown.returncode == 64 and "No such option" in unknown.stderr
    assert "unexpected" not in result.stderr + unknown.stderr


def test_an_exception_in_a_thread_is_one_line() -> None:
    body = """
    worker = threading.Thread(target=lambda: 1 / 0, name="worker-1")
    worker.start()
    worker.join()
    """
    result = run_boom(body)
    assert result.returncode == 0
    assert result.stderr.splitlines() == [
        f"cxsmtp: error: unexpected ZeroDivisionError in thread worker-1: division by zero {HINT}"
    ]
    assert TRACEBACK in run_boom(body, "--debug").stderr


def test_a_logged_exception_shows_no_traceback_without_debug() -> None:
    body = """
    try:
        1 / 0
    except ZeroDivisionError:
        logging.getLogger("carerix_smtp.somewhere").exception("it failed")
    """
    result = run_boom(body)
    assert (result.returncode, result.stderr.splitlines()) == (0, ["cxsmtp: ERROR: it failed"])
    assert TRACEBACK in run_boom(body, "--debug").stderr


def test_the_guard_also_holds_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through CliRunner (as the other CLI tests run): exit 70 and the one line; the
    suite-wide check in conftest.py would fail this test if the exception escaped."""

    def broken(path: object) -> None:
        raise RuntimeError("config reader broke")

    monkeypatch.setattr(config_file, "load_config", broken)
    result = CliRunner().invoke(app, ["server", "list"])
    assert result.exit_code == 70
    assert f"cxsmtp: error: unexpected RuntimeError: config reader broke {HINT}" in result.output
