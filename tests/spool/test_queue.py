"""The queue as the admin sees it (spool/queue.py): entries with their envelope, the
fast envelope scan against the sender's own parser, ``show``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from servers import eml, make_spool

from carerix_smtp.errors import InputError, UsageError
from carerix_smtp.spool.envelope_scan import HEAD_READ, fast_envelope
from carerix_smtp.spool.layout import SpoolLayout
from carerix_smtp.spool.message import parse_message
from carerix_smtp.spool.queue import (
    list_queue,
    message_id_of,
    show,
    states_for,
)


def layout_of(spool: Path) -> SpoolLayout:
    return SpoolLayout(spool, durable=False, clock=time.time)


def deferred(spool: Path, name: str, *, due_in: float, reply: str = "451 4.7.1 slow down") -> None:
    """A deferred message with its sidecar, next attempt in ``due_in`` seconds."""
    (spool / "deferred").mkdir(exist_ok=True)
    path = spool / "deferred" / name
    path.write_bytes(eml(7, to="p@y.example, done@y.example"))
    code, enhanced, text = reply.split(" ", 2)
    record = {
        "name": name,
        "status": "deferred",
        "mail_from": "a@x.example",
        "attempts": 2,
        "queued_at": "2026-11-01T10:00:00Z",
        "recipients": {
            "accepted": {
                "done@y.example": {"code": 250, "text": "ok", "time": "2026-11-01T10:05:00Z"}
            },
            "failed": {},
            "pending": {
                "p@y.example": {
                    "code": int(code),
                    "enhanced": enhanced,
                    "text": text,
                    "time": "2026-11-01T10:05:00Z",
                }
            },
        },
    }
    (spool / "deferred" / f"{name}.json").write_text(json.dumps(record))
    when = time.time() + due_in
    os.utime(path, (when, when))


def test_list_reads_the_envelope_of_queued_messages_oldest_first(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, 3)
    for n, age in enumerate((10, 30, 20)):
        when = time.time() - age
        os.utime(spool / f"m{n:05d}.eml", (when, when))
    entries = list(list_queue(layout_of(spool), states_for("pending")))
    assert [e.id for e in entries] == ["m00001", "m00002", "m00000"]
    first = entries[0]
    assert (first.state, first.sender, first.recipients) == (
        "queued",
        "a@x.example",
        ["r1@y.example"],
    )
    assert first.size == (spool / "m00001.eml").stat().st_size
    assert first.next_retry is None and first.problem is None


def test_deferred_entries_come_from_the_sidecar(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, 0)
    deferred(spool, "d.eml", due_in=600)
    [entry] = list(list_queue(layout_of(spool), states_for("deferred")))
    assert entry.recipients == ["p@y.example"]  # only the pending one
    assert entry.attempts == 2
    assert entry.last_reply == "p@y.example: 451 4.7.1 slow down"
    assert entry.next_retry == pytest.approx((spool / "deferred" / "d.eml").stat().st_mtime)
    assert time.strftime("%Y-%m-%d", time.gmtime(entry.queued_at)) == "2026-11-01"


def test_states_select_directories_and_sent_is_never_listed(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, 1)
    deferred(spool, "d.eml", due_in=60)
    for sub in ("held", "failed", "sent"):
        (spool / sub).mkdir(exist_ok=True)
        (spool / sub / f"{sub}1.eml").write_bytes(eml(1))
    layout = layout_of(spool)
    assert [e.state for e in list_queue(layout, states_for("pending"))] == [
        "queued",
        "deferred",
        "held",
    ]
    assert [e.id for e in list_queue(layout, states_for("all"))] == [
        "m00000",
        "d",
        "held1",
        "failed1",
    ]
    assert [e.id for e in list_queue(layout, states_for("failed"))] == ["failed1"]


def test_unknown_state_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown state 'sent'; accepted: pending, all"):
        states_for("sent")


def test_an_unparseable_file_is_listed_with_its_problem(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, 0)
    (spool / "bad.eml").write_bytes(b"Subject: no addresses\n\nbody\n")
    [entry] = list(list_queue(layout_of(spool), ("queued",)))
    assert entry.sender is None
    assert entry.problem is not None and "no sender" in entry.problem


def test_a_header_block_longer_than_the_first_read_goes_to_the_full_reader(
    tmp_path: Path,
) -> None:
    spool = make_spool(tmp_path, 0)
    filler = "".join(f"X-Filler-{i}: {'x' * 70}\n" for i in range(HEAD_READ // 60))
    (spool / "long.eml").write_bytes(
        (filler + "From: a@x.example\nTo: late@y.example\n\nbody\n").encode()
    )
    [entry] = list(list_queue(layout_of(spool), ("queued",)))
    assert (entry.sender, entry.recipients) == ("a@x.example", ["late@y.example"])


FAST_CASES = {
    "plain": b"From: a@x.example\nTo: r@y.example\n",
    "to before from": b"To: Bob <r@y.example>\nSubject: s\nfrom: a@x.example\n",
    "two froms": b"From: a@x\nFrom: b@x\nTo: r@y\n",
    "display names": b"From: Jan <a@x.example>\nTo: Bob <b@y.example>, c@y.example\n",
    "folded list": b"From: a@x\nTo: b@y,\n c@z\nBcc: B@Y\nTo: q@r\n",
    "dedup on the domain": b"From: a@x\nTo: Bob <b@Y.example>, b@y.example\nCc: b@y.EXAMPLE\n",
    "sender wins over from": b"From: a@x\nSender: s@x\nTo: r@y\n",
    "return path wins": b"Return-Path: <bounce@x>\nFrom: a@x\nTo: r@y\n",
    "null return path": b"Return-Path: <>\nFrom: a@x\nTo: r@y\n",
    "crlf": b"From: a@x.example\r\nTo: r@y.example\r\nCc: c@y.example\r\n",
    "encoded display name": b"From: =?utf-8?q?J=C3=B6rg?= <a@x>\nTo: r@y\n",
    "envelope field": b"From: a@x\nTo: list@y\nX-Cxsmtp-Envelope-To: m1@z,\n m2@z\nBcc: b@z\n",
    "envelope field, no to": b"x-cxsmtp-envelope-to: m@z\nFrom: a@x\n",
    "envelope field, one": b"From: a@x\nTo: list@y\nX-CXSMTP-ENVELOPE-TO: <m@z>\n",
}
SLOW_CASES = {
    "quoted name": b'From: "Doe, Jan" <a@x>\nTo: r@y\n',
    "group": b"From: a@x\nTo: undisclosed-recipients:;\nBcc: r@y\n",
    "comment": b"From: a@x (Jan)\nTo: r@y\n",
    "encoded word in an address": b"From: a@x\nTo: =?utf-8?q?r?=@y\n",
    "no recipients": b"From: a@x\nSubject: none\n",
    "empty envelope field": b"From: a@x\nTo: r@y\nX-Cxsmtp-Envelope-To:\n",
}


@pytest.mark.parametrize("block", FAST_CASES.values(), ids=FAST_CASES.keys())
def test_the_fast_envelope_agrees_with_the_senders_parser(block: bytes) -> None:
    message = parse_message(block + b"\nbody\n")
    assert fast_envelope(block) == (message.mail_from, list(message.recipients))


@pytest.mark.parametrize("block", SLOW_CASES.values(), ids=SLOW_CASES.keys())
def test_the_fast_envelope_leaves_anything_unusual_to_the_parser(block: bytes) -> None:
    assert fast_envelope(block) is None


@pytest.mark.parametrize(
    ("typed", "expected"),
    [("m1", "m1"), ("m1.eml", "m1"), ("/spool/deferred/m1.eml", "m1"), ("m1.eml.json", "m1")],
)
def test_queue_ids_accept_names_and_paths(typed: str, expected: str) -> None:
    assert message_id_of(typed) == expected


@pytest.mark.parametrize("typed", ["", ".", "..", ".hidden"])
def test_queue_ids_refuse_what_is_no_name(typed: str) -> None:
    with pytest.raises(UsageError):
        message_id_of(typed)


def test_show_gives_record_headers_and_the_delivery_log(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, 0)
    deferred(spool, "d.eml", due_in=60)
    state_dir = spool / ".cxsmtp"
    state_dir.mkdir()
    lines = [
        {"time": "2026-11-01T10:05:00Z", "file": "d.eml", "server": "s1", "outcome": "deferred"},
        {"time": "2026-11-01T10:06:00Z", "file": "other.eml", "outcome": "sent"},
    ]
    (state_dir / "delivery.log").write_text("".join(json.dumps(x) + "\n" for x in lines))
    detail = show(layout_of(spool), "d")
    assert (detail.state, detail.id) == ("deferred", "d")
    assert detail.record is not None and list(detail.record.accepted) == ["done@y.example"]
    assert [line["server"] for line in detail.log] == ["s1"]
    assert detail.head.startswith(b"From: a@x.example\n") and b"body" not in detail.head
    data = detail.to_json()
    assert data["record"]["recipients"]["pending"]["p@y.example"]["code"] == 451


def test_show_of_an_unknown_id_is_exit_66(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, 1)
    with pytest.raises(InputError, match="no message 'nope'") as caught:
        show(layout_of(spool), "nope")
    assert caught.value.exit_code == 66


def test_show_of_a_sent_message_finds_its_line_in_the_day_file(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, 0)
    (spool / "sent").mkdir()
    (spool / "sent" / "s.eml").write_bytes(eml(3))
    line = {
        "name": "s.eml",
        "status": "sent",
        "attempts": 1,
        "server": "relay",
        "recipients": {"accepted": {"r3@y.example": {"code": 250, "text": "ok"}}},
    }
    (spool / "sent" / "records-2026-11-30.jsonl").write_text(json.dumps(line) + "\n")
    detail = show(layout_of(spool), "s")
    assert detail.state == "sent"
    assert detail.record is not None and detail.record.server == "relay"
    assert list(detail.record.accepted) == ["r3@y.example"]
    assert detail.entry is not None and detail.entry.recipients == []  # none pending
