"""The queue listing and the spool's status: which messages are due, in sending
order (Candidate, CandidateList: a bounded window over one ``scandir`` per
directory, no file opened), and the counts ``cxsmtp status`` shows (SpoolStatus).

A command lists each directory once (issue 12: ``status`` listed the queue 11 times,
5 s for 100,000 files): ``status`` keeps what its one pass saw (the due queue in
sending order, for the limits' ETA), and a send run's listing also says what waits in
deferred/ (``CandidateList.waiting``).  Listed again only: the next window of a run
that goes past one, sent/ for its records (records.read_records), and what a run
left behind, after it sent (the spool has changed by then)."""

from __future__ import annotations

import contextlib
import functools
import heapq
import itertools
import json
import operator
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import compress
from pathlib import Path
from typing import Any, NamedTuple, SupportsIndex, overload

from carerix_smtp.spool.layout import (
    KINDS,
    RECORD_SUFFIX,
    STALE_TMP_AGE,
    SUFFIX,
    TOP,
    Kind,
    SpoolLayout,
    file_type,
    origin,
    storage,
)
from carerix_smtp.spool.records import MessageState, iso, read_bytes, read_records
from carerix_smtp.spool.status_cache import StatusCache


@dataclass(frozen=True, slots=True)
class Candidate:
    """A spool entry that looks like a message; nothing has been opened yet."""

    kind: Kind
    name: str
    size: int
    mtime: float
    file_type: str  # "file", "symlink", "directory", "other"


# How many candidates a listing holds at a time when the caller does not say: the
# seed's default emailSendLimit (10,000 messages in 24 hours), more than a run with
# default limits can send.  ~200 bytes each: a couple of MB, however big the spool.
# Not a cap: a run that may send more lists the next window when it gets there.
DEFAULT_CANDIDATE_LIMIT = 10_000

RANK: dict[Kind, int] = {"deferred": 0, "queued": 1}  # due deferred ones go first
# (rank, mtime, name, size, st_mode): the sort key first; (rank, mtime, name) is unique
_Entry = tuple[int, float, str, int, int]
_Row = tuple[float, str, int, int]  # (mtime, name, size, st_mode) of one *.eml entry


def _candidate(entry: _Entry) -> Candidate:
    rank, mtime, name, size, mode = entry
    return Candidate(KINDS[rank], name, size, mtime, file_type(mode))


class _Columns(NamedTuple):
    """The *.eml entries of one directory as columns (a status pass: no object per
    entry beyond what scandir and stat make; sums and minimums run in C)."""

    names: list[str]
    mtimes: list[float]
    sizes: list[int]
    modes: list[int]

    def rows(self) -> list[_Row]:
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


_NONE = _Columns([], [], [], [])


class DueQueue:
    """The due entries of a status pass in sending order: ``deferred`` (due ones)
    first, then ``queued``; each (mtime, name, size, st_mode), oldest first.  Rows,
    not Candidates: 100,000 Candidates would cost more than the listing.  Sorted
    when first asked for (a status without a server never needs the order)."""

    def __init__(self, deferred: _Columns = _NONE, queued: _Columns = _NONE) -> None:
        self._columns = (deferred, queued)
        self._rows: tuple[list[_Row], list[_Row]] | None = None

    def _sorted(self) -> tuple[list[_Row], list[_Row]]:
        if self._rows is None:
            self._rows = (self._columns[0].rows(), self._columns[1].rows())
        return self._rows

    @property
    def deferred(self) -> list[_Row]:
        return self._sorted()[0]

    @property
    def queued(self) -> list[_Row]:
        return self._sorted()[1]

    def sizes(self) -> list[int]:
        """The sizes of the regular files, in sending order (symlinks and the like
        are never sent)."""
        size = operator.itemgetter(2)
        out: list[int] = []
        for part, columns in enumerate(self._columns):
            regular = all(map(stat.S_ISREG, columns.modes))  # the usual case
            order = columns.listed_in_order() if regular and self._rows is None else 0
            if order:  # no sort needed: the sizes as listed (or reversed)
                out += columns.sizes if order > 0 else reversed(columns.sizes)
                continue
            rows = self._sorted()[part]
            out += map(size, rows) if regular else (row[2] for row in rows if _regular(row))
        return out

    def candidates(self) -> list[Candidate]:
        parts: tuple[tuple[Kind, list[_Row]], ...] = (
            ("deferred", self.deferred),
            ("queued", self.queued),
        )
        return [
            Candidate(kind, name, size, mtime, file_type(mode))
            for kind, rows in parts
            for mtime, name, size, mode in rows
        ]


def _regular(row: _Row) -> bool:
    return stat.S_ISREG(row[3])


class CandidateList(list[Candidate]):
    """Due messages in sending order, held at most ``limit`` at a time.

    The list holds the next (at most) ``limit`` candidates.  Iterating goes on past
    them: once they have been handed out, the spool is scanned again for the next
    ``limit`` entries after the last one handed out (same order: due deferred ones,
    then queued ones, oldest mtime first, then by name), so a run never holds
    per-file state for more than ``limit`` files.  Entries handed out and put back
    (requeued) sort before that point and are not handed out again; at most
    ``total`` entries are handed out in all (a snapshot, as a plain list was).

    ``len()`` is ``total``, the number of due entries the first scan counted.
    Indexes and slices count in that whole order but see only the candidates held
    now (``offset`` on), e.g. ``candidates[pos:]``; ``ahead(pos)`` goes on past the
    held window (a batch may be planned for more than ``limit`` messages).  Iterate
    it once.  ``waiting``/``next_retry``: the deferred entries not due yet, as the
    first scan saw them (a run's backlog and ``--dry-run`` need no second listing).
    """

    def __init__(
        self,
        listing: Listing,
        now: float,
        limit: int | None,
        held: Iterable[Candidate],
        total: int,
    ) -> None:
        super().__init__(held)
        self.total = total
        self.offset = 0  # position of the first held candidate in the whole order
        self.waiting = 0
        self.next_retry: float | None = None
        self._listing = listing
        self._now = now
        self._limit = limit

    def __len__(self) -> int:
        return self.total

    def __bool__(self) -> bool:
        return self.total > 0

    def __iter__(self) -> Iterator[Candidate]:
        handed = 0
        while True:
            held = list.__len__(self)
            for index in range(held):
                if handed >= self.total:
                    return
                yield list.__getitem__(self, index)
                handed += 1
            if held == 0 or self.offset + held >= self.total or self._limit is None:
                return
            last = list.__getitem__(self, held - 1)
            after = (RANK[last.kind], last.mtime, last.name)
            chunk = self._listing.due(self._now, self._limit, after)[0]
            list.clear(self)
            list.extend(self, chunk)
            self.offset += held

    def ahead(self, start: int, want: int = 0) -> Iterator[Candidate]:
        """The candidates from position ``start`` on in sending order, held or not:
        past the held window the spool is listed again (the held window is left as it
        is), for the ``want`` the caller needs in one listing if it wants more than a
        window (a batch the limits allow to be that big).  Stops where the first
        scan's ``total`` ends."""
        position = max(start, self.offset)
        held = list.__len__(self)
        for index in range(position - self.offset, held):
            if position >= self.total:
                return
            yield list.__getitem__(self, index)
            position += 1
        last = list.__getitem__(self, held - 1) if held else None
        while last is not None and position < self.total and self._limit is not None:
            after = (RANK[last.kind], last.mtime, last.name)
            wanted = want - (position - start)
            chunk = self._listing.due(self._now, max(self._limit, wanted), after)[0]
            for item in chunk:
                if position >= self.total:
                    return
                yield item
                position += 1
            last = chunk[-1] if chunk else None

    @overload
    def __getitem__(self, index: SupportsIndex) -> Candidate: ...

    @overload
    def __getitem__(self, index: slice) -> list[Candidate]: ...

    def __getitem__(self, index: SupportsIndex | slice) -> Candidate | list[Candidate]:
        if isinstance(index, slice):
            start, stop = index.start, index.stop
            if start is not None and start >= 0:
                start = max(0, start - self.offset)
            if stop is not None and stop >= 0:
                stop = max(0, stop - self.offset)
            return list(list.__getitem__(self, slice(start, stop, index.step)))
        position = int(index)
        if position >= 0:
            position -= self.offset
            if position < 0:
                raise IndexError(f"candidate {int(index)} was handed out already")
        return list.__getitem__(self, position)


@dataclass
class StateCount:
    count: int = 0
    bytes: int = 0
    oldest: float | None = None

    def add(self, size: int, mtime: float) -> None:
        self.count += 1
        self.bytes += size
        if self.oldest is None or mtime < self.oldest:
            self.oldest = mtime

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "bytes": self.bytes, "oldest": iso(self.oldest)}


@dataclass(order=True)
class Undelivered:
    """Who did not get what, one line each: a recipient refused or still pending, or
    the whole message (``recipient`` "": an unusable file, MAIL FROM refused, too old)."""

    message: str  # e.g. "failed/x.eml"
    recipient: str
    status: str  # failed (permanent) | pending (will be retried)
    reply: str

    def to_json(self) -> dict[str, Any]:
        return {
            "message": self.message,
            "recipient": self.recipient or None,
            "status": self.status,
            "reply": self.reply,
        }


@dataclass
class SpoolStatus:
    path: Path
    queued: StateCount = field(default_factory=StateCount)
    deferred: StateCount = field(default_factory=StateCount)
    held: StateCount = field(default_factory=StateCount)  # queue hold: send skips them
    sent: StateCount = field(default_factory=StateCount)
    failed: StateCount = field(default_factory=StateCount)
    in_flight: int = 0
    due_now: int = 0
    next_retry: float | None = None
    running_pid: int | None = None  # a cxsmtp send holds the lock
    undelivered: list[Undelivered] = field(default_factory=list)  # sorted
    recipients_failed: int = 0  # refused for good in sent/ messages (sent-with-failures)
    partial: int = 0  # deferred/ messages already sent to some recipients
    stale_tmp: list[str] = field(default_factory=list)
    # The due entries in sending order, from the same pass (``cxsmtp status`` plays
    # them forward at current limits for the ETA); not part of the JSON.
    queue: DueQueue = field(default_factory=DueQueue, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "spool": str(self.path),
            "queued": self.queued.to_json(),
            "deferred": self.deferred.to_json(),
            "held": self.held.to_json(),
            "sent": self.sent.to_json(),
            "failed": self.failed.to_json(),
            "in_flight": self.in_flight,
            "due_now": self.due_now,
            "next_retry": iso(self.next_retry),
            "running_pid": self.running_pid,
            "recipients_failed": self.recipients_failed,
            "partial": self.partial,
            "undelivered": [u.to_json() for u in self.undelivered],
            "stale_tmp": self.stale_tmp,
        }


class Listing:
    """Lists the queue (one ``scandir`` per directory, no file opened) and counts
    what the spool holds."""

    def __init__(self, layout: SpoolLayout, clock: Callable[[], float]) -> None:
        self._layout = layout
        self._clock = clock

    def candidates(
        self, now: float | None = None, *, limit: int | None = DEFAULT_CANDIDATE_LIMIT
    ) -> CandidateList:
        """Due deferred messages (oldest due first), then queued ones (oldest first).

        One ``scandir`` per directory, no file opened; only the first ``limit``
        entries are kept (a bounded heap: ``heapq.nsmallest``), the rest is listed
        again when the iteration gets there (see CandidateList).  ``limit`` None
        keeps everything.  A 100,000-file spool costs about what 10,000 cost.
        """
        now = self._clock() if now is None else now
        waiting: list[float] = []
        held, total = self.due(now, limit, None, waiting)
        result = CandidateList(self, now, limit, held, total)
        result.waiting, result.next_retry = len(waiting), min(waiting, default=None)
        return result

    def due(
        self,
        now: float,
        limit: int | None,
        after: tuple[int, float, str] | None,
        waiting: list[float] | None = None,
    ) -> tuple[list[Candidate], int]:
        """The first ``limit`` due entries after ``after`` in sending order, and how
        many due entries there are after it.  ``waiting`` gets the next-attempt
        times of the deferred entries that are not due yet."""
        counted = 0

        def entries() -> Iterator[_Entry]:
            nonlocal counted
            for kind in KINDS:
                rank = RANK[kind]
                if after is not None and rank < after[0]:
                    continue
                for mtime, name, size, mode in _entries(self._layout, origin(kind)):
                    if rank == 0 and mtime > now:
                        if waiting is not None:
                            waiting.append(mtime)
                        continue  # deferred, not due yet
                    if after is not None and (rank, mtime, name) <= after:
                        continue
                    counted += 1
                    yield (rank, mtime, name, size, mode)

        best = sorted(entries()) if limit is None else heapq.nsmallest(limit, entries())
        return [_candidate(entry) for entry in best], counted

    def _scan(self, kind: Kind, rel: str) -> Iterator[Candidate]:
        for mtime, name, size, mode in _entries(self._layout, rel):
            yield Candidate(kind, name, size, mtime, file_type(mode))

    def scan(self, kind: Kind) -> Iterator[Candidate]:
        """Every *.eml entry of the queue (``queued``) or of deferred/, unordered."""
        return self._scan(kind, origin(kind))

    def next_retry(self) -> float | None:
        """The earliest next-attempt time in deferred/ (streamed: no list)."""
        return min((e[0] for e in _entries(self._layout, "deferred")), default=None)

    def status(self, now: float | None = None, *, cache: Path | None = None) -> SpoolStatus:
        """Counts per state, bytes, oldest, next retry, failed recipients, and the due
        queue in sending order (``queue``); read-only.  Each directory is listed once:
        the records of failed/ and deferred/ are the ``.eml.json`` entries of the same
        pass; with ``cache``, a directory unchanged since the last pass is not listed
        again (status_cache.py)."""
        layout = self._layout
        layout.check(writable=False)
        now = self._clock() if now is None else now
        result = SpoolStatus(path=layout.path)
        records: dict[str, list[str]] = {"failed": [], "deferred": []}
        kept = StatusCache(cache, layout) if cache is not None else None

        def listed(rel: str, names: list[str] | None = None) -> _Columns:
            if kept is None:
                return _columns(layout, rel, names)
            return _Columns(*kept.columns(rel, names, functools.partial(_columns, layout, rel)))

        queued = listed(TOP)
        deferred = listed("deferred", records["deferred"])
        _count(result.queued, queued)
        _count(result.deferred, deferred)
        _count(result.held, listed("held"))
        _count(result.sent, listed("sent"))
        _count(result.failed, listed("failed", records["failed"]))
        if kept is not None:
            kept.save()
        result.next_retry = result.deferred.oldest
        due = _due(deferred, now)
        result.due_now = len(due.names)
        result.queue = DueQueue(due, queued)
        result.in_flight = len([p for p in layout.claimed() if not p.name.startswith(".")])
        result.running_pid = layout.holder_pid()
        self._add_failures(result, records)
        for entry in layout.scandir("tmp"):
            with contextlib.suppress(OSError):
                if now - entry.stat(follow_symlinks=False).st_mtime > STALE_TMP_AGE:
                    result.stale_tmp.append(f"tmp/{entry.name}")
        result.stale_tmp.sort()
        return result

    def _records(self, sub: str, names: dict[str, list[str]]) -> Iterable[MessageState]:
        """The records of ``sub``: failed/ and deferred/ from the names the status pass
        saw (unreadable ones skipped, as ``read_records`` does); sent/ from records.py."""
        if sub not in names:
            yield from read_records(self._layout, sub)
            return
        for name in sorted(names[sub]):
            with contextlib.suppress(OSError, ValueError, TypeError):
                yield MessageState.from_json(json.loads(read_bytes(self._layout, sub, name)))

    def _add_failures(self, result: SpoolStatus, names: dict[str, list[str]]) -> None:
        """Who did not get what, from the records, each once: a message refused as a
        whole is one line, else a line per refused or pending recipient."""
        rows = result.undelivered
        for sub in ("failed", "deferred", "sent"):
            status = "pending" if sub == "deferred" else "failed"
            for state in self._records(sub, names):
                where = f"{sub}/{state.name}"
                if sub == "sent":
                    result.recipients_failed += len(state.failed)
                elif sub == "deferred" and state.accepted:
                    result.partial += 1
                if state.reply is not None:  # MAIL FROM refused: no recipient was tried
                    rows.append(
                        Undelivered(
                            where, "", status, f"MAIL FROM refused: {state.reply.describe()}"
                        )
                    )
                    continue
                if sub == "failed" and (not state.failed or state.reason.startswith("too old")):
                    rows.append(Undelivered(where, "", status, state.reason or "failed"))
                    continue
                for rcpt, res in state.failed.items():
                    rows.append(Undelivered(where, rcpt, "failed", res.describe()))
                if sub == "deferred":
                    for rcpt, pending in state.pending.items():
                        reply = pending.describe() if pending else "not tried yet"
                        rows.append(Undelivered(where, rcpt, "pending", reply))
        rows.sort()


_NAME = operator.attrgetter("name")
_IS_EML = operator.methodcaller("endswith", SUFFIX)
_IS_RECORD = operator.methodcaller("endswith", SUFFIX + RECORD_SUFFIX)


def _columns(layout: SpoolLayout, rel: str, records: list[str] | None = None) -> _Columns:
    """The *.eml entries (not dot-files) of ``rel`` in one pass, as columns (the
    status's listing: an lstat per entry while the listing is open, then columns
    and selections made in C by ``map`` and ``compress``); ``records`` gets the
    names of the ``NAME.eml.json`` records seen on the way.  A chunk at a time:
    the entries and stat results of one chunk are freed before the next, so their
    memory is reused (a new process pays for every page it touches)."""
    columns = _Columns([], [], [], [])
    where = layout.dir(rel)
    try:
        with layout.listing(rel) as listing:
            while True:
                with storage("list", where):
                    chunk = list(itertools.islice(listing, _CHUNK))
                if not chunk:
                    return columns
                # (a comprehension: a methodcaller with keywords costs more per call)
                stats = [entry.stat(follow_symlinks=False) for entry in chunk]
                _add(columns, list(map(_NAME, chunk)), stats, records)
    except FileNotFoundError:  # gone meanwhile (sent, removed): keep the others
        if records is not None:
            records.clear()
        columns = _Columns([], [], [], [])
        entries, stats = _still_there(layout, rel)
        _add(columns, list(map(_NAME, entries)), stats, records)
        return columns


_CHUNK = 4096


def _add(
    columns: _Columns, names: list[str], stats: list[os.stat_result], records: list[str] | None
) -> None:
    """Add the *.eml entries of ``names`` (with their ``stats``) to ``columns``."""
    if records is not None:
        records += compress(names, map(_IS_RECORD, names))
    if names and min(names) < "/":  # a dot-file (or a name before "/"): rare
        wanted = [name.endswith(SUFFIX) and not name.startswith(".") for name in names]
    else:
        wanted = list(map(_IS_EML, names))
    stats = list(compress(stats, wanted))
    columns.names.extend(compress(names, wanted))
    columns.mtimes.extend(map(_MTIME, stats))
    columns.sizes.extend(map(_SIZE, stats))
    columns.modes.extend(map(_MODE, stats))


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


def _count(state: StateCount, columns: _Columns) -> None:
    state.count = len(columns.names)
    state.bytes = sum(columns.sizes)
    state.oldest = min(columns.mtimes, default=None)


def _due(deferred: _Columns, now: float) -> _Columns:
    """The entries of deferred/ whose next attempt is due (mtime <= now)."""
    if max(deferred.mtimes, default=now) <= now:
        return deferred
    due = [i for i, mtime in enumerate(deferred.mtimes) if mtime <= now]
    names, mtimes, sizes, modes = ([column[i] for i in due] for column in deferred)
    return _Columns(names, mtimes, sizes, modes)  # type: ignore[arg-type]


_MTIME = operator.attrgetter("st_mtime")
_SIZE = operator.attrgetter("st_size")
_MODE = operator.attrgetter("st_mode")


def _entries(layout: SpoolLayout, rel: str) -> Iterator[tuple[float, str, int, int]]:
    """(mtime, name, size, st_mode) of every *.eml entry (not dot-files) of directory
    ``rel``, unordered, through the layout's descriptors (never a symlinked
    directory); symlinks are not followed.  A missing directory has none."""
    return _eml_entries(layout.scandir(rel))


def list_dir(directory: Path) -> Iterator[tuple[float, str, int, int]]:
    """The same for a directory by path (read-only callers that checked the layout)."""
    try:
        it = os.scandir(directory)
    except FileNotFoundError:
        return
    with it:
        yield from _eml_entries(it)


def _eml_entries(entries: Iterable[os.DirEntry[str]]) -> Iterator[tuple[float, str, int, int]]:
    for entry in entries:
        name = entry.name
        if not name.endswith(SUFFIX) or name.startswith("."):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        yield st.st_mtime, name, st.st_size, st.st_mode
