"""Sent messages' records in day files (spool/sent_log.py, records.read_records):
written once, redone once after a crash, read back with the records that earlier
versions wrote as ``sent/NAME.eml.json`` (issue 12)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from servers import sent_lines, sent_record

from carerix_smtp.spool.claims import Claim
from carerix_smtp.spool.outcomes import journal_head
from carerix_smtp.spool.records import (
    MessageState,
    RecipientResult,
    day_file,
    dumps,
    iso,
    json_text,
    read_record,
    read_records,
)
from carerix_smtp.spool.spool import Spool

T0 = 1_700_000_000.0  # 2023-11-14 UTC
FIXTURE = Path(__file__).parent / "fixtures" / "legacy-spool"
FIXTURE_T0 = 1_764_500_000.0  # the clock make_fixture.py ran with (fixtures/README.md)


def eml(n: int) -> bytes:
    return f"From: a@x.example\nTo: r@y.example\nMessage-ID: <{n}@test>\n\nbody {n}\n".encode()


def put(directory: Path, name: str, data: bytes, mtime: float) -> None:
    (directory / name).write_bytes(data)
    os.utime(directory / name, (mtime, mtime))


def sent_state(name: str, *, refused: str | None = None) -> MessageState:
    state = MessageState(name=name, accepted={"r@y.example": RecipientResult(250, None, "ok", T0)})
    if refused:
        state.failed[refused] = RecipientResult(550, "5.1.1", "no such user", T0)
    return state


def send(spool: Spool, name: str, *, refused: str | None = None) -> Path:
    candidate = next(c for c in spool.candidates() if c.name == name)
    claim = spool.claim(candidate)
    assert claim is not None
    return spool.record_outcome(claim, sent_state(name, refused=refused))


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    (tmp_path / "spool").mkdir()
    s = Spool(tmp_path / "spool", clock=lambda: T0)
    s.prepare()
    return s


def test_records_of_one_day_share_a_file_one_line_each(spool: Spool) -> None:
    for i in range(3):
        put(spool.path, f"m{i}.eml", eml(i), T0 - 10 + i)
        send(spool, f"m{i}.eml")
    assert sorted(os.listdir(spool.dir("sent"))) == [
        "m0.eml",
        "m1.eml",
        "m2.eml",
        "records-2023-11-14.jsonl",
    ]
    assert sent_lines(spool.path) == ["m0.eml", "m1.eml", "m2.eml"]
    assert [s.name for s in spool.candidates()] == []  # a day file is never a message
    assert spool.status().sent.count == 3


def test_a_new_day_starts_a_new_file(tmp_path: Path) -> None:
    now = [T0]
    spool = Spool(tmp_path, clock=lambda: now[0])
    spool.prepare()
    put(spool.path, "a.eml", eml(1), T0 - 10)
    put(spool.path, "b.eml", eml(2), T0 - 9)
    send(spool, "a.eml")
    now[0] = T0 + 86_400
    send(spool, "b.eml")
    days = sorted(p.name for p in spool.dir("sent").glob("records-*"))
    assert days == [day_file(T0), day_file(T0 + 86_400)]
    assert {s.name for s in read_records(spool._layout, "sent")} == {"a.eml", "b.eml"}


def test_a_torn_last_line_does_not_swallow_the_next_record(spool: Spool) -> None:
    put(spool.path, "a.eml", eml(1), T0 - 10)
    put(spool.path, "b.eml", eml(2), T0 - 9)
    send(spool, "a.eml")
    day = spool.dir("sent") / day_file(T0)
    day.write_bytes(day.read_bytes()[:-40])  # a crash in the middle of the write
    send(Spool(spool.path, clock=lambda: T0), "b.eml")  # the next run
    assert sent_record(spool.path, "b.eml")["status"] == "sent"
    assert [s.name for s in read_records(spool._layout, "sent")] == ["b.eml"]


def test_recovery_puts_back_a_lost_line_once(spool: Spool) -> None:
    put(spool.path, "a.eml", eml(1), T0 - 10)
    put(spool.path, "b.eml", eml(2), T0 - 9)
    send(spool, "a.eml")
    send(spool, "b.eml")
    day = spool.dir("sent") / day_file(T0)
    first = len(day.read_bytes().splitlines(keepends=True)[0])
    day.write_bytes(day.read_bytes()[: first + 30])  # power failure: b's line torn, journal kept
    Spool(spool.path, clock=lambda: T0).recover()
    assert sent_record(spool.path, "b.eml")["status"] == "sent"
    assert sent_lines_readable(spool.path) == ["a.eml", "b.eml"]
    Spool(spool.path, clock=lambda: T0).recover()  # nothing left to redo
    assert sent_lines_readable(spool.path) == ["a.eml", "b.eml"]


def sent_lines_readable(spool: Path) -> list[str]:
    out = []
    for line in (spool / "sent" / day_file(T0)).read_bytes().splitlines():
        try:
            out.append(json.loads(line)["name"])
        except ValueError:
            continue
    return out


def test_recovery_of_an_intact_day_file_writes_no_second_line(spool: Spool) -> None:
    put(spool.path, "a.eml", eml(1), T0 - 10)
    send(spool, "a.eml")  # killed before the checkpoint: the journal keeps the line
    assert spool.journal_path.stat().st_size > 0
    Spool(spool.path, clock=lambda: T0).recover()
    assert sent_lines(spool.path) == ["a.eml"]
    assert spool.journal_path.stat().st_size == 0


def test_read_records_sees_old_and_new_records_of_messages_in_sent(spool: Spool) -> None:
    # an earlier version's sent message: NAME.eml.json beside it
    put(spool.dir("sent"), "old.eml", eml(1), T0 - 100)
    old = sent_state("old.eml", refused="gone@y.example")
    old.status = "sent"
    (spool.dir("sent") / "old.eml.json").write_text(json.dumps(old.to_json()))
    put(spool.path, "new.eml", eml(2), T0 - 10)
    send(spool, "new.eml", refused="bad@y.example")
    put(spool.path, "cleaned.eml", eml(3), T0 - 5)
    send(spool, "cleaned.eml", refused="x@y.example")
    (spool.dir("sent") / "cleaned.eml").unlink()  # the operator removed it: not reported
    names = sorted(s.name for s in read_records(spool._layout, "sent"))
    assert names == ["new.eml", "old.eml"]
    status = spool.status()
    assert status.sent.count == 2 and status.recipients_failed == 2
    rows = [(r.message, r.recipient) for r in status.undelivered]
    assert rows == [("sent/new.eml", "bad@y.example"), ("sent/old.eml", "gone@y.example")]
    layout = spool._layout
    assert read_record(layout, "sent", "old.eml") == MessageState.from_json(old.to_json())
    new = read_record(layout, "sent", "new.eml")
    assert new is not None and list(new.failed) == ["bad@y.example"]
    assert read_record(layout, "sent", "nope.eml") is None


def test_a_name_used_again_reads_its_newest_record(spool: Spool) -> None:
    put(spool.path, "m.eml", eml(1), T0 - 10)
    send(spool, "m.eml", refused="first@y.example")
    (spool.dir("sent") / "m.eml").unlink()
    put(spool.path, "m.eml", eml(2), T0 - 5)
    send(spool, "m.eml")
    (state,) = read_records(spool._layout, "sent")
    assert state.failed == {}
    found = read_record(spool._layout, "sent", "m.eml")
    assert found is not None and found.failed == {}


# --- a spool left by the previous version (fixtures/legacy-spool) ----------------------


def legacy_copy(tmp_path: Path) -> Path:
    """The fixture copied, with what git cannot keep put back: the journal's file
    identities (device, inode, mtime of the copies) and the deferred message's
    next-attempt time."""
    root = tmp_path / "legacy"
    shutil.copytree(FIXTURE, root)
    journal = root / ".cxsmtp" / "journal"
    lines = []
    for raw in journal.read_bytes().splitlines():
        line = json.loads(raw)
        claimed = root / ".cxsmtp" / "claims" / line["claim"]
        path = claimed if claimed.exists() else root / line["dest"] / line["name"]
        st = path.stat()
        line["file"] = [st.st_dev, st.st_ino, st.st_size, st.st_mtime]
        lines.append(json.dumps(line) + "\n")
    journal.write_text("".join(lines))
    due = FIXTURE_T0 + 300
    os.utime(root / "deferred" / "old-deferred.eml", (due, due))
    return root


def test_a_spool_of_the_previous_version_recovers_and_reads(tmp_path: Path) -> None:
    root = legacy_copy(tmp_path)
    spool = Spool(root, clock=lambda: FIXTURE_T0)
    report = spool.recover()
    assert report.completed == ["sent/claimed-sent.eml"]
    assert report.requeued == ["inflight.eml"]
    # the records the old run left are read; the two it had not finished are redone,
    # in the new format, once
    assert sorted(s.name for s in read_records(spool._layout, "sent")) == [
        "claimed-sent.eml",
        "old-partial.eml",
        "old-sent.eml",
        "redo-sent.eml",
    ]
    assert sorted(sent_lines(root)) == ["claimed-sent.eml", "redo-sent.eml"]
    assert sent_record(root, "redo-sent.eml")["message_id"] == "<redo-sent.eml@legacy>"
    assert (root / "sent" / "old-sent.eml.json").exists()  # upgrade in place: not rewritten
    status = spool.status(now=FIXTURE_T0)
    assert (status.sent.count, status.deferred.count, status.queued.count) == (4, 1, 1)
    assert status.recipients_failed == 1 and status.partial == 1
    # the deferred sidecar still says who has it: a@ does not get it again
    claim = spool.claim(next(c for c in spool.candidates(now=FIXTURE_T0 + 300)))
    assert claim is not None and claim.state is not None
    assert list(claim.state.accepted) == ["a@y.example"]
    spool.requeue(claim)
    Spool(root, clock=lambda: FIXTURE_T0).recover()  # again: nothing to redo, no duplicate
    assert sorted(sent_lines(root)) == ["claimed-sent.eml", "redo-sent.eml"]
    # and the new version sends on, into the day file
    send_new = Spool(root, clock=lambda: FIXTURE_T0)
    claim = send_new.claim(next(c for c in send_new.candidates() if c.name == "inflight.eml"))
    assert claim is not None
    send_new.record_outcome(claim, sent_state("inflight.eml"))
    assert sent_record(root, "inflight.eml")["status"] == "sent"


def test_an_outcome_at_midnight_goes_where_its_journal_line_says(tmp_path: Path) -> None:
    times = [T0]
    spool = Spool(tmp_path, clock=lambda: times.pop(0) if len(times) > 1 else times[0])
    spool.prepare()
    put(spool.path, "m.eml", eml(1), T0 - 10)
    claim = spool.claim(spool.candidates(now=T0)[0])
    assert claim is not None
    times[:] = [T0, T0 + 86_400]  # the day changes between the journal line and the record
    spool.record_outcome(claim, sent_state("m.eml"))
    line = json.loads(spool.journal_path.read_bytes())
    assert line["at"] == [day_file(T0), 0]
    assert os.path.getsize(spool.dir("sent") / day_file(T0)) > 0
    assert not (spool.dir("sent") / day_file(T0 + 86_400)).exists()


def _about(claim: Claim, name: str, at: tuple[str, int] | None) -> bytes:
    about: dict[str, object] = {
        "claim": claim.key,
        "dest": "sent",
        "name": name,
        "file": [claim.dev, claim.ino, claim.size, claim.mtime],
    }
    if at is not None:
        about["at"] = list(at)
    return dumps(about)[:-1]


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("m.eml", id="ascii"),
        pytest.param('é "q" \\ \n.eml', id="escapes"),
        pytest.param("bad\udcff.eml", id="lone-surrogate"),
    ],
)
@pytest.mark.parametrize("at", [None, ("records-2023-11-14.jsonl", 123)], ids=["no-at", "at"])
@pytest.mark.parametrize("mtime", [T0 + 0.123456, 1e-7, 0.0], ids=["now", "tiny", "zero"])
def test_journal_head_is_what_dumps_makes(
    name: str, at: tuple[str, int] | None, mtime: float
) -> None:
    """The journal line's head is formatted directly; recovery reads it with json,
    so the bytes must be those dumps() made before (a lone surrogate: ASCII escapes)."""
    claim = Claim("queued", name, Path(name), f"queued/t1~{name}", 2025, mtime, "file", None, 7, 9)
    head = journal_head(claim, "sent", name, at)
    assert head == _about(claim, name, at)
    assert json.loads(head + b"}")["name"] == name


@settings(max_examples=1000, deadline=None)
@given(st.one_of(st.text(), st.text(st.characters(codec="ascii")), st.integers(), st.none()))
def test_json_text_is_what_the_encoder_makes(value: object) -> None:
    """json_text formats plain strings itself (names and keys, a few per message):
    the text must be the encoder's, escapes and lone surrogates included."""
    assert json_text(value) == json.dumps(value, ensure_ascii=False, separators=(",", ":"))


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(), _JSON_VALUES, max_size=6))
def test_dumps_is_what_the_encoder_makes(record: dict[str, object]) -> None:
    """dumps reuses one C encoder for records: the bytes must be json.dumps's, with
    ASCII escapes when a lone surrogate cannot be UTF-8."""
    try:
        expected = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:
        expected = json.dumps(record, separators=(",", ":")).encode("ascii")
    assert dumps(record) == expected


def test_day_file_and_iso_across_midnight() -> None:
    """Both cache what they formatted; a time on either side of midnight (and back:
    a clock stepped back) still gets its own day and second."""
    midnight = 1_700_006_400.0  # 2023-11-15T00:00:00Z
    times = [midnight - 0.5, midnight, midnight + 0.5, midnight - 1.0, midnight + 86_400]
    assert [day_file(t) for t in times] == [
        "records-2023-11-14.jsonl",
        "records-2023-11-15.jsonl",
        "records-2023-11-15.jsonl",
        "records-2023-11-14.jsonl",
        "records-2023-11-16.jsonl",
    ]
    assert [iso(t) for t in times] == [
        "2023-11-14T23:59:59+00:00",
        "2023-11-15T00:00:00+00:00",
        "2023-11-15T00:00:00+00:00",
        "2023-11-14T23:59:59+00:00",
        "2023-11-16T00:00:00+00:00",
    ]
    assert iso(-0.5) == "1969-12-31T23:59:59+00:00"
