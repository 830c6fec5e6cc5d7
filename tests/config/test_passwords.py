"""Password sources: env, password_command, keyring; unusable keyrings give one clear message."""

from __future__ import annotations

import sys
from pathlib import Path

import keyring
import pytest
from keyring.backends import fail, null
from keyring_backends import HangingKeyring

from carerix_smtp.config import passwords as secrets
from carerix_smtp.config.file import ServerEntry
from carerix_smtp.errors import KeyringUnavailableError, SecretError

ENTRY = ServerEntry(name="relay-1", host="[smtp.example.com]:587", username="jan")
FILE = secrets.StoreChoice("file")


@pytest.mark.parametrize(
    ("name", "var"),
    [
        ("xs4all", "CXSMTP_PASSWORD_XS4ALL"),
        ("smtp-relay.1", "CXSMTP_PASSWORD_SMTP_RELAY_1"),
        ("Mixed_Case", "CXSMTP_PASSWORD_MIXED_CASE"),
    ],
)
def test_env_var_name(name: str, var: str) -> None:
    assert secrets.env_var_name(name) == var


def test_no_username_means_no_password() -> None:
    assert secrets.get_password(ServerEntry(name="x", host="smtp.x"), env={}) is None


def test_env_comes_first() -> None:
    secrets.store_password("relay-1", "from-keyring", {})
    entry = ServerEntry(name="relay-1", host="smtp.x", username="j", password_command="false")
    assert secrets.get_password(entry, {"CXSMTP_PASSWORD_RELAY_1": "from-env"}) == "from-env"
    assert secrets.password_source(entry, {"CXSMTP_PASSWORD_RELAY_1": "x"}) == "env"


def test_command_before_keyring(tmp_path: Path) -> None:
    secrets.store_password("relay-1", "from-keyring", {})
    script = tmp_path / "pw.py"
    script.write_text("print('from command  with spaces')\nprint('second line ignored')\n")
    entry = ServerEntry(
        name="relay-1", host="smtp.x", username="j", password_command=f"{sys.executable} {script}"
    )
    assert secrets.get_password(entry, {}) == "from command  with spaces"
    assert secrets.password_source(entry, {}) == "command"


def test_keyring_last() -> None:
    secrets.store_password("relay-1", "pässwörd", {})
    assert secrets.get_password(ENTRY, {}) == "pässwörd"
    assert secrets.password_source(ENTRY, {}) == "keyring"
    assert secrets.delete_password("relay-1", {}) is True
    assert secrets.delete_password("relay-1", {}) is False


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        pytest.param("false", "exited with status 1", id="non-zero"),
        pytest.param("true", "printed nothing", id="empty-output"),
        pytest.param("/no/such/program", "not found", id="missing"),
        pytest.param("'unbalanced", "cannot be parsed", id="bad-quoting"),
    ],
)
def test_command_failures(command: str, expected: str) -> None:
    entry = ServerEntry(name="relay-1", host="smtp.x", username="j", password_command=command)
    with pytest.raises(SecretError, match=expected):
        secrets.get_password(entry, {})


def test_command_timeout() -> None:
    with pytest.raises(SecretError, match=r"did not finish within 0\.2 s"):
        secrets.run_password_command("x", f"{sys.executable} -c 'import time; time.sleep(30)'", 0.2)


def test_command_runs_without_shell(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(SecretError):
        secrets.run_password_command("x", f"true; touch {marker}")
    assert not marker.exists()


@pytest.mark.parametrize(
    "backend", [pytest.param(fail.Keyring(), id="fail"), pytest.param(null.Keyring(), id="null")]
)
def test_unusable_backends_give_one_clear_message(backend: keyring.backend.KeyringBackend) -> None:
    keyring.set_keyring(backend)
    with pytest.raises(SecretError) as info:
        secrets.get_password(ENTRY, {})
    message = str(info.value)
    for part in (
        "CXSMTP_PASSWORD_RELAY_1 (not set)",
        "password_command (not configured)",
        "no usable keyring backend",
        "--password-command",
        "cxsmtp server password",
    ):
        assert part in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "backend", [pytest.param(fail.Keyring(), id="fail"), pytest.param(null.Keyring(), id="null")]
)
def test_without_usable_keyring_the_file_is_used(
    backend: keyring.backend.KeyringBackend, tmp_path: Path
) -> None:
    keyring.set_keyring(backend)
    creds = tmp_path / "credentials.toml"
    stored = secrets.store_password("relay-1", "s3cret", {}, credentials=creds)
    assert (stored.store, stored.path) == ("file", creds)
    assert stored.warning is not None and "UNENCRYPTED" in stored.warning
    assert "no usable keyring backend" in stored.warning and "s3cret" not in stored.warning
    assert secrets.get_password(ENTRY, {}, credentials=creds) == "s3cret"
    assert secrets.password_source(ENTRY, {}, credentials=creds) == "file"
    with pytest.raises(KeyringUnavailableError, match="--password-store file"):
        secrets.choose_store("relay-1", "keyring", {})
    assert secrets.delete_password("relay-1", {}, credentials=creds) is True
    assert not creds.exists()


def test_keyring_comes_before_the_file(tmp_path: Path) -> None:
    creds = tmp_path / "credentials.toml"
    secrets.store_password("relay-1", "from-file", {}, credentials=creds, choice=FILE)
    assert secrets.password_source(ENTRY, {}, credentials=creds) == "file"
    stored = secrets.store_password("relay-1", "from-keyring", {}, credentials=creds)
    assert stored.store == "keyring" and stored.warning is None
    assert not creds.exists()  # the plain copy is removed when the keyring takes it
    assert secrets.get_password(ENTRY, {}, credentials=creds) == "from-keyring"


def test_hanging_keyring_falls_back_to_the_file(tmp_path: Path) -> None:
    keyring.set_keyring(HangingKeyring())
    env = {"CXSMTP_KEYRING_TIMEOUT": "0.3"}
    choice = secrets.choose_store("relay-1", None, env)
    assert choice.store == "file" and "did not answer" in (choice.keyring_problem or "")


def test_env_var_collisions() -> None:
    assert secrets.env_var_collision("A.B", ["a_b", "x"]) == "a_b"
    assert secrets.env_var_collision("a.b", ["a.b"]) is None
    assert secrets.env_var_collision("ab", ["a_b"]) is None


def test_failing_command_hint_does_not_advise_setting_one() -> None:
    entry = ServerEntry(name="relay-1", host="smtp.x", username="j", password_command="false")
    with pytest.raises(SecretError) as info:
        secrets.get_password(entry, {})
    assert info.value.hint is not None and "by hand" in info.value.hint
    assert "--password-command" not in info.value.hint


def test_hanging_keyring_is_bounded() -> None:
    keyring.set_keyring(HangingKeyring())
    with pytest.raises(SecretError, match=r"did not answer within 0\.3 s"):
        secrets.get_password(ENTRY, {"CXSMTP_KEYRING_TIMEOUT": "0.3"})


def test_missing_entry_lists_sources() -> None:
    with pytest.raises(SecretError, match=r"keyring \(no entry\)"):
        secrets.get_password(ENTRY, {})
