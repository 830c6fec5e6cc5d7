"""OAuth2 sign-in (issue 14) through the real ``cxsmtp``: ``server add/edit
--oauth-token-command``, ``send`` and ``test`` against ``cxsmtp sink --oauth-token``
(a subprocess, and the in-process sink), an expired token fetched again, two
refusals -> 77 with the provider's status, and the token in no output or file."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Isolated, cxsmtp_argv, error_lines
from servers import make_spool, token_command, token_runs

GOOD = "ya29.a0-good-token-XYZ"
OLD = "ya29.a0-expired-token-QRS"
USER = "me@example.com"


def everything(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


@pytest.fixture
def tls_oauth(tmp_path: Path, sink_factory: Any) -> Any:
    """``tls_oauth(*tokens, **sink_options)``: a STARTTLS sink that takes GOOD for USER
    (AUTH required), the entry "g" added with ``server add`` and a token command that
    prints ``tokens`` in turn; returns (sink, file counting the command's runs)."""

    def make(*tokens: str, add_args: tuple[str, ...] = (), **kw: Any) -> tuple[Any, Path]:
        ca = tmp_path / "ca.pem"
        options = {"tls": "starttls", "ca_out": ca, "oauth_tokens": (GOOD,), "oauth_user": USER}
        sink = sink_factory(auth_required=True, **{**options, **kw})
        command, runs = token_command(tmp_path / "tok", *tokens)
        added = _add(sink.port, ca, command, *add_args)
        assert added.returncode == 0, added.stderr
        return sink, runs

    return make


def _add(port: int, ca: Path, command: str, *extra: str) -> subprocess.CompletedProcess[str]:
    from conftest import run_cxsmtp

    return run_cxsmtp(
        "server", "add", "g", f"[127.0.0.1]:{port}", "--username", USER,
        "--oauth-token-command", command, "--ca-file", str(ca), "--set", "connect_timeout=5",
        "--set", "command_timeout=5", *extra,
    )  # fmt: skip


# --- server add / edit / show --------------------------------------------------------------


def invoke(*args: str) -> Any:
    """In-process (fast); the subprocess runs below cover the real exit path."""
    from typer.testing import CliRunner

    from carerix_smtp.cli.app import app

    return CliRunner().invoke(app, list(args))


def test_add_show_and_edit(isolated: Isolated) -> None:
    added = invoke(
        "server", "add", "g", "[smtp.gmail.com]:587", "--username", USER,
        "--oauth-token-command", "oama access me@example.com",
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    assert "added server 'g'" in added.output and "Password" not in added.output
    shown = json.loads(invoke("server", "show", "g", "--json").output)
    assert shown["oauth_token_command"] == "oama access me@example.com"
    assert shown["password_source"] == "oauth2" and shown["tls_mode"].startswith("starttls")
    assert "password=oauth2" in invoke("server", "list").output
    edited = invoke("server", "edit", "g", "--oauth-token-command", "oama access other")
    assert edited.exit_code == 0, edited.output
    text = invoke("server", "show", "g").output
    assert any(line.split()[:1] == ["oauth_token_command"] for line in text.splitlines())
    assert "oama access other" in text
    unset = invoke("server", "edit", "g", "--unset", "oauth_token_command")
    assert unset.exit_code == 0, unset.output
    assert json.loads(invoke("server", "show", "g", "--json").output)["oauth_token_command"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["--username", USER, "--password-command", "pass x"],
            "leave out --password-command",
            id="with-password-command",
        ),
        pytest.param(["--login", f"{USER} pw"], "leave out --login", id="with-login"),
        pytest.param([], "needs a username", id="no-username"),
    ],
)
def test_add_refusals(isolated: Isolated, args: list[str], message: str) -> None:
    result = invoke(
        "server", "add", "g", "[smtp.gmail.com]:587", "--oauth-token-command", "oama x", *args
    )
    assert result.exit_code == 64, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("cxsmtp: error: ")]
    assert len(errors) == 1 and message in errors[0]
    assert not isolated.config.exists() or "oama" not in isolated.config.read_text()


# --- send and test against the sink ------------------------------------------------------


def test_send_and_test_with_oauthbearer(
    tmp_path: Path, isolated: Isolated, cxsmtp: Any, tls_oauth: Any
) -> None:
    sink, runs = tls_oauth(GOOD)
    probed = cxsmtp("test", "g", "--to", "me@example.com")
    assert probed.returncode == 0, everything(probed)
    assert "AUTH OAUTHBEARER" in probed.stdout and probed.stdout.rstrip().endswith("PASSED")
    sent = cxsmtp("send", str(make_spool(tmp_path, 3)))
    assert sent.returncode == 0, sent.stderr
    assert len(sink.messages) == 4 and {m.auth_user for m in sink.messages} == {USER}
    assert token_runs(runs) == 2  # once per run: one for test, one for send


def test_xoauth2_when_only_it_is_offered(isolated: Isolated, cxsmtp: Any, tls_oauth: Any) -> None:
    tls_oauth(GOOD, oauth_mechanisms=("XOAUTH2",))
    probed = cxsmtp("test", "g", "--json")
    assert probed.returncode == 0, everything(probed)
    auth = next(p for p in json.loads(probed.stdout)["phases"] if p["name"] == "auth")
    assert auth["detail"]["mechanism"] == "XOAUTH2"


@pytest.mark.parametrize("connections", [1, 2])
def test_expired_token_then_refreshed(
    tmp_path: Path, isolated: Isolated, cxsmtp: Any, tls_oauth: Any, connections: int
) -> None:
    """Fetched again once; with two connections the second one takes the token the
    first one fetched (no third run of the command)."""
    sink, runs = tls_oauth(OLD, GOOD, add_args=("--set", f"connections={connections}"))
    sent = cxsmtp("send", str(make_spool(tmp_path, 4)))
    assert sent.returncode == 0, sent.stderr
    assert len(sink.messages) == 4 and token_runs(runs) == 2
    assert len({m.session_peer for m in sink.messages}) == connections


def test_refresh_command_failure_exit_78(
    tmp_path: Path, isolated: Isolated, cxsmtp: Any, tls_oauth: Any
) -> None:
    """The command worked once, then fails when the refused token is fetched again."""
    sink, runs = tls_oauth(OLD)
    script = runs.parent / "token.py"
    script.write_text(
        "import pathlib, sys\n"
        "runs = pathlib.Path(sys.argv[0]).parent / 'runs'\n"
        "n = int(runs.read_text()) if runs.exists() else 0\n"
        "runs.write_text(str(n + 1))\n"
        f"print({OLD!r}) if n == 0 else sys.exit(3)\n"
    )
    spool = make_spool(tmp_path, 1)
    sent = cxsmtp("send", str(spool))
    assert sent.returncode == 78, sent.stderr
    errors = [line for line in error_lines(sent.stderr) if line.startswith("cxsmtp: error: ")]
    assert len(errors) == 1 and "oauth_token_command" in errors[0]
    assert "exited with status 3" in errors[0] and OLD not in sent.stderr
    assert token_runs(runs) == 2 and sink.messages == [] and len(list(spool.glob("*.eml"))) == 1


def test_two_rejections_exit_77_with_the_status(
    tmp_path: Path, isolated: Isolated, cxsmtp: Any, tls_oauth: Any
) -> None:
    sink, runs = tls_oauth(OLD, "ya29.also-wrong")
    spool = make_spool(tmp_path, 2)
    sent = cxsmtp("send", str(spool))
    assert sent.returncode == 77, sent.stderr
    lines = error_lines(sent.stderr)
    error = [line for line in lines if line.startswith("cxsmtp: error: ")]
    assert error and "status 401" in error[0] and "OAUTHBEARER" in error[0]
    assert "check the token command: run it by hand" in error[0]
    assert sink.messages == [] and len(list(spool.glob("*.eml"))) == 2
    assert token_runs(runs) == 2

    probed = cxsmtp("test", "g")
    assert probed.returncode == 77, everything(probed)
    assert "✘ auth" in probed.stdout and "status 401" in probed.stdout
    assert "check the token command" in probed.stdout
    assert "hint: cxsmtp server show g shows the command" in probed.stdout
    assert OLD not in everything(sent) + everything(probed)


def test_token_command_failure_exit_78(isolated: Isolated, cxsmtp: Any, tls_oauth: Any) -> None:
    _, runs = tls_oauth(GOOD)
    (runs.parent / "tokens").write_text("")  # the command fails now (IndexError)
    probed = cxsmtp("test", "g")
    assert probed.returncode == 78, everything(probed)
    assert "✘ auth" in probed.stdout and "oauth_token_command" in probed.stdout
    assert "exited with status 1" in probed.stdout and "IndexError" not in everything(probed)
    assert "hint: run the server's oauth_token_command by hand" in probed.stdout
    assert "✔ tls" in probed.stdout and "✘ auth" in probed.stdout


# --- the real `cxsmtp sink --oauth-token` ----------------------------------------------


@pytest.fixture
def sink_process(tmp_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> tuple[int, subprocess.Popen[str]]:
        port_file = tmp_path / "port"
        proc = subprocess.Popen(
            [*cxsmtp_argv(), "sink", "--listen", "127.0.0.1:0", "--port-file", str(port_file),
             "--out", str(tmp_path / "mail"), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
        )  # fmt: skip
        procs.append(proc)
        assert proc.stdout is not None
        banner = proc.stdout.readline()  # printed once listening, after the port file
        assert "listening on" in banner, proc.stderr.read() if proc.stderr else ""
        assert "OAuth2 OAUTHBEARER XOAUTH2 for me@example.com" in banner
        assert GOOD not in banner
        return int(port_file.read_text()), proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
        proc.communicate(timeout=10)


@pytest.mark.timeout(60)
def test_against_the_sink_command_and_no_leak(
    tmp_path: Path, isolated: Isolated, cxsmtp: Any, sink_process: Any
) -> None:
    """The whole path with the real sink; then the token is looked for in every
    output (with --debug logs), the config, and every file the runs wrote."""
    ca = tmp_path / "ca.pem"
    port, proc = sink_process(
        "--tls", "starttls", "--ca-out", str(ca), "--auth-required",
        "--oauth-token", GOOD, "--oauth-user", USER,
    )  # fmt: skip
    command, runs = token_command(tmp_path / "tok", OLD, GOOD)
    outputs = [_add(port, ca, command)]
    outputs.append(cxsmtp("--debug", "test", "g", "--to", "me@example.com"))
    outputs.append(cxsmtp("--debug", "send", str(make_spool(tmp_path, 2))))
    outputs.append(cxsmtp("--debug", "server", "show", "g", "--json"))
    outputs.append(cxsmtp("server", "list"))
    assert [r.returncode for r in outputs] == [0, 0, 0, 0, 0], [r.stderr for r in outputs]
    assert "AUTH OAUTHBEARER (token fetched again after a refusal)" in outputs[1].stdout
    assert token_runs(runs) == 3  # test: OLD then GOOD; send: GOOD first time
    assert len(list((tmp_path / "mail").glob("*.eml"))) == 3
    proc.terminate()
    out, err = proc.communicate(timeout=10)
    text = "\n".join(everything(r) for r in outputs) + out + err
    assert "<token hidden>" in text  # the --debug log shows the AUTH line, masked
    for secret in (GOOD, OLD, GOOD[-10:], OLD[-10:]):
        assert secret not in text
    token_files = {runs.parent / "tokens"}
    for path in tmp_path.rglob("*"):
        if path.is_file() and path not in token_files:
            assert GOOD.encode() not in path.read_bytes(), path
            assert OLD.encode() not in path.read_bytes(), path


def test_doctor_checks_the_token_command(tmp_path: Path, isolated: Isolated) -> None:
    """`cxsmtp doctor` runs the token command (not a password lookup) and never shows it."""
    command, runs = token_command(tmp_path / "tok", GOOD)
    added = invoke(
        "server", "add", "g", "[smtp.gmail.com]:587", "--username", USER,
        "--oauth-token-command", command,
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    result = invoke("doctor")
    line = next(line for line in result.output.splitlines() if "server g:" in line)
    assert line.startswith("ok") and "OAuth2 token from the oauth_token_command" in line
    assert token_runs(runs) == 1 and GOOD not in result.output
    (runs.parent / "tokens").write_text("")  # the command fails now
    result = invoke("doctor")
    line = next(line for line in result.output.splitlines() if "server g:" in line)
    assert line.startswith("fail") and "oauth_token_command" in line
    assert result.exit_code != 0
