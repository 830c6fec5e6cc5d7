"""Mail transactions on an open session: MAIL (SIZE=, 8BITMIME, SMTPUTF8), RCPT,
DATA and the content -- or BDAT (RFC 3030) when the server offers CHUNKING, which
saves the 354 round trip -- with PIPELINING (RFC 2920) of the commands and the
next message's commands chained behind the data; refusals as :class:`SendResult`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from carerix_smtp.errors import MessageError
from carerix_smtp.smtp.content import Content, Resetting
from carerix_smtp.smtp.conversation import Conversation
from carerix_smtp.smtp.phases import (
    PHASE_DATA,
    PHASE_DATA_END,
    PHASE_MAIL,
    PHASE_RCPT,
    PHASE_RSET,
)
from carerix_smtp.smtp.wire import Reply, command_bytes, message_size

log = logging.getLogger(__name__)

PIPELINE_WINDOW = 100  # commands written before their replies are read (RFC 2920 §3.1)


@dataclass(frozen=True)
class SendResult:
    """What the server said to one transaction.

    ``data_reply`` is None when MAIL was refused or no recipient was accepted (the
    session was RSET); otherwise the reply after the final "." (or to BDAT ... LAST)
    — or the refusal of the DATA command itself or of a BDAT chunk.
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
    session: Conversation | None = None
    chunking: bool = False  # the data goes in BDAT chunks (RFC 3030), no DATA command

    def commands(self) -> list[tuple[str, str]]:
        """The commands written before the data: with BDAT, no DATA."""
        commands = [
            (self.mail_line, PHASE_MAIL),
            *((f"RCPT TO:<{clean}>", PHASE_RCPT) for clean in self.rcpts.values()),
        ]
        if not self.chunking:
            commands.append(("DATA", PHASE_DATA))
        return commands


class Transacting(Resetting, Protocol):
    """A :class:`Conversation` that also offers the transactions.  The session
    forwards them to :class:`Transactions`, which calls back through the session
    (so that a wrapper of ``SmtpSession.run`` sees every transaction)."""

    def transaction(
        self,
        mail_from: str,
        recipients: Sequence[str],
        data: bytes | bytearray | memoryview | BinaryIO,
        *,
        smtputf8: bool = False,
        eight_bit: bool = False,
    ) -> Transaction | SendResult: ...

    def run(
        self,
        tx: Transaction,
        then: Transaction | None = None,
        meanwhile: Callable[[], None] | None = None,
    ) -> SendResult: ...


class Transactions:
    """The transaction side of ``session`` (whose public methods forward here).
    Commands and replies go through the session, which closes itself on a 421 or
    a lost connection."""

    def __init__(self, session: Transacting) -> None:
        self.session = session
        self.content = Content(session)

    def mail(
        self,
        mail_from: str,
        *,
        size: int | None = None,
        smtputf8: bool = False,
        eight_bit: bool = False,
    ) -> Reply:
        """MAIL FROM with SIZE=/BODY=8BITMIME/SMTPUTF8 where offered.  421 raises."""
        return self.session.command(
            self._mail_line(mail_from, size, smtputf8, eight_bit), PHASE_MAIL
        )

    def rcpt(self, address: str) -> Reply:
        return self.session.command(f"RCPT TO:<{_check_address(address)}>", PHASE_RCPT)

    def data(self, data: bytes | bytearray | memoryview | BinaryIO) -> Reply:
        """DATA, the content, the final reply.  Returns the refusal of DATA if not 354."""
        reply = self.session.command("DATA", PHASE_DATA)
        if reply.code != 354:
            return reply
        return self.content.data(data)

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
        self.session.require_open()
        tx = self.session.transaction(
            mail_from, recipients, data, smtputf8=smtputf8, eight_bit=eight_bit
        )
        if isinstance(tx, SendResult):
            return tx
        return self.session.run(tx)

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
        if smtputf8 and not self.session.has_extension("SMTPUTF8"):
            # RFC 6531 §3.4: without the extension the message cannot be sent as it is.
            refusal = Reply(
                553,
                "5.6.7",
                f"{self.session.where} does not offer SMTPUTF8, needed for this message",
                local=True,
            )
            return SendResult(refusal, {}, None)
        size = None
        if self.session.has_extension("SIZE"):
            if isinstance(data, bytes | bytearray | memoryview):
                size = message_size(data)
            else:
                start = data.tell()
                size = message_size(data)
                data.seek(start)
        return Transaction(
            self._mail_line(mail_from, size, smtputf8, eight_bit),
            rcpts,
            data,
            chunking=self.session.has_extension("CHUNKING"),
        )

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
        self.session.require_open()
        if self.session.has_extension("PIPELINING"):
            return self._send_pipelined(tx, then, meanwhile)
        # (nothing was chained on this session: that needs PIPELINING)
        mail_reply = self.session.command(tx.mail_line, PHASE_MAIL)
        if not mail_reply.ok:
            self.session.reset()
            return SendResult(mail_reply, {}, None)
        rcpt_replies = {
            r: self.session.command(f"RCPT TO:<{clean}>", PHASE_RCPT)
            for r, clean in tx.rcpts.items()
        }
        if not any(reply.ok for reply in rcpt_replies.values()):
            self.session.reset()
            return SendResult(mail_reply, rcpt_replies, None)
        if tx.chunking:
            return SendResult(mail_reply, rcpt_replies, self.content.bdat(tx.data, None, meanwhile))
        data_cmd = self.session.command("DATA", PHASE_DATA)
        if data_cmd.code != 354:
            self.session.reset()
            return SendResult(mail_reply, rcpt_replies, data_cmd)
        return SendResult(mail_reply, rcpt_replies, self.content.data(tx.data, b"", meanwhile))

    def _send_pipelined(
        self, tx: Transaction, then: Transaction | None, meanwhile: Callable[[], None] | None
    ) -> SendResult:
        """RFC 2920: MAIL, the RCPTs and DATA in one write, then the replies in order.

        At most PIPELINE_WINDOW commands are in flight, so that a long recipient list
        cannot fill both socket buffers and deadlock (RFC 2920 §3.1)."""
        commands = tx.commands()
        replies: list[Reply] = []
        if tx.session is self.session:  # written behind the previous message's data
            replies.extend(self.session.reply(phase) for _, phase in commands)
        else:
            for start in range(0, len(commands), PIPELINE_WINDOW):
                window = commands[start : start + PIPELINE_WINDOW]
                self.session.write(
                    command_bytes(self._where, window),
                    window[0][1],
                    self.session.command_timeout,
                )
                replies.extend(self.session.reply(phase) for _, phase in window)
        tx.session = self.session
        mail_reply = replies[0]
        if tx.chunking:  # no DATA command: BDAT after the replies (RFC 3030 §4.2)
            replies.append(Reply(354, None, "BDAT", local=True))
        data_cmd = replies[-1]
        rcpt_replies = dict(zip(tx.rcpts, replies[1:-1], strict=True))
        accepted = mail_reply.ok and any(reply.ok for reply in rcpt_replies.values())
        if data_cmd.code == 354 and not accepted and not tx.chunking:
            # A server that should have refused DATA (RFC 2920 §3.1): end it empty.
            self.session.write(b".\r\n", PHASE_DATA, self.session.command_timeout)
            self.session.reply(PHASE_DATA_END, self.session.data_timeout)
            data_cmd = Reply(554, "5.5.1", "no valid recipients", local=True)
        if not accepted:
            self.session.reset()
            return SendResult(mail_reply, rcpt_replies, None)
        if data_cmd.code != 354:
            self.session.reset()
            return SendResult(mail_reply, rcpt_replies, data_cmd)
        chained = b""
        if then is not None and then.session is None:
            window = then.commands()
            if len(window) <= PIPELINE_WINDOW:
                chained = command_bytes(self._where, window)
        if tx.chunking:
            pair = (then, chained) if chained and then is not None else None
            data_reply = self.content.bdat(tx.data, pair, meanwhile)
        else:
            if chained and then is not None:
                then.session = self.session
            data_reply = self.content.data(tx.data, chained, meanwhile)
        return SendResult(mail_reply, rcpt_replies, data_reply)

    def _where(self) -> str:
        return self.session.where

    def _mail_line(self, mail_from: str, size: int | None, smtputf8: bool, eight_bit: bool) -> str:
        params = []
        if size is not None and self.session.has_extension("SIZE"):
            params.append(f"SIZE={size}")  # RFC 1870
        if (eight_bit or smtputf8) and self.session.has_extension("8BITMIME"):
            params.append("BODY=8BITMIME")  # RFC 6152
        if smtputf8 and self.session.has_extension("SMTPUTF8"):
            params.append("SMTPUTF8")  # RFC 6531
        line = f"MAIL FROM:<{_check_address(mail_from)}>"
        return " ".join([line, *params])

    def reset(self) -> None:
        """RSET (RFC 5321 §4.1.1.5); a refused RSET closes the session."""
        self.session.require_open()
        reply = self.session.command("RSET", PHASE_RSET)
        if not reply.ok:
            self.session.abort()
            raise self.session.reply_error(PHASE_RSET, "RSET refused", reply)

    def noop(self) -> Reply:
        return self.session.command("NOOP", "noop")


_UNSAFE = re.compile("[\r\n\0<>]")


def _check_address(address: str) -> str:
    """Refuse what would break the command line (SMTP command injection)."""
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    if _UNSAFE.search(address):
        raise MessageError(f"invalid address {address!r}: contains a line break or angle bracket")
    return address
