"""What the phase modules (connect, ehlo, tls, auth, transaction) may use of a
session: :class:`Conversation`, a protocol that :class:`SmtpSession` implements.

The phases see the session's settings, the state they fill in, and the
command/reply steps -- not the whole class, so they never import session.py
(which imports them).  A phase that stores a result of its own type extends the
protocol in its own module (connect: ``attempts``; tls: ``tls``; transaction:
the transaction methods the session forwards).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from carerix_smtp.smtp.channel import ChannelOwner

if TYPE_CHECKING:
    import ssl

    import dns.resolver

    from carerix_smtp.config.file import ServerEntry
    from carerix_smtp.config.oauth import Credential
    from carerix_smtp.config.tls import TlsMode
    from carerix_smtp.errors import SmtpError
    from carerix_smtp.smtp.channel import Channel
    from carerix_smtp.smtp.resolve import Resolution, Target
    from carerix_smtp.smtp.wire import Reply


class Conversation(ChannelOwner, Protocol):
    """One SMTP session as its phases see it (``where``, ``endpoint``,
    ``require_open`` and ``abort`` come from :class:`ChannelOwner`)."""

    # -- settings, from the server entry and the caller ----------------------------
    entry: ServerEntry
    mode: TlsMode
    password: Credential | None  # a password, or an OAuth2 token source
    resolver: dns.resolver.Resolver | None
    ssl_context: ssl.SSLContext | None
    local_hostname: str | None
    given_resolution: Resolution | None  # resolved by the caller: no DNS phase
    connect_timeout: float
    command_timeout: float
    data_timeout: float
    dns_timeout: float

    # -- state the phases fill in ----------------------------------------------------
    channel: Channel
    closed: bool
    encrypted: bool
    extensions: dict[str, str]
    max_size: int | None
    resolution: Resolution | None
    peer: Target | None
    greeting: Reply | None
    ehlo_reply: Reply | None
    auth_mechanism: str | None
    starttls_discarded: int

    @property
    def auth_mechanisms(self) -> list[str]: ...

    def has_extension(self, name: str) -> bool: ...

    # -- steps -------------------------------------------------------------------------
    def phase(self, name: str) -> AbstractContextManager[dict[str, Any]]:
        """Time phase ``name`` into the trace; yields its facts (a dict to fill)."""
        ...

    def command(self, line: str, phase: str) -> Reply:
        """Write one command line and read its reply (a 421 raises)."""
        ...

    def reply(self, phase: str, timeout: float | None = None) -> Reply:
        """Read one reply (a 421 closes the session and raises)."""
        ...

    def reply_error(self, phase: str, what: str, reply: Reply) -> SmtpError:
        """The error for an unwanted ``reply``, naming the peer and the phase."""
        ...

    def write(self, data: bytes, phase: str, timeout: float, *, abort: bool = True) -> None:
        """Every write of the session goes through here."""
        ...
