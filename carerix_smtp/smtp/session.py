"""SmtpSession: one SMTP connection, from resolve to QUIT.

``open()`` runs the phases (resolve, connect, greeting, EHLO, TLS, AUTH), each in
its own module (connect, ehlo, tls, auth); the mail transactions are in
transaction.py and the socket I/O in channel.py.  This class holds the session's
state, the phase trace, and the command/reply steps they all use.  The phase
modules see it only as a :class:`~carerix_smtp.smtp.conversation.Conversation`
(the settings, the state and the steps under "conversation steps" below) and
never import this module; callers use open/mail/rcpt/data/send/transaction/run/
reset/noop/close/abort/interrupt.  Why our own client rather than smtplib: see
the package docstring.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, BinaryIO

from carerix_smtp.config.tls import TlsMode
from carerix_smtp.errors import SmtpConnectError, SmtpError, SmtpReplyError
from carerix_smtp.smtp import auth, oauth
from carerix_smtp.smtp.channel import Channel
from carerix_smtp.smtp.connect import ConnectAttempt, connect, resolve
from carerix_smtp.smtp.ehlo import ehlo, read_greeting
from carerix_smtp.smtp.phases import PHASE_EHLO, PHASE_MAIL, PHASE_QUIT, PHASE_TLS, PhaseTrace
from carerix_smtp.smtp.resolve import DEFAULT_DNS_TIMEOUT, Resolution, Target
from carerix_smtp.smtp.tls import TlsInfo, handshake, starttls
from carerix_smtp.smtp.transaction import SendResult, Transaction, Transactions
from carerix_smtp.smtp.wire import CRLF, Reply

if TYPE_CHECKING:
    import ssl

    import dns.resolver

    from carerix_smtp.config.file import ServerEntry
    from carerix_smtp.config.oauth import Credential

log = logging.getLogger(__name__)

QUIT_TIMEOUT = 5.0


class SmtpSession:
    """One SMTP connection.  See the package docstring.

    ``timeout`` (optional) caps every phase's timeout (``cxsmtp test --timeout``).
    """

    def __init__(
        self,
        entry: ServerEntry,
        password: Credential | None,
        *,
        resolver: dns.resolver.Resolver | None = None,
        ssl_context: ssl.SSLContext | None = None,
        local_hostname: str | None = None,
        timeout: float | None = None,
        dns_timeout: float = DEFAULT_DNS_TIMEOUT,
        resolution: Resolution | None = None,
    ) -> None:
        self.entry = entry
        self.given_resolution = resolution  # an earlier lookup to reuse (no DNS)
        self.password = password
        self.resolver = resolver
        self.ssl_context = ssl_context
        self.local_hostname = local_hostname
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
        # Called once the greeting is in, before EHLO (send/spread.py: a server slow to
        # greet gets its other connections opened meanwhile); it must not raise.
        self.on_greeting: Callable[[], None] | None = None

        self.channel = Channel(self)  # the socket, once connected
        self._transactions = Transactions(self)

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
            resolve(self)
            connect(self)
            if self.mode is TlsMode.IMPLICIT:
                with self.phase(PHASE_TLS) as facts:
                    handshake(self, facts)
            read_greeting(self)
            if self.on_greeting is not None:
                self.on_greeting()
            ehlo(self, PHASE_EHLO)
            starttls(self)
            if authenticate:
                auth.authenticate(self, oauth.authenticate_oauth)
        except BaseException:
            self.abort()
            raise

    @contextmanager
    def phase(self, name: str) -> Iterator[dict[str, Any]]:
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

    # -- transactions (transaction.py) -------------------------------------------------

    def mail(
        self,
        mail_from: str,
        *,
        size: int | None = None,
        smtputf8: bool = False,
        eight_bit: bool = False,
    ) -> Reply:
        """MAIL FROM (see :meth:`Transactions.mail`)."""
        return self._transactions.mail(mail_from, size=size, smtputf8=smtputf8, eight_bit=eight_bit)

    def rcpt(self, address: str) -> Reply:
        return self._transactions.rcpt(address)

    def data(self, data: bytes | bytearray | memoryview | BinaryIO) -> Reply:
        """DATA and the content (see :meth:`Transactions.data`)."""
        return self._transactions.data(data)

    def send(
        self,
        mail_from: str,
        recipients: Sequence[str],
        data: bytes | bytearray | memoryview | BinaryIO,
        *,
        smtputf8: bool = False,
        eight_bit: bool = False,
    ) -> SendResult:
        """One transaction (see :meth:`Transactions.send`)."""
        return self._transactions.send(
            mail_from, recipients, data, smtputf8=smtputf8, eight_bit=eight_bit
        )

    def transaction(
        self,
        mail_from: str,
        recipients: Sequence[str],
        data: bytes | bytearray | memoryview | BinaryIO,
        *,
        smtputf8: bool = False,
        eight_bit: bool = False,
    ) -> Transaction | SendResult:
        """A transaction prepared, no I/O (see :meth:`Transactions.transaction`)."""
        return self._transactions.transaction(
            mail_from, recipients, data, smtputf8=smtputf8, eight_bit=eight_bit
        )

    def run(
        self,
        tx: Transaction,
        then: Transaction | None = None,
        meanwhile: Callable[[], None] | None = None,
    ) -> SendResult:
        """Send ``tx``, ``then``'s commands behind its data (see :meth:`Transactions.run`)."""
        return self._transactions.run(tx, then, meanwhile)

    def reset(self) -> None:
        """RSET (see :meth:`Transactions.reset`)."""
        self._transactions.reset()

    def noop(self) -> Reply:
        return self._transactions.noop()

    # -- close ------------------------------------------------------------------------

    def close(self, *, await_reply: bool = True) -> None:
        """QUIT (errors swallowed) and close the socket.  ``await_reply=False`` closes
        right after writing QUIT, as Postfix's client does (``smtp_skip_quit_response
        = yes``): every transaction is over, the 221 tells nothing more, and waiting
        for it costs a round trip at the end of every run."""
        if self.closed or self.channel.sock is None:
            self.abort()
            return
        try:
            timeout = min(self.command_timeout, QUIT_TIMEOUT)
            self.write(b"QUIT\r\n", PHASE_QUIT, timeout)
            if await_reply:
                self.channel.read_reply(PHASE_QUIT, timeout, "QUIT")
        except SmtpError as exc:
            log.debug("%s: QUIT: %s", self.where, exc)
        finally:
            self.abort()

    def abort(self) -> None:
        """Close the socket at once, without QUIT (e.g. on SIGTERM or a deadline)."""
        self.closed = True
        self.channel.close()

    def interrupt(self) -> None:
        """From another thread: make a read or write blocked on this session fail at
        once (shutdown(2) wakes it, close() would not).  The thread that owns the
        session then sees a lost connection and cleans up; nothing else changes
        here.  The plain socket's shutdown, also under TLS: SSLSocket.shutdown
        would drop the TLS object under the reading thread's feet."""
        sock = self.channel.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    # -- conversation steps (the Conversation protocol, for the phase modules) ---------

    def require_open(self) -> None:
        if self.closed or self.channel.sock is None:
            raise SmtpConnectError(
                f"{self.where}: the session is closed",
                host=self.endpoint.host,
                port=self.endpoint.port,
                phase=PHASE_MAIL,
            )

    def command(self, line: str, phase: str) -> Reply:
        log.debug("%s C: %s", self.where, line)
        self.write(line.encode("utf-8") + CRLF, phase, self.command_timeout)
        return self.reply(phase)

    def reply(self, phase: str, timeout: float | None = None) -> Reply:
        reply = self.channel.read_reply(
            phase, self.command_timeout if timeout is None else timeout, phase
        )
        if reply.closing:
            # RFC 5321 §3.8: 421 = service closing; the session is over.
            self.abort()
            raise self.reply_error(phase, "the server is closing the connection", reply)
        return reply

    def reply_error(self, phase: str, what: str, reply: Reply) -> SmtpError:
        return SmtpReplyError(
            f"{self.where}: {phase}: {what}: {reply.one_line}",
            host=self.endpoint.host,
            port=self.endpoint.port,
            phase=phase,
            code=reply.code,
            enhanced=reply.enhanced,
            text=reply.text,
        )

    def write(self, data: bytes, phase: str, timeout: float, *, abort: bool = True) -> None:
        """Every write of the session goes through here (tests count them)."""
        self.channel.write(data, phase, timeout, abort=abort)
