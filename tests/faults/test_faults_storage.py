"""The machine fails under the spool (issue 10's three gaps): a full disk, symlinked
spool directories, a damaged rate ledger.  Each is one line ``cxsmtp: error: …`` with
an exit code from the README's table, never a traceback, and nothing queued is lost."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import eml, entry_for, make_spool, message_ids

from faults.fault_helpers import (
    configure,
    duplicates,
    error_line,
    run_cxsmtp,
    send,
    spool_names,
    tally,
)

pytestmark = pytest.mark.slow

TOTAL = 40


# --- a full disk ------------------------------------------------------------------------


@contextlib.contextmanager
def small_disk(mountpoint: Path, size_kb: int) -> Iterator[Path]:
    """A tmpfs of ``size_kb`` at ``mountpoint``; root only (skipped otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("a full disk needs a small tmpfs, and mounting one needs root")
    mountpoint.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k,mode=0755", "tmpfs", str(mountpoint)]
    mounted = subprocess.run(mount, capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], check=True)


def fill(disk: Path, leave_kb: int) -> Path:
    """Fill ``disk`` with one file until ENOSPC, then give back ``leave_kb``."""
    filler = disk / "filler"
    chunk = b"\0" * 65536
    with filler.open("wb") as handle:
        try:
            while True:
                handle.write(chunk)
                handle.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - leave_kb * 1024))  # tmpfs frees the pages at once
    return filler


@pytest.mark.parametrize("free_kb", [0, 24])
def test_full_disk(
    tmp_path: Path, isolated: Any, sink_factory: Any, matrix: Any, free_kb: int
) -> None:
    """0 KB free: the lock's pid cannot be written; 24 KB: the run dies mid-batch
    when records and moves need room.  Either way: exit 75, one line with the
    errno text, and after space is freed a second run delivers everything."""
    sink = sink_factory()
    configure(isolated, entry_for(sink))
    with small_disk(tmp_path / "disk", 1024) as disk:
        spool = make_spool(disk, TOTAL)
        filler = fill(disk, free_kb)
        first = send(spool)
        assert first.returncode == 75, first.stderr  # README: a later run may succeed
        line = error_line(first.stderr)
        assert line.endswith("No space left on device") and str(spool) in line
        assert tally(spool).lost(spool_names(TOTAL)) == 0
        delivered_first = len(sink.messages)
        filler.unlink()
        second = send(spool)
        assert second.returncode == 0, second.stderr
        final = tally(spool)
    received = Counter(message_ids(sink))
    lost = final.lost(spool_names(TOTAL))
    matrix(
        runs=2,
        faults=1,
        total=TOTAL,
        lost=lost,
        duplicates=duplicates(received),
        note=f"{free_kb} KB free: {delivered_first} sent before ENOSPC",
    )
    assert lost == 0 and final.everywhere() == final.sent
    assert set(received) == {f"<{n}.test@x.example>" for n in range(TOTAL)}
    assert duplicates(received) <= 1  # one connection broken off by the full disk


# --- symlinks inside the spool and the state dir ----------------------------------------


@pytest.mark.parametrize("where", ["sent", "failed", "deferred", "tmp", ".cxsmtp", "ledger"])
def test_symlinked_directory_refused(
    tmp_path: Path, isolated: Any, sink_factory: Any, matrix: Any, where: str
) -> None:
    """A producer (who may write into the spool) plants a symlink; a cxsmtp running as
    someone more privileged must not move or create files through it."""
    sink = sink_factory()
    configure(isolated, entry_for(sink))
    spool = make_spool(tmp_path, 5)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if where == "ledger":
        isolated.state_dir.mkdir(parents=True, exist_ok=True)
        link = isolated.state_dir / "ledger.sqlite3"
        link.symlink_to(elsewhere / "ledger.sqlite3")
    else:
        link = spool / where
        link.symlink_to(elsewhere, target_is_directory=True)
    result = send(spool)
    assert result.returncode == 78, result.stderr  # README: configuration (the spool)
    assert str(link) in error_line(result.stderr)
    state = tally(spool)
    lost = state.lost(spool_names(5))
    matrix(runs=1, total=5, lost=lost, duplicates=0, case=f"symlinked {where}")
    assert list(elsewhere.iterdir()) == []  # nothing written through the link
    assert lost == 0 and state.queued == spool_names(5)
    assert sink.messages == []


# --- a damaged rate ledger --------------------------------------------------------------


def damage(ledger: Path, how: str) -> None:
    """``garbage``: not a database at all; ``pages``: a valid header, broken pages
    ("database disk image is malformed")."""
    for extra in (ledger.with_name(ledger.name + "-wal"), ledger.with_name(ledger.name + "-shm")):
        extra.unlink(missing_ok=True)
    data = ledger.read_bytes()
    junk = bytes((n * 37 + 11) % 256 for n in range(len(data)))
    ledger.write_bytes(junk if how == "garbage" else data[:100] + junk[100:])


@pytest.mark.parametrize("how", ["garbage", "pages"])
def test_damaged_ledger(
    tmp_path: Path, isolated: Any, sink_factory: Any, matrix: Any, how: str
) -> None:
    sink = sink_factory()
    configure(isolated, entry_for(sink))
    spool = make_spool(tmp_path, 3)
    assert send(spool).returncode == 0
    ledger = isolated.state_dir / "ledger.sqlite3"
    damage(ledger, how)
    for n in range(3, 6):
        (spool / f"m{n:05d}.eml").write_bytes(eml(n))
    result = send(spool)
    assert result.returncode == 73, result.stderr  # README: the state dir (rate ledger)
    line = error_line(result.stderr)
    assert str(ledger) in line and "cxsmtp doctor" in line
    assert tally(spool).queued == spool_names(6)[3:]
    assert len(sink.messages) == 3  # nothing sent without the ledger's limits
    # what the line says to do: the doctor rebuilds the ledger, cron goes on
    repaired = run_cxsmtp("doctor", str(spool))
    assert "Traceback" not in repaired.stderr
    after = send(spool)
    assert after.returncode == 0, (repaired.stdout, repaired.stderr, after.stderr)
    state = tally(spool)
    received = Counter(message_ids(sink))
    lost = state.lost(spool_names(6))
    matrix(runs=4, total=6, lost=lost, duplicates=duplicates(received))
    assert lost == 0 and state.everywhere() == state.sent
    assert sorted(received.values()) == [1] * 6
