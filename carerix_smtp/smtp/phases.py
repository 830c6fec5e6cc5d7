"""The phases of a session, by name (as `cxsmtp test` reports them and
``SmtpError.phase`` carries them), and :class:`PhaseTrace`, the timing and facts
of one phase of :meth:`SmtpSession.open`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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


@dataclass
class PhaseTrace:
    """Timing and facts of one phase of :meth:`SmtpSession.open` (for `cxsmtp test`)."""

    name: str
    ms: float = 0.0
    ok: bool = True
    facts: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None
