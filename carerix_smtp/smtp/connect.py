"""Finding and reaching the server: the resolve and connect phases of
:meth:`SmtpSession.open` (each resolved address in turn, TCP_NODELAY), what each
address did (:class:`ConnectAttempt`), and the errors when none answered.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from carerix_smtp.errors import SmtpConnectError, SmtpTimeoutError
from carerix_smtp.smtp.conversation import Conversation
from carerix_smtp.smtp.phases import PHASE_CONNECT, PHASE_RESOLVE
from carerix_smtp.smtp.resolve import Target, resolve_endpoint

log = logging.getLogger(__name__)


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


# --- the phases ----------------------------------------------------------------


class Connecting(Conversation, Protocol):
    """A :class:`Conversation` that also keeps what each address did."""

    attempts: list[ConnectAttempt]


def resolve(session: Conversation) -> None:
    """The resolve phase: the addresses to try, in order (or the lookup given)."""
    with session.phase(PHASE_RESOLVE) as facts:
        if session.given_resolution is not None:
            # Reuse an earlier lookup (several connections, one DNS round).
            session.resolution = session.given_resolution
        else:
            session.resolution = resolve_endpoint(
                session.endpoint, session.resolver, timeout=session.dns_timeout
            )
        facts.update(session.resolution.to_dict())


def connect(session: Connecting) -> None:
    """The connect phase: the first address that accepts becomes the session's socket."""
    assert session.resolution is not None
    with session.phase(PHASE_CONNECT) as facts:
        session.attempts = []
        for target in session.resolution.targets:
            sock = _try_connect(session, target)
            facts["tried"] = [a.to_dict() for a in session.attempts]
            if sock is not None:
                session.channel.sock = sock
                session.peer = target
                session.closed = False
                facts["address"] = target.display
                return
        _raise_connect_failed(session)


def _try_connect(session: Connecting, target: Target) -> socket.socket | None:
    family = socket.AF_INET6 if ":" in target.address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(session.connect_timeout)
        sock.connect((target.address, target.port))
        # Few large writes + no Nagle: no 40 ms delayed-ACK stall per message.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:
        sock.close()
        if isinstance(exc, TimeoutError | socket.timeout):
            reason, detail = "timeout", f"no answer within {session.connect_timeout:g} s"
        elif isinstance(exc, ConnectionRefusedError):
            reason, detail = "refused", "connection refused"
        elif exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL):
            reason, detail = "unreachable", exc.strerror or str(exc)
        else:
            reason, detail = "error", exc.strerror or str(exc)
        log.info("connect %s: %s", target.display, detail)
        session.attempts.append(ConnectAttempt(target, reason, detail))
        return None
    session.attempts.append(ConnectAttempt(target, "ok"))
    log.debug("connected to %s", target.display)
    return sock


def _raise_connect_failed(session: Connecting) -> None:
    attempts = session.attempts
    shown = "; ".join(f"{a.target.display} {a.detail}" for a in attempts)
    kw: dict[str, Any] = {"host": session.endpoint.host, "port": session.endpoint.port}
    if attempts and all(a.reason == "timeout" for a in attempts):
        raise ConnectTimeoutError(
            f"cannot connect to {session.endpoint.address_for_display}: {shown}",
            attempts=attempts,
            **kw,
        )
    raise ConnectFailedError(
        f"cannot connect to {session.endpoint.address_for_display}: {shown or 'no address'}",
        attempts=attempts,
        **kw,
    )
