"""message.py, headers.py, envelope.py: envelope, Bcc stripping, Message-ID/Date, capabilities."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from carerix_smtp.errors import MessageError
from carerix_smtp.spool import envelope as envelope_module
from carerix_smtp.spool import headers as headers_module
from carerix_smtp.spool.envelope import recipient_key
from carerix_smtp.spool.message import (
    complete_headers,
    make_message_id,
    parse_message,
    read_message,
)


def msg(*headers: str, body: str = "body\n", eol: str = "\n") -> bytes:
    return (eol.join(headers) + eol + eol + body).encode("utf-8")


# --- envelope ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "mail_from"),
    [
        pytest.param(["From: a@x.example", "To: r@y.example"], "a@x.example", id="from"),
        pytest.param(
            ["From: Ann <a@x.example>", "Sender: s@x.example", "To: r@y.example"],
            "s@x.example",
            id="sender-beats-from",
        ),
        pytest.param(
            [
                "Return-Path: <bounce@x.example>",
                "Sender: s@x.example",
                "From: a@x.example",
                "To: r@y.example",
            ],
            "bounce@x.example",
            id="return-path-beats-all",
        ),
        pytest.param(
            ["Return-Path: <>", "From: a@x.example", "To: r@y.example"], "", id="null-sender"
        ),
        pytest.param(
            ["From: a@x.example, b@x.example", "To: r@y.example"], "a@x.example", id="first-from"
        ),
    ],
)
def test_envelope_sender(headers: list[str], mail_from: str) -> None:
    assert parse_message(msg(*headers)).mail_from == mail_from


def test_recipients_to_cc_bcc_deduplicated_domain_case_insensitive() -> None:
    raw = msg(
        "From: a@x.example",
        'To: One <One@Y.example>, "Two" <two@y.example>, team: t@y.example;',
        "Cc: one@y.example, ONE@y.EXAMPLE, three@z.example",
        "Bcc: hidden@z.example, two@Y.EXAMPLE",
    )
    message = parse_message(raw)
    # local parts keep their case (RFC 5321 §2.4): One@ and ONE@ differ, one@ differs too
    assert message.recipients == (
        "One@Y.example",
        "two@y.example",
        "t@y.example",
        "one@y.example",
        "ONE@y.EXAMPLE",
        "three@z.example",
        "hidden@z.example",
    )
    assert recipient_key("two@Y.EXAMPLE") == recipient_key("two@y.example")


def test_bcc_and_return_path_removed_body_bytes_untouched() -> None:
    body = "line 1\r\n.\r\n..two dots\r\nlast line without newline é"
    raw = msg(
        "Return-Path: <b@x.example>",
        "From: a@x.example",
        "To: r@y.example",
        "Bcc: secret@z.example,",
        "  folded@z.example",
        "Subject: hi",
        body=body,
        eol="\r\n",
    )
    message = parse_message(raw)
    sent = message.transmitted()
    assert b"secret@z.example" not in sent and b"folded@z.example" not in sent
    assert b"Bcc" not in sent and b"Return-Path" not in sent
    assert sent.endswith(body.encode())
    assert sent.startswith(b"From: a@x.example\r\nTo: r@y.example\r\nSubject: hi\r\n\r\n")
    assert "folded@z.example" in message.recipients


def test_envelope_field_names_the_recipients_instead_of_to_cc_bcc() -> None:
    raw = msg(
        "From: a@x.example",
        "To: list@y.example",
        "Cc: cc@y.example",
        "Bcc: hidden@z.example",
        "x-cxsmtp-envelope-to: m1@z.example,",
        " m2@Z.example, m2@z.example",
        "Subject: list",
        eol="\r\n",
    )
    message = parse_message(raw)
    assert message.recipients == ("m1@z.example", "m2@Z.example")  # dedup on the domain
    sent = message.transmitted()
    assert b"m1@z.example" not in sent and b"hidden" not in sent
    assert b"nvelope" not in sent.lower()
    assert sent.startswith(b"From: a@x.example\r\nTo: list@y.example\r\nCc: cc@y.example\r\n")


def test_a_file_the_sink_stored_goes_again_to_the_recipients_it_came_for() -> None:
    """cxsmtp sink writes the envelope as X-Cxsmtp-Envelope-To lines (sink/store.py):
    queued again, the file goes to them, not to To."""
    from carerix_smtp.sink.store import envelope_header

    head = envelope_header("a@x.example", ["m1@z.example", "m2@z.example"])
    message = parse_message(head + msg("From: a@x.example", "To: list@y.example"))
    assert message.recipients == ("m1@z.example", "m2@z.example")
    assert b"Envelope-To" not in message.transmitted()


def test_an_empty_envelope_field_is_refused_not_replaced_by_to() -> None:
    raw = msg("From: a@x.example", "To: r@y.example", "X-Cxsmtp-Envelope-To: ")
    with pytest.raises(MessageError, match="no recipients: no address in X-Cxsmtp-Envelope-To"):
        parse_message(raw, name="m.eml")


FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize(
    ("name", "recipients"),
    [
        ("20261201T045041552048-aff595-sendmail.eml", ("a@y.example", "hidden@z.example")),
        ("20261201T045043705492-294e5b-sendmail.eml", ("a@y.example", "member@z.example")),
    ],
)
def test_spool_files_of_the_previous_sendmail_keep_their_envelope(
    name: str, recipients: tuple[str, ...]
) -> None:
    """fixtures/sendmail-v1: files the previous version's ``cxsmtp sendmail`` wrote
    (hidden recipients in Bcc); read as before, Bcc never transmitted."""
    message = read_message(FIXTURES / "sendmail-v1" / name, name=name)
    assert message.recipients == recipients
    sent = message.transmitted()
    assert b"Bcc" not in sent and recipients[1].encode() not in sent


def test_unchanged_message_is_transmitted_as_is() -> None:
    raw = msg("From: a@x.example", "To: r@y.example", "Subject: x")
    message = parse_message(raw)
    assert message.transmitted() is raw


def test_mbox_from_line_is_dropped() -> None:
    raw = b"From someone@x Mon Jan  1 00:00:00 2024\n" + msg("From: a@x.example", "To: r@y.example")
    message = parse_message(raw)
    assert message.mail_from == "a@x.example"
    assert message.transmitted().startswith(b"From: a@x.example\n")


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        pytest.param(b"", "empty", id="empty"),
        pytest.param(b"hello world\nthis is not mail\n", "not a 'Name: value'", id="prose"),
        pytest.param(bytes(range(256)) * 4, "not an RFC 5322", id="binary-garbage"),
        pytest.param(b" starts folded: x\n\nbody", "white space", id="leading-fold"),
        pytest.param(msg("Subject: no sender", "To: r@y.example"), "no sender", id="no-sender"),
        pytest.param(msg("From: a@x.example", "Subject: x"), "no recipients", id="no-rcpt"),
        pytest.param(
            msg("From: a@x.example", "To: undisclosed-recipients:;"),
            "no recipients",
            id="empty-group",
        ),
        pytest.param(msg("From: a@x.example", "To: bob"), "not an address", id="no-domain"),
        pytest.param(
            b"From: a@x.example\nTo: r@y.ex\rample\n\nbody", "bare CR", id="cr-in-address"
        ),
        pytest.param(b"From: a@x.example\nTo: r@y.example\x00\n\nbody", "NUL", id="nul-in-header"),
        pytest.param(
            msg("From: a@x.example", "To: r@bad domain"), "invalid address", id="bad-domain"
        ),
    ],
)
def test_unusable_messages_raise_message_error(raw: bytes, fragment: str) -> None:
    with pytest.raises(MessageError) as info:
        parse_message(raw, name="x.eml")
    assert str(info.value).startswith("x.eml: ")
    assert fragment in str(info.value)


def test_header_only_message_without_final_newline() -> None:
    message = parse_message(b"From: a@x.example\nTo: r@y.example")
    assert message.recipients == ("r@y.example",)
    completed = complete_headers(b"From: a@x.example\nTo: r@y.example")
    assert completed.startswith(b"From: a@x.example\nTo: r@y.example\nMessage-ID: <")


# --- capabilities -------------------------------------------------------------------


def test_ascii_message_needs_nothing() -> None:
    message = parse_message(msg("From: a@x.example", "To: r@y.example"))
    assert not (message.needs_8bitmime or message.needs_smtputf8 or message.header_utf8)


def test_8bit_body_needs_8bitmime_only() -> None:
    message = parse_message(msg("From: a@x.example", "To: r@y.example", body="café\n"))
    assert message.needs_8bitmime
    assert not message.needs_smtputf8


def test_utf8_subject_is_header_utf8_not_smtputf8() -> None:
    message = parse_message(msg("From: a@x.example", "To: r@y.example", "Subject: café"))
    assert message.header_utf8 and message.needs_8bitmime
    assert not message.needs_smtputf8


def test_non_ascii_address_needs_smtputf8() -> None:
    message = parse_message(msg("From: josé@exämple.com", "To: r@y.example"))
    assert message.needs_smtputf8
    assert message.mail_from == "josé@exämple.com"


# --- Message-ID and Date -------------------------------------------------------------


def test_complete_headers_adds_message_id_and_date_keeps_the_rest() -> None:
    raw = msg("From: a@x.example", "To: r@y.example", body="the body\r\n", eol="\r\n")
    when = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    out = complete_headers(raw, now=when)
    parsed = message_from_bytes(out, policy=policy.default)
    assert parsed["Message-ID"].endswith("@x.example>")
    assert parsed["Date"] == "Wed, 01 May 2024 12:00:00 +0000"
    assert out.endswith(b"\r\n\r\nthe body\r\n")
    assert b"\r\nMessage-ID: <" in out  # the file's own line ending
    assert parse_message(out).complete


def test_complete_message_is_returned_unchanged() -> None:
    raw = msg("From: a@x.example", "To: r@y.example", "Message-ID: <1@x>", "Date: x")
    assert complete_headers(raw) is raw
    assert parse_message(raw).message_id == "<1@x>"


def test_message_id_domain_never_needs_dns() -> None:
    assert make_message_id("a@Example.COM").endswith("@example.com>")
    assert make_message_id(None).endswith("@cxsmtp.invalid>")
    assert make_message_id("josé@exämple.com").endswith("@cxsmtp.invalid>")


# --- big files: the body stays on disk -------------------------------------------------


def test_read_message_streams_the_body(tmp_path: Path) -> None:
    body = b"x" * (3 << 20) + b"\n.\nend\n"
    path = tmp_path / "big.eml"
    path.write_bytes(
        msg("From: a@x.example", "To: r@y.example", "Bcc: b@y.example", body="") + body
    )
    message = read_message(path)
    assert message.raw is None  # nothing beyond the header block was kept
    assert len(message.head) < 200
    assert message.size == path.stat().st_size
    assert not message.needs_8bitmime
    with message.open_data() as stream:
        first = stream.read(100)
        assert b"Bcc" not in first
        stream.seek(0)
        data = stream.read()
    assert data == b"From: a@x.example\nTo: r@y.example\n\n" + body
    assert message.transmitted() == data  # in memory, read in one call: the same bytes


def test_a_mid_size_file_is_transmitted_as_its_stream_says(tmp_path: Path) -> None:
    """Above SMALL_FILE and below PREPARED_MAX: read again whole for preparing, with
    the mbox line and Bcc gone as in the stream."""
    path = tmp_path / "mid.eml"
    head = b"From a@x.example Mon Jan  1 00:00:00 2024\n"
    path.write_bytes(head + msg("From: a@x.example", "Bcc: b@y.example", body="y" * 100_000))
    message = read_message(path)
    assert message.raw is None and message.header_start == len(head)
    with message.open_data() as stream:
        streamed = stream.read()
    assert message.transmitted() == streamed
    assert streamed.startswith(b"From: a@x.example\n\n") and len(streamed) > 100_000


def test_small_file_is_read_once_and_sent_from_memory(tmp_path: Path) -> None:
    path = tmp_path / "small.eml"
    raw = msg("From: a@x.example", "To: r@y.example", "Bcc: b@y.example", body="café\n")
    path.write_bytes(raw)
    message = read_message(path)
    assert message.raw == raw and message.path == path and message.size == len(raw)
    assert message.needs_8bitmime and message.recipients == ("r@y.example", "b@y.example")
    path.unlink()  # nothing is read from the file any more
    assert message.transmitted() == raw.replace(b"Bcc: b@y.example\n", b"")
    with message.open_data() as stream:
        assert stream.read() == message.transmitted()


def test_read_message_finds_8bit_bytes_far_in_the_body(tmp_path: Path) -> None:
    path = tmp_path / "late8bit.eml"
    path.write_bytes(msg("From: a@x.example", "To: r@y.example", body="a" * (2 << 20) + "é"))
    assert read_message(path).needs_8bitmime


def test_read_message_without_end_of_header(tmp_path: Path) -> None:
    path = tmp_path / "noend.eml"
    path.write_bytes(b"X-Junk: " + b"y" * (9 << 20))
    with pytest.raises(MessageError, match="no end of the header block"):
        read_message(path)


# --- the fast header path agrees with email.headerregistry ----------------------------------
#
# read_message parses plain address lists with its own strict grammar and hands
# everything else to email.headerregistry (policy.default), one field at a time.
# The oracle below is the previous implementation: the whole header block through
# BytesHeaderParser(policy=policy.default).


def _oracle_addresses(parsed: Any, field: str) -> list[str]:
    from email.errors import InvalidHeaderDefect

    out: list[str] = []
    for value in parsed.get_all(field, []):
        addresses = getattr(value, "addresses", ())
        for item in addresses:
            spec = item.addr_spec
            if spec and spec != "<>":
                out.append(
                    envelope_module._check_address(
                        envelope_module._unescape(spec, "m", field), "m", field
                    )
                )
        if str(value).strip() and not addresses and ":" not in str(value):
            raise MessageError(f"m: {field}: no address in {str(value)!r}")
        invalid = [d for d in getattr(value, "defects", ()) if isinstance(d, InvalidHeaderDefect)]
        if invalid:
            raise MessageError(f"m: {field}: {invalid[0]} in {str(value)!r}")
    return out


def _oracle(block: bytes) -> tuple[Any, ...]:
    from email.parser import BytesHeaderParser
    from email.utils import getaddresses

    parsed = BytesHeaderParser(policy=policy.default).parsebytes(block)
    from_list = _oracle_addresses(parsed, "From")
    from_address = from_list[0] if from_list else None
    mail_from: str | None = None
    return_path = parsed.get("Return-Path")
    if return_path is not None:
        text = envelope_module._unescape(str(return_path), "m", "Return-Path").strip()
        if text.replace(" ", "") == "<>":
            mail_from = ""
        else:
            pairs = getaddresses([text])
            if pairs and pairs[0][1]:
                mail_from = envelope_module._check_address(pairs[0][1], "m", "Return-Path")
    if mail_from is None:
        sender = _oracle_addresses(parsed, "Sender")
        mail_from = sender[0] if sender else from_address
    if mail_from is None:
        raise MessageError("m: no sender: no Return-Path, Sender or From address")
    seen: set[str] = set()
    recipients: list[str] = []
    for field in ("To", "Cc", "Bcc"):
        for address in _oracle_addresses(parsed, field):
            if recipient_key(address) not in seen:
                seen.add(recipient_key(address))
                recipients.append(address)
    if not recipients:
        raise MessageError("m: no recipients: no address in To, Cc or Bcc")
    mid = parsed.get("Message-ID")
    message_id = (str(mid).strip() or None) if mid is not None else None
    return (mail_from, tuple(recipients), from_address, message_id, parsed.get("Date") is not None)


def _outcome(func: Any, block: bytes) -> tuple[Any, ...]:
    try:
        return ("ok", func(block))
    except MessageError as exc:
        return ("error", str(exc))
    except Exception as exc:  # the email package's parser crashes on some garbage
        return ("crash", type(exc).__name__)


def _new(block: bytes) -> tuple[Any, ...]:
    m = parse_message(block + b"\n", name="m")
    return (m.mail_from, m.recipients, m.from_address, m.message_id, m.has_date)


TOKENS = [
    "a@x.example", "b.c@y.example", "Ann", "Ann B.", '"Ann, B"', '"a\\"b"', "<a@x.example>",
    "<b@y.example>", "=?utf-8?q?Jos=C3=A9?=", "=?utf-8?b?Sm9zw6k=?=", "=?utf-8?q?a,b?=",
    "=?utf-8?q?x?=@y.example", "(comment)", "(a (nested) c)", ",", ", ", ";", ":", "team:",
    "<", ">", "@", " ", "\t", "\n ", "\r\n\t", "josé@exämple.com", "<josé@exämple.com>",
    '"john doe"@x.example', "a..b@c.example", "a@c.", "a@[192.0.2.1]", "<a@[IPv6:::1]>",
    "x@y", "r@bad domain", "<>", "\\", "é", "\x01", "a@b.example (x)", "a(b)@c.example",
    "<a@b.example", "a@b.example>", '"', "(", ")", "[", "]", ".", "=?", "?=",
    "Ann <a@x.example>", "undisclosed-recipients:;", "a @ b.example", "<a@b.example >",
]  # fmt: skip
MESSAGE_IDS = ["<1@x>", "<a.b@[192.0.2.1]>", " <x@y> ", "<x@y> (c)", "abc", "<x y@z>", "<é@x>", ""]
ADDRESS_FIELDS = ["From", "To", "Cc", "Bcc", "Sender", "Return-Path"]


@st.composite
def header_blocks(draw: st.DrawFn) -> bytes:
    lines = []
    for field in ADDRESS_FIELDS:
        if draw(st.booleans()) or field in ("From", "To"):
            tokens = draw(st.lists(st.sampled_from(TOKENS), min_size=1, max_size=6))
            lines.append(f"{field}: {''.join(tokens)}")
    if draw(st.booleans()):
        lines.append(f"Message-ID: {draw(st.sampled_from(MESSAGE_IDS))}")
    if draw(st.booleans()):
        lines.append("Date: x")
    block = ("\n".join(lines) + "\n").encode()
    if draw(st.integers(0, 9)) == 0:
        block = block.replace("é".encode(), b"\xe9")  # not UTF-8
    return block


@settings(max_examples=400, deadline=None)
@given(header_blocks())
@example(b"From: a@x.example\nTo: .<a@x.example>\n")  # found by hypothesis
@example(b"From: a@x.example\nTo: .<a@x.example>\nReturn-Path: a(b)@c.example\n")  # ditto
@example(b"From: a @ b.example\nTo: Ann B.<a@[IPv6:::1]>\n")  # ditto: CFWS around "@"
def test_fast_path_agrees_with_the_header_registry(block: bytes) -> None:
    old, new = _outcome(_oracle, block), _outcome(_new, block)
    assert new[0] != "crash", (block, new)
    if old[0] == "crash":
        # the old parser raised IndexError/AttributeError (a poison message that
        # stopped every run); now such a file is refused like any unusable one, or,
        # where the address is unambiguous ("To: .<a@x.example>"), read: every address
        # it returns stands in the block as written, comments and white space aside
        # ("a(b)@c.example", "a @ b.example": CFWS, RFC 5322 §3.2.2)
        assert new[0] in ("error", "ok"), (block, new)
        if new[0] == "ok":
            uncommented = re.sub(rb"\([^()]*\)|[ \t]", b"", block)
            for address in (new[1][0], *new[1][1]):
                assert address.encode() in uncommented, (block, new)
    elif old[0] == "error" and "encoded" in old[1]:
        # the one deliberate difference: an RFC 2047 word in a display name with no
        # white space before "<" ("=?utf-8?q?Jos=C3=A9?=<j@x>") is accepted, since the
        # address is unambiguous and the display name is not used
        pass
    else:
        assert new == old, block


@pytest.mark.parametrize(
    ("to", "recipients"),
    [
        pytest.param("=?utf-8?q?Jos=C3=A9_Doe?= <j@x.example>", ("j@x.example",), id="2047-q"),
        pytest.param("=?utf-8?b?RG9lLCBKb2hu?= <j@x.example>", ("j@x.example",), id="2047-b"),
        pytest.param(
            "=?utf-8?q?Doe,_John?= <j@x.example>, k@x.example",
            ("j@x.example", "k@x.example"),
            id="2047-with-comma",
        ),
        pytest.param("j@x.example (Jo, the boss)", ("j@x.example",), id="trailing-comment"),
        pytest.param('"Doe, John" <j@x.example>', ("j@x.example",), id="quoted-comma"),
        pytest.param("John Q. Public <j@x.example>", ("j@x.example",), id="obs-phrase"),
        pytest.param(
            "team: a@x.example, Bee <b@x.example>;, c@x.example",
            ("a@x.example", "b@x.example", "c@x.example"),
            id="group",
        ),
        pytest.param('"john doe"@x.example', ('"john doe"@x.example',), id="quoted-local"),
        pytest.param("<a@[192.0.2.1]>", ("a@[192.0.2.1]",), id="address-literal"),
        pytest.param("Jürgen <jürgen@bücher.example>", ("jürgen@bücher.example",), id="utf8"),
        pytest.param("a@x.example,\n  b@x.example", ("a@x.example", "b@x.example"), id="folded"),
    ],
)
def test_address_forms(to: str, recipients: tuple[str, ...]) -> None:
    message = parse_message(msg("From: s@x.example", f"To: {to}"))
    assert message.recipients == recipients
    assert message.needs_smtputf8 == (not all(r.isascii() for r in recipients))


def test_plain_fields_never_reach_the_slow_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("email.headerregistry used for a plain field")

    monkeypatch.setattr(envelope_module, "_registry_header", refuse)
    raw = msg(
        "Return-Path: <bounce@x.example>",
        "From: =?utf-8?q?Jos=C3=A9?= <j@x.example>",
        'To: "Doe, J." <j@y.example>, k@y.example (K), Ann B. <a@y.example>',
        "Cc: josé@exämple.com",
        "Message-ID: <1.2@x.example>",
    )
    message = parse_message(raw)
    assert message.recipients == ("j@y.example", "k@y.example", "a@y.example", "josé@exämple.com")
    assert (message.mail_from, message.message_id) == ("bounce@x.example", "<1.2@x.example>")


@pytest.mark.parametrize(
    "to",
    [
        "=?utf-8?q?r=0D=0ARCPT_TO:x?=@y.example",  # the registry decodes it, then refuses
        "<=?utf-8?q?r=0ARCPT_TO:x?=@y.example>",
    ],
)
def test_crlf_never_gets_into_an_address(to: str) -> None:
    # before: the registry's ValueError ("cannot contain CR or LF") stopped the run
    with pytest.raises(MessageError, match=r"^x\.eml: "):
        parse_message(msg("From: a@x.example", f"To: {to}"), name="x.eml")


def test_address_field_that_crashes_the_email_package_is_a_message_error() -> None:
    # email.headerregistry raises AttributeError here ('Group' has no local_part)
    raw = msg("From: undisclosed-recipients:;<a@x.example>", "To: r@y.example")
    with pytest.raises(MessageError, match=r"^x\.eml: From: cannot parse"):
        parse_message(raw, name="x.eml")


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                *(b"To: a@x", b"X-A : b", b" cont", b"\tcont", b"", b"no colon", b"Bad\x00: x"),
                *(b"S: \r", b"S: a\rb", b"S: \xc3\xa9", b":x", b"A:"),
            ]
        ),
        min_size=1,
        max_size=6,
    ),
    st.sampled_from([b"\n", b"\r\n"]),
)
def test_field_split_fast_path_agrees_with_line_by_line(lines: list[bytes], eol: bytes) -> None:
    block = eol.join(lines) + eol

    def outcome(split: Any) -> Any:
        try:
            return [(f.name, f.raw) for f in split(block, "m")]
        except MessageError as exc:
            return str(exc)

    assert outcome(headers_module.split_fields) == outcome(headers_module._split_lines)


@pytest.mark.parametrize(
    ("to", "error"),
    [
        pytest.param("b@[]", "'b@[]' has an invalid domain", id="empty-literal"),
        pytest.param("b@x\u00a0y.example", "has an invalid domain", id="nbsp-in-domain"),
        pytest.param("b\u2003c@y.example", "white space in the local part", id="em-space-local"),
    ],
)
def test_fast_addresses_outside_plain_ascii_are_still_checked(to: str, error: str) -> None:
    """Plain ASCII addresses of the fast grammar skip the checks (they cannot fail
    them); these can, and must still be refused."""
    with pytest.raises(MessageError, match=re.escape(error)):
        parse_message(f"From: a@x.example\nTo: {to}\n\nbody\n".encode())


def test_field_names_in_any_case_are_read_after_the_first_message() -> None:
    """Field names are remembered lower-cased; later spellings of the same name in
    another case still land under that name."""
    first = parse_message(b"From: a@x.example\nTo: b@y.example\n\nx\n")
    again = parse_message(b"FROM: a@x.example\nto: b@y.example\nCC: c@y.example\n\nx\n")
    assert (first.mail_from, first.recipients) == ("a@x.example", ("b@y.example",))
    assert again.recipients == ("b@y.example", "c@y.example")
    assert [f.name for f in again.fields] == ["from", "to", "cc"]


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.sampled_from([b"A: 1", b"\n", b"\r\n", b"\r", b" x", b"From me", b"\n\n", b"\n\r\n"]),
        max_size=14,
    ).map(b"".join)
)
@example(b"A: 1\r\nB: 2\r\n\r\nbody\n\nmore\n")
@example(b"A: 1\nB: 2\n\nbody\r\n\r\n")
def test_head_end_is_the_first_empty_line(data: bytes) -> None:
    """The end of the header block is the first empty line, LF or CRLF (the CRLF
    search bounds the LF one, which no longer runs through the body)."""
    start = 0
    if headers_module.is_mbox_line(data):
        newline = data.find(b"\n")
        start = len(data) + 1 if newline < 0 else newline + 1
    expected, offset = None, start
    for line in data[start:].split(b"\n")[:-1]:  # the lines that end with LF
        if line in (b"", b"\r"):
            expected = offset
            break
        offset += len(line) + 1
    assert headers_module.head_end(data) == expected
