"""Reading (and pruning) the SQLite ledger: the windows' state, timing models, usage counts.

:func:`load_state` gives :func:`carerix_smtp.limits.rule.next_batch` what it
needs for one server: the sends within the windows, the live reservations and
the last batch start, plus the server's timing model.  Every function takes
the caller's connection (inside a transaction or a read of
:class:`~carerix_smtp.limits.sqlite_connection.LedgerDatabase`).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from carerix_smtp.limits.ledger import SendRecord
from carerix_smtp.limits.rule import Limits, TimingModel, WindowState

__all__ = [
    "LoadedState",
    "count_sent",
    "list_sends",
    "load_state",
    "prune",
    "read_timing",
    "save_timing",
]


@dataclass
class LoadedState:
    state: WindowState
    timing: TimingModel


def prune(conn: sqlite3.Connection, now: float, limits: Limits, retention: float) -> None:
    """Delete sends and closed reservations older than the retention and every window."""
    horizon = now - max(retention, limits.server_window, limits.send_limit_window)
    conn.execute("DELETE FROM sends WHERE time < ?", (horizon,))
    conn.execute(
        "DELETE FROM reservations WHERE closed_at IS NOT NULL AND opened_at < ?", (horizon,)
    )


def load_state(conn: sqlite3.Connection, server: str, limits: Limits, now: float) -> LoadedState:
    server_sends = [
        row[0]
        for row in conn.execute(
            "SELECT time FROM sends WHERE server = ? AND time > ? ORDER BY time",
            (server, now - limits.server_window),
        )
    ]
    all_sends = [
        row[0]
        for row in conn.execute(
            "SELECT time FROM sends WHERE time > ? ORDER BY time",
            (now - limits.send_limit_window,),
        )
    ]
    server_reserved = 0
    all_reserved = 0
    ends: float | None = None
    for name, left, deadline_at in conn.execute(
        "SELECT server, slots - used, deadline_at FROM reservations WHERE closed_at IS NULL"
    ):
        left = max(0, left)
        all_reserved += left
        if name == server:
            server_reserved += left
        if left > 0:
            ends = deadline_at if ends is None else min(ends, deadline_at)
    last = conn.execute(
        "SELECT max(opened_at) FROM reservations WHERE server = ?"
        " AND (closed_at IS NULL OR used > 0 OR presumed > 0)",
        (server,),
    ).fetchone()[0]
    state = WindowState(server_sends, all_sends, server_reserved, all_reserved, last, ends)
    return LoadedState(state, read_timing(conn, server))


def read_timing(conn: sqlite3.Connection, server: str) -> TimingModel:
    row = conn.execute(
        "SELECT weight, sum_x, sum_y, sum_xx, sum_xy, setup, batches FROM timing WHERE server = ?",
        (server,),
    ).fetchone()
    if row is None:
        return TimingModel()
    weight, sum_x, sum_y, sum_xx, sum_xy, setup, batches = row
    return TimingModel(weight, sum_x, sum_y, sum_xx, sum_xy, setup, int(batches))


def save_timing(conn: sqlite3.Connection, server: str, model: TimingModel, now: float) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO timing (server, weight, sum_x, sum_y, sum_xx,"
        " sum_xy, setup, batches, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            server,
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


def count_sent(conn: sqlite3.Connection, server: str, since: float) -> tuple[int, int]:
    """Messages and bytes ``server`` sent after ``since``."""
    count, size = conn.execute(
        "SELECT count(*), coalesce(sum(bytes), 0) FROM sends WHERE server = ? AND time > ?",
        (server, since),
    ).fetchone()
    return count, size


def list_sends(
    conn: sqlite3.Connection, server: str | None, since: float | None
) -> list[SendRecord]:
    """The recorded sends, oldest first (of ``server`` / after ``since`` when given)."""
    query = "SELECT server, time, bytes, message_id, presumed, reservation FROM sends"
    clauses: list[str] = []
    args: list[object] = []
    if server is not None:
        clauses.append("server = ?")
        args.append(server)
    if since is not None:
        clauses.append("time > ?")
        args.append(since)
    if clauses:
        query += " WHERE " + " AND ".join(clauses)
    rows = conn.execute(query + " ORDER BY time, id", args).fetchall()
    return [SendRecord(r[0], r[1], r[2], r[3], bool(r[4]), r[5]) for r in rows]
