"""Applying an outcome: the journal line first (fdatasync), then the record
``NAME.eml.json`` written beside the destination and the claimed file moved to
sent/, failed/ or deferred/ (neither fsynced: see "Durability" in
``carerix_smtp/spool/journal.py``).  Recovery applies journaled outcomes the same
way, without a new line."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from carerix_smtp.spool.claims import Claim
from carerix_smtp.spool.journal import Journal
from carerix_smtp.spool.layout import RECORD_SUFFIX, SpoolLayout, storage, variant
from carerix_smtp.spool.records import MessageState, dumps


class Outcomes:
    """Moves claimed messages where their outcome says, with their records."""

    def __init__(self, layout: SpoolLayout, journal: Journal, book: threading.Lock) -> None:
        self._layout = layout
        self._journal = journal
        self._book = book  # shared with the claim tokens and the delivery log

    def record(self, claim: Claim, state: MessageState) -> Path:
        """Journal the state (fdatasync), then write the record and move the claim
        to its destination (neither fsynced: see "Durability" at the journal)."""
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
    ) -> Path:
        if dest not in ("sent", "failed", "deferred"):
            dest = state.destination()
        layout = self._layout
        if not journal:
            name = name or claim.name
            if layout.exists(dest, name):
                name = variant(name)
            return self.place(claim, state, dest, name, move=True)
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
            about = dumps(
                {
                    "claim": claim.key,
                    "dest": dest,
                    "name": name,
                    "file": [claim.dev, claim.ino, claim.size, claim.mtime],
                }
            )
            # {"claim":...,"file":[...],"state":{the record}}: the record encoded once
            self._journal.append(b"".join((about[:-1], b',"state":', record, b"}\n")))
            path = self.place(claim, state, dest, name, move=True, record=record)
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
    ) -> Path:
        """Write the record beside ``dest/name`` and move the claim there (``move``);
        redoing it is harmless.  No fsync: the journal line covers both."""
        layout = self._layout
        state.name = name
        state.status = dest
        if record is None:
            record = dumps(state.to_json())
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
        return layout.dir(dest) / name
