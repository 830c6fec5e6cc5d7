"""stdin -> spool file (carerix_smtp/sendmail/compose.py), checked through the spool's
own parser: the envelope the spool will use and the copy it will transmit."""

from __future__ import annotations

import pytest

from carerix_smtp.errors import MessageError, UsageError
from carerix_smtp.sendmail.compose import compose, default_sender, read_body
from carerix_smtp.sendmail.options import parse_options
from carerix_smtp.spool.message import parse_message

PHP = (
    b"To: to@y.example\r\nCc: cc@y.example\r\nBcc: hidden@z.example\r\n"
    b"From: shop@x.example\r\nSubject: order\r\n\r\nline 1\r\n.\r\nline 3\r\n"
)


def build(argv: list[str], data: bytes):  # type: ignore[no-untyped-def]
    return parse_message(compose(data, parse_options(argv)), name="t")


def test_t_takes_to_cc_bcc_and_strips_bcc() -> None:
    msg = build(["-t", "-i"], PHP)
    assert msg.recipients == ("to@y.example", "cc@y.example", "hidden@z.example")
    assert msg.mail_from == "shop@x.example"
    sent = msg.transmitted()
    assert b"hidden@z.example" not in sent
    assert b"\nline 1\n.\nline 3\n" in sent  # -i: the "." line is text
    assert msg.message_id and msg.has_date  # added


def test_t_minus_recipients_named_on_the_command_line() -> None:
    msg = build(["-t", "-i", "hidden@z.example"], PHP)
    assert msg.recipients == ("to@y.example", "cc@y.example")


def test_lone_dot_ends_the_message_without_i() -> None:
    sent = build(["-t"], PHP).transmitted()
    assert sent.endswith(b"\nline 1\n")
    assert b"line 3" not in sent


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_read_body_line_endings(eol: bytes) -> None:
    data = eol.join([b"Subject: x", b"", b"a", b".", b"b", b""])
    assert read_body(data, dot_ends=True) == b"Subject: x\n\na\n"
    assert read_body(data, dot_ends=False) == b"Subject: x\n\na\n.\nb\n"
    assert read_body(b"x\n..\ny\n", dot_ends=True) == b"x\n..\ny\n"  # only a lone "."


def test_f_sets_the_envelope_sender_not_from() -> None:
    msg = build(["-f", "bounce@x.example", "-t", "-i", "r@y.example"], PHP)
    assert msg.mail_from == "bounce@x.example"
    assert msg.from_address == "shop@x.example"
    assert b"Return-Path" not in msg.transmitted()
    assert "r@y.example" not in msg.recipients  # -t minus the arguments


def test_input_return_path_is_replaced() -> None:
    data = b"Return-Path: <old@x.example>\nFrom: a@x.example\n\nbody\n"
    assert build(["r@y.example"], data).mail_from == "a@x.example"
    assert build(["-f", "new@x.example", "r@y.example"], data).mail_from == "new@x.example"


def test_recipients_as_arguments_go_in_bcc() -> None:
    msg = build(["r1@y.example", "r2@y.example"], b"Subject: hi\n\nbody\n")
    assert msg.recipients == ("r1@y.example", "r2@y.example")
    assert b"r1@y.example" not in msg.transmitted()


def test_argument_already_in_to_is_not_duplicated() -> None:
    msg = build(["to@y.example"], b"To: to@y.example\nSubject: hi\n\nbody\n")
    assert msg.recipients == ("to@y.example",)
    assert b"Bcc" not in compose(b"To: to@y.example\n\nb\n", parse_options(["to@y.example"]))


def test_from_added_from_f_and_F() -> None:
    msg = build(["-f", "me@x.example", "-F", "Jan Z", "r@y.example"], b"Subject: hi\n\nb\n")
    assert b"From: Jan Z <me@x.example>\n" in msg.transmitted()
    assert msg.mail_from == "me@x.example"


def test_from_added_from_the_user_without_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    monkeypatch.setattr("getpass.getuser", lambda: "www-data")
    monkeypatch.setattr(socket, "gethostname", lambda: "web1.example")
    monkeypatch.setattr(socket, "getfqdn", lambda *a: pytest.fail("DNS lookup"))
    assert default_sender() == "www-data@web1.example"
    msg = build(["r@y.example"], b"Subject: hi\n\nb\n")
    assert msg.from_address == "www-data@web1.example"
    assert msg.message_id is not None and msg.message_id.endswith("@web1.example>")


def test_body_without_headers() -> None:
    msg = build(["r@y.example"], b"just text\nmore text\n")
    assert msg.recipients == ("r@y.example",)
    assert msg.transmitted().endswith(b"\n\njust text\nmore text\n")


def test_no_recipients() -> None:
    with pytest.raises(UsageError, match="no recipients"):
        compose(b"Subject: x\n\nb\n", parse_options([]))
    with pytest.raises(MessageError, match="no recipients"):
        compose(b"Subject: x\n\nb\n", parse_options(["-t"]))


def test_empty_input_and_bad_address() -> None:
    with pytest.raises(MessageError, match="no message"):
        compose(b"", parse_options(["r@y.example"]))
    with pytest.raises(MessageError):
        compose(b"To: not an address\n\nb\n", parse_options(["-t"]))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["member@z.example", "other@y.example"], ("member@z.example", "other@y.example")),
        (["-t", "to@y.example"], ("other@y.example", "b@z.example")),
    ],
    ids=["list-address-in-to", "t-minus-a-to-address"],
)
def test_visible_address_that_is_not_a_recipient_gets_an_envelope_field(
    argv: list[str], expected: tuple[str, ...]
) -> None:
    """To names someone who is not a recipient: the recipients go in X-Cxsmtp-Envelope-To,
    which the spool takes instead of To/Cc/Bcc and never transmits."""
    data = b"To: to@y.example, other@y.example\nBcc: b@z.example\nSubject: list mail\n\nb\n"
    spool_file = compose(data, parse_options(argv))
    assert b"\nX-Cxsmtp-Envelope-To: " in spool_file and b"\nBcc:" not in spool_file
    msg = parse_message(spool_file, name="t")
    assert msg.recipients == expected
    sent = msg.transmitted()
    assert b"X-Cxsmtp-Envelope-To" not in sent and b"b@z.example" not in sent
    assert b"To: to@y.example, other@y.example\n" in sent  # the header is kept as written


def test_recipients_that_to_names_keep_the_bcc_form() -> None:
    """Every To/Cc address a recipient: the others go in Bcc, as earlier versions wrote."""
    spool_file = compose(b"To: a@y.example\n\nb\n", parse_options(["a@y.example", "m@z.example"]))
    assert b"\nBcc: m@z.example\n" in spool_file and b"X-Cxsmtp" not in spool_file
    assert parse_message(spool_file, name="t").recipients == ("a@y.example", "m@z.example")


def test_envelope_field_holds_many_recipients_one_per_line() -> None:
    members = [f"member{i}@z.example" for i in range(500)]
    spool_file = compose(b"To: list@y.example\n\nb\n", parse_options(members))
    head = spool_file.partition(b"\n\n")[0]
    assert max(len(line) for line in head.split(b"\n")) < 100
    assert parse_message(spool_file, name="t").recipients == tuple(members)


@pytest.mark.parametrize("argv", [["a@y.example"], ["-t"], ["list@y.example", "b@y.example"]])
def test_an_envelope_field_in_the_input_adds_no_recipient(argv: list[str]) -> None:
    data = b"To: a@y.example\nX-Cxsmtp-Envelope-To: intruder@z.example\n\nb\n"
    spool_file = compose(data, parse_options(argv))
    assert b"intruder" not in spool_file
    assert "intruder@z.example" not in parse_message(spool_file, name="t").recipients


def test_a_line_break_in_a_recipient_is_refused() -> None:
    with pytest.raises(UsageError, match="line break"):
        compose(b"To: list@y.example\n\nb\n", parse_options(["a@z.example\nBcc: x@y"]))
