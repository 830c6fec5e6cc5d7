"""What the spool writes about messages: the state of one message (MessageState,
RecipientResult; a record is one as JSON), the retry backoff, time and JSON
helpers, reading records back, and the delivery log (one JSON line per attempt
in ``.cxsmtp/delivery.log``).

Where records are: a failed or deferred message's beside it (``NAME.eml.json``);
a sent message's is one line of ``sent/records-YYYY-MM-DD.jsonl`` (the UTC day it
was written; issue 12: one file per message cost more than the sending).  Runs
of earlier versions left ``sent/NAME.eml.json``: still read, never rewritten."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from carerix_smtp.spool.layout import (
    RECORD_SUFFIX,
    STATE_DIR,
    SUFFIX,
    Destination,
    SpoolLayout,
    end_torn_line,
    storage,
    write_all,
)

log = logging.getLogger(__name__)

DELIVERY_LOG_MAX = 64 * 1024 * 1024  # rotated once to delivery.log.1 beyond this


# --- time and JSON helpers ---------------------------------------------------


# Seconds already formatted.  A record holds the file's queue time (its mtime, an
# earlier second) beside this second's attempt times, so a single-entry cache
# missed twice per message; a dict holds both (cleared when it grows: a thread
# racing the clearing only formats a time again).
_ISO_CACHE: dict[int, str] = {}
_ISO_CACHE_MAX = 4096


def iso(ts: float | None) -> str | None:
    """Epoch seconds -> ``2024-05-01T12:00:00+00:00`` (records are for people too)."""
    if ts is None:
        return None
    second = int(ts) if ts >= 0 else math.floor(ts)  # int(): cheaper, same for ts >= 0
    text = _ISO_CACHE.get(second)
    if text is None:
        text = datetime.fromtimestamp(second, timezone.utc).isoformat(timespec="seconds")
        if len(_ISO_CACHE) >= _ISO_CACHE_MAX:
            _ISO_CACHE.clear()
        _ISO_CACHE[second] = text
    return text


def from_iso(text: Any) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


# What json.dumps(value, ensure_ascii=False, separators=(",", ":")) uses, built once:
# json.dumps builds a new encoder per call when given options (a few records a message).
_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_COMPACT_ASCII = json.JSONEncoder(separators=(",", ":"))


def _reused(encoder: json.JSONEncoder) -> Callable[[Any], str]:
    """``encoder.encode`` for a record (a dict), its C encoder made once: JSONEncoder
    makes a new one per call (a few records a message).  Records hold no cycles, so
    the C encoder is made without the circular-reference check."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator: the encoder as it is
        return encoder.encode
    strings = (
        json.encoder.encode_basestring_ascii
        if encoder.ensure_ascii
        else (json.encoder.encode_basestring)
    )
    one_shot = make(
        None, encoder.default, strings, None, encoder.key_separator, encoder.item_separator,
        encoder.sort_keys, encoder.skipkeys, encoder.allow_nan,
    )  # fmt: skip

    def encode(value: Any) -> str:
        if type(value) is not dict:
            return encoder.encode(value)
        return "".join(one_shot(value, 0))

    return encode


_ENCODE = _reused(_COMPACT)
_ENCODE_ASCII = _reused(_COMPACT_ASCII)


def dumps(value: Any) -> bytes:
    """Compact JSON as UTF-8; ASCII escapes when a str holds a lone surrogate
    (undecodable header bytes), so that every line reads back."""
    try:
        return _ENCODE(value).encode("utf-8")
    except UnicodeEncodeError:
        return _ENCODE_ASCII(value).encode("ascii")


def json_text(value: Any) -> str:
    """Compact JSON text, non-ASCII kept (what ``dumps`` encodes)."""
    if type(value) is str and value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'  # nothing to escape (names, keys: a few per message)
    return _ENCODE(value)


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
    # The reply to the message as a whole: MAIL FROM refused (4xx/5xx), not any recipient's
    reply: RecipientResult | None = None

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
            "reply": self.reply.to_json() if self.reply else None,
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
            reply=RecipientResult.from_json(data.get("reply")),
        )


def backoff(attempts: int, initial: float, maximum: float) -> float:
    """Seconds until the next attempt: ``initial`` doubling per attempt, capped.

    Postfix: minimal_backoff_time 300 s doubling to maximal_backoff_time 4000 s.
    """
    if attempts <= 0:
        return 0.0
    return float(min(maximum, initial * (2 ** min(attempts - 1, 30))))


# --- reading records back ----------------------------------------------------


def read_records(layout: SpoolLayout, rel: str) -> Iterable[MessageState]:
    """The records in directory ``rel`` (unreadable ones skipped); for sent/, those
    of the messages in it, from the day files and from earlier versions'
    ``NAME.eml.json`` files (one directory listing)."""
    if rel == "sent":
        yield from _read_sent(layout)
        return
    for entry in layout.scandir(rel):
        if not entry.name.endswith(SUFFIX + RECORD_SUFFIX) or entry.name.startswith("."):
            continue
        try:
            yield MessageState.from_json(json.loads(read_bytes(layout, rel, entry.name)))
        except (OSError, ValueError, TypeError):
            continue


def read_record(layout: SpoolLayout, rel: str, name: str) -> MessageState | None:
    """The record of message ``name`` in ``rel`` (sent, failed or deferred); None
    when there is none or it cannot be read."""
    if rel == "sent":
        days = sorted(e.name for e in layout.scandir(rel) if is_day_file(e.name))
        found: MessageState | None = None
        for day in days:  # the newest line wins (a name may be used again)
            for _, line in day_lines(layout, day):
                if line_record_name(line) == name:
                    found = _parse(line) or found
        if found is not None:
            return found
    try:
        return MessageState.from_json(json.loads(read_bytes(layout, rel, name + RECORD_SUFFIX)))
    except (OSError, ValueError, TypeError):
        return None


# --- the day files of sent/ ------------------------------------------------------

DAY_FILE = re.compile(r"records-\d{4}-\d{2}-\d{2}\.jsonl")
_NAME_PREFIX = re.compile(rb'\{"name":"([^"\\]*)"')  # dumps() puts "name" first


_last_day: tuple[int, str] = (-1, "")  # a run rarely crosses midnight: one strftime


def day_file(ts: float) -> str:
    """``records-YYYY-MM-DD.jsonl``: the day file a record written at ``ts`` goes to
    (UTC day; not ending in .eml, so never taken for a message)."""
    global _last_day
    number = int(ts // 86400)  # UTC days since the epoch (POSIX time: no leap seconds)
    last = _last_day
    if last[0] == number:
        return last[1]
    day = datetime.fromtimestamp(number * 86400, timezone.utc)
    text = day.strftime("records-%Y-%m-%d.jsonl")
    _last_day = (number, text)
    return text


def is_day_file(name: str) -> bool:
    return DAY_FILE.fullmatch(name) is not None


def day_lines(layout: SpoolLayout, day: str) -> Iterator[tuple[int, bytes]]:
    """(offset, line) of every line of sent/``day``, streamed; none when it is gone."""
    try:
        fd = os.open(day, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=layout.fd("sent"))
    except OSError:
        return
    with os.fdopen(fd, "rb") as handle:
        offset = 0
        for line in handle:
            yield offset, line
            offset += len(line)


def line_record_name(line: bytes) -> str | None:
    """The message name of a day-file line, cheaply (a full parse when it is
    escaped); None for a torn or foreign line."""
    match = _NAME_PREFIX.match(line)
    if match is not None:
        return match.group(1).decode("utf-8", "surrogateescape")
    state = _parse(line)
    return state.name if state is not None else None


def _parse(line: bytes) -> MessageState | None:
    try:
        return MessageState.from_json(json.loads(line))
    except (ValueError, TypeError):
        return None


def _read_sent(layout: SpoolLayout) -> Iterator[MessageState]:
    """The records of the messages in sent/: the newest day-file line of each name,
    else its ``NAME.eml.json`` (earlier versions).  Two passes over the day files
    (the first only finds where each name's newest line is) keep memory at one
    entry per message, not one record."""
    present: set[str] = set()
    legacy: list[str] = []
    days: list[str] = []
    for entry in layout.scandir("sent"):
        name = entry.name
        if name.startswith("."):
            continue
        if name.endswith(SUFFIX):
            present.add(name)
        elif name.endswith(SUFFIX + RECORD_SUFFIX):
            legacy.append(name)
        elif is_day_file(name):
            days.append(name)
    days.sort()
    newest: dict[str, tuple[int, int]] = {}
    for index, day in enumerate(days):
        for offset, line in day_lines(layout, day):
            owner = line_record_name(line)
            if owner is not None and owner in present:
                newest[owner] = (index, offset)
    wanted = set(newest.values())
    for index, day in enumerate(days):
        for offset, line in day_lines(layout, day):
            state = _parse(line) if (index, offset) in wanted else None
            if state is not None:
                yield state
    for record in sorted(legacy):
        if record[: -len(RECORD_SUFFIX)] in newest:
            continue
        try:
            yield MessageState.from_json(json.loads(read_bytes(layout, "sent", record)))
        except (OSError, ValueError, TypeError):
            continue


def read_bytes(layout: SpoolLayout, rel: str, name: str) -> bytes:
    """The content of ``name`` in ``rel`` (never through a symlink: OSError ELOOP)."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=layout.fd(rel))
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def read_sidecar(layout: SpoolLayout, rel: str, name: str) -> MessageState | None:
    """A deferred message's sidecar (``deferred/NAME.eml.json``); None when there is
    none or it cannot be read (logged)."""
    try:
        return MessageState.from_json(json.loads(read_bytes(layout, rel, name)))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        path = layout.where(rel, name)
        log.warning("%s: unreadable state record (%s); treating as a new message", path, exc)
        return None


# --- delivery log --------------------------------------------------------------


class DeliveryLog:
    """``.cxsmtp/delivery.log``: one JSON line per attempt (who got it, who not, why)."""

    NAME = "delivery.log"

    def __init__(
        self, layout: SpoolLayout, clock: Callable[[], float], book: threading.Lock
    ) -> None:
        self._layout = layout
        self.path = layout.delivery_log_path
        self._clock = clock
        self._book = book  # shared with the journal and the claim tokens
        self._fd: int | None = None
        self._size = 0

    def write(self, entry: dict[str, Any]) -> None:
        """One JSON line per attempt in .cxsmtp/delivery.log (not fsynced: a log).

        The file stays open until ``finish`` or the end of the lock; beyond
        DELIVERY_LOG_MAX bytes it is rotated once, to delivery.log.1.  A failed
        write is a StorageError: the run stops rather than lose the "who did not
        get it, and why".
        """
        line = {"time": iso(self._clock()), **entry}
        # a lone surrogate becomes \udcxx: still JSON
        data = (json_text(line) + "\n").encode("utf-8", "backslashreplace")
        with self._book:
            if self._fd is None or self._size > DELIVERY_LOG_MAX:
                self._open()
            assert self._fd is not None
            with storage("write", self.path):
                write_all(self._fd, data)
            self._size += len(data)

    def _open(self) -> None:
        self.close()
        layout = self._layout
        size = layout.lstat(STATE_DIR, self.NAME)
        if size is not None and size.st_size > DELIVERY_LOG_MAX:
            layout.rename(STATE_DIR, self.NAME, STATE_DIR, self.NAME + ".1")
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT
        self._fd = layout.open_file(STATE_DIR, self.NAME, flags, 0o600)
        with storage("write", self.path):  # a line torn by a kill: doctor/history.py skips it
            self._size = end_torn_line(self._fd)

    def close(self) -> None:
        """Close the file (call with the shared lock held)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
