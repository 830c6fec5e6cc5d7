"""Batch reservations in the SQLite ledger: opening, recording sends, closing, reclaiming.

A grant is a row in ``reservations`` whose unconfirmed slots count against the
windows until it is closed.  :func:`reclaim` releases the reservations whose
owner can send no more (a dead process, or an expired lease) and counts what
may have been sent unrecorded as "presumed" sends; the rules are in
:mod:`carerix_smtp.limits.ledger`.  Every function runs inside the caller's
write transaction (:meth:`~carerix_smtp.limits.sqlite_connection.LedgerDatabase.write`).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence

from carerix_smtp.limits.owner import Owner, OwnerState, owner_state
from carerix_smtp.limits.rule import Limits

log = logging.getLogger(__name__)

__all__ = [
    "close_reservation",
    "insert_reservation",
    "insert_sends",
    "live_reservations",
    "reclaim",
    "restore_sends",
]


def reclaim(conn: sqlite3.Connection, now: float, me: Owner) -> None:
    """Release live reservations whose owner can send no more (see ledger.py's docstring)."""
    rows = conn.execute(
        "SELECT id, server, slots, used, in_flight, expires_at, owner_host, owner_boot,"
        " owner_pidns, owner_pid, owner_start FROM reservations WHERE closed_at IS NULL"
    ).fetchall()
    for rid, server, slots, used, in_flight, expires_at, host, boot, pidns, pid, start in rows:
        owner = Owner(host, boot, pidns, pid, start)
        state = owner_state(owner, me)
        if state is OwnerState.ALIVE:
            continue
        if state is OwnerState.UNKNOWN and now < expires_at:
            continue
        remaining = max(0, slots - used)
        same_boot = bool(boot) and boot == me.boot
        if state is OwnerState.GONE or (state is OwnerState.UNKNOWN and same_boot):
            presumed = min(in_flight, remaining)
        else:
            presumed = remaining
        conn.executemany(
            "INSERT INTO sends (server, time, bytes, message_id, presumed, reservation)"
            " VALUES (?, ?, 0, NULL, 1, ?)",
            [(server, now, rid)] * presumed,
        )
        conn.execute(
            "UPDATE reservations SET closed_at = ?, presumed = ? WHERE id = ?",
            (now, presumed, rid),
        )
        why = "its lease expired" if state is OwnerState.UNKNOWN else "its owner is gone"
        log.warning(
            "server %s: released the batch reservation of pid %d on %s (%s); "
            "%d unconfirmed message(s) counted as possibly sent",
            server,
            pid,
            host,
            why,
            presumed,
        )


def insert_reservation(
    conn: sqlite3.Connection,
    server: str,
    now: float,
    limits: Limits,
    slots: int,
    unwritten: int,
    owner: Owner,
) -> int:
    """Record a new batch of ``slots`` opened at ``now`` by ``owner``; its id.

    ``unwritten``: how many sends the owner may have made but not written at
    any moment (in flight, or confirmed and waiting for their group): what
    :func:`reclaim` counts as possibly sent when the owner dies.
    """
    deadline_at = now + limits.batch_deadline
    cursor = conn.execute(
        "INSERT INTO reservations (server, opened_at, deadline_at, expires_at, slots,"
        " in_flight, owner_host, owner_boot, owner_pidns, owner_pid, owner_start)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            server,
            now,
            deadline_at,
            deadline_at + limits.lease_grace,
            slots,
            max(1, unwritten),
            owner.host,
            owner.boot,
            owner.pidns,
            owner.pid,
            owner.start,
        ),
    )
    rid = cursor.lastrowid
    assert rid is not None
    return rid


def insert_sends(
    conn: sqlite3.Connection,
    server: str,
    reservation_id: int,
    sends: Sequence[tuple[float, str | None, int]],
    lease_until: float,
) -> bool:
    """Record a group of sends ``(stamp, message id, bytes)`` of a reservation.

    Counts them as used slots and extends the lease once; True if the
    reservation had already been released (the sends are recorded anyway).
    """
    conn.executemany(
        "INSERT INTO sends (server, time, bytes, message_id, presumed, reservation)"
        " VALUES (?, ?, ?, ?, 0, ?)",
        [(server, stamp, size, message_id, reservation_id) for stamp, message_id, size in sends],
    )
    conn.execute(
        "UPDATE reservations SET used = used + ?, expires_at = max(expires_at, ?) WHERE id = ?",
        (len(sends), lease_until, reservation_id),
    )
    row = conn.execute(
        "SELECT closed_at FROM reservations WHERE id = ?", (reservation_id,)
    ).fetchone()
    return row is not None and row[0] is not None


def close_reservation(conn: sqlite3.Connection, reservation_id: int, now: float) -> None:
    """Close a live reservation: its unconfirmed slots no longer count."""
    conn.execute(
        "UPDATE reservations SET closed_at = ? WHERE id = ? AND closed_at IS NULL",
        (now, reservation_id),
    )


def live_reservations(conn: sqlite3.Connection, now: float, me: Owner) -> int:
    """Reservations whose owner may still send (those :func:`reclaim` would keep)."""
    rows = conn.execute(
        "SELECT expires_at, owner_host, owner_boot, owner_pidns, owner_pid, owner_start"
        " FROM reservations WHERE closed_at IS NULL"
    ).fetchall()
    live = 0
    for expires_at, host, boot, pidns, pid, start in rows:
        state = owner_state(Owner(host, boot, pidns, pid, start), me)
        if state is OwnerState.ALIVE or (state is OwnerState.UNKNOWN and now < expires_at):
            live += 1
    return live


def restore_sends(
    conn: sqlite3.Connection,
    server: str,
    sends: Sequence[tuple[float, int]],
    now: float,
    owner: Owner,
) -> None:
    """Record ``(stamp, bytes)`` sends of ``server`` known from elsewhere (a repair).

    They become confirmed sends, as :func:`insert_sends` records them, under one
    closed reservation opened at the newest of them (at most ``now``): so the
    batch interval also counts from the last send before the repair -- later than
    that batch really started, which only makes the next one wait longer.
    """
    if not sends:
        return
    newest = min(now, max(stamp for stamp, _ in sends))
    cursor = conn.execute(
        "INSERT INTO reservations (server, opened_at, deadline_at, expires_at, slots, used,"
        " in_flight, owner_host, owner_boot, owner_pidns, owner_pid, owner_start, closed_at)"
        " VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?)",
        (
            server,
            newest,
            newest,
            newest,
            len(sends),
            len(sends),
            owner.host,
            owner.boot,
            owner.pidns,
            owner.pid,
            owner.start,
            now,
        ),
    )
    conn.executemany(
        "INSERT INTO sends (server, time, bytes, message_id, presumed, reservation)"
        " VALUES (?, ?, ?, NULL, 0, ?)",
        [(server, stamp, size, cursor.lastrowid) for stamp, size in sends],
    )
