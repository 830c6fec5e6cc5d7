"""The PostgreSQL ledger's rows: reservations (open, record, close, reclaim) and window state.

The same jobs as :mod:`~carerix_smtp.limits.sqlite_reservations` and
:mod:`~carerix_smtp.limits.sqlite_state`, in PostgreSQL's SQL, keyed by the
account (the string the caller passes as ``server``).  Every function runs in
the caller's transaction (:meth:`~carerix_smtp.limits.postgres_schema.PostgresDatabase.transaction`).

Releasing a reservation (:func:`reclaim`) differs from SQLite in one rule:
an owner that cannot be checked (another host, another pid namespace) whose
lease has expired gets ALL its unconfirmed slots counted as sent.  The lease is
compared on the reclaiming host's clock, and hosts' clocks differ: a lease may
run out while its owner can still admit messages.  Counting every slot it may
still use keeps that safe whatever the skew; only a dead owner checked on the
same host (its pid gone) is released at once with the smaller bound
(``in_flight``: a message per connection and an unwritten group; the groups
written are on the database server, so a reboot of the sender loses none).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import psycopg

from carerix_smtp.limits.ledger import SendRecord
from carerix_smtp.limits.owner import Owner, OwnerState, owner_state
from carerix_smtp.limits.rule import Limits, TimingModel, WindowState
from carerix_smtp.limits.sqlite_state import LoadedState

log = logging.getLogger(__name__)

__all__ = [
    "close_reservation",
    "count_sent",
    "insert_reservation",
    "insert_sends",
    "list_sends",
    "load_state",
    "prune",
    "read_timing",
    "reclaim",
    "save_timing",
]

Cursor = psycopg.Cursor[Any]


def reclaim(cur: Cursor, now: float, me: Owner) -> None:
    """Release live reservations whose owner can send no more (module docstring)."""
    rows = cur.execute(
        "SELECT id, account, slots, used, in_flight, expires_at, owner_host, owner_boot,"
        " owner_pidns, owner_pid, owner_start FROM cxsmtp_reservations"
        " WHERE closed_at IS NULL ORDER BY id FOR UPDATE"
    ).fetchall()
    for rid, account, slots, used, in_flight, expires_at, host, boot, pidns, pid, start in rows:
        state = owner_state(Owner(host, boot, pidns, pid, start), me)
        if state is OwnerState.ALIVE or (state is OwnerState.UNKNOWN and now < expires_at):
            continue
        remaining = max(0, slots - used)
        gone = state in (OwnerState.GONE, OwnerState.GONE_UNSURE)
        presumed = min(in_flight, remaining) if gone else remaining
        if presumed:
            cur.executemany(
                "INSERT INTO cxsmtp_sends (account, time, bytes, message_id, presumed, reservation)"
                " VALUES (%s, %s, 0, NULL, TRUE, %s)",
                [(account, now, rid)] * presumed,
            )
        cur.execute(
            "UPDATE cxsmtp_reservations SET closed_at = %s, presumed = %s WHERE id = %s",
            (now, presumed, rid),
        )
        log.warning(
            "account %s: released the batch reservation of pid %d on %s (%s); "
            "%d unconfirmed message(s) counted as possibly sent",
            account,
            pid,
            host,
            "its owner is gone" if gone else "its lease expired",
            presumed,
        )


def insert_reservation(
    cur: Cursor,
    account: str,
    now: float,
    limits: Limits,
    slots: int,
    unwritten: int,
    owner: Owner,
    lease: float,
) -> int:
    """Record a new batch of ``slots`` opened at ``now``; its id.

    The lease runs until the batch deadline plus ``lease`` (renewed by each
    group written, :func:`insert_sends`); ``unwritten`` is what a dead owner
    may have left unwritten (ledger.py).
    """
    deadline_at = now + limits.batch_deadline
    row = cur.execute(
        "INSERT INTO cxsmtp_reservations (account, opened_at, deadline_at, expires_at, slots,"
        " in_flight, owner_host, owner_boot, owner_pidns, owner_pid, owner_start)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (
            account,
            now,
            deadline_at,
            deadline_at + lease,
            slots,
            max(1, unwritten),
            owner.host,
            owner.boot,
            owner.pidns,
            owner.pid,
            owner.start,
        ),
    ).fetchone()
    assert row is not None
    return int(row[0])


def insert_sends(
    cur: Cursor,
    account: str,
    reservation_id: int,
    sends: Sequence[tuple[float, str | None, int]],
    lease_until: float,
) -> bool:
    """Record a group of sends, count them as used slots, renew the lease; True if released."""
    cur.executemany(
        "INSERT INTO cxsmtp_sends (account, time, bytes, message_id, presumed, reservation)"
        " VALUES (%s, %s, %s, %s, FALSE, %s)",
        [(account, stamp, size, message_id, reservation_id) for stamp, message_id, size in sends],
    )
    row = cur.execute(
        "UPDATE cxsmtp_reservations SET used = used + %s,"
        " expires_at = GREATEST(expires_at, %s) WHERE id = %s RETURNING closed_at",
        (len(sends), lease_until, reservation_id),
    ).fetchone()
    return row is not None and row[0] is not None


def close_reservation(cur: Cursor, reservation_id: int, now: float) -> None:
    """Close a live reservation: its unconfirmed slots no longer count."""
    cur.execute(
        "UPDATE cxsmtp_reservations SET closed_at = %s WHERE id = %s AND closed_at IS NULL",
        (now, reservation_id),
    )


def prune(cur: Cursor, now: float, limits: Limits, retention: float) -> None:
    """Delete sends and closed reservations older than the retention and every window."""
    horizon = now - max(retention, limits.server_window, limits.send_limit_window)
    cur.execute("DELETE FROM cxsmtp_sends WHERE time < %s", (horizon,))
    cur.execute(
        "DELETE FROM cxsmtp_reservations WHERE closed_at IS NOT NULL AND opened_at < %s",
        (horizon,),
    )


def load_state(cur: Cursor, account: str, limits: Limits, now: float) -> LoadedState:
    """What :func:`~carerix_smtp.limits.rule.next_batch` needs for ``account``."""
    server_sends = [
        float(row[0])
        for row in cur.execute(
            "SELECT time FROM cxsmtp_sends WHERE account = %s AND time > %s ORDER BY time",
            (account, now - limits.server_window),
        ).fetchall()
    ]
    all_sends = [
        float(row[0])
        for row in cur.execute(
            "SELECT time FROM cxsmtp_sends WHERE time > %s ORDER BY time",
            (now - limits.send_limit_window,),
        ).fetchall()
    ]
    server_reserved = all_reserved = 0
    ends: float | None = None
    live = cur.execute(
        "SELECT account, slots - used, deadline_at FROM cxsmtp_reservations WHERE closed_at IS NULL"
    ).fetchall()
    for name, left, deadline_at in live:
        left = max(0, left)
        all_reserved += left
        if name == account:
            server_reserved += left
        if left > 0:
            ends = deadline_at if ends is None else min(ends, deadline_at)
    last = cur.execute(
        "SELECT max(opened_at) FROM cxsmtp_reservations WHERE account = %s"
        " AND (closed_at IS NULL OR used > 0 OR presumed > 0)",
        (account,),
    ).fetchone()
    last_start = None if last is None or last[0] is None else float(last[0])
    state = WindowState(server_sends, all_sends, server_reserved, all_reserved, last_start, ends)
    return LoadedState(state, read_timing(cur, account))


def read_timing(cur: Cursor, account: str) -> TimingModel:
    row = cur.execute(
        "SELECT weight, sum_x, sum_y, sum_xx, sum_xy, setup, batches FROM cxsmtp_timing"
        " WHERE account = %s",
        (account,),
    ).fetchone()
    if row is None:
        return TimingModel()
    weight, sum_x, sum_y, sum_xx, sum_xy, setup, batches = row
    return TimingModel(weight, sum_x, sum_y, sum_xx, sum_xy, setup, int(batches))


def save_timing(cur: Cursor, account: str, model: TimingModel, now: float) -> None:
    cur.execute(
        "INSERT INTO cxsmtp_timing (account, weight, sum_x, sum_y, sum_xx, sum_xy, setup,"
        " batches, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (account) DO UPDATE SET weight = EXCLUDED.weight,"
        " sum_x = EXCLUDED.sum_x, sum_y = EXCLUDED.sum_y, sum_xx = EXCLUDED.sum_xx,"
        " sum_xy = EXCLUDED.sum_xy, setup = EXCLUDED.setup, batches = EXCLUDED.batches,"
        " updated_at = EXCLUDED.updated_at",
        (
            account,
            model.weight,
            model.sum_x,
            model.sum_y,
            model.sum_xx,
            model.sum_xy,
            model.setup,
            model.batches,
            now,
        ),
    )


def count_sent(cur: Cursor, account: str, since: float) -> tuple[int, int]:
    """Messages and bytes ``account`` sent after ``since``."""
    row = cur.execute(
        "SELECT count(*), coalesce(sum(bytes), 0) FROM cxsmtp_sends"
        " WHERE account = %s AND time > %s",
        (account, since),
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def list_sends(cur: Cursor, account: str | None, since: float | None) -> list[SendRecord]:
    """The recorded sends, oldest first (of ``account`` / after ``since`` when given)."""
    rows = cur.execute(
        "SELECT account, time, bytes, message_id, presumed, reservation FROM cxsmtp_sends"
        " WHERE (%s::text IS NULL OR account = %s) AND (%s::float8 IS NULL OR time > %s)"
        " ORDER BY time, id",
        (account, account, since, since),
    ).fetchall()
    return [SendRecord(r[0], float(r[1]), int(r[2]), r[3], bool(r[4]), r[5]) for r in rows]
