"""The queue as an administrator sees it (``cxsmtp queue list``/``show``, Postfix's
``mailq`` and ``postcat -q``): one entry per message with its envelope, read from
the header block only.

States and where they are: ``queued`` (SPOOL/NAME.eml), ``deferred``
(deferred/NAME.eml, its mtime the next attempt, its sidecar NAME.eml.json the
attempts and last replies), ``held`` (held/NAME.eml: ``send`` never takes from
there; a sidecar beside it when it was held from deferred/), ``failed``
(failed/NAME.eml + record) and ``sent`` (sent/NAME.eml; never listed, shown by
``show``).  A queue ID is the file name without ``.eml``.

Speed (issue 13: 100,000 queued messages listed in <= 2 s): one ``scandir`` per
directory keeps (mtime, name, size) rows; then, in sending order, each file's
first bytes are read and only the envelope fields are parsed (envelope_scan.py).
Entries are yielded one at a time: the caller prints as it goes, nothing per
message is kept beyond the row.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from carerix_smtp.errors import InputError, MessageError, StorageError, UsageError
from carerix_smtp.spool.envelope_scan import HEAD_READ, read_envelope
from carerix_smtp.spool.headers import head_end
from carerix_smtp.spool.layout import RECORD_SUFFIX, STATE_DIR, SUFFIX, TOP, SpoolLayout
from carerix_smtp.spool.records import MessageState, RecipientResult, iso, read_record

HELD = "held"
# state -> directory; in the order ``list`` shows them
STATE_DIRS: dict[str, str] = {"queued": TOP, "deferred": "deferred", HELD: HELD, "failed": "failed"}
STATES = (*STATE_DIRS, "sent")
# --state values: "pending" (default) is what mailq shows, "all" adds failed/
STATE_CHOICES: dict[str, tuple[str, ...]] = {
    "pending": ("queued", "deferred", HELD),
    "all": ("queued", "deferred", HELD, "failed"),
    **{state: (state,) for state in STATE_DIRS},
}
_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK

_Row = tuple[float, str, int]  # (mtime, name, size)


@dataclass(slots=True)
class QueueEntry:
    """One message as ``queue list`` shows it.  ``recipients`` are the pending ones
    (for a deferred message: those still to be tried)."""

    id: str
    state: str
    size: int
    queued_at: float
    sender: str | None
    recipients: list[str]
    next_retry: float | None = None  # deferred: the file's mtime
    attempts: int = 0
    last_reply: str | None = None
    problem: str | None = None  # the file cannot be parsed: why

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "size": self.size,
            "queued_at": iso(self.queued_at),
            "sender": self.sender,
            "recipients": self.recipients,
            "next_retry": iso(self.next_retry),
            "attempts": self.attempts,
            "last_reply": self.last_reply,
            "problem": self.problem,
        }


@dataclass
class QueueTotals:
    count: int = 0
    bytes: int = 0
    by_state: dict[str, int] = field(default_factory=dict)

    def add(self, entry: QueueEntry) -> None:
        self.count += 1
        self.bytes += entry.size
        self.by_state[entry.state] = self.by_state.get(entry.state, 0) + 1

    def to_json(self) -> dict[str, Any]:
        return {"messages": self.count, "bytes": self.bytes, "by_state": self.by_state}


def states_for(choice: str) -> tuple[str, ...]:
    """The states a ``--state`` value lists; UsageError (64) for an unknown one."""
    try:
        return STATE_CHOICES[choice]
    except KeyError:
        known = ", ".join(STATE_CHOICES)
        raise UsageError(f"unknown state {choice!r}; accepted: {known}") from None


def message_id_of(raw: str) -> str:
    """A queue ID from what the user typed: ``ID``, ``ID.eml`` or a path to it."""
    name = os.path.basename(raw.rstrip("/"))
    if name.endswith(RECORD_SUFFIX):
        name = name[: -len(RECORD_SUFFIX)]
    if not name or name.startswith(".") or name in (".", ".."):
        raise UsageError(f"{raw!r} is not a queue ID (the file name without .eml)")
    return name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name


def rows(layout: SpoolLayout, rel: str) -> list[_Row]:
    """(mtime, name, size) of every regular ``*.eml`` file of ``rel`` (one scandir),
    oldest first."""
    found: list[_Row] = []
    for entry in layout.scandir(rel):
        name = entry.name
        if not name.endswith(SUFFIX) or name.startswith("."):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        found.append((st.st_mtime, name, st.st_size))
    found.sort()
    return found


def list_queue(layout: SpoolLayout, states: tuple[str, ...]) -> Iterator[QueueEntry]:
    """The messages in ``states``, state by state (queued, deferred, held, failed),
    each in sending order (oldest first; deferred: next attempt first)."""
    layout.check(writable=False)
    for state in states:
        rel = STATE_DIRS[state]
        listed = rows(layout, rel)
        if not listed:
            continue
        dir_fd, directory = layout.fd(rel), layout.dir(rel)
        if state != "queued":
            for mtime, name, size in listed:
                entry = entry_for(layout, state, dir_fd, name, mtime, size)
                if entry is not None:
                    yield entry
            continue
        for mtime, name, size in listed:  # the bulk of a big queue: no record to read
            try:
                sender, recipients = read_envelope(dir_fd, name, directory)
            except FileNotFoundError:
                continue  # sent meanwhile
            except MessageError as exc:
                yield QueueEntry(name[:-4], state, size, mtime, None, [], problem=str(exc))
                continue
            yield QueueEntry(name[:-4], state, size, mtime, sender, recipients)


def entry_for(
    layout: SpoolLayout, state: str, dir_fd: int, name: str, mtime: float, size: int
) -> QueueEntry | None:
    """The entry of one file; None when it went away meanwhile."""
    record = _sidecar(dir_fd, name) if state != "queued" else None
    entry = QueueEntry(name[: -len(SUFFIX)], state, size, mtime, None, [])
    if state == "deferred":
        entry.next_retry = mtime
    if record is not None:
        _from_record(entry, record)
        if entry.sender is not None and entry.recipients:
            return entry
    try:
        sender, recipients = read_envelope(dir_fd, name, layout.dir(STATE_DIRS.get(state, state)))
    except FileNotFoundError:
        return None
    except MessageError as exc:
        entry.problem = str(exc)
        return entry
    if entry.sender is None:
        entry.sender = sender
    if not entry.recipients and state != "sent":  # sent: nobody is pending
        entry.recipients = recipients
    return entry


def _from_record(entry: QueueEntry, record: MessageState) -> None:
    entry.sender = record.mail_from
    entry.attempts = record.attempts
    if record.queued_at:
        entry.queued_at = record.queued_at
    if entry.state == "failed":
        entry.recipients = list(record.failed) or list(record.pending)
    else:
        entry.recipients = list(record.pending)
    entry.last_reply = last_reply(record)


def last_reply(record: MessageState) -> str | None:
    """The newest reply a record holds (MAIL FROM's, a pending or a refused
    recipient's), or its reason; None when it holds none."""
    results: list[tuple[float, str, RecipientResult]] = []
    if record.reply is not None:
        results.append((record.reply.time, "MAIL FROM", record.reply))
    for rcpt, result in (*record.pending.items(), *record.failed.items()):
        if result is not None:
            results.append((result.time, rcpt, result))
    if results:
        _, who, result = max(results, key=lambda item: item[0])
        return f"{who}: {result.describe()}"
    return record.reason or None


def _sidecar(dir_fd: int, name: str) -> MessageState | None:
    try:
        fd = os.open(name + RECORD_SUFFIX, _OPEN, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        data = _read_all(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        return MessageState.from_json(json.loads(data))
    except (ValueError, TypeError):
        return None


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


# --- one message: ``queue show`` ----------------------------------------------------


@dataclass
class MessageDetail:
    """Everything known about one message (``queue show``)."""

    id: str
    state: str
    path: str
    size: int
    mtime: float
    head: bytes
    entry: QueueEntry | None
    record: MessageState | None
    log: list[dict[str, Any]]

    def to_json(self, body: bytes | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "state": self.state,
            "path": self.path,
            "size": self.size,
            "mtime": iso(self.mtime),
            "envelope": self.entry.to_json() if self.entry else None,
            "headers": self.head.decode("utf-8", "replace"),
            "record": self.record.to_json() if self.record else None,
            "log": self.log,
        }
        if body is not None:
            data["message"] = body.decode("utf-8", "replace")
        return data


def locate(layout: SpoolLayout, queue_id: str) -> tuple[str, str]:
    """(state, file name) of queue ID ``queue_id``; InputError (66) when no state
    directory holds it."""
    name = message_id_of(queue_id) + SUFFIX
    for state in STATES:
        try:
            if layout.lstat(STATE_DIRS.get(state, state), name) is not None:
                return state, name
        except StorageError as exc:  # held/ (or another) does not exist yet
            if exc.errno != errno.ENOENT:
                raise
    raise InputError(
        f"spool {layout.path}: no message {message_id_of(queue_id)!r} "
        "(not queued, deferred, held, failed or sent; see cxsmtp queue list --state all)"
    )


def show(layout: SpoolLayout, queue_id: str, *, log_lines: int = 200) -> MessageDetail:
    """The message ``queue_id``: its envelope, header block, record and the delivery
    log's lines about it (the newest ``log_lines``)."""
    layout.check(writable=False)
    state, name = locate(layout, queue_id)
    rel = STATE_DIRS.get(state, state)
    st = layout.lstat(rel, name)
    if st is None:
        raise InputError(f"spool {layout.path}: message {queue_id!r} went away meanwhile")
    entry = entry_for(layout, state, layout.fd(rel), name, st.st_mtime, st.st_size)
    record = read_record(layout, rel, name) if state != "queued" else None
    head = read_head(layout, rel, name)
    return MessageDetail(
        id=name[: -len(SUFFIX)],
        state=state,
        path=layout.where(rel, name),
        size=st.st_size,
        mtime=st.st_mtime,
        head=head,
        entry=entry,
        record=record,
        log=delivery_log_lines(layout, name, log_lines),
    )


def read_head(layout: SpoolLayout, rel: str, name: str) -> bytes:
    """The header block of ``name`` (at most 1 MB of it)."""
    fd = layout.open_file(rel, name, os.O_RDONLY)
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(HEAD_READ)
        while head_end(data) is None and len(data) < (1 << 20):
            more = handle.read(65536)
            if not more:
                break
            data += more
    end = head_end(data)
    return data if end is None else data[:end]


def read_body(layout: SpoolLayout, rel: str, name: str) -> bytes:
    """The whole file (``queue show --body``)."""
    fd = layout.open_file(rel, name, os.O_RDONLY)
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def delivery_log_lines(layout: SpoolLayout, name: str, keep: int) -> list[dict[str, Any]]:
    """The delivery log's lines (delivery.log.1, then delivery.log) about ``name``,
    the newest ``keep``."""
    needle = json.dumps(name).encode()
    found: list[dict[str, Any]] = []
    for log_name in ("delivery.log.1", "delivery.log"):
        try:
            fd = layout.open_file(STATE_DIR, log_name, os.O_RDONLY)
        except StorageError:  # no log yet (or unreadable): nothing to show
            continue
        with os.fdopen(fd, "rb") as handle:
            for line in handle:
                if needle not in line:
                    continue
                try:
                    data = json.loads(line)
                except ValueError:
                    continue
                if isinstance(data, dict) and data.get("file") == name:
                    found.append(data)
                    del found[:-keep]
    return found
