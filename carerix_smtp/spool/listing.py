"""The queue listing and the spool's status: which messages are due, in sending
order (Candidate, CandidateList: a bounded window over one ``scandir`` per
directory, no file opened), and the counts ``cxsmtp status`` shows (SpoolStatus)."""

from __future__ import annotations

import contextlib
import heapq
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, SupportsIndex, overload

from carerix_smtp.spool.layout import (
    KINDS,
    STALE_TMP_AGE,
    SUFFIX,
    TOP,
    Kind,
    SpoolLayout,
    file_type,
    origin,
)
from carerix_smtp.spool.records import iso, read_records


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
DEFAULT_CANDIDATE_LIMIT = 10_000

RANK: dict[Kind, int] = {"deferred": 0, "queued": 1}  # due deferred ones go first
# (rank, mtime, name, size, st_mode): the sort key first; (rank, mtime, name) is unique
_Entry = tuple[int, float, str, int, int]


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
    now (``offset`` on), e.g. ``candidates[pos:]`` for a look-ahead at the current
    position of the iteration.  Iterate it once.
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

    def to_json(self) -> dict[str, Any]:
        return {
            "spool": str(self.path),
            "queued": self.queued.to_json(),
            "deferred": self.deferred.to_json(),
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
        held, total = self.due(now, limit, None)
        return CandidateList(self, now, limit, held, total)

    def due(
        self, now: float, limit: int | None, after: tuple[int, float, str] | None
    ) -> tuple[list[Candidate], int]:
        """The first ``limit`` due entries after ``after`` in sending order, and how
        many due entries there are after it."""
        counted = 0

        def entries() -> Iterator[_Entry]:
            nonlocal counted
            for kind in KINDS:
                rank = RANK[kind]
                if after is not None and rank < after[0]:
                    continue
                for mtime, name, size, mode in _entries(self._layout, origin(kind)):
                    if rank == 0 and mtime > now:
                        continue  # deferred, not due yet
                    if after is not None and (rank, mtime, name) <= after:
                        continue
                    counted += 1
                    yield (rank, mtime, name, size, mode)

        best = sorted(entries()) if limit is None else heapq.nsmallest(limit, entries())
        held = [
            Candidate(KINDS[rank], name, size, mtime, file_type(mode))
            for rank, mtime, name, size, mode in best
        ]
        return held, counted

    def _scan(self, kind: Kind, rel: str) -> Iterator[Candidate]:
        for mtime, name, size, mode in _entries(self._layout, rel):
            yield Candidate(kind, name, size, mtime, file_type(mode))

    def scan(self, kind: Kind) -> Iterator[Candidate]:
        """Every *.eml entry of the queue (``queued``) or of deferred/, unordered."""
        return self._scan(kind, origin(kind))

    def next_retry(self) -> float | None:
        """The earliest next-attempt time in deferred/ (streamed: no list)."""
        return min((e[0] for e in _entries(self._layout, "deferred")), default=None)

    def status(self, now: float | None = None) -> SpoolStatus:
        """Counts per state, bytes, oldest, next retry, failed recipients; read-only."""
        layout = self._layout
        layout.check(writable=False)
        now = self._clock() if now is None else now
        result = SpoolStatus(path=layout.path)
        for c in self._scan("queued", TOP):
            result.queued.add(c.size, c.mtime)
        for c in self._scan("deferred", "deferred"):
            result.deferred.add(c.size, c.mtime)
            if c.mtime <= now:
                result.due_now += 1
            if result.next_retry is None or c.mtime < result.next_retry:
                result.next_retry = c.mtime
        for sub in ("sent", "failed"):
            for c in self._scan("queued", sub):
                getattr(result, sub).add(c.size, c.mtime)
        result.in_flight = len([p for p in layout.claimed() if not p.name.startswith(".")])
        result.running_pid = layout.holder_pid()
        self._add_failures(result)
        for entry in layout.scandir("tmp"):
            with contextlib.suppress(OSError):
                if now - entry.stat(follow_symlinks=False).st_mtime > STALE_TMP_AGE:
                    result.stale_tmp.append(f"tmp/{entry.name}")
        result.stale_tmp.sort()
        return result

    def _add_failures(self, result: SpoolStatus) -> None:
        """Who did not get what, from the records, each once: a message refused as a
        whole is one line, else a line per refused or pending recipient."""
        rows = result.undelivered
        for sub in ("failed", "deferred", "sent"):
            status = "pending" if sub == "deferred" else "failed"
            for state in read_records(self._layout, sub):
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
