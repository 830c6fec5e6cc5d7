"""Deleting messages from the queue (``queue delete``, Postfix's ``postsuper -d``).
Call under the spool lock (``Spool.lock``).

A message goes with its record (the sidecar beside it); each removal is a line in
the delivery log (``outcome: "deleted"``), so "where did that mail go" has an
answer afterwards.  More than one message goes only when the caller confirms:
``queue delete --all`` without ``--yes`` is refused with the count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from carerix_smtp.errors import UsageError
from carerix_smtp.spool.layout import RECORD_SUFFIX, SUFFIX, SpoolLayout
from carerix_smtp.spool.queue import STATE_DIRS, locate, rows, states_for

# --all: everything not yet sent (sent mail is retention's business: queue purge)
ALL_STATES = ("queued", "deferred", "held", "failed")


@dataclass(frozen=True)
class Removal:
    state: str
    name: str

    @property
    def id(self) -> str:
        return self.name[: -len(SUFFIX)]


def select(
    layout: SpoolLayout,
    ids: Sequence[str],
    *,
    state: str | None = None,
    everything: bool = False,
) -> list[Removal]:
    """What ``queue delete`` would remove: the IDs given (each must exist: InputError
    66), every message of ``state``, or with ``everything`` every message not sent."""
    if sum((bool(ids), state is not None, everything)) != 1:
        raise UsageError("give queue IDs, --state STATE or --all (one of them)")
    if ids:
        found: list[Removal] = []
        for raw in ids:
            removal = Removal(*locate(layout, raw))
            if removal not in found:
                found.append(removal)
        return found
    states = ALL_STATES if everything else states_for(state or "")
    return [Removal(s, row[1]) for s in states for row in rows(layout, STATE_DIRS[s])]


def delete(
    layout: SpoolLayout,
    removals: Sequence[Removal],
    log: Callable[[dict[str, Any]], None],
    *,
    confirmed: bool,
) -> list[Removal]:
    """Remove ``removals`` (message, then record), logging each; returns them.
    Refuses (UsageError, 64) more than one without ``confirmed``."""
    if len(removals) > 1 and not confirmed:
        raise UsageError(
            f"this would delete {len(removals)} messages; add --yes to delete them",
            hint="cxsmtp queue list --state all shows them",
        )
    done: list[Removal] = []
    for removal in removals:
        rel = STATE_DIRS.get(removal.state, removal.state)
        if layout.lstat(rel, removal.name) is None:
            continue  # gone meanwhile
        layout.remove(rel, removal.name)
        layout.remove(rel, removal.name + RECORD_SUFFIX)
        log({"file": removal.name, "outcome": "deleted", "from": removal.state})
        done.append(removal)
    for rel in {STATE_DIRS.get(r.state, r.state) for r in done}:
        layout.fsync_dir(rel)
    return done
