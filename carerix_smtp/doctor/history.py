"""Accepted sends read back from a spool's delivery log, to rebuild the rate ledger.

``SPOOL/.cxsmtp/delivery.log`` (and ``delivery.log.1``, its one rotation) has one
JSON line per attempt (:func:`carerix_smtp.send.outcome.delivery_log`)::

    {"time": "2024-05-01T12:00:07+00:00", "file": "m1.eml", "server": "xs4all",
     "accepted": {"a@x": "250 ok"}, "refused": {}, "deferred": {}, "outcome": "sent",
     "moved_to": "sent/m1.eml", "possible_duplicate": true}

The ledger counts an attempt as ONE send when the server accepted the data for at
least one recipient, or when the connection was lost after the final "." (possibly
delivered, RFC 1047) -- ``send/delivery.py`` confirms the batch slot in exactly
those cases, whatever the number of recipients.  So does this reader: a line with a
non-empty ``accepted`` or ``possible_duplicate: true``.  Lines without a server
(recovery's "requeued", unusable files) never reached a server's limits.

The log's times are whole seconds, taken just before the ledger's stamp; a
restored send is stamped one second later, so it never counts for a shorter
time than the original did (later only makes a window stricter).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from carerix_smtp.limits.repair import SendEvent
from carerix_smtp.spool.layout import SpoolLayout
from carerix_smtp.spool.records import from_iso

# the log has whole seconds: see the module docstring
STAMP_MARGIN = 1.0


@dataclass
class SpoolHistory:
    """The sends found in one spool's delivery log since a given time."""

    spool: Path
    sends: list[SendEvent] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)  # the logs read
    skipped: int = 0  # lines that are not JSON objects (a torn last line)
    unreadable: list[str] = field(default_factory=list)  # "path: reason"


def is_counted(entry: dict[str, Any]) -> bool:
    """Did this attempt take a slot of the server's limits?  (See the module docstring.)"""
    if not isinstance(entry.get("server"), str) or not entry["server"]:
        return False
    accepted = entry.get("accepted")
    return bool(isinstance(accepted, dict) and accepted) or entry.get("possible_duplicate") is True


def _open_log(path: Path) -> BinaryIO:
    """A log opened without following a symlink (the spool's other writers could
    otherwise feed it any file)."""
    return os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb")


def _size(spool: Path, moved_to: Any) -> int:
    """The message's size: its file where the log says it went (0 when it has moved on)."""
    if not isinstance(moved_to, str) or ".." in Path(moved_to).parts:
        return 0
    try:
        return os.lstat(spool / moved_to).st_size
    except OSError:
        return 0


def read_history(spool: Path, since: float) -> SpoolHistory:
    """Every counted send logged in ``spool`` at or after ``since``, oldest log first."""
    layout = SpoolLayout(Path(spool), durable=False, clock=lambda: 0.0)
    current = layout.delivery_log_path
    history = SpoolHistory(layout.path)
    for path in (current.with_suffix(".log.1"), current):
        try:
            with _open_log(path) as handle:
                for line in handle:  # streamed: a log may hold 64 MB
                    _add(history, line, since)
        except FileNotFoundError:
            continue
        except OSError as exc:
            history.unreadable.append(f"{path}: {exc.strerror or exc}")
            continue
        history.files.append(path)
    return history


def _add(history: SpoolHistory, line: bytes, since: float) -> None:
    entry: Any = None
    with contextlib.suppress(ValueError):
        entry = json.loads(line)
    if not isinstance(entry, dict):
        history.skipped += 1
        return
    if not is_counted(entry):
        return
    logged = from_iso(entry.get("time"))
    if logged is None or logged + STAMP_MARGIN < since:
        return
    size = _size(history.spool, entry.get("moved_to"))
    history.sends.append(SendEvent(entry["server"], logged + STAMP_MARGIN, size))
