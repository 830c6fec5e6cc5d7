"""What changes the queue (spool/held.py, spool/removal.py, spool/retention.py): hold
and release, delete with its log lines, and retention of sent mail."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from servers import eml, make_spool
from test_queue import deferred, layout_of

from carerix_smtp.errors import InputError, UsageError
from carerix_smtp.spool.held import hold, make_due, release
from carerix_smtp.spool.removal import delete, select
from carerix_smtp.spool.retention import RUN_LIMIT, purge_sent, retain
from carerix_smtp.spool.spool import Spool

DAY = 86400.0


def test_hold_moves_queued_and_deferred_with_the_sidecar(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, 2)
    deferred(spool, "d.eml", due_in=600)
    layout = layout_of(spool)
    assert hold(layout, ["m00000", "d.eml"]) == ["m00000", "d"]
    assert sorted(p.name for p in (spool / "held").iterdir()) == [
        "d.eml",
        "d.eml.json",
        "m00000.eml",
    ]
    assert not (spool / "deferred" / "d.eml.json").exists()
    assert (spool / "m00001.eml").exists()


def test_hold_refuses_unknown_and_failed_messages_before_moving_any(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, 1)
    (spool / "failed").mkdir()
    (spool / "failed" / "f.eml").write_bytes(eml(1))
    layout = layout_of(spool)
    with pytest.raises(InputError, match="'f' is failed; only queued or deferred"):
        hold(layout, ["m00000", "f"])
    with pytest.raises(InputError, match="no message 'nope'"):
        hold(layout, ["m00000", "nope"])
    assert (spool / "m00000.eml").exists()


def test_release_puts_messages_back_due_now(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, 1)
    old = time.time() - 3600
    os.utime(spool / "m00000.eml", (old, old))
    deferred(spool, "d.eml", due_in=3600)
    layout = layout_of(spool)
    hold(layout, [], everything=True)
    assert not list(spool.glob("*.eml")) and not list((spool / "deferred").glob("*.eml"))
    now = time.time()
    assert sorted(release(layout, [], now=now, everything=True)) == ["deferred/d", "m00000"]
    assert (spool / "m00000.eml").stat().st_mtime == pytest.approx(old)  # its place kept
    assert (spool / "deferred" / "d.eml").stat().st_mtime == pytest.approx(now)  # due now
    assert json.loads((spool / "deferred" / "d.eml.json").read_text())["attempts"] == 2
    assert not list((spool / "held").iterdir())


def test_release_refuses_a_message_that_is_not_held(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, 1)
    with pytest.raises(InputError, match="'m00000' is queued; only held messages can be released"):
        release(layout_of(spool), ["m00000"], now=time.time())


def test_make_due_sets_every_future_retry_to_now(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, 0)
    deferred(spool, "later.eml", due_in=3600)
    deferred(spool, "past.eml", due_in=-60)
    now = time.time()
    assert make_due(layout_of(spool), now) == 1
    assert (spool / "deferred" / "later.eml").stat().st_mtime == pytest.approx(now)


def test_delete_refuses_more_than_one_without_confirmation(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, 3)
    layout = layout_of(spool)
    chosen = select(layout, [], everything=True)
    with pytest.raises(UsageError, match="would delete 3 messages; add --yes") as caught:
        delete(layout, chosen, lambda line: None, confirmed=False)
    assert caught.value.exit_code == 64
    assert len(list(spool.glob("*.eml"))) == 3


def test_delete_removes_message_and_record_and_logs_each(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, 1)
    deferred(spool, "d.eml", due_in=60)
    target = Spool(spool, durable=False)
    with target.lock() as locked:
        assert locked
        chosen = select(target.layout, ["d", "m00000"])
        done = delete(target.layout, chosen, target.log_delivery, confirmed=True)
    assert [r.id for r in done] == ["d", "m00000"]
    assert not list((spool / "deferred").iterdir()) and not list(spool.glob("*.eml"))
    log = [json.loads(x) for x in (spool / ".cxsmtp" / "delivery.log").read_text().splitlines()]
    assert [(x["file"], x["outcome"], x["from"]) for x in log] == [
        ("d.eml", "deleted", "deferred"),
        ("m00000.eml", "deleted", "queued"),
    ]


def test_delete_by_state_selects_only_that_state(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, 2)
    (spool / "failed").mkdir()
    (spool / "failed" / "f.eml").write_bytes(eml(1))
    chosen = select(layout_of(spool), [], state="failed")
    assert [(r.state, r.id) for r in chosen] == [("failed", "f")]
    with pytest.raises(UsageError, match="one of them"):
        select(layout_of(spool), ["f"], state="failed")


def _sent_spool(tmp_path: Path, now: float) -> Path:
    """sent/ with messages, a legacy record and day files of several ages."""
    spool = make_spool(tmp_path, 0)
    sent = spool / "sent"
    sent.mkdir()
    for name, age_days in (
        ("old1.eml", 10),
        ("old2.eml", 8),
        ("new.eml", 2),
        ("legacy.eml.json", 9),
    ):
        (sent / name).write_bytes(b"x")
        when = now - age_days * DAY
        os.utime(sent / name, (when, when))
    for day_age in (9, 8, 7, 6, 0):
        name = time.strftime("records-%Y-%m-%d.jsonl", time.gmtime(now - day_age * DAY))
        (sent / name).write_text('{"name":"x.eml"}\n')
    return spool


def test_purge_removes_exactly_what_is_older_than_the_cutoff(tmp_path: Path) -> None:
    now = time.time()
    spool = _sent_spool(tmp_path, now)
    report = purge_sent(layout_of(spool), now - 7 * DAY)
    left = sorted(p.name for p in (spool / "sent").iterdir())
    recent = [
        time.strftime("records-%Y-%m-%d.jsonl", time.gmtime(now - d * DAY)) for d in (7, 6, 0)
    ]
    # a day file goes when its whole UTC day is before the cutoff: the one 7 days
    # back ends after it (unless now is exactly midnight) and stays
    assert left == sorted(["new.eml", *recent])
    assert (report.messages, report.records, report.complete) == (2, 3, True)


def test_purge_never_touches_the_queue(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, 2)
    old = time.time() - 100 * DAY
    for path in spool.glob("*.eml"):
        os.utime(path, (old, old))
    purge_sent(layout_of(spool), time.time())
    assert len(list(spool.glob("*.eml"))) == 2


def test_retention_in_a_run_is_bounded_and_scans_at_most_hourly(tmp_path: Path) -> None:
    now = time.time()
    spool = _sent_spool(tmp_path, now)
    layout = layout_of(spool)
    layout.prepare()
    first = retain(layout, 7 * DAY, now)
    assert first is not None and (first.messages, first.records) == (2, 3)
    (spool / "sent" / "late.eml").write_bytes(b"x")
    os.utime(spool / "sent" / "late.eml", (now - 30 * DAY, now - 30 * DAY))
    assert retain(layout, 7 * DAY, now + 60) is None  # scanned a minute ago
    assert (spool / "sent" / "late.eml").exists()
    again = retain(layout, 7 * DAY, now + 3601)
    assert again is not None and again.messages == 1
    assert RUN_LIMIT == 10_000


def test_retention_stops_at_its_limit_and_goes_on_next_time(tmp_path: Path) -> None:
    now = time.time()
    spool = _sent_spool(tmp_path, now)
    layout = layout_of(spool)
    layout.prepare()
    partial = purge_sent(layout, now - 7 * DAY, limit=2)
    assert (partial.messages + partial.records, partial.complete) == (2, False)
    rest = purge_sent(layout, now - 7 * DAY, limit=2)
    assert rest.messages + rest.records == 2
