"""One SMTP connection of the sink: aiosmtpd's SMTP protocol plus latency, the
faults at the greeting and at DATA, drop/hang, enhanced status codes, and the
connection accounting (limit, open count).

DATA
    The content after the 354 is read in blocks up to the terminator (sink/data.py)
    rather than aiosmtpd's line at a time; replies, limits and events are aiosmtpd's.

CHUNKING (``chunking``, RFC 3030)
    BDAT chunks are read by their byte count, with no terminator to look for:
    the end of data is the last chunk's last byte.  Refusals (no recipient,
    too big) come after the chunk's bytes were read, so the session stays in step.

Latency
    ``latency_ms`` delays every reply (greeting, EHLO, MAIL, RCPT, DATA, end of
    data, AUTH…) until that long after the latest data the client sent before
    it, like a network round trip: a client that waits for each reply pays it
    once per command, pipelined commands share one delay.  The reply leaves when
    due to within about 0.1 ms (sink/alarm.py; asyncio's timers round up to 1 ms).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, AnyStr

from aiosmtpd.smtp import MISSING, SMTP

from carerix_smtp.sink.data import read_data
from carerix_smtp.sink.faults import DROP, HANG

if TYPE_CHECKING:
    from carerix_smtp.sink.alarm import Alarm
    from carerix_smtp.sink.config import SinkConfig
    from carerix_smtp.sink.faults import FaultScript

log = logging.getLogger(__name__)

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


def format_peer(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return str(peer)


class SinkSMTP(SMTP):
    """One connection: aiosmtpd's SMTP plus latency, faults and accounting.

    ``handler`` holds aiosmtpd's hooks (a :class:`~carerix_smtp.sink.handler.SinkHandler`;
    aiosmtpd finds them by name).  The server counts the connection through
    ``on_open`` (False: over the connection limit) and ``on_close``.
    """

    def __init__(
        self,
        handler: object,
        *,
        config: SinkConfig,
        faults: FaultScript,
        on_open: Callable[[SinkSMTP], bool],
        on_close: Callable[[SinkSMTP], None],
        alarm: Alarm | None = None,
        **kwargs: Any,
    ) -> None:
        # aiosmtpd keeps this dict on the class and grows it on every EHLO; give each
        # connection its own so sinks in other threads do not share it.
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)
        super().__init__(handler, **kwargs)
        self._config = config
        self._faults = faults
        self._on_open = on_open
        self._on_close = on_close
        self._alarm = alarm  # latency to within ~0.1 ms (asyncio's timers: 1 ms)
        self._greeted = False
        self._counted = False
        self._uncounted = False
        self._over_limit = False
        self._close_after_reply = False
        self._last_arrival = self.loop.time()
        self._chunks = bytearray()  # BDAT data received so far in this transaction
        self._chunks_refused: str | None = None  # a refused chunk: the rest is discarded

    @property
    def encrypted(self) -> bool:
        transport = self.transport
        return transport is not None and transport.get_extra_info("ssl_object") is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._counted:  # not again for the TLS layer after STARTTLS
            self._counted = True
            self._last_arrival = self.loop.time()
            self._over_limit = not self._on_open(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._counted and not self._uncounted:
            self._uncounted = True
            self._on_close(self)
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
                fault = self._faults.fault("connect")
                if fault is not None:
                    status = fault  # type: ignore[assignment]
                    self._close_after_reply = True  # RFC 5321 §3.1: no session after refusal
        if status == DROP:
            log.debug("%s: dropping the connection (scripted)", self._peer)
            self._close()
            return
        if status == HANG:
            log.debug("%s: hanging (scripted)", self._peer)
            await self._hang()
            return
        if isinstance(status, str):
            status = _REWRITES.get(status, status)
        latency = self._config.latency_ms / 1000.0
        if latency:
            due = self._last_arrival + latency
            if due > self.loop.time():
                if self._alarm is not None:
                    await self._alarm.sleep_until(due)
                else:
                    await asyncio.sleep(due - self.loop.time())
        if self.transport is None or self.transport.is_closing():
            return
        await super().push(status)
        line = status if isinstance(status, str) else status.decode("ascii", "replace")
        if self._close_after_reply or line.startswith("421 "):  # RFC 5321 §3.8
            self._close()

    @property
    def _peer(self) -> str:
        return format_peer(self.session.peer if self.session else None)

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
            fault = self._faults.fault("data")
            if fault is not None:
                await self.push(fault)
                return
        if self._decode_data:  # not the sink's (decode_data=False): aiosmtpd's own
            await super().smtp_DATA(arg)
            return
        await self._data(arg)

    async def _data(self, arg: str) -> None:
        """aiosmtpd 1.4's smtp_DATA with the content read in blocks (sink/data.py):
        the same checks, replies and post-DATA state; ``handle_DATA`` at the end."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        envelope = self.envelope
        assert envelope is not None
        if not envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            read = await read_data(
                self._reader, size_limit=self.data_size_limit, line_limit=self.line_length_limit
            )
        except asyncio.CancelledError:  # the connection ended (aiosmtpd's eof_received)
            log.info("Connection lost during DATA")
            self._writer.close()
            raise
        except asyncio.IncompleteReadError:
            self._close()  # the stream ended before the terminator: no message
            return
        if read.refusal is not None:
            self.envelope = self._create_envelope()  # aiosmtpd's post-DATA state
            await self.push(read.refusal.value)
            return
        envelope.content = envelope.original_content = read.content
        status = await self._call_handler_hook("DATA") if "DATA" in self._handle_hooks else None
        self.envelope = self._create_envelope()
        await self.push("250 OK" if status is None or status is MISSING else status)

    async def smtp_BDAT(self, arg: str) -> None:
        """RFC 3030 §2: ``BDAT <size> [LAST]``; the chunk's bytes follow the command."""
        words = (arg or "").split()
        if not self._config.chunking:
            await self.push('500 Error: command "BDAT" not recognized')
            return
        if (
            not words
            or not words[0].isdigit()
            or len(words) > 2
            or (len(words) == 2 and words[1].upper() != "LAST")
        ):
            # The size is unknown: the session cannot stay in step (RFC 3030 §2).
            await self.push("501 5.5.4 Syntax: BDAT <size> [LAST]")
            self._close()
            return
        size, last = int(words[0]), len(words) == 2
        try:
            chunk = await self._reader.readexactly(size)
        except asyncio.IncompleteReadError:
            self._close()  # the connection ended mid-chunk: no message
            return
        envelope = self.envelope
        refusal = self._chunks_refused
        if refusal is None and (envelope is None or not envelope.rcpt_tos):
            refusal = "503 5.5.1 Error: need RCPT command"
        limit = self.data_size_limit
        if refusal is None and limit and len(self._chunks) + size > limit:
            refusal = "552 5.3.4 Message size exceeds fixed maximum message size"
        if refusal is not None:
            self._chunks.clear()
            self._chunks_refused = None if last else refusal
            if last:
                self.envelope = self._create_envelope()  # aiosmtpd's post-DATA state
            await self.push(refusal)
            return
        self._chunks += chunk
        if not last:
            await self.push(f"250 2.0.0 {size} octets received")
            return
        data, self._chunks = bytes(self._chunks), bytearray()
        assert envelope is not None
        envelope.content = envelope.original_content = data
        status = await self._call_handler_hook("DATA")
        self.envelope = self._create_envelope()  # aiosmtpd's post-DATA state
        await self.push(status)

    async def smtp_RSET(self, arg: str) -> None:
        self._chunks.clear()
        self._chunks_refused = None
        await super().smtp_RSET(arg)
