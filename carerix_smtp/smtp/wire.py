"""SMTP on the wire, without a socket: replies parsed into :class:`Reply`, command
lines joined for one write, and message data as sent after DATA (CRLF line endings,
dot-stuffing, the terminating ".") or in BDAT chunks (CRLF line endings only), with
its size for ``SIZE=``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

log = logging.getLogger(__name__)

CRLF = b"\r\n"
CHUNK_SIZE = 1 << 20  # bytes normalised and written per sendall

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$)")


# --- replies -----------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One server reply.  ``text`` is the lines joined by newlines, enhanced codes removed."""

    code: int
    enhanced: str | None
    text: str
    local: bool = False  # made up by cxsmtp (never sent by the server)

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 400

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600

    @property
    def closing(self) -> bool:
        """421: the server is closing the connection (RFC 5321 §3.8)."""
        return self.code == 421

    @property
    def one_line(self) -> str:
        parts = [str(self.code)]
        if self.enhanced:
            parts.append(self.enhanced)
        if self.text:
            parts.append(" ".join(self.text.split("\n")))
        return " ".join(parts)

    def __str__(self) -> str:
        return self.one_line


# The usual one-line reply with an enhanced code, e.g. "250 2.0.0 Ok: queued as X".
_SIMPLE_REPLY = re.compile(rb"([2-5]\d\d) ([245])\.(\d{1,3})\.(\d{1,3}) ([\x20-\x7e]*)")


def parse_reply(lines: Sequence[bytes]) -> Reply:
    """Lines as received (without CRLF) -> Reply.  Raises ValueError if not SMTP."""
    if len(lines) == 1:
        simple = _SIMPLE_REPLY.fullmatch(lines[0])
        if simple is not None and simple.group(1)[:1] == simple.group(2):
            code, klass, subject, detail, text = simple.groups()
            return Reply(
                int(code),
                f"{klass.decode()}.{subject.decode()}.{detail.decode()}",
                text.decode("ascii").strip(),
            )
    if not lines:
        raise ValueError("empty reply")
    code_text = lines[0][:3]
    if not code_text.isdigit():
        raise ValueError(f"not an SMTP reply: {lines[0][:40]!r}")
    code = int(code_text)
    texts: list[str] = []
    enhanced: str | None = None
    for raw in lines:
        if raw[:3] != code_text:
            raise ValueError(f"reply lines with different codes: {raw[:40]!r}")
        text = raw[4:].decode("utf-8", "replace").strip()
        match = _ENHANCED.match(text)
        if match and match.group(1) == str(code)[0]:  # RFC 3463: class matches the code
            enhanced = enhanced or f"{match.group(1)}.{match.group(2)}.{match.group(3)}"
            text = text[match.end() :]
        texts.append(text)
    return Reply(code, enhanced, "\n".join(texts))


# --- message data on the wire ---------------------------------------------------


class Prepared(bytes):
    """A message's data as it goes on the wire, built ahead of its turn (while the
    connection waits for the previous reply; send/connection.py): CRLF line endings
    throughout and ending with one (its length is the SIZE= figure), and with
    ``stuffed`` its DATA form too (dot-stuffed, with the terminating ".")."""

    stuffed: bytes | None = None


PREPARED_MAX = CHUNK_SIZE  # bigger messages stream from their file, chunk by chunk


def prepare(data: bytes, *, stuff: bool) -> Prepared:
    """``data`` (at most PREPARED_MAX bytes) as :func:`wire_chunks` (``stuff``) or
    :func:`bdat_chunks` would send it, in one piece."""
    # _normalised's result for one block, without its generators (once per message)
    if data.endswith(b"\r"):  # a CR at the very end: a line ending of its own
        body = _normalise(data[:-1]) + CRLF
    else:
        body = _normalise(data)
        if body and not body.endswith(b"\n"):
            body += CRLF
    prepared = Prepared(body)
    if stuff:
        prepared.stuffed = _stuff(prepared, True) + b".\r\n"
    return prepared


def message_size(data: bytes | bytearray | memoryview | BinaryIO) -> int:
    """The size after CRLF normalisation, for ``MAIL FROM ... SIZE=`` (RFC 1870 §3:
    CRLF counted, the terminating "." and stuffed dots not)."""
    if isinstance(data, Prepared):
        return len(data)
    size = 0
    crlf = 0
    newlines = 0
    last_cr = False
    for piece in _pieces(data, CHUNK_SIZE):
        size += len(piece)
        newlines += piece.count(b"\n")
        crlf += piece.count(CRLF)
        if last_cr and piece[:1] == b"\n":
            crlf += 1
        last_cr = piece[-1:] == b"\r"
    # Bare LFs each gain a CR.  (Bare CRs gain an LF; rare enough to ignore in an
    # estimate, which is what SIZE is.)
    return size + newlines - crlf


def command_bytes(where: Callable[[], str], commands: Sequence[tuple[str, str]]) -> bytes:
    """The command lines for one write; logged with ``where()`` (the peer's name,
    asked only when debug logging is on)."""
    if log.isEnabledFor(logging.DEBUG):
        for line, _ in commands:
            log.debug("%s C: %s", where(), line)
    return "".join(f"{line}\r\n" for line, _ in commands).encode("utf-8")


def _pieces(data: bytes | bytearray | memoryview | BinaryIO, size: int) -> Iterator[bytes]:
    if isinstance(data, (bytes, bytearray, memoryview)):
        view = memoryview(data).cast("B")
        for start in range(0, len(view), size):
            yield bytes(view[start : start + size])
        return
    while True:
        piece = data.read(size)
        if not piece:
            return
        yield bytes(piece)


def _normalise(block: bytes) -> bytes:
    """CRLF, bare CR and bare LF all become CRLF (RFC 5321 §2.3.8)."""
    if b"\r" not in block:
        return block.replace(b"\n", CRLF)
    if block.count(b"\r") == block.count(b"\n") == block.count(CRLF):
        return block
    return block.replace(CRLF, b"\n").replace(b"\r", b"\n").replace(b"\n", CRLF)


def _normalised(
    data: bytes | bytearray | memoryview | BinaryIO, chunk_size: int
) -> Iterator[bytes]:
    """The message in blocks with CRLF line endings (a CR at a block's end waits for
    the next block: it may be half of a CRLF); the last block ends with CRLF (RFC
    5321 §4.1.1.4: the end of data follows a line ending).  Nothing for no data."""
    pending_cr = b""
    previous = b""
    for piece in _pieces(data, chunk_size):
        block = pending_cr + piece
        if block.endswith(b"\r"):
            pending_cr, block = b"\r", block[:-1]
        else:
            pending_cr = b""
        if block:
            if previous:
                yield previous
            previous = _normalise(block)
    if pending_cr or (previous and not previous.endswith(b"\n")):
        previous += CRLF
    if previous:
        yield previous  # the line ending rides with the last block: one write


def wire_chunks(
    data: bytes | bytearray | memoryview | BinaryIO, chunk_size: int = CHUNK_SIZE
) -> Iterator[bytes]:
    """The message as sent after DATA: CRLF line endings, dot-stuffed (RFC 5321
    §4.5.2), ending with CRLF "." CRLF.  The terminator rides in the last chunk so
    a small message is a single write.  Memory: a few chunks, whatever the size.
    """
    if isinstance(data, Prepared):
        yield data.stuffed if data.stuffed is not None else _stuff(data, True) + b".\r\n"
        return
    at_line_start = True  # the start of the message is the start of a line
    previous: bytes | None = None
    for block in _normalised(data, chunk_size):
        out = _stuff(block, at_line_start)
        at_line_start = out.endswith(b"\n")
        if previous is not None:
            yield previous
        previous = out
    yield (previous or b"") + b".\r\n"


def _stuff(block: bytes, at_line_start: bool) -> bytes:
    """RFC 5321 §4.5.2: a line that starts with "." gets one more."""
    # Most messages have no line to stuff, and CPython looks for a two-byte pattern
    # backwards (rfind) in less than half the time replace takes to look forwards:
    # ~75 against ~170 us for 160 KB, some 15 % of such a message's work.
    out = block.replace(b"\n.", b"\n..") if block.rfind(b"\n.") >= 0 else block
    return b"." + out if at_line_start and out[:1] == b"." else out


def bdat_chunks(
    data: bytes | bytearray | memoryview | BinaryIO, chunk_size: int = CHUNK_SIZE
) -> Iterator[tuple[bytes, bool]]:
    """The message as sent in BDAT chunks (RFC 3030 §2): CRLF line endings (ending
    with one, like DATA), but no dot-stuffing and no terminator -- the byte count
    delimits it.  (chunk, last) pairs; a small message is one chunk; an empty one is
    one empty chunk ("BDAT 0 LAST" is valid)."""
    if isinstance(data, Prepared):
        yield bytes(data), True
        return
    previous: bytes | None = None
    for block in _normalised(data, chunk_size):
        if previous is not None:
            yield previous, False
        previous = block
    yield previous or b"", True
