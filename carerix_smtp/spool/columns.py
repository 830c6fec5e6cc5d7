"""A directory's ``*.eml`` entries as columns: what ``cxsmtp status`` lists.

One pass per directory: scandir, then an lstat per entry (no file is opened),
then the columns and selections made in C by ``map`` and ``compress``.  The lstat
is nearly all of the cost (about 2 µs a file here: the system call and the stat
result), so a big directory (SPLIT_AT entries or more, on a machine with a second
CPU) is done on two cores: a forked child lists the directory too and lstats the
second half of its listing, and sends back the times, sizes and modes, packed as
arrays, with the count and a hash of the names, while this process lists it and
does the first half.  When the two listings differ (the directory changed in
between) or the child could not do its part, this process does the second half
too.  The child only lists, stats and writes, and leaves with ``os._exit``.
"""

from __future__ import annotations

import contextlib
import itertools
import operator
import os
import signal
import struct
from array import array
from collections.abc import Iterator, Sequence
from itertools import compress
from typing import NamedTuple

from carerix_smtp.spool.layout import RECORD_SUFFIX, SUFFIX, SpoolLayout, storage

Row = tuple[float, str, int, int]  # (mtime, name, size, st_mode) of one *.eml entry

SPLIT_AT = 10_000  # entries: below this a fork costs more than the second core saves
_CHUNK = 4096  # entries stat'ed at a time: their stat results are freed before the next


class Columns(NamedTuple):
    """The *.eml entries of one directory as columns (a status pass: no object per
    entry beyond what scandir and stat make; sums and minimums run in C)."""

    names: list[str]
    mtimes: list[float]
    sizes: list[int]
    modes: list[int]

    def rows(self) -> list[Row]:
        """(mtime, name, size, st_mode) per entry, oldest first, then by name."""
        return sorted(zip(self.mtimes, self.names, self.sizes, self.modes, strict=True))

    def listed_in_order(self) -> int:
        """1 when the listing is in sending order already (mtimes strictly rising),
        -1 when in the reverse order (tmpfs lists the newest first), else 0."""
        mtimes = self.mtimes
        if all(map(operator.lt, mtimes, itertools.islice(mtimes, 1, None))):
            return 1
        if all(map(operator.gt, mtimes, itertools.islice(mtimes, 1, None))):
            return -1
        return 0


def list_columns(layout: SpoolLayout, rel: str, records: list[str] | None = None) -> Columns:
    """The *.eml entries (not dot-files) of ``rel``, as columns; ``records`` gets the
    names of the ``NAME.eml.json`` records seen on the way.  An entry that goes while
    it is listed (sent, removed) is left out."""
    columns = Columns([], [], [], [])
    try:
        # (the entries stat through the listing's descriptor: only while it is open)
        with layout.listing(rel) as listing:
            entries, child = _list_entries(layout, rel, listing)
            try:
                _stat_into(columns, entries, child, records)
            finally:
                if child is not None:
                    child.close()
        return columns
    except FileNotFoundError:  # gone meanwhile: list again, an entry at a time
        if records is not None:
            records.clear()
        columns = Columns([], [], [], [])
        kept, stats = _still_there(layout, rel)
        _add_stats(columns, kept, stats, records)
        return columns


def _list_entries(
    layout: SpoolLayout, rel: str, listing: Iterator[os.DirEntry[str]]
) -> tuple[list[os.DirEntry[str]], _ChildStat | None]:
    """Every entry of the listing, and the child that does the second half's lstat
    when the directory is big (started as soon as that shows, to list in parallel)."""
    with storage("list", layout.dir(rel)):
        entries = list(itertools.islice(listing, SPLIT_AT))
        child = _ChildStat(layout.fd(rel)) if len(entries) == SPLIT_AT and _two_cpus() else None
        entries += listing
    return entries, child


def _stat_into(
    columns: Columns,
    entries: list[os.DirEntry[str]],
    child: _ChildStat | None,
    records: list[str] | None,
) -> None:
    """lstat ``entries`` into ``columns``: the second half from ``child`` when it has it."""
    half = len(entries) // 2 if child is not None else len(entries)
    _stat_chunks(columns, entries[:half], records)
    if child is None:
        return
    second = entries[half:]
    done = child.result(second)
    if done is None:
        _stat_chunks(columns, second, records)
    else:
        _add(columns, list(map(_NAME, second)), done, records)


def _stat_chunks(
    columns: Columns, entries: list[os.DirEntry[str]], records: list[str] | None
) -> None:
    for start in range(0, len(entries), _CHUNK):
        chunk = entries[start : start + _CHUNK]
        # (a comprehension: a methodcaller with keywords costs more per call)
        stats = [entry.stat(follow_symlinks=False) for entry in chunk]
        _add_stats(columns, chunk, stats, records)


def _add_stats(
    columns: Columns,
    entries: Sequence[os.DirEntry[str]],
    stats: list[os.stat_result],
    records: list[str] | None,
) -> None:
    values = (list(map(_MTIME, stats)), list(map(_SIZE, stats)), list(map(_MODE, stats)))
    _add(columns, list(map(_NAME, entries)), values, records)


def _add(
    columns: Columns,
    names: list[str],
    values: tuple[list[float], list[int], list[int]],
    records: list[str] | None,
) -> None:
    """Add the *.eml entries of ``names`` (with their mtimes, sizes, modes)."""
    if records is not None:
        records += compress(names, map(_IS_RECORD, names))
    if names and min(names) < "/":  # a dot-file (or a name before "/"): rare
        wanted = [name.endswith(SUFFIX) and not name.startswith(".") for name in names]
    else:
        wanted = list(map(_IS_EML, names))
    mtimes, sizes, modes = values
    columns.names.extend(compress(names, wanted))
    columns.mtimes.extend(compress(mtimes, wanted))
    columns.sizes.extend(compress(sizes, wanted))
    columns.modes.extend(compress(modes, wanted))


def _still_there(
    layout: SpoolLayout, rel: str
) -> tuple[list[os.DirEntry[str]], list[os.stat_result]]:
    """The listing again, an entry at a time, without the entries that have gone."""
    kept: list[os.DirEntry[str]] = []
    stats: list[os.stat_result] = []
    for entry in layout.scandir(rel):
        try:
            stats.append(entry.stat(follow_symlinks=False))
        except FileNotFoundError:
            continue
        kept.append(entry)
    return kept, stats


class _ChildStat:
    """A forked child that lists the directory of ``dir_fd`` on a descriptor of its
    own and lstats the second half of its listing.  It sends back one status byte
    (S: stat'ed, G: an entry had gone, anything else: it failed), then the count and
    the hash of those names (the same hash in parent and child: the fork keeps the
    hash seed) and the mtimes (``d``), sizes (``q``) and modes (``Q``) as arrays."""

    def __init__(self, dir_fd: int) -> None:
        self._pid = 0
        self._read = -1
        read, write = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(read)
            os.close(write)
            return  # no child: result() says so, and this process does the work
        if pid == 0:  # the child: list, stat, write, leave (nothing of the parent's runs)
            code = 0
            try:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                os.close(read)
                _write_all(write, _second_half(dir_fd))
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(write)
        self._pid, self._read = pid, read

    def result(
        self, second: list[os.DirEntry[str]]
    ) -> tuple[list[float], list[int], list[int]] | None:
        """The columns of ``second`` (this process's second half) from the child;
        None when it has no such columns (its listing differed, or it failed);
        FileNotFoundError when an entry had gone."""
        if self._read < 0:
            return None
        with os.fdopen(self._read, "rb") as pipe:
            self._read = -1
            data = pipe.read()
        self.close()
        if data[:1] == b"G":
            raise FileNotFoundError("a listed entry has gone")
        n = len(second)
        if data[:1] != b"S" or len(data) != 17 + 24 * n:
            return None
        count, names = _HEADER.unpack_from(data, 1)
        if count != n or names != hash(tuple(map(_NAME, second))):
            return None
        mtimes, sizes, modes = array("d"), array("q"), array("Q")
        mtimes.frombytes(data[17 : 17 + 8 * n])
        sizes.frombytes(data[17 + 8 * n : 17 + 16 * n])
        modes.frombytes(data[17 + 16 * n :])
        return mtimes.tolist(), sizes.tolist(), modes.tolist()

    def close(self) -> None:
        """Stop and reap the child (at once when it is done)."""
        if self._read >= 0:
            os.close(self._read)
            self._read = -1
        if self._pid:
            with contextlib.suppress(OSError):
                if os.waitpid(self._pid, os.WNOHANG) == (0, 0):
                    os.kill(self._pid, signal.SIGKILL)
                    os.waitpid(self._pid, 0)
            self._pid = 0


_HEADER = struct.Struct("=qq")  # count, hash of the names


def _second_half(dir_fd: int) -> bytes:
    """In the child: the packed columns of the second half of a listing of its own."""
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        with os.scandir(fd) as listing:
            entries = list(listing)
            second = entries[len(entries) // 2 :]
            try:
                stats = [entry.stat(follow_symlinks=False) for entry in second]
            except FileNotFoundError:
                return b"G"
    finally:
        os.close(fd)
    return b"".join(
        (
            b"S",
            _HEADER.pack(len(second), hash(tuple(map(_NAME, second)))),
            array("d", map(_MTIME, stats)).tobytes(),
            array("q", map(_SIZE, stats)).tobytes(),
            array("Q", map(_MODE, stats)).tobytes(),
        )
    )


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _two_cpus() -> bool:
    try:
        return len(os.sched_getaffinity(0)) > 1
    except (AttributeError, OSError):
        return (os.cpu_count() or 1) > 1


_NAME = operator.attrgetter("name")
_IS_EML = operator.methodcaller("endswith", SUFFIX)
_IS_RECORD = operator.methodcaller("endswith", SUFFIX + RECORD_SUFFIX)
_MTIME = operator.attrgetter("st_mtime")
_SIZE = operator.attrgetter("st_size")
_MODE = operator.attrgetter("st_mode")
