"""A message's data on the wire, after its commands: the content after DATA's 354
(dot-stuffed, the final "."), or BDAT chunks (RFC 3030), with the next
transaction's commands in the last write; a server that answers early (552 too big)
and hangs up gives a refusal, not an error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import BinaryIO, Protocol

from carerix_smtp.errors import SmtpConnectError, SmtpError
from carerix_smtp.smtp.conversation import Conversation
from carerix_smtp.smtp.phases import PHASE_DATA, PHASE_DATA_END
from carerix_smtp.smtp.wire import Reply, bdat_chunks, wire_chunks

log = logging.getLogger(__name__)


class Resetting(Conversation, Protocol):
    """A :class:`Conversation` that can RSET (SmtpSession)."""

    def reset(self) -> None: ...


class Chained(Protocol):
    """The next transaction written behind this data (transaction.Transaction): it
    learns the session its commands went out on."""

    session: Conversation | None


class Content:
    """The data side of ``session``'s transactions (see transaction.Transactions)."""

    def __init__(self, session: Resetting) -> None:
        self.session = session

    def data(
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
            reply = self.write(pending, PHASE_DATA)
            if reply is not None:
                return reply
            pending = following
        # The last write holds the terminating "."; once it has started the server may
        # have the whole message: a loss from here on is "outcome unknown" (data-end).
        total += len(pending)
        reply = self.write(pending + chained if chained else pending, PHASE_DATA_END)
        if reply is not None:
            return reply
        if log.isEnabledFor(logging.DEBUG):  # (``where`` is formatted each time)
            log.debug("%s C: <%d bytes of message data>", self.session.where, total)
        if meanwhile is not None:
            meanwhile()
        # RFC 5321 §4.5.3.2.6: 10 minutes for the reply to the final ".".
        return self.session.reply(PHASE_DATA_END, self.session.data_timeout)

    def bdat(
        self,
        data: bytes | bytearray | memoryview | BinaryIO,
        chained: tuple[Chained, bytes] | None,
        meanwhile: Callable[[], None] | None = None,
    ) -> Reply:
        """The message in BDAT chunks (RFC 3030), the last one "BDAT <n> LAST", then
        the replies.  No dot-stuffing: a line with a lone "." is data like any other.
        ``chained`` (the next transaction and its commands) rides behind a one-chunk
        message only: after a refused chunk of a longer one the session is RSET,
        which must not come after commands of another transaction.  Chunks are
        pipelined when the server offers PIPELINING, else each reply is awaited
        (RFC 3030 §4.2: no more chunks after a refused one)."""
        pipelined = self.session.has_extension("PIPELINING")
        owed = 0  # replies to chunks written but not read yet
        total = 0
        for chunk, last in bdat_chunks(data):
            total += len(chunk)
            if last:
                break
            chained = None
            reply = self.write(b"BDAT %d\r\n" % len(chunk) + chunk, PHASE_DATA)
            if reply is not None:  # answered early and closed: the session is over
                return reply
            if pipelined:
                owed += 1
                continue
            reply = self.session.reply(PHASE_DATA, self.session.data_timeout)
            if not reply.ok:
                self.session.reset()  # the transaction is over (RFC 3030 §4.2)
                return reply
        out = b"BDAT %d LAST\r\n" % len(chunk) + chunk
        if chained is not None:
            chained[0].session = self.session
            out += chained[1]
        # Once the last chunk has started the server may have the whole message: a
        # loss from here on is "outcome unknown" (data-end).
        reply = self.write(out, PHASE_DATA_END)
        if reply is not None:
            return reply
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s C: <%d bytes of message data in BDAT>", self.session.where, total)
        if meanwhile is not None:
            meanwhile()
        refused: Reply | None = None
        for _ in range(owed):  # RFC 5321 §4.5.3.2.6: up to 10 minutes, as for "."
            reply = self.session.reply(PHASE_DATA_END, self.session.data_timeout)
            if refused is None and not reply.ok:
                refused = reply
        final = self.session.reply(PHASE_DATA_END, self.session.data_timeout)
        if refused is not None:
            self.session.reset()  # (nothing was chained behind a multi-chunk message)
            return refused
        return final

    def write(self, chunk: bytes, phase: str) -> Reply | None:
        """Write a data chunk.  When the write fails because the server answered early
        and hung up (e.g. 552 message too big), return that answer: a refusal is a
        result.  The session is closed then."""
        try:
            self.session.write(chunk, phase, self.session.command_timeout, abort=False)
        except SmtpConnectError:
            reply = self._salvage_reply()
            self.session.abort()
            if reply is None:
                raise
            if reply.closing:
                raise self.session.reply_error(
                    phase, "the server is closing the connection", reply
                ) from None
            return reply
        except SmtpError:
            self.session.abort()
            raise
        return None

    def _salvage_reply(self) -> Reply | None:
        try:
            return self.session.channel.read_reply(PHASE_DATA, 1.0, "a reply", abort=False)
        except SmtpError:
            return None
