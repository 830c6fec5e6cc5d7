"""The content after DATA's 354, read in blocks: up to the line holding only "."
(RFC 5321 §4.1.1.4), dot-unstuffed (§4.5.2) on the whole message at once.

aiosmtpd reads it a line at a time (``readuntil(b"\\r\\n")``, about 2,000 awaits for
160 KB); this reads what has arrived up to the terminator ``<CRLF>.<CRLF>`` and
never past it, so commands pipelined behind the data stay in the stream.  The
result is what aiosmtpd 1.4 makes of the same bytes: lines end at CRLF only (a
bare LF or CR is kept as is), a leading "." is taken off every line, a line
longer than ``line_limit`` with its CRLF (aiosmtpd: 1001) refuses the message
with 500, data longer than ``size_limit`` (counted before unstuffing) with 552;
both only after the terminator was read, so the session stays in step, and the
bytes of a refused message are not kept.  Of the two, the refusal found in the
earlier block wins (aiosmtpd: the earlier line).
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass

TERMINATOR = b"\r\n.\r\n"
# The proper prefixes of TERMINATOR, longest first: what a block may end with when
# the terminator begins in it and ends in the next one.
_PREFIXES = tuple(TERMINATOR[:k] for k in range(len(TERMINATOR) - 1, 0, -1))


class Refusal(enum.Enum):
    LINE_TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"  # aiosmtpd's replies
    TOO_MUCH_DATA = "552 Error: Too much mail data"


@dataclass(frozen=True)
class DataRead:
    """The data of one DATA command: ``content`` unstuffed, or why it was refused."""

    content: bytes
    refusal: Refusal | None = None


def open_terminator(read: bytes | bytearray) -> int:
    """How many bytes at the end of ``read`` begin a terminator (0 to 4)."""
    for prefix in _PREFIXES:
        if read.endswith(prefix):
            return len(prefix)
    return 0


def unstuff(stuffed: bytes) -> bytes:
    """RFC 5321 §4.5.2: the first "." of every line taken off (lines end at CRLF)."""
    if stuffed.startswith(b"."):
        stuffed = stuffed[1:]
    return stuffed.replace(b"\r\n.", b"\r\n")  # (no copy when there is none)


async def read_data(
    reader: asyncio.StreamReader, *, size_limit: int | None, line_limit: int
) -> DataRead:
    """Read up to and with the terminator.  Raises ``asyncio.IncompleteReadError``
    when the stream ends first."""
    # raw: the stuffed data read so far behind a CRLF that stands for the end of the
    # 354 line, so that a lone "." as the first line is found like any other.
    raw = bytearray(b"\r\n")
    line_start = 0  # where in raw the line not yet ended begins
    total = 0  # bytes read
    refusal: Refusal | None = None
    while not raw.endswith(TERMINATOR):
        begun = open_terminator(raw)
        if begun:  # the terminator may end in the next few bytes: read only those
            block = await reader.readexactly(len(TERMINATOR) - begun)
        else:
            try:
                block = await reader.readuntil(TERMINATOR)
            except asyncio.LimitOverrunError as exc:
                # More than the reader's limit before a terminator: take what
                # surely holds no terminator's end (the whole block, but for its
                # last 4 bytes, or up to the terminator found).
                block = await reader.readexactly(exc.consumed)
        total += len(block)
        raw += block
        if refusal is None:
            line_start, too_long = scan_lines(raw, line_start, line_limit)
            if too_long:
                refusal = Refusal.LINE_TOO_LONG
            elif size_limit and total - 3 > size_limit:  # at least this much data
                refusal = Refusal.TOO_MUCH_DATA
        if refusal is not None:
            del raw[: -len(TERMINATOR)]  # keep no more than the end may need
    if refusal is not None:
        return DataRead(b"", refusal)
    del raw[-3:]  # the ".\r\n" line
    return DataRead(unstuff(bytes(memoryview(raw)[2:])))


def scan_lines(raw: bytes | bytearray, start: int, limit: int) -> tuple[int, bool]:
    """Check the lines of ``raw`` from the one beginning at ``start`` on: (where the
    line not ended yet begins, whether a line is longer than ``limit`` with its CRLF).

    By leaps rather than line by line: a line beginning at ``start`` ends within
    ``limit`` bytes, so the last CRLF within that reach ends every line before it
    that is not too long, and the next line begins behind it."""
    while True:
        ended = raw.rfind(b"\r\n", start, start + limit)
        if ended < 0:  # too long, or not ended yet
            return start, len(raw) - start >= limit
        start = ended + 2
