"""What ``cxsmtp status`` saw of a big spool, kept for the next ``status`` (issue 12:
100,000 queued in 0.5 s).  Listing a directory is cheap; the ``lstat`` of every
entry that the sizes, the oldest message and the sending order need costs four times
the listing, and a big queue that waits (a provider incident, a held queue, a
backlog between two cron runs) is asked about again and again without changing.

A directory's columns (the names, mtimes, sizes and modes of its ``*.eml`` entries
and the names of its records) are reused only while the directory itself is
unchanged: the same device, inode, mtime and ctime as when it was listed.  Every
change of a name in it (a file added, removed or renamed in or out) changes its
mtime and ctime; a file changed in place does not, and in a spool nothing changes a
file in place except cxsmtp setting a deferred message's next-attempt time (retry,
``queue flush``), which then touches the directory (``SpoolLayout.set_due``).  Producers write
a file under another name and rename it (README), so a file is complete before its
name appears.  A directory whose ctime is less than ``RACY_NS`` before the listing
began is not kept: a change in the same clock tick would leave its times as they
were (as git's "racily clean" index entries).

The cache is the caller's file (per user, in the state directory: ``status`` never
writes in the spool); only spools of at least ``MIN_ENTRIES`` entries get one.  A
file that cannot be read, parsed or checked (crc32) is ignored, one that cannot be
written is skipped: the listing is the truth, the cache only saves ``lstat`` calls.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import zlib
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

from carerix_smtp.errors import StorageError
from carerix_smtp.spool.layout import SpoolLayout

MAGIC = b"cxsmtp-status-cache 1\n"
RACY_NS = 2_000_000_000  # a directory changed this recently is not kept
MIN_ENTRIES = 5_000  # smaller spools are listed every time: no file for them

# names, mtimes, sizes, modes of the *.eml entries; names of the records seen
Columns = tuple[list[str], list[float], list[int], list[int]]
Lister = Callable[[list[str] | None], Columns]


def _identity(layout: SpoolLayout, rel: str) -> list[int] | None:
    """(device, inode, mtime, ctime in ns) of directory ``rel``; None when missing."""
    try:
        st = os.fstat(layout.fd(rel))
    except (OSError, StorageError):  # missing, or not openable: listed as before
        return None
    return [st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]


class StatusCache:
    """The columns of each directory of one spool, reused while it is unchanged."""

    def __init__(
        self, path: Path, layout: SpoolLayout, *, clock_ns: Callable[[], int] = time.time_ns
    ):
        self.path = path
        self._layout = layout
        self._clock_ns = clock_ns
        self._old: dict[str, tuple[dict[str, Any], memoryview]] = {}
        self._new: dict[str, tuple[list[int] | None, Columns, list[str] | None]] = {}
        self._listed = False  # a directory was listed this pass: the file is out of date
        self._load()

    def _load(self) -> None:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            data = self.path.read_bytes()
            if not data.startswith(MAGIC):
                return
            end = data.index(b"\n", len(MAGIC))
            head = json.loads(data[len(MAGIC) : end])
            body = memoryview(data)[end + 1 :]
            if zlib.crc32(body) != head["crc32"] or head["spool"] != str(self._layout.path):
                return
            offset = 0
            for rel, meta in head["dirs"].items():
                length = sum(meta["lengths"])
                self._old[rel] = (meta, body[offset : offset + length])
                offset += length

    def columns(self, rel: str, records: list[str] | None, lister: Lister) -> Columns:
        """The columns of ``rel``: from the file when the directory is unchanged since
        it was listed, else from ``lister`` (``records`` gets the records' names)."""
        identity = _identity(self._layout, rel)
        started = self._clock_ns()
        kept = self._old.get(rel)
        if kept is not None and identity is not None and kept[0]["identity"] == identity:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                columns, names = _decode(kept[0], kept[1])
                if records is not None:
                    records += names
                self._new[rel] = (identity, columns, names)
                return columns
        columns = lister(records)
        self._listed = True
        racy = identity is None or started - identity[3] < RACY_NS
        self._new[rel] = (None if racy else identity, columns, records)
        return columns

    def save(self) -> None:
        """Write what this pass saw (atomically) when the spool is big enough; remove
        the file when it is not; nothing when every directory came from the file
        as it is.  Errors are ignored: the cache is only a cache."""
        if not self._listed and self._new.keys() == self._old.keys():
            return
        total = sum(len(columns[0]) for _, columns, _ in self._new.values())
        with contextlib.suppress(OSError):
            if total < MIN_ENTRIES:
                if self._old:
                    self.path.unlink(missing_ok=True)
                return
            dirs: dict[str, Any] = {}
            parts: list[bytes] = []
            for rel, (identity, columns, records) in self._new.items():
                if identity is None:
                    continue
                blobs = _encode(columns, records or [])
                dirs[rel] = {"identity": identity, "count": len(columns[0])}
                dirs[rel]["lengths"] = [len(blob) for blob in blobs]
                parts += blobs
            body = b"".join(parts)
            head = {"spool": str(self._layout.path), "crc32": zlib.crc32(body), "dirs": dirs}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            try:
                flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
                with open(os.open(tmp, flags, 0o600), "wb") as handle:
                    handle.write(MAGIC + json.dumps(head).encode() + b"\n" + body)
                os.replace(tmp, self.path)
            finally:
                tmp.unlink(missing_ok=True)


def _encode(columns: Columns, records: list[str]) -> list[bytes]:
    names, mtimes, sizes, modes = columns
    return [
        "\0".join(names).encode("utf-8", "surrogateescape"),
        array("d", mtimes).tobytes(),
        array("q", sizes).tobytes(),
        array("Q", modes).tobytes(),
        "\0".join(records).encode("utf-8", "surrogateescape"),
    ]


def _decode(meta: dict[str, Any], body: memoryview) -> tuple[Columns, list[str]]:
    count: int = meta["count"]
    blobs: list[memoryview] = []
    offset = 0
    for length in meta["lengths"]:
        blobs.append(body[offset : offset + length])
        offset += length
    text = bytes(blobs[0]).decode("utf-8", "surrogateescape")
    names = text.split("\0") if count else []
    mtimes, sizes, modes = array("d"), array("q"), array("Q")
    mtimes.frombytes(blobs[1])
    sizes.frombytes(blobs[2])
    modes.frombytes(blobs[3])
    if not len(names) == len(mtimes) == len(sizes) == len(modes) == count:
        raise ValueError("status cache: columns of different lengths")
    records_text = bytes(blobs[4]).decode("utf-8", "surrogateescape")
    records = records_text.split("\0") if records_text else []
    return (names, mtimes.tolist(), sizes.tolist(), modes.tolist()), records
