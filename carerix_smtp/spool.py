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
    SPOOL/.cxsmtp/journal            JSON lines, fsynced: outcomes not yet applied
    SPOOL/.cxsmtp/claims/queued/     messages in flight, by origin, named TOKEN~NAME
    SPOOL/.cxsmtp/claims/deferred/
    SPOOL/.cxsmtp/delivery.log       JSON lines, one per attempt (who got it, who not, why)

Deferred messages live in ``SPOOL/deferred/`` (not at the top level) so that the
top level holds only what producers dropped, an ``ls`` shows what waits for a
retry, and finding the due ones is one ``scandir`` with no file opened.

Order: due deferred messages first (oldest next-attempt time first), then queued
ones, oldest modification time first, then by name.  Listing is one ``scandir``
per directory (no file is opened or parsed), so 100,000 files cost a sort of
small tuples; messages are then claimed and read one at a time.

A message's life, and why a crash at any point loses nothing:

1. claim: ``rename(SPOOL/NAME.eml, claims/queued/TOKEN~NAME)``; the token is
   unique per claim, so a journal line can never be mistaken for a later claim
   of a file with the same name; the claims directory is fsynced.
2. the sender talks SMTP.  Then ``record_outcome`` appends the resulting state
   (who accepted, who refused, where the message goes) to the journal and
   fsyncs it — before anything else happens (the 250 for the data is on disk
   before the file moves).
3. the record is written (temp file, fsync, rename) beside the destination,
   the claimed file is renamed there and the directory fsynced.

On start (``recover``), under the lock: a claim with a journaled outcome is
moved where the outcome says without sending again; a claim without one is put
back where it came from — its data may have reached the server, so it is logged
as a possible duplicate (RFC 1047; at most one per connection).  Then the
journal is emptied.  The lock serialises runs; claims and the journal make the
single run crash-safe.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from carerix_smtp.errors import CxsmtpError, ExitCode, InputError, SpoolError

log = logging.getLogger(__name__)

STATE_DIR = ".cxsmtp"
SUFFIX = ".eml"
RECORD_SUFFIX = ".json"  # NAME.eml.json beside NAME.eml
STALE_TMP_AGE = 86_400.0  # issue 4: files in SPOOL/tmp older than a day are reported
DELIVERY_LOG_MAX = 64 * 1024 * 1024  # rotated once to delivery.log.1 beyond this

Kind = Literal["queued", "deferred"]
Destination = Literal["sent", "failed", "deferred"]


class SpoolBusyError(CxsmtpError):
    """Another cxsmtp process holds the spool lock (exit 75: try again later)."""

    exit_code = ExitCode.TEMPFAIL


# --- time and JSON helpers ---------------------------------------------------


def iso(ts: float | None) -> str | None:
    """Epoch seconds -> ``2024-05-01T12:00:00+00:00`` (records are for people too)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


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
        self._journal_fd: int | None = None

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

    def _write_file(self, path: Path, data: bytes, *, mtime_ns: int | None = None) -> None:
        """Atomically replace ``path``: hidden temp file beside it, fsync, rename."""
        tmp = path.with_name(f".cxsmtp-{secrets.token_hex(6)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if self.durable:
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

    def _journal_append(self, entry: dict[str, Any]) -> None:
        if self._journal_fd is None:
            self._journal_fd = os.open(
                self.journal_path,
                os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                0o600,
            )
        line = json.dumps(entry, separators=(",", ":"), ensure_ascii=False) + "\n"
        os.write(self._journal_fd, line.encode("utf-8"))
        if self.durable:
            os.fsync(self._journal_fd)

    def _close_journal(self) -> None:
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None

    def _read_journal(self) -> dict[str, dict[str, Any]]:
        """claim key -> its last journaled outcome (a torn last line is ignored)."""
        entries: dict[str, dict[str, Any]] = {}
        try:
            with open(self.journal_path, "rb") as handle:
                for line in handle:
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(entry, dict) and isinstance(entry.get("claim"), str):
                        entries[entry["claim"]] = entry
        except FileNotFoundError:
            pass
        return entries

    def _clear_journal(self) -> None:
        self._close_journal()
        with contextlib.suppress(FileNotFoundError):
            os.truncate(self.journal_path, 0)

    def claims(self) -> list[Path]:
        out: list[Path] = []
        for kind in ("queued", "deferred"):
            with contextlib.suppress(FileNotFoundError), os.scandir(self.claims_dir / kind) as it:
                out.extend(Path(e.path) for e in it)
        return out

    def finish(self) -> None:
        """End of a run: when nothing is in flight, the journal has no use left."""
        if not self.claims():
            self._clear_journal()

    # -- recovery --

    def recover(self) -> RecoveryReport:
        """Resolve what a killed run left behind (call under the lock, before sending)."""
        self.prepare()
        report = RecoveryReport()
        journal = self._read_journal()
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
            entry = journal.get(key)
            if entry is not None and isinstance(entry.get("state"), dict):
                state = MessageState.from_json(entry["state"])
                dest = self._apply(claim, state, entry.get("dest"), journal=False)
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
        report.removed.extend(self._remove_strays())
        self._fsync_dir(self.state_dir)
        self._clear_journal()
        return report

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

    def candidates(self, now: float | None = None) -> list[Candidate]:
        """Due deferred messages (oldest due first), then queued ones (oldest first)."""
        now = self.clock() if now is None else now
        deferred = [c for c in self._scan("deferred", self.dir("deferred")) if c.mtime <= now]
        queued = list(self._scan("queued", self.path))
        deferred.sort(key=lambda c: (c.mtime, c.name))
        queued.sort(key=lambda c: (c.mtime, c.name))
        return deferred + queued

    def _scan(self, kind: Kind, directory: Path) -> Iterator[Candidate]:
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
                yield Candidate(kind, name, st.st_size, st.st_mtime, _file_type(st.st_mode))

    def scan(self, kind: Kind) -> Iterator[Candidate]:
        """Every *.eml entry of the queue (``queued``) or of deferred/, unordered."""
        return self._scan(kind, self._origin_dir(kind))

    def next_retry(self) -> float | None:
        times = [c.mtime for c in self._scan("deferred", self.dir("deferred"))]
        return min(times) if times else None

    # -- claims --

    def _new_token(self) -> str:
        self._token_seq += 1
        return f"{self._token_prefix}{self._token_seq:x}"

    def claim(self, candidate: Candidate) -> Claim | None:
        """Take ``candidate`` out of the queue; None when it has gone meanwhile."""
        origin = self._origin_dir(candidate.kind)
        claimed_name = f"{self._new_token()}~{candidate.name}"
        target = self.claims_dir / candidate.kind / claimed_name
        try:
            os.rename(origin / candidate.name, target)
        except FileNotFoundError:
            return None
        self._fsync_dir(target.parent)
        return self._claim_from_path(
            candidate.kind, candidate.name, target, f"{candidate.kind}/{claimed_name}"
        )

    def _claim_from_path(self, kind: Kind, name: str, path: Path, key: str) -> Claim:
        st = os.lstat(path)
        state = self._read_sidecar(name) if kind == "deferred" else None
        return Claim(kind, name, path, key, st.st_size, st.st_mtime, _file_type(st.st_mode), state)

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
        claim.size = os.lstat(claim.path).st_size

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
        """Journal (fsync) the state, then move the claim to its destination."""
        dest = state.destination()
        state.status = dest
        return self._apply(claim, state, dest, journal=True)

    def _apply(self, claim: Claim, state: MessageState, dest: Any, *, journal: bool) -> Path:
        if dest not in ("sent", "failed", "deferred"):
            dest = state.destination()
        if journal:
            self._journal_append({"claim": claim.key, "dest": dest, "state": state.to_json()})
        directory = self.dir(dest)
        name = claim.name
        if os.path.lexists(directory / name):
            name = _variant(name)
        state.name = name
        state.status = dest
        record = json.dumps(state.to_json(), indent=2, ensure_ascii=False) + "\n"
        self._write_file(directory / (name + RECORD_SUFFIX), record.encode("utf-8"))
        if dest == "deferred" and state.next_attempt is not None and claim.file_type != "symlink":
            os.utime(claim.path, (state.next_attempt, state.next_attempt))
        os.rename(claim.path, directory / name)
        self._fsync_dir(directory)
        if claim.kind == "deferred" and not (dest == "deferred" and name == claim.name):
            _remove(self.dir("deferred") / (claim.name + RECORD_SUFFIX))
        return directory / name

    # -- delivery log --

    def log_delivery(self, entry: dict[str, Any]) -> None:
        """One JSON line per attempt in .cxsmtp/delivery.log (not fsynced: a log)."""
        line = {"time": iso(self.clock()), **entry}
        data = (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        try:
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.delivery_log_path).st_size > DELIVERY_LOG_MAX:
                    os.replace(self.delivery_log_path, self.delivery_log_path.with_suffix(".log.1"))
            fd = os.open(
                self.delivery_log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("cannot write %s: %s", self.delivery_log_path, exc.strerror)

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
