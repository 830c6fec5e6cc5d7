"""An attacker on the path or a broken setup: STARTTLS stripped, replies injected
before the TLS handshake, a certificate for another name, no keyring under cron.
Each time ``cxsmtp send`` refuses (or ignores the attack), the password never leaves,
and every message stays where it was."""

from __future__ import annotations

import base64
import os
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
from servers import PASSWORD, USER, ScriptServer, eml, entry_for, make_spool, smtp_server

from carerix_smtp.config.file import Config, save_config
from carerix_smtp.config.tls import Security
from faults.fault_helpers import (
    configure,
    cxsmtp_argv,
    error_line,
    ids_in,
    send,
    smtp_script,
    spool_names,
    tally,
    unstuffed,
)

pytestmark = pytest.mark.slow

TOTAL = 3
PASSWORD_ENV = {"CXSMTP_PASSWORD_LOCAL": PASSWORD}


def password_forms() -> list[bytes]:
    """The password as it would travel in AUTH PLAIN or LOGIN."""
    return [
        PASSWORD.encode(),
        base64.b64encode(PASSWORD.encode()),
        base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()),
    ]


def assert_untouched(spool: Path, matrix: Any, received: int, **figures: Any) -> None:
    """Every message still queued, none delivered; one row of the matrix."""
    state = tally(spool)
    lost = state.lost(spool_names(TOTAL))
    matrix(runs=1, total=TOTAL, lost=lost, duplicates=0, **figures)
    assert lost == 0 and state.queued == spool_names(TOTAL)
    assert received == 0


def test_starttls_stripped_no_password_sent(tmp_path: Path, isolated: Any, matrix: Any) -> None:
    """A man in the middle removes STARTTLS from the EHLO reply and offers AUTH in
    clear text: security=starttls refuses to go on; AUTH never goes out."""
    script = smtp_script(extensions=("AUTH PLAIN LOGIN", "PIPELINING"))
    with ScriptServer(script, connections=5) as server:
        entry = entry_for(server.port, security=Security.STARTTLS, username=USER)
        configure(isolated, entry)
        spool = make_spool(tmp_path, TOTAL)
        result = send(spool, env=PASSWORD_ENV)
        seen = b"".join(server.lines)
    assert result.returncode == 75, result.stderr  # README: server unreachable
    line = error_line(result.stderr)
    assert "STARTTLS" in line and line.endswith("; run `cxsmtp test local` for a diagnosis")
    assert b"AUTH" not in seen.upper() and b"MAIL FROM" not in seen.upper()
    for form in password_forms():
        assert form not in seen
        assert form.decode() not in result.stdout + result.stderr
    assert_untouched(spool, matrix, len(server.data))


def test_replies_injected_before_the_tls_handshake_are_discarded(
    tmp_path: Path, isolated: Any, matrix: Any, server_ssl_context: ssl.SSLContext, ca_file: Path
) -> None:
    """Bytes pipelined behind the 220 to STARTTLS (plain text, before the handshake)
    must not be read as the reply to the EHLO inside TLS: if they were, SIZE 10 would
    refuse every message and AUTH would look for a mechanism called INJECTED."""
    injected = b"250-evil.test\r\n250-SIZE 10\r\n250 AUTH INJECTED\r\n"
    script = smtp_script(
        extensions=("AUTH PLAIN", "PIPELINING", "SIZE 200000000"),
        starttls=server_ssl_context,
        inject=injected,
    )
    with ScriptServer(script, connections=5) as server:
        entry = entry_for(
            server.port, security=Security.STARTTLS, username=USER, ca_file=str(ca_file)
        )
        configure(isolated, entry)
        spool = make_spool(tmp_path, TOTAL)
        result = send(spool, env=PASSWORD_ENV)
        datas, lines = list(server.data), list(server.lines)
        assert not server.errors
    assert result.returncode == 0, result.stderr
    auth = [line for line in lines if line.upper().startswith(b"AUTH")]
    assert len(auth) == 1 and auth[0].upper().startswith(b"AUTH PLAIN")
    assert [unstuffed(d) for d in datas] == [eml(n).replace(b"\n", b"\r\n") for n in range(TOTAL)]
    state = tally(spool)
    received = ids_in(datas)
    lost = state.lost(spool_names(TOTAL))
    matrix(runs=1, total=TOTAL, lost=lost, duplicates=sum(received.values()) - len(received))
    assert lost == 0 and state.sent == spool_names(TOTAL)


def test_certificate_for_another_name_refused(
    tmp_path: Path, isolated: Any, matrix: Any, tls_ca: Any, ca_file: Path
) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca.issue_cert("mail.other.test").configure_cert(context)
    with smtp_server(implicit_tls=context, auth=True) as server:
        entry = entry_for(server.port, security=Security.SSL, username=USER, ca_file=str(ca_file))
        configure(isolated, entry)
        spool = make_spool(tmp_path, TOTAL)
        result = send(spool, env=PASSWORD_ENV)
        received = len(server.handler.messages)
        assert server.handler.mechanisms_tried == []
    assert result.returncode == 75, result.stderr  # README: server unreachable
    line = error_line(result.stderr)
    assert "certificate" in line and "127.0.0.1" in line
    assert line.endswith("; run `cxsmtp test local` for a diagnosis")
    assert PASSWORD not in result.stdout + result.stderr
    assert_untouched(spool, matrix, received)


def test_no_keyring_under_a_bare_environment(tmp_path: Path, matrix: Any) -> None:
    """cron's environment: only PATH and HOME, no D-Bus, no keyring, no CXSMTP_*;
    the server needs a password: one line naming the sources, exit 78."""
    home = tmp_path / "bare-home"
    config = home / ".config" / "cxsmtp" / "config.toml"
    config.parent.mkdir(parents=True)
    with smtp_server(auth=True, auth_require_tls=False) as server:
        entry = entry_for(server.port, username=USER, allow_plaintext_auth=True)
        save_config(Config(path=config, servers={"local": entry}))
        spool = make_spool(tmp_path, TOTAL)
        result = subprocess.run(
            [*cxsmtp_argv(), "send", str(spool)],
            env={"PATH": os.environ["PATH"], "HOME": str(home)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        received = len(server.handler.messages)
    assert "Traceback" not in result.stderr
    assert result.returncode == 78, result.stderr
    line = error_line(result.stderr)
    assert "CXSMTP_PASSWORD_LOCAL" in line and "keyring" in line
    assert_untouched(spool, matrix, received)
