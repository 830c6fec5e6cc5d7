"""The probe of `cxsmtp test`: every failure gives the right phase, hint and exit code,
against real servers on 127.0.0.1 and the loopback DNS server."""

from __future__ import annotations

import datetime
import json
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
from dns_server import dns_server
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

from carerix_smtp.config.tls import Security
from carerix_smtp.errors import SecretError, UsageError
from carerix_smtp.probe.phases import build_test_message
from carerix_smtp.probe.probe import parse_duration, run_probe, wait_until_ready
from carerix_smtp.probe.report import ProbeOptions, ProbeReport
from carerix_smtp.smtp.resolve import make_resolver

FAST = ProbeOptions(timeout=2.0, local_hostname="client.test")


def probe(entry: Any, password: str | None = None, **kw: Any) -> ProbeReport:
    options = kw.pop("options", FAST)
    report = run_probe(entry, password, options, **kw)
    json.dumps(report.to_dict())  # always serialisable
    return report


def statuses(report: ProbeReport) -> dict[str, str]:
    return {p.name: p.status for p in report.phases}


def failed(report: ProbeReport) -> str:
    phase = report.failed_phase
    assert phase is not None, report.to_dict()
    return phase.name


def options(**kw: Any) -> ProbeOptions:
    return ProbeOptions(**{"timeout": 2.0, "local_hostname": "client.test", **kw})


# --- passing runs ---------------------------------------------------------------------


def test_starttls_auth_and_test_message_delivered(
    ca_file: Path, server_ssl_context: ssl.SSLContext
) -> None:
    with smtp_server(starttls=server_ssl_context, auth=True, data_size_limit=50_000) as server:
        entry = host_entry(server.host, username=USER, ca_file=str(ca_file))
        report = probe(entry, PASSWORD, options=options(to="me@example.com"))
    assert report.passed and report.exit_code == 0, report.to_dict()
    assert [p.name for p in report.phases] == [
        "resolve", "connect", "greeting", "ehlo", "tls", "ehlo-tls", "auth",
        "mail", "rcpt", "data", "quit",
    ]  # fmt: skip
    assert all(p.status == "ok" for p in report.phases)
    by_name = {p.name: p for p in report.phases}
    tls = by_name["tls"].detail
    assert tls["version"] in ("TLSv1.2", "TLSv1.3") and tls["cipher"] and tls["not_after"]
    assert any("127.0.0.1" in san for san in tls["san"])
    assert by_name["ehlo-tls"].detail["size"] == 50_000
    assert "PLAIN" in by_name["ehlo-tls"].detail["auth"]
    assert by_name["auth"].detail["mechanism"] == "PLAIN"
    assert by_name["greeting"].summary.startswith("220")
    [message] = server.handler.messages
    assert message.rcpt_tos == ["me@example.com"]
    assert b"Subject: cxsmtp test message" in message.content
    assert b"Message-ID: <" in message.content and b"\r\nDate: " in message.content
    assert b"test message sent by 'cxsmtp test'" in message.content


def test_implicit_tls_phases_in_order(ca_file: Path, server_ssl_context: ssl.SSLContext) -> None:
    with smtp_server(implicit_tls=server_ssl_context, auth=True) as server:
        entry = host_entry(server.host, username=USER, ca_file=str(ca_file), security=Security.SSL)
        report = probe(entry, PASSWORD)
    assert report.passed
    assert [p.name for p in report.phases] == [
        "resolve", "connect", "tls", "greeting", "ehlo", "auth", "quit",
    ]  # fmt: skip


def test_opportunistic_without_starttls_shows_tls_skipped() -> None:
    with smtp_server() as server:
        report = probe(host_entry(f"127.0.0.1:{server.port}"))
    assert report.passed
    assert statuses(report)["tls"] == "skipped" and statuses(report)["ehlo-tls"] == "skipped"


# --- resolve / connect -------------------------------------------------------------------


def test_mx_elsewhere_refused_suggests_brackets() -> None:
    port = closed_port()
    records = {
        "smtp.example.test": {"MX": [(10, "mx.example.test")], "A": ["127.0.0.1"]},
        "mx.example.test": {"A": ["127.0.0.1"]},
    }
    with dns_server(records) as dns:
        entry = host_entry(f"smtp.example.test:{port}")
        report = probe(entry, resolver=make_resolver([dns.nameserver]))
    assert failed(report) == "connect" and report.exit_code == 69
    assert f"try '[smtp.example.test]:{port}'" in (report.hint or "")
    assert "cxsmtp server edit test --host" in (report.hint or "")
    resolve = report.phases[0]
    assert resolve.detail["mx"][0]["host"] == "mx.example.test"
    assert resolve.summary.startswith("MX 10 mx.example.test")


def test_name_not_found() -> None:
    with dns_server({}) as dns:
        report = probe(host_entry("[nowhere.test]:587"), resolver=make_resolver([dns.nameserver]))
    assert failed(report) == "resolve" and report.exit_code == 68
    assert "does not exist in DNS" in (report.hint or "")
    assert statuses(report)["connect"] == "skipped"


def test_connection_refused() -> None:
    report = probe(host_entry(f"[127.0.0.1]:{closed_port()}", security=Security.NONE))
    assert failed(report) == "connect" and report.exit_code == 69
    assert "connection refused" in (report.hint or "")


def test_connect_timeout_is_distinct_from_refused() -> None:
    """A listener whose backlog is full drops further SYNs: connect() times out."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):  # fill the accept queue (never accepted)
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        entry = host_entry(f"[127.0.0.1]:{port}", security=Security.NONE, connect_timeout=0.5)
        report = probe(entry)
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
    if failed(report) != "connect":  # pragma: no cover - kernel accepted it after all
        pytest.skip("this kernel did not drop the SYN")
    assert report.exit_code == 69
    assert "within 0.5 s" in (report.hint or "") and "firewall" in (report.hint or "")


def test_hung_server_no_greeting() -> None:
    with ScriptServer(hang) as server:
        entry = host_entry(server.host, security=Security.NONE)
        start = time.monotonic()
        report = probe(entry, options=options(timeout=0.4))
    assert time.monotonic() - start < 5
    assert failed(report) == "greeting" and report.exit_code == 69
    assert "sent no greeting" in (report.hint or "")


# --- TLS ------------------------------------------------------------------------------


def test_plain_client_on_implicit_tls_port_names_ssl(server_ssl_context: ssl.SSLContext) -> None:
    with smtp_server(implicit_tls=server_ssl_context) as server:
        entry = host_entry(server.host, security=Security.STARTTLS)
        report = probe(entry, options=options(timeout=0.5))
    assert failed(report) == "greeting"
    assert "speaks implicit TLS" in (report.hint or "") and "--security ssl" in (report.hint or "")


def test_ssl_on_plain_port_names_starttls() -> None:
    with smtp_server() as server:
        entry = host_entry(server.host, security=Security.SSL)
        report = probe(entry)
    assert failed(report) == "tls" and report.exit_code == 76
    hint = report.hint or ""
    assert "speaks plain SMTP" in hint and "--security starttls" in hint and "220" in hint


def test_starttls_missing_password_not_sent() -> None:
    with smtp_server(auth=True, auth_require_tls=False) as server:
        entry = host_entry(f"[127.0.0.1]:{server.port}", username=USER)
        report = probe(entry, PASSWORD)
    assert failed(report) == "tls" and report.exit_code == 76
    assert "password was not sent" in (report.hint or "")
    assert statuses(report)["auth"] == "skipped"
    assert server.handler.mechanisms_tried == []


def test_starttls_454() -> None:
    def script(conn: ScriptConn) -> None:
        conn.send(b"220 hi ESMTP\r\n")
        conn.ehlo("STARTTLS", "AUTH PLAIN")
        conn.readline()
        conn.send(b"454 4.7.0 TLS not available\r\n")
        conn.readline()
        conn.send(b"221 bye\r\n")

    with ScriptServer(script) as server:
        report = probe(host_entry(server.host, username=USER), PASSWORD)
    assert failed(report) == "tls" and report.exit_code == 76
    assert "refused to start it" in (report.hint or "")
    assert report.failed_phase is not None and report.failed_phase.detail["code"] == 454


def test_certificate_for_other_name(tls_ca: Any, ca_file: Path) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca.issue_cert("mail.other.test").configure_cert(ctx)
    with smtp_server(implicit_tls=ctx) as server:
        entry = host_entry(server.host, security=Security.SSL, ca_file=str(ca_file))
        report = probe(entry)
    assert failed(report) == "tls" and report.exit_code == 76
    assert "certificate is for DNS:mail.other.test" in (report.hint or "")
    assert "--insecure-skip-verify" in (report.hint or "")


def test_self_signed_then_accepted_with_ca_file(tmp_path: Path) -> None:
    import trustme

    own_ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    own_ca.issue_cert("127.0.0.1").configure_cert(ctx)
    ca_path = tmp_path / "own-ca.pem"
    own_ca.cert_pem.write_to_path(str(ca_path))
    with smtp_server(starttls=ctx) as server:
        report = probe(host_entry(server.host))
        fixed = probe(host_entry(server.host, ca_file=str(ca_path)))
    assert failed(report) == "tls" and report.exit_code == 76
    assert "self-signed or from an unknown CA" in (report.hint or "")
    assert "--ca-file" in (report.hint or "")
    assert fixed.passed


def test_expired_certificate(tls_ca: Any, ca_file: Path) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    end = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    tls_ca.issue_cert(
        "127.0.0.1", not_before=end - datetime.timedelta(days=90), not_after=end
    ).configure_cert(ctx)
    with smtp_server(implicit_tls=ctx) as server:
        entry = host_entry(server.host, security=Security.SSL, ca_file=str(ca_file))
        report = probe(entry)
    assert failed(report) == "tls" and report.exit_code == 76
    assert "expired on 2020-01-01" in (report.hint or "")


# --- AUTH -------------------------------------------------------------------------------


def test_wrong_password_535(ca_file: Path, server_ssl_context: ssl.SSLContext) -> None:
    with smtp_server(starttls=server_ssl_context, auth=True) as server:
        entry = host_entry(server.host, username=USER, ca_file=str(ca_file))
        report = probe(entry, "not-the-password")
    assert failed(report) == "auth" and report.exit_code == 77
    assert "refused the username or password (535)" in (report.hint or "")
    assert "not-the-password" not in json.dumps(report.to_dict())
    assert statuses(report)["tls"] == "ok"


@pytest.mark.parametrize(
    "reply",
    [
        "535 5.7.139 Authentication unsuccessful, basic authentication is disabled",
        "535 5.7.30 Basic authentication is not supported for Client Submission",
        "534 5.7.9 Application-specific password required",
    ],
)
def test_basic_auth_disabled(ca_file: Path, server_ssl_context: ssl.SSLContext, reply: str) -> None:
    handler = RecordingHandler(refuse_auth_with=reply)
    with smtp_server(starttls=server_ssl_context, auth=True, handler=handler) as server:
        entry = host_entry(server.host, username=USER, ca_file=str(ca_file))
        report = probe(entry, PASSWORD)
    assert report.exit_code == 77
    assert "app password" in (report.hint or "") and "password-command" in (report.hint or "")


def test_auth_required_530_at_mail(ca_file: Path, server_ssl_context: ssl.SSLContext) -> None:
    with smtp_server(starttls=server_ssl_context, auth=True, auth_required=True) as server:
        entry = host_entry(server.host, ca_file=str(ca_file))
        report = probe(entry, options=options(to="me@example.com"))
    assert failed(report) == "mail" and report.exit_code == 65
    assert "requires authentication (530)" in (report.hint or "")
    assert statuses(report)["rcpt"] == "skipped" and statuses(report)["quit"] == "ok"


def test_no_password_found_fails_auth_after_tls(
    ca_file: Path, server_ssl_context: ssl.SSLContext
) -> None:
    with smtp_server(starttls=server_ssl_context, auth=True) as server:
        entry = host_entry(server.host, username=USER, ca_file=str(ca_file))
        error = SecretError("no password for server 'test'", hint="set CXSMTP_PASSWORD_TEST")
        report = probe(entry, None, password_error=error)
    assert failed(report) == "auth" and report.exit_code == 78
    assert statuses(report)["tls"] == "ok"
    assert report.hint == "set CXSMTP_PASSWORD_TEST"
    assert server.handler.mechanisms_tried == []


def test_recipient_refused() -> None:
    handler = RecordingHandler(rcpt_replies={"me@example.com": "550 5.1.1 no such user"})
    with smtp_server(handler=handler) as server:
        report = probe(
            host_entry(server.host, security=Security.NONE), options=options(to="me@example.com")
        )
    assert failed(report) == "rcpt" and report.exit_code == 65
    assert "check the --to address" in (report.hint or "")


# --- SIZE with --spool --------------------------------------------------------------------


def test_spool_message_above_size(tmp_path: Path) -> None:
    (tmp_path / "small.eml").write_bytes(b"x" * 100)
    (tmp_path / "big.eml").write_bytes(b"x" * 5000)
    (tmp_path / "ignored.tmp").write_bytes(b"x" * 90000)
    with smtp_server(data_size_limit=1000) as server:
        report = probe(
            host_entry(server.host, security=Security.NONE), options=options(spool=tmp_path)
        )
    assert failed(report) == "size" and report.exit_code == 65
    size = report.failed_phase
    assert size is not None and size.detail["largest"] == "big.eml"
    assert size.detail["server_size"] == 1000
    assert "will be refused" in (report.hint or "")


def test_spool_within_size(tmp_path: Path) -> None:
    (tmp_path / "a.eml").write_bytes(b"x" * 100)
    with smtp_server(data_size_limit=1000) as server:
        report = probe(
            host_entry(server.host, security=Security.NONE), options=options(spool=tmp_path)
        )
    assert report.passed and statuses(report)["size"] == "ok"


# --- SPF ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "status", "result", "exit_code"),
    [
        ("v=spf1 ip4:127.0.0.1 -all", "ok", "pass", 0),
        ("v=spf1 ip4:192.0.2.1 -all", "failed", "fail", 65),
        ("v=spf1 ~all", "ok", "softfail", 0),
    ],
)
def test_spf_of_sender_domain(record: str, status: str, result: str, exit_code: int) -> None:
    with dns_server({"sender.test": {"TXT": [record]}}) as dns, smtp_server() as server:
        report = probe(
            host_entry(server.host, security=Security.NONE),
            resolver=make_resolver([dns.nameserver]),
            options=options(mail_from="me@sender.test"),
        )
    spf = {p.name: p for p in report.phases}["spf"]
    assert spf.status == status and spf.detail["result"] == result
    assert spf.detail["results"]["127.0.0.1"]["record"] == record
    assert "submission address" in spf.detail["note"]
    assert report.exit_code == exit_code
    if result != "pass":
        assert "ip4:127.0.0.1" in (spf.hint or "")


# --- wait until ready ------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def report_with(code: int) -> ProbeReport:
    return ProbeReport("t", "h", 25, exit_code=code)


def test_wait_until_ready_retries_with_backoff_until_pass() -> None:
    clock = FakeClock()
    results = iter([69, 77, 69, 0])
    retried: list[float] = []
    report = wait_until_ready(
        lambda: report_with(next(results)),
        900,
        clock=clock,
        sleep=clock.sleep,
        on_retry=lambda r, wait: retried.append(wait),
    )
    assert report.passed and report.attempts == 4
    assert clock.sleeps == [10, 20, 40] == retried


def test_wait_until_ready_gives_up_at_the_deadline() -> None:
    clock = FakeClock()
    report = wait_until_ready(
        lambda: report_with(69), 90, clock=clock, sleep=clock.sleep, max_delay=60
    )
    assert not report.passed and clock.now == 1090
    assert clock.sleeps == [10, 20, 40, 20]


def test_wait_until_ready_does_not_retry_config_errors() -> None:
    clock = FakeClock()
    report = wait_until_ready(lambda: report_with(78), 900, clock=clock, sleep=clock.sleep)
    assert report.attempts == 1 and clock.sleeps == []


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("15m", 900), ("1h", 3600), ("1h30m", 5400), (" 2M ", 120)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "15x", "m15", "1h junk"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(UsageError, match="duration"):
        parse_duration(text)


def test_test_message_has_the_headers() -> None:
    entry = host_entry("[127.0.0.1]:25")
    message = build_test_message("a@example.com", "b@example.com", entry).decode()
    head = message.split("\r\n\r\n")[0]
    for header in (
        "From: <a@example.com>",
        "To: <b@example.com>",
        "Subject: cxsmtp test",
        "Date: ",
        "Message-ID: <",
        "@example.com>",
    ):
        assert header in head
