"""BDAT (RFC 3030 CHUNKING) against real sockets: a scripted server that offers
CHUNKING and checks every chunk's byte count, and the sink with ``chunking=True``.

What matters: the byte count is exact, nothing is dot-stuffed (a lone "." line is
data), a big message goes in chunks read from its file piece by piece, a refused
chunk is a result (and no more chunks follow it), a connection lost mid-chunk is
an error, and the next message's MAIL/RCPT ride behind the last chunk.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from servers import ScriptConn, ScriptServer, host_entry

from carerix_smtp.config.tls import Security
from carerix_smtp.errors import SmtpError
from carerix_smtp.smtp.session import SmtpSession
from carerix_smtp.smtp.transaction import Transaction
from carerix_smtp.smtp.wire import CHUNK_SIZE

CHUNKING = ("PIPELINING", "CHUNKING", "SIZE 100000000")


def read_exact(conn: ScriptConn, size: int) -> bytes:
    while len(conn.buffer) < size:
        chunk = conn.sock.recv(65536)
        if not chunk:
            raise ConnectionError("client closed")
        conn.buffer += chunk
    data, conn.buffer = conn.buffer[:size], conn.buffer[size:]
    return data


class Bdat:
    """A scripted server: MAIL/RCPT/RSET 250, BDAT chunks read by their count.

    ``chunk_reply(n, last, index)`` answers chunk ``index`` of a transaction (None:
    250).  ``chunks`` records (count, last, next bytes already buffered) per chunk;
    ``messages`` the data of each transaction; ``verbs`` every command in order."""

    def __init__(
        self,
        extensions: tuple[str, ...] = CHUNKING,
        chunk_reply: Callable[[int, bool, int], bytes | None] = lambda n, last, i: None,
        lose_mid_chunk: bool = False,
    ) -> None:
        self.extensions = extensions
        self.chunk_reply = chunk_reply
        self.lose_mid_chunk = lose_mid_chunk
        self.chunks: list[tuple[int, bool, bytes]] = []
        self.messages: list[bytes] = []
        self.verbs: list[str] = []

    def __call__(self, conn: ScriptConn) -> None:
        conn.send(b"220 bdat.test ESMTP\r\n")
        conn.ehlo(*self.extensions)
        data = b""
        index = 0
        while True:
            words = conn.readline().split()
            verb = words[0].decode().upper()
            self.verbs.append(verb)
            if verb == "BDAT":
                size, last = int(words[1]), len(words) > 2
                if self.lose_mid_chunk:
                    read_exact(conn, min(size, 10))
                    return  # the connection closes mid-chunk
                chunk = read_exact(conn, size)
                self.chunks.append((size, last, conn.buffer[:9]))
                data += chunk
                reply = self.chunk_reply(size, last, index)
                index += 1
                if last:
                    self.messages.append(data)
                    data, index = b"", 0
                conn.send(reply or b"250 2.0.0 chunk ok\r\n")
            elif verb in ("MAIL", "RCPT", "RSET"):
                data, index = b"", 0
                conn.send(b"250 2.0.0 ok\r\n")
            elif verb == "QUIT":
                conn.send(b"221 2.0.0 bye\r\n")
                return
            else:
                conn.send(b"500 5.5.1 unexpected\r\n")


def session_for(server: ScriptServer) -> SmtpSession:
    return SmtpSession(host_entry(server.host, security=Security.NONE), None)


def test_bdat_counts_bytes_and_never_dot_stuffs() -> None:
    script = Bdat()
    body = b"Subject: dots\n\n.\n..two\n. \nend"  # no final line ending
    with ScriptServer(script) as server, session_for(server) as session:
        result = session.send("a@x.example", ["b@y.example"], body)
    assert result.delivered
    expected = b"Subject: dots\r\n\r\n.\r\n..two\r\n. \r\nend\r\n"
    assert script.messages == [expected]
    assert [(n, last) for n, last, _ in script.chunks] == [(len(expected), True)]
    assert "DATA" not in script.verbs and server.errors == []


def test_without_chunking_data_is_used() -> None:
    script = Bdat(extensions=("PIPELINING",))
    with ScriptServer(script) as server, session_for(server) as session:
        assert session.has_extension("pipelining") and not session.has_extension("chunking")
        result = session.send("a@x.example", ["b@y.example"], b"x\n")
    assert result.data_reply is not None and result.data_reply.code == 500  # (this script)
    assert "DATA" in script.verbs and "BDAT" not in script.verbs


def test_refused_last_chunk_is_a_result_and_the_session_goes_on() -> None:
    refused = iter([b"554 5.6.0 content refused\r\n", None])
    script = Bdat(chunk_reply=lambda n, last, i: next(refused))
    with ScriptServer(script) as server, session_for(server) as session:
        first = session.send("a@x.example", ["b@y.example"], b"one\n")
        second = session.send("a@x.example", ["b@y.example"], b"two\n")
    assert first.data_reply is not None and first.data_reply.code == 554
    assert first.accepted == [] and second.delivered
    assert script.messages == [b"one\r\n", b"two\r\n"]


class Reads(io.BytesIO):
    """A message file that records how much each read asked for."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.sizes: list[int] = []

    def read(self, size: int | None = -1, /) -> bytes:
        self.sizes.append(-1 if size is None else size)
        return super().read(size)


def big_message() -> bytes:
    line = b"." + b"y" * 70 + b"\n"  # every line starts with a dot: no stuffing in BDAT
    return b"Subject: big\n\n" + line * ((5 * CHUNK_SIZE // 2) // len(line))


def test_big_message_streams_from_its_file_in_counted_chunks() -> None:
    script = Bdat()
    source = big_message()
    data = Reads(source)
    with ScriptServer(script) as server, session_for(server) as session:
        result = session.send("a@x.example", ["b@y.example"], data)
    assert result.delivered
    assert script.messages == [source.replace(b"\n", b"\r\n")]
    counts = [(n, last) for n, last, _ in script.chunks]
    assert len(counts) == 3 and [last for _, last in counts] == [False, False, True]
    assert sum(n for n, _ in counts) == len(script.messages[0])
    assert max(data.sizes) <= CHUNK_SIZE and -1 not in data.sizes  # never the whole file


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])
def test_refused_middle_chunk_is_the_result_then_rset(pipelining: bool) -> None:
    def reply(size: int, last: bool, index: int) -> bytes | None:
        refused = (index == 0 and not last) or (last and index > 0)  # the big one only
        return b"552 5.3.4 too much\r\n" if refused else None

    extensions = CHUNKING if pipelining else ("CHUNKING", "SIZE 100000000")
    script = Bdat(extensions=extensions, chunk_reply=reply)
    with ScriptServer(script) as server, session_for(server) as session:
        result = session.send("a@x.example", ["b@y.example"], big_message())
        after = session.send("a@x.example", ["b@y.example"], b"small\n")
    assert result.data_reply is not None and result.data_reply.code == 552
    assert not result.delivered and after.delivered
    first = script.verbs[: script.verbs.index("RSET") + 1]
    if pipelining:  # the chunks were in flight already: all three went
        assert first == ["MAIL", "RCPT", "BDAT", "BDAT", "BDAT", "RSET"]
    else:  # RFC 3030 §4.2: no chunk after a refused one
        assert first == ["MAIL", "RCPT", "BDAT", "RSET"]


def test_connection_lost_mid_chunk_is_an_error() -> None:
    script = Bdat(lose_mid_chunk=True)
    with ScriptServer(script) as server, session_for(server) as session:
        with pytest.raises(SmtpError) as caught:
            session.send("a@x.example", ["b@y.example"], b"x" * 300_000)
        assert session.closed
    assert caught.value.phase == "data-end"  # the last chunk had started: outcome unknown


def test_next_message_commands_ride_behind_the_last_chunk() -> None:
    script = Bdat()
    with ScriptServer(script) as server, session_for(server) as session:
        first = session.transaction("a@x.example", ["b@y.example"], b"one\n")
        second = session.transaction("a@x.example", ["c@y.example"], b"two\n")
        assert isinstance(first, Transaction) and isinstance(second, Transaction)
        assert first.chunking and [c for c, _ in first.commands()][-1].startswith("RCPT")
        assert session.run(first, then=second).delivered
        assert second.session is session  # its MAIL and RCPT are on the wire
        assert session.run(second).delivered
    # right behind the first message's last chunk, in the same write: the next MAIL
    assert script.chunks[0][2] == b"MAIL FROM"
    assert script.verbs == ["MAIL", "RCPT", "BDAT", "MAIL", "RCPT", "BDAT", "QUIT"]


def test_the_sink_takes_bdat_when_asked(sink_factory: Any) -> None:
    sink = sink_factory(chunking=True)
    entry = host_entry(f"[127.0.0.1]:{sink.port}", security=Security.NONE)
    with SmtpSession(entry, None) as session:
        assert session.has_extension("CHUNKING")
        result = session.send("a@x.example", ["b@y.example"], b"Subject: s\n\n.\nend\n")
        big = session.send("a@x.example", ["b@y.example"], big_message())
    assert result.delivered and big.delivered
    assert sink.messages[0].data == b"Subject: s\r\n\r\n.\r\nend\r\n"
    assert sink.messages[1].data == big_message().replace(b"\n", b"\r\n")


def test_the_sink_offers_no_chunking_by_default(sink_factory: Any) -> None:
    sink = sink_factory()
    entry = host_entry(f"[127.0.0.1]:{sink.port}", security=Security.NONE)
    with SmtpSession(entry, None) as session:
        assert not session.has_extension("CHUNKING")
