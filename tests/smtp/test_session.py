"""SmtpSession against real servers on 127.0.0.1: aiosmtpd (TLS from trustme, AUTH)
and scripted raw-socket servers for the faults aiosmtpd cannot produce.

The server helpers (``smtp_server``, ``ScriptServer``) are in tests/servers.py.
"""

from __future__ import annotations

import base64
import io
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from conftest import free_port
from servers import (
    PASSWORD,
    USER,
    RecordingHandler,
    ScriptConn,
    ScriptServer,
    closed_port,
    hang,
    host_entry,
    smtp_server,
)

import carerix_smtp.smtp.channel as channel_module
from carerix_smtp.config.tls import Security
from carerix_smtp.errors import (
    MessageError,
    SmtpAuthError,
    SmtpConnectError,
    SmtpPolicyError,
    SmtpReplyError,
    SmtpTimeoutError,
    SmtpTLSError,
)
from carerix_smtp.smtp.auth import AUTH_PREFERENCE
from carerix_smtp.smtp.connect import ConnectFailedError
from carerix_smtp.smtp.session import SmtpSession
from carerix_smtp.smtp.tls import TlsFailedError
from carerix_smtp.smtp.transaction import SendResult

# --- sessions against aiosmtpd ------------------------------------------------------


def test_plain_send_delivers_and_reports(tmp_path: Path) -> None:
    with smtp_server(data_size_limit=100_000) as server:
        entry = host_entry(server.host, security=Security.NONE)
        with SmtpSession(entry, None, local_hostname="client.test") as session:
            assert session.has_extension("size") and session.max_size == 100_000
            result = session.send(
                "a@example.com",
                ["b@example.com", "c@example.com"],
                b"Subject: hi\n\nline\n.\n..dots\nbare\rcr\n",
            )
        assert result.data_reply is not None and result.data_reply.code == 250
        assert result.accepted == ["b@example.com", "c@example.com"]
        assert session.closed
    [msg] = server.handler.messages
    assert msg.rcpt_tos == ["b@example.com", "c@example.com"]
    # Server-side bytes (after aiosmtpd un-stuffs): CRLF everywhere, the lone dot intact.
    assert msg.content == b"Subject: hi\r\n\r\nline\r\n.\r\n..dots\r\nbare\r\ncr\r\n"
    assert any(opt.startswith("SIZE=") for opt in msg.mail_options)


def test_rcpt_mixed_replies_and_no_data_when_none_accepted() -> None:
    handler = RecordingHandler(
        rcpt_replies={
            "bad@example.com": "550 5.1.1 no such user",
            "later@example.com": "450 4.2.1 mailbox busy",
        }
    )
    with smtp_server(handler=handler) as server:
        entry = host_entry(server.host, security=Security.NONE)
        with SmtpSession(entry, None, local_hostname="client.test") as session:
            mixed = session.send(
                "a@example.com",
                ["ok@example.com", "bad@example.com", "later@example.com"],
                b"Subject: x\n\nbody\n",
            )
            none = session.send(
                "a@example.com", ["bad@example.com", "later@example.com"], b"Subject: y\n\nb\n"
            )
            assert not session.closed
    assert mixed.rcpt_replies["bad@example.com"].permanent
    assert mixed.rcpt_replies["bad@example.com"].enhanced == "5.1.1"
    assert mixed.rcpt_replies["later@example.com"].temporary
    assert mixed.accepted == ["ok@example.com"]
    assert none.data_reply is None and none.accepted == []
    assert len(handler.messages) == 1


def test_mail_refused_is_a_result_and_session_goes_on() -> None:
    handler = RecordingHandler(mail_reply="550 5.7.1 sender rejected")
    with smtp_server(handler=handler) as server:
        entry = host_entry(server.host, security=Security.NONE)
        with SmtpSession(entry, None, local_hostname="client.test") as session:
            result = session.send("a@example.com", ["b@example.com"], b"x\n")
            assert result.mail_reply.code == 550 and result.data_reply is None
            assert result.rcpt_replies == {}
            assert not session.closed


def test_data_refused_5xx() -> None:
    handler = RecordingHandler(data_reply="554 5.6.0 content rejected")
    with smtp_server(handler=handler) as server:
        entry = host_entry(server.host, security=Security.NONE)
        with SmtpSession(entry, None, local_hostname="client.test") as session:
            result = session.send("a@example.com", ["b@example.com"], b"x\n")
    assert result.data_reply is not None and result.data_reply.permanent
    assert result.accepted == [] and not result.delivered


def test_starttls_auth_plain(ca_file: Path, server_ssl_context: ssl.SSLContext) -> None:
    with smtp_server(starttls=server_ssl_context, auth=True, require_starttls=True) as server:
        entry = host_entry(server.host, username=USER, ca_file=str(ca_file))
        session = SmtpSession(entry, PASSWORD, local_hostname="client.test")
        session.open()
        try:
            assert session.encrypted and session.tls is not None
            assert session.tls.version in ("TLSv1.2", "TLSv1.3")
            assert "127.0.0.1" in " ".join(session.tls.san)
            assert session.auth_mechanism == "PLAIN"
            assert [t.name for t in session.trace] == [
                "resolve",
                "connect",
                "greeting",
                "ehlo",
                "tls",
                "ehlo-tls",
                "auth",
            ]
            result = session.send("a@example.com", ["b@example.com"], b"Subject: t\n\nx\n")
            assert result.delivered
        finally:
            session.close()
    assert server.handler.mechanisms_tried == ["PLAIN"]


def test_implicit_tls_auth_login(ca_file: Path, server_ssl_context: ssl.SSLContext) -> None:
    with smtp_server(implicit_tls=server_ssl_context, auth=True, mechanisms=("LOGIN",)) as server:
        entry = host_entry(server.host, username=USER, ca_file=str(ca_file), security=Security.SSL)
        with SmtpSession(entry, PASSWORD, local_hostname="client.test") as session:
            assert session.auth_mechanism == "LOGIN"
            assert [t.name for t in session.trace][:4] == ["resolve", "connect", "tls", "greeting"]
            assert session.send("a@example.com", ["b@example.com"], b"x\n").delivered
    assert server.handler.mechanisms_tried == ["LOGIN"]


def test_cram_md5_preferred(ca_file: Path, server_ssl_context: ssl.SSLContext) -> None:
    assert AUTH_PREFERENCE[0] == "CRAM-MD5"
    with smtp_server(
        starttls=server_ssl_context, auth=True, mechanisms=("PLAIN", "LOGIN", "CRAM-MD5")
    ) as server:
        entry = host_entry(server.host, username=USER, ca_file=str(ca_file))
        with SmtpSession(entry, PASSWORD, local_hostname="client.test") as session:
            assert session.auth_mechanism == "CRAM-MD5"
    assert server.handler.mechanisms_tried == ["CRAM-MD5"]


def test_wrong_password_535(ca_file: Path, server_ssl_context: ssl.SSLContext) -> None:
    with smtp_server(starttls=server_ssl_context, auth=True) as server:
        entry = host_entry(server.host, username=USER, ca_file=str(ca_file))
        session = SmtpSession(entry, "wrong", local_hostname="client.test")
        with pytest.raises(SmtpAuthError) as info:
            session.open()
        assert session.closed
    err = info.value
    assert (err.code, err.phase, err.port) == (535, "auth", server.port)
    assert "wrong" not in str(err) and "wrong" not in repr(session)
    assert f"127.0.0.1]:{server.port}" in str(err)


@pytest.mark.parametrize(
    ("reply", "code", "enhanced"),
    [
        (
            "535 5.7.139 Authentication unsuccessful, basic authentication is disabled",
            535,
            "5.7.139",
        ),
        ("534 5.7.9 Application-specific password required", 534, "5.7.9"),
        ("535 5.7.30 Basic authentication is not supported", 535, "5.7.30"),
    ],
)
def test_auth_policy_replies_keep_code(
    ca_file: Path, server_ssl_context: ssl.SSLContext, reply: str, code: int, enhanced: str
) -> None:
    handler = RecordingHandler(refuse_auth_with=reply)
    with smtp_server(starttls=server_ssl_context, auth=True, handler=handler) as server:
        entry = host_entry(server.host, username=USER, ca_file=str(ca_file))
        with pytest.raises(SmtpAuthError) as info:
            SmtpSession(entry, PASSWORD, local_hostname="client.test").open()
    assert (info.value.code, info.value.enhanced) == (code, enhanced)


def test_auth_required_530_without_credentials(
    ca_file: Path, server_ssl_context: ssl.SSLContext
) -> None:
    with smtp_server(starttls=server_ssl_context, auth=True, auth_required=True) as server:
        entry = host_entry(server.host, ca_file=str(ca_file))
        with SmtpSession(entry, None, local_hostname="client.test") as session:
            assert session.encrypted  # opportunistic STARTTLS was used
            result = session.send("a@example.com", ["b@example.com"], b"x\n")
    assert result.mail_reply.code == 530 and result.data_reply is None


def test_starttls_required_but_not_offered_never_sends_password() -> None:
    # AUTH PLAIN offered in clear text: the password must still never reach it.
    with smtp_server(auth=True, auth_require_tls=False) as server:
        entry = host_entry(f"[127.0.0.1]:{server.port}", username=USER)
        with pytest.raises(TlsFailedError) as info:
            SmtpSession(entry, PASSWORD, local_hostname="client.test").open()
    assert info.value.reason == "starttls-missing" and info.value.phase == "tls"
    assert isinstance(info.value, SmtpTLSError)
    assert "password was not sent" in str(info.value)
    assert server.handler.mechanisms_tried == []


def test_starttls_454_aborts_before_auth() -> None:
    def script(conn: ScriptConn) -> None:
        conn.send(b"220 hi ESMTP\r\n")
        conn.ehlo("AUTH PLAIN", "STARTTLS")
        conn.readline()
        conn.send(b"454 4.7.0 TLS not available due to temporary reason\r\n")
        conn.wait_closed()

    with ScriptServer(script) as server:
        entry = host_entry(server.host, username=USER)
        with pytest.raises(TlsFailedError) as info:
            SmtpSession(entry, PASSWORD, local_hostname="client.test").open()
        server.done.wait(5)
    assert (info.value.code, info.value.reason) == (454, "starttls-refused")
    assert "AUTH" not in server.text and "MAIL" not in server.text


def test_starttls_response_injection_is_discarded(tls_ca: Any, tmp_path: Path) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca.issue_cert("127.0.0.1").configure_cert(ctx)
    ca = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca))

    def script(conn: ScriptConn) -> None:
        conn.send(b"220 hi ESMTP\r\n")
        conn.ehlo("STARTTLS")
        conn.readline()
        # Injected: would answer our EHLO-after-TLS if it were read after the handshake.
        conn.send(b"220 go ahead\r\n250-evil.test\r\n250 AUTH INJECTED\r\n")
        conn.starttls(ctx)
        conn.ehlo("AUTH PLAIN", "SIZE 1000")
        conn.readline()  # AUTH
        conn.send(b"235 2.7.0 ok\r\n")
        conn.readline()  # QUIT
        conn.send(b"221 bye\r\n")

    with ScriptServer(script) as server:
        entry = host_entry(server.host, username=USER, ca_file=str(ca))
        with SmtpSession(entry, PASSWORD, local_hostname="client.test") as session:
            assert session.encrypted
            assert session.auth_mechanisms == ["PLAIN"]
            assert session.max_size == 1000
            assert session.starttls_discarded > 0
        server.done.wait(5)
    assert not server.errors


def test_certificate_for_other_host(tls_ca: Any, ca_file: Path) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca.issue_cert("mail.other.test").configure_cert(ctx)
    with smtp_server(implicit_tls=ctx) as server:
        entry = host_entry(server.host, security=Security.SSL, ca_file=str(ca_file))
        with pytest.raises(TlsFailedError) as info:
            SmtpSession(entry, None, local_hostname="client.test").open()
    assert info.value.reason == "hostname"


def test_self_signed_unknown_ca(server_ssl_context: ssl.SSLContext) -> None:
    import trustme

    other = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    other.issue_cert("127.0.0.1").configure_cert(ctx)
    with smtp_server(starttls=ctx) as server:
        entry = host_entry(server.host)
        with pytest.raises(TlsFailedError) as info:
            SmtpSession(entry, None, local_hostname="client.test").open()
    assert info.value.reason == "untrusted" and info.value.phase == "tls"


def test_expired_certificate(tls_ca: Any, ca_file: Path) -> None:
    import datetime

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    tls_ca.issue_cert(
        "127.0.0.1", not_before=past - datetime.timedelta(days=30), not_after=past
    ).configure_cert(ctx)
    with smtp_server(implicit_tls=ctx) as server:
        entry = host_entry(server.host, security=Security.SSL, ca_file=str(ca_file))
        with pytest.raises(TlsFailedError) as info:
            SmtpSession(entry, None, local_hostname="client.test").open()
    assert info.value.reason == "expired"


def test_implicit_tls_on_plain_port_fails_fast() -> None:
    with smtp_server() as server:
        entry = host_entry(server.host, security=Security.SSL)
        start = time.monotonic()
        with pytest.raises(TlsFailedError) as info:
            SmtpSession(entry, None, local_hostname="client.test").open()
    assert info.value.reason == "not-tls"
    assert time.monotonic() - start < 3


def test_plain_on_tls_port_times_out_in_greeting(server_ssl_context: ssl.SSLContext) -> None:
    with smtp_server(implicit_tls=server_ssl_context) as server:
        entry = host_entry(server.host, security=Security.NONE, command_timeout=0.5)
        with pytest.raises(SmtpTimeoutError) as info:
            SmtpSession(entry, None, local_hostname="client.test").open()
    assert info.value.phase == "greeting"


def test_connection_refused() -> None:
    port = closed_port()
    entry = host_entry(f"[127.0.0.1]:{port}", security=Security.NONE)
    with pytest.raises(ConnectFailedError) as info:
        SmtpSession(entry, None).open()
    assert info.value.reason == "refused" and info.value.phase == "connect"
    assert isinstance(info.value, SmtpConnectError)
    assert f"[127.0.0.1]:{port}" in str(info.value)


def test_hung_server_times_out_in_greeting() -> None:
    with ScriptServer(hang) as server:
        entry = host_entry(server.host, security=Security.NONE, command_timeout=0.3)
        start = time.monotonic()
        session = SmtpSession(entry, None, local_hostname="client.test")
        with pytest.raises(SmtpTimeoutError) as info:
            session.open()
        elapsed = time.monotonic() - start
    assert info.value.phase == "greeting" and 0.25 < elapsed < 3
    assert session.closed
    assert session.trace[-1].name == "greeting" and not session.trace[-1].ok


def test_session_timeout_cap() -> None:
    with ScriptServer(hang) as server:
        entry = host_entry(server.host, security=Security.NONE, command_timeout=300)
        session = SmtpSession(entry, None, local_hostname="client.test", timeout=0.3)
        with pytest.raises(SmtpTimeoutError):
            session.open()


def test_greeting_554_refused() -> None:
    def script(conn: ScriptConn) -> None:
        conn.send(b"554 5.7.1 no SMTP service for you\r\n")
        conn.wait_closed()

    with ScriptServer(script) as server:
        entry = host_entry(server.host, security=Security.NONE)
        with pytest.raises(SmtpReplyError) as info:
            SmtpSession(entry, None, local_hostname="client.test").open()
    assert (info.value.code, info.value.phase) == (554, "greeting")


def test_421_mid_session_raises_and_closes() -> None:
    def script(conn: ScriptConn) -> None:
        conn.send(b"220 hi ESMTP\r\n")
        conn.ehlo("8BITMIME")
        conn.readline()  # MAIL
        conn.send(b"250 ok\r\n")
        conn.readline()  # RCPT
        conn.send(b"421 4.3.2 shutting down\r\n")

    with ScriptServer(script) as server:
        entry = host_entry(server.host, security=Security.NONE)
        session = SmtpSession(entry, None, local_hostname="client.test")
        session.open()
        with pytest.raises(SmtpReplyError) as info:
            session.send("a@example.com", ["b@example.com"], b"x\n")
    assert (info.value.code, info.value.phase) == (421, "rcpt")
    assert session.closed


def test_connection_dropped_after_final_dot_is_data_end() -> None:
    def script(conn: ScriptConn) -> None:
        conn.send(b"220 hi ESMTP\r\n")
        conn.ehlo("PIPELINING")
        conn.readline()
        conn.readline()
        conn.readline()
        conn.send(b"250 ok\r\n250 ok\r\n354 go\r\n")
        conn.read_data()
        # close without a reply

    with ScriptServer(script) as server:
        entry = host_entry(server.host, security=Security.NONE)
        session = SmtpSession(entry, None, local_hostname="client.test")
        session.open()
        with pytest.raises(SmtpConnectError) as info:
            session.send("a@example.com", ["b@example.com"], b"x\n")
    assert info.value.phase == "data-end"
    assert session.closed


def test_pipelining_sends_one_write_and_raw_bytes_arrive() -> None:
    def script(conn: ScriptConn) -> None:
        conn.send(b"220 hi ESMTP\r\n")
        conn.ehlo("PIPELINING", "SIZE 5000", "8BITMIME")
        conn.readline()
        conn.readline()
        conn.readline()
        conn.readline()
        conn.send(b"250 ok\r\n250 ok\r\n550 5.1.1 no\r\n354 go\r\n")
        conn.read_data()
        conn.send(b"250 2.0.0 queued as X\r\n")
        conn.readline()
        conn.send(b"221 bye\r\n")

    with ScriptServer(script) as server:
        entry = host_entry(server.host, security=Security.NONE)
        with SmtpSession(entry, None, local_hostname="client.test") as session:
            result = session.send(
                "a@example.com",
                ["b@example.com", "c@example.com"],
                b"A: 1\n\n.\nbare\n",
                eight_bit=True,
            )
        server.done.wait(5)
    assert result.accepted == ["b@example.com"]
    assert result.rcpt_replies["c@example.com"].code == 550
    assert server.lines[1] == b"MAIL FROM:<a@example.com> SIZE=17 BODY=8BITMIME\r\n"
    assert server.data == [b"A: 1\r\n\r\n..\r\nbare\r\n.\r\n"]


def test_size_refused_by_server_is_a_result() -> None:
    with smtp_server(data_size_limit=1000) as server:
        entry = host_entry(server.host, security=Security.NONE)
        with SmtpSession(entry, None, local_hostname="client.test") as session:
            assert session.max_size == 1000
            result = session.send("a@example.com", ["b@example.com"], b"x" * 5000 + b"\n")
    assert result.mail_reply.code == 552 and result.data_reply is None


def test_smtputf8_not_offered_is_a_local_refusal() -> None:
    with smtp_server(enable_SMTPUTF8=False) as server:
        entry = host_entry(server.host, security=Security.NONE)
        with SmtpSession(entry, None, local_hostname="client.test") as session:
            result = session.send("ä@example.com", ["b@example.com"], b"x\n", smtputf8=True)
    assert result.mail_reply.local and result.mail_reply.code == 553
    assert server.handler.messages == []


def test_address_injection_refused() -> None:
    with smtp_server() as server:
        entry = host_entry(server.host, security=Security.NONE)
        with (
            SmtpSession(entry, None, local_hostname="client.test") as session,
            pytest.raises(MessageError),
        ):
            session.send("a@example.com", ["b@example.com>\r\nRSET"], b"x\n")


def test_password_without_auth_offered_is_refused() -> None:
    def script(conn: ScriptConn) -> None:
        conn.send(b"220 hi ESMTP\r\n")
        conn.ehlo("SIZE 1000")
        conn.wait_closed()

    with ScriptServer(script) as server:
        entry = host_entry(
            server.host, username=USER, security=Security.NONE, allow_plaintext_auth=True
        )
        with pytest.raises(SmtpAuthError) as info:
            SmtpSession(entry, PASSWORD, local_hostname="client.test").open()
        server.done.wait(5)
    assert getattr(info.value, "reason", None) == "auth-not-offered"
    assert "MAIL" not in server.text


def test_plaintext_auth_only_when_allowed() -> None:
    with smtp_server(auth=True, auth_require_tls=False) as server:
        allowed = host_entry(
            server.host, username=USER, security=Security.NONE, allow_plaintext_auth=True
        )
        with SmtpSession(allowed, PASSWORD, local_hostname="client.test") as session:
            assert session.auth_mechanism in ("PLAIN", "LOGIN")
        refused = host_entry(server.host, username=USER, security=Security.NONE)
        with pytest.raises(SmtpPolicyError):
            SmtpSession(refused, PASSWORD, local_hostname="client.test").open()
    assert len(server.handler.mechanisms_tried) == 1


def test_ipv6_literal() -> None:
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    port = free_port("::1")
    handler = RecordingHandler()
    controller = Controller(handler, hostname="::1", port=port)
    controller.start()
    try:
        entry = host_entry(f"[::1]:{port}", security=Security.NONE)
        with SmtpSession(entry, None) as session:
            assert session.where == f"[::1]:{port}"
            assert session.send("a@example.com", ["b@example.com"], b"x\n").delivered
    finally:
        controller.stop()


def test_file_data_is_streamed() -> None:
    with smtp_server(data_size_limit=10_000_000) as server:
        entry = host_entry(server.host, security=Security.NONE)
        body = b"Subject: big\n\n" + (b"y" * 70 + b"\n") * 40_000
        with SmtpSession(entry, None, local_hostname="client.test") as session:
            result = session.send("a@example.com", ["b@example.com"], io.BytesIO(body))
    assert result.delivered
    assert server.handler.messages[0].content == body.replace(b"\n", b"\r\n")


def test_log_never_contains_password(
    caplog: pytest.LogCaptureFixture, ca_file: Path, server_ssl_context: ssl.SSLContext
) -> None:
    caplog.set_level("DEBUG")
    with smtp_server(starttls=server_ssl_context, auth=True, mechanisms=("LOGIN",)) as server:
        entry = host_entry(server.host, username=USER, ca_file=str(ca_file))
        with SmtpSession(entry, PASSWORD, local_hostname="client.test"):
            pass
    secret_forms = [
        PASSWORD,
        base64.b64encode(PASSWORD.encode()).decode(),
        base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode(),
    ]
    assert "AUTH" in caplog.text
    for form in secret_forms:
        assert form not in caplog.text


@pytest.mark.slow
def test_fifty_megabytes(tmp_path: Path) -> None:
    with smtp_server(data_size_limit=100_000_000) as server:
        entry = host_entry(server.host, security=Security.NONE, data_timeout=60)
        body = b"Subject: 50MB\n\n" + (b"z" * 76 + b"\n") * 650_000
        with SmtpSession(entry, None, local_hostname="client.test") as session:
            result = session.send("a@example.com", ["b@example.com"], body)
    assert result.delivered
    assert len(server.handler.messages[0].content) == len(body) + 650_000 + 2


def answer_everything(conn: ScriptConn) -> None:
    """A pipelining server that answers line by line, as a real one does."""
    conn.send(b"220 hi ESMTP\r\n")
    conn.ehlo("PIPELINING", "8BITMIME")
    while True:
        line = conn.readline().upper()
        if line.startswith(b"DATA"):
            conn.send(b"354 go\r\n")
            conn.read_data()
            conn.send(b"250 2.0.0 queued\r\n")
        elif line.startswith(b"QUIT"):
            conn.send(b"221 bye\r\n")
            return
        else:
            conn.send(b"250 ok\r\n")


def test_pipelining_many_recipients_in_windows() -> None:
    recipients = [f"r{i}@example.com" for i in range(350)]
    with ScriptServer(answer_everything) as server:
        entry = host_entry(server.host, security=Security.NONE)
        with SmtpSession(entry, None, local_hostname="client.test") as session:
            result = session.send("a@example.com", recipients, b"x\n")
        server.done.wait(5)
    assert result.accepted == recipients
    assert sum(line.startswith(b"RCPT") for line in server.lines) == 350


# --- pipelining across messages (SmtpSession.transaction / run(then=...)) -------------------


def test_next_transaction_rides_behind_the_data() -> None:
    def script(conn: ScriptConn) -> None:
        conn.send(b"220 hi ESMTP\r\n")
        conn.ehlo("PIPELINING", "SIZE 5000")
        for _ in range(3):  # MAIL, RCPT, DATA of the first message
            conn.readline()
        conn.send(b"250 ok\r\n250 ok\r\n354 go\r\n")
        conn.read_data()
        # The next message's commands are here before the first one is answered:
        # a client that waited for the "250" would hang here (and time out).
        nxt = [conn.readline() for _ in range(3)]
        assert nxt[0].startswith(b"MAIL FROM:<a@example.com> SIZE=") and nxt[2] == b"DATA\r\n"
        conn.send(b"250 2.0.0 first\r\n250 ok\r\n250 ok\r\n354 go\r\n")
        conn.read_data()
        conn.send(b"250 2.0.0 second\r\n")
        conn.readline()
        conn.send(b"221 bye\r\n")

    with ScriptServer(script) as server:
        entry = host_entry(server.host, security=Security.NONE, command_timeout=3)
        with SmtpSession(entry, None, local_hostname="client.test") as session:
            first = session.transaction("a@example.com", ["b@example.com"], b"one\n")
            second = session.transaction("a@example.com", ["c@example.com"], b"two\n")
            assert not isinstance(first, SendResult) and not isinstance(second, SendResult)
            result_one = session.run(first, then=second)
            assert second.session is session  # its commands are on the wire
            result_two = session.run(second)
        server.done.wait(5)
    assert server.errors == []
    assert result_one.delivered and result_one.data_reply.text == "first"  # type: ignore[union-attr]
    assert result_two.delivered and result_two.data_reply.text == "second"  # type: ignore[union-attr]
    assert server.data == [b"one\r\n.\r\n", b"two\r\n.\r\n"]


def test_nothing_rides_behind_a_refused_transaction() -> None:
    def script(conn: ScriptConn) -> None:
        conn.send(b"220 hi ESMTP\r\n")
        conn.ehlo("PIPELINING")
        for _ in range(3):
            conn.readline()
        conn.send(b"250 ok\r\n550 5.1.1 no such user\r\n554 5.5.1 no valid recipients\r\n")
        assert conn.readline() == b"RSET\r\n"  # and nothing of the next message yet
        conn.send(b"250 ok\r\n")
        for _ in range(3):
            conn.readline()
        conn.send(b"250 ok\r\n250 ok\r\n354 go\r\n")
        conn.read_data()
        conn.send(b"250 ok\r\n")
        conn.readline()
        conn.send(b"221 bye\r\n")

    with ScriptServer(script) as server:
        entry = host_entry(server.host, security=Security.NONE, command_timeout=3)
        with SmtpSession(entry, None, local_hostname="client.test") as session:
            first = session.transaction("a@example.com", ["bad@example.com"], b"one\n")
            second = session.transaction("a@example.com", ["c@example.com"], b"two\n")
            assert not isinstance(first, SendResult) and not isinstance(second, SendResult)
            refused = session.run(first, then=second)
            assert refused.data_reply is None and second.session is None
            assert session.run(second).delivered
        server.done.wait(5)
    assert server.errors == [] and server.data == [b"two\r\n.\r\n"]


def _greet_and_take_one_message(conn: ScriptConn) -> None:
    """A PIPELINING server's side up to the reply to the final ".": greeting, EHLO,
    MAIL/RCPT/DATA read and accepted, the message data read."""
    conn.send(b"220 hi ESMTP\r\n")
    conn.ehlo("PIPELINING")
    for _ in range(3):
        conn.readline()
    conn.send(b"250 ok\r\n250 ok\r\n354 go\r\n")
    conn.read_data()


def test_chained_commands_lost_with_the_session_are_written_again() -> None:
    def script(conn: ScriptConn) -> None:
        _greet_and_take_one_message(conn)
        conn.send(b"421 4.3.2 going down\r\n")  # and the next commands are lost

    with ScriptServer(script) as first_server, smtp_server() as second_server:
        entry = host_entry(first_server.host, security=Security.NONE)
        session = SmtpSession(entry, None, local_hostname="client.test")
        session.open()
        one = session.transaction("a@example.com", ["b@example.com"], b"one\n")
        two = session.transaction("a@example.com", ["c@example.com"], b"two\n")
        assert not isinstance(one, SendResult) and not isinstance(two, SendResult)
        with pytest.raises(SmtpReplyError) as info:
            session.run(one, then=two)
        assert info.value.code == 421 and session.closed and two.session is session
        other = SmtpSession(
            host_entry(second_server.host, security=Security.NONE), None, local_hostname="x"
        )
        other.open()
        assert other.run(two).delivered  # written again there: not "already sent"
        other.close()
    assert [m.content for m in second_server.handler.messages] == [b"two\r\n"]


def test_interrupt_wakes_a_session_blocked_in_another_thread() -> None:
    with ScriptServer(hang) as server:
        entry = host_entry(server.host, security=Security.NONE, command_timeout=60)
        session = SmtpSession(entry, None, local_hostname="client.test")
        errors: list[BaseException] = []

        def opener() -> None:
            try:
                session.open()
            except BaseException as exc:  # checked below
                errors.append(exc)

        thread = threading.Thread(target=opener)
        thread.start()
        deadline = time.monotonic() + 5
        while session.channel.sock is None and time.monotonic() < deadline:
            time.sleep(0.005)  # poll with a deadline: connected, waiting for the greeting
        started = time.monotonic()
        session.interrupt()
        thread.join(10)
    assert not thread.is_alive() and time.monotonic() - started < 5
    assert len(errors) == 1 and isinstance(errors[0], SmtpConnectError)


def test_replies_seen_before_are_read_again_exactly() -> None:
    """One-line replies are kept once parsed (smtp/channel.py ``_SEEN``): the same
    line again gives the same reply, a line that differs in one character or
    continues over several lines is read as sent, and a refusal is never taken
    from what was kept."""
    rounds = [
        (b"250 2.1.0 Ok\r\n", b"250 2.1.5 Ok\r\n", b"354 go\r\n", b"250 2.0.0 queued as A\r\n"),
        (b"250 2.1.0 Ok\r\n", b"250 2.1.5 Ok\r\n", b"354 go\r\n", b"250 2.0.0 queued as B\r\n"),
        (
            b"250 2.1.0 Ok\r\n",
            b"250 2.1.5 OK\r\n",
            b"354 go\r\n",
            b"250-2.0.0 two\r\n250 2.0.0 lines\r\n",
        ),
        (b"250 2.1.0 Ok\r\n", b"450 4.2.0 Ok\r\n", b"354 go\r\n", b".\r\n"),
    ]

    def script(conn: ScriptConn) -> None:
        conn.send(b"220 hi ESMTP\r\n")
        conn.ehlo("PIPELINING")
        for mail, rcpt, data, end in rounds:
            for _ in range(3):
                conn.readline()
            conn.send(mail + rcpt + data)
            if end == b".\r\n":  # nobody accepted: the client ends the data at once
                conn.readline()
                conn.send(b"554 5.5.1 no valid recipients\r\n")
                conn.readline()  # RSET
                conn.send(b"250 2.0.0 Ok\r\n")
                continue
            conn.read_data()
            conn.send(end)
        conn.readline()

    with ScriptServer(script) as server:
        entry = host_entry(server.host, security=Security.NONE)
        with SmtpSession(entry, None, local_hostname="client.test") as session:
            results = [session.send("a@example.com", ["b@example.com"], b"x\n") for _ in rounds]
    assert [r.rcpt_replies["b@example.com"].one_line for r in results] == [
        "250 2.1.5 Ok",
        "250 2.1.5 Ok",
        "250 2.1.5 OK",
        "450 4.2.0 Ok",
    ]
    assert [r.data_reply.text if r.data_reply else None for r in results] == [
        "queued as A",
        "queued as B",
        "two\nlines",
        None,
    ]
    assert all(r.mail_reply.one_line == "250 2.1.0 Ok" for r in results)
    assert results[3].accepted == []
    kept = channel_module._SEEN  # what was read again without parsing
    assert kept[b"250 2.1.0 Ok\r"] == results[0].mail_reply
    assert not any(line.startswith((b"450", b"554", b"250-")) for line in kept)


def test_debug_log_names_the_peer_for_pipelined_commands_and_data(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The peer's name in the commands' and the data's debug lines is formatted only
    when debug logging is on (smtp/wire.py command_bytes, smtp/content.py)."""

    def script(conn: ScriptConn) -> None:
        _greet_and_take_one_message(conn)
        conn.send(b"250 2.0.0 queued\r\n")
        conn.readline()

    with ScriptServer(script) as server:
        entry = host_entry(server.host, security=Security.NONE)
        with (
            caplog.at_level("DEBUG", logger="carerix_smtp"),
            SmtpSession(entry, None, local_hostname="client.test") as session,
        ):
            session.send("a@example.com", ["b@example.com"], b"x\n")
            peer = session.where
    lines = [record.getMessage() for record in caplog.records]
    assert f"{peer} C: MAIL FROM:<a@example.com>" in lines
    assert f"{peer} C: RCPT TO:<b@example.com>" in lines
    assert f"{peer} C: <6 bytes of message data>" in lines  # x CR LF . CR LF
