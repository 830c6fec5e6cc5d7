"""The spool directory: layout, lock, atomic claims and outcomes, journal, status.

Layout (SPEC §3)::

    SPOOL/NAME.eml                   queued: every *.eml directly in SPOOL (not dot-files)
    SPOOL/tmp/                       producers write here (or under a name not ending
                                     in .eml) and rename when complete; ignored by send,
                                     files older than a day are reported by status
    SPOOL/deferred/NAME.eml          waiting for a retry; the file's mtime is the next
    SPOOL/deferred/NAME.eml.json       attempt time (as in Postfix's deferred queue), the
                                       sidecar holds the state (attempts, per recipient)
    SPOOL/sent/NAME.eml + .eml.json  delivered; the record lists any failed recipients
    SPOOL/failed/NAME.eml + .eml.json  permanent failure, unusable file, or too old
    SPOOL/.cxsmtp/lock               flock(2) target; the kernel drops it when we die
    SPOOL/.cxsmtp/journal            JSON lines, fsynced: outcomes since the last checkpoint
    SPOOL/.cxsmtp/claims/queued/     messages in flight, by origin, named TOKEN~NAME
    SPOOL/.cxsmtp/claims/deferred/
    SPOOL/.cxsmtp/delivery.log       JSON lines, one per attempt (who got it, who not, why)

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
   journal and fdatasyncs it — before anything else happens (the 250 for the
   data is on disk before the file moves, and before the next message's data).
3. the record is written (temp file, rename) beside the destination and the
   claimed file renamed there; both reach the disk at the next checkpoint
   (every CHECKPOINT_LINES outcomes and at the end of a run), which then empties
   the journal.  One fsync per message: see "Durability" at the journal for why
   each of the others could go.

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
import errno
import fcntl
import heapq
import itertools
import json
import logging
import math
import os
import re
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, SupportsIndex, overload

from carerix_smtp.errors import CxsmtpError, ExitCode, InputError, SpoolError

log = logging.getLogger(__name__)

STATE_DIR = ".cxsmtp"
SUFFIX = ".eml"
RECORD_SUFFIX = ".json"  # NAME.eml.json beside NAME.eml
STALE_TMP_AGE = 86_400.0  # issue 4: files in SPOOL/tmp older than a day are reported
DELIVERY_LOG_MAX = 64 * 1024 * 1024  # rotated once to delivery.log.1 beyond this
# Outcomes between two checkpoints (records fsynced, journal emptied; "Durability"):
# bounds the journal (~1 KB a line) and what recovery may have to redo.
CHECKPOINT_LINES = 1000

Kind = Literal["queued", "deferred"]
Destination = Literal["sent", "failed", "deferred"]


class SpoolBusyError(CxsmtpError):
    """Another cxsmtp process holds the spool lock (exit 75: try again later)."""

    exit_code = ExitCode.TEMPFAIL


# --- time and JSON helpers ---------------------------------------------------


_last_iso: tuple[int, str] = (-1, "")  # most times in a run fall in the same second


def iso(ts: float | None) -> str | None:
    """Epoch seconds -> ``2024-05-01T12:00:00+00:00`` (records are for people too)."""
    global _last_iso
    if ts is None:
        return None
    second = math.floor(ts)
    last = _last_iso
    if last[0] == second:
        return last[1]
    text = datetime.fromtimestamp(second, timezone.utc).isoformat(timespec="seconds")
    _last_iso = (second, text)
    return text


def from_iso(text: Any) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


@dataclass
class RecipientResult:
    """What the server said about one recipient (``code`` None: no reply, e.g. timeout)."""

    code: int | None
    enhanced: str | None
    text: str
    time: float

    def describe(self) -> str:
        parts = [str(self.code) if self.code is not None else "no reply"]
        if self.enhanced:
            parts.append(self.enhanced)
        if self.text:
            parts.append(self.text)
        return " ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "enhanced": self.enhanced,
            "text": self.text,
            "time": iso(self.time),
        }

    @classmethod
    def from_json(cls, data: Any) -> RecipientResult | None:
        if not isinstance(data, dict):
            return None
        code = data.get("code")
        return cls(
            code=code if isinstance(code, int) else None,
            enhanced=data.get("enhanced") if isinstance(data.get("enhanced"), str) else None,
            text=str(data.get("text") or ""),
            time=from_iso(data.get("time")) or 0.0,
        )


@dataclass
class MessageState:
    """Everything known about one message; the record/sidecar is this as JSON."""

    name: str
    status: str = "queued"  # queued | deferred | sent | failed
    reason: str = ""
    message_id: str | None = None
    mail_from: str | None = None
    server: str | None = None
    size: int = 0
    queued_at: float = 0.0
    first_attempt: float | None = None
    last_attempt: float | None = None
    attempts: int = 0
    next_attempt: float | None = None
    accepted: dict[str, RecipientResult] = field(default_factory=dict)
    failed: dict[str, RecipientResult] = field(default_factory=dict)
    pending: dict[str, RecipientResult | None] = field(default_factory=dict)

    def destination(self) -> Destination:
        """sent when nothing is pending and someone accepted; failed if nobody did."""
        if self.pending:
            return "deferred"
        return "sent" if self.accepted else "failed"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "reason": self.reason,
            "message_id": self.message_id,
            "mail_from": self.mail_from,
            "server": self.server,
            "size": self.size,
            "queued_at": iso(self.queued_at),
            "first_attempt": iso(self.first_attempt),
            "last_attempt": iso(self.last_attempt),
            "attempts": self.attempts,
            "next_attempt": iso(self.next_attempt),
            "recipients": {
                "accepted": {k: v.to_json() for k, v in self.accepted.items()},
                "failed": {k: v.to_json() for k, v in self.failed.items()},
                "pending": {k: v.to_json() if v else None for k, v in self.pending.items()},
            },
        }

    @classmethod
    def from_json(cls, data: Any) -> MessageState:
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            raise ValueError("not a message record")
        recipients = data.get("recipients") or {}

        def results(key: str) -> dict[str, RecipientResult]:
            out: dict[str, RecipientResult] = {}
            for rcpt, value in (recipients.get(key) or {}).items():
                result = RecipientResult.from_json(value)
                if result is not None:
                    out[str(rcpt)] = result
            return out

        return cls(
            name=data["name"],
            status=str(data.get("status") or "queued"),
            reason=str(data.get("reason") or ""),
            message_id=data.get("message_id"),
            mail_from=data.get("mail_from"),
            server=data.get("server"),
            size=int(data.get("size") or 0),
            queued_at=from_iso(data.get("queued_at")) or 0.0,
            first_attempt=from_iso(data.get("first_attempt")),
            last_attempt=from_iso(data.get("last_attempt")),
            attempts=int(data.get("attempts") or 0),
            next_attempt=from_iso(data.get("next_attempt")),
            accepted=results("accepted"),
            failed=results("failed"),
            pending={
                str(k): RecipientResult.from_json(v)
                for k, v in (recipients.get("pending") or {}).items()
            },
        )


def backoff(attempts: int, initial: float, maximum: float) -> float:
    """Seconds until the next attempt: ``initial`` doubling per attempt, capped.

    Postfix: minimal_backoff_time 300 s doubling to maximal_backoff_time 4000 s.
    """
    if attempts <= 0:
        return 0.0
    return float(min(maximum, initial * (2 ** min(attempts - 1, 30))))


# --- listing -----------------------------------------------------------------


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

_RANK: dict[Kind, int] = {"deferred": 0, "queued": 1}  # due deferred ones go first
_KINDS: tuple[Kind, Kind] = ("deferred", "queued")
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
        spool: Spool,
        now: float,
        limit: int | None,
        held: Iterable[Candidate],
        total: int,
    ) -> None:
        super().__init__(held)
        self.total = total
        self.offset = 0  # position of the first held candidate in the whole order
        self._spool = spool
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
            after = (_RANK[last.kind], last.mtime, last.name)
            chunk = self._spool._due(self._now, self._limit, after)[0]
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
class Claim:
    """A message taken out of the queue for one attempt."""

    kind: Kind
    name: str  # its name in its origin directory
    path: Path  # where it is now (inside .cxsmtp/claims/KIND/)
    key: str  # "KIND/TOKEN~NAME", the journal key
    size: int
    mtime: float
    file_type: str
    state: MessageState | None  # the deferred sidecar, if any
    dev: int = 0  # st_dev, st_ino: which file it is, wherever it is (journal lines)
    ino: int = 0


@dataclass
class RecoveryReport:
    completed: list[str] = field(default_factory=list)  # journaled outcome applied
    requeued: list[str] = field(default_factory=list)  # possible duplicates
    removed: list[str] = field(default_factory=list)  # stray temp files and sidecars


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


@dataclass
class FailedRecipient:
    message: str  # e.g. "failed/x.eml"
    recipient: str
    status: str  # failed (permanent) | pending (will be retried)
    reply: str

    def to_json(self) -> dict[str, Any]:
        return {
            "message": self.message,
            "recipient": self.recipient,
            "status": self.status,
            "reply": self.reply,
        }


@dataclass
class FailedMessage:
    message: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"message": self.message, "reason": self.reason}


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
    failed_messages: list[FailedMessage] = field(default_factory=list)
    failed_recipients: list[FailedRecipient] = field(default_factory=list)
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
            "failed_messages": [m.to_json() for m in self.failed_messages],
            "failed_recipients": [r.to_json() for r in self.failed_recipients],
            "stale_tmp": self.stale_tmp,
        }


# --- the spool ---------------------------------------------------------------

_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._+=@-]+")


class Spool:
    """One spool directory.  Methods that change it must run under ``lock()``."""

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
        self.state_dir = self.path / STATE_DIR
        self.claims_dir = self.state_dir / "claims"
        self.journal_path = self.state_dir / "journal"
        self.delivery_log_path = self.state_dir / "delivery.log"
        self.lock_path = self.state_dir / "lock"
        self._token_prefix = f"{int(self.clock()):x}{os.getpid():x}{secrets.token_hex(3)}"
        self._token_seq = 0
        self._tmp_seq = itertools.count()  # next() is atomic: no lock needed
        self._journal_fd: int | None = None
        self._journal_lines = 0  # since the last checkpoint
        self._unsynced: set[str] = set()  # records written since the last checkpoint
        self._top_str = str(self.path)
        self._deferred_str = str(self.path / "deferred")
        self._claims_str = str(self.claims_dir)
        self._claim_dirs = {kind: self.claims_dir / kind for kind in _KINDS}
        self._dest_dirs = {dest: self.path / dest for dest in ("sent", "failed", "deferred")}
        self._log_fd: int | None = None
        self._log_size = 0
        # Claims, outcomes and log lines may come from several sender threads (one
        # per connection): the token counter, the journal and the log take turns.
        self._book = threading.Lock()

    def dir(self, name: str) -> Path:
        return self.path / name

    # -- validation and layout --

    def check(self, *, writable: bool = True) -> None:
        """SpoolError (exit 78) unless SPOOL is an existing, usable directory."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise SpoolError(
                f"spool {self.path}: no such directory",
                hint=f"create it: mkdir -p {self.path}",
            ) from None
        except OSError as exc:
            raise SpoolError(f"spool {self.path}: {exc.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise SpoolError(f"spool {self.path}: not a directory")
        mode = os.R_OK | os.X_OK | (os.W_OK if writable else 0)
        if not os.access(self.path, mode):
            what = "writable" if writable else "readable"
            raise SpoolError(f"spool {self.path}: not {what} by this user (uid {os.getuid()})")

    def prepare(self) -> None:
        """Check SPOOL and create the subdirectories it needs (idempotent)."""
        self.check(writable=True)
        try:
            for sub in (
                self.state_dir,
                self.claims_dir,
                self.claims_dir / "queued",
                self.claims_dir / "deferred",
                self.dir("deferred"),
                self.dir("sent"),
                self.dir("failed"),
                self.dir("tmp"),
            ):
                sub.mkdir(
                    mode=0o700 if sub.is_relative_to(self.state_dir) else 0o755, exist_ok=True
                )
        except OSError as exc:
            raise SpoolError(
                f"spool {self.path}: cannot create {exc.filename}: {exc.strerror}"
            ) from None

    # -- the lock --

    @contextlib.contextmanager
    def lock(self) -> Iterator[bool]:
        """flock(LOCK_EX|LOCK_NB) on .cxsmtp/lock; yields False if another process holds it.

        flock locks belong to the open file and go away when the holder dies, even
        by SIGKILL, so no stale lock can stop mail (unlike pid files).
        """
        self.prepare()
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise SpoolError(
                f"spool {self.path}: cannot open {self.lock_path}: {exc.strerror}"
            ) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    yield False
                    return
                raise SpoolError(
                    f"spool {self.path}: cannot lock {self.lock_path}: {exc}"
                ) from None
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            try:
                yield True
            finally:
                self._close_journal()
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # releases the flock

    def holder_pid(self) -> int | None:
        """The pid of the process holding the lock, or None when nobody does."""
        try:
            fd = os.open(self.lock_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                text = os.read(fd, 32).decode("ascii", "replace").strip()
                return int(text) if text.isdigit() else -1
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    # -- durability helpers --

    def _fsync_dir(self, directory: Path) -> None:
        if not self.durable:
            return
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _write_file(
        self, path: str | Path, data: bytes, *, mtime_ns: int | None = None, sync: bool = True
    ) -> None:
        """Atomically replace ``path``: hidden temp file beside it, fsync (unless
        ``sync`` is False: the next checkpoint does it), rename."""
        # unique without a getrandom(2) per record: this run's prefix and a counter
        tmp = os.path.join(
            os.path.dirname(path), f".cxsmtp-{self._token_prefix}-{next(self._tmp_seq):x}.tmp"
        )
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if self.durable and sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        try:
            if mtime_ns is not None:
                os.utime(tmp, ns=(mtime_ns, mtime_ns))
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _move_noreplace(self, src: Path, directory: Path, name: str) -> Path:
        """Move ``src`` into ``directory`` as ``name``, or a free variant; never overwrite.

        Into the top level (shared with producers) this is link + unlink, which
        fails instead of replacing a file a producer just dropped there.
        """
        target = directory / name
        if os.path.lexists(target):
            target = directory / _variant(name)
        try:
            os.link(src, target, follow_symlinks=False)
        except FileExistsError:
            target = directory / _variant(name)
            os.link(src, target, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                raise
            os.rename(src, target)  # no hard links on this file system (or a directory)
            return target
        os.unlink(src)
        return target

    # -- journal --
    #
    # Durability: one fsync per message (there were four: claims/ after the claim,
    # the journal, the record, the destination directory after the move).
    #
    # The journal is a redo log.  A line says which claimed file it is about (its
    # claim key and its identity: st_dev, st_ino, size and mtime, which a rename
    # keeps), where it goes (dest/name) and its whole state (what the record holds).
    # The line is fsynced before the file or its record moves, and before the
    # sender starts the next message (record_outcome returns only then).  Lines are
    # dropped only at a checkpoint, after every record written since the previous
    # one and every directory changed were fsynced.  Recovery redoes every line
    # whose file is not where the line says, or whose record may not have reached
    # the disk.  Step by step:
    #
    # - claim (rename into claims/): not fsynced.  If a power failure loses that
    #   rename, the file is back in the queue.  That matters only if it was sent,
    #   which happens after the claim.  Either its journal line was fsynced: then
    #   recovery finds the file by its identity at its old place and moves it where
    #   the line says, without sending it again; or it was not: then the message
    #   was in flight at the crash, the one possible duplicate per connection that
    #   SPEC §3 allows (RFC 1047).  (On ext4 and XFS, whose logs are ordered, the
    #   journal's fsync also makes the earlier rename durable; recovery does not
    #   rely on that.)  A SIGKILL loses no rename: only power failures are at stake.
    # - journal line: fsynced (fdatasync) before anything depends on it.  Without
    #   it, a message acknowledged by the server could come back to the queue and
    #   be sent again although it was no longer in flight.
    # - record (NAME.eml.json) and the move to sent/, failed/ or deferred/: not
    #   fsynced.  Lost or empty after a power failure, they are redone from the
    #   journal line, which stays until the checkpoint has made them durable.  A deferred message's sidecar lists the recipients who already
    #   accepted it: it is covered the same way, so none of them gets it twice.
    # - checkpoint (every CHECKPOINT_LINES outcomes, at the end of a run, after
    #   recovery): fsync the records written and the six directories, then truncate
    #   the journal and fsync it, so that no old line can survive to be redone
    #   after later changes (``cxsmtp retry``).  Batched, those fsyncs cost about
    #   half what they did one by one (ext4: ~0.5 ms a message instead of ~0.9).
    #   syncfs(2) would be cheaper still (~0.3 ms) but waits for every dirty page
    #   of the whole file system, other programs' too: not a cost to impose.

    def _journal_append(self, line: bytes) -> None:
        """Append one line and put it on disk (call with ``self._book`` held)."""
        if self._journal_fd is None:
            self._journal_fd = os.open(
                self.journal_path,
                os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                0o600,
            )
        view = memoryview(line)
        while view:
            view = view[os.write(self._journal_fd, view) :]
        if self.durable:
            _fdatasync(self._journal_fd)  # an append: the new size is part of the data
        self._journal_lines += 1

    def _close_journal(self) -> None:
        """Close the journal and the delivery log (the lock is being released)."""
        with self._book:
            if self._journal_fd is not None:
                os.close(self._journal_fd)
                self._journal_fd = None
            if self._log_fd is not None:
                os.close(self._log_fd)
                self._log_fd = None

    def _read_journal(self) -> list[dict[str, Any]]:
        """The journal's lines, oldest first (a torn last line is ignored)."""
        entries: list[dict[str, Any]] = []
        try:
            with open(self.journal_path, "rb") as handle:
                for line in handle:
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(entry, dict) and isinstance(entry.get("claim"), str):
                        entries.append(entry)
        except FileNotFoundError:
            pass
        return entries

    def _checkpoint(self) -> None:
        """Put everything done since the last checkpoint on disk, then empty the
        journal (call with ``self._book`` held)."""
        if self.durable:
            self._sync_unsynced()
        else:
            self._unsynced.clear()
        if self._journal_fd is not None:
            os.ftruncate(self._journal_fd, 0)  # O_APPEND: the next line goes at 0
            fd = self._journal_fd
        else:
            try:
                fd = os.open(self.journal_path, os.O_WRONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                self._journal_lines = 0
                return
            if os.fstat(fd).st_size == 0:  # empty already (a run with nothing to do)
                os.close(fd)
                self._journal_lines = 0
                return
            os.ftruncate(fd, 0)
        try:
            if self.durable:
                os.fsync(fd)  # the truncation before any new line (see above)
        finally:
            if fd != self._journal_fd:
                os.close(fd)
        self._journal_lines = 0

    def _sync_unsynced(self) -> None:
        """fsync every record written since the last checkpoint, then every directory
        a claim, a move or a record changed."""
        files, self._unsynced = self._unsynced, set()
        if not files:
            return  # no outcome since the last checkpoint: nothing moved that matters
        for path in sorted(files):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # replaced or removed since: its successor is in the set
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for directory in (
            self.path,
            self.dir("deferred"),
            self.dir("sent"),
            self.dir("failed"),
            self.claims_dir / "queued",
            self.claims_dir / "deferred",
        ):
            with contextlib.suppress(FileNotFoundError):
                self._fsync_dir(directory)

    def _clear_journal(self) -> None:
        with self._book:
            self._checkpoint()

    def claims(self) -> list[Path]:
        out: list[Path] = []
        for kind in ("queued", "deferred"):
            with contextlib.suppress(FileNotFoundError), os.scandir(self.claims_dir / kind) as it:
                out.extend(Path(e.path) for e in it)
        return out

    def finish(self) -> None:
        """End of a run (or pass): when nothing is in flight, a checkpoint — every
        outcome on disk, the journal emptied."""
        if not self.claims():
            self._clear_journal()
        with self._book:
            if self._log_fd is not None:
                os.close(self._log_fd)
                self._log_fd = None

    # -- recovery --

    def recover(self) -> RecoveryReport:
        """Resolve what a killed run left behind (call under the lock, before sending).

        A claim with a journaled outcome goes where the outcome says, without
        sending; one without goes back to the queue (a possible duplicate).  Then
        every other journal line is redone (see "Durability" above): a record
        rewritten, or a file whose claim rename was lost moved from its old place.
        """
        self.prepare()
        report = RecoveryReport()
        lines = self._read_journal()
        by_claim = {entry["claim"]: entry for entry in lines}
        applied: set[str] = set()
        for path in self.claims():
            kind: Kind = "deferred" if path.parent.name == "deferred" else "queued"
            if path.name.startswith("."):  # a rewrite's temp file
                _remove(path)
                report.removed.append(str(path.relative_to(self.path)))
                continue
            _, sep, name = path.name.partition("~")
            if not sep:
                name = path.name
            key = f"{kind}/{path.name}"
            claim = self._claim_from_path(kind, name, path, key)
            entry = by_claim.get(key)
            if entry is not None and isinstance(entry.get("state"), dict):
                state = MessageState.from_json(entry["state"])
                dest = self._apply(
                    claim, state, entry.get("dest"), journal=False, name=_line_name(entry)
                )
                applied.add(key)
                report.completed.append(str(dest.relative_to(self.path)))
                log.warning(
                    "%s: outcome journaled by a run that stopped; moved to %s without sending",
                    name,
                    dest.parent.name,
                )
            else:
                back = self.requeue(claim)
                report.requeued.append(str(back.relative_to(self.path)))
                log.warning(
                    "possible duplicate: %s (Message-ID %s) was in flight when a run stopped; "
                    "queued again",
                    name,
                    _peek_message_id(back) or "unknown",
                )
                self.log_delivery(
                    {
                        "file": name,
                        "message_id": _peek_message_id(back),
                        "outcome": "requeued",
                        "error": "in flight when a run stopped: possible duplicate",
                    }
                )
        # The newest line of each file whose claim was not in claims/ any more.
        newest: dict[tuple[int, int], dict[str, Any]] = {}
        for entry in lines:
            ident = _line_identity(entry)
            if ident is not None:
                newest[ident] = entry
        for entry in newest.values():
            if entry["claim"] not in applied:
                done = self._redo(entry)
                if done is not None:
                    report.completed.append(str(done.relative_to(self.path)))
        report.removed.extend(self._remove_strays())
        self._clear_journal()
        return report

    def _redo(self, entry: dict[str, Any]) -> Path | None:
        """Redo one journal line whose claim has gone (see "Durability" above); the
        path of a file moved now, None when only its record was rewritten (or the
        file is not where the line could have left it: nothing to do)."""
        dest, name = entry.get("dest"), _line_name(entry)
        if dest not in ("sent", "failed", "deferred") or name is None:
            return None
        if not isinstance(entry.get("state"), dict):
            return None
        kind, _, claimed = str(entry["claim"]).partition("/")
        if kind not in _RANK:
            return None
        origin_name = claimed.partition("~")[2] or claimed
        state = MessageState.from_json(entry["state"])
        target = self.dir(dest) / name
        if _is_file_of(target, entry, state):  # moved; its record may be lost
            claim = self._claim_from_path(kind, origin_name, target, entry["claim"])
            self._place(claim, state, dest, name, move=False)
            return None
        origin = self._origin_dir(kind) / origin_name
        if Path(origin_name).name == origin_name and _is_file_of(origin, entry, state):
            # the claim rename was lost to a power failure; the outcome was not
            claim = self._claim_from_path(kind, origin_name, origin, entry["claim"])
            log.warning(
                "%s: outcome journaled by a run that stopped; moved to %s without sending",
                origin_name,
                dest,
            )
            return self._apply(claim, state, dest, journal=False, name=name)
        return None

    def _remove_strays(self) -> list[str]:
        removed: list[str] = []
        for sub in ("deferred", "sent", "failed"):
            directory = self.dir(sub)
            with contextlib.suppress(FileNotFoundError), os.scandir(directory) as it:
                names = {e.name for e in it}
            for name in names:
                orphan = (
                    sub == "deferred"
                    and name.endswith(SUFFIX + RECORD_SUFFIX)
                    and name[: -len(RECORD_SUFFIX)] not in names
                )
                if orphan or (name.startswith(".cxsmtp-") and name.endswith(".tmp")):
                    _remove(directory / name)
                    removed.append(f"{sub}/{name}")
        return removed

    # -- listing --

    def candidates(
        self, now: float | None = None, *, limit: int | None = DEFAULT_CANDIDATE_LIMIT
    ) -> CandidateList:
        """Due deferred messages (oldest due first), then queued ones (oldest first).

        One ``scandir`` per directory, no file opened; only the first ``limit``
        entries are kept (a bounded heap: ``heapq.nsmallest``), the rest is listed
        again when the iteration gets there (see CandidateList).  ``limit`` None
        keeps everything.  A 100,000-file spool costs about what 10,000 cost.
        """
        now = self.clock() if now is None else now
        held, total = self._due(now, limit, None)
        return CandidateList(self, now, limit, held, total)

    def _due(
        self, now: float, limit: int | None, after: tuple[int, float, str] | None
    ) -> tuple[list[Candidate], int]:
        """The first ``limit`` due entries after ``after`` in sending order, and how
        many due entries there are after it."""
        counted = 0

        def entries() -> Iterator[_Entry]:
            nonlocal counted
            for kind in _KINDS:
                rank = _RANK[kind]
                if after is not None and rank < after[0]:
                    continue
                for mtime, name, size, mode in _list_dir(self._origin_dir(kind)):
                    if rank == 0 and mtime > now:
                        continue  # deferred, not due yet
                    if after is not None and (rank, mtime, name) <= after:
                        continue
                    counted += 1
                    yield (rank, mtime, name, size, mode)

        best = sorted(entries()) if limit is None else heapq.nsmallest(limit, entries())
        held = [
            Candidate(_KINDS[rank], name, size, mtime, _file_type(mode))
            for rank, mtime, name, size, mode in best
        ]
        return held, counted

    def _scan(self, kind: Kind, directory: Path) -> Iterator[Candidate]:
        for mtime, name, size, mode in _list_dir(directory):
            yield Candidate(kind, name, size, mtime, _file_type(mode))

    def scan(self, kind: Kind) -> Iterator[Candidate]:
        """Every *.eml entry of the queue (``queued``) or of deferred/, unordered."""
        return self._scan(kind, self._origin_dir(kind))

    def next_retry(self) -> float | None:
        """The earliest next-attempt time in deferred/ (streamed: no list)."""
        return min((e[0] for e in _list_dir(self.dir("deferred"))), default=None)

    # -- claims --

    def _new_token(self) -> str:
        with self._book:
            self._token_seq += 1
            return f"{self._token_prefix}{self._token_seq:x}"

    def claim(self, candidate: Candidate) -> Claim | None:
        """Take ``candidate`` out of the queue; None when it has gone meanwhile."""
        claimed_name = f"{self._new_token()}~{candidate.name}"
        target = f"{self._claims_str}/{candidate.kind}/{claimed_name}"
        origin = self._deferred_str if candidate.kind == "deferred" else self._top_str
        try:
            os.rename(f"{origin}/{candidate.name}", target)
        except FileNotFoundError:
            return None
        # No fsync of claims/ here: see "Durability" at the journal below.
        return self._claim_from_path(
            candidate.kind,
            candidate.name,
            self._claim_dirs[candidate.kind] / claimed_name,  # joining a name: cheap
            f"{candidate.kind}/{claimed_name}",
        )

    def _claim_from_path(self, kind: Kind, name: str, path: Path, key: str) -> Claim:
        st = os.lstat(path)
        state = self._read_sidecar(name) if kind == "deferred" else None
        return Claim(
            kind,
            name,
            path,
            key,
            st.st_size,
            st.st_mtime,
            _file_type(st.st_mode),
            state,
            st.st_dev,
            st.st_ino,
        )

    def _read_sidecar(self, name: str) -> MessageState | None:
        path = self.dir("deferred") / (name + RECORD_SUFFIX)
        try:
            return MessageState.from_json(json.loads(path.read_bytes()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            log.warning("%s: unreadable state record (%s); treating as a new message", path, exc)
            return None

    def _origin_dir(self, kind: Kind) -> Path:
        return self.dir("deferred") if kind == "deferred" else self.path

    def rewrite_head(self, claim: Claim, head: bytes, body_start: int) -> None:
        """Replace the claimed file's header block (bytes before ``body_start``) with
        ``head``; the body is copied as is, the mtime kept.  Temp file + rename: a
        crash leaves the old or the new file, and a dot-file that recovery removes."""
        st = os.lstat(claim.path)
        tmp = claim.path.with_name(f".{claim.path.name}.tmp")
        try:
            with open(claim.path, "rb") as src, open(tmp, "wb") as dst:
                dst.write(head)
                src.seek(body_start)
                shutil.copyfileobj(src, dst, 1 << 20)
                dst.flush()
                if self.durable:
                    os.fsync(dst.fileno())
            os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.replace(tmp, claim.path)
        except BaseException:
            _remove(tmp)
            raise
        # A new file (inode) under the claim's name: the claim rename must be on disk
        # before it, or a power failure could leave both the old file in the queue
        # and the new one in claims/ (claim() does not fsync; this is the rare case).
        self._fsync_dir(claim.path.parent)
        st = os.lstat(claim.path)
        claim.size, claim.dev, claim.ino = st.st_size, st.st_dev, st.st_ino

    def requeue(self, claim: Claim) -> Path:
        """Put a claim back where it came from, unchanged."""
        if claim.kind == "deferred":
            target = self.dir("deferred") / claim.name
            if os.path.lexists(target):
                target = self.dir("deferred") / _variant(claim.name)
            os.rename(claim.path, target)
        else:
            top = self.path / claim.name
            if os.path.lexists(top) and _same_file(top, claim.path):
                os.unlink(claim.path)  # a crash between link and unlink
                target = top
            else:
                target = self._move_noreplace(claim.path, self.path, claim.name)
        self._fsync_dir(target.parent)
        return target

    def record_outcome(self, claim: Claim, state: MessageState) -> Path:
        """Journal the state (fdatasync), then write the record and move the claim
        to its destination (neither fsynced: see "Durability" at the journal)."""
        dest = state.destination()
        state.status = dest
        return self._apply(claim, state, dest, journal=True)

    def _apply(
        self,
        claim: Claim,
        state: MessageState,
        dest: Any,
        *,
        journal: bool,
        name: str | None = None,
    ) -> Path:
        if dest not in ("sent", "failed", "deferred"):
            dest = state.destination()
        directory = f"{self._top_str}/{dest}"
        if not journal:
            name = name or claim.name
            if os.path.lexists(f"{directory}/{name}"):
                name = _variant(name)
            return self._place(claim, state, dest, name, move=True)
        with self._book:
            # The name is chosen (under the lock: one thread at a time moves files
            # into ``directory``) before the line is written, so that the line says
            # where the file goes.
            name = claim.name
            if os.path.lexists(f"{directory}/{name}"):
                name = _variant(name)
            state.name = name
            state.status = dest
            record = _dumps(state.to_json())
            about = _dumps(
                {
                    "claim": claim.key,
                    "dest": dest,
                    "name": name,
                    "file": [claim.dev, claim.ino, claim.size, claim.mtime],
                }
            )
            # {"claim":...,"file":[...],"state":{the record}}: the record encoded once
            self._journal_append(b"".join((about[:-1], b',"state":', record, b"}\n")))
            path = self._place(claim, state, dest, name, move=True, record=record)
            if self._journal_lines >= CHECKPOINT_LINES:
                self._checkpoint()
            return path

    def _place(
        self,
        claim: Claim,
        state: MessageState,
        dest: str,
        name: str,
        *,
        move: bool,
        record: bytes | None = None,
    ) -> Path:
        """Write the record beside ``dest/name`` and move the claim there (``move``);
        redoing it is harmless.  No fsync: the journal line covers both."""
        directory = f"{self._top_str}/{dest}"  # pathlib's joins cost more than the I/O
        state.name = name
        state.status = dest
        if record is None:
            record = _dumps(state.to_json())
        record_path = f"{directory}/{name}{RECORD_SUFFIX}"
        self._write_file(record_path, record + b"\n", sync=False)
        self._unsynced.add(record_path)
        if dest == "deferred" and state.next_attempt is not None and claim.file_type != "symlink":
            os.utime(claim.path, (state.next_attempt, state.next_attempt))
        if move:
            os.rename(claim.path, f"{directory}/{name}")
        if claim.kind == "deferred" and not (dest == "deferred" and name == claim.name):
            _remove(Path(f"{self._deferred_str}/{claim.name}{RECORD_SUFFIX}"))
        return self._dest_dirs[dest] / name

    # -- delivery log --

    def log_delivery(self, entry: dict[str, Any]) -> None:
        """One JSON line per attempt in .cxsmtp/delivery.log (not fsynced: a log).

        The file stays open until ``finish`` or the end of the lock; beyond
        DELIVERY_LOG_MAX bytes it is rotated once, to delivery.log.1.
        """
        line = {"time": iso(self.clock()), **entry}
        text = json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n"
        data = text.encode("utf-8", "backslashreplace")  # a lone surrogate: \udcxx, still JSON
        with self._book:
            try:
                if self._log_fd is None or self._log_size > DELIVERY_LOG_MAX:
                    self._open_delivery_log()
                assert self._log_fd is not None
                os.write(self._log_fd, data)
                self._log_size += len(data)
            except OSError as exc:
                log.warning("cannot write %s: %s", self.delivery_log_path, exc.strerror)

    def _open_delivery_log(self) -> None:
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.delivery_log_path).st_size > DELIVERY_LOG_MAX:
                os.replace(self.delivery_log_path, self.delivery_log_path.with_suffix(".log.1"))
        self._log_fd = os.open(
            self.delivery_log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        self._log_size = os.fstat(self._log_fd).st_size

    # -- enqueue, retry, status --

    def enqueue(self, data: bytes, *, hint: str = "") -> Path:
        """Write ``data`` as a new queued message (via SPOOL/tmp/ + rename); return its path."""
        self.check(writable=True)
        tmp_dir = self.dir("tmp")
        try:
            tmp_dir.mkdir(exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"spool {self.path}: cannot create tmp/: {exc.strerror}") from None
        now = self.clock()
        stamp = datetime.fromtimestamp(now, timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        stem = _UNSAFE_NAME.sub("_", Path(hint).stem)[:40].strip("._") if hint else ""
        name = f"{stamp}-{secrets.token_hex(3)}" + (f"-{stem}" if stem else "") + SUFFIX
        tmp = tmp_dir / f".{name}.part"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if self.durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            target = self._move_noreplace(tmp, self.path, name)
            self._fsync_dir(self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise SpoolError(f"spool {self.path}: cannot write {name}: {exc.strerror}") from None
        return target

    def retry(self, names: Sequence[str] = (), *, everything: bool = False) -> list[str]:
        """Failed messages back to the queue, deferred ones due now; returns what moved.

        Call under the lock.  Unknown names raise InputError before anything moves.
        """
        failed_dir, deferred_dir = self.dir("failed"), self.dir("deferred")
        wanted: list[tuple[str, str]] = []
        if everything:
            for kind, directory in (("failed", failed_dir), ("deferred", deferred_dir)):
                with contextlib.suppress(FileNotFoundError), os.scandir(directory) as it:
                    wanted.extend(
                        (kind, e.name)
                        for e in it
                        if e.name.endswith(SUFFIX) and not e.name.startswith(".")
                    )
        else:
            for raw in names:
                name = Path(raw).name
                if os.path.lexists(failed_dir / name):
                    wanted.append(("failed", name))
                elif os.path.lexists(deferred_dir / name):
                    wanted.append(("deferred", name))
                else:
                    raise InputError(
                        f"spool {self.path}: no message {name!r} in failed/ or deferred/"
                    )
        moved: list[str] = []
        now = self.clock()
        for kind, name in sorted(wanted):
            if kind == "deferred":
                os.utime(deferred_dir / name, (now, now), follow_symlinks=False)
                moved.append(f"deferred/{name}")
                continue
            target = self._move_noreplace(failed_dir / name, self.path, name)
            _remove(failed_dir / (name + RECORD_SUFFIX))
            moved.append(target.name)
        self._fsync_dir(self.path)
        return moved

    def status(self, now: float | None = None) -> SpoolStatus:
        """Counts per state, bytes, oldest, next retry, failed recipients; read-only."""
        self.check(writable=False)
        now = self.clock() if now is None else now
        result = SpoolStatus(path=self.path)
        for c in self._scan("queued", self.path):
            result.queued.add(c.size, c.mtime)
        for c in self._scan("deferred", self.dir("deferred")):
            result.deferred.add(c.size, c.mtime)
            if c.mtime <= now:
                result.due_now += 1
            if result.next_retry is None or c.mtime < result.next_retry:
                result.next_retry = c.mtime
        for sub in ("sent", "failed"):
            for c in self._scan("queued", self.dir(sub)):
                getattr(result, sub).add(c.size, c.mtime)
        result.in_flight = len([p for p in self.claims() if not p.name.startswith(".")])
        result.running_pid = self.holder_pid()
        for sub in ("failed", "deferred", "sent"):
            for state in _records(self.dir(sub)):
                where = f"{sub}/{state.name}"
                if sub == "failed":
                    result.failed_messages.append(FailedMessage(where, state.reason))
                for rcpt, res in state.failed.items():
                    result.failed_recipients.append(
                        FailedRecipient(where, rcpt, "failed", res.describe())
                    )
                if sub == "deferred":
                    for rcpt, pending in state.pending.items():
                        reply = pending.describe() if pending else "not tried yet"
                        result.failed_recipients.append(
                            FailedRecipient(where, rcpt, "pending", reply)
                        )
        with contextlib.suppress(FileNotFoundError), os.scandir(self.dir("tmp")) as it:
            for entry in it:
                with contextlib.suppress(OSError):
                    if now - entry.stat(follow_symlinks=False).st_mtime > STALE_TMP_AGE:
                        result.stale_tmp.append(f"tmp/{entry.name}")
        result.stale_tmp.sort()
        return result


# --- module helpers ------------------------------------------------------------


def _list_dir(directory: Path) -> Iterator[tuple[float, str, int, int]]:
    """(mtime, name, size, st_mode) of every *.eml entry (not dot-files), unordered;
    symlinks are not followed.  A missing directory has none."""
    try:
        it = os.scandir(directory)
    except FileNotFoundError:
        return
    with it:
        for entry in it:
            name = entry.name
            if not name.endswith(SUFFIX) or name.startswith("."):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            yield st.st_mtime, name, st.st_size, st.st_mode


def _fdatasync(fd: int) -> None:
    getattr(os, "fdatasync", os.fsync)(fd)  # macOS has no fdatasync


def _dumps(value: Any) -> bytes:
    """Compact JSON as UTF-8; ASCII escapes when a str holds a lone surrogate
    (undecodable header bytes), so that every line reads back."""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":")).encode("ascii")


def _line_name(entry: dict[str, Any]) -> str | None:
    """The destination name a journal line chose, if it is a plain message name."""
    name = entry.get("name")
    if not isinstance(name, str) or not name.endswith(SUFFIX) or name.startswith("."):
        return None
    return name if Path(name).name == name else None


def _line_identity(entry: dict[str, Any]) -> tuple[int, int] | None:
    ident = entry.get("file")
    if isinstance(ident, list) and len(ident) == 4 and all(isinstance(i, int) for i in ident[:2]):
        return (ident[0], ident[1]) if ident[1] else None
    return None


def _is_file_of(path: Path, entry: dict[str, Any], state: MessageState) -> bool:
    """Is ``path`` the file a journal line is about?  Same device and inode (kept by
    a rename), size and mtime (kept too, except that a deferred message's mtime
    may already be its next attempt): an inode number reused by a new file after
    the crash does not pass for the old one."""
    ident = entry.get("file")
    if not isinstance(ident, list) or len(ident) != 4:
        return False
    try:
        st = os.lstat(path)
    except OSError:
        return False
    dev, ino, size, mtime = ident
    if (st.st_dev, st.st_ino, st.st_size) != (dev, ino, size):
        return False
    if st.st_mtime == mtime:
        return True
    due = state.next_attempt
    return entry.get("dest") == "deferred" and due is not None and abs(st.st_mtime - due) < 1e-3


def _file_type(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "directory"
    return "other"


def _variant(name: str) -> str:
    """``x.eml`` -> ``x~1a2b3c4d.eml``: a free name when ``x.eml`` is taken."""
    stem = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
    return f"{stem}~{secrets.token_hex(4)}{SUFFIX}"


def _same_file(a: Path, b: Path) -> bool:
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _peek_message_id(path: Path) -> str | None:
    """The Message-ID in the first 64 KB of ``path`` (for log lines only)."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        with open(path, "rb") as handle:
            head = handle.read(65536)
    except OSError:
        return None
    match = re.search(rb"^message-id:[ \t]*(<[^>\r\n]*>)", head, re.IGNORECASE | re.MULTILINE)
    return match.group(1).decode("utf-8", "replace") if match else None


def _records(directory: Path) -> Iterable[MessageState]:
    try:
        it = os.scandir(directory)
    except FileNotFoundError:
        return
    with it:
        for entry in it:
            if not entry.name.endswith(SUFFIX + RECORD_SUFFIX) or entry.name.startswith("."):
                continue
            try:
                with open(entry.path, "rb") as handle:
                    yield MessageState.from_json(json.load(handle))
            except (OSError, ValueError, TypeError):
                continue
