"""spool/listing.py: one listing per directory, and windows that do not cap a run."""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import eml, make_spool

from carerix_smtp.spool import layout as layout_module
from carerix_smtp.spool.listing import DueQueue, _Columns
from carerix_smtp.spool.spool import Spool


def _aged(spool: Path, names: list[str], start: float) -> None:
    for offset, name in enumerate(names):
        os.utime(spool / name, (start + offset, start + offset))


def test_ahead_goes_on_past_the_held_window_in_sending_order(
    tmp_path: Path, listed: Counter[str]
) -> None:
    spool = make_spool(tmp_path, 25)
    _aged(spool, sorted(p.name for p in spool.glob("*.eml")), time.time() - 100)
    candidates = Spool(spool).candidates(limit=10)
    assert len(candidates) == 25 and list.__len__(candidates) == 10  # 10 held
    assert [c.name for c in candidates.ahead(3)] == [f"m{n:05d}.eml" for n in range(3, 25)]
    assert listed["."] == 1 + 2  # a window at a time
    # a caller that says how many it wants gets the rest in one listing
    assert [c.name for c in candidates.ahead(3, want=22)][-1] == "m00024.eml"
    assert listed["."] == 1 + 2 + 1
    assert [c.name for c in candidates] == [f"m{n:05d}.eml" for n in range(25)]


def test_a_listing_says_what_waits_in_deferred_without_listing_it_again(
    tmp_path: Path, listed: Counter[str]
) -> None:
    spool = make_spool(tmp_path, 2)
    (spool / "deferred").mkdir()
    later = time.time() + 3600
    for n, when in ((7, later), (8, later + 60), (9, time.time() - 5)):
        path = spool / "deferred" / f"d{n}.eml"
        path.write_bytes(eml(n))
        os.utime(path, (when, when))
    candidates = Spool(spool).candidates()
    assert [c.name for c in candidates] == ["d9.eml", "m00000.eml", "m00001.eml"]
    assert (candidates.waiting, candidates.next_retry) == (2, pytest.approx(later))
    assert listed == Counter({".": 1, "deferred": 1})


def test_status_lists_each_directory_once_and_keeps_the_due_queue(
    tmp_path: Path, listed: Counter[str]
) -> None:
    spool = make_spool(tmp_path, 3)
    Spool(spool).prepare()
    (spool / "deferred" / "d1.eml").write_bytes(eml(1))
    os.utime(spool / "deferred" / "d1.eml", (time.time() - 10, time.time() - 10))
    (spool / "deferred" / "d2.eml").write_bytes(eml(2))
    os.utime(spool / "deferred" / "d2.eml", (time.time() + 600, time.time() + 600))
    (spool / "failed" / "f.eml").write_bytes(eml(3))
    listed.clear()
    status = Spool(spool).status()
    assert (status.queued.count, status.deferred.count, status.due_now) == (3, 2, 1)
    assert [row[1] for row in status.queue.deferred] == ["d1.eml"]
    assert [row[1] for row in status.queue.queued] == ["m00000.eml", "m00001.eml", "m00002.eml"]
    assert status.queue.sizes() == [len(eml(1)), *(len(eml(n)) for n in range(3))]
    # sent/ is also read by records.read_records (its records may move to a file per day)
    assert {rel: n for rel, n in listed.items() if rel != "sent"} == dict.fromkeys(
        (rel for rel in listed if rel != "sent"), 1
    )
    assert {".", "deferred", "failed", "tmp"} <= set(listed)


def test_status_counts_what_a_listing_per_file_counted(tmp_path: Path) -> None:
    """The columns of the status pass: dot-files and other names left out, a symlink
    counted (bytes of the link) but not in the sizes to send, records of deferred/
    and failed/ seen on the way."""
    spool = make_spool(tmp_path, 3)
    Spool(spool).prepare()
    (spool / ".hidden.eml").write_bytes(eml(9))
    (spool / "notes.txt").write_bytes(b"x")
    (spool / "link.eml").symlink_to(spool / "m00000.eml")
    os.utime(spool / "link.eml", (1, 1), follow_symlinks=False)
    (spool / "deferred" / "d.eml").write_bytes(eml(4))
    (spool / "deferred" / "d.eml.json").write_text("{}")
    status = Spool(spool).status()
    link = os.lstat(spool / "link.eml")
    assert status.queued.count == 4
    assert status.queued.bytes == sum(len(eml(n)) for n in range(3)) + link.st_size
    assert status.queued.oldest == 1
    assert status.queue.sizes() == [len(eml(4)), *(len(eml(n)) for n in range(3))]
    assert [c.name for c in status.queue.candidates()][:2] == ["d.eml", "link.eml"]
    assert status.queue.candidates()[1].file_type == "symlink"


def test_status_skips_a_message_that_goes_while_it_is_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A send run takes a message between the listing and its lstat: it is not
    counted, the others are."""
    spool = make_spool(tmp_path, 4)
    real = layout_module.SpoolLayout.listing
    taken: list[str] = []

    def one_goes(entries: Iterator[os.DirEntry[str]]) -> Iterator[os.DirEntry[str]]:
        for entry in entries:
            if not taken:  # once, after the listing has begun
                gone = next(p for p in spool.glob("*.eml") if p.name != entry.name)
                gone.unlink()
                taken.append(gone.name)
            yield entry

    @contextlib.contextmanager
    def listing_while_one_goes(
        self: layout_module.SpoolLayout, rel: str
    ) -> Iterator[Iterator[os.DirEntry[str]]]:
        with real(self, rel) as entries:
            yield one_goes(entries) if rel == "" else entries

    monkeypatch.setattr(layout_module.SpoolLayout, "listing", listing_while_one_goes)
    status = Spool(spool).status()
    assert taken and status.queued.count == 3
    assert [row[1] for row in status.queue.queued] == sorted(p.name for p in spool.glob("*.eml"))


@pytest.mark.parametrize(
    "mtimes",
    [
        [1.0, 2.0, 3.0, 4.0],  # listed in sending order: no sort
        [4.0, 3.0, 2.0, 1.0],  # newest first (tmpfs): reversed, no sort
        [2.0, 2.0, 1.0, 3.0],  # a tie: by name
        [3.0, 1.0, 4.0, 2.0],
    ],
)
def test_due_sizes_are_in_sending_order_however_the_directory_lists(
    mtimes: list[float],
) -> None:
    names = ["b.eml", "a.eml", "d.eml", "c.eml"]
    sizes = [10, 20, 30, 40]
    regular = [stat.S_IFREG | 0o600] * 4
    queue = DueQueue(queued=_Columns(names, mtimes, sizes, regular))
    expected = [size for _, _, size in sorted(zip(mtimes, names, sizes, strict=True))]
    assert queue.sizes() == expected
    assert [row[2] for row in queue.queued] == expected
