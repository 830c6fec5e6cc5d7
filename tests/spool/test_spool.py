"""spool/ (Spool and its collaborators): layout, listing order, lock, claims, journal, recovery,
status, retry, enqueue."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from servers import sent_lines, sent_record

from carerix_smtp.errors import ExitCode, InputError, MessageError, SpoolError, StorageError
from carerix_smtp.spool.records import MessageState, RecipientResult, backoff, day_file
from carerix_smtp.spool.sent_log import SentLog
from carerix_smtp.spool.spool import Spool

T0 = 1_700_000_000.0


def eml(n: int, *, to: str = "r@y.example") -> bytes:
    return (
        f"From: a@x.example\nTo: {to}\nMessage-ID: <{n}@test>\nDate: x\nSubject: {n}\n\nbody {n}\n"
    ).encode()


def put(directory: Path, name: str, data: bytes, mtime: float) -> Path:
    path = directory / name
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return path


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    path = tmp_path / "spool"
    path.mkdir()
    s = Spool(path, clock=lambda: T0)
    s.prepare()
    return s


def day(spool: Spool) -> Path:
    """The day file the records of sent messages go to (the clock says T0)."""
    return spool.dir("sent") / day_file(T0)


def sent_state(name: str, rcpt: str = "r@y.example") -> MessageState:
    return MessageState(
        name=name, accepted={rcpt: RecipientResult(250, "2.0.0", "ok", T0)}, queued_at=T0
    )


# --- validation ----------------------------------------------------------------------


def test_missing_spool_is_exit_78_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(SpoolError) as info, Spool(missing).lock():
        pass
    assert info.value.exit_code == ExitCode.CONFIG
    assert str(missing) in str(info.value) and "no such directory" in str(info.value)
    assert not missing.exists()


def test_spool_that_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(SpoolError, match="not a directory"):
        Spool(path).check()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_spool_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ro"
    path.mkdir()
    put(path, "a.eml", eml(1), T0)
    path.chmod(0o555)
    try:
        with pytest.raises(SpoolError, match="not writable"):
            Spool(path).prepare()
        assert sorted(os.listdir(path)) == ["a.eml"]
    finally:
        path.chmod(0o755)


def test_prepare_creates_the_layout(spool: Spool) -> None:
    for sub in ("deferred", "sent", "failed", "tmp", ".cxsmtp/claims/queued"):
        assert (spool.path / sub).is_dir()


# --- listing ------------------------------------------------------------------------


def test_candidates_order_and_what_is_ignored(spool: Spool) -> None:
    top = spool.path
    put(top, "b.eml", eml(1), T0 - 100)
    put(top, "a.eml", eml(2), T0 - 100)  # same mtime: by name
    put(top, "old.eml", eml(3), T0 - 500)
    put(top, "producer-writing.eml.tmp", eml(4), T0 - 900)  # not *.eml
    put(top, ".hidden.eml", eml(5), T0 - 900)  # dot-file, like a shell glob
    put(top / "tmp", "x.eml", eml(6), T0 - 900)  # producers' scratch
    put(spool.dir("deferred"), "due.eml", eml(7), T0 - 1)  # mtime = next attempt
    put(spool.dir("deferred"), "later.eml", eml(8), T0 + 60)
    names = [(c.kind, c.name) for c in spool.candidates()]
    assert names == [
        ("deferred", "due.eml"),
        ("queued", "old.eml"),
        ("queued", "a.eml"),
        ("queued", "b.eml"),
    ]


def test_candidates_report_file_types_without_following(spool: Spool, tmp_path: Path) -> None:
    target = put(tmp_path, "outside.eml", eml(1), T0)
    (spool.path / "link.eml").symlink_to(target)
    (spool.path / "dir.eml").mkdir()
    types = {c.name: c.file_type for c in spool.candidates()}
    assert types == {"link.eml": "symlink", "dir.eml": "directory"}


def _mixed_spool(spool: Spool) -> list[tuple[str, str]]:
    """Queued and deferred messages with ties on mtime; returns the expected order."""
    for i in range(12):
        put(spool.path, f"q{i % 5}{i:02d}.eml", eml(i), T0 - 1000 + (i % 4) * 10)
    for i in range(5):
        put(spool.dir("deferred"), f"d{i}.eml", eml(100 + i), T0 - 50 + (i % 2))
    put(spool.dir("deferred"), "later.eml", eml(200), T0 + 60)  # not due
    everything = spool.candidates(limit=None)
    assert len(everything) == 17 and list.__len__(everything) == 17
    return [(c.kind, c.name) for c in everything]


@pytest.mark.parametrize("limit", [1, 2, 3, 5, 16, 17, 100])
def test_bounded_listing_streams_in_exact_order(spool: Spool, limit: int) -> None:
    expected = _mixed_spool(spool)
    assert expected[:5] == [("deferred", f"d{i}.eml") for i in (0, 2, 4, 1, 3)]
    candidates = spool.candidates(limit=limit)
    assert len(candidates) == 17 and bool(candidates)
    assert list.__len__(candidates) == min(limit, 17)  # held now
    seen: list[tuple[str, str]] = []
    for position, candidate in enumerate(candidates):
        assert list.__len__(candidates) <= limit  # never more than ``limit`` held
        assert candidates[position] is candidate  # indexes count in the whole order
        ahead = candidates[position:]
        assert ahead[0] is candidate and len(ahead) <= limit
        seen.append((candidate.kind, candidate.name))
    assert seen == expected


def test_bounded_listing_skips_what_was_handed_out_and_put_back(spool: Spool) -> None:
    expected = _mixed_spool(spool)
    handed: list[str] = []
    for candidate in spool.candidates(limit=4):
        claim = spool.claim(candidate)
        assert claim is not None
        handed.append(candidate.name)
        if candidate.kind == "deferred":  # deferred again: its mtime is in the future
            state = MessageState(name=candidate.name, attempts=1, next_attempt=T0 + 300)
            state.pending = {"r@y.example": None}
            spool.record_outcome(claim, state)
        elif len(handed) % 3:
            spool.requeue(claim)  # back in the queue with its old mtime: not again
        else:
            spool.record_outcome(claim, sent_state(candidate.name))
    assert handed == [name for _, name in expected]  # each exactly once, in order


def test_bounded_listing_hands_out_no_more_than_it_counted(spool: Spool) -> None:
    for i in range(6):
        put(spool.path, f"m{i}.eml", eml(i), T0 - 100 + i)
    candidates = spool.candidates(limit=2)
    names = []
    for candidate in candidates:
        names.append(candidate.name)
        if candidate.name == "m1.eml":  # a producer drops more while we send
            put(spool.path, "new1.eml", eml(10), T0 - 1)
            put(spool.path, "new2.eml", eml(11), T0)
    assert len(candidates) == 6
    assert names == [f"m{i}.eml" for i in range(6)]  # the new ones wait for the next run


def test_bounded_listing_memory_does_not_grow_with_the_spool(spool: Spool) -> None:
    import tracemalloc

    for i in range(3000):
        (spool.path / f"{i:05d}-with-a-longish-name.eml").write_bytes(b"x")

    def peak(limit: int | None) -> int:
        tracemalloc.start()
        try:
            candidates = spool.candidates(limit=limit)
            assert len(candidates) == 3000
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    unbounded, bounded = peak(None), peak(20)
    assert bounded * 10 < unbounded, (bounded, unbounded)


def test_next_retry_is_the_earliest_deferred_time(spool: Spool) -> None:
    assert spool.next_retry() is None
    put(spool.dir("deferred"), "a.eml", eml(1), T0 + 500)
    put(spool.dir("deferred"), "b.eml", eml(2), T0 + 200)
    put(spool.dir("deferred"), "b.eml.json", b"{}", T0 + 1)  # sidecars are not messages
    assert spool.next_retry() == T0 + 200


# --- lock ---------------------------------------------------------------------------


def test_lock_is_exclusive_and_released(spool: Spool) -> None:
    other = Spool(spool.path)
    with spool.lock() as first:
        assert first
        assert other.holder_pid() == os.getpid()
        with other.lock() as second:
            assert not second
    assert other.holder_pid() is None
    with other.lock() as again:
        assert again


# --- claims and outcomes ----------------------------------------------------------------


def test_claim_then_sent_appends_record_to_the_day_file(spool: Spool) -> None:
    put(spool.path, "m.eml", eml(1), T0 - 10)
    (candidate,) = spool.candidates()
    claim = spool.claim(candidate)
    assert claim is not None
    assert not (spool.path / "m.eml").exists()
    assert claim.path.parent == spool.claims_dir / "queued"
    dest = spool.record_outcome(claim, sent_state("m.eml"))
    assert dest == spool.dir("sent") / "m.eml"
    assert dest.read_bytes() == eml(1)
    record = sent_record(spool.path, "m.eml")
    assert record["status"] == "sent"
    assert record["recipients"]["accepted"]["r@y.example"]["code"] == 250
    assert spool.claims() == []
    assert sorted(os.listdir(spool.dir("sent"))) == ["m.eml", day_file(T0)]  # no m.eml.json


def test_claim_of_vanished_file_is_none(spool: Spool) -> None:
    put(spool.path, "m.eml", eml(1), T0)
    (candidate,) = spool.candidates()
    (spool.path / "m.eml").unlink()
    assert spool.claim(candidate) is None


def test_deferred_message_gets_next_attempt_as_mtime_and_sidecar(spool: Spool) -> None:
    put(spool.path, "m.eml", eml(1), T0 - 10)
    claim = spool.claim(spool.candidates()[0])
    assert claim is not None
    state = MessageState(
        name="m.eml",
        attempts=1,
        next_attempt=T0 + 300,
        pending={"r@y.example": RecipientResult(451, "4.3.0", "later", T0)},
    )
    dest = spool.record_outcome(claim, state)
    assert dest == spool.dir("deferred") / "m.eml"
    assert dest.stat().st_mtime == T0 + 300
    assert spool.candidates(now=T0) == []
    assert [c.name for c in spool.candidates(now=T0 + 300)] == ["m.eml"]
    again = spool.claim(spool.candidates(now=T0 + 300)[0])
    assert again is not None and again.state is not None
    assert again.state.attempts == 1 and list(again.state.pending) == ["r@y.example"]
    # all done now: the deferred sidecar goes away with the message
    spool.record_outcome(again, sent_state("m.eml"))
    assert sorted(os.listdir(spool.dir("deferred"))) == []
    assert sent_record(spool.path, "m.eml")["status"] == "sent"


def test_outcome_never_overwrites_an_existing_message(spool: Spool) -> None:
    put(spool.dir("sent"), "m.eml", b"an older message", T0)
    put(spool.path, "m.eml", eml(1), T0)
    claim = spool.claim(spool.candidates()[0])
    assert claim is not None
    dest = spool.record_outcome(claim, sent_state("m.eml"))
    assert dest.name != "m.eml" and dest.name.endswith(".eml")
    assert (spool.dir("sent") / "m.eml").read_bytes() == b"an older message"
    assert dest.read_bytes() == eml(1)


def test_requeue_to_top_level_never_replaces_a_new_file(spool: Spool) -> None:
    put(spool.path, "m.eml", eml(1), T0)
    claim = spool.claim(spool.candidates()[0])
    assert claim is not None
    put(spool.path, "m.eml", eml(2), T0)  # a producer reused the name meanwhile
    back = spool.requeue(claim)
    assert back != spool.path / "m.eml"
    assert (spool.path / "m.eml").read_bytes() == eml(2)
    assert back.read_bytes() == eml(1)


# --- recovery ---------------------------------------------------------------------------


def test_recover_requeues_claim_without_outcome(spool: Spool, caplog) -> None:
    put(spool.path, "m.eml", eml(7), T0 - 10)
    claim = spool.claim(spool.candidates()[0])
    assert claim is not None
    # the run "dies" here; a new one recovers
    fresh = Spool(spool.path, clock=lambda: T0)
    report = fresh.recover()
    assert report.requeued == ["m.eml"]
    assert (spool.path / "m.eml").read_bytes() == eml(7)
    assert (spool.path / "m.eml").stat().st_mtime == T0 - 10  # keeps its place in line
    assert fresh.claims() == []
    assert "possible duplicate" in caplog.text and "<7@test>" in caplog.text
    log = (spool.state_dir / "delivery.log").read_text()
    assert '"outcome":"requeued"' in log


def test_recover_applies_journaled_outcome_without_sending(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    put(spool.path, "m.eml", eml(1), T0)
    claim = spool.claim(spool.candidates()[0])
    assert claim is not None

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt("killed right after the journal fsync")

    with monkeypatch.context() as m:
        m.setattr(SentLog, "append", crash)
        with pytest.raises(KeyboardInterrupt):
            spool.record_outcome(claim, sent_state("m.eml"))
    assert claim.path.exists()  # still claimed
    report = Spool(spool.path).recover()
    assert report.completed == ["sent/m.eml"]
    assert (spool.dir("sent") / "m.eml").read_bytes() == eml(1)
    assert sent_record(spool.path, "m.eml")["status"] == "sent"
    assert spool.journal_path.stat().st_size == 0


def test_recover_puts_deferred_claim_back_with_its_state(spool: Spool) -> None:
    put(spool.dir("deferred"), "d.eml", eml(1), T0 - 5)
    state = MessageState(name="d.eml", attempts=2, pending={"r@y.example": None})
    (spool.dir("deferred") / "d.eml.json").write_text(json.dumps(state.to_json()))
    claim = spool.claim(spool.candidates()[0])
    assert claim is not None and claim.state is not None and claim.state.attempts == 2
    report = Spool(spool.path).recover()
    assert report.requeued == ["deferred/d.eml"]
    assert (spool.dir("deferred") / "d.eml").exists()
    assert json.loads((spool.dir("deferred") / "d.eml.json").read_text())["attempts"] == 2


# --- durability: one fsync per message; what a power failure may lose is redone ------------
#
# A power failure can lose any rename or write that was not fsynced.  These tests
# make the spool look like such a crash left it, then run recovery.


def _sent_without_checkpoint(spool: Spool, name: str = "m.eml") -> tuple[Path, Path]:
    """Claim and send ``name``; no checkpoint (the journal keeps the line)."""
    claim = spool.claim(spool.candidates()[0])
    assert claim is not None and claim.name == name
    dest = spool.record_outcome(claim, sent_state(name))
    assert spool.journal_path.stat().st_size > 0
    return claim.path, dest


def _count_syncs(monkeypatch: pytest.MonkeyPatch, spool: Spool, window: float) -> list[str]:
    """Every fsync and journal fdatasync of a file in ``spool`` from now on, in order
    (another test's flusher thread may still be syncing its own); the group window set."""
    import carerix_smtp.spool.journal as journal_module

    calls: list[str] = []
    real_fsync, real_fdatasync = os.fsync, journal_module._fdatasync

    def counted(name: str, real: Callable[[int], None]) -> Callable[[int], None]:
        def sync(fd: int) -> None:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(str(spool.path)):
                calls.append(name)
            real(fd)

        return sync

    monkeypatch.setattr(journal_module, "GROUP_WINDOW", window)
    monkeypatch.setattr(os, "fsync", counted("fsync", real_fsync))
    monkeypatch.setattr(journal_module, "_fdatasync", counted("fdatasync", real_fdatasync))
    return calls


def _send_all(spool: Spool) -> None:
    for candidate in spool.candidates():
        claim = spool.claim(candidate)
        assert claim is not None
        spool.record_outcome(claim, sent_state(candidate.name))
        spool.log_delivery({"file": candidate.name, "outcome": "sent"})


def test_per_message_bookkeeping_has_no_fsync(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_syncs(monkeypatch, spool, window=600.0)  # no group ends by time here
    for i in range(3):
        put(spool.path, f"m{i}.eml", eml(i), T0 - 10 + i)
    _send_all(spool)
    assert calls == []  # written, not synced: a process crash keeps it (page cache)
    line = json.loads(spool.journal_path.read_bytes().splitlines()[-1])
    assert line["dest"] == "sent" and line["name"] == "m2.eml"
    assert line["at"][0] == day_file(T0) and line["at"][1] == 2 * (day(spool).stat().st_size // 3)
    st = os.lstat(spool.dir("sent") / "m2.eml")
    # which file it is, wherever it is
    assert line["file"] == [st.st_dev, st.st_ino, st.st_size, st.st_mtime]
    assert b"\n " not in spool.journal_path.read_bytes()  # compact lines
    spool.finish()  # the checkpoint: the group, the day file, 6 directories, the truncation
    assert calls == ["fdatasync"] + ["fsync"] * (1 + 6 + 1)
    assert spool.journal_path.stat().st_size == 0


def test_group_commit_syncs_the_journal_once_per_window(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import carerix_smtp.spool.journal as journal_module

    calls = _count_syncs(monkeypatch, spool, window=journal_module.GROUP_WINDOW)
    for i in range(200):
        put(spool.path, f"m{i:03d}.eml", eml(i), T0 - 300 + i)
    start = time.monotonic()
    _send_all(spool)
    elapsed = time.monotonic() - start
    deadline = time.monotonic() + 10
    while not calls and time.monotonic() < deadline:  # the last group, synced by the flusher
        time.sleep(0.005)
    # the flusher syncs at most once per window, and every line within one
    assert 1 <= calls.count("fdatasync") <= elapsed / journal_module.GROUP_WINDOW + 2
    assert calls.count("fdatasync") < 200 / 4 and "fsync" not in calls


def test_releasing_the_lock_syncs_the_pending_group(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_syncs(monkeypatch, spool, window=600.0)
    put(spool.path, "m.eml", eml(1), T0 - 10)
    with spool.lock():
        claim = spool.claim(spool.candidates()[0])
        assert claim is not None
        spool.record_outcome(claim, sent_state("m.eml"))
        assert calls == []
    assert calls == ["fdatasync"]


def test_a_failed_group_sync_stops_the_next_outcome(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import carerix_smtp.spool.journal as journal_module

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(journal_module, "GROUP_WINDOW", 0.001)
    monkeypatch.setattr(journal_module, "_fdatasync", broken)
    for i in range(2):
        put(spool.path, f"m{i}.eml", eml(i), T0 - 10 + i)
    first, second = spool.candidates()
    claim = spool.claim(first)
    assert claim is not None
    spool.record_outcome(claim, sent_state(first.name))
    commit = spool._journal._commit
    deadline = time.monotonic() + 10
    while commit._error is None and time.monotonic() < deadline:  # the flusher's sync failed
        time.sleep(0.005)
    claim = spool.claim(second)
    assert claim is not None
    with pytest.raises(StorageError, match=r"cannot sync .*journal: Input/output error"):
        spool.record_outcome(claim, sent_state(second.name))


def test_checkpoint_every_so_many_outcomes_bounds_the_journal(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import carerix_smtp.spool.journal as journal_module

    synced: list[int] = []
    real = journal_module.Journal.sync_unsynced
    monkeypatch.setattr(journal_module, "CHECKPOINT_LINES", 3)
    monkeypatch.setattr(
        journal_module.Journal,
        "sync_unsynced",
        lambda self: synced.append(len(self.unsynced)) or real(self),
    )
    for i in range(7):
        put(spool.path, f"m{i}.eml", eml(i), T0 - 10 + i)
    for candidate in spool.candidates():
        claim = spool.claim(candidate)
        assert claim is not None
        spool.record_outcome(claim, sent_state(candidate.name))
    assert synced == [1, 1]  # one day file holds the records of the three outcomes
    lines = spool.journal_path.read_bytes().splitlines()
    assert [json.loads(line)["name"] for line in lines] == ["m6.eml"]


def test_redo_rewrites_a_record_lost_to_a_power_failure(spool: Spool) -> None:
    put(spool.path, "m.eml", eml(1), T0 - 10)
    _sent_without_checkpoint(spool)
    day(spool).write_bytes(b"")  # appended, but the line never reached the disk
    report = Spool(spool.path).recover()
    assert report.requeued == [] and report.completed == []
    record = sent_record(spool.path, "m.eml")
    assert record["recipients"]["accepted"]["r@y.example"]["code"] == 250
    assert spool.journal_path.stat().st_size == 0
    assert sent_lines(spool.path) == ["m.eml"]


def test_redo_finishes_a_move_lost_to_a_power_failure(spool: Spool) -> None:
    put(spool.path, "m.eml", eml(1), T0 - 10)
    claimed, dest = _sent_without_checkpoint(spool)
    os.rename(dest, claimed)  # the move to sent/ was lost, and the record with it
    day(spool).write_bytes(b"")
    report = Spool(spool.path).recover()
    assert report.completed == ["sent/m.eml"] and report.requeued == []
    assert sent_record(spool.path, "m.eml")["status"] == "sent"
    assert sent_lines(spool.path) == ["m.eml"]


def test_redo_when_the_claim_rename_was_lost_does_not_send_again(spool: Spool, caplog) -> None:
    put(spool.path, "m.eml", eml(1), T0 - 10)
    _, dest = _sent_without_checkpoint(spool)
    os.rename(dest, spool.path / "m.eml")  # claim rename and move both lost
    day(spool).write_bytes(b"")
    report = Spool(spool.path).recover()
    assert report.completed == ["sent/m.eml"] and report.requeued == []
    assert [c.name for c in spool.candidates()] == []  # not queued: not sent again
    assert dest.read_bytes() == eml(1)
    assert "possible duplicate" not in caplog.text


def test_redo_leaves_a_different_file_with_the_same_name_alone(spool: Spool) -> None:
    put(spool.path, "m.eml", eml(1), T0 - 10)
    _, dest = _sent_without_checkpoint(spool)
    dest.unlink()  # gone (say, cleaned up) ...
    day(spool).write_bytes(b"")
    put(spool.path, "m.eml", eml(2), T0)  # ... and a producer drops a new m.eml
    report = Spool(spool.path).recover()
    assert report.completed == [] and report.requeued == []
    assert [c.name for c in spool.candidates()] == ["m.eml"]  # still queued
    assert (spool.path / "m.eml").read_bytes() == eml(2)


def test_redo_does_not_take_a_reused_inode_for_the_old_file(spool: Spool) -> None:
    put(spool.path, "m.eml", eml(1), T0 - 10)
    _, dest = _sent_without_checkpoint(spool)
    day(spool).write_bytes(b"")
    os.rename(dest, spool.path / "m.eml")
    # same inode, new content: what a new file that got the old inode number looks like
    put(spool.path, "m.eml", eml(22), T0 - 10)
    report = Spool(spool.path).recover()
    assert report.completed == []
    assert [c.name for c in spool.candidates()] == ["m.eml"]  # queued: it will be sent


def test_redo_restores_a_deferred_sidecar_so_no_recipient_gets_it_twice(spool: Spool) -> None:
    put(spool.path, "m.eml", eml(1, to="a@y.example, b@y.example"), T0 - 10)
    claim = spool.claim(spool.candidates()[0])
    assert claim is not None
    state = MessageState(
        name="m.eml",
        attempts=1,
        next_attempt=T0 + 300,
        accepted={"a@y.example": RecipientResult(250, "2.0.0", "ok", T0)},
        pending={"b@y.example": RecipientResult(451, "4.3.0", "later", T0)},
    )
    dest = spool.record_outcome(claim, state)
    sidecar = dest.with_name("m.eml.json")
    sidecar.unlink()  # lost: without it, a@ would get the message again
    os.utime(dest, (T0 - 10, T0 - 10))  # and the next-attempt mtime too
    Spool(spool.path).recover()
    again = MessageState.from_json(json.loads(sidecar.read_text()))
    assert list(again.accepted) == ["a@y.example"] and list(again.pending) == ["b@y.example"]
    assert dest.stat().st_mtime == T0 + 300


def test_newest_line_of_a_file_wins_on_redo(spool: Spool) -> None:
    put(spool.path, "m.eml", eml(1), T0 - 10)
    claim = spool.claim(spool.candidates()[0])
    assert claim is not None
    first = MessageState(name="m.eml", attempts=1, next_attempt=T0 - 5)
    first.pending = {"r@y.example": RecipientResult(451, None, "later", T0)}
    spool.record_outcome(claim, first)
    claim = spool.claim(spool.candidates()[0])  # due again (mtime T0 - 5)
    assert claim is not None and claim.kind == "deferred"
    spool.record_outcome(claim, sent_state("m.eml"))
    day(spool).write_bytes(b"")
    report = Spool(spool.path).recover()
    assert report.completed == []
    assert sent_record(spool.path, "m.eml")["status"] == "sent"
    assert os.listdir(spool.dir("deferred")) == []


def test_journal_line_with_undecodable_header_bytes_reads_back(spool: Spool) -> None:
    put(spool.path, "m.eml", eml(1), T0 - 10)
    claim = spool.claim(spool.candidates()[0])
    assert claim is not None
    state = sent_state("m.eml")
    state.message_id = "<caf\udce9@x>"  # a Latin-1 byte, as the email parser leaves it
    with pytest.MonkeyPatch.context() as m:
        m.setattr(SentLog, "append", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            spool.record_outcome(claim, state)
    report = Spool(spool.path).recover()
    assert report.completed == ["sent/m.eml"]
    record = sent_record(spool.path, "m.eml")
    assert record["message_id"] == "<caf\udce9@x>"


def test_recover_removes_temp_files_and_orphan_sidecars_ignores_torn_journal(
    spool: Spool,
) -> None:
    (spool.claims_dir / "queued" / ".abc~m.eml.tmp").write_bytes(b"half")
    (spool.dir("deferred") / "gone.eml.json").write_text("{}")
    (spool.dir("sent") / ".cxsmtp-1234.tmp").write_text("half a record")
    spool.journal_path.write_text('{"claim": "queued/zz~m.eml", "dest": "sent", "sta')
    report = Spool(spool.path).recover()
    assert sorted(report.removed) == [
        ".cxsmtp/claims/queued/.abc~m.eml.tmp",
        "deferred/gone.eml.json",
        "sent/.cxsmtp-1234.tmp",
    ]
    assert os.listdir(spool.dir("deferred")) == []
    assert spool.journal_path.read_text() == ""


def test_rewrite_head_keeps_body_and_mtime(spool: Spool) -> None:
    put(spool.path, "m.eml", b"From: a@x.example\nTo: r@y.example\n\nbody\n", T0 - 50)
    claim = spool.claim(spool.candidates()[0])
    assert claim is not None
    spool.rewrite_head(claim, b"From: a@x.example\nTo: r@y.example\nMessage-ID: <n@x>\n", 34)
    assert claim.path.read_bytes() == (
        b"From: a@x.example\nTo: r@y.example\nMessage-ID: <n@x>\n\nbody\n"
    )
    assert claim.path.stat().st_mtime == T0 - 50
    assert claim.size == len(claim.path.read_bytes())


# --- status, retry, enqueue ----------------------------------------------------------------


def test_status_counts_and_failed_recipients(spool: Spool) -> None:
    put(spool.path, "q1.eml", eml(1), T0 - 200)
    put(spool.path, "q2.eml", eml(2), T0 - 100)
    put(spool.dir("deferred"), "d.eml", eml(3), T0 + 600)
    deferred = MessageState(
        name="d.eml", pending={"later@y.example": RecipientResult(451, "4.7.1", "slow", T0)}
    )
    (spool.dir("deferred") / "d.eml.json").write_text(json.dumps(deferred.to_json()))
    put(spool.dir("sent"), "s.eml", eml(4), T0)
    partial = sent_state("s.eml")
    partial.failed["bad@y.example"] = RecipientResult(550, "5.1.1", "no such user", T0)
    (spool.dir("sent") / "s.eml.json").write_text(json.dumps(partial.to_json()))
    put(spool.dir("failed"), "f.eml", b"junk", T0)
    failed = MessageState(name="f.eml", status="failed", reason="not an RFC 5322 message")
    (spool.dir("failed") / "f.eml.json").write_text(json.dumps(failed.to_json()))
    put(spool.dir("tmp"), "stale.part", b"x", T0 - 2 * 86400)
    put(spool.dir("tmp"), "fresh.part", b"x", T0 - 60)

    status = spool.status()
    assert (status.queued.count, status.queued.bytes) == (2, len(eml(1)) + len(eml(2)))
    assert status.queued.oldest == T0 - 200
    assert (status.deferred.count, status.due_now, status.next_retry) == (1, 0, T0 + 600)
    assert (status.sent.count, status.failed.count, status.in_flight) == (1, 1, 0)
    assert status.running_pid is None
    assert status.stale_tmp == ["tmp/stale.part"]
    rows = [(r.message, r.recipient, r.status, r.reply) for r in status.undelivered]
    assert rows == [
        ("deferred/d.eml", "later@y.example", "pending", "451 4.7.1 slow"),
        ("failed/f.eml", "", "failed", "not an RFC 5322 message"),
        ("sent/s.eml", "bad@y.example", "failed", "550 5.1.1 no such user"),
    ]
    assert status.recipients_failed == 1
    assert json.loads(json.dumps(status.to_json()))["queued"]["count"] == 2


def test_retry_moves_failed_back_and_makes_deferred_due(spool: Spool) -> None:
    put(spool.dir("failed"), "f.eml", eml(1), T0 - 1000)
    (spool.dir("failed") / "f.eml.json").write_text("{}")
    put(spool.dir("deferred"), "d.eml", eml(2), T0 + 3000)
    with pytest.raises(InputError, match=r"no message 'zz\.eml'"):
        spool.retry(["zz.eml"])
    assert spool.retry(everything=True) == ["deferred/d.eml", "f.eml"]
    assert (spool.path / "f.eml").read_bytes() == eml(1)
    assert not (spool.dir("failed") / "f.eml.json").exists()
    assert [c.name for c in spool.candidates()] == ["d.eml", "f.eml"]


def test_enqueue_completes_headers_and_renames_from_tmp(spool: Spool) -> None:
    from carerix_smtp.spool.message import complete_headers, parse_message

    data = complete_headers(b"From: a@x.example\nTo: r@y.example\n\nhello\n")
    path = spool.enqueue(data, hint="/some/where/report 2024.eml")
    assert path.parent == spool.path and path.name.endswith("-report_2024.eml")
    assert parse_message(path.read_bytes()).complete
    assert os.listdir(spool.dir("tmp")) == []
    with pytest.raises(MessageError):
        complete_headers(b"not a message")


# --- pure helpers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempts", "expected"),
    [(0, 0), (1, 300), (2, 600), (3, 1200), (4, 2400), (5, 4000), (50, 4000)],
    ids=lambda v: str(v),
)
def test_backoff_postfix_defaults(attempts: int, expected: float) -> None:
    assert backoff(attempts, 300, 4000) == expected


def test_state_json_round_trip() -> None:
    state = MessageState(
        name="m.eml",
        status="deferred",
        message_id="<1@x>",
        size=12,
        queued_at=T0,
        attempts=3,
        next_attempt=T0 + 600,
        accepted={"a@x": RecipientResult(250, "2.0.0", "ok", T0)},
        failed={"b@x": RecipientResult(550, None, "no", T0)},
        pending={"c@x": None, "d@x": RecipientResult(None, None, "timeout", T0)},
    )
    assert MessageState.from_json(json.loads(json.dumps(state.to_json()))) == state


@pytest.mark.slow
def test_listing_100000_files_is_fast(spool: Spool) -> None:
    data = eml(1)
    for i in range(100_000):
        (spool.path / f"{i:06d}.eml").write_bytes(data)
    start = time.perf_counter()
    candidates = spool.candidates()
    claim = spool.claim(candidates[0])
    elapsed = time.perf_counter() - start
    assert len(candidates) == 100_000 and claim is not None
    assert elapsed < 2.0, elapsed


def test_a_delivery_log_line_torn_by_a_kill_does_not_swallow_the_next(tmp_path: Path) -> None:
    """A SIGKILL can cut a write where the file crosses a page: the next run ends the
    torn line before it appends, so each of its own lines stays whole."""
    path = tmp_path / "spool"
    path.mkdir()
    first = Spool(path, clock=lambda: T0)
    first.prepare()
    first.log_delivery({"file": "a.eml", "outcome": "sent"})
    first.finish()
    log = path / ".cxsmtp" / "delivery.log"
    with log.open("ab") as handle:  # what the killed run left: a line's first bytes
        handle.write(b'{"time":"2023-11-14T22:13:20')
    second = Spool(path, clock=lambda: T0)
    second.prepare()
    second.log_delivery({"file": "b.eml", "outcome": "sent"})
    second.finish()
    lines = log.read_bytes().splitlines()
    assert lines[1] == b'{"time":"2023-11-14T22:13:20'
    assert [json.loads(lines[i])["file"] for i in (0, 2)] == ["a.eml", "b.eml"]


@pytest.mark.parametrize("shortcut", [True, False], ids=["pathlib-shortcut", "fallback"])
def test_child_is_the_joined_path(shortcut: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Claims and placed files get their path from layout.child (pathlib's directory
    walk shortcut where it exists): the very path ``/`` makes."""
    import carerix_smtp.spool.layout as layout_module

    if not shortcut:
        monkeypatch.setattr(layout_module, "_CHILD", None)
    directory = Path("/spool/.cxsmtp/claims/queued")
    for name in ("m.eml", "6b0e6e3~m.eml", "é ü.eml", ".m.eml.tmp", "m.eml~1"):
        made = layout_module.child(directory, name)
        assert made == directory / name
        assert (str(made), made.name, made.parent) == (str(directory / name), name, directory)


def test_exists_sees_files_and_dangling_symlinks_only(spool: Spool, tmp_path: Path) -> None:
    """The name-taken check before a move (layout.exists, faccessat without following
    symlinks): a dangling symlink takes the name too, so nothing is ever renamed
    over it."""
    sent = spool.dir("sent")
    (sent / "m.eml").write_bytes(b"x")
    (sent / "gone.eml").symlink_to(tmp_path / "nowhere")
    layout = spool.layout
    assert layout.exists("sent", "m.eml")
    assert layout.exists("sent", "gone.eml")
    assert not layout.exists("sent", "other.eml")
