"""Passwords on a host without a keyring (issue 11), through the real ``cxsmtp``:
the credentials file, ``--password-stdin`` on a terminal, names whose password
variables collide, and the hints when a password_command is the source."""

from __future__ import annotations

import json
import os
import pty
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_no_traceback, cxsmtp_argv
from servers import make_spool

FAIL = {"PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}
SECRET = "s3cret pw"  # with a space: --login splits at the first one only
UNENCRYPTED = "stored UNENCRYPTED"


def credentials(isolated: Any) -> Path:
    return isolated.config.with_name("credentials.toml")


def everything(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def servers_in(isolated: Any) -> set[str]:
    if not isolated.config.exists():
        return set()
    import tomllib

    return set(tomllib.loads(isolated.config.read_text()).get("servers", {}))


def run_on_terminal(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """The real CLI with a pseudo-terminal as stdin (nothing is typed into it)."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [*cxsmtp_argv(), *args],
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        os.close(slave)
        try:
            out, err = proc.communicate(timeout=30)  # a prompt would wait: the test fails
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail(f"cxsmtp {' '.join(args)} waited for input on the terminal")
    finally:
        os.close(master)
    assert_no_traceback(args, err)
    return proc.returncode, out, err


@pytest.fixture
def tls_sink(tmp_path: Path, sink_factory: Any) -> tuple[Any, Path]:
    """A sink that wants AUTH (user/SECRET) after STARTTLS, and its CA file."""
    ca = tmp_path / "sink-ca.pem"
    sink = sink_factory(tls="starttls", ca_out=ca, auth=("user", SECRET), auth_required=True)
    return sink, ca


# --- the credentials file ---------------------------------------------------------------


def test_headless_add_stores_in_file_and_send_uses_it(
    tmp_path: Path, isolated: Any, cxsmtp: Any, tls_sink: tuple[Any, Path]
) -> None:
    sink, ca = tls_sink
    host = f"[127.0.0.1]:{sink.port}"
    added = cxsmtp(
        "server", "add", "local", host, "--username", "user", "--password-stdin",
        "--security", "starttls", "--ca-file", str(ca),
        input=SECRET + "\n", env=FAIL,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert "added server 'local'" in added.stdout and str(credentials(isolated)) in added.stdout
    warnings = [line for line in added.stderr.splitlines() if line.startswith("cxsmtp: warning:")]
    assert len(warnings) == 1 and UNENCRYPTED in warnings[0]
    assert "password_command" in warnings[0] and "keyring" in warnings[0]
    mode = stat.S_IMODE(credentials(isolated).stat().st_mode)
    assert mode == 0o600
    assert SECRET not in everything(added) and SECRET not in isolated.config.read_text()

    shown = cxsmtp("server", "show", "local", "--json", env=FAIL)
    assert shown.returncode == 0 and json.loads(shown.stdout)["password_source"] == "file"
    text = cxsmtp("server", "show", "local", env=FAIL)
    assert any(line.split() == ["password_source", "file"] for line in text.stdout.splitlines())

    spool = make_spool(tmp_path, 2)
    sent = cxsmtp("send", str(spool), env=FAIL)
    assert sent.returncode == 0, sent.stderr
    assert len(sink.messages) == 2  # the sink refuses mail without AUTH
    assert SECRET not in everything(sent) + everything(shown) + everything(text)


def test_issue_login_command_adds_the_entry(isolated: Any, cxsmtp: Any) -> None:
    result = cxsmtp(
        "server", "add", "xs4all", "[smtp.xs4all.nl]:587", "--login", "jan s3cret", env=FAIL
    )
    assert result.returncode == 0, result.stderr
    assert servers_in(isolated) == {"xs4all"}
    assert result.stderr.count(UNENCRYPTED) == 1
    assert "s3cret" not in everything(result)
    assert 'xs4all = "s3cret"' in credentials(isolated).read_text()


def test_explicit_keyring_that_is_unusable_adds_nothing(isolated: Any, cxsmtp: Any) -> None:
    result = cxsmtp(
        "server", "add", "x", "[smtp.x]:587", "--username", "u", "--password-stdin",
        "--password-store", "keyring", input=SECRET + "\n", env=FAIL,
    )  # fmt: skip
    assert result.returncode == 78
    assert result.stderr.startswith(
        "cxsmtp: error: cannot store the password of 'x' in the keyring"
    )
    assert "--password-store file" in result.stderr
    assert servers_in(isolated) == set() and not credentials(isolated).exists()


def test_explicit_file_with_a_usable_keyring(isolated: Any, cxsmtp: Any) -> None:
    """The test keyring works, yet --password-store file puts it into the file."""
    result = cxsmtp(
        "server", "add", "x", "[smtp.x]:587", "--username", "u", "--password-stdin",
        "--password-store", "file", input=SECRET + "\n",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr.count(UNENCRYPTED) == 1
    assert not isolated.keyring_file.exists() or SECRET not in isolated.keyring_file.read_text()
    shown = cxsmtp("server", "show", "x", "--json")
    assert json.loads(shown.stdout)["password_source"] == "file"
    # back into the keyring: the plain copy goes
    moved = cxsmtp("server", "password", "x", "--password-stdin", input="other\n")
    assert moved.returncode == 0 and "stored in the keyring" in moved.stdout
    assert UNENCRYPTED not in moved.stderr and not credentials(isolated).exists()
    assert json.loads(cxsmtp("server", "show", "x", "--json").stdout)["password_source"] == (
        "keyring"
    )


def test_server_password_and_remove_handle_the_file(isolated: Any, cxsmtp: Any) -> None:
    for name in ("a", "b"):
        add = cxsmtp("server", "add", name, "[smtp.x]:587", "--login", f"u {name}-pw", env=FAIL)
        assert add.returncode == 0, add.stderr
    changed = cxsmtp("server", "password", "a", "--password-stdin", input="new-pw\n", env=FAIL)
    assert changed.returncode == 0, changed.stderr
    assert f"stored in {credentials(isolated)}" in changed.stdout
    assert changed.stderr.count(UNENCRYPTED) == 1 and "new-pw" not in everything(changed)
    assert 'a = "new-pw"' in credentials(isolated).read_text()
    removed = cxsmtp("server", "remove", "b", "--force", env=FAIL)
    assert removed.returncode == 0, removed.stderr
    assert "stored password" in removed.stdout
    assert "b-pw" not in credentials(isolated).read_text()
    assert stat.S_IMODE(credentials(isolated).stat().st_mode) == 0o600


def test_a_credentials_file_others_can_read_is_refused(
    tmp_path: Path, isolated: Any, cxsmtp: Any
) -> None:
    assert (
        cxsmtp("server", "add", "a", "[127.0.0.1]:1", "--login", "u pw1", env=FAIL).returncode == 0
    )
    credentials(isolated).chmod(0o644)
    changed = cxsmtp("server", "password", "a", "--password-stdin", input="pw2\n", env=FAIL)
    sent = cxsmtp("send", str(make_spool(tmp_path, 1)), env=FAIL)
    for result in (changed, sent):
        assert result.returncode == 78
        assert "mode 0644 is wider than 0600" in result.stderr
        assert f"chmod 600 {credentials(isolated)}" in result.stderr
        assert "pw1" not in everything(result) and "pw2" not in everything(result)
    assert "pw1" in credentials(isolated).read_text()  # not rewritten


# --- terminals ------------------------------------------------------------------------


def test_keyring_is_checked_before_the_prompt(isolated: Any) -> None:
    code, out, err = run_on_terminal(
        "server", "add", "x", "[smtp.x]:587", "--username", "u", "--password-store", "keyring",
        env=FAIL,
    )  # fmt: skip
    assert code == 78 and "Password" not in out + err
    assert err.startswith("cxsmtp: error: cannot store the password of 'x' in the keyring")
    assert servers_in(isolated) == set()


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("server", "add", "x", "[smtp.x]:587", "--username", "u"), id="add"),
        pytest.param(("server", "password", "x"), id="password"),
    ],
)
def test_password_stdin_on_a_terminal_is_refused(
    isolated: Any, cxsmtp: Any, args: tuple[str, ...]
) -> None:
    if args[1] == "password":
        assert cxsmtp("server", "add", "x", "[smtp.x]:587", "-u", "u").returncode == 0
    code, out, err = run_on_terminal(*args, "--password-stdin", env=FAIL)
    assert code == 64
    assert err == (
        "cxsmtp: error: stdin is a terminal; pipe the password in or leave out --password-stdin\n"
    )
    assert out == ""
    assert not credentials(isolated).exists()
    assert servers_in(isolated) == ({"x"} if args[1] == "password" else set())


# --- names whose variables collide ------------------------------------------------------


@pytest.mark.parametrize("other", ["a_b", "A.B", "A-b"])
def test_names_with_the_same_password_variable_are_refused(
    isolated: Any, cxsmtp: Any, other: str
) -> None:
    assert cxsmtp("server", "add", "a.b", "[smtp.x]:587").returncode == 0
    result = cxsmtp("server", "add", other, "[smtp.y]:587")
    assert result.returncode == 78
    assert result.stderr.startswith(f"cxsmtp: error: server name {other!r} reads the same")
    assert "CXSMTP_PASSWORD_A_B" in result.stderr and "'a.b'" in result.stderr
    assert servers_in(isolated) == {"a.b"}


# --- hints when a password_command is the source --------------------------------------


def _script(tmp_path: Path, body: str) -> str:
    script = tmp_path / "pw.py"
    script.write_text(body)
    return f"{sys.executable} {script}"


def test_failing_password_command_hint(tmp_path: Path, cxsmtp: Any, tls_sink: Any) -> None:
    sink, ca = tls_sink
    command = _script(tmp_path, "import sys\nsys.exit(3)\n")
    add = cxsmtp(
        "server", "add", "local", f"[127.0.0.1]:{sink.port}", "--username", "user",
        "--security", "starttls", "--ca-file", str(ca), "--password-command", command,
    )  # fmt: skip
    assert add.returncode == 0, add.stderr
    sent = cxsmtp("send", str(make_spool(tmp_path, 1)))
    tested = cxsmtp("test", "local")
    for result in (sent, tested):
        assert result.returncode in (77, 78), everything(result)
        assert "exited with status 3" in everything(result)
        assert "by hand" in everything(result)
        assert "--password-command" not in everything(result)
    assert sink.messages == []


def test_535_with_a_command_does_not_advise_server_password(
    tmp_path: Path, cxsmtp: Any, tls_sink: Any
) -> None:
    sink, ca = tls_sink
    command = _script(tmp_path, "print('wrong-password')\n")
    add = cxsmtp(
        "server", "add", "local", f"[127.0.0.1]:{sink.port}", "--username", "user",
        "--security", "starttls", "--ca-file", str(ca), "--password-command", command,
    )  # fmt: skip
    assert add.returncode == 0, add.stderr
    tested = cxsmtp("test", "local")
    assert tested.returncode == 77, everything(tested)
    assert "535" in everything(tested) and "password_command" in everything(tested)
    assert "server password" not in everything(tested)
    assert "wrong-password" not in everything(tested)
