"""carerix_smtp.sink.data: DATA's content read in blocks -- against a line-by-line model
of aiosmtpd 1.4's smtp_DATA, and over real sockets to a running sink."""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from servers import smtp_server

from carerix_smtp.sink.config import SinkConfig
from carerix_smtp.sink.data import DataRead, Refusal, open_terminator, read_data, unstuff
from carerix_smtp.sink.server import Sink

LINE_LIMIT = 1001  # aiosmtpd's line_length_limit, also its StreamReader's limit
NEXT = b"MAIL FROM:<next@example.com>\r\n"  # pipelined behind the data


def model(stream: bytes, size_limit: int | None) -> tuple[set[Refusal] | bytes, bytes]:
    """What aiosmtpd makes of ``stream`` line by line: the content (or the refusals
    that may apply: with both a long line and too much data, its choice depends on
    how the bytes arrived), and what is left behind the terminator."""
    pos, size, content = 0, 0, []
    long_line = too_much = False
    while True:
        end = stream.index(b"\r\n", pos) + 2
        line, pos = stream[pos:end], end
        if line == b".\r\n":
            break
        size += len(line)
        long_line |= len(line) > LINE_LIMIT
        too_much |= bool(size_limit) and size > (size_limit or 0)
        content.append(line[1:] if line.startswith(b".") else line)
    if long_line or too_much:
        refusals = {Refusal.LINE_TOO_LONG} if long_line else set()
        return refusals | ({Refusal.TOO_MUCH_DATA} if too_much else set()), stream[pos:]
    return b"".join(content), stream[pos:]


def read_fed(
    stream: bytes, cuts: list[int], size_limit: int | None = None
) -> tuple[DataRead, bytes]:
    """read_data over a StreamReader fed ``stream`` in pieces cut at ``cuts``; the
    result and what it left in the reader."""

    async def run() -> tuple[DataRead, bytes]:
        reader = asyncio.StreamReader(limit=LINE_LIMIT)
        task = asyncio.create_task(read_data(reader, size_limit=size_limit, line_limit=LINE_LIMIT))
        edges = [0, *sorted(set(cuts)), len(stream)]
        for start, end in itertools.pairwise(edges):
            reader.feed_data(stream[start:end])
            await asyncio.sleep(0)
        reader.feed_eof()
        read = await task
        return read, await reader.read()

    return asyncio.run(run())


# Data made of the pieces that matter: line ends, dots, bare CR and LF, long lines.
_pieces = st.sampled_from(
    [b"\r\n", b".", b"..", b"\r", b"\n", b"x", b"abc", b"\xc3\xa9", b"\r\n.", b"\r\n.\r"]
)
_streams = st.builds(
    lambda parts, long: b"".join(parts) + (b"y" * long) + b"\r\n.\r\n" + NEXT,
    st.lists(_pieces | st.binary(max_size=40), max_size=60),
    st.sampled_from([0, 0, 0, 997, 998, 999, 1000, 1001, 1500]),
)


@settings(max_examples=300, deadline=None)
@given(_streams, st.lists(st.integers(min_value=1, max_value=2000), max_size=12))
def test_same_as_aiosmtpd_however_the_bytes_arrive(stream: bytes, cuts: list[int]) -> None:
    expected, rest = model(stream, None)
    read, left = read_fed(stream, [c for c in cuts if c < len(stream)])
    assert left == rest
    if isinstance(expected, bytes):
        assert (read.content, read.refusal) == (expected, None)
    else:
        assert read.refusal in expected and read.content == b""


@settings(max_examples=150, deadline=None)
@given(_streams, st.integers(min_value=1, max_value=400), st.integers(min_value=1, max_value=50))
def test_size_limit_same_as_aiosmtpd(stream: bytes, size_limit: int, step: int) -> None:
    expected, rest = model(stream, size_limit)
    read, left = read_fed(stream, list(range(step, len(stream), step)), size_limit)
    assert left == rest
    if isinstance(expected, bytes):
        assert read.refusal is None and read.content == expected
    else:
        assert read.refusal in expected


@pytest.mark.parametrize(
    ("stream", "content"),
    [
        (b".\r\n", b""),  # the lone dot right after the 354
        (b"\r\n.\r\n", b"\r\n"),
        (b"..\r\n.\r\n", b".\r\n"),
        (b".x\r\n..\r\n.\r\n", b"x\r\n.\r\n"),
        (b"a\r\n.b\r\n.\r\n", b"a\r\nb\r\n"),
        (b"a\n.\r\n.\r\n", b"a\n.\r\n"),  # after a bare LF the dot starts no line
        (b"a\r.\r\n.\r\n", b"a\r.\r\n"),
        (b"a\r\n.\r\r\n.\r\n", b"a\r\n\r\r\n"),
    ],
    ids=["empty", "empty-line", "dot-line", "stuffed", "dot-b", "bare-lf", "bare-cr", "dot-cr"],
)
def test_terminator_and_dots_byte_by_byte(stream: bytes, content: bytes) -> None:
    whole, _ = read_fed(stream + NEXT, [])
    one_by_one, left = read_fed(stream + NEXT, list(range(1, len(stream) + len(NEXT))))
    assert whole == one_by_one == DataRead(content)
    assert left == NEXT


def test_line_limit_is_aiosmtpds() -> None:
    fits = b"y" * (LINE_LIMIT - 2) + b"\r\n"
    assert read_fed(fits + b".\r\n", [500])[0] == DataRead(fits)
    too_long = b"y" + fits
    assert read_fed(too_long + b".\r\n" + NEXT, [])[0].refusal is Refusal.LINE_TOO_LONG
    # The CR of a line that just fits arrives alone: still fits.
    assert read_fed(fits + b".\r\n", [LINE_LIMIT - 1, LINE_LIMIT])[0] == DataRead(fits)


def test_refused_data_is_not_kept_while_reading() -> None:
    big = b"z" * 70 + b"\r\n"

    async def run() -> tuple[DataRead, int]:
        reader = asyncio.StreamReader(limit=LINE_LIMIT)
        task = asyncio.create_task(read_data(reader, size_limit=1000, line_limit=LINE_LIMIT))
        for _ in range(200):
            reader.feed_data(big * 10)
            await asyncio.sleep(0)
        frame = task.get_stack()[-1]
        kept = len(frame.f_locals["raw"])
        reader.feed_data(b".\r\n")
        return await task, kept

    read, kept = asyncio.run(run())
    assert read == DataRead(b"", Refusal.TOO_MUCH_DATA)
    assert kept <= 5


@pytest.mark.parametrize(
    ("tail", "begun"),
    [(b"x", 0), (b"x\r", 1), (b"\r\n", 2), (b"\r\n.", 3), (b"\r\n.\r", 4)],
)
def test_open_terminator(tail: bytes, begun: int) -> None:
    assert open_terminator(tail) == begun


def test_unstuff() -> None:
    assert unstuff(b"..a\r\n..\r\n.b\r\nc.\r\n") == b".a\r\n.\r\nb\r\nc.\r\n"
    plain = b"no dots at line starts\r\n"
    assert unstuff(plain) == plain


# --------------------------------------------------------------------- over a socket


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[Sink]:
    with Sink(SinkConfig(out_dir=tmp_path / "mail", fsync=False, size=4000)) as running:
        yield running


class Wire:
    """A raw client: writes bytes as given, reads reply lines."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb")
        assert self.reply().startswith(b"220 ")
        self.send(b"EHLO client.test\r\n")
        while not self.reply().startswith(b"250 "):
            pass

    def send(self, data: bytes, piece: int = 0) -> None:
        for start in range(0, len(data), piece or len(data) or 1):
            self.sock.sendall(data[start : start + (piece or len(data))])

    def reply(self) -> bytes:
        return self.reader.readline()

    def envelope(self) -> list[bytes]:
        self.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        return [self.reply()[:3] for _ in range(3)]

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


@pytest.fixture
def wire(sink: Sink) -> Iterator[Callable[[], Wire]]:
    opened: list[Wire] = []

    def make() -> Wire:
        opened.append(Wire(sink.host, sink.port))
        return opened[-1]

    yield make
    for each in opened:
        each.close()


BODY = (
    b"From: a@example.com\r\nSubject: bytes\r\n\r\n"
    b"..starts with two dots\r\n"
    b".one dot\r\n"
    b"bare\nLF and bare\rCR kept\r\n"
    b"caf\xc3\xa9 \xe2\x82\xac 8-bit\r\n"
    b"..\r\n"
)
UNSTUFFED = (
    b"From: a@example.com\r\nSubject: bytes\r\n\r\n"
    b".starts with two dots\r\n"
    b"one dot\r\n"
    b"bare\nLF and bare\rCR kept\r\n"
    b"caf\xc3\xa9 \xe2\x82\xac 8-bit\r\n"
    b".\r\n"
)


def stored(sink: Sink, count: int) -> list[bytes]:
    """The stored .eml files' messages, without the sink's envelope header lines."""
    assert sink.wait_for(count, timeout=5)
    out = []
    for message in sink.messages:
        assert message.path is not None
        lines = message.path.read_bytes().split(b"\r\n")
        head = sum(1 for line in lines if line.startswith(b"X-Cxsmtp-Envelope-"))
        out.append(b"\r\n".join(lines[head:]))
    return out


@pytest.mark.parametrize("piece", [0, 1, 7, 1000], ids=["one-write", "bytewise", "7", "1000"])
def test_stuffed_data_stored_byte_exact_however_written(
    sink: Sink, wire: Callable[[], Wire], piece: int
) -> None:
    client = wire()
    assert client.envelope() == [b"250", b"250", b"354"]
    # The terminator, and the next message's commands pipelined in the same writes.
    client.send(BODY + b".\r\n" + b"MAIL FROM:<c@example.com>\r\nRSET\r\n", piece)
    assert client.reply().startswith(b"250 2.0.0 OK: queued as ")
    assert client.reply()[:3] == b"250"  # the pipelined MAIL was read as a command
    assert client.reply()[:3] == b"250"
    assert stored(sink, 1) == [UNSTUFFED]
    assert sink.messages[0].size == len(UNSTUFFED)


def test_lone_dot_right_after_354_is_an_empty_message(sink: Sink, wire: Callable[[], Wire]) -> None:
    client = wire()
    client.envelope()
    client.send(b".\r\n")
    assert client.reply().startswith(b"250 2.0.0 OK")
    assert stored(sink, 1) == [b""]


def test_dots_at_the_very_start_are_unstuffed(sink: Sink, wire: Callable[[], Wire]) -> None:
    client = wire()
    client.envelope()
    client.send(b"..leading\r\n..\r\n.\r\n", 1)
    assert client.reply().startswith(b"250 2.0.0 OK")
    assert stored(sink, 1) == [b".leading\r\n.\r\n"]


def test_too_big_552_then_the_session_goes_on(sink: Sink, wire: Callable[[], Wire]) -> None:
    client = wire()
    client.envelope()
    client.send(b"Subject: big\r\n\r\n" + (b"x" * 98 + b"\r\n") * 60 + b".\r\n", 4096)
    assert client.reply() == b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    assert client.envelope() == [b"250", b"250", b"354"]  # the envelope was reset
    client.send(BODY + b".\r\n")
    assert client.reply().startswith(b"250 2.0.0 OK")
    assert stored(sink, 1) == [UNSTUFFED]


def test_long_line_500_then_the_session_goes_on(sink: Sink, wire: Callable[[], Wire]) -> None:
    client = wire()
    client.envelope()
    client.send(b"Subject: long\r\n\r\n" + b"y" * 1500 + b"\r\n.\r\n", 333)
    assert client.reply() == b"500 5.5.2 Line too long (RFC 5321 4.5.3.1.6)\r\n"
    assert client.envelope() == [b"250", b"250", b"354"]
    client.send(b"Subject: ok\r\n\r\nfine\r\n.\r\n")
    assert client.reply().startswith(b"250 2.0.0 OK")
    assert stored(sink, 1) == [b"Subject: ok\r\n\r\nfine\r\n"]


def test_connection_lost_mid_data_stores_nothing(sink: Sink, wire: Callable[[], Wire]) -> None:
    client = wire()
    client.envelope()
    client.send(b"Subject: cut\r\n\r\nhalf a message\r\n")
    client.sock.shutdown(socket.SHUT_WR)
    assert client.reply() == b""  # closed without a reply
    assert sink.wait_idle(timeout=5)
    assert sink.messages == []


@pytest.mark.parametrize(
    "stream",
    [
        BODY + b".\r\n",
        b".\r\n",
        b"..\r\n.\r\r\n\n.\r\n.\r\n",
        b"Subject: long\r\n\r\n" + b"y" * 1500 + b"\r\n.\r\n",
        b"y" * 999 + b"\r\n" + b"z" * 1000 + b"\r\n.\r\n",
        (b"x" * 98 + b"\r\n") * 60 + b".\r\n",
    ],
    ids=["stuffed", "empty", "dots-and-crs", "long-line", "999-then-1000", "too-big"],
)
def test_sink_and_aiosmtpd_agree(sink: Sink, stream: bytes) -> None:
    """The same bytes, a few at a time, to the sink and to aiosmtpd's own smtp_DATA."""
    with smtp_server(data_size_limit=4000) as plain:
        replies, contents = [], []
        for host, port in [(sink.host, sink.port), ("127.0.0.1", plain.port)]:
            client = Wire(host, port)
            try:
                client.envelope()
                client.send(stream + b"NOOP\r\n", 13)
                replies.append((client.reply()[:3], client.reply()[:3]))
            finally:
                client.close()
        contents.append([m.data for m in sink.messages])
        contents.append([m.content for m in plain.handler.messages])
    assert replies[0] == replies[1]
    assert contents[0] == contents[1]
