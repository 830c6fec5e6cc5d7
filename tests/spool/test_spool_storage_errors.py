"""An OSError at a spool write point is a StorageError naming the path, with the exit
code by errno (issue 10), and leaves no half-written file.  Real conditions: a full
64 KB tmpfs (root only; skipped otherwise) and a directory where a file belongs."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from carerix_smtp.errors import ExitCode, StorageError
from carerix_smtp.spool.records import MessageState, RecipientResult
from carerix_smtp.spool.spool import Spool

T0 = 1_700_000_000.0
MESSAGE = b"From: a@x.example\nTo: r@y.example\nMessage-ID: <1@test>\nDate: x\n\nbody\n"


def sent_state(name: str) -> MessageState:
    accepted = {"r@y.example": RecipientResult(250, "2.0.0", "ok", T0)}
    return MessageState(name=name, accepted=accepted, queued_at=T0)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 64 KB tmpfs (needs root and mount(8))."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs")
    mountpoint = tmp_path / "fs"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(mountpoint)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the file system is full; returns it (delete it to free)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    return filler


def assert_full_disk(exc: StorageError, path: Path) -> None:
    assert exc.errno == errno.ENOSPC
    assert exc.exit_code == ExitCode.TEMPFAIL
    assert f" {path}: " in str(exc) and str(exc).endswith("No space left on device")


def test_full_disk_at_lock_names_the_lock_file(small_fs: Path) -> None:
    spool = Spool(small_fs, clock=lambda: T0)
    spool.prepare()
    fill(small_fs)
    with pytest.raises(StorageError) as info, spool.lock():
        pass
    assert str(info.value).startswith("cannot write the pid to")
    assert_full_disk(info.value, spool.lock_path)


def test_full_disk_at_enqueue_leaves_no_part_file(small_fs: Path) -> None:
    spool = Spool(small_fs, clock=lambda: T0)
    spool.prepare()
    fill(small_fs)
    with pytest.raises(StorageError) as info:
        spool.enqueue(MESSAGE * 100)
    assert "/tmp/." in str(info.value) and ".eml.part: " in str(info.value)
    assert info.value.exit_code == ExitCode.TEMPFAIL
    assert os.listdir(small_fs / "tmp") == []
    assert [n for n in os.listdir(small_fs) if n.endswith(".eml")] == []


def test_full_disk_at_the_journal_keeps_the_message_claimed(small_fs: Path) -> None:
    (small_fs / "m.eml").write_bytes(MESSAGE)
    spool = Spool(small_fs, clock=lambda: T0)
    with spool.lock():
        claim = spool.claim(spool.candidates()[0])
        assert claim is not None
        filler = fill(small_fs)
        with pytest.raises(StorageError) as info:
            spool.record_outcome(claim, sent_state(claim.name))
        assert str(info.value).startswith("cannot append to")
        assert_full_disk(info.value, spool.journal_path)
        assert claim.path.exists() and os.listdir(small_fs / "sent") == []
        with pytest.raises(StorageError) as info:
            spool.log_delivery({"file": claim.name, "outcome": "sent"})
        assert_full_disk(info.value, spool.delivery_log_path)
    filler.unlink()
    report = Spool(small_fs, clock=lambda: T0).recover()  # nothing lost: queued again
    assert report.requeued == ["m.eml"]
    assert (small_fs / "m.eml").read_bytes() == MESSAGE


def test_full_disk_at_a_record_leaves_no_temp_file(small_fs: Path) -> None:
    spool = Spool(small_fs, clock=lambda: T0)
    spool.prepare()
    fill(small_fs)
    layout = spool._layout
    with pytest.raises(StorageError) as info:
        layout.write_file("sent", "m.eml.json", b"{}" * 5000)
    assert_full_disk(info.value, small_fs / "sent" / "m.eml.json")
    assert os.listdir(small_fs / "sent") == []


@pytest.mark.parametrize("name", ["journal", "delivery.log"])
def test_a_directory_where_a_state_file_belongs(tmp_path: Path, name: str) -> None:
    path = tmp_path / "spool"
    path.mkdir()
    (path / "m.eml").write_bytes(MESSAGE)
    spool = Spool(path, clock=lambda: T0)
    spool.prepare()
    (spool.state_dir / name).mkdir()
    with spool.lock(), pytest.raises(StorageError) as info:
        claim = spool.claim(spool.candidates()[0])
        assert claim is not None
        spool.record_outcome(claim, sent_state(claim.name))
        spool.log_delivery({"file": claim.name, "outcome": "sent"})
    assert str(info.value) == f"cannot open {spool.state_dir / name}: Is a directory"
    assert info.value.exit_code == ExitCode.IOERR
