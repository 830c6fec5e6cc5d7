"""The spool never works through a symlink inside SPOOL (issue 10): a producer who may
write into SPOOL can replace ``sent/``, ``.cxsmtp/``… by a symlink, and must not make
cxsmtp move or create files elsewhere.  Real files, the real CLI for the exit code."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cxsmtp, strip_timestamps
from servers import entry_for, listing, make_spool

from carerix_smtp.config.file import Config, save_config
from carerix_smtp.errors import ExitCode, StorageError, SymlinkRefusedError
from carerix_smtp.spool.records import MessageState, RecipientResult, day_file
from carerix_smtp.spool.spool import Spool

T0 = 1_700_000_000.0
MESSAGE = b"From: a@x.example\nTo: r@y.example\nMessage-ID: <1@test>\nDate: x\n\nbody\n"


def sent_state(name: str) -> MessageState:
    accepted = {"r@y.example": RecipientResult(250, "2.0.0", "ok", T0)}
    return MessageState(name=name, accepted=accepted, queued_at=T0)


def swap_for_symlink(spool: Path, sub: str, target: Path) -> None:
    """What a producer with write access to SPOOL can do: the real directory (if
    any) moves aside, a symlink takes its name."""
    if (spool / sub).exists():
        (spool / sub).rename(spool / f"{sub}.moved-away")
    (spool / sub).symlink_to(target, target_is_directory=True)


def entries(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*"))


# --- through the CLI ---------------------------------------------------------------------


@pytest.mark.parametrize("sub", ["sent", "failed", "deferred", "tmp", ".cxsmtp"])
def test_send_refuses_a_symlinked_subdirectory_exit_78(
    tmp_path: Path, isolated: Any, sink_factory: Any, sub: str
) -> None:
    sink = sink_factory()
    save_config(Config(path=isolated.config, servers={"local": entry_for(sink)}))
    spool = make_spool(tmp_path, 3)
    if sub != ".cxsmtp":  # a spool that has run before: .cxsmtp/ exists
        assert run_cxsmtp("send", str(spool), "--dry-run").returncode == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    swap_for_symlink(spool, sub, elsewhere)
    queued = {name: data for name, data in listing(spool).items() if name.endswith(".eml")}

    result = run_cxsmtp("send", str(spool))

    assert result.returncode == 78, (result.stdout, result.stderr)
    (line,) = strip_timestamps(result.stderr).splitlines()
    assert line.startswith("cxsmtp: error: ")
    assert f"{spool / sub} is a symbolic link" in line
    assert entries(elsewhere) == []  # nothing moved or created through it
    assert {n: d for n, d in listing(spool).items() if n.endswith(".eml")} == queued
    assert sink.messages == []


# --- spool level -------------------------------------------------------------------------


@pytest.mark.parametrize("sub", [".cxsmtp/claims", ".cxsmtp/claims/queued", "sent"])
def test_lock_refuses_a_symlinked_directory_before_anything_moves(tmp_path: Path, sub: str) -> None:
    spool = Spool(make_spool(tmp_path, 2), clock=lambda: T0)
    spool.prepare()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    swap_for_symlink(spool.path, sub, elsewhere)
    with pytest.raises(SymlinkRefusedError) as info, spool.lock():
        pass
    assert str(info.value).startswith(f"{spool.path / sub} is a symbolic link")
    assert info.value.exit_code == ExitCode.CONFIG
    assert entries(elsewhere) == []


def test_a_directory_swapped_during_a_run_does_not_redirect_moves(tmp_path: Path) -> None:
    """The race a check-then-rename would lose: sent/ becomes a symlink after the run
    opened it.  The move and the record go to the directory opened, not the link."""
    spool = Spool(make_spool(tmp_path, 1), clock=lambda: T0)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with spool.lock() as held:
        assert held
        claim = spool.claim(spool.candidates()[0])
        assert claim is not None
        swap_for_symlink(spool.path, "sent", elsewhere)
        spool.record_outcome(claim, sent_state(claim.name))
        spool.finish()
    assert entries(elsewhere) == []
    assert entries(spool.path / "sent.moved-away") == ["m00000.eml", day_file(T0)]


@pytest.mark.parametrize("name", ["lock", "journal", "delivery.log"])
def test_symlinked_state_files_are_refused(tmp_path: Path, name: str) -> None:
    spool = Spool(make_spool(tmp_path, 1), clock=lambda: T0)
    spool.prepare()
    target = tmp_path / "target"
    target.write_bytes(b"")
    (spool.state_dir / name).symlink_to(target)
    with pytest.raises(SymlinkRefusedError) as info, spool.lock():
        claim = spool.claim(spool.candidates()[0])
        assert claim is not None
        spool.record_outcome(claim, sent_state(claim.name))
        spool.log_delivery({"file": claim.name, "outcome": "sent"})
    assert str(info.value).startswith(f"{spool.state_dir / name} is a symbolic link")
    assert target.read_bytes() == b""


def test_enqueue_refuses_a_symlinked_tmp(tmp_path: Path) -> None:
    spool = Spool(make_spool(tmp_path), clock=lambda: T0)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    swap_for_symlink(spool.path, "tmp", elsewhere)
    with pytest.raises(SymlinkRefusedError, match="tmp is a symbolic link"):
        spool.enqueue(MESSAGE)
    assert entries(elsewhere) == []
    assert [n for n in os.listdir(spool.path) if n.endswith(".eml")] == []


def test_spool_itself_may_be_a_symlink(tmp_path: Path) -> None:
    """SPOOL as the admin names it is trusted: a symlink to the real directory works."""
    real = make_spool(tmp_path, 1)
    link = tmp_path / "spool-link"
    link.symlink_to(real, target_is_directory=True)
    spool = Spool(link, clock=lambda: T0)
    with spool.lock():
        claim = spool.claim(spool.candidates()[0])
        assert claim is not None
        spool.record_outcome(claim, sent_state(claim.name))
    assert entries(real / "sent") == ["m00000.eml", day_file(T0)]


def test_a_file_where_a_subdirectory_belongs_is_a_storage_error(tmp_path: Path) -> None:
    spool = Spool(make_spool(tmp_path, 1), clock=lambda: T0)
    (spool.path / "failed").write_bytes(b"not a directory")
    with pytest.raises(StorageError) as info, spool.lock():
        pass
    assert not isinstance(info.value, SymlinkRefusedError)
    assert str(info.value).startswith(f"cannot open directory {spool.path / 'failed'}: ")
    assert info.value.exit_code == ExitCode.IOERR
