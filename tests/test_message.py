"""message.py: envelope, Bcc stripping, Message-ID/Date, capability detection."""

from __future__ import annotations

from datetime import datetime, timezone
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from carerix_smtp.errors import MessageError
from carerix_smtp.message import (
    complete_headers,
    make_message_id,
    parse_message,
    read_message,
    recipient_key,
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


def test_read_message_finds_8bit_bytes_far_in_the_body(tmp_path: Path) -> None:
    path = tmp_path / "late8bit.eml"
    path.write_bytes(msg("From: a@x.example", "To: r@y.example", body="a" * (2 << 20) + "é"))
    assert read_message(path).needs_8bitmime


def test_read_message_without_end_of_header(tmp_path: Path) -> None:
    path = tmp_path / "noend.eml"
    path.write_bytes(b"X-Junk: " + b"y" * (9 << 20))
    with pytest.raises(MessageError, match="no end of the header block"):
        read_message(path)
