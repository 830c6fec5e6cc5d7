"""``cxsmtp server import msmtprc|postfix`` through the real CLI: dry runs write
nothing, imports write the config and the password store (never the password into
the config or the output), --replace, refusals with one line and the right exit code,
and an imported msmtp account that really sends through an AUTH-requiring sink."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import tomllib
from servers import make_spool

FIXTURES = Path(__file__).resolve().parents[1] / "config" / "fixtures"
MSMTPRC = FIXTURES / "msmtprc"
POSTFIX = FIXTURES / "postfix"
FAIL = {"PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}
SECRETS = ("hunter2", "relay:pass", "backuppw", "bulkpw", "labpw")


def everything(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def saved(isolated: Any) -> dict[str, Any]:
    return tomllib.loads(isolated.config.read_text())


def keyring_data(isolated: Any) -> dict[str, str]:
    path = isolated.keyring_file
    return json.loads(path.read_text()) if path.exists() else {}


def credentials(isolated: Any) -> Path:
    return isolated.config.with_name("credentials.toml")


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} leaked"


def test_msmtprc_dry_run_writes_nothing(isolated: Any, cxsmtp: Any) -> None:
    result = cxsmtp("server", "import", "msmtprc", str(MSMTPRC), "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "would add server 'work': [smtp.work.example]:587" in lines
    assert "would add server 'home': [mail.home.example]:465 (password to the keyring)" in lines
    assert "jan@work.example would send through 'work'" in lines
    assert "'work' would be the default server" in lines
    assert any(line.startswith("note: defaults: logfile not carried over") for line in lines)
    assert lines[-1] == "dry run: nothing written"
    assert not isolated.config.exists() and not isolated.config.parent.exists()
    assert keyring_data(isolated) == {} and not credentials(isolated).exists()
    assert_no_secret(everything(result))


def test_msmtprc_import_then_replace(isolated: Any, cxsmtp: Any) -> None:
    result = cxsmtp("server", "import", "msmtprc", str(MSMTPRC))
    assert result.returncode == 0, result.stderr
    assert "added server 'home': [mail.home.example]:465 (password stored in the keyring)" in (
        result.stdout.splitlines()
    )
    data = saved(isolated)
    assert list(data["servers"]) == ["gmail", "home", "work", "work-alt"]
    assert data["settings"]["default_server"] == "work"
    assert data["servers"]["gmail"]["oauth_token_command"] == "oama access jan@gmail.example"
    assert data["users"]["alt@work.example"] == {"server": "work-alt"}
    assert keyring_data(isolated) == {"cxsmtp/home": "hunter2 with spaces"}
    assert_no_secret(isolated.config.read_text(), everything(result))

    shown = cxsmtp("server", "show", "home", "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["password_source"] == "keyring"

    again = cxsmtp("server", "import", "msmtprc", str(MSMTPRC))
    assert again.returncode == 78
    assert again.stderr.startswith("cxsmtp: error: ") and len(again.stderr.splitlines()) == 1
    assert "already has servers 'gmail', 'home', 'work', 'work-alt'; add --replace" in (
        again.stderr
    )

    cxsmtp("server", "edit", "work", "--host", "[changed.example]:587")
    replaced = cxsmtp("server", "import", "msmtprc", str(MSMTPRC), "--replace")
    assert replaced.returncode == 0, replaced.stderr
    assert "replaced server 'work': [smtp.work.example]:587" in replaced.stdout.splitlines()
    assert saved(isolated)["servers"]["work"]["host"] == "[smtp.work.example]:587"


def test_msmtprc_default_locations(isolated: Any, cxsmtp: Any, tmp_path: Path) -> None:
    missing = cxsmtp("server", "import", "msmtprc", "--dry-run")
    assert missing.returncode == 66
    assert missing.stderr.startswith("cxsmtp: error: no msmtp configuration found: tried ")
    xdg = tmp_path / "home" / ".config" / "msmtp" / "config"  # conftest's XDG_CONFIG_HOME
    xdg.parent.mkdir(parents=True)
    xdg.write_text("account x\nhost x.example\n")
    found = cxsmtp("server", "import", "msmtprc", "--dry-run")
    assert found.returncode == 0, found.stderr
    assert "would add server 'x': [x.example]:25" in found.stdout


def test_certcheck_off_needs_allow_insecure(isolated: Any, cxsmtp: Any) -> None:
    rc = str(FIXTURES / "msmtprc-insecure")
    refused = cxsmtp("server", "import", "msmtprc", rc)
    assert refused.returncode == 78 and len(refused.stderr.splitlines()) == 1
    assert "tls_certcheck off" in refused.stderr and "--allow-insecure" in refused.stderr
    assert not isolated.config.exists()
    allowed = cxsmtp("server", "import", "msmtprc", rc, "--allow-insecure")
    assert allowed.returncode == 0, allowed.stderr
    assert saved(isolated)["servers"]["lab"]["tls_verify"] is False
    assert "certificate checks are OFF" in allowed.stdout
    assert_no_secret(everything(allowed))


def test_postfix_import_without_keyring_uses_the_credentials_file(
    isolated: Any, cxsmtp: Any
) -> None:
    dry = cxsmtp("server", "import", "postfix", "--config-dir", str(POSTFIX), "--dry-run", env=FAIL)
    assert dry.returncode == 0, dry.stderr
    assert f"(password to {credentials(isolated)})" in dry.stdout
    assert not isolated.config.exists() and not credentials(isolated).exists()

    result = cxsmtp("server", "import", "postfix", "--config-dir", str(POSTFIX), env=FAIL)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "added server '192.0.2.30': [192.0.2.30]:2525" in lines
    assert "news@example.org sends through 'bulk.example'" in lines
    assert "'smtp.relay.example' is the default server" in lines
    assert result.stderr.count("stored UNENCRYPTED") == 3  # one warning per password
    data = saved(isolated)
    assert data["servers"]["smtp.relay.example"]["fallback"] == [
        "backup.relay.example", "192.0.2.30",
    ]  # fmt: skip
    stored = tomllib.loads(credentials(isolated).read_text())["passwords"]
    assert stored == {
        "smtp.relay.example": "relay:pass", "backup.relay.example": "backuppw",
        "bulk.example": "bulkpw",
    }  # fmt: skip
    assert_no_secret(isolated.config.read_text(), result.stdout)
    assert oct(credentials(isolated).stat().st_mode & 0o777) == "0o600"


def test_postfix_missing_directory_is_exit_66(isolated: Any, cxsmtp: Any, tmp_path: Path) -> None:
    result = cxsmtp("server", "import", "postfix", "--config-dir", str(tmp_path / "none"))
    assert result.returncode == 66
    assert result.stderr.startswith("cxsmtp: error: ") and "main.cf: no such file" in result.stderr


@pytest.mark.parametrize("kind", ["msmtprc", "postfix"])
def test_bad_password_store_is_a_usage_error(isolated: Any, cxsmtp: Any, kind: str) -> None:
    source = [str(MSMTPRC)] if kind == "msmtprc" else ["--config-dir", str(POSTFIX)]
    result = cxsmtp("server", "import", kind, *source, "--password-store", "vault")
    assert result.returncode == 64
    assert "--password-store 'vault': expected keyring or file" in result.stderr
    assert not isolated.config.exists()


def test_imported_account_sends_through_an_auth_sink(
    isolated: Any, cxsmtp: Any, tmp_path: Path, sink_factory: Any
) -> None:
    ca = tmp_path / "sink-ca.pem"
    sink = sink_factory(tls="starttls", ca_out=ca, auth=("user", "hunter2 pw"), auth_required=True)
    rc = tmp_path / "msmtprc"
    rc.write_text(
        "defaults\ntls on\nauth on\n"
        f"account local\nhost 127.0.0.1\nport {sink.port}\ntls_trust_file {ca}\n"
        'user user\npassword "hunter2 pw"\n'
    )
    imported = cxsmtp("server", "import", "msmtprc", str(rc))
    assert imported.returncode == 0, imported.stderr
    spool = make_spool(tmp_path, 2)
    sent = cxsmtp("send", str(spool))
    assert sent.returncode == 0, sent.stderr
    assert len(sink.messages) == 2  # the sink refuses mail without AUTH
    assert_no_secret(everything(imported), everything(sent), isolated.config.read_text())
