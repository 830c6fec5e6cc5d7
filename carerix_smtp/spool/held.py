"""Holding messages back (``queue hold``/``release``, Postfix's ``postsuper -h/-H``)
and making deferred ones due now (``queue flush``).  Call everything here under
the spool lock (``Spool.lock``).

A held message is ``SPOOL/held/NAME.eml``: ``send`` lists only SPOOL itself and
deferred/, so it never takes one from there.  One held from deferred/ keeps its
sidecar beside it (``held/NAME.eml.json``: attempts and per-recipient state);
``release`` puts it back in deferred/ due now (mtime = now), and one held from the
queue back in the queue (its mtime, hence its place in the order, kept).

Order of the moves, for a crash between them: the message first, then its
sidecar.  A sidecar left behind in deferred/ is removed by the next run's recovery
(an orphan); the message, held or released without it, is sent as a new one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from carerix_smtp.errors import InputError
from carerix_smtp.spool.layout import RECORD_SUFFIX, SUFFIX, TOP, SpoolLayout, storage, variant
from carerix_smtp.spool.queue import HELD, STATE_DIRS, locate, message_id_of, rows


def hold(layout: SpoolLayout, ids: Sequence[str], *, everything: bool = False) -> list[str]:
    """Move queued and deferred messages to held/; returns their queue IDs.  Unknown
    IDs or messages in another state raise InputError before anything moves."""
    wanted = _pick(layout, ids, everything, ("queued", "deferred"), "held")
    layout.fd(HELD, create=True)
    moved: list[str] = []
    for state, name in wanted:
        rel = STATE_DIRS[state]
        target = _free_name(layout, HELD, name)
        layout.rename(rel, name, HELD, target)
        if state == "deferred" and layout.exists(rel, name + RECORD_SUFFIX):
            layout.rename(rel, name + RECORD_SUFFIX, HELD, target + RECORD_SUFFIX)
        moved.append(target[: -len(SUFFIX)])
    _sync(layout, HELD, *{STATE_DIRS[state] for state, _ in wanted})
    return moved


def release(
    layout: SpoolLayout, ids: Sequence[str], *, now: float, everything: bool = False
) -> list[str]:
    """Move held messages back, due now: with a sidecar to deferred/ (mtime now),
    else to the queue.  Returns ``deferred/NAME`` or ``NAME`` per message."""
    wanted = _pick(layout, ids, everything, (HELD,), "released")
    moved: list[str] = []
    for _, name in wanted:
        if layout.exists(HELD, name + RECORD_SUFFIX):
            with storage("set the next attempt time of", layout.where(HELD, name)):
                os.utime(name, (now, now), dir_fd=layout.fd(HELD), follow_symlinks=False)
            target = _free_name(layout, "deferred", name)
            layout.rename(HELD, name, "deferred", target)
            layout.rename(HELD, name + RECORD_SUFFIX, "deferred", target + RECORD_SUFFIX)
            moved.append(f"deferred/{target[: -len(SUFFIX)]}")
        else:
            target = layout.move_noreplace(HELD, name, TOP, name)
            moved.append(target[: -len(SUFFIX)])
    _sync(layout, HELD, "deferred", TOP)
    return moved


def make_due(layout: SpoolLayout, now: float) -> int:
    """Every deferred message due now (``queue flush``); returns how many."""
    later = [name for mtime, name, _ in rows(layout, "deferred") if mtime > now]
    return layout.set_due("deferred", later, now, missing_ok=True)


def _pick(
    layout: SpoolLayout, ids: Sequence[str], everything: bool, states: tuple[str, ...], verb: str
) -> list[tuple[str, str]]:
    """(state, file name) of the messages to move, checked before any moves."""
    if everything:
        return [(state, row[1]) for state in states for row in rows(layout, STATE_DIRS[state])]
    wanted: list[tuple[str, str]] = []
    for raw in ids:
        state, name = locate(layout, raw)
        if state not in states:
            accepted = " or ".join(states)
            raise InputError(
                f"message {message_id_of(raw)!r} is {state}; only {accepted} messages can be {verb}"
            )
        if (state, name) not in wanted:
            wanted.append((state, name))
    return wanted


def _free_name(layout: SpoolLayout, rel: str, name: str) -> str:
    """``name``, or a free variant of it when ``rel`` has one already."""
    while layout.exists(rel, name) or layout.exists(rel, name + RECORD_SUFFIX):
        name = variant(name)
    return name


def _sync(layout: SpoolLayout, *rels: str) -> None:
    for rel in rels:
        layout.fsync_dir(rel)
