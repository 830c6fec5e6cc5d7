"""``cxsmtp server`` and ``settings``: exit codes and output, through Typer's runner and
as real subprocesses of the installed ``cxsmtp``."""

from __future__ import annotations

import json
import stat

import pytest
from conftest import Isolated, run_cxsmtp
from typer.testing import CliRunner

from carerix_smtp.cli.app import app

runner = CliRunner()
SECRET = "Zq9-very s3cret-pw"


def invoke(*args: str, input: str | None = None):
    return runner.invoke(app, list(args), input=input)


def test_version_and_help() -> None:
    result = run_cxsmtp("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("cxsmtp ")
    result = run_cxsmtp("--help")
    assert result.returncode == 0
    for command in ("server", "settings"):
        assert command in result.stdout


def test_python_m_entry_point() -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "carerix_smtp", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and "cxsmtp" in result.stdout


def test_add_list_show_edit_use_remove(isolated: Isolated) -> None:
    result = invoke(
        "server",
        "add",
        "xs4all",
        "[smtp.xs4all.nl]:587",
        "--username",
        "jan",
        "--password-stdin",
        "--accepts-large-amounts",
        input=SECRET + "\n",
    )
    assert result.exit_code == 0, result.output
    assert "added server 'xs4all'" in result.output
    assert stat.S_IMODE(isolated.config.stat().st_mode) == 0o600

    result = invoke("server", "add", "relay", "smtp.relay.example:2525")
    assert result.exit_code == 0

    listed = json.loads(invoke("server", "list", "--json").output)
    assert [row["name"] for row in listed] == ["relay", "xs4all"]
    xs = listed[1]
    assert xs["default"] is True  # the first server added becomes the default
    assert (xs["hostname"], xs["port"], xs["mx_lookup"], xs["tls_mode"]) == (
        "smtp.xs4all.nl",
        587,
        False,
        "starttls",
    )
    assert xs["password_source"] == "keyring"
    assert xs["rate_per_hour"] == 6000
    assert listed[0]["mx_lookup"] is True and listed[0]["rate_per_hour"] == 1200

    result = invoke("server", "edit", "relay", "--set", "batch_deadline=30", "--security", "ssl")
    assert result.exit_code == 0, result.output
    shown = json.loads(invoke("server", "show", "relay", "--json").output)
    assert shown["batch_deadline"] == 30.0 and shown["tls_mode"] == "implicit"

    assert invoke("server", "use", "relay").exit_code == 0
    assert invoke("server", "use", "xs4all", "--user", "Alice@Example.com").exit_code == 0
    shown = json.loads(invoke("server", "show", "xs4all", "--json").output)
    assert shown["default"] is False and shown["users"] == ["Alice@example.com"]

    text = invoke("server", "show", "relay").output
    assert "batch_max_messages" in text and "500" in text  # defaults are visible

    result = invoke("server", "remove", "xs4all")
    assert result.exit_code == 0
    assert "stored password" in result.output
    assert SECRET not in isolated.keyring_file.read_text()
    assert "xs4all" not in isolated.config.read_text()


def test_login_splits_at_first_space_and_warns(isolated: Isolated) -> None:
    result = run_cxsmtp("server", "add", "x", "[smtp.x.example]:465", "--login", "jan  a b c ")
    assert result.returncode == 0, result.stderr
    assert "visible in the process list" in result.stderr
    data = json.loads(isolated.keyring_file.read_text())
    assert data == {"cxsmtp/x": "a b c "}
    assert json.loads(run_cxsmtp("server", "show", "x", "--json").stdout)["username"] == "jan"


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        pytest.param(["server", "add", "x", "[smtp.x"], 64, "accepted forms", id="bad-host"),
        pytest.param(["server", "add", "x", "smtp.x:0"], 64, "outside 1-65535", id="bad-port"),
        pytest.param(["server", "add", "x y", "smtp.x"], 78, "invalid server name", id="bad-name"),
        pytest.param(
            ["server", "edit", "nope", "--set", "connections=2"],
            78,
            "no server named 'nope'",
            id="edit-unknown",
        ),
        pytest.param(
            ["server", "remove", "nope"], 78, "no server named 'nope'", id="remove-unknown"
        ),
        pytest.param(["server", "show", "nope"], 78, "no server named", id="show-unknown"),
        pytest.param(["server", "use", "nope"], 78, "no server named", id="use-unknown"),
        pytest.param(
            ["server", "add", "x", "smtp.x", "--security", "tls"],
            64,
            "accepted: auto, ssl",
            id="bad-security",
        ),
        pytest.param(
            ["server", "add", "x", "smtp.x", "--set", "speed=3"], 64, "KEY one of", id="bad-set"
        ),
        pytest.param(
            ["server", "add", "x", "smtp.x", "--login", "onlyuser"],
            64,
            "USERNAME PASSWORD",
            id="login-no-password",
        ),
        pytest.param(
            [
                "server",
                "add",
                "x",
                "smtp.x",
                "--username",
                "u",
                "--security",
                "none",
                "--password-command",
                "true",
            ],
            78,
            "unencrypted",
            id="plaintext-password",
        ),
        pytest.param(
            ["settings", "set", "email-send-limit", "lots"], 64, "0 or more", id="bad-limit"
        ),
        pytest.param(["settings", "set", "colour", "red"], 64, "unknown setting", id="bad-setting"),
        pytest.param(["server", "frobnicate"], 64, "No such command", id="unknown-command"),
    ],
)
def test_errors_are_one_line_and_leave_config_untouched(
    isolated: Isolated, args: list[str], code: int, expected: str
) -> None:
    assert run_cxsmtp("server", "add", "keep", "smtp.keep.example").returncode == 0
    before = isolated.config.read_bytes()
    result = run_cxsmtp(*args)
    assert result.returncode == code, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert isolated.config.read_bytes() == before


def test_duplicate_name_refused(isolated: Isolated) -> None:
    assert invoke("server", "add", "x", "smtp.x.example").exit_code == 0
    before = isolated.config.read_bytes()
    result = invoke("server", "add", "x", "smtp.other.example")
    assert result.exit_code == 78
    assert "already exists" in result.output
    assert isolated.config.read_bytes() == before


def test_unusable_keyring_refuses_to_store_and_changes_nothing(isolated: Isolated) -> None:
    env = {"PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}
    result = run_cxsmtp(
        "server",
        "add",
        "x",
        "[smtp.x.example]:587",
        "--username",
        "jan",
        "--password-stdin",
        input=SECRET + "\n",
        env=env,
    )
    assert result.returncode == 78
    assert "no usable keyring backend" in result.stderr
    assert "CXSMTP_PASSWORD_X" in result.stderr
    assert not isolated.config.exists()
    # Without storing a password the entry can be added, and the env var supplies it (cron).
    result = run_cxsmtp("server", "add", "x", "[smtp.x.example]:587", "--username", "jan", env=env)
    assert result.returncode == 0, result.stderr
    shown = run_cxsmtp("server", "show", "x", "--json", env={**env, "CXSMTP_PASSWORD_X": SECRET})
    assert json.loads(shown.stdout)["password_source"] == "env"


def test_null_keyring_backend_is_refused_too(isolated: Isolated) -> None:
    assert (
        run_cxsmtp("server", "add", "x", "[smtp.x.example]:587", "--username", "j").returncode == 0
    )
    env = {"PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring"}
    result = run_cxsmtp("server", "password", "x", "--password-stdin", input="pw\n", env=env)
    assert result.returncode == 78
    assert "no usable keyring backend" in result.stderr


def test_settings(isolated: Isolated) -> None:
    assert json.loads(invoke("settings", "show", "--json").output)["email_send_limit"] == 10_000
    result = invoke("settings", "set", "email-send-limit", "20000")
    assert result.exit_code == 0
    assert json.loads(invoke("settings", "show", "--json").output)["email_send_limit"] == 20_000


def test_password_never_leaks(isolated: Isolated, tmp_path) -> None:
    """Run every server command with a known password; it appears nowhere but the keyring."""
    outputs: list[str] = []

    def run(*args: str, input: str | None = None) -> None:
        result = run_cxsmtp("--debug", *args, input=input)
        assert result.returncode == 0, result.stderr
        outputs.extend([result.stdout, result.stderr])

    run("server", "add", "a", "[smtp.a.example]:587", "--login", f"jan {SECRET}")
    run(
        "server",
        "add",
        "b",
        "[smtp.b.example]:465",
        "--username",
        "kim",
        "--password-stdin",
        input=SECRET + "\n",
    )
    run("server", "password", "b", "--password-stdin", input=SECRET + "\n")
    run("server", "edit", "a", "--username", "jan2", "--password-stdin", input=SECRET + "\n")
    run("server", "list")
    run("server", "list", "--json")
    run("server", "show", "a")
    run("server", "show", "b", "--json")
    run("server", "use", "b")
    run("server", "use", "a", "--user", "x@y.example")
    run("settings", "show")
    run("settings", "show", "--json")
    run("server", "remove", "a")
    everything = "\n".join(outputs) + isolated.config.read_text()
    assert SECRET not in everything
    assert "s3cret" not in everything
    for path in tmp_path.rglob("*"):
        if path.is_file() and path != isolated.keyring_file:
            assert SECRET.encode() not in path.read_bytes(), path
