"""The local capture SMTP server behind ``cxsmtp sink`` (SPEC §4), on aiosmtpd.

It listens on loopback, stores every message it accepts as an ``.eml`` file and
keeps an in-memory record of it, and can misbehave on purpose: TLS with a
generated certificate, AUTH, added latency, SIZE, a connection limit, and
scripted faults (error replies, dropped connections, silence).  The CLI uses it,
and so do the other modules' tests, as a real peer::

    import smtplib
    from carerix_smtp.sink.sink import FailRule, Sink, SinkConfig, parse_fail_rule

    config = SinkConfig(
        out_dir=tmp_path / "mail",                    # None: keep messages in memory only
        tls="starttls",                               # or "implicit", or None
        auth=("user", "secret"),
        fail=[parse_fail_rule("rcpt:550:pattern=*@bad.example"),
              FailRule("eod", 451, after_n=2, times=1)],
    )
    with Sink(config) as sink:                        # port 0 by default: a free port
        with smtplib.SMTP(sink.host, sink.port, local_hostname="test", timeout=5) as smtp:
            smtp.starttls(context=sink.client_ssl_context())   # verifies with sink.ca_file
            smtp.login("user", "secret")
            smtp.sendmail("a@example.com", ["b@example.com"], b"Subject: x\\r\\n\\r\\nhi\\r\\n")
        assert sink.wait_for(1, timeout=5)            # blocks on a Condition, no polling
        assert sink.messages[0].rcpt_tos == ("b@example.com",)

    # also: sink.wait_until(lambda s: s.connections_open == 0, 5), sink.wait_idle(5),
    # sink.connections_total / connections_open / connections_max, and
    # Sink(config, on_message=callback) -- called from the sink's threads, once per
    # stored message; keep it short and never call stop() from it.

Stored files
    ``<UTC time>-<sequence>-<random>.eml``, written to a hidden temporary file in
    the same directory, fsynced, renamed, and the directory fsynced.  The file
    starts with the envelope as header lines, CRLF terminated::

        X-Cxsmtp-Envelope-From: sender@example.com    ("<>" for the null sender)
        X-Cxsmtp-Envelope-To: first@example.com       (one line per recipient, in
        X-Cxsmtp-Envelope-To: second@example.com       RCPT order: no quoting issues)

    followed by exactly the bytes of DATA as received: dot-unstuffed (RFC 5321
    §4.5.2), line endings untouched, 8-bit and UTF-8 bytes untouched (8BITMIME
    and SMTPUTF8 are offered).  ``Received.data`` holds the same bytes without
    the envelope lines.  Like many servers, the sink refuses a message with a
    line over 1,000 octets (RFC 5321 §4.5.3.1.6): "500 5.5.2 Line too long".

Faults (``fail``, ``drop``, ``hang``)
    Phases: ``connect`` (the greeting), ``ehlo`` (EHLO/HELO), ``mail``, ``rcpt``,
    ``data`` (the DATA command, instead of 354), ``eod`` (end of data, after the
    final ".").  ``after_n`` makes a rule fire only once the sink has accepted N
    messages (counted over the sink's life, all connections); ``times`` limits
    how often it fires.  A message that meets a fault at ``eod`` is not stored.
    Drop rules are checked first, then hang rules, then fail rules; the first
    that applies wins.  A ``pattern`` (``fnmatch``, case-insensitive) restricts
    a ``mail`` or ``rcpt`` rule to matching addresses.  CLI syntax, see
    :func:`parse_fail_rule` and :func:`parse_phase_rule`::

        eod:451               every message refused 451 4.3.0 at end of data
        rcpt:550:pattern=*@bad.example
        mail:421:after=3      421 (and close) once 3 messages were accepted
        eod:451:times=1       only the first message is deferred
        drop eod:3            close without a reply, from the 4th message on
        hang data             never answer DATA (client timeout tests)

Latency
    ``latency_ms`` delays every reply (greeting, EHLO, MAIL, RCPT, DATA, end of
    data, AUTH…) until that long after the latest data the client sent before
    it, like a network round trip: a client that waits for each reply pays it
    once per command, pipelined commands share one delay.

TLS and AUTH
    ``tls="implicit"`` speaks TLS from the first byte; ``tls="starttls"`` offers
    STARTTLS.  Without ``cert_file``/``key_file`` a trustme CA and a certificate
    for localhost, 127.0.0.1 and ::1 are generated; ``ca_file`` is the CA's PEM
    for clients to verify.  AUTH PLAIN and LOGIN are offered only with ``auth``
    set and, unless ``auth_require_tls=False``, only on an encrypted session
    (aiosmtpd does not know an implicit TLS session is encrypted, so the sink
    decides from the transport itself).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fnmatch
import hmac
import ipaddress
import logging
import os
import secrets
import shutil
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, AnyStr, Literal, get_args

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session

from carerix_smtp.errors import SinkStartError, UsageError

log = logging.getLogger(__name__)

Phase = Literal["connect", "ehlo", "mail", "rcpt", "data", "eod"]
PHASES: tuple[str, ...] = get_args(Phase)
TlsOption = Literal["implicit", "starttls"]

DEFAULT_LISTEN = "127.0.0.1:2525"
SERVER_NAME = "localhost"
ENVELOPE_FROM = b"X-Cxsmtp-Envelope-From"
ENVELOPE_TO = b"X-Cxsmtp-Envelope-To"
STOP_GRACE = 0.2  # seconds open connections get to close after the 421 at stop(); TLS
# ones wait for the client's close_notify, so they are aborted after it


# --------------------------------------------------------------------------- rules

# Enhanced status codes (RFC 3463) and texts for scripted replies.
_REPLY_TEXT: dict[int, tuple[str, str]] = {
    421: ("4.3.2", "Service not available, closing transmission channel"),
    450: ("4.2.1", "Mailbox temporarily unavailable"),
    451: ("4.3.0", "Local error in processing, try again later"),
    452: ("4.3.1", "Insufficient system storage"),
    500: ("5.5.2", "Syntax error, command unrecognized"),
    501: ("5.5.4", "Syntax error in parameters"),
    503: ("5.5.1", "Bad sequence of commands"),
    530: ("5.7.0", "Authentication required"),
    535: ("5.7.8", "Authentication credentials invalid"),
    550: ("5.1.1", "Mailbox unavailable"),
    551: ("5.1.6", "User not local"),
    552: ("5.3.4", "Message size exceeds fixed maximum message size"),
    553: ("5.1.3", "Mailbox name not allowed"),
    554: ("5.6.0", "Transaction failed"),
}


def scripted_reply(code: int, phase: str) -> str:
    """The reply line a fail rule sends: ``451 4.3.0 Local error… (cxsmtp sink: eod)``."""
    enhanced, text = _REPLY_TEXT.get(code, (f"{code // 100}.0.0", "Scripted failure"))
    return f"{code} {enhanced} {text} (cxsmtp sink: {phase})"


@dataclass(frozen=True)
class FailRule:
    """Reply ``code`` (4xx/5xx) at ``phase`` instead of accepting."""

    phase: str
    code: int
    after_n: int = 0
    pattern: str | None = None
    times: int | None = None

    def __post_init__(self) -> None:
        _check_rule(self.phase, self.after_n, self.times, "fail")
        if not 400 <= self.code <= 599:
            raise UsageError(f"fail rule code {self.code}: accepted codes are 400 to 599")
        if self.pattern is not None and self.phase not in ("mail", "rcpt"):
            raise UsageError(
                f"fail rule {self.phase}:{self.code}: pattern= applies to mail and rcpt only"
            )

    @property
    def reply(self) -> str:
        return scripted_reply(self.code, self.phase)


@dataclass(frozen=True)
class PhaseRule:
    """A ``drop`` (close without a reply) or ``hang`` (never reply) at ``phase``."""

    phase: str
    after_n: int = 0
    times: int | None = None

    def __post_init__(self) -> None:
        _check_rule(self.phase, self.after_n, self.times, "drop/hang")


def _check_rule(phase: str, after_n: int, times: int | None, kind: str) -> None:
    if phase not in PHASES:
        raise UsageError(f"{kind} rule phase {phase!r}: accepted phases are {', '.join(PHASES)}")
    if after_n < 0:
        raise UsageError(f"{kind} rule after={after_n}: must be 0 or more")
    if times is not None and times < 1:
        raise UsageError(f"{kind} rule times={times}: must be 1 or more")


FAIL_SYNTAX = (
    "PHASE:CODE[:N][:after=N][:times=K][:pattern=GLOB], PHASE one of "
    + "|".join(PHASES)
    + ", CODE 400-599, pattern= last and for mail/rcpt only "
    "(e.g. eod:451, rcpt:550:pattern=*@bad.example, mail:421:after=3)"
)
PHASE_RULE_SYNTAX = (
    "PHASE[:N][:after=N][:times=K], PHASE one of " + "|".join(PHASES) + " (e.g. eod, eod:3)"
)


def _parse_int(text: str, what: str, rule: str, syntax: str) -> int:
    if not text.isdigit():
        raise UsageError(f"invalid rule {rule!r}: {what} must be a number; accepted: {syntax}")
    return int(text)


def _parse_options(
    rule: str, rest: str, syntax: str, allow_pattern: bool
) -> tuple[int, int | None, str | None]:
    after_n, times, pattern = 0, None, None
    while rest:
        if allow_pattern and rest.startswith("pattern="):
            pattern = rest[len("pattern=") :]  # the rest of the text: a glob may hold ":"
            if not pattern:
                raise UsageError(f"invalid rule {rule!r}: empty pattern; accepted: {syntax}")
            break
        token, _, rest = rest.partition(":")
        key, eq, value = token.partition("=")
        if not eq:
            after_n = _parse_int(token, "N (messages accepted before the fault)", rule, syntax)
        elif key == "after":
            after_n = _parse_int(value, "after", rule, syntax)
        elif key == "times":
            times = _parse_int(value, "times", rule, syntax)
        else:
            raise UsageError(f"invalid rule {rule!r}: unknown option {token!r}; accepted: {syntax}")
    return after_n, times, pattern


def parse_fail_rule(text: str) -> FailRule:
    """``PHASE:CODE[:N][:after=N][:times=K][:pattern=GLOB]`` -> :class:`FailRule`."""
    phase, _, rest = text.strip().partition(":")
    code_text, _, rest = rest.partition(":")
    phase = phase.lower()
    if phase not in PHASES:
        raise UsageError(f"invalid fail rule {text!r}: unknown phase; accepted: {FAIL_SYNTAX}")
    if not code_text:
        raise UsageError(f"invalid fail rule {text!r}: missing CODE; accepted: {FAIL_SYNTAX}")
    code = _parse_int(code_text, "CODE", text, FAIL_SYNTAX)
    after_n, times, pattern = _parse_options(text, rest, FAIL_SYNTAX, allow_pattern=True)
    try:
        return FailRule(phase, code, after_n=after_n, pattern=pattern, times=times)
    except UsageError as exc:
        raise UsageError(f"invalid fail rule {text!r}: {exc}; accepted: {FAIL_SYNTAX}") from None


def parse_phase_rule(text: str) -> PhaseRule:
    """``PHASE[:N][:after=N][:times=K]`` (``--drop``, ``--hang``) -> :class:`PhaseRule`."""
    phase, _, rest = text.strip().partition(":")
    phase = phase.lower()
    if phase not in PHASES:
        raise UsageError(f"invalid rule {text!r}: unknown phase; accepted: {PHASE_RULE_SYNTAX}")
    after_n, times, _ = _parse_options(text, rest, PHASE_RULE_SYNTAX, allow_pattern=False)
    try:
        return PhaseRule(phase, after_n=after_n, times=times)
    except UsageError as exc:
        raise UsageError(f"invalid rule {text!r}: {exc}; accepted: {PHASE_RULE_SYNTAX}") from None


def parse_auth(text: str) -> tuple[str, str]:
    """``USER:PASSWORD`` (split at the first colon) -> (user, password)."""
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        # never repeat the value: it holds a password
        raise UsageError("invalid AUTH credentials: accepted USER:PASSWORD, both non-empty")
    return user, password


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPV6]:PORT``, ``:PORT`` or ``PORT`` -> (host, port)."""
    accepted = "accepted: HOST:PORT, [IPV6]:PORT or PORT (e.g. 127.0.0.1:2525, [::1]:0)"
    value = text.strip()
    if value.startswith("["):
        host, sep, port_text = value[1:].partition("]:")
        if not sep:
            raise UsageError(f"invalid listen address {text!r}; {accepted}")
    elif value.count(":") > 1:
        raise UsageError(f"invalid listen address {text!r}: put IPv6 in brackets; {accepted}")
    elif ":" in value:
        host, _, port_text = value.partition(":")
    else:
        host, port_text = "", value
    host = host or "127.0.0.1"
    if not port_text.isdigit() or int(port_text) > 65535:
        raise UsageError(f"invalid listen address {text!r}: port must be 0-65535; {accepted}")
    return host, int(port_text)


# --------------------------------------------------------------------------- config/records


@dataclass
class SinkConfig:
    """Everything a :class:`Sink` can be asked to do.  Port 0 picks a free port."""

    host: str = "127.0.0.1"
    port: int = 0
    out_dir: Path | None = None  # None: keep messages in memory only
    allow_remote: bool = False
    tls: TlsOption | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_out: Path | None = None  # also write the generated CA's PEM here
    require_starttls: bool = False
    auth: tuple[str, str] | None = None
    auth_required: bool = False
    auth_require_tls: bool = True
    latency_ms: float = 0.0
    size: int | None = None  # advertise SIZE N and refuse bigger messages (552 5.3.4)
    max_connections: int | None = None  # 421 4.7.0 at greeting beyond this
    fail: list[FailRule] = field(default_factory=list)
    drop: list[PhaseRule] = field(default_factory=list)
    hang: list[PhaseRule] = field(default_factory=list)
    pipelining: bool = True
    keep_data: bool = True  # False: Received.data is b"" (long runs, big messages)
    fsync: bool = True
    idle_timeout: float = 300.0  # RFC 5321 §4.5.3.2.7: server timeout 5 minutes

    def __repr__(self) -> str:  # never show the password
        auth = None if self.auth is None else (self.auth[0], "***")
        return f"SinkConfig(host={self.host!r}, port={self.port}, tls={self.tls!r}, auth={auth!r})"

    def validate(self) -> None:
        """Raise :class:`UsageError` for combinations that cannot work."""
        if not 0 <= self.port <= 65535:
            raise UsageError(f"sink port {self.port}: accepted 0-65535")
        if (self.cert_file is None) != (self.key_file is None):
            raise UsageError("sink: give both a certificate file and a key file, or neither")
        if self.tls is None and (self.cert_file is not None or self.ca_out is not None):
            raise UsageError("sink: a certificate or CA output needs TLS (implicit or starttls)")
        if self.tls is not None and self.tls not in get_args(TlsOption):
            raise UsageError(f"sink TLS mode {self.tls!r}: accepted implicit, starttls")
        if self.ca_out is not None and self.cert_file is not None:
            raise UsageError("sink: the CA output is for the generated certificate only")
        if self.require_starttls and self.tls != "starttls":
            raise UsageError("sink: require_starttls needs tls='starttls'")
        if self.auth_required and self.auth is None:
            raise UsageError("sink: AUTH required but no user:password given")
        if self.latency_ms < 0:
            raise UsageError(f"sink latency {self.latency_ms} ms: must be 0 or more")
        if self.size is not None and self.size < 1:
            raise UsageError(f"sink SIZE {self.size}: must be 1 or more")
        if self.max_connections is not None and self.max_connections < 1:
            raise UsageError(f"sink max connections {self.max_connections}: must be 1 or more")


@dataclass(frozen=True)
class Received:
    """One message the sink accepted."""

    time: float  # time.time() at end of data
    mail_from: str  # "" for the null sender
    rcpt_tos: tuple[str, ...]
    data: bytes = field(repr=False)  # DATA as received (dot-unstuffed); b"" without keep_data
    path: Path | None
    session_peer: str  # "127.0.0.1:54321"
    mail_options: tuple[str, ...]  # e.g. ("SIZE=1234", "BODY=8BITMIME", "SMTPUTF8")
    size: int  # len of DATA, also when keep_data is off
    tls: bool
    auth_user: str | None


@dataclass(frozen=True)
class SinkStats:
    messages: int
    connections_total: int
    connections_max: int


# --------------------------------------------------------------------------- protocol

_DROP = "\x00cxsmtp-drop"  # returned by hooks instead of a reply; handled in push()
_HANG = "\x00cxsmtp-hang"

# aiosmtpd's replies, with enhanced status codes (RFC 3463) added.
_REWRITES = {
    "552 Error: message size exceeds fixed maximum message size": (
        "552 5.3.4 Message size exceeds fixed maximum message size"
    ),
    "552 Error: Too much mail data": "552 5.3.4 Message size exceeds fixed maximum message size",
    "530 Must issue a STARTTLS command first": "530 5.7.0 Must issue a STARTTLS command first",
    "503 Error: need MAIL command": "503 5.5.1 Error: need MAIL command",
    "503 Error: need RCPT command": "503 5.5.1 Error: need RCPT command",
    "503 Error: nested MAIL command": "503 5.5.1 Error: nested MAIL command",
    "500 Line too long (see RFC5321 4.5.3.1.6)": "500 5.5.2 Line too long (RFC 5321 4.5.3.1.6)",
    "221 Bye": "221 2.0.0 Bye",
    "250 OK": "250 2.0.0 OK",
}


def _format_peer(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return str(peer)


class _SinkSMTP(SMTP):
    """One connection: aiosmtpd's SMTP plus latency, faults and accounting."""

    def __init__(self, sink: Sink, handler: _SinkHandler, **kwargs: Any) -> None:
        # aiosmtpd keeps this dict on the class and grows it on every EHLO; give each
        # connection its own so sinks in other threads do not share it.
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)
        super().__init__(handler, **kwargs)
        self._sink = sink
        self._greeted = False
        self._counted = False
        self._uncounted = False
        self._over_limit = False
        self._close_after_reply = False
        self._last_arrival = self.loop.time()

    @property
    def encrypted(self) -> bool:
        transport = self.transport
        return transport is not None and transport.get_extra_info("ssl_object") is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._counted:  # not again for the TLS layer after STARTTLS
            self._counted = True
            self._last_arrival = self.loop.time()
            self._over_limit = not self._sink._connection_opened(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._counted and not self._uncounted:
            self._uncounted = True
            self._sink._connection_closed(self)
        super().connection_lost(error)

    def data_received(self, data: bytes) -> None:
        self._last_arrival = self.loop.time()
        super().data_received(data)

    def close_for_stop(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            with contextlib.suppress(Exception):
                transport.write(b"421 4.3.2 Service shutting down\r\n")  # type: ignore[attr-defined]
            transport.close()

    def abort(self) -> None:
        transport = self.transport
        if transport is not None:
            transport.abort()  # type: ignore[attr-defined]

    async def push(self, status: AnyStr) -> None:
        if not self._greeted:  # the first reply of a connection is the greeting
            self._greeted = True
            if self._over_limit:
                status = "421 4.7.0 Too many connections, try again later"  # type: ignore[assignment]
            else:
                fault = self._sink._fault("connect")
                if fault is not None:
                    status = fault  # type: ignore[assignment]
                    self._close_after_reply = True  # RFC 5321 §3.1: no session after refusal
        if status == _DROP:
            log.debug("%s: dropping the connection (scripted)", self._peer)
            self._close()
            return
        if status == _HANG:
            log.debug("%s: hanging (scripted)", self._peer)
            await self._hang()
            return
        if isinstance(status, str):
            status = _REWRITES.get(status, status)
        latency = self._sink.config.latency_ms / 1000.0
        if latency:
            delay = self._last_arrival + latency - self.loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        if self.transport is None or self.transport.is_closing():
            return
        await super().push(status)
        line = status if isinstance(status, str) else status.decode("ascii", "replace")
        if self._close_after_reply or line.startswith("421 "):  # RFC 5321 §3.8
            self._close()

    @property
    def _peer(self) -> str:
        return _format_peer(self.session.peer if self.session else None)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def _hang(self) -> None:
        try:
            await self.loop.create_future()  # never set: ends when the connection does
        except asyncio.CancelledError:
            self._close()  # the greeting is not inside aiosmtpd's own cleanup
            raise

    async def smtp_DATA(self, arg: str) -> None:
        # The "data" phase: the DATA command itself, before 354.  aiosmtpd has no hook
        # there (handle_DATA runs at end of data).
        session, envelope = self.session, self.envelope
        if session and session.host_name and envelope and envelope.rcpt_tos and not arg:
            fault = self._sink._fault("data")
            if fault is not None:
                await self.push(fault)
                return
        await super().smtp_DATA(arg)


class _SinkHandler:
    """aiosmtpd handler hooks; per-connection state lives on ``server``."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def handle_EHLO(
        self,
        server: _SinkSMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        fault = self.sink._fault("ehlo")
        if fault is not None:
            return [fault]
        session.host_name = hostname  # the 5-argument hook must set it itself
        config = self.sink.config
        offer_auth = config.auth is not None and (server.encrypted or not config.auth_require_tls)
        lines = [line[4:] for line in responses if offer_auth or line[4:9].upper() != "AUTH "]
        if config.pipelining:  # RFC 2920; aiosmtpd reads commands in order from a buffer
            lines.insert(-1, "PIPELINING")
        return [f"250-{line}" for line in lines[:-1]] + [f"250 {lines[-1]}"]

    async def handle_HELO(
        self, server: _SinkSMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        fault = self.sink._fault("ehlo")
        if fault is not None:
            return fault
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_AUTH(
        self, server: _SinkSMTP, session: Session, envelope: Envelope, args: list[str]
    ) -> object:
        config = self.sink.config
        if config.auth is None:
            return "502 5.5.1 AUTH not available"
        if config.auth_require_tls and not server.encrypted:
            return "538 5.7.11 Encryption required for requested authentication mechanism"
        return MISSING  # go on with aiosmtpd's PLAIN / LOGIN

    async def handle_MAIL(
        self,
        server: _SinkSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if self.sink.config.auth_required and not session.authenticated:
            return "530 5.7.0 Authentication required"
        fault = self.sink._fault("mail", address)
        if fault is not None:
            return fault
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(
        self,
        server: _SinkSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        fault = self.sink._fault("rcpt", address)
        if fault is not None:
            return fault
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, server: _SinkSMTP, session: Session, envelope: Envelope) -> str:
        fault = self.sink._fault("eod")
        if fault is not None:
            return fault
        data = envelope.original_content or b""
        auth = session.auth_data
        auth_user = (
            auth.login.decode("utf-8", "replace") if isinstance(auth, LoginPassword) else None
        )
        record = Received(
            time=time.time(),
            # aiosmtpd keeps the null sender (RFC 5321 §4.5.5) as "<>"
            mail_from="" if envelope.mail_from in (None, "<>") else envelope.mail_from,
            rcpt_tos=tuple(envelope.rcpt_tos),
            data=data if self.sink.config.keep_data else b"",
            path=None,
            session_peer=_format_peer(session.peer),
            mail_options=tuple(envelope.mail_options),
            size=len(data),
            tls=server.encrypted,
            auth_user=auth_user,
        )
        try:
            if self.sink.config.out_dir is None:
                record = self.sink._store(record, data)
            else:  # in a worker thread: fsync must not stall the other connections
                record = await server.loop.run_in_executor(None, self.sink._store, record, data)
        except OSError as exc:
            log.error("cannot store a message in %s: %s", self.sink.config.out_dir, exc)
            return "451 4.3.0 Cannot store the message, try again later"
        self.sink._accepted += 1
        name = record.path.name if record.path else "memory"
        return f"250 2.0.0 OK: queued as {name}"


# --------------------------------------------------------------------------- the sink


class _MailLogFilter(logging.Filter):
    """aiosmtpd warns on every successful AUTH that login_data is deprecated."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "login_data is deprecated" not in str(record.msg)


_MAIL_LOG_FILTER = _MailLogFilter()


class Sink:
    """A capture SMTP server running in its own thread (see the module docstring)."""

    def __init__(
        self,
        config: SinkConfig | None = None,
        *,
        on_message: Callable[[Received], None] | None = None,
    ) -> None:
        self.config = config or SinkConfig()
        self.config.validate()
        self.on_message = on_message
        self._cond = threading.Condition()
        self._records: list[Received] = []
        self._connections_total = 0
        self._connections_open = 0
        self._connections_max = 0
        self._sequence = 0
        self._protocols: set[_SinkSMTP] = set()
        # Loop-thread state: fault counters and messages accepted (for after_n).
        self._accepted = 0
        self._fired: dict[tuple[str, int], int] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._all_closed: asyncio.Event | None = None
        self._thread_error: BaseException | None = None
        self._address: tuple[str, int] = (self.config.host, self.config.port)
        self._tmp_dir: Path | None = None
        self._ca_file: Path | None = None
        self._ca_pem: bytes | None = None
        self._server_ctx: ssl.SSLContext | None = None

    # -- public API ------------------------------------------------------------

    @property
    def host(self) -> str:
        """The address listened on (after start())."""
        return self._address[0]

    @property
    def port(self) -> int:
        """The port listened on; the real one when the config said 0."""
        return self._address[1]

    @property
    def address_for_display(self) -> str:
        host = self.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def ca_file(self) -> Path | None:
        """PEM of the generated CA (None without TLS or with your own certificate)."""
        return self._ca_file

    @property
    def ca_pem(self) -> bytes | None:
        return self._ca_pem

    def client_ssl_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts the generated CA."""
        if self._ca_file is None:
            raise ValueError("the sink has no generated CA (no TLS, or own certificate)")
        return ssl.create_default_context(cafile=str(self._ca_file))

    @property
    def messages(self) -> list[Received]:
        """A copy of the records of the messages accepted so far, in order of storage."""
        with self._cond:
            return list(self._records)

    @property
    def connections_total(self) -> int:
        with self._cond:
            return self._connections_total

    @property
    def connections_open(self) -> int:
        with self._cond:
            return self._connections_open

    @property
    def connections_max(self) -> int:
        """The most connections open at the same time so far."""
        with self._cond:
            return self._connections_max

    def stats(self) -> SinkStats:
        with self._cond:
            return SinkStats(len(self._records), self._connections_total, self._connections_max)

    def wait_until(self, predicate: Callable[[Sink], bool], timeout: float) -> bool:
        """Block until ``predicate(sink)`` holds (re-checked on every message and
        connection change); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)

    def wait_for(self, count: int, timeout: float) -> bool:
        """Block until ``count`` messages have been stored; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._records) >= count, timeout)

    def wait_idle(self, timeout: float) -> bool:
        """Block until no connection is open; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._connections_open == 0, timeout)

    def start(self) -> Sink:
        """Bind, then serve in a background thread.  Raises :class:`UsageError` for a
        non-loopback address without ``allow_remote``, :class:`SinkStartError` when
        the address or the output directory cannot be used."""
        if self._thread is not None:
            raise RuntimeError("sink already started")
        logging.getLogger("mail.log").addFilter(_MAIL_LOG_FILTER)
        config = self.config
        if config.out_dir is not None:
            try:
                config.out_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise SinkStartError(
                    f"sink: cannot create the output directory {config.out_dir}: {exc.strerror}"
                ) from None
        sock = self._bind()
        implicit_ctx = None
        try:
            if config.tls is not None:
                self._server_ctx = self._make_server_context()
                implicit_ctx = self._server_ctx if config.tls == "implicit" else None
        except BaseException:
            sock.close()
            self._cleanup_tmp()
            raise
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(sock, implicit_ctx, ready), name="cxsmtp-sink", daemon=True
        )
        self._thread.start()
        ready.wait()
        if self._thread_error is not None:
            self._thread.join()
            self._thread = None
            self._cleanup_tmp()
            raise SinkStartError(
                f"sink: cannot serve on {self.address_for_display}: {self._thread_error}"
            )
        log.info("sink listening on %s", self.address_for_display)
        return self

    def stop(self) -> None:
        """Stop listening, close open connections (421 first), join the thread."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(stopping.set)
        thread.join()
        self._thread = None
        self._loop = None
        self._cleanup_tmp()
        log.info("sink on %s stopped", self.address_for_display)

    def __enter__(self) -> Sink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- setup -----------------------------------------------------------------

    def _make_server_context(self) -> ssl.SSLContext:
        config = self.config
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        if config.cert_file is not None and config.key_file is not None:
            try:
                ctx.load_cert_chain(str(config.cert_file), str(config.key_file))
            except (OSError, ssl.SSLError) as exc:
                raise UsageError(
                    f"sink: cannot load certificate {config.cert_file} with key "
                    f"{config.key_file}: {exc}"
                ) from None
            return ctx
        import trustme  # only needed for a generated certificate

        ca = trustme.CA()
        ca.issue_cert("localhost", "127.0.0.1", "::1").configure_cert(ctx)
        self._ca_pem = ca.cert_pem.bytes()
        self._tmp_dir = Path(tempfile.mkdtemp(prefix="cxsmtp-sink-"))
        self._ca_file = self._tmp_dir / "ca.pem"
        self._ca_file.write_bytes(self._ca_pem)
        if config.ca_out is not None:
            try:
                _write_atomic(config.ca_out, self._ca_pem, fsync=False)
            except OSError as exc:
                self._cleanup_tmp()
                raise SinkStartError(
                    f"sink: cannot write the CA certificate to {config.ca_out}: {exc.strerror}"
                ) from None
            self._ca_file = config.ca_out
        return ctx

    def _bind(self) -> socket.socket:
        config = self.config
        shown = (
            f"[{config.host}]:{config.port}"
            if ":" in config.host
            else (f"{config.host}:{config.port}")
        )
        try:
            infos = socket.getaddrinfo(
                config.host or None,
                config.port,
                type=socket.SOCK_STREAM,
                flags=socket.AI_PASSIVE,
            )
        except socket.gaierror as exc:
            raise UsageError(f"sink: cannot resolve listen address {shown}: {exc}") from None
        family, type_, proto, _, sockaddr = infos[0]
        if not config.allow_remote and not _is_loopback(str(sockaddr[0])):
            raise UsageError(
                f"sink: refusing to listen on {shown}: not a loopback address",
                hint="allow other hosts to connect with --allow-remote (allow_remote=True)",
            )
        sock = socket.socket(family, type_, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
            sock.listen(128)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise SinkStartError(f"sink: cannot listen on {shown}: {exc.strerror}") from None
        bound = sock.getsockname()
        self._address = (str(bound[0]), int(bound[1]))
        return sock

    def _cleanup_tmp(self) -> None:
        if self._tmp_dir is not None:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            if self._ca_file is not None and self._ca_file.parent == self._tmp_dir:
                self._ca_file = None
            self._tmp_dir = None

    # -- the server thread -------------------------------------------------------

    def _run(
        self, sock: socket.socket, implicit_ctx: ssl.SSLContext | None, ready: threading.Event
    ) -> None:
        try:
            asyncio.run(self._serve(sock, implicit_ctx, ready))
        except BaseException as exc:  # reported by start(), or logged when already serving
            if not ready.is_set():
                self._thread_error = exc
                ready.set()
            else:
                log.exception("sink on %s failed", self.address_for_display)
        finally:
            sock.close()

    async def _serve(
        self, sock: socket.socket, implicit_ctx: ssl.SSLContext | None, ready: threading.Event
    ) -> None:
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._all_closed = asyncio.Event()
        self._all_closed.set()
        server = await loop.create_server(self._make_protocol, sock=sock, ssl=implicit_ctx)
        self._loop = loop
        ready.set()
        await self._stopping.wait()
        server.close()
        for protocol in list(self._protocols):
            protocol.close_for_stop()
        try:
            await asyncio.wait_for(self._all_closed.wait(), STOP_GRACE)
        except asyncio.TimeoutError:
            for protocol in list(self._protocols):
                protocol.abort()
        await server.wait_closed()
        await asyncio.sleep(0)  # let connection_lost callbacks of aborted transports run
        # asyncio.run() then cancels what is left and shuts the executor down.

    def _make_protocol(self) -> _SinkSMTP:
        config = self.config
        starttls_ctx = self._server_ctx if config.tls == "starttls" else None
        return _SinkSMTP(
            self,
            _SinkHandler(self),
            hostname=SERVER_NAME,
            ident="cxsmtp sink ESMTP",
            data_size_limit=config.size,  # None: no SIZE, no limit
            enable_SMTPUTF8=True,  # RFC 6531
            decode_data=False,  # bytes as received; offers 8BITMIME (RFC 6152)
            tls_context=starttls_ctx,
            require_starttls=config.require_starttls,
            timeout=config.idle_timeout,
            # TLS for AUTH is decided in handle_EHLO/handle_AUTH from the transport, which
            # also knows implicit TLS; auth_required is enforced in handle_MAIL.
            auth_require_tls=False,
            authenticator=self._authenticate,
            loop=asyncio.get_running_loop(),
        )

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        auth = self.config.auth
        if auth is None or not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user_ok = hmac.compare_digest(data.login, auth[0].encode("utf-8"))
        password_ok = hmac.compare_digest(data.password, auth[1].encode("utf-8"))
        if user_ok and password_ok:
            return AuthResult(success=True, auth_data=data)
        log.info("sink: AUTH %s refused for %r", mechanism, data.login.decode("utf-8", "replace"))
        return AuthResult(success=False, handled=False)

    # -- called from the loop thread ----------------------------------------------

    def _connection_opened(self, protocol: _SinkSMTP) -> bool:
        """Count a new connection; False when it is over max_connections."""
        self._protocols.add(protocol)
        if self._all_closed is not None:
            self._all_closed.clear()
        with self._cond:
            self._connections_total += 1
            self._connections_open += 1
            self._connections_max = max(self._connections_max, self._connections_open)
            limit = self.config.max_connections
            allowed = limit is None or self._connections_open <= limit
            self._cond.notify_all()
        return allowed

    def _connection_closed(self, protocol: _SinkSMTP) -> None:
        self._protocols.discard(protocol)
        with self._cond:
            self._connections_open -= 1
            idle = self._connections_open == 0
            self._cond.notify_all()
        if idle and self._all_closed is not None:
            self._all_closed.set()

    def _fault(self, phase: str, address: str | None = None) -> str | None:
        """The scripted reply (or drop/hang marker) for ``phase``, or None."""
        config = self.config
        kinds: tuple[tuple[str, Sequence[FailRule | PhaseRule]], ...] = (
            ("drop", config.drop),
            ("hang", config.hang),
            ("fail", config.fail),
        )
        for kind, rules in kinds:
            for index, rule in enumerate(rules):
                if rule.phase != phase or self._accepted < rule.after_n:
                    continue
                if isinstance(rule, FailRule) and not _matches(rule.pattern, address):
                    continue
                key = (kind, index)
                if rule.times is not None and self._fired.get(key, 0) >= rule.times:
                    continue
                self._fired[key] = self._fired.get(key, 0) + 1
                log.debug("sink: scripted %s at %s", kind, phase)
                if kind == "drop":
                    return _DROP
                if kind == "hang":
                    return _HANG
                assert isinstance(rule, FailRule)
                return rule.reply
        return None

    # -- called from a worker thread ----------------------------------------------

    def _store(self, record: Received, data: bytes) -> Received:
        with self._cond:
            self._sequence += 1
            sequence = self._sequence
        out_dir = self.config.out_dir
        if out_dir is not None:
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(record.time))
            micro = int((record.time % 1) * 1_000_000)
            name = f"{stamp}.{micro:06d}Z-{sequence:06d}-{secrets.token_hex(3)}.eml"
            path = out_dir / name
            _write_atomic(
                path,
                [envelope_header(record.mail_from, record.rcpt_tos), data],
                fsync=self.config.fsync,
            )
            record = replace(record, path=path)
        with self._cond:
            self._records.append(record)
            self._cond.notify_all()
        if self.on_message is not None:
            try:
                self.on_message(record)
            except Exception:
                log.exception("sink: on_message callback failed")
        return record


def envelope_header(mail_from: str, rcpt_tos: Sequence[str]) -> bytes:
    """The ``X-Cxsmtp-Envelope-*`` lines a stored file starts with."""

    def clean(address: str) -> bytes:
        # Addresses arrive as UTF-8 with surrogateescape (aiosmtpd); keep their bytes,
        # but never let a CR or LF start a new header.
        raw = address.encode("utf-8", "surrogateescape")
        return raw.replace(b"\r", b"").replace(b"\n", b"")

    lines = [ENVELOPE_FROM + b": " + (clean(mail_from) or b"<>") + b"\r\n"]
    lines += [ENVELOPE_TO + b": " + clean(rcpt) + b"\r\n" for rcpt in rcpt_tos]
    return b"".join(lines)


def _matches(pattern: str | None, address: str | None) -> bool:
    """Case-insensitive fnmatch; a rule without a pattern matches everything."""
    if pattern is None:
        return True
    return address is not None and fnmatch.fnmatchcase(address.lower(), pattern.lower())


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _write_atomic(path: Path, chunks: bytes | Sequence[bytes], *, fsync: bool) -> None:
    """Temp file in the same directory, fsync, rename, fsync the directory."""
    parts = [chunks] if isinstance(chunks, bytes) else list(chunks)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            for part in parts:
                handle.write(part)
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_port_file(path: Path, port: int) -> None:
    """Write the port atomically, so a reader polling the file never sees half of it."""
    try:
        _write_atomic(path, f"{port}\n".encode(), fsync=False)
    except OSError as exc:
        raise SinkStartError(f"sink: cannot write the port file {path}: {exc.strerror}") from None


def config_summary(sink: Sink) -> str:
    """One line describing what a started sink offers (for the CLI's banner)."""
    config = sink.config
    parts = []
    if config.tls is not None:
        parts.append(f"TLS {config.tls}")
    if config.auth is not None:
        parts.append(f"AUTH {'required ' if config.auth_required else ''}for {config.auth[0]}")
    if config.latency_ms:
        parts.append(f"latency {config.latency_ms:g} ms")
    if config.size is not None:
        parts.append(f"SIZE {config.size}")
    if config.max_connections is not None:
        parts.append(f"max {config.max_connections} connections")
    faults = len(config.fail) + len(config.drop) + len(config.hang)
    if faults:
        parts.append(f"{faults} scripted fault{'s' if faults != 1 else ''}")
    return ", ".join(parts)


def run_sink(
    config: SinkConfig,
    stop_event: threading.Event,
    *,
    on_message: Callable[[Received], None] | None = None,
    on_listening: Callable[[Sink], None] | None = None,
) -> SinkStats:
    """Serve until ``stop_event`` is set (the CLI sets it from SIGTERM/SIGINT)."""
    sink = Sink(config, on_message=on_message)
    with sink:
        if on_listening is not None:
            on_listening(sink)
        stop_event.wait()
    return sink.stats()
