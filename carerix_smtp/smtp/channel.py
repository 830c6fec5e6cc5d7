"""The session's socket: writes with a timeout, replies read from a buffer with a
deadline, and the errors of a connection that broke, timed out or does not speak
SMTP.  One :class:`Channel` per session (its :class:`ChannelOwner`); blocking I/O.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from typing import TYPE_CHECKING, Any, Protocol

from carerix_smtp.errors import SmtpConnectError, SmtpError, SmtpTimeoutError
from carerix_smtp.smtp.wire import Reply, parse_reply

if TYPE_CHECKING:
    from carerix_smtp.config.hosts import Endpoint

log = logging.getLogger(__name__)

MAX_REPLY_BYTES = 64 * 1024  # RFC 5321 §4.5.3.1.5 allows 512 per line; be lenient

# One-line replies already parsed, by their bytes with the CR (Reply is immutable):
# a server says "250 2.1.0 Ok" and "354 ..." the same way for every message.  Only
# the replies of a transaction, and a bounded number: "250 2.0.0 queued as ID"
# differs each time, and the first ones seen stay.
_SEEN: dict[bytes, Reply] = {}
_SEEN_MAX = 256
_KEPT = frozenset({250, 251, 354})


class ProtocolError(SmtpConnectError):
    """The peer does not speak SMTP (or broke the protocol); the session is closed."""

    reason = "not-smtp"


class ChannelOwner(Protocol):
    """What a :class:`Channel` uses of its session: the peer's name for messages,
    and closing the session when the connection broke."""

    endpoint: Endpoint

    @property
    def where(self) -> str: ...

    def require_open(self) -> None:
        """Raise if the session is closed."""
        ...

    def abort(self) -> None:
        """Close the session (and this channel) without QUIT."""
        ...


class Channel:
    """The connected socket of ``session`` (None when closed) and the bytes received
    but not yet read as a reply.  Errors name the session's peer; a broken connection
    closes the session (unless the caller keeps it, ``abort=False``)."""

    def __init__(self, session: ChannelOwner) -> None:
        self._session = session
        self.sock: socket.socket | None = None
        self.rbuf = bytearray()
        self._timeout_set: tuple[socket.socket | None, float] = (None, 0.0)

    def close(self) -> None:
        """Close the socket and forget unread bytes."""
        sock, self.sock = self.sock, None
        self.rbuf.clear()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    @property
    def where(self) -> str:
        return self._session.where

    def write(self, data: bytes, phase: str, timeout: float, *, abort: bool = True) -> None:
        sock = self.sock
        if sock is None:
            self._session.require_open()
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

    def read_reply(
        self, phase: str, timeout: float, what: str, *, abort: bool = True, log_reply: bool = True
    ) -> Reply:
        deadline = time.monotonic() + timeout
        rbuf = self.rbuf
        newline = rbuf.find(b"\n")
        while newline < 0:  # the first line, whole
            self._more(phase, deadline, timeout, what, abort)
            newline = rbuf.find(b"\n")
        reply = None
        if newline > 3 and rbuf[3] == 0x20:  # a one-line reply
            reply = _SEEN.get(bytes(rbuf[:newline]))
            if reply is not None:  # the usual "250 2.1.0 Ok", "354 ...": parsed before
                del rbuf[: newline + 1]
        if reply is None:
            reply = self._read_reply(phase, deadline, timeout, what, abort)
        if log_reply and log.isEnabledFor(logging.DEBUG):
            log.debug("%s S: %s", self.where, reply.one_line)
        return reply

    def _read_reply(
        self, phase: str, deadline: float, timeout: float, what: str, abort: bool
    ) -> Reply:
        lines: list[bytes] = []
        while True:
            newline = self.rbuf.find(b"\n")
            if newline < 0:
                self._more(phase, deadline, timeout, what, abort)
                continue
            raw = bytes(self.rbuf[:newline]).rstrip(b"\r")
            del self.rbuf[: newline + 1]
            lines.append(raw)
            if len(raw) < 4 or raw[3:4] != b"-":
                break
            if sum(map(len, lines)) > MAX_REPLY_BYTES:
                self._protocol_error(phase, "a reply longer than 64 KiB", abort)
        try:
            reply = parse_reply(lines)
        except ValueError as exc:
            self._protocol_error(phase, f"{exc}; is this an SMTP server?", abort)
        if len(lines) == 1 and reply.code in _KEPT and len(_SEEN) < _SEEN_MAX:
            _SEEN[lines[0] + b"\r"] = reply
        return reply

    def _more(self, phase: str, deadline: float, timeout: float, what: str, abort: bool) -> None:
        """Read more of a reply line (none is whole in the buffer yet)."""
        if len(self.rbuf) > MAX_REPLY_BYTES:
            self._protocol_error(phase, "a reply line longer than 64 KiB", abort)
        self._fill(phase, deadline, timeout, what, abort)

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
        sock = self.sock
        if sock is None:
            self._session.require_open()
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
        self.rbuf += data

    def _broken(self, cls: type[SmtpError], message: str, phase: str, abort: bool) -> SmtpError:
        """The error for a connection that timed out or broke; the session is closed first
        unless the caller keeps it (``abort=False``)."""
        if abort:
            self._session.abort()
        return cls(
            message, host=self._session.endpoint.host, port=self._session.endpoint.port, phase=phase
        )

    def _protocol_error(self, phase: str, what: str, abort: bool) -> Any:
        if abort:
            self._session.abort()
        raise ProtocolError(
            f"{self.where}: {phase}: {what}",
            host=self._session.endpoint.host,
            port=self._session.endpoint.port,
            phase=phase,
        )
