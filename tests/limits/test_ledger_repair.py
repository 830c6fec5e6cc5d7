"""A damaged, symlinked or unwritable rate ledger (issue 10), and its check and repair
(limits/repair.py, the core of ``cxsmtp doctor``): real SQLite files, damaged the way
disks damage them, and the real CLI for what cron sees."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import strip_timestamps
from servers import entry_for, make_spool, names

from carerix_smtp.config.file import Config, save_config
from carerix_smtp.errors import (
    ExitCode,
    LedgerBusyError,
    LedgerCorruptError,
    StateError,
    StorageError,
    SymlinkRefusedError,
)
from carerix_smtp.limits.ledger import BatchGrant
from carerix_smtp.limits.repair import SendEvent, check_ledger, repair_ledger
from carerix_smtp.limits.rule import Limits
from carerix_smtp.limits.sqlite import Ledger

T0 = 1_700_000_000.0
HOUR = 3600.0
WIDE = Limits(rate_per_hour=100_000, batch_max_messages=100_000, batch_interval=0.0)


def real_ledger(state_dir: Path, rows: int = 2000) -> Path:
    """A ledger made by cxsmtp, grown to many pages (checkpointed into the main file)."""
    Ledger.in_state_dir(state_dir).close()
    path = state_dir / Ledger.FILENAME
    conn = sqlite3.connect(path)
    conn.executemany(
        "INSERT INTO sends (server, time, bytes, message_id, presumed, reservation)"
        " VALUES ('local', ?, 5000, ?, 0, NULL)",
        [(time.time() - n, f"<{n}@x.example>") for n in range(rows)],
    )
    conn.commit()
    conn.close()  # the last connection: the WAL is checkpointed and removed
    return path


def damage_middle(path: Path) -> None:
    """Bytes overwritten in the middle of the file (a torn write, a bad sector)."""
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.seek(size // 2)
        f.write(b"\xa5" * 8192)


def damage_header(path: Path) -> None:
    with path.open("r+b") as f:
        f.write(b"garbage garbage garbage garbage!" * 4)


DAMAGE: dict[str, Callable[[Path], None]] = {"middle": damage_middle, "header": damage_header}


def damaged_ledger(state_dir: Path, how: str) -> Path:
    path = real_ledger(state_dir)
    DAMAGE[how](path)
    return path


# --- opening a damaged ledger ------------------------------------------------------------


@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_a_damaged_ledger_is_refused_on_open_with_the_way_out(tmp_path: Path, how: str) -> None:
    path = damaged_ledger(tmp_path / "state", how)
    before = path.read_bytes()
    with pytest.raises(LedgerCorruptError) as info:
        Ledger(path)
    text = str(info.value)
    assert text.startswith(f"the rate ledger {path} is damaged (")
    assert "run `cxsmtp doctor SPOOL...` to move it aside and rebuild the counts" in text
    assert "\n" not in text and info.value.exit_code == ExitCode.CANTCREAT
    assert path.read_bytes() == before  # nothing written into it


def test_a_full_ledger_is_a_storage_error_naming_the_file(tmp_path: Path) -> None:
    """SQLite's own "database or disk is full" (max_page_count stands in for the disk)."""
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    grant = ledger.open_batch("local", WIDE, [100] * 100_000)
    assert isinstance(grant, BatchGrant)
    conn = ledger._db._conn
    conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")
    with pytest.raises(StorageError) as info:
        for n in range(100_000):
            assert grant.admit(100)
            grant.confirm(f"<{n}@x>", 100)
    assert str(info.value) == (
        f"cannot write the rate ledger {ledger.path}: No space left on device"
    )
    assert info.value.exit_code == ExitCode.TEMPFAIL
    conn.execute("PRAGMA max_page_count = 1000000")
    ledger.close()


def test_a_ledger_that_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "state" / Ledger.FILENAME).mkdir(parents=True)
    with pytest.raises(StateError) as info:
        Ledger.in_state_dir(tmp_path / "state")
    assert str(info.value).startswith("cannot create the rate ledger ")
    assert "Is a directory" in str(info.value) and info.value.exit_code == 73


# --- symlinks -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ledger.sqlite3", "ledger.sqlite3-wal", "ledger.sqlite3-shm"])
def test_the_ledger_files_are_never_used_through_a_symlink(tmp_path: Path, name: str) -> None:
    state = tmp_path / "state"
    if name != Ledger.FILENAME:
        Ledger.in_state_dir(state).close()
    else:
        state.mkdir()
    target = tmp_path / "precious"
    target.write_bytes(b"do not touch")
    (state / name).symlink_to(target)
    with pytest.raises(SymlinkRefusedError) as info:
        Ledger.in_state_dir(state)
    assert str(info.value).startswith(f"refusing to use {state / name}: it is a symbolic link")
    assert info.value.exit_code == ExitCode.CONFIG
    assert target.read_bytes() == b"do not touch"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "precious", "state"]


def test_a_dangling_symlink_creates_nothing(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / Ledger.FILENAME).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(SymlinkRefusedError):
        Ledger.in_state_dir(tmp_path / "state")
    assert not os.path.lexists(tmp_path / "elsewhere")


# --- check_ledger --------------------------------------------------------------------------


def test_check_a_missing_ledger_creates_nothing(tmp_path: Path) -> None:
    health = check_ledger(tmp_path / "state")
    assert (health.state, health.path) == ("missing", tmp_path / "state" / Ledger.FILENAME)
    assert not (tmp_path / "state").exists()


def test_check_a_healthy_ledger_counts_live_reservations(tmp_path: Path) -> None:
    with Ledger.in_state_dir(tmp_path) as ledger:
        grant = ledger.open_batch("local", WIDE, [1])
        assert isinstance(grant, BatchGrant)
        health = check_ledger(tmp_path)
        assert (health.state, health.live_reservations) == ("ok", 1)
        grant.close()
        assert check_ledger(tmp_path).live_reservations == 0
    health = check_ledger(tmp_path)
    assert health.state == "ok" and "quick_check ok" in health.detail


@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_check_reports_damage_without_raising_or_writing(tmp_path: Path, how: str) -> None:
    path = damaged_ledger(tmp_path, how)
    before = path.read_bytes()
    health = check_ledger(tmp_path)
    assert health.state == "damaged" and health.detail
    assert path.read_bytes() == before


def test_check_does_not_follow_a_symlink(tmp_path: Path) -> None:
    real_ledger(tmp_path / "real", rows=1)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / Ledger.FILENAME).symlink_to(tmp_path / "real" / Ledger.FILENAME)
    health = check_ledger(tmp_path / "state")
    assert health.state == "unreadable" and "symbolic link" in health.detail
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == [Ledger.FILENAME]


def test_check_a_ledger_of_a_newer_cxsmtp(tmp_path: Path) -> None:
    path = real_ledger(tmp_path, rows=1)
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 2")
    health = check_ledger(tmp_path)
    assert (health.state, health.detail) == ("unreadable", "version 2; this cxsmtp reads version 1")


# --- repair_ledger ---------------------------------------------------------------------------


def history(now: float) -> list[SendEvent]:
    return [
        *(SendEvent("a", now - 60 * n, 1000) for n in range(1, 4)),  # last hour: 3
        SendEvent("b", now - 5 * HOUR, 2000),
        SendEvent("b", now - 5 * HOUR + 1, 2000),
        SendEvent("a", now - 24 * HOUR + 30, 500),  # still inside 24 h
        SendEvent("a", now - 25 * HOUR, 500),  # older: no window counts it
        SendEvent("b", now - 30 * HOUR, 500),
    ]


@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_repair_keeps_the_damaged_file_and_restores_the_last_24_hours(
    tmp_path: Path, how: str
) -> None:
    path = damaged_ledger(tmp_path, how)
    damaged = path.read_bytes()
    repair = repair_ledger(tmp_path, history(T0), clock=lambda: T0)
    assert repair.moved_to == tmp_path / "ledger.sqlite3.broken-20231114T221320Z"
    assert repair.moved_to.read_bytes() == damaged
    assert (repair.sends_restored, repair.per_server) == (6, {"a": 4, "b": 2})
    assert (repair.oldest, repair.newest) == (T0 - 24 * HOUR + 30, T0 - 60)
    assert check_ledger(tmp_path).state == "ok"
    limits = Limits(rate_per_hour=5, batch_interval=300.0)
    with Ledger.in_state_dir(tmp_path, clock=lambda: T0) as ledger:
        a, b = ledger.usage("a", limits), ledger.usage("b", limits)
    # counted as the sender's own confirmed sends: the hour, the day, all servers
    assert (a.sent_hour, a.bytes_hour, a.sent_day, a.sent_day_all) == (3, 3000, 4, 6)
    assert (b.sent_hour, b.sent_day, b.bytes_day) == (0, 2, 4000)
    assert a.window_allows == 2
    # the batch interval counts from the last send before the repair
    assert (a.last_batch_at, a.next_batch_at) == (T0 - 60, T0 - 60 + 300)


def test_the_restored_sends_stop_the_next_run_at_the_limit(
    tmp_path: Path, isolated: Any, sink_factory: Any, cxsmtp: Any
) -> None:
    """What `cxsmtp send` sees after a repair: 5 sends in the last hour of 5 allowed."""
    sink = sink_factory()
    entry = entry_for(
        sink, rate_per_hour=5, batch_max_messages=5, batch_interval=0.0, batch_deadline=10.0
    )
    save_config(Config(path=isolated.config, servers={"local": entry}))
    damaged_ledger(isolated.state_dir, "middle")
    now = time.time()
    sends = [SendEvent("local", now - 60 * n, 300) for n in range(1, 6)]
    assert repair_ledger(isolated.state_dir, sends).sends_restored == 5
    spool = make_spool(tmp_path, 2)
    result = cxsmtp("send", str(spool), "--json")
    summary = json.loads(result.stdout)
    assert (result.returncode, summary["status"], summary["sent"]) == (0, "limit", 0)
    assert summary["limited_by"] == "rate" and sink.messages == []


def test_repair_a_missing_ledger(tmp_path: Path) -> None:
    repair = repair_ledger(tmp_path / "state", history(T0)[:3], clock=lambda: T0)
    assert (repair.moved_to, repair.sends_restored) == (None, 3)
    assert oct((tmp_path / "state" / Ledger.FILENAME).stat().st_mode & 0o777) == "0o600"
    with Ledger.in_state_dir(tmp_path / "state", clock=lambda: T0) as ledger:
        assert [r.time for r in ledger.sends("a")] == [T0 - 180, T0 - 120, T0 - 60]


def test_repair_moves_the_wal_aside_with_the_ledger(tmp_path: Path) -> None:
    path = damaged_ledger(tmp_path, "header")
    (tmp_path / "ledger.sqlite3-wal").write_bytes(b"old wal")
    (tmp_path / "ledger.sqlite3-shm").write_bytes(b"old shm")
    repair = repair_ledger(tmp_path, [], clock=lambda: T0)
    assert repair.moved_to is not None
    assert Path(f"{repair.moved_to}-wal").read_bytes() == b"old wal"
    assert Path(f"{repair.moved_to}-shm").exists()  # an index SQLite rebuilds, kept anyway
    assert not (tmp_path / "ledger.sqlite3-wal").exists()
    assert check_ledger(tmp_path).state == "ok" and path.exists()


def test_repair_refuses_a_healthy_ledger_unless_forced(tmp_path: Path) -> None:
    real_ledger(tmp_path, rows=3)
    with pytest.raises(StateError, match="is healthy") as info:
        repair_ledger(tmp_path, [], clock=lambda: T0)
    assert info.value.exit_code == 73
    first = repair_ledger(tmp_path, [], clock=lambda: T0, force=True)
    second = repair_ledger(tmp_path, [], clock=lambda: T0, force=True)  # same second
    assert first.moved_to is not None and second.moved_to is not None
    assert second.moved_to.name == f"{first.moved_to.name}-2"
    with sqlite3.connect(first.moved_to) as conn:
        assert conn.execute("SELECT count(*) FROM sends").fetchone()[0] == 3


def test_repair_never_pulls_a_ledger_from_under_a_sending_run(tmp_path: Path) -> None:
    with Ledger.in_state_dir(tmp_path) as ledger:
        grant = ledger.open_batch("local", WIDE, [1])
        with pytest.raises(LedgerBusyError, match="1 live batch reservation"):
            repair_ledger(tmp_path, [], force=True)
        assert isinstance(grant, BatchGrant)
        grant.close()
    assert sorted(p.name for p in tmp_path.iterdir() if "broken" in p.name) == []


# --- what cron sees --------------------------------------------------------------------------


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    (line,) = strip_timestamps(stderr).splitlines()
    assert line.startswith("cxsmtp: error: ")
    return line


@pytest.fixture
def configured(isolated: Any, sink_factory: Any) -> Any:
    sink = sink_factory()
    save_config(Config(path=isolated.config, servers={"local": entry_for(sink)}))
    return sink


@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_send_with_a_damaged_ledger_exits_73_and_says_what_to_do(
    tmp_path: Path, isolated: Any, configured: Any, cxsmtp: Any, how: str
) -> None:
    damaged_ledger(isolated.state_dir, how)
    spool = make_spool(tmp_path, 3)
    result = cxsmtp("send", str(spool))
    assert result.returncode == 73, result.stderr
    line = one_error_line(result.stderr)
    assert f"the rate ledger {isolated.state_dir / Ledger.FILENAME} is damaged" in line
    assert "run `cxsmtp doctor SPOOL...`" in line
    assert names(spool) == ["m00000.eml", "m00001.eml", "m00002.eml"]  # all still queued
    assert configured.messages == [] and names(spool / "sent") == []


def test_send_with_a_symlinked_ledger_exits_78_and_creates_nothing(
    tmp_path: Path, isolated: Any, configured: Any, cxsmtp: Any
) -> None:
    isolated.state_dir.mkdir()
    link = isolated.state_dir / Ledger.FILENAME
    link.symlink_to(tmp_path / "elsewhere.sqlite3")
    spool = make_spool(tmp_path, 2)
    result = cxsmtp("send", str(spool))
    assert result.returncode == 78, result.stderr
    assert f"refusing to use {link}: it is a symbolic link" in one_error_line(result.stderr)
    assert not os.path.lexists(tmp_path / "elsewhere.sqlite3")
    assert names(spool) == ["m00000.eml", "m00001.eml"] and configured.messages == []
