"""The journal, ``.cxsmtp/journal``: a redo log of outcomes (JSON lines, fdatasynced),
emptied at each checkpoint once the records and directories it covers are on
disk; and how a line is read back (which file it is about, where it goes).
Why one fsync per message is enough is explained under "Durability" below."""

from __future__ import annotations

import errno
import json
import os
import threading
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

    def append(self, line: bytes) -> None:
        """Append one line and put it on disk (call with ``self._book`` held)."""
        if self._fd is None:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
            self._fd = self._layout.open_file(STATE_DIR, self.NAME, flags, 0o600)
        with storage("append to", self.path):
            write_all(self._fd, line)
            if self._layout.durable:
                _fdatasync(self._fd)  # an append: the new size is part of the data
        self.lines += 1

    def close(self) -> None:
        """Close the journal (call with the shared lock held: it is being released)."""
        if self._fd is not None:
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
        """fsync every record written since the last checkpoint, then every directory
        a claim, a move or a record changed."""
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
