"""Checking and repairing the rate ledger: the core of ``cxsmtp doctor``.

:func:`check_ledger` says whether ``STATE_DIR/ledger.sqlite3`` is sound (it never
raises for a damaged file, never creates one and opens it read-only).
:func:`repair_ledger` moves a damaged ledger aside -- kept, with its ``-wal`` and
``-shm``, as ``ledger.sqlite3.broken-<UTC time>`` -- and puts a fresh one in its
place holding the sends of the last 24 hours that the caller knows of (from the
spools' delivery logs), recorded as the sender records its confirmed sends.  So
the rolling hour and 24-hour windows stay honest after a repair; what the old
file knew beyond that (timing models, older sends) only made ``status`` richer.

A damaged ledger stops every run at open, so no run is using it while it is
repaired.  The fresh file is built under a temporary name and put in place with
one rename; a run that starts meanwhile sees the damaged file (and stops) or the
new one, never a half-built one.  Rebuilding a healthy ledger (``force=True``)
while runs are sending would lose their reservations, so it is refused while
any reservation is live.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import stat
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from carerix_smtp.errors import LedgerBusyError, StateError
from carerix_smtp.limits.owner import Owner
from carerix_smtp.limits.sqlite import Ledger
from carerix_smtp.limits.sqlite_connection import (
    SCHEMA_VERSION,
    create_schema,
    integrity_problem,
)
from carerix_smtp.limits.sqlite_files import (
    SIBLINGS,
    is_damaged,
    ledger_error,
    os_error,
    sibling,
)
from carerix_smtp.limits.sqlite_reservations import live_reservations, restore_sends

log = logging.getLogger(__name__)

__all__ = ["LedgerHealth", "LedgerRepair", "SendEvent", "check_ledger", "repair_ledger"]

DAY = 86_400.0
_TABLES = {"sends", "reservations", "timing"}


@dataclass(frozen=True)
class SendEvent:
    """One message a server accepted (from a delivery log): when (epoch seconds), its size."""

    server: str
    at: float
    size: int


@dataclass
class LedgerHealth:
    path: Path
    state: str  # "ok" | "missing" | "damaged" | "unreadable"
    detail: str
    live_reservations: int = 0


@dataclass
class LedgerRepair:
    moved_to: Path | None  # where the damaged ledger went (None: there was none)
    sends_restored: int
    per_server: dict[str, int] = field(default_factory=dict)
    oldest: float | None = None
    newest: float | None = None


# --- checking -----------------------------------------------------------------------


def check_ledger(state_dir: Path) -> LedgerHealth:
    """The state dir's ledger: ok, missing, damaged (``quick_check`` fails) or unreadable.

    Never raises for a damaged or unreadable file, never creates the ledger and
    never follows a symlink (it reports one as unreadable).
    """
    path = Path(state_dir) / Ledger.FILENAME
    found = _file_problem(path)
    if found is not None:
        return LedgerHealth(path, *found)
    try:
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        return LedgerHealth(path, "unreadable", str(exc))
    try:
        return _inspect(conn, path)
    except sqlite3.Error as exc:
        return LedgerHealth(path, "damaged" if is_damaged(exc) else "unreadable", str(exc))
    finally:
        conn.close()


def _file_problem(path: Path) -> tuple[str, str] | None:
    """(state, detail) when the file itself rules out opening it."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return "missing", "no rate ledger yet; the next run creates an empty one"
    except OSError as exc:
        return "unreadable", f"cannot look at it: {exc.strerror or exc}"
    if stat.S_ISLNK(mode):
        return "unreadable", "it is a symbolic link, which cxsmtp does not follow"
    if not stat.S_ISREG(mode):
        return "unreadable", "not a regular file"
    for suffix in SIBLINGS:
        other = sibling(path, suffix)
        if os.path.islink(other):
            return "unreadable", f"{other.name} is a symbolic link, which cxsmtp does not follow"
    return None


def _inspect(conn: sqlite3.Connection, path: Path) -> LedgerHealth:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if version == 0 and not tables:
        return LedgerHealth(path, "ok", "empty; the next run sets it up")
    if version != SCHEMA_VERSION:
        return LedgerHealth(
            path, "unreadable", f"version {version}; this cxsmtp reads version {SCHEMA_VERSION}"
        )
    problem = integrity_problem(conn)
    if problem:
        return LedgerHealth(path, "damaged", problem)
    if missing := _TABLES - tables:
        return LedgerHealth(path, "damaged", f"table(s) missing: {', '.join(sorted(missing))}")
    now = time.time()
    live = live_reservations(conn, now, Owner.current())
    recent = conn.execute("SELECT count(*) FROM sends WHERE time > ?", (now - DAY,)).fetchone()[0]
    detail = f"quick_check ok; {recent} send(s) in the last 24 h, {live} live batch reservation(s)"
    return LedgerHealth(path, "ok", detail, live)


# --- repairing ----------------------------------------------------------------------


def repair_ledger(
    state_dir: Path,
    sends: Iterable[SendEvent],
    *,
    clock: Callable[[], float] = time.time,
    force: bool = False,
    horizon: float = DAY,
) -> LedgerRepair:
    """Move a damaged (or missing) ledger aside and rebuild it from ``sends``.

    Only the sends of the last ``horizon`` seconds (24 h: the widest default
    window) are kept; pass every send once.  A healthy or unreadable ledger is
    rebuilt only with ``force=True``, one with live batch reservations never
    (:class:`LedgerBusyError`, exit 75).  Raises :class:`StateError` or
    :class:`StorageError` (naming the file) when the files cannot be written.
    """
    state_dir = Path(state_dir)
    health = check_ledger(state_dir)
    _may_repair(health, force)
    now = clock()
    kept = sorted(
        (e for e in sends if math.isfinite(e.at) and e.at > now - horizon), key=lambda e: e.at
    )
    path = health.path
    temp = path.with_name(f"{path.name}.rebuild-{os.getpid()}")
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        _remove(temp)
        _build(temp, kept, now)
        moved = _move_aside(path, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)))
        _install(temp, path)
        _sync_dir(state_dir)
    except OSError as exc:
        raise os_error(exc, "rebuild the rate ledger", path) from None
    except sqlite3.Error as exc:
        raise ledger_error(exc, temp, 0.0) from None
    finally:
        with suppress(OSError):
            _remove(temp)
    per_server: dict[str, int] = defaultdict(int)
    for event in kept:
        per_server[event.server] += 1
    log.info(
        "rate ledger %s rebuilt with %d send(s); the damaged one is %s", path, len(kept), moved
    )
    return LedgerRepair(
        moved,
        len(kept),
        dict(per_server),
        kept[0].at if kept else None,
        kept[-1].at if kept else None,
    )


def _may_repair(health: LedgerHealth, force: bool) -> None:
    where = health.path
    if health.live_reservations:
        raise LedgerBusyError(
            f"the rate ledger {where} has {health.live_reservations} live batch "
            "reservation(s): a cxsmtp run is sending through it; try again when it has finished"
        )
    if health.state == "ok" and not force:
        raise StateError(
            f"the rate ledger {where} is healthy ({health.detail}); it is rebuilt only when forced"
        )
    if health.state == "unreadable" and not force:
        raise StateError(
            f"the rate ledger {where} cannot be checked ({health.detail}); "
            "it is moved aside and rebuilt only when forced"
        )


def _build(temp: Path, sends: list[SendEvent], now: float) -> None:
    """The fresh ledger under ``temp``: the normal schema and ``sends``, fsynced."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, 0o600)
    try:
        if os.geteuid() == 0:  # root repairing a user's state dir: the file stays theirs
            owner = os.stat(temp.parent)
            os.fchown(fd, owner.st_uid, owner.st_gid)
    finally:
        os.close(fd)
    by_server: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for event in sends:
        by_server[event.server].append((event.at, max(0, int(event.size))))
    conn = sqlite3.connect(str(temp), isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("BEGIN IMMEDIATE")
        create_schema(conn)
        me = Owner.current()
        for server, stamped in sorted(by_server.items()):
            restore_sends(conn, server, stamped, now, me)
        conn.execute("COMMIT")
    finally:
        conn.close()
    fd = os.open(temp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _move_aside(path: Path, stamp: str) -> Path | None:
    """Keep the damaged ledger as ``<name>.broken-<stamp>`` (and its siblings next to it).

    The ledger is hard-linked to its new name and stays where it is until the
    fresh one replaces it in one rename, so there is no moment without a ledger
    in which a starting run would create an empty one.  Its ``-wal``/``-shm``
    are moved first: SQLite would apply an old WAL to the new file.
    """
    base = path.with_name(f"{path.name}.broken-{stamp}")
    n = 1
    while any(os.path.lexists(p) for p in (base, *(sibling(base, s) for s in SIBLINGS))):
        n += 1
        base = path.with_name(f"{path.name}.broken-{stamp}-{n}")
    moved: Path | None = None
    if os.path.lexists(path):
        try:
            os.link(path, base, follow_symlinks=False)
        except OSError:  # a file system without hard links
            os.rename(path, base)
        moved = base
    for suffix in SIBLINGS:
        if os.path.lexists(sibling(path, suffix)):
            os.rename(sibling(path, suffix), sibling(base, suffix))
            log.info("moved %s aside to %s", sibling(path, suffix), sibling(base, suffix))
    return moved


def _install(temp: Path, path: Path) -> None:
    if os.path.lexists(path):  # the damaged one, already kept under its new name
        os.replace(temp, path)
        return
    try:
        os.link(temp, path)  # never replaces a ledger a run created meanwhile
    except FileExistsError:
        raise StateError(
            f"a cxsmtp run created a new rate ledger {path} during the repair; "
            "run the repair again (forced)"
        ) from None
    except OSError:
        os.replace(temp, path)


def _remove(temp: Path) -> None:
    for name in (temp, *(sibling(temp, s) for s in SIBLINGS)):
        with suppress(FileNotFoundError):
            os.unlink(name)


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
