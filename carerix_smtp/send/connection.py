"""One SMTP connection to one server for a send run: ``Connection`` turns a
message into an ``Attempt`` (chaining the next message's commands behind its data,
RFC 2920), reopening the session at most ``max_reconnects`` times; the default
session factory and password source.  It never touches the spool.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from carerix_smtp.errors import (
    DkimSignError,
    MessageError,
    SmtpAuthError,
    SmtpError,
    SmtpPolicyError,
    SmtpReplyError,
)
from carerix_smtp.send.outcome import DEFERRED, FAILED, Attempt, classify, everyone
from carerix_smtp.send.report import DEFAULT_MAX_RECONNECTS
from carerix_smtp.smtp.transaction import SendResult, Transaction  # (used per message)
from carerix_smtp.smtp.wire import PREPARED_MAX, prepare
from carerix_smtp.spool.records import RecipientResult

if TYPE_CHECKING:
    from carerix_smtp.config.file import Config, ServerEntry
    from carerix_smtp.config.oauth import Credential
    from carerix_smtp.send.signing import Signer
    from carerix_smtp.smtp.session import SmtpSession
    from carerix_smtp.spool.message import Message

# The credential is a password, or an OAuth2 token source shared by the run's
# connections to that server (config/oauth.py).
SessionFactory = Callable[["ServerEntry", "Credential | None"], "SmtpSession"]
PasswordSource = Callable[["ServerEntry"], "Credential | None"]


# Messages' data in wire form (smtp.wire.Prepared), built by ``Connection.prepare``
# while the dispatcher reads ahead -- when a connection waits for a reply -- and
# taken when the message is sent, on whichever connection of its server.
_PREPARED: weakref.WeakKeyDictionary[Message, Any] = weakref.WeakKeyDictionary()
_PREPARED_LOCK = threading.Lock()


class ServerUnusable(Exception):
    """This server cannot be used for the rest of the run (reason in args[0])."""


class Connection:
    """One SMTP session to one server, reopened at most ``max_reconnects`` times.

    ``deliver`` turns a message into an ``Attempt``; it never touches the spool.
    """

    def __init__(
        self,
        entry: ServerEntry,
        password: Credential | None,
        factory: SessionFactory,
        *,
        max_reconnects: int = DEFAULT_MAX_RECONNECTS,
        signer: Signer | None = None,
    ) -> None:
        self.entry = entry
        self.signer = signer  # DKIM (send/signing.py); None: nothing is signed
        self._password = password
        self._factory = factory
        self.max_reconnects = max_reconnects
        self.session: SmtpSession | None = None
        self.opened = 0
        self.unusable: str | None = None  # why this server is done for this run
        self.failure: SmtpError | None = None  # why the last open failed (cron output)
        self.consecutive_deferrals = 0
        # The next message's commands, written behind the last one's data (RFC 2920):
        # the session is in the middle of that transaction until it is delivered.
        self.chained: Transaction | None = None
        self.chained_for: Message | None = None
        self.on_greeting: Callable[[], None] | None = None  # given to the next session

    def __repr__(self) -> str:  # never the password
        return f"<Connection {self.entry.name} opened={self.opened}>"

    def ensure_open(self) -> SmtpSession:
        """The open session; opens (or reopens) it.  Raises SmtpAuthError and
        SmtpPolicyError as they are, ServerUnusable for anything else that makes the
        server unusable now (unreachable, TLS failure, too many reconnects)."""
        if self.unusable:
            raise ServerUnusable(self.unusable)
        if self.session is not None and not self.session.closed:
            return self.session
        if self.opened > self.max_reconnects:
            self.unusable = (
                f"server {self.entry.name}: connection lost {self.opened} times; "
                "the rest is left for the next run"
            )
            raise ServerUnusable(self.unusable)
        self.opened += 1
        session = self._factory(self.entry, self._password)
        session.on_greeting = self.on_greeting
        try:
            session.open()
        except (SmtpAuthError, SmtpPolicyError) as exc:
            self.failure = exc
            raise  # the run stops: a wrong password or an unsafe setup is not temporary
        except SmtpError as exc:
            self.failure = exc
            self.unusable = f"server {self.entry.name}: {exc}"
            raise ServerUnusable(self.unusable) from None
        self.session = session
        return session

    def refusal(
        self, session: SmtpSession, message: Message, recipients: Sequence[str], now: float
    ) -> Attempt | None:
        """What this server cannot take, told before MAIL (SIZE, SMTPUTF8, 8BITMIME)."""
        limit = session.max_size
        if limit and message.size > limit:
            reason = (
                f"the message ({message.size} bytes) is larger than {session.where} "
                f"accepts (SIZE {limit}, RFC 1870)"
            )
            return everyone(recipients, FAILED, RecipientResult(552, "5.3.4", reason, now))
        if message.needs_smtputf8 and not session.has_extension("SMTPUTF8"):
            reason = f"a non-ASCII address needs SMTPUTF8 (RFC 6531); {session.where} lacks it"
            return everyone(recipients, FAILED, RecipientResult(553, "5.6.7", reason, now))
        if message.needs_8bitmime and not session.has_extension("8BITMIME"):
            reason = f"8-bit content needs 8BITMIME (RFC 6152); {session.where} lacks it"
            return everyone(recipients, FAILED, RecipientResult(554, "5.6.3", reason, now))
        return None

    def _transaction(
        self, session: SmtpSession, message: Message, recipients: Sequence[str], data: Any
    ) -> Transaction | SendResult:
        smtputf8 = message.needs_smtputf8 or (
            message.header_utf8 and session.has_extension("SMTPUTF8")
        )
        return session.transaction(
            message.mail_from,
            recipients,
            data,
            smtputf8=smtputf8,
            eight_bit=message.needs_8bitmime,
        )

    def _next(
        self, session: SmtpSession, then: tuple[Message, Sequence[str]] | None, now: float
    ) -> Transaction | None:
        """The next message's transaction, to be written behind this one's data, if
        this server can take it.  A big message's file is opened now and stays open
        while the transaction waits (closed by ``_close_data``)."""
        if then is None:
            return None
        message, recipients = then
        if self.refusal(session, message, recipients, now) is not None:
            return None
        try:
            data = self._data(message)
        except (DkimSignError, OSError):
            return None
        try:
            tx = self._transaction(session, message, recipients, data)
        except (MessageError, OSError):
            tx = None
        if isinstance(tx, Transaction):
            return tx
        if not isinstance(data, bytes):
            data.close()
        return None

    def deliver(
        self,
        message: Message,
        recipients: Sequence[str],
        now: Callable[[], float],
        then: tuple[Message, Sequence[str]] | None = None,
        meanwhile: Callable[[], None] | None = None,
    ) -> Attempt:
        """Send ``message`` to ``recipients`` on the open session; with ``then`` (the
        next message for this connection and its recipients) that one's commands go
        out behind this one's data (see SmtpSession.run)."""
        if self.chained is not None and self.chained_for is not message:
            self.abandon()  # chained for another message: the session is mid-transaction
        session = self.ensure_open()
        chained, self.chained, self.chained_for = self.chained, None, None
        if chained is not None and chained.session is not session:
            _close_data(chained)  # written on a session that is gone: start afresh
            chained = None
        refusal = self.refusal(session, message, recipients, now())
        if refusal is not None:
            if chained is not None:
                _close_data(chained)
                self._drop()  # its commands are on the wire: the session is mid-transaction
            return refusal
        try:
            result = self._send(session, message, recipients, chained, now, then, meanwhile)
        except MessageError as exc:
            return everyone(recipients, FAILED, RecipientResult(None, None, str(exc), now()))
        except DkimSignError as exc:  # never sent unsigned: deferred, the key may be fixed
            why = RecipientResult(None, None, str(exc), now())
            return everyone(recipients, DEFERRED, why, error=str(exc), local=True)
        except SmtpReplyError as exc:  # 421 and the like: the session is over
            self._drop()
            reply = RecipientResult(exc.code, exc.enhanced, exc.text or str(exc), now())
            permanent = exc.permanent and exc.phase not in ("rset", "quit")
            outcome = FAILED if permanent else DEFERRED
            return everyone(recipients, outcome, reply, connection_lost=True, error=str(exc))
        except SmtpError as exc:  # lost connection, timeout
            self._drop()
            unknown = exc.phase == "data-end"
            reply = RecipientResult(exc.code, exc.enhanced, str(exc), now())
            return everyone(
                recipients, DEFERRED, reply, connection_lost=True, unknown=unknown, error=str(exc)
            )
        except OSError as exc:  # the message file went away under us
            return everyone(
                recipients, DEFERRED, RecipientResult(None, None, f"cannot read: {exc}", now())
            )
        return classify(result, recipients, now())

    def _send(
        self,
        session: SmtpSession,
        message: Message,
        recipients: Sequence[str],
        chained: Transaction | None,
        now: Callable[[], float],
        then: tuple[Message, Sequence[str]] | None,
        meanwhile: Callable[[], None] | None,
    ) -> SendResult:
        """``message``'s transaction (``chained``: written already) on the wire, and
        the next one's behind its data when it can go there (kept in ``chained``)."""
        if chained is not None:
            tx: Transaction | SendResult = chained
        else:
            # A small message is in memory already (message.SMALL_FILE); a big
            # one is streamed from its file.
            tx = self._transaction(session, message, recipients, self._data(message))
        following: Transaction | None = None
        kept = False
        try:
            if isinstance(tx, SendResult):
                result = tx
            else:
                following = self._next(session, then, now())
                result = session.run(tx, then=following, meanwhile=meanwhile)
                if following is not None and following.session is session and then:
                    self.chained, self.chained_for = following, then[0]
                    kept = True
        finally:
            if isinstance(tx, Transaction):
                _close_data(tx)
            if following is not None and not kept:
                _close_data(following)
        return result

    def prepare(self, message: Message) -> None:
        """Build ``message``'s data in wire form now, off the path between a reply
        and the next data (CRLF line endings and SIZE=, dot-stuffing unless the
        server takes BDAT): called as the message is read ahead.  Not for a message
        to be DKIM-signed or bigger than smtp.wire.PREPARED_MAX (streamed), nor
        when its file cannot be read now (sending it will say why)."""
        if self.signer is not None or message.size > PREPARED_MAX:
            return
        session = self.session
        chunking = session is not None and session.has_extension("CHUNKING")
        try:
            data = message.transmitted()
        except OSError:
            return
        prepared = prepare(data, stuff=not chunking)
        with _PREPARED_LOCK:
            _PREPARED[message] = prepared

    def _data(self, message: Message) -> Any:
        """The message as sent: DKIM-signed when its From domain has a key (raises
        DkimSignError); prepared ahead (``prepare``), else bytes when in memory, else
        a stream from its file."""
        if self.signer is not None:
            return self.signer.data(message)
        with _PREPARED_LOCK:
            prepared = _PREPARED.pop(message, None)
        if prepared is not None:
            return prepared
        return message.transmitted() if message.raw is not None else message.open_data()

    def unchain(self, message: Message) -> None:
        """``message`` was chained but will not be sent now: the session is in the
        middle of its transaction, so it is dropped without QUIT."""
        if self.chained_for is message:
            self.abandon()

    def _discard_chain(self) -> Transaction | None:
        chained, self.chained, self.chained_for = self.chained, None, None
        if chained is not None:
            _close_data(chained)
        return chained

    def abandon(self) -> None:
        """Drop the socket without QUIT (interrupted mid-transaction: a QUIT now would
        be taken as message content)."""
        session, self.session = self.session, None
        self._discard_chain()
        if session is not None:
            session.abort()

    def _drop(self) -> None:
        session, self.session = self.session, None
        chained = self._discard_chain()
        if session is not None:
            if chained is not None and chained.session is session:
                session.abort()  # mid-transaction: a QUIT would be taken as its data
            else:
                session.close(await_reply=False)

    def close(self) -> None:
        """QUIT, not waiting for its reply (as Postfix's client); errors are swallowed
        (data already accepted stays accepted)."""
        self._drop()


def _close_data(tx: Transaction) -> None:
    """Close a transaction's message file (a big message is streamed from it)."""
    if not isinstance(tx.data, bytes | bytearray | memoryview):
        tx.data.close()


def default_session_factory(config: Config, *, local_hostname: str | None = None) -> SessionFactory:
    from carerix_smtp.config.helo import helo_name_for
    from carerix_smtp.smtp.resolve import make_resolver
    from carerix_smtp.smtp.session import SmtpSession

    resolver = make_resolver(config.settings.nameservers)

    def factory(entry: ServerEntry, password: Credential | None) -> SmtpSession:
        # The EHLO name: the caller's > the entry's > the global setting (issue 14).
        helo = helo_name_for(entry, config.settings, local_hostname)
        return SmtpSession(entry, password, resolver=resolver, local_hostname=helo)

    return factory


def default_password_source(entry: ServerEntry, config: Config | None = None) -> Credential | None:
    """The entry's OAuth2 token source when it has an oauth_token_command; else the
    password: env, password_command, keyring, then the credentials file beside ``config``."""
    from carerix_smtp.config.credentials import credentials_path
    from carerix_smtp.config.oauth import credential_for

    credentials = credentials_path(config.path) if config is not None else None
    return credential_for(entry, credentials=credentials)
