"""The spool directory (class Spool): layout, lock, atomic claims and outcomes, journal, status.

Layout (SPEC §3)::

    SPOOL/NAME.eml                   queued: every *.eml directly in SPOOL (not dot-files)
    SPOOL/tmp/                       producers write here (or under a name not ending
                                     in .eml) and rename when complete; ignored by send,
                                     files older than a day are reported by status
    SPOOL/deferred/NAME.eml          waiting for a retry; the file's mtime is the next
    SPOOL/deferred/NAME.eml.json       attempt time (as in Postfix's deferred queue), the
                                       sidecar holds the state (attempts, per recipient)
    SPOOL/sent/NAME.eml              delivered; its record (which lists any failed
    SPOOL/sent/records-DAY.jsonl       recipients) is a line of the day's file
                                       (earlier versions: sent/NAME.eml.json)
    SPOOL/failed/NAME.eml + .eml.json  permanent failure, unusable file, or too old
    SPOOL/held/NAME.eml              held (cxsmtp queue hold): send never lists it; a
                                       sidecar beside it when held from deferred/
    SPOOL/.cxsmtp/lock               flock(2) target; the kernel drops it when we die
    SPOOL/.cxsmtp/journal            JSON lines, synced per group: outcomes since the
                                       last checkpoint
    SPOOL/.cxsmtp/claims/queued/     messages in flight, by origin, named TOKEN~NAME
    SPOOL/.cxsmtp/claims/deferred/
    SPOOL/.cxsmtp/delivery.log       JSON lines, one per attempt (who got it, who not, why)
    SPOOL/.cxsmtp/retention          its mtime: the last complete retention scan of sent/

Deferred messages live in ``SPOOL/deferred/`` (not at the top level) so that the
top level holds only what producers dropped, an ``ls`` shows what waits for a
retry, and finding the due ones is one ``scandir`` with no file opened.

Order: due deferred messages first (oldest next-attempt time first), then queued
ones, oldest modification time first, then by name.  Listing is one ``scandir``
per directory (no file is opened or parsed) keeping only the first N entries in a
bounded heap (``candidates(limit=N)``, see CandidateList): 100,000 files cost what
N cost; messages are then claimed and read one at a time.

A message's life, and why a crash at any point loses nothing:

1. claim: ``rename(SPOOL/NAME.eml, claims/queued/TOKEN~NAME)``; the token is
   unique per claim, so a journal line can never be mistaken for a later claim
   of a file with the same name.
2. the sender talks SMTP.  Then ``record_outcome`` appends the resulting state
   (who accepted, who refused, where the message goes, which file it is) to the
   journal — before anything else happens (the 250 for the data is written before
   the file moves, and before the next message's data); a background thread
   fdatasyncs the journal once per group of outcomes (GROUP_WINDOW, 50 ms).
3. the record is written — a line of ``sent/records-DAY.jsonl``, or
   ``NAME.eml.json`` (temp file, rename) beside a failed or deferred message —
   and the claimed file renamed there; both reach the disk at the next
   checkpoint (every CHECKPOINT_LINES outcomes and at the end of a run), which
   then empties the journal.  No fsync per message: see "Durability" at the
   journal for what each kind of crash may cost.

On start (``recover``), under the lock: a claim with a journaled outcome is
moved where the outcome says without sending again; a claim without one is put
back where it came from — its data may have reached the server, so it is logged
as a possible duplicate (RFC 1047; at most one per connection).  The other
journal lines are redone (a record or a move a power failure lost).  Then the
journal is emptied.  The lock serialises runs; claims and the journal make a
run crash-safe, with one thread or several (one per connection).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from carerix_smtp.errors import InputError, StorageError
from carerix_smtp.spool.claims import Claim, Claims
from carerix_smtp.spool.journal import Journal
from carerix_smtp.spool.layout import (
    RECORD_SUFFIX,
    SUFFIX,
    TOP,
    Kind,
    SpoolLayout,
    storage,
    write_all,
)
from carerix_smtp.spool.listing import (
    DEFAULT_CANDIDATE_LIMIT,
    Candidate,
    CandidateList,
    Listing,
    SpoolStatus,
)
from carerix_smtp.spool.outcomes import Outcomes
from carerix_smtp.spool.records import DeliveryLog, MessageState
from carerix_smtp.spool.recovery import Recovery, RecoveryReport
from carerix_smtp.spool.sent_log import SentLog

_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._+=@-]+")


class Spool:
    """One spool directory.  Methods that change it must run under ``lock()``.

    A facade: each job is done by a collaborator of this package (SpoolLayout,
    Listing, Claims, Journal, Outcomes, DeliveryLog, Recovery); enqueue and retry,
    the producers' and the operator's ways into the queue, are done here.
    """

    def __init__(
        self,
        path: Path,
        *,
        durable: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.durable = durable
        self.clock = clock
        layout = self._layout = SpoolLayout(self.path, durable=durable, clock=clock)
        self.state_dir = layout.state_dir
        self.claims_dir = layout.claims_dir
        self.journal_path = layout.journal_path
        self.delivery_log_path = layout.delivery_log_path
        self.lock_path = layout.lock_path
        # Claims, outcomes and log lines may come from several sender threads (one
        # per connection): the token counter, the journal and the log take turns.
        self._book = threading.Lock()
        self._listing = Listing(layout, clock)
        self._claims = Claims(layout, self._book)
        self._journal = Journal(layout, self._book)
        self._outcomes = Outcomes(layout, self._journal, SentLog(layout, clock), self._book)
        self._delivery_log = DeliveryLog(layout, clock, self._book)
        self._recovery = Recovery(
            layout, self._journal, self._claims, self._outcomes, self._delivery_log
        )

    def dir(self, name: str) -> Path:
        return self.path / name

    @property
    def layout(self) -> SpoolLayout:
        """The directories and file primitives (for the queue commands: spool/held.py,
        spool/removal.py, spool/retention.py)."""
        return self._layout

    # -- validation, layout and the lock (layout.py) --

    def check(self, *, writable: bool = True) -> None:
        """SpoolError (exit 78) unless SPOOL is an existing, usable directory."""
        self._layout.check(writable=writable)

    def prepare(self) -> None:
        """Check SPOOL and create the subdirectories it needs (idempotent)."""
        self._layout.prepare()

    @contextlib.contextmanager
    def lock(self) -> Iterator[bool]:
        """flock(LOCK_EX|LOCK_NB) on .cxsmtp/lock; yields False if another process
        holds it.  Releasing it closes the journal and the delivery log."""
        with self._layout.lock() as held:
            try:
                yield held
            finally:
                if held:
                    self._close_files()

    def _close_files(self) -> None:
        """Sync the journal's pending group, close it, the day file of sent records
        and the delivery log (the lock is being released)."""
        with self._book:
            try:
                self._journal.close()  # a failed sync is raised, after the closing
            finally:
                self._outcomes.close()
                self._delivery_log.close()

    def holder_pid(self) -> int | None:
        """The pid of the process holding the lock, or None when nobody does."""
        return self._layout.holder_pid()

    def claims(self) -> list[Path]:
        """Every entry in claims/ (messages in flight)."""
        return self._layout.claimed()

    # -- the journal and recovery (journal.py, recovery.py) --

    def finish(self) -> None:
        """End of a run (or pass): when nothing is in flight, a checkpoint — every
        outcome on disk, the journal emptied."""
        if not self.claims():
            self._journal.clear()
        with self._book:
            self._delivery_log.close()

    def recover(self) -> RecoveryReport:
        """Resolve what a killed run left behind (call under the lock, before sending);
        see Recovery.recover."""
        return self._recovery.recover()

    # -- listing (listing.py) --

    def candidates(
        self, now: float | None = None, *, limit: int | None = DEFAULT_CANDIDATE_LIMIT
    ) -> CandidateList:
        """Due deferred messages (oldest due first), then queued ones (oldest first);
        at most ``limit`` held at a time (see Listing.candidates, CandidateList)."""
        return self._listing.candidates(now, limit=limit)

    def scan(self, kind: Kind) -> Iterator[Candidate]:
        """Every *.eml entry of the queue (``queued``) or of deferred/, unordered."""
        return self._listing.scan(kind)

    def next_retry(self) -> float | None:
        """The earliest next-attempt time in deferred/ (streamed: no list)."""
        return self._listing.next_retry()

    def status(self, now: float | None = None, *, cache: Path | None = None) -> SpoolStatus:
        """Counts per state, bytes, oldest, next retry, failed recipients; read-only
        (``cache``: a file of the caller's for what this pass saw, status_cache.py)."""
        return self._listing.status(now, cache=cache)

    # -- claims and outcomes (claims.py, outcomes.py, records.py) --

    def claim(self, candidate: Candidate) -> Claim | None:
        """Take ``candidate`` out of the queue; None when it has gone meanwhile."""
        return self._claims.claim(candidate)

    def rewrite_head(self, claim: Claim, head: bytes, body_start: int) -> None:
        """Replace the claimed file's header block (bytes before ``body_start``) with
        ``head``; the body is copied as is, the mtime kept (see Claims.rewrite_head)."""
        self._claims.rewrite_head(claim, head, body_start)

    def requeue(self, claim: Claim) -> Path:
        """Put a claim back where it came from, unchanged."""
        return self._claims.requeue(claim)

    def record_outcome(self, claim: Claim, state: MessageState) -> Path:
        """Journal the state (written; synced with its group), then write the record
        and move the claim to its destination (see "Durability" at the journal)."""
        return self._outcomes.record(claim, state)

    def log_delivery(self, entry: dict[str, Any]) -> None:
        """One JSON line per attempt in .cxsmtp/delivery.log (not fsynced: a log).

        The file stays open until ``finish`` or the end of the lock; beyond
        DELIVERY_LOG_MAX bytes it is rotated once, to delivery.log.1.
        """
        self._delivery_log.write(entry)

    # -- enqueue, retry --

    def enqueue(self, data: bytes, *, hint: str = "") -> Path:
        """Write ``data`` as a new queued message (via SPOOL/tmp/ + rename); return its path."""
        self.check(writable=True)
        layout = self._layout
        now = self.clock()
        stamp = datetime.fromtimestamp(now, timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        stem = _UNSAFE_NAME.sub("_", Path(hint).stem)[:40].strip("._") if hint else ""
        name = f"{stamp}-{os.urandom(3).hex()}" + (f"-{stem}" if stem else "") + SUFFIX
        tmp = f".{name}.part"
        layout.fd("tmp", create=True)  # made when missing; never through a symlink
        fd = layout.open_file("tmp", tmp, _NEW_FILE, 0o644)
        try:
            with storage("write", layout.where("tmp", tmp)):
                try:
                    write_all(fd, data)
                    if self.durable:
                        os.fsync(fd)
                finally:
                    os.close(fd)
            target = layout.move_noreplace("tmp", tmp, TOP, name)
            layout.fsync_dir(TOP)
        except BaseException:
            with contextlib.suppress(OSError, StorageError):
                layout.remove("tmp", tmp)
            raise
        return self.path / target

    def retry(self, names: Sequence[str] = (), *, everything: bool = False) -> list[str]:
        """Failed messages back to the queue, deferred ones due now; returns what moved.

        Call under the lock.  Unknown names raise InputError before anything moves.
        """
        layout = self._layout
        wanted: list[tuple[str, str]] = []
        if everything:
            for kind in ("failed", "deferred"):
                wanted.extend(
                    (kind, e.name)
                    for e in layout.scandir(kind)
                    if e.name.endswith(SUFFIX) and not e.name.startswith(".")
                )
        else:
            for raw in names:
                name = Path(raw).name
                if layout.exists("failed", name):
                    wanted.append(("failed", name))
                elif layout.exists("deferred", name):
                    wanted.append(("deferred", name))
                else:
                    raise InputError(
                        f"spool {self.path}: no message {name!r} in failed/ or deferred/"
                    )
        moved: list[str] = []
        due = sorted(name for kind, name in wanted if kind == "deferred")
        layout.set_due("deferred", due, self.clock())
        for kind, name in sorted(wanted):
            if kind == "deferred":
                moved.append(f"deferred/{name}")
                continue
            target = layout.move_noreplace("failed", name, TOP, name)
            layout.remove("failed", name + RECORD_SUFFIX)
            moved.append(target)
        layout.fsync_dir(TOP)
        return moved
