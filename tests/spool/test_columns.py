"""spool/columns.py: a big directory's lstat split with a forked child gives the
columns a single process gives; an entry that goes meanwhile is left out; without
a child (fork refused) this process does all of it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from servers import eml, make_spool

from carerix_smtp.spool import columns as columns_module
from carerix_smtp.spool.columns import Columns, list_columns
from carerix_smtp.spool.layout import SpoolLayout


def layout_of(spool: Path) -> SpoolLayout:
    return SpoolLayout(spool, durable=False, clock=time.time)


def spool_with_odd_entries(tmp_path: Path, count: int) -> Path:
    spool = make_spool(tmp_path, count)
    for n, path in enumerate(sorted(spool.glob("*.eml"))):
        os.utime(path, (1_000_000 + n, 1_000_000 + n))
    (spool / ".hidden.eml").write_bytes(eml(90))
    (spool / "notes.txt").write_bytes(b"x")
    (spool / "m00003.eml.json").write_text("{}")
    (spool / "link.eml").symlink_to(spool / "m00000.eml")
    return spool


def as_set(columns: Columns) -> set[tuple[str, float, int, int]]:
    rows = zip(columns.names, columns.mtimes, columns.sizes, columns.modes, strict=True)
    return set(rows)


def expected(spool: Path) -> set[tuple[str, float, int, int]]:
    out = set()
    for path in spool.iterdir():
        if path.name.endswith(".eml") and not path.name.startswith("."):
            st = os.lstat(path)
            out.add((path.name, st.st_mtime, st.st_size, st.st_mode))
    return out


def test_the_split_gives_what_one_process_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = spool_with_odd_entries(tmp_path, 40)
    monkeypatch.setattr(columns_module, "_two_cpus", lambda: True)
    monkeypatch.setattr(columns_module, "SPLIT_AT", 10**9)
    records_one: list[str] = []
    one = list_columns(layout_of(spool), "", records_one)
    monkeypatch.setattr(columns_module, "SPLIT_AT", 4)
    forks: list[int] = []
    real_fork = os.fork

    def counting_fork() -> int:
        pid = real_fork()
        if pid:
            forks.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", counting_fork)
    stat_here: list[int] = []
    real_chunks = columns_module._stat_chunks

    def counting_chunks(columns: Columns, entries: list[os.DirEntry[str]], records: object) -> None:
        stat_here.append(len(entries))
        real_chunks(columns, entries, records)  # type: ignore[arg-type]

    monkeypatch.setattr(columns_module, "_stat_chunks", counting_chunks)
    records_split: list[str] = []
    split = list_columns(layout_of(spool), "", records_split)
    listed = len(os.listdir(spool))
    assert stat_here == [listed // 2]  # this process stat'ed the first half only: ...
    assert len(forks) == 1  # ... a child did the other half ...
    with pytest.raises(ChildProcessError):
        os.waitpid(forks[0], os.WNOHANG)  # ... and was reaped
    assert as_set(split) == as_set(one) == expected(spool)
    assert len(split.names) == 41  # 40 messages and the symlink
    assert records_split == records_one == ["m00003.eml.json"]


def test_listings_that_differ_or_an_entry_that_goes_leave_it_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last entry goes after this process listed it and before the child lists:
    the two listings differ, this process stats its second half itself, finds the
    entry gone and lists again; the entry is left out, the others are all there."""
    spool = make_spool(tmp_path, 30)
    last = os.listdir(spool)[-1]  # listed last by scandir too: in the second half
    monkeypatch.setattr(columns_module, "_two_cpus", lambda: True)
    monkeypatch.setattr(columns_module, "SPLIT_AT", 4)
    real = columns_module._ChildStat.__init__

    def gone_first(self: columns_module._ChildStat, dir_fd: int) -> None:
        (spool / last).unlink()  # sent by another run meanwhile
        real(self, dir_fd)

    monkeypatch.setattr(columns_module._ChildStat, "__init__", gone_first)
    columns = list_columns(layout_of(spool), "")
    assert len(columns.names) == 29 and last not in columns.names
    assert as_set(columns) == expected(spool)


@pytest.mark.parametrize("answer", [b"G", b"X", b"S" + bytes(16)])
def test_a_child_that_saw_an_entry_go_or_failed_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: bytes
) -> None:
    """G (an entry had gone): listed again; a failure or a wrong answer: this process
    stats the second half itself.  The columns are right either way."""
    spool = spool_with_odd_entries(tmp_path, 30)
    monkeypatch.setattr(columns_module, "_two_cpus", lambda: True)
    monkeypatch.setattr(columns_module, "SPLIT_AT", 4)
    monkeypatch.setattr(columns_module, "_second_half", lambda dir_fd: answer)
    records: list[str] = []
    columns = list_columns(layout_of(spool), "", records)
    assert as_set(columns) == expected(spool)
    assert records == ["m00003.eml.json"]


def test_without_a_child_this_process_stats_every_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = spool_with_odd_entries(tmp_path, 25)
    monkeypatch.setattr(columns_module, "_two_cpus", lambda: True)
    monkeypatch.setattr(columns_module, "SPLIT_AT", 4)

    def no_fork() -> int:
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    columns = list_columns(layout_of(spool), "")
    assert as_set(columns) == expected(spool)
