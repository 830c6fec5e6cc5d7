"""Claims: a message taken out of the queue for one attempt, by an atomic rename
into ``.cxsmtp/claims/KIND/TOKEN~NAME``, and put back (requeue) when it is not
finished; the claimed file's header block can be rewritten in place."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from carerix_smtp.errors import StorageError
from carerix_smtp.spool.layout import (
    CLAIM_DIRS,
    RECORD_SUFFIX,
    TOP,
    Kind,
    SpoolLayout,
    child,
    file_type,
    origin,
    same_file,
    storage,
    variant,
    write_all,
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
    where: str = ""  # the directory it is in, relative to SPOOL (SpoolLayout.fd)
    leaf: str = ""  # its name in ``where`` (the path's last part)

    def __post_init__(self) -> None:
        if not self.leaf:
            self.leaf = self.path.name


class Claims:
    """Takes messages out of the queue and puts them back (see "A message's life"
    in ``carerix_smtp/spool/spool.py``)."""

    def __init__(self, layout: SpoolLayout, book: threading.Lock) -> None:
        self._layout = layout
        self._book = book  # shared with the journal and the delivery log
        self._token_prefix = layout.token_prefix
        self._token_seq = 0

    def new_token(self) -> str:
        with self._book:
            self._token_seq += 1
            return f"{self._token_prefix}{self._token_seq:x}"

    def claim(self, candidate: Candidate) -> Claim | None:
        """Take ``candidate`` out of the queue; None when it has gone meanwhile."""
        claimed_name = f"{self.new_token()}~{candidate.name}"
        layout, kind = self._layout, candidate.kind
        src_fd, dst_fd = layout.fd(origin(kind)), layout.fd(CLAIM_DIRS[kind])
        try:
            os.rename(candidate.name, claimed_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            where = layout.where(origin(kind), candidate.name)
            raise StorageError.from_os_error(exc, "claim", where) from exc
        # No fsync of claims/ here: see "Durability" in carerix_smtp/spool/journal.py.
        return self.from_path(
            kind, candidate.name, CLAIM_DIRS[kind], claimed_name, f"{kind}/{claimed_name}"
        )

    def from_path(self, kind: Kind, name: str, where: str, leaf: str, key: str) -> Claim:
        """The Claim for a file already in claims/ (or ``leaf`` in directory ``where``)."""
        layout = self._layout
        try:  # once per message: the path of the error message only when needed
            st = os.stat(leaf, dir_fd=layout.fd(where), follow_symlinks=False)
        except OSError as exc:
            raise StorageError.from_os_error(exc, "stat", layout.where(where, leaf)) from exc
        state = self._read_sidecar(name) if kind == "deferred" else None
        return Claim(
            kind,
            name,
            child(self._layout.dir(where), leaf),
            key,
            st.st_size,
            st.st_mtime,
            file_type(st.st_mode),
            state,
            st.st_dev,
            st.st_ino,
            where,
            leaf,
        )

    def rewrite_head(self, claim: Claim, head: bytes, body_start: int) -> None:
        """Replace the claimed file's header block (bytes before ``body_start``) with
        ``head``; the body is copied as is, the mtime kept.  Temp file + rename: a
        crash leaves the old or the new file, and a dot-file that recovery removes."""
        layout, where, leaf = self._layout, claim.where, claim.leaf
        tmp = f".{leaf}.tmp"
        dir_fd = layout.fd(where)
        src = layout.open_file(where, leaf, os.O_RDONLY)
        try:
            dst = layout.open_file(where, tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except BaseException:
            os.close(src)
            raise
        try:
            with storage("rewrite the header of", claim.path):
                try:
                    st = os.fstat(src)
                    write_all(dst, head)
                    os.lseek(src, body_start, os.SEEK_SET)
                    while chunk := os.read(src, 1 << 20):
                        write_all(dst, chunk)
                    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
                    if layout.durable:
                        os.fsync(dst)
                finally:
                    os.close(src)
                    os.close(dst)
                os.replace(tmp, leaf, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            layout.remove(where, tmp)
            raise
        # A new file (inode) under the claim's name: the claim rename must be on disk
        # before it, or a power failure could leave both the old file in the queue
        # and the new one in claims/ (claim() does not fsync; this is the rare case).
        layout.fsync_dir(where)
        st = layout.lstat(where, leaf) or st
        claim.size, claim.dev, claim.ino = st.st_size, st.st_dev, st.st_ino

    def requeue(self, claim: Claim) -> Path:
        """Put a claim back where it came from, unchanged."""
        layout = self._layout
        if claim.kind == "deferred":
            rel = "deferred"
            target = variant(claim.name) if layout.exists(rel, claim.name) else claim.name
            layout.rename(claim.where, claim.leaf, rel, target)
        else:
            rel = TOP
            here = layout.lstat(claim.where, claim.leaf)
            if same_file(layout.lstat(rel, claim.name), here):
                layout.remove(claim.where, claim.leaf)  # a crash between link and unlink
                target = claim.name
            else:
                target = layout.move_noreplace(claim.where, claim.leaf, rel, claim.name)
        layout.fsync_dir(rel)
        return layout.dir(rel) / target

    def _read_sidecar(self, name: str) -> MessageState | None:
        return read_sidecar(self._layout, "deferred", name + RECORD_SUFFIX)
