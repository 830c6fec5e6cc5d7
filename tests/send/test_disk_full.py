"""A full disk (issue 10): the run stops with one line and exit 75, nothing is lost,
and the next run after space is freed sends at most one duplicate per connection.

The end-to-end tests put the spool (or the state dir) on a real, small tmpfs --
mounting one needs root; they are skipped with the reason otherwise -- and run the
real ``cxsmtp send`` against the cxsmtp Sink.  The in-process test makes the
spool's outcome write fail mid-batch without root, to check what the run closes.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cxsmtp, strip_timestamps
from servers import config_for, entry_for, make_spool, message_ids, names

from carerix_smtp.config.file import Config, save_config
from carerix_smtp.errors import StorageError
from carerix_smtp.limits.sqlite import Ledger
from carerix_smtp.send.report import SendOptions
from carerix_smtp.send.run import run_send
from carerix_smtp.spool.spool import Spool

NO_SPACE = os.strerror(errno.ENOSPC)  # "No space left on device"
MESSAGES = 300


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str, str], Path]]:
    """``tmpfs(name, size)``: a fresh tmpfs of ``size`` (mount's syntax: "1m") at
    tmp_path/name, unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("a real full disk needs a tmpfs, and mounting one needs root")
    mounted: list[Path] = []

    def mount(name: str, size: str) -> Path:
        point = tmp_path / name
        point.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(point)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        if subprocess.run(["umount", str(point)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(point)], check=True)


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill ``disk`` up to ``leave`` free bytes with one file (delete it to free the space)."""
    filler = disk / "filler"
    st = os.statvfs(disk)
    todo = max(0, st.f_bavail * st.f_frsize - leave)
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        chunk = b"\0" * 65536
        while True:
            size = min(len(chunk), todo) if leave else len(chunk)
            if leave and size == 0:
                break
            try:
                todo -= os.write(fd, chunk[:size])
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    finally:
        os.close(fd)
    return filler


@pytest.fixture
def sink(isolated: Any, sink_factory: Any) -> Callable[..., Any]:
    """A running Sink and a config (the isolated CXSMTP_CONFIG) pointing at it."""

    def start(**entry: Any) -> Any:
        the_sink = sink_factory()
        save_config(Config(path=isolated.config, servers={"local": entry_for(the_sink, **entry)}))
        return the_sink

    return start


def one_error_line(stderr: str) -> str:
    lines = strip_timestamps(stderr).splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("cxsmtp: error: "), stderr
    return lines[0]


def expected_ids(count: int) -> set[str]:
    return {f"<{n}.test@x.example>" for n in range(count)}


def open_reservations(state_dir: Path) -> int:
    with sqlite3.connect(state_dir / Ledger.FILENAME) as db:
        return int(
            db.execute("SELECT COUNT(*) FROM reservations WHERE closed_at IS NULL").fetchone()[0]
        )


def counted_sends(state_dir: Path) -> int:
    with sqlite3.connect(state_dir / Ledger.FILENAME) as db:
        return int(db.execute("SELECT COUNT(*) FROM sends WHERE presumed = 0").fetchone()[0])


def assert_all_delivered(spool: Path, sink: Any, count: int, connections: int) -> None:
    """Every message in sent/ and at the server; a duplicate only per connection."""
    assert names(spool) == [] and Spool(spool).claims() == []
    assert len(names(spool / "sent")) == count
    received = Counter(message_ids(sink))
    assert set(received) == expected_ids(count)
    duplicates = sum(received.values()) - len(received)
    assert duplicates <= connections, received.most_common(5)


# --- the spool on a full disk -----------------------------------------------------------


def test_full_disk_before_the_run_exit_75_one_line(tmpfs: Any, sink: Any) -> None:
    the_sink = sink()
    disk = tmpfs("spooldisk", "1m")
    spool = make_spool(disk, 3)
    filler = fill(disk)
    result = run_cxsmtp("send", str(spool))
    assert result.returncode == 75, result.stderr
    line = one_error_line(result.stderr)
    assert NO_SPACE in line and str(spool) in line
    assert names(spool) == ["m00000.eml", "m00001.eml", "m00002.eml"]
    assert the_sink.messages == []

    filler.unlink()
    again = run_cxsmtp("send", str(spool))
    assert again.returncode == 0, again.stderr
    assert_all_delivered(spool, the_sink, 3, connections=0)


@pytest.mark.parametrize("connections", [1, 4])
def test_disk_full_mid_batch_then_nothing_lost(
    tmpfs: Any, sink: Any, isolated: Any, connections: int
) -> None:
    the_sink = sink(connections=connections)
    disk = tmpfs("spooldisk", "4m")  # 300 messages + their records: a page each
    spool = make_spool(disk, MESSAGES)
    filler = fill(disk, leave=40 * 4096)  # room for a few dozen outcomes
    result = run_cxsmtp("send", str(spool))
    assert result.returncode == 75, result.stderr
    line = one_error_line(result.stderr)
    assert NO_SPACE in line and str(spool) in line
    sent_first = len(the_sink.messages)
    assert 0 < sent_first < MESSAGES  # it did stop in the middle
    # The ledger's batch was closed, and it counts what the server accepted.
    assert open_reservations(isolated.state_dir) == 0
    assert counted_sends(isolated.state_dir) == sent_first

    filler.unlink()
    again = run_cxsmtp("send", str(spool))
    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stderr
    assert_all_delivered(spool, the_sink, MESSAGES, connections)


# --- the state dir on a full disk ---------------------------------------------------------


def test_state_dir_on_a_full_disk_one_line(tmpfs: Any, sink: Any, tmp_path: Path) -> None:
    the_sink = sink()
    state = tmpfs("statedisk", "256k") / "state"
    spool = make_spool(tmp_path, 3)
    filler = fill(state.parent)
    result = run_cxsmtp("send", str(spool), env={"CXSMTP_STATE_DIR": str(state)})
    assert result.returncode in (73, 75), result.stderr  # README: state dir cannot be written
    line = one_error_line(result.stderr)
    assert str(state) in line
    assert names(spool) == ["m00000.eml", "m00001.eml", "m00002.eml"]
    assert the_sink.messages == [] and Spool(spool).claims() == []

    filler.unlink()
    again = run_cxsmtp("send", str(spool), env={"CXSMTP_STATE_DIR": str(state)})
    assert again.returncode == 0, again.stderr
    assert_all_delivered(spool, the_sink, 3, connections=0)


def test_state_dir_fills_during_the_run(tmpfs: Any, sink: Any, tmp_path: Path) -> None:
    """The ledger's disk fills while messages go out: one line, and the next run
    sends the rest, at most one twice (``first``'s message has Message-ID <0...> too)."""
    the_sink = sink()
    state = tmpfs("statedisk", "8m") / "state"  # room for the WAL of 100 commits
    env = {"CXSMTP_STATE_DIR": str(state)}
    first = make_spool(tmp_path / "first", 1)
    assert run_cxsmtp("send", str(first), env=env).returncode == 0  # the ledger exists
    spool = make_spool(tmp_path, 100)
    filled: list[Path] = []
    fill_lock = threading.Lock()

    def fill_at_the_twentieth(_received: Any) -> None:
        with fill_lock:
            if len(the_sink.messages) >= 21 and not filled:
                filled.append(fill(state.parent))

    the_sink.on_message = fill_at_the_twentieth
    result = run_cxsmtp("send", str(spool), env=env)
    assert filled, "the disk was never filled"
    assert result.returncode in (73, 75), result.stderr
    line = one_error_line(result.stderr)
    assert str(state) in line
    assert 21 <= len(the_sink.messages) <= 100

    the_sink.on_message = None
    filled[0].unlink()
    again = run_cxsmtp("send", str(spool), env=env)
    assert again.returncode == 0, again.stderr
    received = Counter(message_ids(the_sink))
    assert set(received) == expected_ids(100)
    assert names(spool) == [] and len(names(spool / "sent")) == 100
    assert sum(received.values()) - len(received) <= 2  # `first`'s, and one in flight


# --- what the run closes when the spool fails mid-batch (no root needed) ----------------------


@pytest.mark.parametrize("connections", [1, 4])
def test_a_storage_error_mid_batch_stops_the_run_cleanly(
    tmp_path: Path, sink_factory: Any, monkeypatch: pytest.MonkeyPatch, connections: int
) -> None:
    the_sink = sink_factory()
    spool = make_spool(tmp_path, 100)
    config = config_for(tmp_path, entry_for(the_sink, connections=connections))
    state = tmp_path / "state"
    record_outcome = Spool.record_outcome
    calls = Counter[str]()
    lock = threading.Lock()

    def failing_from_the_40th(self: Spool, claim: Any, state_: Any) -> Path:
        with lock:
            calls["n"] += 1
            if calls["n"] >= 40:
                raise StorageError.from_os_error(
                    OSError(errno.ENOSPC, NO_SPACE), "write", self.journal_path
                )
        return record_outcome(self, claim, state_)

    monkeypatch.setattr(Spool, "record_outcome", failing_from_the_40th)
    ledger = Ledger.in_state_dir(state)
    try:
        with pytest.raises(StorageError) as raised:
            run_send(spool, config, SendOptions(), ledger=ledger, password_source=lambda e: None)
        assert raised.value.exit_code == 75 and NO_SPACE in str(raised.value)
        # Closed: the server's connections, the ledger's batch, the spool's lock.
        assert the_sink.wait_until(lambda s: s.connections_open == 0, timeout=10)
        assert open_reservations(state) == 0
        assert counted_sends(state) == len(the_sink.messages)
        with Spool(spool).lock() as held:
            assert held
        assert len(the_sink.messages) < 100

        monkeypatch.setattr(Spool, "record_outcome", record_outcome)
        summary = run_send(
            spool, config, SendOptions(), ledger=ledger, password_source=lambda e: None
        )
    finally:
        ledger.close()
    assert summary.status == "ok"
    assert_all_delivered(spool, the_sink, 100, connections)
