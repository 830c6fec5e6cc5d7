"""Applying an outcome: the journal line first (written; synced with its group),
then the record — a line of ``sent/records-DAY.jsonl`` for a sent message,
``NAME.eml.json`` beside a failed or deferred one — and the claimed file moved to
sent/, failed/ or deferred/ (none of them fsynced here: see "Durability" in
``carerix_smtp/spool/journal.py``).  Recovery applies journaled outcomes the same
way, without a new line."""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path
from typing import Any

from carerix_smtp.spool.claims import Claim
from carerix_smtp.spool.journal import Journal
from carerix_smtp.spool.layout import RECORD_SUFFIX, SpoolLayout, child, storage, variant
from carerix_smtp.spool.records import MessageState, dumps, json_text
from carerix_smtp.spool.sent_log import SentLog


class Outcomes:
    """Moves claimed messages where their outcome says, with their records."""

    def __init__(
        self, layout: SpoolLayout, journal: Journal, sent_log: SentLog, book: threading.Lock
    ) -> None:
        self._layout = layout
        self._journal = journal
        self._sent_log = sent_log
        self._book = book  # shared with the claim tokens and the delivery log

    def record(self, claim: Claim, state: MessageState) -> Path:
        """Journal the state, then write the record and move the claim to its
        destination (see "Durability" at the journal)."""
        dest = state.destination()
        state.status = dest
        return self.apply(claim, state, dest, journal=True)

    def apply(
        self,
        claim: Claim,
        state: MessageState,
        dest: Any,
        *,
        journal: bool,
        name: str | None = None,
        line: dict[str, Any] | None = None,
    ) -> Path:
        """Journal (``journal``) and place one outcome; recovery passes the journal
        ``line`` it redoes instead."""
        if dest not in ("sent", "failed", "deferred"):
            dest = state.destination()
        layout = self._layout
        if not journal:
            name = name or claim.name
            if layout.exists(dest, name):
                name, line = variant(name), None  # a record of its own, under the new name
            return self.place(claim, state, dest, name, move=True, redo=line)
        with self._book:
            # The name is chosen (under the lock: one thread at a time moves files
            # into ``directory``) before the line is written, so that the line says
            # where the file goes.
            name = claim.name
            if layout.exists(dest, name):
                name = variant(name)
            state.name = name
            state.status = dest
            record = dumps(state.to_json())
            at = self._sent_log.position() if dest == "sent" else None
            # {"claim":...,"file":[...],"state":{the record}}: the record encoded once
            head = journal_head(claim, dest, name, at)
            self._journal.append(b"".join((head, b',"state":', record, b"}\n")))
            day = at[0] if at is not None else None
            path = self.place(claim, state, dest, name, move=True, record=record, day=day)
            if self._journal.checkpoint_due():
                self._journal.checkpoint()
            return path

    def place(
        self,
        claim: Claim,
        state: MessageState,
        dest: str,
        name: str,
        *,
        move: bool,
        record: bytes | None = None,
        day: str | None = None,
        redo: dict[str, Any] | None = None,
    ) -> Path:
        """Write the record of ``dest/name`` and move the claim there (``move``);
        redoing it is harmless.  A sent record goes to the day file ``day`` (the
        one its journal line names); ``redo``: the journal line recovery redoes,
        whose sent record is appended only when it is not in its day file yet.
        No fsync: the journal line covers both until the checkpoint."""
        layout = self._layout
        state.name = name
        state.status = dest
        if record is None:
            record = dumps(state.to_json())
        if dest == "sent":
            self._place_sent(name, record, day, redo)
        else:
            record_name = name + RECORD_SUFFIX
            layout.write_file(dest, record_name, record + b"\n", sync=False)
            self._journal.unsynced.add((dest, record_name))
        if dest == "deferred" and state.next_attempt is not None and claim.file_type != "symlink":
            with storage("set the next attempt time of", claim.path):
                os.utime(
                    claim.leaf,
                    (state.next_attempt, state.next_attempt),
                    dir_fd=layout.fd(claim.where),
                    follow_symlinks=False,
                )
        if move:
            layout.rename(claim.where, claim.leaf, dest, name)
        if claim.kind == "deferred" and not (dest == "deferred" and name == claim.name):
            layout.remove("deferred", claim.name + RECORD_SUFFIX)
        return child(layout.dir(dest), name)

    def _place_sent(
        self, name: str, record: bytes, day: str | None, redo: dict[str, Any] | None
    ) -> None:
        """Append the record to the day file; or, redoing a journal line, only when
        it is not there yet (SentLog.restore)."""
        if redo is None:
            held, _ = self._sent_log.append(record, day)
        else:
            state = redo.get("state")
            with self._book:
                held = self._sent_log.restore(
                    name, state if isinstance(state, dict) else {}, record, redo.get("at")
                )
        self._journal.unsynced.add(("sent", held))

    def close(self) -> None:
        """Close the day file (call with the shared lock held: it is being released)."""
        self._sent_log.close()


def journal_head(claim: Claim, dest: str, name: str, at: tuple[str, int] | None) -> bytes:
    """``dumps({"claim":..,"dest":..,"name":..,"file":[dev,ino,size,mtime],"at":..})``
    without its closing brace, formatted directly (once per message: a general
    encoder call cost as much as the whole record's); anything unusual goes
    through ``dumps``, so the bytes are the same either way."""
    key, size, mtime = claim.key, claim.size, claim.mtime
    plain = type(claim.dev) is int and type(claim.ino) is int and type(size) is int
    if plain and type(mtime) is float and math.isfinite(mtime):
        try:
            text = (
                f'{{"claim":{json_text(key)},"dest":{json_text(dest)},'
                f'"name":{json_text(name)},"file":[{claim.dev:d},{claim.ino:d},{size:d},'
                f"{mtime!r}]"
            )
            if at is not None:
                text += f',"at":[{json_text(at[0])},{at[1]:d}]'
            return text.encode("utf-8")
        except UnicodeEncodeError:
            pass  # a lone surrogate in a name: dumps escapes it
    about: dict[str, Any] = {
        "claim": key,
        "dest": dest,
        "name": name,
        "file": [claim.dev, claim.ino, size, mtime],
    }
    if at is not None:
        about["at"] = [at[0], at[1]]
    return dumps(about)[:-1]
