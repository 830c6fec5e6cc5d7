"""Claims: a message taken out of the queue for one attempt, by an atomic rename
into ``.cxsmtp/claims/KIND/TOKEN~NAME``, and put back (requeue) when it is not
finished; the claimed file's header block can be rewritten in place."""

from __future__ import annotations

import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from carerix_smtp.spool.layout import (
    RECORD_SUFFIX,
    Kind,
    SpoolLayout,
    file_type,
    remove,
    same_file,
    variant,
)
from carerix_smtp.spool.listing import Candidate
from carerix_smtp.spool.records import MessageState, read_sidecar


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


class Claims:
    """Takes messages out of the queue and puts them back (see "A message's life"
    in ``carerix_smtp/spool/spool.py``)."""

    def __init__(self, layout: SpoolLayout, book: threading.Lock) -> None:
        self._layout = layout
        self._book = book  # shared with the journal and the delivery log
        self._token_prefix = layout.token_prefix
        self._token_seq = 0
        self._top_str = layout.top_str
        self._deferred_str = layout.deferred_str
        self._claims_str = layout.claims_str
        self._claim_dirs = layout.claim_dirs

    def new_token(self) -> str:
        with self._book:
            self._token_seq += 1
            return f"{self._token_prefix}{self._token_seq:x}"

    def claim(self, candidate: Candidate) -> Claim | None:
        """Take ``candidate`` out of the queue; None when it has gone meanwhile."""
        claimed_name = f"{self.new_token()}~{candidate.name}"
        target = f"{self._claims_str}/{candidate.kind}/{claimed_name}"
        origin = self._deferred_str if candidate.kind == "deferred" else self._top_str
        try:
            os.rename(f"{origin}/{candidate.name}", target)
        except FileNotFoundError:
            return None
        # No fsync of claims/ here: see "Durability" in carerix_smtp/spool/journal.py.
        return self.from_path(
            candidate.kind,
            candidate.name,
            self._claim_dirs[candidate.kind] / claimed_name,  # joining a name: cheap
            f"{candidate.kind}/{claimed_name}",
        )

    def from_path(self, kind: Kind, name: str, path: Path, key: str) -> Claim:
        """The Claim for a file already in claims/ (or wherever ``path`` is)."""
        st = os.lstat(path)
        state = self._read_sidecar(name) if kind == "deferred" else None
        return Claim(
            kind,
            name,
            path,
            key,
            st.st_size,
            st.st_mtime,
            file_type(st.st_mode),
            state,
            st.st_dev,
            st.st_ino,
        )

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
                if self._layout.durable:
                    os.fsync(dst.fileno())
            os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.replace(tmp, claim.path)
        except BaseException:
            remove(tmp)
            raise
        # A new file (inode) under the claim's name: the claim rename must be on disk
        # before it, or a power failure could leave both the old file in the queue
        # and the new one in claims/ (claim() does not fsync; this is the rare case).
        self._layout.fsync_dir(claim.path.parent)
        st = os.lstat(claim.path)
        claim.size, claim.dev, claim.ino = st.st_size, st.st_dev, st.st_ino

    def requeue(self, claim: Claim) -> Path:
        """Put a claim back where it came from, unchanged."""
        if claim.kind == "deferred":
            target = self._layout.dir("deferred") / claim.name
            if os.path.lexists(target):
                target = self._layout.dir("deferred") / variant(claim.name)
            os.rename(claim.path, target)
        else:
            top = self._layout.path / claim.name
            if os.path.lexists(top) and same_file(top, claim.path):
                os.unlink(claim.path)  # a crash between link and unlink
                target = top
            else:
                target = self._layout.move_noreplace(claim.path, self._layout.path, claim.name)
        self._layout.fsync_dir(target.parent)
        return target

    def _read_sidecar(self, name: str) -> MessageState | None:
        return read_sidecar(self._layout.dir("deferred") / (name + RECORD_SUFFIX))
