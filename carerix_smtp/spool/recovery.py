"""Recovery after a crash (``Spool.recover``, under the lock, before sending): files
left in claims/ go where their journaled outcome says, or back to the queue as
possible duplicates; the other journal lines are redone; stray temp files go."""

from __future__ import annotations

import logging
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carerix_smtp.spool.claims import Claim, Claims
from carerix_smtp.spool.journal import Journal, is_file_of, line_identity, line_name
from carerix_smtp.spool.layout import (
    CLAIM_DIRS,
    RECORD_SUFFIX,
    SUFFIX,
    Kind,
    SpoolLayout,
    origin,
)
from carerix_smtp.spool.listing import RANK
from carerix_smtp.spool.outcomes import Outcomes
from carerix_smtp.spool.records import DeliveryLog, MessageState

log = logging.getLogger(__name__)


@dataclass
class RecoveryReport:
    completed: list[str] = field(default_factory=list)  # journaled outcome applied
    requeued: list[str] = field(default_factory=list)  # possible duplicates
    removed: list[str] = field(default_factory=list)  # stray temp files and sidecars


class Recovery:
    """Resolves what a killed run left behind (see "Durability" in
    ``carerix_smtp/spool/journal.py``)."""

    def __init__(
        self,
        layout: SpoolLayout,
        journal: Journal,
        claims: Claims,
        outcomes: Outcomes,
        delivery_log: DeliveryLog,
    ) -> None:
        self._layout = layout
        self._journal = journal
        self._claims = claims
        self._outcomes = outcomes
        self._delivery_log = delivery_log

    def recover(self) -> RecoveryReport:
        """Resolve what a killed run left behind (call under the lock, before sending).

        A claim with a journaled outcome goes where the outcome says, without
        sending; one without goes back to the queue (a possible duplicate).  Then
        every other journal line is redone (see "Durability" at the journal): a
        record rewritten, or a file whose claim rename was lost moved from its old
        place.
        """
        self._layout.prepare()
        report = RecoveryReport()
        lines = self._journal.read()
        by_claim = {entry["claim"]: entry for entry in lines}
        applied: set[str] = set()
        for path in self._layout.claimed():
            self._resolve_claim(path, by_claim, applied, report)
        self._redo_lines(lines, applied, report)
        report.removed.extend(self._remove_strays())
        self._journal.clear()
        return report

    def _resolve_claim(
        self,
        path: Path,
        by_claim: dict[str, dict[str, Any]],
        applied: set[str],
        report: RecoveryReport,
    ) -> None:
        """One entry left in claims/: where its journaled outcome says, or back to
        the queue; a rewrite's temp file is removed."""
        kind: Kind = "deferred" if path.parent.name == "deferred" else "queued"
        where = CLAIM_DIRS[kind]
        if path.name.startswith("."):  # a rewrite's temp file
            self._layout.remove(where, path.name)
            report.removed.append(str(path.relative_to(self._layout.path)))
            return
        _, sep, name = path.name.partition("~")
        if not sep:
            name = path.name
        key = f"{kind}/{path.name}"
        claim = self._claims.from_path(kind, name, where, path.name, key)
        entry = by_claim.get(key)
        if entry is not None and isinstance(entry.get("state"), dict):
            state = MessageState.from_json(entry["state"])
            dest = self._outcomes.apply(
                claim, state, entry.get("dest"), journal=False, name=line_name(entry), line=entry
            )
            applied.add(key)
            report.completed.append(str(dest.relative_to(self._layout.path)))
            log.warning(
                "%s: outcome journaled by a run that stopped; moved to %s without sending",
                name,
                dest.parent.name,
            )
        else:
            self._requeue(claim, name, report)

    def _requeue(self, claim: Claim, name: str, report: RecoveryReport) -> None:
        """A claim without a journaled outcome back to the queue: a possible duplicate."""
        back = self._claims.requeue(claim)
        report.requeued.append(str(back.relative_to(self._layout.path)))
        log.warning(
            "possible duplicate: %s (Message-ID %s) was in flight when a run stopped; queued again",
            name,
            _peek_message_id(back) or "unknown",
        )
        self._delivery_log.write(
            {
                "file": name,
                "message_id": _peek_message_id(back),
                "outcome": "requeued",
                "error": "in flight when a run stopped: possible duplicate",
            }
        )

    def _redo_lines(
        self, lines: list[dict[str, Any]], applied: set[str], report: RecoveryReport
    ) -> None:
        # The newest line of each file whose claim was not in claims/ any more.
        newest: dict[tuple[int, int], dict[str, Any]] = {}
        for entry in lines:
            ident = line_identity(entry)
            if ident is not None:
                newest[ident] = entry
        for entry in newest.values():
            if entry["claim"] not in applied:
                done = self._redo(entry)
                if done is not None:
                    report.completed.append(str(done.relative_to(self._layout.path)))

    def _redo(self, entry: dict[str, Any]) -> Path | None:
        """Redo one journal line whose claim has gone (see "Durability" at the
        journal); the path of a file moved now, None when only its record was
        rewritten (or the file is not where the line could have left it: nothing
        to do)."""
        dest, name = entry.get("dest"), line_name(entry)
        if dest not in ("sent", "failed", "deferred") or name is None:
            return None
        if not isinstance(entry.get("state"), dict):
            return None
        kind, _, claimed = str(entry["claim"]).partition("/")
        if kind not in RANK:
            return None
        origin_name = claimed.partition("~")[2] or claimed
        state = MessageState.from_json(entry["state"])
        layout = self._layout
        if is_file_of(layout.lstat(dest, name), entry, state):  # moved; its record may be lost
            claim = self._claims.from_path(kind, origin_name, dest, name, entry["claim"])
            self._outcomes.place(claim, state, dest, name, move=False, redo=entry)
            return None
        where = origin(kind)
        if Path(origin_name).name == origin_name and is_file_of(
            layout.lstat(where, origin_name), entry, state
        ):
            # the claim rename was lost to a power failure; the outcome was not
            claim = self._claims.from_path(kind, origin_name, where, origin_name, entry["claim"])
            log.warning(
                "%s: outcome journaled by a run that stopped; moved to %s without sending",
                origin_name,
                dest,
            )
            return self._outcomes.apply(claim, state, dest, journal=False, name=name, line=entry)
        return None

    def _remove_strays(self) -> list[str]:
        removed: list[str] = []
        for sub in ("deferred", "sent", "failed"):
            names = {e.name for e in self._layout.scandir(sub)}
            for name in names:
                orphan = (
                    sub == "deferred"
                    and name.endswith(SUFFIX + RECORD_SUFFIX)
                    and name[: -len(RECORD_SUFFIX)] not in names
                )
                if orphan or (name.startswith(".cxsmtp-") and name.endswith(".tmp")):
                    self._layout.remove(sub, name)
                    removed.append(f"{sub}/{name}")
        return removed


def _peek_message_id(path: Path) -> str | None:
    """The Message-ID in the first 64 KB of ``path`` (for log lines only)."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        with open(path, "rb") as handle:
            head = handle.read(65536)
    except OSError:
        return None
    match = re.search(rb"^message-id:[ \t]*(<[^>\r\n]*>)", head, re.IGNORECASE | re.MULTILINE)
    return match.group(1).decode("utf-8", "replace") if match else None
