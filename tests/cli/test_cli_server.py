"""``cxsmtp server`` and ``settings``: exit codes and output, through Typer's runner and
as real subprocesses of the installed ``cxsmtp``."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest
from conftest import Isolated, run_cxsmtp
from servers import PASSWORD, USER, smtp_server
from typer.testing import CliRunner

from carerix_smtp.cli.app import app

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

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
        pytest.param(
            ["server", "add", "x", "http://smtp.x"], 64, "a URL is not a host", id="url-http"
        ),
        pytest.param(
            ["server", "add", "x", "smtps://jan:pw@smtp.x:465"],
            64,
            "leave out 'smtps://', e.g. [smtp.x]:465",
            id="url-smtps",
        ),
        pytest.param(
            ["server", "edit", "keep", "--host", "mailto:jan@x.example"],
            64,
            "a mailto: address is not a host",
            id="url-mailto-edit",
        ),
        pytest.param(
            ["server", "edit", "keep", "--unset", "host"],
            64,
            "host is required; keys that can be unset: username, password_command, ca_file,",
            id="unset-required",
        ),
        pytest.param(
            ["server", "edit", "keep", "--unset", "colour"],
            64,
            "colour is not a server key; keys that can be unset: username",
            id="unset-unknown",
        ),
        pytest.param(
            ["server", "edit", "keep", "--unset", "security"],
            64,
            "security cannot be unset",
            id="unset-has-own-option",
        ),
        pytest.param(
            ["server", "edit", "keep", "--unset", "username", "--username", "kim"],
            64,
            "cannot be combined",
            id="unset-and-set",
        ),
        pytest.param(
            ["server", "edit", "keep", "--username", ""],
            64,
            "--username is empty; to remove username use --unset username",
            id="empty-username",
        ),
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
    assert "is not a number" not in result.stderr and "pw@" not in result.stderr
    assert isolated.config.read_bytes() == before


def test_duplicate_name_refused(isolated: Isolated) -> None:
    assert invoke("server", "add", "x", "smtp.x.example").exit_code == 0
    before = isolated.config.read_bytes()
    result = invoke("server", "add", "x", "smtp.other.example")
    assert result.exit_code == 78
    assert "already exists" in result.output
    assert isolated.config.read_bytes() == before


def test_unusable_keyring_refuses_to_store_and_changes_nothing(isolated: Isolated) -> None:
    """Asked for explicitly; without --password-store the credentials file is used
    (tests/cli/test_cli_passwords.py)."""
    env = {"PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}
    result = run_cxsmtp(
        "server",
        "add",
        "x",
        "[smtp.x.example]:587",
        "--username",
        "jan",
        "--password-stdin",
        "--password-store",
        "keyring",
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
    result = run_cxsmtp(
        "server", "password", "x", "--password-stdin", "--password-store", "keyring",
        input="pw\n", env=env,
    )  # fmt: skip
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


# --- defaults that do not silently break cron (issue 11) ----------------------------


def saved(isolated: Isolated) -> dict:
    return tomllib.loads(isolated.config.read_text())


def test_first_server_is_saved_as_the_default(isolated: Isolated) -> None:
    result = invoke("server", "add", "a", "[smtp.a.example]:587")
    assert result.exit_code == 0, result.output
    assert "added server 'a': [smtp.a.example]:587 (the default server)" in result.output
    assert saved(isolated)["settings"]["default_server"] == "a"
    result = invoke("server", "add", "b", "[smtp.b.example]:587")
    assert result.exit_code == 0, result.output
    assert "default" not in result.output
    assert saved(isolated)["settings"]["default_server"] == "a"


def test_implicit_default_is_saved_when_a_second_server_is_added(isolated: Isolated) -> None:
    """A file with one server and no default_server (hand-written, or older): that one
    is the default; adding a second must keep it so, not leave cron with exit 78."""
    isolated.config.parent.mkdir(parents=True, exist_ok=True)
    isolated.config.write_text('[servers.a]\nhost = "[smtp.a.example]:587"\n')
    result = run_cxsmtp("server", "add", "b", "[smtp.b.example]:587")
    assert result.returncode == 0, result.stderr
    assert "server 'a' stays the default (now saved)" in result.stdout
    assert saved(isolated)["settings"]["default_server"] == "a"
    shown = json.loads(run_cxsmtp("server", "show", "a", "--json").stdout)
    assert shown["default"] is True


def test_removing_the_default_with_one_left_makes_that_the_default(isolated: Isolated) -> None:
    assert invoke("server", "add", "a", "smtp.a.example").exit_code == 0
    assert invoke("server", "add", "b", "smtp.b.example").exit_code == 0
    result = run_cxsmtp("server", "remove", "a")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "removed server 'a'",
        "server 'b' is now the default server",
    ]
    assert saved(isolated)["settings"]["default_server"] == "b"


def test_removing_the_default_with_several_left_needs_force(
    isolated: Isolated, tmp_path: Path
) -> None:
    for name in ("a", "b", "c"):
        assert invoke("server", "add", name, f"smtp.{name}.example").exit_code == 0
    before = isolated.config.read_bytes()
    result = run_cxsmtp("server", "remove", "a")
    assert result.returncode == 78
    assert result.stderr.startswith("cxsmtp: error: server 'a' is the default server; ")
    assert "'cxsmtp server use NAME' (b, c), or add --force" in result.stderr
    assert isolated.config.read_bytes() == before

    result = run_cxsmtp("server", "remove", "a", "--force")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "removed server 'a'\n"
    assert "cxsmtp: warning: there is no default server now: 'cxsmtp send' stops with exit 78" in (
        result.stderr
    )
    assert "default_server" not in saved(isolated)["settings"]
    # What the warning promised: send refuses (78) and the message stays queued.
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "m.eml").write_text("From: x@y.example\nTo: z@y.example\nSubject: s\n\nhi\n")
    sent = run_cxsmtp("send", str(spool))
    assert sent.returncode == 78 and "no default server" in sent.stderr
    assert (spool / "m.eml").exists()


def test_remove_drops_per_sender_choices_and_says_so(isolated: Isolated) -> None:
    assert invoke("server", "add", "a", "smtp.a.example").exit_code == 0
    assert invoke("server", "add", "b", "smtp.b.example").exit_code == 0
    assert invoke("server", "use", "b", "--user", "alice@example.com").exit_code == 0
    assert invoke("server", "use", "b", "--user", "bob@example.com").exit_code == 0
    result = run_cxsmtp("server", "remove", "b")
    assert result.returncode == 0, result.stderr
    assert (
        "cxsmtp: warning: dropped the per-sender choice of alice@example.com, bob@example.com: "
        "their mail goes to the default server 'a'"
    ) in result.stderr
    assert saved(isolated)["users"] == {}
    assert saved(isolated)["settings"]["default_server"] == "a"


def test_edit_unset_returns_keys_to_their_defaults(isolated: Isolated, ca_file: Path) -> None:
    result = invoke(
        "server", "add", "x", "[smtp.x.example]:587", "--username", "jan", "--password-stdin",
        "--ca-file", str(ca_file), "--set", "batch_deadline=30", "--password-command", "true",
        input=SECRET + "\n",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert SECRET in isolated.keyring_file.read_text()
    result = invoke(
        "server", "edit", "x", "--unset", "username", "--unset", "ca-file",
        "--unset", "batch_deadline", "--unset", "password_command",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output == (
        "changed server 'x'; unset username, ca_file, batch_deadline, password_command "
        "and removed its stored password\n"
    )
    assert saved(isolated)["servers"]["x"] == {"host": "[smtp.x.example]:587"}
    assert SECRET not in isolated.keyring_file.read_text()
    shown = json.loads(invoke("server", "show", "x", "--json").output)
    assert (shown["username"], shown["ca_file"], shown["batch_deadline"]) == (None, None, 60.0)
    assert shown["password_source"] == "none"


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        pytest.param("text", "not a PEM certificate bundle", id="not-pem"),
        pytest.param("key", "not a PEM certificate bundle", id="private-key"),
        pytest.param("missing", "No such file or directory", id="missing"),
        pytest.param("directory", "Is a directory", id="directory"),
    ],
)
def test_ca_file_is_checked_at_add_and_edit(
    isolated: Isolated, tmp_path: Path, ca_file: Path, tls_ca, kind: str, expected: str
) -> None:
    bad = tmp_path / "bad.pem"
    if kind == "text":
        bad.write_text("not a certificate\n")
    elif kind == "key":
        bad.write_bytes(tls_ca.private_key_pem.bytes())
    elif kind == "directory":
        bad.mkdir()
    result = run_cxsmtp("server", "add", "x", "[smtp.x.example]:587", "--ca-file", str(bad))
    assert result.returncode == 66, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"cxsmtp: error: --ca-file: CA file {bad}: {expected}")
    assert line.endswith("; give a PEM file of one or more '-----BEGIN CERTIFICATE-----' blocks")
    assert not isolated.config.exists()

    assert run_cxsmtp("server", "add", "x", "[smtp.x.example]:587").returncode == 0
    assert run_cxsmtp("server", "edit", "x", "--ca-file", str(ca_file)).returncode == 0
    before = isolated.config.read_bytes()
    result = run_cxsmtp("server", "edit", "x", "--ca-file", str(bad))
    assert result.returncode == 66
    assert expected in result.stderr
    assert "cxsmtp: hint: to use the system's CA store: cxsmtp server edit x --unset ca_file" in (
        result.stderr
    )
    assert isolated.config.read_bytes() == before


def test_test_advises_unset_username_and_the_advice_works(isolated: Isolated) -> None:
    """A relay that offers no AUTH: `cxsmtp test` says to remove the username with
    --unset; doing exactly that makes the test pass."""
    with smtp_server() as server:
        # Plain SMTP: aiosmtpd offers AUTH only after TLS, so here it offers none.
        result = invoke(
            "server", "add", "relay", server.host, "--security", "none",
            "--allow-plaintext-auth", "--username", USER, "--password-stdin",
            input=PASSWORD + "\n",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        failed = run_cxsmtp("test", "relay")
        assert failed.returncode != 0
        assert "remove the username (cxsmtp server edit relay --unset username)" in (
            failed.stdout + failed.stderr
        )
        edited = run_cxsmtp("server", "edit", "relay", "--unset", "username")
        assert edited.returncode == 0, edited.stderr
        assert "and removed its stored password" in edited.stdout
        passed = run_cxsmtp("test", "relay")
        assert passed.returncode == 0, passed.stdout + passed.stderr
