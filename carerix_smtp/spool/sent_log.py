"""The records of sent messages: one JSON line each, appended to the day file
``sent/records-YYYY-MM-DD.jsonl`` (issue 12: a file per sent message cost 0.2 ms
to create and 0.14 ms to fsync, more than sending it).  Failed and deferred
messages keep ``NAME.eml.json`` beside them (few, and ``retry`` reads them).

The line is written after the outcome's journal line, which says where it goes
(``at``: day file and offset), and is not synced: the journal covers it until
the next checkpoint fsyncs the day file (see "Durability" in
``carerix_smtp/spool/journal.py``).  Recovery puts a line back only when it is
not at its offset, so a redo does not write it twice; readers keep the newest
line per name anyway (``records.read_records``)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Callable
from typing import Any

from carerix_smtp.errors import StorageError
from carerix_smtp.spool.layout import (
    RECORD_SUFFIX,
    SpoolLayout,
    end_torn_line,
    storage,
    write_all,
)
from carerix_smtp.spool.records import day_file, is_day_file, read_bytes

# A journal line's "at": [day file, offset]
Position = tuple[str, int]


class SentLog:
    """Appends sent messages' records to the day file (call with the shared lock
    held: one writer at a time, so the offset of the next line is known)."""

    def __init__(self, layout: SpoolLayout, clock: Callable[[], float]) -> None:
        self._layout = layout
        self._clock = clock
        self._fd: int | None = None
        self._day = ""
        self._size = 0

    def position(self, day: str | None = None) -> Position:
        """Where the next record goes: the end of ``day`` (default: today's day file;
        it is created by the first ``append``, not here)."""
        day = day or day_file(self._clock())
        if day != self._day:
            self._open(day, create=False)
        return self._day, self._size

    def append(self, record: bytes, day: str | None = None) -> Position:
        """Append ``record`` (one line, no newline) where ``position(day)`` says: the
        outcome passes the day its journal line names (a run may cross midnight
        between the two)."""
        at = self.position(day)
        if self._fd is None:
            self._open(self._day, create=True)
        line = record + b"\n"
        assert self._fd is not None
        try:  # once per message: the path of the error message only when needed
            write_all(self._fd, line)
        except OSError as exc:
            where = self._layout.where("sent", self._day)
            raise StorageError.from_os_error(exc, "append to", where) from exc
        self._size += len(line)
        return at

    def restore(self, name: str, state: dict[str, Any], record: bytes, at: Any) -> str:
        """Recovery: make sure sent/``name`` has its record, without a second line;
        returns the file in sent/ that holds it (for the checkpoint to fsync).

        ``at`` is the journal line's (None from a version that wrote
        ``NAME.eml.json``): the record is there when the line at that offset, or
        that file, holds this state; else it is appended (today's day file)."""
        if _valid(at) and self._holds(at, state):
            return str(at[0])
        if at is None and _same(self._read_legacy(name), state):
            return name + RECORD_SUFFIX
        return self.append(record)[0]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._day = ""

    def _open(self, day: str, *, create: bool) -> None:
        """Open ``day`` for appending (missing and not ``create``: none, size 0); a
        torn last line (a crash mid-write) is ended first, so that it cannot
        swallow the next one."""
        self.close()
        flags = os.O_RDWR | os.O_APPEND | (os.O_CREAT if create else 0)
        try:
            fd = self._layout.open_file("sent", day, flags, 0o644)
        except StorageError as exc:
            if exc.errno != errno.ENOENT or create:
                raise
            self._day, self._size = day, 0
            return
        try:
            with storage("append to", self._layout.where("sent", day)):
                size = end_torn_line(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._day, self._size = fd, day, size

    def _holds(self, at: Position, state: dict[str, Any]) -> bool:
        day, offset = at
        try:
            fd = self._layout.open_file("sent", day, os.O_RDONLY)
        except StorageError:
            return False
        with os.fdopen(fd, "rb") as handle:
            handle.seek(offset)
            line = handle.readline()
        return _same(line, state)

    def _read_legacy(self, name: str) -> bytes | None:
        try:
            return read_bytes(self._layout, "sent", name + RECORD_SUFFIX)
        except OSError:
            return None


def _valid(at: Any) -> bool:
    return (
        isinstance(at, list | tuple)
        and len(at) == 2
        and isinstance(at[0], str)
        and is_day_file(at[0])
        and isinstance(at[1], int)
        and at[1] >= 0
    )


def _same(data: bytes | None, state: dict[str, Any]) -> bool:
    if not data:
        return False
    with contextlib.suppress(ValueError):
        return bool(json.loads(data) == state)
    return False
