"""The journal, ``.cxsmtp/journal``: a redo log of outcomes (JSON lines), written
per outcome and fdatasynced once per group (GroupCommit), emptied at each
checkpoint once the records and directories it covers are on disk; and how a
line is read back (which file it is about, where it goes).  What is synced when,
and what a crash may cost, is explained under "Durability" below."""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from carerix_smtp.errors import StorageError
from carerix_smtp.spool.layout import (
    CLAIM_DIRS,
    STATE_DIR,
    SUFFIX,
    TOP,
    SpoolLayout,
    storage,
    write_all,
)
from carerix_smtp.spool.records import MessageState

# Outcomes between two checkpoints (records fsynced, journal emptied; "Durability"):
# bounds the journal (~1 KB a line) and what recovery may have to redo.
CHECKPOINT_LINES = 1000

# A journal line reaches the disk at most this long after it was written (issue 12):
# what a power failure may cost is the outcomes of one such group.
GROUP_WINDOW = 0.05
# The flusher thread ends after this long without a line (a new line starts one).
FLUSHER_IDLE = 1.0

# Durability: no fsync per message.  Two kinds of crash, two promises (README):
#
# - a process crash (SIGKILL, OOM killer, segfault) loses nothing that was
#   written with write(2): the page cache belongs to the kernel.  The journal
#   line is written before the file or its record moves and before the sender
#   starts the next message's data (record_outcome returns only then), so only
#   the message in flight can be sent twice: at most one per connection.
# - a power failure or kernel crash loses what was not synced.  Journal lines
#   are fdatasynced once per group: GROUP_WINDOW after the group's first line
#   (GroupCommit; later only when the disk or the machine is slower than
#   that), and before a checkpoint or the end of the lock.  So it may lose the
#   lines written since the last completed sync: those messages come back to
#   the queue (or stay in deferred/ without their newest sidecar) and may be
#   sent again.  At most one group (about GROUP_WINDOW of outcomes) plus the
#   one in flight per connection; never a lost message: a file only ever
#   moves by rename, after its outcome is known.
#
# The journal is a redo log.  A line says which claimed file it is about (its
# claim key and its identity: st_dev, st_ino, size and mtime, which a rename
# keeps), where it goes (dest/name), its whole state (what the record holds)
# and, for a sent message, where its record goes in the day file (``at``: file
# and offset, see SentLog).  Lines are dropped only at a checkpoint, after every
# record written since the previous one and every directory changed were
# fsynced.  Recovery redoes every line whose file is not where the line says,
# or whose record may not have reached the disk.  Step by step:
#
# - claim (rename into claims/): not fsynced.  If a power failure loses that
#   rename, the file is back in the queue.  That matters only if it was sent:
#   either its journal line reached the disk: then recovery finds the file by
#   its identity at its old place and moves it where the line says, without
#   sending it again; or it did not: a possible duplicate, as above.
# - journal line: written per outcome, fdatasynced per group (above).
# - record and move to sent/, failed/ or deferred/: not fsynced.  A sent
#   message's record is one line appended to ``sent/records-DAY.jsonl``; a
#   failed or deferred one's is ``NAME.eml.json`` beside it (a deferred
#   message's sidecar lists who already accepted it: covered the same way, so
#   none of them gets it twice).  Lost after a power failure, they are redone
#   from the journal line, which stays until the checkpoint has made them
#   durable; a day-file line is redone only when it is not at its offset.
# - checkpoint (every CHECKPOINT_LINES outcomes, at the end of a run, after
#   recovery): fsync the day files and the failed/deferred records written
#   since the last one (rare: one each) and the six directories, once for the
#   whole group of renames; then truncate the journal and fsync it, so that no
#   old line can survive to be redone after later changes (``cxsmtp retry``).
#   syncfs(2) would be cheaper but waits for every dirty page of the whole file
#   system, other programs' too: not a cost to impose.


class GroupCommit:
    """fdatasync of one append-only file once per group of writes, off the
    sender's path.

    ``wrote()`` after each write: the first write of a group wakes a daemon
    thread that fdatasyncs GROUP_WINDOW later, so every line is on disk at most
    that long after it was written, at one sync per group however many lines
    the group holds.  The sync runs in that thread (fdatasync releases the GIL:
    the disk wait overlaps sending); ``flush()`` syncs now, in the caller, for
    a checkpoint or the end of the lock.  A sync that fails is raised by the
    next ``wrote()`` or ``flush()``: the run stops rather than claim durability.
    The thread ends after FLUSHER_IDLE without a write.
    """

    def __init__(self, sync: Callable[[], None], clock: Callable[[], float] = time.monotonic):
        self._sync = sync
        self._clock = clock
        self._cond = threading.Condition()
        self.syncing = threading.Lock()  # held during a sync; closing the file waits
        self._due: float | None = None  # when the pending group must be synced
        self._running = False
        self._error: StorageError | None = None

    def wrote(self) -> None:
        """A write was made: have it synced within GROUP_WINDOW."""
        with self._cond:
            self._raise_error()
            if self._due is not None:
                return  # the pending group takes it
            self._due = self._clock() + GROUP_WINDOW
            if self._running:
                self._cond.notify()
                return
            self._running = True
        threading.Thread(target=self._run, name="cxsmtp-journal-sync", daemon=True).start()

    def flush(self) -> None:
        """Sync now what was written and not synced yet (in the calling thread)."""
        with self._cond:
            self._raise_error()
            pending, self._due = self._due is not None, None
        if pending:
            self._sync_now()

    def discard(self) -> None:
        """Forget the pending group: the caller made it moot (a checkpoint)."""
        with self._cond:
            self._due = None

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _sync_now(self) -> None:
        with self.syncing:
            self._sync()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._due is None:
                    if not self._cond.wait(FLUSHER_IDLE) and self._due is None:
                        self._running = False
                        return
                while self._due is not None and (left := self._due - self._clock()) > 0:
                    self._cond.wait(left)
                if self._due is None:
                    continue  # flushed or discarded meanwhile
                self._due = None  # lines written from now on form the next group
            try:
                self._sync_now()
            except StorageError as exc:
                with self._cond:
                    self._error = exc


class Journal:
    """The redo log file: append a line, read the lines back, checkpoint."""

    NAME = "journal"

    def __init__(self, layout: SpoolLayout, book: threading.Lock) -> None:
        self._layout = layout
        self.path = layout.journal_path
        self._book = book  # shared with the claim tokens and the delivery log
        self._fd: int | None = None
        self.lines = 0  # since the last checkpoint
        # records written since the last checkpoint: (directory, name) as SpoolLayout.fd
        self.unsynced: set[tuple[str, str]] = set()
        self._commit = GroupCommit(self._sync)

    def append(self, line: bytes) -> None:
        """Append one line (call with ``self._book`` held).  It is in the page cache
        when this returns (a process crash keeps it) and on disk within
        GROUP_WINDOW (GroupCommit)."""
        if self._fd is None:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
            self._fd = self._layout.open_file(STATE_DIR, self.NAME, flags, 0o600)
        with storage("append to", self.path):
            write_all(self._fd, line)
        if self._layout.durable:
            self._commit.wrote()
        self.lines += 1

    def _sync(self) -> None:
        """fdatasync the journal (GroupCommit; its ``syncing`` lock is held)."""
        fd = self._fd
        if fd is not None:
            with storage("sync", self.path):
                _fdatasync(fd)  # an append: the new size is part of the data

    def close(self) -> None:
        """Sync the pending group and close the journal (call with the shared lock
        held: it is being released)."""
        if self._fd is None:
            return
        try:
            self._commit.flush()
        finally:
            with self._commit.syncing:  # not while the flusher syncs it
                os.close(self._fd)
                self._fd = None

    def read(self) -> list[dict[str, Any]]:
        """The journal's lines, oldest first (a torn last line is ignored)."""
        entries: list[dict[str, Any]] = []
        try:
            fd = self._layout.open_file(STATE_DIR, self.NAME, os.O_RDONLY)
        except StorageError as exc:
            if exc.errno == errno.ENOENT:
                return entries
            raise
        with storage("read", self.path), os.fdopen(fd, "rb") as handle:
            for line in handle:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and isinstance(entry.get("claim"), str):
                    entries.append(entry)
        return entries

    def checkpoint(self) -> None:
        """Put everything done since the last checkpoint on disk, then empty the
        journal (call with ``self._book`` held)."""
        if self._layout.durable:
            self._commit.flush()  # the group first, as at every other end of a group
            self.sync_unsynced()
        else:
            self.unsynced.clear()
        fd = self._fd
        if fd is None:
            try:
                fd = self._layout.open_file(STATE_DIR, self.NAME, os.O_WRONLY)
            except StorageError as exc:
                if exc.errno != errno.ENOENT:
                    raise
                self.lines = 0
                return
        try:
            with storage("empty", self.path):
                if fd != self._fd and os.fstat(fd).st_size == 0:
                    self.lines = 0  # empty already (a run with nothing to do)
                    return
                os.ftruncate(fd, 0)  # O_APPEND: the next line goes at 0
                if self._layout.durable:
                    os.fsync(fd)  # the truncation before any new line (see above)
        finally:
            if fd != self._fd:
                os.close(fd)
        self.lines = 0

    def sync_unsynced(self) -> None:
        """fsync every record and day file written since the last checkpoint, then
        every directory a claim, a move or a record changed (once for all the
        renames of the group)."""
        files, self.unsynced = self.unsynced, set()
        if not files:
            return  # no outcome since the last checkpoint: nothing moved that matters
        layout = self._layout
        for rel, name in sorted(files):
            try:
                fd = layout.open_file(rel, name, os.O_RDONLY)
            except StorageError as exc:
                if exc.errno == errno.ENOENT:
                    continue  # replaced or removed since: its successor is in the set
                raise
            try:
                with storage("sync", layout.where(rel, name)):
                    os.fsync(fd)
            finally:
                os.close(fd)
        for rel in (TOP, "deferred", "sent", "failed", *CLAIM_DIRS.values()):
            layout.fsync_dir(rel)

    def checkpoint_due(self) -> bool:
        """True when CHECKPOINT_LINES outcomes were journaled since the last one."""
        return self.lines >= CHECKPOINT_LINES

    def clear(self) -> None:
        """A checkpoint, taking the shared lock."""
        with self._book:
            self.checkpoint()


def _fdatasync(fd: int) -> None:
    getattr(os, "fdatasync", os.fsync)(fd)  # macOS has no fdatasync


def line_name(entry: dict[str, Any]) -> str | None:
    """The destination name a journal line chose, if it is a plain message name."""
    name = entry.get("name")
    if not isinstance(name, str) or not name.endswith(SUFFIX) or name.startswith("."):
        return None
    return name if Path(name).name == name else None


def line_identity(entry: dict[str, Any]) -> tuple[int, int] | None:
    ident = entry.get("file")
    if isinstance(ident, list) and len(ident) == 4 and all(isinstance(i, int) for i in ident[:2]):
        return (ident[0], ident[1]) if ident[1] else None
    return None


def is_file_of(st: os.stat_result | None, entry: dict[str, Any], state: MessageState) -> bool:
    """Is the file ``st`` is the lstat of the file a journal line is about?  Same
    device and inode (kept by a rename), size and mtime (kept too, except that a
    deferred message's mtime may already be its next attempt): an inode number
    reused by a new file after the crash does not pass for the old one."""
    ident = entry.get("file")
    if st is None or not isinstance(ident, list) or len(ident) != 4:
        return False
    dev, ino, size, mtime = ident
    if (st.st_dev, st.st_ino, st.st_size) != (dev, ino, size):
        return False
    if st.st_mtime == mtime:
        return True
    due = state.next_attempt
    return entry.get("dest") == "deferred" and due is not None and abs(st.st_mtime - due) < 1e-3
