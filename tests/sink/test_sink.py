"""carerix_smtp.sink: the capture server, with smtplib as the client."""

from __future__ import annotations

import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from carerix_smtp.errors import SinkStartError, UsageError
from carerix_smtp.sink.config import (
    FailRule,
    PhaseRule,
    SinkConfig,
    parse_fail_rule,
    parse_phase_rule,
)
from carerix_smtp.sink.run import run_sink
from carerix_smtp.sink.server import Sink
from carerix_smtp.sink.store import Received, envelope_header

MSG = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nHello.\r\n"

MakeSink = Callable[..., Sink]


@pytest.fixture
def make_sink(tmp_path: Path) -> Iterator[MakeSink]:
    """Start a sink on a free loopback port (files in tmp_path/mail unless out_dir=None)."""
    started: list[Sink] = []

    def make(on_message: Callable[[Received], None] | None = None, **options: object) -> Sink:
        options.setdefault("out_dir", tmp_path / "mail")
        sink = Sink(SinkConfig(**options), on_message=on_message)  # type: ignore[arg-type]
        started.append(sink.start())
        return sink

    yield make
    for sink in started:
        sink.stop()


def client(sink: Sink, timeout: float = 5.0) -> smtplib.SMTP:
    return smtplib.SMTP(sink.host, sink.port, local_hostname="client.test", timeout=timeout)


def first_error(sink: Sink, rcpts: tuple[str, ...] = ("b@example.com",)) -> tuple[str, int]:
    """Run one transaction step by step; the phase and code of the first refusal."""
    try:
        smtp = client(sink)
    except smtplib.SMTPConnectError as exc:
        return "connect", exc.smtp_code
    with smtp:
        code, _ = smtp.ehlo()
        if code != 250:
            return "ehlo", code
        code, _ = smtp.mail("a@example.com")
        if code != 250:
            return "mail", code
        for rcpt in rcpts:
            code, _ = smtp.rcpt(rcpt)
            if code != 250:
                return "rcpt", code
        try:
            code, _ = smtp.data(MSG)
        except smtplib.SMTPDataError as exc:
            return "data", exc.smtp_code
        return ("ok" if code == 250 else "eod"), code


# --------------------------------------------------------------------- storage


def test_message_stored_exactly_with_envelope_headers(make_sink: MakeSink) -> None:
    sink = make_sink()
    body = (
        b"Subject: dots and bytes\r\n\r\n"
        b".starts with a dot\r\n"
        b"..two dots\r\n"
        b"bare\nLF kept\r\n"
        b"caf\xc3\xa9 \xe2\x82\xac\r\n"
    )
    with client(sink) as smtp:
        refused = smtp.sendmail(
            "j\u00f6rg@example.com",
            ["x@example.com", "y@example.com"],
            body,
            mail_options=["SMTPUTF8", "BODY=8BITMIME"],
        )
    assert refused == {}
    assert sink.wait_for(1, timeout=5)
    (message,) = sink.messages
    assert message.data == body
    assert message.mail_from == "j\u00f6rg@example.com"
    assert message.rcpt_tos == ("x@example.com", "y@example.com")
    assert "SMTPUTF8" in message.mail_options and "BODY=8BITMIME" in message.mail_options
    assert message.size == len(body)
    assert message.session_peer.startswith("127.0.0.1:")
    assert message.tls is False and message.auth_user is None
    assert message.path is not None and message.path.suffix == ".eml"
    assert message.path.read_bytes() == (
        b"X-Cxsmtp-Envelope-From: j\xc3\xb6rg@example.com\r\n"
        b"X-Cxsmtp-Envelope-To: x@example.com\r\n"
        b"X-Cxsmtp-Envelope-To: y@example.com\r\n" + body
    )
    assert [p.name for p in message.path.parent.iterdir()] == [message.path.name]  # no temp left


def test_null_sender_and_memory_only(make_sink: MakeSink) -> None:
    sink = make_sink(out_dir=None)
    with client(sink) as smtp:
        smtp.sendmail("", ["b@example.com"], MSG)
    assert sink.wait_for(1, timeout=5)
    (message,) = sink.messages
    assert message.mail_from == ""
    assert message.path is None
    assert message.data == MSG
    assert envelope_header("", ["b@example.com"]).startswith(b"X-Cxsmtp-Envelope-From: <>\r\n")


def test_keep_data_off_keeps_size_only(make_sink: MakeSink) -> None:
    sink = make_sink(keep_data=False)
    with client(sink) as smtp:
        smtp.sendmail("a@example.com", ["b@example.com"], MSG)
    assert sink.wait_for(1, timeout=5)
    (message,) = sink.messages
    assert message.data == b"" and message.size == len(MSG)
    assert message.path is not None and message.path.read_bytes().endswith(MSG)


def test_on_message_callback_and_copies(make_sink: MakeSink) -> None:
    seen: list[Received] = []
    sink = make_sink(on_message=seen.append)
    with client(sink) as smtp:
        for n in range(3):
            smtp.sendmail("a@example.com", [f"r{n}@example.com"], MSG)
    assert sink.wait_for(3, timeout=5)
    assert [m.rcpt_tos for m in seen] == [
        ("r0@example.com",),
        ("r1@example.com",),
        ("r2@example.com",),
    ]
    copy = sink.messages
    copy.clear()
    assert len(sink.messages) == 3
    assert len({m.path for m in sink.messages}) == 3


def test_wait_for_times_out(make_sink: MakeSink) -> None:
    sink = make_sink()
    started = time.monotonic()
    assert sink.wait_for(1, timeout=0.05) is False
    assert time.monotonic() - started >= 0.05


def test_connection_counts(make_sink: MakeSink) -> None:
    sink = make_sink()
    with client(sink), client(sink):
        assert sink.wait_until(lambda s: s.connections_open == 2, timeout=5)
    assert sink.wait_idle(timeout=5)
    assert sink.connections_total == 2
    assert sink.connections_max == 2
    assert sink.stats().connections_total == 2


# --------------------------------------------------------------------- TLS


def test_implicit_tls_verified_with_ca_file(make_sink: MakeSink) -> None:
    sink = make_sink(tls="implicit")
    assert sink.ca_file is not None and sink.ca_file.read_bytes() == sink.ca_pem
    context = ssl.create_default_context(cafile=str(sink.ca_file))
    with smtplib.SMTP_SSL(
        sink.host, sink.port, local_hostname="client.test", timeout=5, context=context
    ) as smtp:
        code, _ = smtp.ehlo()
        assert code == 250
        assert "starttls" not in smtp.esmtp_features
        smtp.sendmail("a@example.com", ["b@example.com"], MSG)
    assert sink.wait_for(1, timeout=5)
    assert sink.messages[0].tls is True


def test_implicit_tls_refused_by_another_ca(make_sink: MakeSink) -> None:
    sink = make_sink(tls="implicit")
    other = ssl.create_default_context()
    trustme.CA().configure_trust(other)
    with pytest.raises(ssl.SSLCertVerificationError):
        smtplib.SMTP_SSL(sink.host, sink.port, local_hostname="c", timeout=5, context=other)


def test_starttls_verified_and_ca_out(make_sink: MakeSink, tmp_path: Path) -> None:
    ca_out = tmp_path / "out" / "ca.pem"
    ca_out.parent.mkdir()
    sink = make_sink(tls="starttls", ca_out=ca_out)
    assert sink.ca_file == ca_out and ca_out.read_bytes() == sink.ca_pem
    with client(sink) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls")
        smtp.starttls(context=sink.client_ssl_context())
        smtp.ehlo()
        assert not smtp.has_extn("starttls")
        smtp.sendmail("a@example.com", ["b@example.com"], MSG)
    assert sink.wait_for(1, timeout=5)
    assert sink.messages[0].tls is True


def test_own_certificate(make_sink: MakeSink, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    sink = make_sink(tls="implicit", cert_file=tmp_path / "cert.pem", key_file=tmp_path / "key.pem")
    assert sink.ca_file is None
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with smtplib.SMTP_SSL(
        sink.host, sink.port, local_hostname="c", timeout=5, context=context
    ) as s:
        assert s.noop()[0] == 250


def test_require_starttls(make_sink: MakeSink) -> None:
    sink = make_sink(tls="starttls", require_starttls=True)
    with client(sink) as smtp:
        smtp.ehlo()
        assert smtp.mail("a@example.com") == (530, b"5.7.0 Must issue a STARTTLS command first")


# --------------------------------------------------------------------- AUTH


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_auth_success_after_starttls(make_sink: MakeSink, mechanism: str) -> None:
    sink = make_sink(tls="starttls", auth=("user", "s3cret"), auth_required=True)
    with client(sink) as smtp:
        smtp.starttls(context=sink.client_ssl_context())
        smtp.ehlo()
        assert set(smtp.esmtp_features["auth"].split()) == {"PLAIN", "LOGIN"}
        smtp.user, smtp.password = "user", "s3cret"
        code, _ = smtp.auth(mechanism, getattr(smtp, f"auth_{mechanism.lower()}"))
        assert code == 235
        smtp.sendmail("a@example.com", ["b@example.com"], MSG)
    assert sink.wait_for(1, timeout=5)
    assert sink.messages[0].auth_user == "user"


def test_auth_failure_535(make_sink: MakeSink) -> None:
    sink = make_sink(tls="implicit", auth=("user", "s3cret"))
    context = sink.client_ssl_context()
    with smtplib.SMTP_SSL(
        sink.host, sink.port, local_hostname="c", timeout=5, context=context
    ) as s:
        s.ehlo()
        assert s.has_extn("auth")  # implicit TLS counts as encrypted
        with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
            s.login("user", "wrong")
        assert caught.value.smtp_code == 535


def test_auth_refused_before_tls(make_sink: MakeSink) -> None:
    sink = make_sink(tls="starttls", auth=("user", "s3cret"))
    with client(sink) as smtp:
        smtp.ehlo()
        assert not smtp.has_extn("auth")
        code, text = smtp.docmd("AUTH", "PLAIN AHVzZXIAczNjcmV0")
        assert (code, text[:6]) == (538, b"5.7.11")


def test_auth_without_tls_when_allowed(make_sink: MakeSink) -> None:
    sink = make_sink(auth=("user", "s3cret"), auth_require_tls=False)
    with client(sink) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("auth")
        assert smtp.login("user", "s3cret")[0] == 235


def test_auth_required_refuses_mail(make_sink: MakeSink) -> None:
    sink = make_sink(tls="starttls", auth=("user", "s3cret"), auth_required=True)
    with client(sink) as smtp:
        smtp.starttls(context=sink.client_ssl_context())
        smtp.ehlo()
        assert smtp.mail("a@example.com")[0] == 530


def test_no_auth_configured(make_sink: MakeSink) -> None:
    sink = make_sink(tls="implicit")
    context = sink.client_ssl_context()
    with smtplib.SMTP_SSL(
        sink.host, sink.port, local_hostname="c", timeout=5, context=context
    ) as s:
        s.ehlo()
        assert not s.has_extn("auth")
        assert s.docmd("AUTH", "PLAIN AHVzZXIAczNjcmV0")[0] == 502


# --------------------------------------------------------------------- latency, SIZE, limits


def test_latency_applies_to_every_reply(make_sink: MakeSink) -> None:
    latency = 0.1
    sink = make_sink(latency_ms=latency * 1000)
    started = time.monotonic()
    smtp = client(sink)  # waits for the greeting
    timings = {"greeting": time.monotonic() - started}
    with smtp:
        for name, step in [
            ("ehlo", lambda: smtp.ehlo()),
            ("mail", lambda: smtp.mail("a@example.com")),
            ("rcpt", lambda: smtp.rcpt("b@example.com")),
            ("data+eod", lambda: smtp.data(MSG)),
        ]:
            started = time.monotonic()
            assert step()[0] in (250, 354)
            timings[name] = time.monotonic() - started
    assert all(t >= latency for t in timings.values()), timings
    assert timings["data+eod"] >= 2 * latency  # 354, then the reply after "."


def test_latency_shared_by_pipelined_commands(make_sink: MakeSink) -> None:
    latency = 0.15
    sink = make_sink(latency_ms=latency * 1000)
    with socket.create_connection((sink.host, sink.port), timeout=5) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        started = time.monotonic()
        sock.sendall(b"NOOP\r\nNOOP\r\nNOOP\r\n")
        replies = [reader.readline() for _ in range(3)]
        elapsed = time.monotonic() - started
    assert replies == [b"250 2.0.0 OK\r\n"] * 3
    assert latency <= elapsed < 2 * latency  # one round trip, not three


def test_size_advertised_and_enforced(make_sink: MakeSink) -> None:
    sink = make_sink(size=1000)
    big = b"Subject: big\r\n\r\n" + (b"x" * 98 + b"\r\n") * 15
    with client(sink) as smtp:
        smtp.ehlo()
        assert smtp.esmtp_features["size"] == "1000"
        with pytest.raises(smtplib.SMTPSenderRefused) as caught:  # MAIL FROM SIZE=1518
            smtp.sendmail("a@example.com", ["b@example.com"], big)
        assert (caught.value.smtp_code, caught.value.smtp_error[:5]) == (552, b"5.3.4")
        smtp.rset()
        # Without SIZE= the data itself is refused at end of data.
        assert smtp.mail("a@example.com")[0] == 250
        assert smtp.rcpt("b@example.com")[0] == 250
        assert smtp.data(big) == (552, b"5.3.4 Message size exceeds fixed maximum message size")
        assert smtp.sendmail("a@example.com", ["b@example.com"], MSG) == {}
    assert sink.wait_for(1, timeout=5)
    assert len(sink.messages) == 1


def test_line_over_1000_octets_refused(make_sink: MakeSink) -> None:
    sink = make_sink()
    with client(sink) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as caught:
            smtp.sendmail("a@example.com", ["b@example.com"], b"Subject: x\r\n\r\n" + b"x" * 1200)
        assert caught.value.smtp_code == 500
        assert caught.value.smtp_error.startswith(b"5.5.2 Line too long")
    assert sink.messages == []


def test_max_connections_421(make_sink: MakeSink) -> None:
    sink = make_sink(max_connections=1)
    with client(sink) as first:
        assert first.noop()[0] == 250
        with pytest.raises(smtplib.SMTPConnectError) as caught:
            client(sink)
        assert caught.value.smtp_code == 421
        assert caught.value.smtp_error.startswith(b"4.7.0")
    assert sink.wait_idle(timeout=5)
    with client(sink) as again:
        assert again.noop()[0] == 250


# --------------------------------------------------------------------- scripted faults


@pytest.mark.parametrize(
    ("phase", "code"),
    [
        ("connect", 554),
        ("ehlo", 421),
        ("mail", 451),
        ("rcpt", 550),
        ("data", 554),
        ("eod", 452),
    ],
)
def test_fail_at_each_phase(make_sink: MakeSink, phase: str, code: int) -> None:
    sink = make_sink(fail=[FailRule(phase, code)])
    assert first_error(sink) == (phase, code)
    assert sink.messages == []


def test_fail_reply_has_enhanced_code_and_421_closes(make_sink: MakeSink) -> None:
    sink = make_sink(fail=[FailRule("mail", 421)])
    with client(sink) as smtp:
        smtp.ehlo()
        code, text = smtp.mail("a@example.com")
        assert (code, text.split()[0]) == (421, b"4.3.2")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            smtp.noop()


def test_fail_after_n_messages(make_sink: MakeSink) -> None:
    sink = make_sink(fail=[parse_fail_rule("eod:451:2")])
    assert [first_error(sink) for _ in range(4)] == [("ok", 250)] * 2 + [("eod", 451)] * 2
    assert len(sink.messages) == 2


def test_fail_times(make_sink: MakeSink) -> None:
    sink = make_sink(fail=[parse_fail_rule("rcpt:450:times=1")])
    assert [first_error(sink) for _ in range(2)] == [("rcpt", 450), ("ok", 250)]


def test_fail_pattern_on_recipient(make_sink: MakeSink) -> None:
    sink = make_sink(fail=[parse_fail_rule("rcpt:550:pattern=*@BAD.example")])
    with client(sink) as smtp:
        refused = smtp.sendmail(
            "a@example.com", ["good@example.com", "x@bad.example", "y@Bad.Example"], MSG
        )
    assert set(refused) == {"x@bad.example", "y@Bad.Example"}
    assert refused["x@bad.example"][0] == 550
    assert refused["x@bad.example"][1].startswith(b"5.1.1 ")
    assert sink.wait_for(1, timeout=5)
    assert sink.messages[0].rcpt_tos == ("good@example.com",)


@pytest.mark.parametrize("phase", ["connect", "ehlo", "mail", "rcpt", "data", "eod"])
def test_drop_at_each_phase(make_sink: MakeSink, phase: str) -> None:
    sink = make_sink(drop=[PhaseRule(phase)])
    with pytest.raises(smtplib.SMTPServerDisconnected):
        first_error(sink)
    assert sink.messages == []
    assert sink.wait_idle(timeout=5)


def test_drop_after_n_and_times(make_sink: MakeSink) -> None:
    sink = make_sink(drop=[parse_phase_rule("eod:1:times=1")])
    assert first_error(sink) == ("ok", 250)
    with pytest.raises(smtplib.SMTPServerDisconnected):
        first_error(sink)
    assert first_error(sink) == ("ok", 250)  # fired once only
    assert len(sink.messages) == 2


@pytest.mark.parametrize("phase", ["connect", "rcpt", "eod"])
def test_hang_makes_the_client_time_out(make_sink: MakeSink, phase: str) -> None:
    sink = make_sink(hang=[PhaseRule(phase)])
    started = time.monotonic()
    with pytest.raises(smtplib.SMTPServerDisconnected, match="timed out"):
        smtp = client(sink, timeout=0.5)
        with smtp:
            smtp.sendmail("a@example.com", ["b@example.com"], MSG)
    assert time.monotonic() - started >= 0.5
    assert sink.messages == []


# --------------------------------------------------------------------- start / stop


def sink_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(("cxsmtp-sink", "asyncio_"))]


def test_stop_closes_hung_connection_and_leaves_no_threads(make_sink: MakeSink) -> None:
    before = set(sink_threads())
    sink = make_sink(hang=[PhaseRule("rcpt")])
    with socket.create_connection((sink.host, sink.port), timeout=5) as sock:
        reader = sock.makefile("rb")
        sock.sendall(b"HELO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n")
        assert [reader.readline()[:4] for _ in range(3)] == [b"220 ", b"250 ", b"250 "]
        assert sink.wait_until(lambda s: s.connections_open == 1, timeout=5)
        started = time.monotonic()
        sink.stop()
        assert time.monotonic() - started < 1.0
        assert reader.readline().startswith(b"421 4.3.2")
        assert reader.readline() == b""  # closed
    assert set(sink_threads()) <= before
    sink.stop()  # idempotent
    with pytest.raises(OSError):
        socket.create_connection((sink.host, sink.port), timeout=1).close()


def test_stop_sends_421_to_idle_connection(make_sink: MakeSink) -> None:
    sink = make_sink()
    with socket.create_connection((sink.host, sink.port), timeout=5) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        started = time.monotonic()
        sink.stop()
        assert time.monotonic() - started < 1.0
        assert reader.readline().startswith(b"421 4.3.2")


def test_stop_after_a_message_leaves_no_executor_threads(make_sink: MakeSink) -> None:
    before = set(sink_threads())
    sink = make_sink()
    with client(sink) as smtp:
        smtp.sendmail("a@example.com", ["b@example.com"], MSG)
    assert sink.wait_for(1, timeout=5)
    assert set(sink_threads()) - before  # the server thread and the file writer
    sink.stop()
    assert set(sink_threads()) <= before


def test_run_sink_until_stop_event(tmp_path: Path) -> None:
    stop = threading.Event()
    listening: list[Sink] = []
    result: list[object] = []
    ready = threading.Event()

    def on_listening(sink: Sink) -> None:
        listening.append(sink)
        ready.set()

    worker = threading.Thread(
        target=lambda: result.append(
            run_sink(SinkConfig(out_dir=tmp_path), stop, on_listening=on_listening)
        )
    )
    worker.start()
    assert ready.wait(5)
    with client(listening[0]) as smtp:
        smtp.sendmail("a@example.com", ["b@example.com"], MSG)
    assert listening[0].wait_for(1, timeout=5)
    stop.set()
    worker.join(5)
    assert not worker.is_alive()
    assert result[0].messages == 1  # type: ignore[attr-defined]


def test_refuses_non_loopback_without_allow_remote() -> None:
    with pytest.raises(UsageError, match=r"refusing to listen on 0\.0\.0\.0:0"):
        Sink(SinkConfig(host="0.0.0.0")).start()


def test_port_in_use(make_sink: MakeSink) -> None:
    first = make_sink()
    with pytest.raises(SinkStartError, match=f"127.0.0.1:{first.port}"):
        Sink(SinkConfig(port=first.port)).start()


def test_out_dir_not_creatable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(SinkStartError, match="output directory"):
        Sink(SinkConfig(out_dir=tmp_path / "file" / "mail")).start()
