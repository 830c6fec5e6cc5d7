"""One SMTP client session: resolve, connect, TLS, AUTH, send; replies classified.

Why our own small client instead of :mod:`smtplib` — every item below would need
a workaround or a private-attribute patch in smtplib:

* a timeout per phase (connect, greeting, each command, end of data; RFC 5321
  §4.5.3.2) rather than one socket timeout;
* connecting to an address we resolved ourselves (MX, IPv6 literals such as
  ``[::1]:2525``, which smtplib's ``connect()`` cannot parse) while verifying the
  certificate against the host *name*;
* STARTTLS that discards anything read before the handshake (RFC 3207 §6) and
  refuses to go on when it is required but missing, before AUTH or MAIL;
* no ``getfqdn()`` DNS lookup per connection, no debug output that prints AUTH;
* line-ending normalisation and dot-stuffing with ``bytes.replace`` on 1 MiB
  chunks written with one ``sendall`` each (smtplib's regex is slow and sends
  bare LFs verbatim), TCP_NODELAY and few large writes (msmtp stalls ~40 ms per
  message on Nagle + delayed ACK), and PIPELINING (RFC 2920) of MAIL/RCPT/DATA;
* replies as data (code, enhanced status, text) and errors that name
  ``host[address]:port`` and the phase; 421 raises instead of being mixed into
  ``SMTPDataError``; refused recipients are results, not a dict on the side.

Blocking sockets: one session is one connection; parallel connections are
several sessions (threads), which keeps this module simple and the timeouts exact.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import hmac
import logging
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

from carerix_smtp.config.tls import TlsMode, auth_allowed, make_ssl_context
from carerix_smtp.errors import (
    MessageError,
    SmtpAuthError,
    SmtpConnectError,
    SmtpError,
    SmtpPolicyError,
    SmtpReplyError,
    SmtpTimeoutError,
    SmtpTLSError,
)
from carerix_smtp.smtp.resolve import DEFAULT_DNS_TIMEOUT, Resolution, Target, resolve_endpoint

if TYPE_CHECKING:
    import dns.resolver

    from carerix_smtp.config.file import ServerEntry

log = logging.getLogger(__name__)

CRLF = b"\r\n"
CHUNK_SIZE = 1 << 20  # bytes normalised and written per sendall
MAX_REPLY_BYTES = 64 * 1024  # RFC 5321 §4.5.3.1.5 allows 512 per line; be lenient
QUIT_TIMEOUT = 5.0
PIPELINE_WINDOW = 100  # commands written before their replies are read (RFC 2920 §3.1)

# Phase names, as `cxsmtp test` reports them and SmtpError.phase carries them.
PHASE_RESOLVE = "resolve"
PHASE_CONNECT = "connect"
PHASE_GREETING = "greeting"
PHASE_EHLO = "ehlo"
PHASE_TLS = "tls"
PHASE_EHLO_TLS = "ehlo-tls"
PHASE_AUTH = "auth"
PHASE_MAIL = "mail"
PHASE_RCPT = "rcpt"
PHASE_DATA = "data"  # the DATA command and the message content: a failure here = not delivered
PHASE_DATA_END = "data-end"  # after the final ".": a lost connection = outcome unknown
PHASE_RSET = "rset"
PHASE_QUIT = "quit"

# Strongest first.  Over TLS every mechanism is safe from eavesdroppers; the
# challenge-response one also keeps the password from whatever terminates TLS
# (and from anyone, when verification was switched off), so it goes first.
AUTH_PREFERENCE = ("CRAM-MD5", "PLAIN", "LOGIN")

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$)")


# --- replies -----------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One server reply.  ``text`` is the lines joined by newlines, enhanced codes removed."""

    code: int
    enhanced: str | None
    text: str
    local: bool = False  # made up by cxsmtp (never sent by the server)

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 400

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600

    @property
    def closing(self) -> bool:
        """421: the server is closing the connection (RFC 5321 §3.8)."""
        return self.code == 421

    @property
    def one_line(self) -> str:
        parts = [str(self.code)]
        if self.enhanced:
            parts.append(self.enhanced)
        if self.text:
            parts.append(" ".join(self.text.split("\n")))
        return " ".join(parts)

    def __str__(self) -> str:
        return self.one_line


# The usual one-line reply with an enhanced code, e.g. "250 2.0.0 Ok: queued as X".
_SIMPLE_REPLY = re.compile(rb"([2-5]\d\d) ([245])\.(\d{1,3})\.(\d{1,3}) ([\x20-\x7e]*)")


def parse_reply(lines: Sequence[bytes]) -> Reply:
    """Lines as received (without CRLF) -> Reply.  Raises ValueError if not SMTP."""
    if len(lines) == 1:
        simple = _SIMPLE_REPLY.fullmatch(lines[0])
        if simple is not None and simple.group(1)[:1] == simple.group(2):
            code, klass, subject, detail, text = simple.groups()
            return Reply(
                int(code),
                f"{klass.decode()}.{subject.decode()}.{detail.decode()}",
                text.decode("ascii").strip(),
            )
    if not lines:
        raise ValueError("empty reply")
    code_text = lines[0][:3]
    if not code_text.isdigit():
        raise ValueError(f"not an SMTP reply: {lines[0][:40]!r}")
    code = int(code_text)
    texts: list[str] = []
    enhanced: str | None = None
    for raw in lines:
        if raw[:3] != code_text:
            raise ValueError(f"reply lines with different codes: {raw[:40]!r}")
        text = raw[4:].decode("utf-8", "replace").strip()
        match = _ENHANCED.match(text)
        if match and match.group(1) == str(code)[0]:  # RFC 3463: class matches the code
            enhanced = enhanced or f"{match.group(1)}.{match.group(2)}.{match.group(3)}"
            text = text[match.end() :]
        texts.append(text)
    return Reply(code, enhanced, "\n".join(texts))


@dataclass(frozen=True)
class SendResult:
    """What the server said to one transaction.

    ``data_reply`` is None when MAIL was refused or no recipient was accepted (the
    session was RSET); otherwise the reply after the final "." — or the refusal of
    the DATA command itself.
    """

    mail_reply: Reply
    rcpt_replies: dict[str, Reply]
    data_reply: Reply | None

    @property
    def accepted(self) -> list[str]:
        """Recipients the server took the message for (empty unless data_reply is 2xx)."""
        if self.data_reply is None or not self.data_reply.ok:
            return []
        return [r for r, reply in self.rcpt_replies.items() if reply.ok]

    @property
    def delivered(self) -> bool:
        return bool(self.accepted)


@dataclass(eq=False)
class Transaction:
    """One message's MAIL (with SIZE=), RCPTs and DATA, ready to be written, and its
    data; from :meth:`SmtpSession.transaction`, sent by :meth:`SmtpSession.run`.

    ``session`` is set when the commands were already written on a session, right
    behind the previous message's data (RFC 2920 pipelining across messages):
    ``run`` there only reads their replies.  Until then that session is in the
    middle of a transaction: it must not be QUIT (the server may be reading
    message data), only aborted, if this transaction is not run.
    """

    mail_line: str
    rcpts: dict[str, str]  # recipients as given -> as written
    data: bytes | bytearray | memoryview | BinaryIO
    session: SmtpSession | None = None

    def commands(self) -> list[tuple[str, str]]:
        return [
            (self.mail_line, PHASE_MAIL),
            *((f"RCPT TO:<{clean}>", PHASE_RCPT) for clean in self.rcpts.values()),
            ("DATA", PHASE_DATA),
        ]


@dataclass(frozen=True)
class TlsInfo:
    version: str | None
    cipher: str | None
    bits: int | None
    verified: bool
    subject: str | None = None
    issuer: str | None = None
    san: tuple[str, ...] = ()
    not_after: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "cipher": self.cipher,
            "bits": self.bits,
            "verified": self.verified,
            "subject": self.subject,
            "issuer": self.issuer,
            "san": list(self.san),
            "not_after": self.not_after,
        }


@dataclass(frozen=True)
class ConnectAttempt:
    """One address tried.  ``reason``: ok, refused, timeout, unreachable or error."""

    target: Target
    reason: str
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = {"address": self.target.display, "result": self.reason}
        if self.detail:
            out["detail"] = self.detail
        return out


@dataclass
class PhaseTrace:
    """Timing and facts of one phase of :meth:`SmtpSession.open` (for `cxsmtp test`)."""

    name: str
    ms: float = 0.0
    ok: bool = True
    facts: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None


# --- errors with the detail the probe's hints need -----------------------------


class ConnectFailedError(SmtpConnectError):
    """No address accepted the TCP connection; ``attempts`` says what each one did."""

    def __init__(self, message: str, *, attempts: Sequence[ConnectAttempt], **kw: Any) -> None:
        super().__init__(message, phase=PHASE_CONNECT, **kw)
        self.attempts = tuple(attempts)
        reasons = {a.reason for a in self.attempts}
        self.reason = reasons.pop() if len(reasons) == 1 else "mixed"


class ConnectTimeoutError(SmtpTimeoutError):
    """Every address timed out while connecting (a firewall dropping packets)."""

    reason = "timeout"

    def __init__(self, message: str, *, attempts: Sequence[ConnectAttempt], **kw: Any) -> None:
        super().__init__(message, phase=PHASE_CONNECT, **kw)
        self.attempts = tuple(attempts)


class TlsFailedError(SmtpTLSError):
    """TLS could not be set up.  ``reason`` tells the probe which hint applies:

    ``hostname`` (certificate for another name), ``untrusted`` (self-signed or
    unknown CA), ``expired``, ``not-yet-valid``, ``certificate`` (other verification
    failure), ``not-tls`` (the peer speaks plain text), ``eof`` (closed during the
    handshake), ``protocol`` (other handshake failure), ``starttls-missing``,
    ``starttls-refused``.
    """

    def __init__(self, message: str, *, reason: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.reason = reason


class AuthFailedError(SmtpAuthError):
    """``reason``: refused (535 and other 5xx), auth-not-offered, no-mechanism."""

    def __init__(self, message: str, *, reason: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.reason = reason


class ProtocolError(SmtpConnectError):
    """The peer does not speak SMTP (or broke the protocol); the session is closed."""

    reason = "not-smtp"


# Which OpenSSL verify codes mean what (X509_V_ERR_*).
_CERT_REASONS = {
    9: "not-yet-valid",
    10: "expired",
    18: "untrusted",  # DEPTH_ZERO_SELF_SIGNED_CERT
    19: "untrusted",  # SELF_SIGNED_CERT_IN_CHAIN
    20: "untrusted",  # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: "untrusted",  # UNABLE_TO_VERIFY_LEAF_SIGNATURE
    62: "hostname",  # HOSTNAME_MISMATCH
    64: "hostname",  # IP_ADDRESS_MISMATCH
}
_PLAINTEXT_TLS_ERRORS = (
    "WRONG_VERSION_NUMBER",
    "UNKNOWN_PROTOCOL",
    "HTTP_REQUEST",
    "PACKET_LENGTH_TOO_LONG",
    "RECORD_LAYER_FAILURE",
)


# --- message data on the wire ---------------------------------------------------


def message_size(data: bytes | bytearray | memoryview | BinaryIO) -> int:
    """The size after CRLF normalisation, for ``MAIL FROM ... SIZE=`` (RFC 1870 §3:
    CRLF counted, the terminating "." and stuffed dots not)."""
    size = 0
    crlf = 0
    newlines = 0
    last_cr = False
    for piece in _pieces(data, CHUNK_SIZE):
        size += len(piece)
        newlines += piece.count(b"\n")
        crlf += piece.count(CRLF)
        if last_cr and piece[:1] == b"\n":
            crlf += 1
        last_cr = piece[-1:] == b"\r"
    # Bare LFs each gain a CR.  (Bare CRs gain an LF; rare enough to ignore in an
    # estimate, which is what SIZE is.)
    return size + newlines - crlf


def _command_bytes(where: str, commands: Sequence[tuple[str, str]]) -> bytes:
    if log.isEnabledFor(logging.DEBUG):
        for line, _ in commands:
            log.debug("%s C: %s", where, line)
    return "".join(f"{line}\r\n" for line, _ in commands).encode("utf-8")


def _pieces(data: bytes | bytearray | memoryview | BinaryIO, size: int) -> Iterator[bytes]:
    if isinstance(data, (bytes, bytearray, memoryview)):
        view = memoryview(data).cast("B")
        for start in range(0, len(view), size):
            yield bytes(view[start : start + size])
        return
    while True:
        piece = data.read(size)
        if not piece:
            return
        yield bytes(piece)


def _normalise(block: bytes) -> bytes:
    """CRLF, bare CR and bare LF all become CRLF (RFC 5321 §2.3.8)."""
    if b"\r" not in block:
        return block.replace(b"\n", CRLF)
    if block.count(b"\r") == block.count(b"\n") == block.count(CRLF):
        return block
    return block.replace(CRLF, b"\n").replace(b"\r", b"\n").replace(b"\n", CRLF)


def wire_chunks(
    data: bytes | bytearray | memoryview | BinaryIO, chunk_size: int = CHUNK_SIZE
) -> Iterator[bytes]:
    """The message as sent after DATA: CRLF line endings, dot-stuffed (RFC 5321
    §4.5.2), ending with CRLF "." CRLF.  The terminator rides in the last chunk so
    a small message is a single write.  Memory: a few chunks, whatever the size.
    """
    pending_cr = b""
    at_line_start = True  # the start of the message is the start of a line
    previous: bytes | None = None
    for piece in _pieces(data, chunk_size):
        block = pending_cr + piece
        # A CR at the end of a chunk may be half of a CRLF: decide with the next chunk.
        if block.endswith(b"\r"):
            pending_cr, block = b"\r", block[:-1]
        else:
            pending_cr = b""
        if not block:
            continue
        out = _normalise(block).replace(b"\n.", b"\n..")
        if at_line_start and out[:1] == b".":
            out = b"." + out
        at_line_start = out.endswith(b"\n")
        if previous is not None:
            yield previous
        previous = out
    tail = b""
    if pending_cr:
        tail = CRLF
        at_line_start = True
    if not at_line_start:
        tail += CRLF  # RFC 5321 §4.1.1.4: the terminator follows a line ending
    tail += b".\r\n"
    yield (previous or b"") + tail


# --- the session -------------------------------------------------------------------


class SmtpSession:
    """One SMTP connection.  See the module docstring and DESIGN "Transport contract".

    ``timeout`` (optional) caps every phase's timeout (``cxsmtp test --timeout``).
    """

    def __init__(
        self,
        entry: ServerEntry,
        password: str | None,
        *,
        resolver: dns.resolver.Resolver | None = None,
        ssl_context: ssl.SSLContext | None = None,
        local_hostname: str | None = None,
        timeout: float | None = None,
        dns_timeout: float = DEFAULT_DNS_TIMEOUT,
        resolution: Resolution | None = None,
    ) -> None:
        self.entry = entry
        self._given_resolution = resolution
        self._password = password
        self._resolver = resolver
        self._ssl_context = ssl_context
        self._local_hostname = local_hostname
        self.endpoint = entry.endpoint
        self.mode: TlsMode = entry.tls_mode(entry.username is not None)
        cap = timeout if timeout is not None else float("inf")
        self.connect_timeout = min(entry.connect_timeout, cap)
        self.command_timeout = min(entry.command_timeout, cap)
        self.data_timeout = min(entry.data_timeout, cap)
        self.dns_timeout = min(dns_timeout, cap)

        self.closed = True
        self.encrypted = False
        self.extensions: dict[str, str] = {}
        self.max_size: int | None = None
        self.resolution: Resolution | None = None
        self.attempts: list[ConnectAttempt] = []
        self.peer: Target | None = None
        self.greeting: Reply | None = None
        self.ehlo_reply: Reply | None = None
        self.tls: TlsInfo | None = None
        self.auth_mechanism: str | None = None
        self.trace: list[PhaseTrace] = []
        self.starttls_discarded = 0  # bytes thrown away before the handshake (RFC 3207 §6)

        self._sock: socket.socket | None = None
        self._rbuf = bytearray()
        self._timeout_set: tuple[socket.socket | None, float] = (None, 0.0)

    def __repr__(self) -> str:  # never the password
        state = "closed" if self.closed else f"open to {self.where}"
        return f"<SmtpSession {self.entry.name} {state}>"

    def __enter__(self) -> SmtpSession:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- description ------------------------------------------------------------

    @property
    def where(self) -> str:
        """``name[address]:port`` of the connected peer, else the endpoint."""
        if self.peer is not None:
            return self.peer.display
        return self.endpoint.address_for_display

    @property
    def auth_mechanisms(self) -> list[str]:
        return self.extensions.get("AUTH", "").upper().split()

    def has_extension(self, name: str) -> bool:
        return name.upper() in self.extensions

    # -- open -------------------------------------------------------------------

    def open(self, *, authenticate: bool = True) -> None:
        """resolve -> connect -> greeting -> EHLO -> TLS -> EHLO -> AUTH (idempotent).

        ``authenticate=False`` stops before AUTH (the probe, when no password is found)."""
        if not self.closed:
            return
        self.trace = []
        try:
            self._resolve()
            self._connect()
            if self.mode is TlsMode.IMPLICIT:
                with self._phase(PHASE_TLS) as facts:
                    self._handshake(facts)
            self._read_greeting()
            self._ehlo(PHASE_EHLO)
            self._starttls()
            if authenticate:
                self._authenticate()
        except BaseException:
            self._abort()
            raise

    @contextmanager
    def _phase(self, name: str) -> Iterator[dict[str, Any]]:
        record = PhaseTrace(name)
        start = time.perf_counter()
        try:
            yield record.facts
        except BaseException as exc:
            record.ok = False
            record.error = exc
            raise
        finally:
            record.ms = (time.perf_counter() - start) * 1000.0
            self.trace.append(record)

    def _resolve(self) -> None:
        with self._phase(PHASE_RESOLVE) as facts:
            if self._given_resolution is not None:
                # Reuse an earlier lookup (several connections, one DNS round).
                self.resolution = self._given_resolution
            else:
                self.resolution = resolve_endpoint(
                    self.endpoint, self._resolver, timeout=self.dns_timeout
                )
            facts.update(self.resolution.to_dict())

    def _connect(self) -> None:
        assert self.resolution is not None
        with self._phase(PHASE_CONNECT) as facts:
            self.attempts = []
            for target in self.resolution.targets:
                sock = self._try_connect(target)
                facts["tried"] = [a.to_dict() for a in self.attempts]
                if sock is not None:
                    self._sock = sock
                    self.peer = target
                    self.closed = False
                    facts["address"] = target.display
                    return
            self._raise_connect_failed()

    def _try_connect(self, target: Target) -> socket.socket | None:
        family = socket.AF_INET6 if ":" in target.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.connect_timeout)
            sock.connect((target.address, target.port))
            # Few large writes + no Nagle: no 40 ms delayed-ACK stall per message.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            sock.close()
            if isinstance(exc, TimeoutError | socket.timeout):
                reason, detail = "timeout", f"no answer within {self.connect_timeout:g} s"
            elif isinstance(exc, ConnectionRefusedError):
                reason, detail = "refused", "connection refused"
            elif exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL):
                reason, detail = "unreachable", exc.strerror or str(exc)
            else:
                reason, detail = "error", exc.strerror or str(exc)
            log.info("connect %s: %s", target.display, detail)
            self.attempts.append(ConnectAttempt(target, reason, detail))
            return None
        self.attempts.append(ConnectAttempt(target, "ok"))
        log.debug("connected to %s", target.display)
        return sock

    def _raise_connect_failed(self) -> None:
        attempts = self.attempts
        shown = "; ".join(f"{a.target.display} {a.detail}" for a in attempts)
        kw: dict[str, Any] = {"host": self.endpoint.host, "port": self.endpoint.port}
        if attempts and all(a.reason == "timeout" for a in attempts):
            raise ConnectTimeoutError(
                f"cannot connect to {self.endpoint.address_for_display}: {shown}",
                attempts=attempts,
                **kw,
            )
        raise ConnectFailedError(
            f"cannot connect to {self.endpoint.address_for_display}: {shown or 'no address'}",
            attempts=attempts,
            **kw,
        )

    def _read_greeting(self) -> None:
        # RFC 5321 §4.5.3.2.1: wait 5 minutes for the 220 greeting (command_timeout).
        with self._phase(PHASE_GREETING) as facts:
            reply = self._read_reply(PHASE_GREETING, self.command_timeout, "the greeting")
            self.greeting = reply
            facts["banner"] = reply.one_line
            if reply.code != 220:
                raise self._reply_error(PHASE_GREETING, "the server refused the session", reply)

    def _ehlo(self, phase: str) -> None:
        with self._phase(phase) as facts:
            name = self._local_name()
            reply = self._command(f"EHLO {name}", phase)
            if reply.permanent and reply.code in (500, 502, 504, 550):
                # RFC 5321 §4.1.1.1 / §3.2: an old server; fall back to HELO, no extensions.
                facts["ehlo_refused"] = reply.one_line
                reply = self._command(f"HELO {name}", phase)
                if not reply.ok:
                    raise self._reply_error(phase, "HELO refused", reply)
                self.extensions = {}
            elif not reply.ok:
                raise self._reply_error(phase, "EHLO refused", reply)
            else:
                self.extensions = _parse_extensions(reply.text)
            self.ehlo_reply = reply
            size = self.extensions.get("SIZE", "").strip()
            self.max_size = int(size) if size.isdigit() and int(size) > 0 else None
            facts["capabilities"] = [f"{k} {v}".strip() for k, v in self.extensions.items()]
            facts["size"] = self.max_size
            facts["auth"] = self.auth_mechanisms
            facts["local_name"] = name

    def _local_name(self) -> str:
        """Our EHLO name: the given one, else this host's name if it is a FQDN, else an
        address literal (RFC 5321 §4.1.4) — never a getfqdn() lookup."""
        if self._local_hostname:
            return self._local_hostname
        host = socket.gethostname()
        if "." in host and re.fullmatch(r"[A-Za-z0-9.-]+", host):
            return host
        assert self._sock is not None
        address = self._sock.getsockname()[0]
        return f"[IPv6:{address}]" if ":" in address else f"[{address}]"

    def _starttls(self) -> None:
        if self.mode in (TlsMode.IMPLICIT, TlsMode.PLAIN):
            return
        assert self.peer is not None
        if not self.has_extension("STARTTLS"):
            if self.mode is TlsMode.STARTTLS_REQUIRED:
                with self._phase(PHASE_TLS):
                    what = (
                        "the password was not sent"
                        if self._password is not None
                        else "nothing was sent"
                    )
                    raise TlsFailedError(
                        f"{self.where}: the server does not offer STARTTLS, which this entry "
                        f"requires; stopped before AUTH and MAIL, so {what}",
                        reason="starttls-missing",
                        host=self.endpoint.host,
                        port=self.endpoint.port,
                        phase=PHASE_TLS,
                    )
            log.info("%s: STARTTLS not offered; continuing unencrypted (no password)", self.where)
            return
        with self._phase(PHASE_TLS) as facts:
            reply = self._command("STARTTLS", PHASE_TLS)
            if reply.code != 220:
                if self.mode is TlsMode.STARTTLS_OPPORTUNISTIC and not reply.closing:
                    facts["refused"] = reply.one_line
                    log.warning(
                        "%s: STARTTLS refused (%s); continuing unencrypted", self.where, reply
                    )
                    return
                if reply.closing:
                    raise self._reply_error(PHASE_TLS, "STARTTLS answered", reply)
                raise TlsFailedError(
                    f"{self.where}: STARTTLS refused: {reply.one_line}; stopped before AUTH and "
                    "MAIL",
                    reason="starttls-refused",
                    host=self.endpoint.host,
                    port=self.endpoint.port,
                    phase=PHASE_TLS,
                    code=reply.code,
                    enhanced=reply.enhanced,
                    text=reply.text,
                )
            if self._rbuf:
                # RFC 3207 §6: anything that arrived with the 220 is not from the TLS peer
                # (a response-injection attack); it must not be read as a reply later.
                self.starttls_discarded = len(self._rbuf)
                facts["discarded_bytes"] = len(self._rbuf)
                log.warning(
                    "%s: discarded %d bytes sent before the TLS handshake",
                    self.where,
                    len(self._rbuf),
                )
                self._rbuf.clear()
            self._handshake(facts)
        self._ehlo(PHASE_EHLO_TLS)

    def _handshake(self, facts: dict[str, Any]) -> None:
        target = self.peer
        assert self._sock is not None and target is not None
        context = self._ssl_context or make_ssl_context(
            self.entry.ca_file, verify=self.entry.tls_verify
        )
        # SNI and certificate check against the host *name* (the MX host for MX
        # lookups), never against the address we happened to connect to.
        sock = context.wrap_socket(
            self._sock, server_hostname=target.name, do_handshake_on_connect=False
        )
        self._sock = sock
        sock.settimeout(self.command_timeout)
        try:
            sock.do_handshake()
        except ssl.SSLCertVerificationError as exc:
            reason = _CERT_REASONS.get(exc.verify_code, "certificate")
            raise TlsFailedError(
                f"{self.where}: certificate not accepted: {exc.verify_message or exc.reason}",
                reason=reason,
                host=self.endpoint.host,
                port=self.endpoint.port,
                phase=PHASE_TLS,
            ) from None
        except ssl.SSLError as exc:
            name = str(exc.reason or "")
            if any(marker in name for marker in _PLAINTEXT_TLS_ERRORS):
                reason, what = "not-tls", "the server does not speak TLS here"
            elif isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
                reason, what = "eof", "the server closed the connection"
            else:
                reason, what = "protocol", "no common protocol or cipher"
            raise TlsFailedError(
                f"{self.where}: TLS handshake failed: {what} ({name or exc})",
                reason=reason,
                host=self.endpoint.host,
                port=self.endpoint.port,
                phase=PHASE_TLS,
            ) from None
        except TimeoutError:
            raise TlsFailedError(
                f"{self.where}: no TLS handshake within {self.command_timeout:g} s",
                reason="timeout",
                host=self.endpoint.host,
                port=self.endpoint.port,
                phase=PHASE_TLS,
            ) from None
        except OSError as exc:
            raise TlsFailedError(
                f"{self.where}: TLS handshake: connection lost ({exc.strerror or exc})",
                reason="eof",
                host=self.endpoint.host,
                port=self.endpoint.port,
                phase=PHASE_TLS,
            ) from None
        self.encrypted = True
        self.tls = _tls_info(sock, context.verify_mode != ssl.CERT_NONE)
        facts.update(self.tls.to_dict())

    def _authenticate(self) -> None:
        username = self.entry.username
        if username is None:
            return
        with self._phase(PHASE_AUTH) as facts:
            where: dict[str, Any] = {
                "host": self.endpoint.host,
                "port": self.endpoint.port,
                "phase": PHASE_AUTH,
            }
            if self._password is None:
                raise SmtpPolicyError(
                    f"{self.where}: server entry {self.entry.name!r} has a username but no "
                    "password was given; not sending unauthenticated",
                    **where,
                )
            if not auth_allowed(self.encrypted, self.mode, self.entry.allow_plaintext_auth):
                raise SmtpPolicyError(
                    f"{self.where}: the connection is not encrypted; the password was not sent",
                    **where,
                )
            offered = self.auth_mechanisms
            facts["offered"] = offered
            if not self.has_extension("AUTH"):
                raise AuthFailedError(
                    f"{self.where}: the server offers no AUTH here; not sending mail "
                    "unauthenticated",
                    reason="auth-not-offered",
                    **where,
                )
            choices = [m for m in AUTH_PREFERENCE if m in offered]
            if not choices:
                raise AuthFailedError(
                    f"{self.where}: none of the offered AUTH mechanisms ({' '.join(offered)}) "
                    f"is supported; cxsmtp supports {', '.join(AUTH_PREFERENCE)}",
                    reason="no-mechanism",
                    **where,
                )
            for mechanism in choices:
                reply = self._auth_exchange(mechanism, username, self._password)
                if reply.code == 504 and mechanism != choices[-1]:
                    continue  # RFC 4954 §4: mechanism not supported after all; try the next
                break
            facts["mechanism"] = mechanism
            if reply.code == 235:
                self.auth_mechanism = mechanism
                log.info("%s: authenticated as %s with %s", self.where, username, mechanism)
                return
            if reply.closing or reply.temporary:
                raise self._reply_error(PHASE_AUTH, f"AUTH {mechanism} answered", reply)
            raise AuthFailedError(
                f"{self.where}: authentication as {username!r} refused: {reply.one_line}",
                reason="refused",
                code=reply.code,
                enhanced=reply.enhanced,
                text=reply.text,
                **where,
            )

    def _auth_exchange(self, mechanism: str, username: str, password: str) -> Reply:
        """Run one SASL exchange.  Nothing here is logged (RFC 4954 credentials)."""
        user = username.encode("utf-8")
        secret = password.encode("utf-8")
        if mechanism == "PLAIN":
            token = base64.b64encode(b"\0" + user + b"\0" + secret).decode("ascii")
            return self._secret_command(f"AUTH PLAIN {token}", "AUTH PLAIN <credentials hidden>")
        if mechanism == "LOGIN":
            reply = self._secret_command("AUTH LOGIN", "AUTH LOGIN")
            if reply.code != 334:
                return reply
            reply = self._secret_command(
                base64.b64encode(user).decode("ascii"), "<username hidden>"
            )
            if reply.code != 334:
                return reply
            return self._secret_command(
                base64.b64encode(secret).decode("ascii"), "<password hidden>"
            )
        if mechanism == "CRAM-MD5":
            reply = self._secret_command("AUTH CRAM-MD5", "AUTH CRAM-MD5")
            if reply.code != 334:
                return reply
            try:
                challenge = base64.b64decode(reply.text.strip(), validate=True)
            except ValueError:
                self._secret_command("*", "*")  # RFC 4954 §4: cancel the exchange
                return Reply(535, None, "unreadable CRAM-MD5 challenge", local=True)
            digest = hmac.new(secret, challenge, hashlib.md5).hexdigest()
            answer = base64.b64encode(user + b" " + digest.encode("ascii")).decode("ascii")
            return self._secret_command(answer, "<response hidden>")
        raise AssertionError(mechanism)  # pragma: no cover

    # -- transactions -----------------------------------------------------------------

    def mail(
        self,
        mail_from: str,
        *,
        size: int | None = None,
        smtputf8: bool = False,
        eight_bit: bool = False,
    ) -> Reply:
        """MAIL FROM with SIZE=/BODY=8BITMIME/SMTPUTF8 where offered.  421 raises."""
        return self._command(self._mail_line(mail_from, size, smtputf8, eight_bit), PHASE_MAIL)

    def rcpt(self, address: str) -> Reply:
        return self._command(f"RCPT TO:<{_check_address(address)}>", PHASE_RCPT)

    def data(self, data: bytes | bytearray | memoryview | BinaryIO) -> Reply:
        """DATA, the content, the final reply.  Returns the refusal of DATA if not 354."""
        reply = self._command("DATA", PHASE_DATA)
        if reply.code != 354:
            return reply
        return self._send_content(data)

    def send(
        self,
        mail_from: str,
        recipients: Sequence[str],
        data: bytes | bytearray | memoryview | BinaryIO,
        *,
        smtputf8: bool = False,
        eight_bit: bool = False,
    ) -> SendResult:
        """One transaction.  Refusals are results; a lost connection, a timeout or a 421
        raises (then ``closed`` is True).  A connection lost after the final "." raises
        with phase ``data-end``: the outcome is unknown (RFC 1047)."""
        self._require_open()
        tx = self.transaction(mail_from, recipients, data, smtputf8=smtputf8, eight_bit=eight_bit)
        if isinstance(tx, SendResult):
            return tx
        return self.run(tx)

    def transaction(
        self,
        mail_from: str,
        recipients: Sequence[str],
        data: bytes | bytearray | memoryview | BinaryIO,
        *,
        smtputf8: bool = False,
        eight_bit: bool = False,
    ) -> Transaction | SendResult:
        """Check the envelope and prepare its commands (SIZE= counted) without any
        I/O on the connection; a SendResult when it is refused here already."""
        # Keys of rcpt_replies are the recipients as given; the wire gets them cleaned.
        rcpts = {r: _check_address(r) for r in recipients}
        if not rcpts:
            raise MessageError("no recipients given for this message")
        _check_address(mail_from)
        if smtputf8 and not self.has_extension("SMTPUTF8"):
            # RFC 6531 §3.4: without the extension the message cannot be sent as it is.
            refusal = Reply(
                553,
                "5.6.7",
                f"{self.where} does not offer SMTPUTF8, needed for this message",
                local=True,
            )
            return SendResult(refusal, {}, None)
        size = None
        if self.has_extension("SIZE"):
            if isinstance(data, bytes | bytearray | memoryview):
                size = message_size(data)
            else:
                start = data.tell()
                size = message_size(data)
                data.seek(start)
        return Transaction(self._mail_line(mail_from, size, smtputf8, eight_bit), rcpts, data)

    def run(
        self,
        tx: Transaction,
        then: Transaction | None = None,
        meanwhile: Callable[[], None] | None = None,
    ) -> SendResult:
        """Send ``tx``.  With ``then`` (and PIPELINING), ``then``'s commands are
        written right behind ``tx``'s data, in the same write as the final ".", so
        that the next message costs no round trip of its own (RFC 2920 §3.1 allows
        it: the client may pipeline across transactions).  ``then``'s data is only
        sent by ``run(then)``, after its command replies -- so after ``tx``'s outcome
        was read and could be recorded: a crash still finds at most one message per
        connection possibly delivered (RFC 1047).  ``then.session`` tells whether it
        was written (not when ``tx`` ended before its data, or the window is full).
        ``meanwhile`` is called once the data is out, before waiting for its reply
        (the caller's own work overlaps the server's); it must not raise SmtpError.
        """
        self._require_open()
        if self.has_extension("PIPELINING"):
            return self._send_pipelined(tx, then, meanwhile)
        # (nothing was chained on this session: that needs PIPELINING)
        mail_reply = self._command(tx.mail_line, PHASE_MAIL)
        if not mail_reply.ok:
            self.reset()
            return SendResult(mail_reply, {}, None)
        rcpt_replies = {
            r: self._command(f"RCPT TO:<{clean}>", PHASE_RCPT) for r, clean in tx.rcpts.items()
        }
        if not any(reply.ok for reply in rcpt_replies.values()):
            self.reset()
            return SendResult(mail_reply, rcpt_replies, None)
        data_cmd = self._command("DATA", PHASE_DATA)
        if data_cmd.code != 354:
            self.reset()
            return SendResult(mail_reply, rcpt_replies, data_cmd)
        return SendResult(mail_reply, rcpt_replies, self._send_content(tx.data, b"", meanwhile))

    def _send_pipelined(
        self, tx: Transaction, then: Transaction | None, meanwhile: Callable[[], None] | None
    ) -> SendResult:
        """RFC 2920: MAIL, the RCPTs and DATA in one write, then the replies in order.

        At most PIPELINE_WINDOW commands are in flight, so that a long recipient list
        cannot fill both socket buffers and deadlock (RFC 2920 §3.1)."""
        commands = tx.commands()
        replies: list[Reply] = []
        if tx.session is self:  # written behind the previous message's data
            replies.extend(self._reply(phase) for _, phase in commands)
        else:
            for start in range(0, len(commands), PIPELINE_WINDOW):
                window = commands[start : start + PIPELINE_WINDOW]
                self._write(_command_bytes(self.where, window), window[0][1], self.command_timeout)
                replies.extend(self._reply(phase) for _, phase in window)
        tx.session = self
        mail_reply, data_cmd = replies[0], replies[-1]
        rcpt_replies = dict(zip(tx.rcpts, replies[1:-1], strict=True))
        accepted = mail_reply.ok and any(reply.ok for reply in rcpt_replies.values())
        if data_cmd.code == 354 and not accepted:
            # A server that should have refused DATA (RFC 2920 §3.1): end it empty.
            self._write(b".\r\n", PHASE_DATA, self.command_timeout)
            self._reply(PHASE_DATA_END, self.data_timeout)
            data_cmd = Reply(554, "5.5.1", "no valid recipients", local=True)
        if not accepted:
            self.reset()
            return SendResult(mail_reply, rcpt_replies, None)
        if data_cmd.code != 354:
            self.reset()
            return SendResult(mail_reply, rcpt_replies, data_cmd)
        chained = b""
        if then is not None and then.session is None:
            window = then.commands()
            if len(window) <= PIPELINE_WINDOW:
                chained = _command_bytes(self.where, window)
                then.session = self
        return SendResult(mail_reply, rcpt_replies, self._send_content(tx.data, chained, meanwhile))

    def _mail_line(self, mail_from: str, size: int | None, smtputf8: bool, eight_bit: bool) -> str:
        params = []
        if size is not None and self.has_extension("SIZE"):
            params.append(f"SIZE={size}")  # RFC 1870
        if (eight_bit or smtputf8) and self.has_extension("8BITMIME"):
            params.append("BODY=8BITMIME")  # RFC 6152
        if smtputf8 and self.has_extension("SMTPUTF8"):
            params.append("SMTPUTF8")  # RFC 6531
        line = f"MAIL FROM:<{_check_address(mail_from)}>"
        return " ".join([line, *params])

    def _send_content(
        self,
        data: bytes | bytearray | memoryview | BinaryIO,
        chained: bytes = b"",
        meanwhile: Callable[[], None] | None = None,
    ) -> Reply:
        """After 354: the message (``chained``: the next transaction's commands in the
        same last write), then the reply to the final "."."""
        chunks = wire_chunks(data)
        pending = next(chunks)
        total = 0
        for following in chunks:
            total += len(pending)
            reply = self._write_data(pending, PHASE_DATA)
            if reply is not None:
                return reply
            pending = following
        # The last write holds the terminating "."; once it has started the server may
        # have the whole message: a loss from here on is "outcome unknown" (data-end).
        total += len(pending)
        reply = self._write_data(pending + chained if chained else pending, PHASE_DATA_END)
        if reply is not None:
            return reply
        log.debug("%s C: <%d bytes of message data>", self.where, total)
        if meanwhile is not None:
            meanwhile()
        # RFC 5321 §4.5.3.2.6: 10 minutes for the reply to the final ".".
        return self._reply(PHASE_DATA_END, self.data_timeout)

    def _write_data(self, chunk: bytes, phase: str) -> Reply | None:
        """Write a data chunk.  When the write fails because the server answered early
        and hung up (e.g. 552 message too big), return that answer: a refusal is a
        result.  The session is closed then."""
        try:
            self._write(chunk, phase, self.command_timeout, abort=False)
        except SmtpConnectError:
            reply = self._salvage_reply()
            self._abort()
            if reply is None:
                raise
            if reply.closing:
                raise self._reply_error(
                    phase, "the server is closing the connection", reply
                ) from None
            return reply
        except SmtpError:
            self._abort()
            raise
        return None

    def _salvage_reply(self) -> Reply | None:
        try:
            return self._read_reply(PHASE_DATA, 1.0, "a reply", abort=False)
        except SmtpError:
            return None

    def reset(self) -> None:
        """RSET (RFC 5321 §4.1.1.5); a refused RSET closes the session."""
        self._require_open()
        reply = self._command("RSET", PHASE_RSET)
        if not reply.ok:
            self._abort()
            raise self._reply_error(PHASE_RSET, "RSET refused", reply)

    def noop(self) -> Reply:
        return self._command("NOOP", "noop")

    def close(self) -> None:
        """QUIT (errors swallowed) and close the socket."""
        if self.closed or self._sock is None:
            self._abort()
            return
        try:
            timeout = min(self.command_timeout, QUIT_TIMEOUT)
            self._write(b"QUIT\r\n", PHASE_QUIT, timeout)
            self._read_reply(PHASE_QUIT, timeout, "QUIT")
        except SmtpError as exc:
            log.debug("%s: QUIT: %s", self.where, exc)
        finally:
            self._abort()

    def abort(self) -> None:
        """Close the socket at once, without QUIT (e.g. on SIGTERM or a deadline)."""
        self._abort()

    def interrupt(self) -> None:
        """From another thread: make a read or write blocked on this session fail at
        once (shutdown(2) wakes it, close() would not).  The thread that owns the
        session then sees a lost connection and cleans up; nothing else changes
        here.  The plain socket's shutdown, also under TLS: SSLSocket.shutdown
        would drop the TLS object under the reading thread's feet."""
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    # -- low level ----------------------------------------------------------------------

    def _require_open(self) -> None:
        if self.closed or self._sock is None:
            raise SmtpConnectError(
                f"{self.where}: the session is closed",
                host=self.endpoint.host,
                port=self.endpoint.port,
                phase=PHASE_MAIL,
            )

    def _abort(self) -> None:
        self.closed = True
        sock, self._sock = self._sock, None
        self._rbuf.clear()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def _command(self, line: str, phase: str) -> Reply:
        log.debug("%s C: %s", self.where, line)
        self._write(line.encode("utf-8") + CRLF, phase, self.command_timeout)
        return self._reply(phase)

    def _secret_command(self, line: str, shown: str) -> Reply:
        log.debug("%s C: %s", self.where, shown)  # ``shown`` never holds a secret
        self._write(line.encode("utf-8") + CRLF, PHASE_AUTH, self.command_timeout)
        reply = self._read_reply(PHASE_AUTH, self.command_timeout, shown, log_reply=False)
        if reply.closing:
            self._abort()
        return reply

    def _reply(self, phase: str, timeout: float | None = None) -> Reply:
        reply = self._read_reply(phase, self.command_timeout if timeout is None else timeout, phase)
        if reply.closing:
            # RFC 5321 §3.8: 421 = service closing; the session is over.
            self._abort()
            raise self._reply_error(phase, "the server is closing the connection", reply)
        return reply

    def _reply_error(self, phase: str, what: str, reply: Reply) -> SmtpError:
        return SmtpReplyError(
            f"{self.where}: {phase}: {what}: {reply.one_line}",
            host=self.endpoint.host,
            port=self.endpoint.port,
            phase=phase,
            code=reply.code,
            enhanced=reply.enhanced,
            text=reply.text,
        )

    def _write(self, data: bytes, phase: str, timeout: float, *, abort: bool = True) -> None:
        sock = self._sock
        if sock is None:
            self._require_open()
            return
        try:
            self._settimeout(sock, timeout)
            sock.sendall(data)
        except TimeoutError:
            raise self._broken(
                SmtpTimeoutError,
                f"{self.where}: {phase}: sending timed out after {timeout:g} s",
                phase,
                abort,
            ) from None
        except OSError as exc:
            raise self._broken(
                SmtpConnectError,
                f"{self.where}: {phase}: connection lost while sending ({exc.strerror or exc})",
                phase,
                abort,
            ) from None

    def _read_reply(
        self, phase: str, timeout: float, what: str, *, abort: bool = True, log_reply: bool = True
    ) -> Reply:
        lines: list[bytes] = []
        deadline = time.monotonic() + timeout
        while True:
            newline = self._rbuf.find(b"\n")
            if newline < 0:
                if len(self._rbuf) > MAX_REPLY_BYTES:
                    self._protocol_error(phase, "a reply line longer than 64 KiB", abort)
                self._fill(phase, deadline, timeout, what, abort)
                continue
            raw = bytes(self._rbuf[:newline]).rstrip(b"\r")
            del self._rbuf[: newline + 1]
            lines.append(raw)
            if len(raw) < 4 or raw[3:4] != b"-":
                break
            if sum(map(len, lines)) > MAX_REPLY_BYTES:
                self._protocol_error(phase, "a reply longer than 64 KiB", abort)
        try:
            reply = parse_reply(lines)
        except ValueError as exc:
            self._protocol_error(phase, f"{exc}; is this an SMTP server?", abort)
        if log_reply and log.isEnabledFor(logging.DEBUG):
            log.debug("%s S: %s", self.where, reply.one_line)
        return reply

    def _settimeout(self, sock: socket.socket, seconds: float, *, at_most: bool = False) -> None:
        """socket.settimeout costs a system call (ioctl FIONBIO) each time: set it only
        when needed.  Long timeouts are rounded down to whole seconds (a timeout of
        minutes may fire up to a second early).  ``at_most``: any timeout of at least
        a second (or ``seconds``, if less) up to ``seconds`` will do -- reads, which
        _fill retries until their deadline."""
        current_sock, current = self._timeout_set
        if current_sock is sock:
            if at_most and min(seconds, 1.0) <= current <= seconds:
                return
            if current == (float(int(seconds)) if seconds >= 5.0 else seconds):
                return
        if seconds >= 5.0:
            seconds = float(int(seconds))
        sock.settimeout(seconds)
        self._timeout_set = (sock, seconds)

    def _fill(self, phase: str, deadline: float, timeout: float, what: str, abort: bool) -> None:
        sock = self._sock
        if sock is None:
            self._require_open()
            return
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError
            self._settimeout(sock, remaining, at_most=True)
            data = sock.recv(65536)
        except TimeoutError:
            if time.monotonic() < deadline:
                return  # the socket's timeout was shorter than the time left: read again
            raise self._broken(
                SmtpTimeoutError,
                f"{self.where}: {phase}: no reply to {what} within {timeout:g} s",
                phase,
                abort,
            ) from None
        except OSError as exc:
            raise self._broken(
                SmtpConnectError,
                f"{self.where}: {phase}: connection lost ({exc.strerror or exc})",
                phase,
                abort,
            ) from None
        if not data:
            raise self._broken(
                SmtpConnectError,
                f"{self.where}: {phase}: the server closed the connection",
                phase,
                abort,
            )
        self._rbuf += data

    def _broken(self, cls: type[SmtpError], message: str, phase: str, abort: bool) -> SmtpError:
        """The error for a connection that timed out or broke; the session is closed first
        unless the caller keeps it (``abort=False``)."""
        if abort:
            self._abort()
        return cls(message, host=self.endpoint.host, port=self.endpoint.port, phase=phase)

    def _protocol_error(self, phase: str, what: str, abort: bool) -> Any:
        if abort:
            self._abort()
        raise ProtocolError(
            f"{self.where}: {phase}: {what}",
            host=self.endpoint.host,
            port=self.endpoint.port,
            phase=phase,
        )


# --- helpers ----------------------------------------------------------------------


def _parse_extensions(text: str) -> dict[str, str]:
    """EHLO reply text -> {KEYWORD: params}; the first line is the greeting name."""
    extensions: dict[str, str] = {}
    for line in text.split("\n")[1:]:
        keyword, _, params = line.strip().partition(" ")
        if not keyword or "=" in keyword:  # skip old "AUTH=LOGIN" lines
            continue
        key = keyword.upper()
        if key == "AUTH" and key in extensions:
            params = f"{extensions[key]} {params}"
        extensions[key] = params.strip()
    return extensions


def _check_address(address: str) -> str:
    """Refuse what would break the command line (SMTP command injection)."""
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    if any(ch in address for ch in "\r\n\0<>"):
        raise MessageError(f"invalid address {address!r}: contains a line break or angle bracket")
    return address


def _name_to_text(name: Any) -> str | None:
    """getpeercert()'s ((('commonName', 'x'),), …) -> 'CN=x, O=…'."""
    if not name:
        return None
    short = {
        "commonName": "CN",
        "organizationName": "O",
        "organizationalUnitName": "OU",
        "countryName": "C",
        "localityName": "L",
        "stateOrProvinceName": "ST",
    }
    parts = []
    for rdn in name:
        for key, value in rdn:
            parts.append(f"{short.get(key, key)}={value}")
    return ", ".join(parts)


def describe_certificate(der: bytes) -> dict[str, Any]:
    """Subject, issuer, SANs and expiry of a DER certificate (needs ``cryptography``,
    present with trustme; without it: empty).  For unverified connections, where
    ``getpeercert()`` returns nothing."""
    try:
        from cryptography import x509
    except ImportError:  # pragma: no cover
        return {}
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return {}
    san: list[str] = []
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        san = [f"DNS:{n}" for n in ext.get_values_for_type(x509.DNSName)]
        san += [f"IP Address:{a}" for a in ext.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        pass
    return {
        "subject": cert.subject.rfc4514_string() or None,
        "issuer": cert.issuer.rfc4514_string() or None,
        "san": tuple(san),
        "not_after": cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _tls_info(sock: ssl.SSLSocket, verified: bool) -> TlsInfo:
    cipher = sock.cipher()
    cert = sock.getpeercert() if verified else None
    san: tuple[str, ...] = ()
    subject = issuer = not_after = None
    if not verified:
        der = sock.getpeercert(binary_form=True)
        described = describe_certificate(der) if der else {}
        subject = described.get("subject")
        issuer = described.get("issuer")
        san = described.get("san", ())
        not_after = described.get("not_after")
    if cert:
        subject = _name_to_text(cert.get("subject"))
        issuer = _name_to_text(cert.get("issuer"))
        alt_names: Any = cert.get("subjectAltName", ())
        san = tuple(f"{kind}:{value}" for kind, value in alt_names)
        raw_after = cert.get("notAfter")
        if isinstance(raw_after, str):
            not_after = time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime(ssl.cert_time_to_seconds(raw_after))
            )
    return TlsInfo(
        version=sock.version(),
        cipher=cipher[0] if cipher else None,
        bits=cipher[2] if cipher else None,
        verified=verified,
        subject=subject,
        issuer=issuer,
        san=san,
        not_after=not_after,
    )
