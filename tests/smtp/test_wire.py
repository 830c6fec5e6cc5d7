"""The wire format without a server: replies parsed and classified, dot-stuffing and
line endings (wire_chunks), message_size."""

from __future__ import annotations

import io
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carerix_smtp.smtp.wire import bdat_chunks, message_size, parse_reply, prepare, wire_chunks

# --- pure parts ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "code", "enhanced", "text"),
    [
        pytest.param([b"250 OK"], 250, None, "OK", id="simple"),
        pytest.param([b"250 2.1.0 Sender OK"], 250, "2.1.0", "Sender OK", id="enhanced"),
        pytest.param([b"550 4.1.1 mismatch"], 550, None, "4.1.1 mismatch", id="class-mismatch"),
        pytest.param(
            [b"535-5.7.139 Authentication unsuccessful,", b"535 5.7.139 basic auth disabled"],
            535,
            "5.7.139",
            "Authentication unsuccessful,\nbasic auth disabled",
            id="multiline",
        ),
        pytest.param([b"421"], 421, None, "", id="code-only"),
    ],
)
def test_parse_reply(lines: list[bytes], code: int, enhanced: str | None, text: str) -> None:
    reply = parse_reply(lines)
    assert (reply.code, reply.enhanced, reply.text) == (code, enhanced, text)


@pytest.mark.parametrize(
    ("code", "ok", "temporary", "permanent", "closing"),
    [
        (250, True, False, False, False),
        (354, True, False, False, False),
        (421, False, True, False, True),
        (451, False, True, False, False),
        (550, False, False, True, False),
    ],
)
def test_reply_classification(
    code: int, ok: bool, temporary: bool, permanent: bool, closing: bool
) -> None:
    reply = parse_reply([f"{code} x".encode()])
    assert (reply.ok, reply.temporary, reply.permanent, reply.closing) == (
        ok,
        temporary,
        permanent,
        closing,
    )


def test_parse_reply_refuses_non_smtp() -> None:
    with pytest.raises(ValueError):
        parse_reply([b"HTTP/1.1 400 Bad Request"])


def wire(data: bytes, chunk_size: int = 1 << 20) -> bytes:
    return b"".join(wire_chunks(data, chunk_size))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n", id="crlf-untouched"),
        pytest.param(b"a\nb\n", b"a\r\nb\r\n.\r\n", id="bare-lf"),
        pytest.param(b"a\rb\r", b"a\r\nb\r\n.\r\n", id="bare-cr"),
        pytest.param(b"a\r\nb", b"a\r\nb\r\n.\r\n", id="no-final-newline"),
        pytest.param(b".x\n.\n..\n", b"..x\r\n..\r\n...\r\n.\r\n", id="dots"),
        pytest.param(b"a\n.\nb\n", b"a\r\n..\r\nb\r\n.\r\n", id="lone-dot-line"),
        pytest.param(b"", b".\r\n", id="empty"),
    ],
)
def test_wire_chunks(data: bytes, expected: bytes) -> None:
    assert wire(data) == expected
    # Chunk boundaries anywhere (CR|LF split, dot after a boundary) change nothing.
    for size in (1, 2, 3):
        assert wire(data, size) == expected


def unstuff(wire_bytes: bytes) -> bytes:
    assert wire_bytes.endswith(b"\r\n.\r\n") or wire_bytes == b".\r\n"
    body = wire_bytes[:-3]
    lines = body.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


@settings(max_examples=200, deadline=None)
@given(
    st.binary(max_size=200).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    st.lists(st.sampled_from([b"\n", b"\r\n", b".", b"..", b"x"]), max_size=30),
    st.integers(min_value=1, max_value=7),
)
def test_wire_round_trip(base: bytes, parts: list[bytes], chunk: int) -> None:
    data = base + b"".join(parts)
    out = wire(data, chunk)
    assert b"\n.\r\n" not in out[:-3] or out.count(b"\r\n.\r\n") == 1
    assert out.count(b"\r\n.\r\n") + (out == b".\r\n") == 1  # exactly one terminator
    assert b"\r" not in out.replace(b"\r\n", b"")  # no bare CR
    assert b"\n" not in out.replace(b"\r\n", b"")  # no bare LF
    normalised = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if normalised and not normalised.endswith(b"\r\n"):
        normalised += b"\r\n"
    assert unstuff(out) == normalised
    assert message_size(data) == len(normalised) - (0 if data.endswith(b"\n") or not data else 2)


def test_wire_chunks_large_message_is_streamed() -> None:
    data = (b"x" * 998 + b"\n") * 20_000  # ~20 MB of bare-LF lines
    sizes = [len(c) for c in wire_chunks(data)]
    assert len(sizes) > 10  # written in chunks, not one 20 MB copy
    assert max(sizes) <= (1 << 20) * 1.01 + 5
    assert sum(sizes) == len(data) + 20_000 + 3


def test_message_size_counts_crlf() -> None:
    assert message_size(b"a\nb\n") == 6
    assert message_size(b"a\r\nb\r\n") == 6
    assert message_size(io.BytesIO(b"a\nb\r\n")) == 6


@settings(max_examples=300, deadline=None)
@given(
    st.builds(
        lambda code, enhanced, text: f"{code}{enhanced}{text}".encode(),
        st.sampled_from(["250", "354", "451", "550", "421", "252"]),
        st.sampled_from(
            ["", " ", " 2.0.0", " 2.0.0 ", " 4.3.0  ", " 5.1.1\t", " 3.0.0 ", " 2.00.1 "]
        ),
        st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12),
    )
)
def test_one_line_reply_fast_path_agrees(line: bytes) -> None:
    import carerix_smtp.smtp.wire as wire_module

    fast = parse_reply([line])
    saved = wire_module._SIMPLE_REPLY
    wire_module._SIMPLE_REPLY = re.compile(rb"(?!)")  # never matches: the general parser
    try:
        slow = parse_reply([line])
    finally:
        wire_module._SIMPLE_REPLY = saved
    assert fast == slow


# --- data prepared ahead (smtp.wire.prepare; send/connection.Connection.prepare) ----

_LINES = st.lists(
    st.sampled_from([b"a", b".", b"..x", b"", b"\r", b"\n", b"\r\n", b"x.y", b"\xc3\xa9"]),
    max_size=40,
).map(b"".join)


@given(_LINES)
@settings(max_examples=400, deadline=None)
def test_prepared_data_goes_out_byte_for_byte_as_streamed(data: bytes) -> None:
    streamed = b"".join(wire_chunks(io.BytesIO(data)))
    plain = b"".join(chunk for chunk, _ in bdat_chunks(io.BytesIO(data)))
    for stuff in (True, False):  # stuffed ahead for DATA, or left to wire_chunks
        prepared = prepare(data, stuff=stuff)
        assert b"".join(wire_chunks(prepared)) == streamed
        assert list(bdat_chunks(prepared)) == [(plain, True)]
        assert message_size(prepared) == len(plain)  # exact: CRLF counted, no dots
    bare_cr = b"\r" in data.replace(b"\r\n", b"")
    if not bare_cr and (data == b"" or data.endswith(b"\n")):
        assert message_size(data) == len(plain)  # the estimate is exact here too
