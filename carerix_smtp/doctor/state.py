"""The state dir and the rate ledger in it: can it be written, is the ledger sound,
and the repair of a damaged one.

A damaged ledger is moved aside (kept, for a post-mortem) and rebuilt by
:func:`carerix_smtp.limits.repair.repair_ledger` from the sends the named spools'
delivery logs hold for the windows that matter (the largest of the configured
windows, at least 24 h), so the hourly and 24-hour limits stay honest after the
repair.  Without a spool to read there is no history: the doctor refuses rather
than silently rebuild an empty ledger, unless asked to (``--empty``).  It also
waits while a named spool's lock is held by a live run (exit 75): that run may be
sending through the ledger being replaced.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from carerix_smtp.config.file import Config
from carerix_smtp.doctor.history import SpoolHistory
from carerix_smtp.doctor.report import Check, fail, ok, warn
from carerix_smtp.doctor.spools import owner_name
from carerix_smtp.errors import CxsmtpError, ExitCode, StorageError
from carerix_smtp.limits.repair import LedgerHealth, LedgerRepair, check_ledger, repair_ledger

DAY = 86_400.0


def check_state_dir(state_dir: Path) -> Check:
    """Exists (or can be created) and can be written: a real probe file, not access(2),
    which says yes to root on a read-only file system."""
    name = "state dir"
    try:
        st = os.stat(state_dir)
    except FileNotFoundError:
        parent = _nearest_existing(state_dir)
        if os.access(parent, os.W_OK | os.X_OK):
            return ok(name, f"{state_dir}: not created yet; the first send creates it")
        return fail(
            name,
            f"{state_dir}: does not exist and cannot be created ({parent} is not writable "
            f"by uid {os.getuid()}); use --state-dir or CXSMTP_STATE_DIR",
            ExitCode.CANTCREAT,
        )
    except OSError as exc:
        return fail(name, f"{state_dir}: {exc.strerror}", ExitCode.CANTCREAT)
    if not stat.S_ISDIR(st.st_mode):
        return fail(name, f"{state_dir}: not a directory", ExitCode.CANTCREAT)
    try:
        fd, probe = tempfile.mkstemp(prefix=".cxsmtp-doctor-", dir=state_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return fail(
            name, str(StorageError.from_os_error(exc, "write in", state_dir)), ExitCode.CANTCREAT
        )
    mode = stat.S_IMODE(st.st_mode)
    detail = f"{state_dir}: writable, owner {owner_name(st.st_uid)}, mode {mode:04o}"
    if mode & 0o022:
        return warn(name, f"{detail}; others may write to it: chmod go-w {state_dir}")
    return ok(name, detail)


def _nearest_existing(path: Path) -> Path:
    for parent in path.absolute().parents:
        if parent.exists():
            return parent
    return Path("/")


def ledger_line(health: LedgerHealth) -> Check:
    """The ledger's line when it is not damaged (sound, missing or unreadable)."""
    name = "ledger"
    if health.state == "ok":
        return ok(name, f"{health.path}: sound ({health.detail})")
    if health.state == "missing":
        return ok(name, f"{health.path}: not created yet; the first send creates it")
    return fail(name, f"{health.path}: {health.detail}", ExitCode.CANTCREAT)


def history_window(config: Config | None) -> float:
    """How far back a restored send can still count: the largest window configured."""
    windows = [DAY]
    if config is not None:
        windows.append(config.settings.send_limit_window)
        for entry in config.servers.values():
            windows += [entry.rate_window, entry.batch_interval]
    return max(windows)


@dataclass(frozen=True)
class RepairRequest:
    """What the repair may use: the histories read, whether it may rebuild from none,
    and the live runs that must finish first (``spool (pid N)``)."""

    histories: Sequence[SpoolHistory]
    window: float
    empty_allowed: bool
    busy: Sequence[str]
    named: int = 0  # spools named on the command line (some may be unusable)


def check_and_repair_ledger(
    state_dir: Path, request_for: Callable[[], RepairRequest]
) -> list[Check]:
    """The ledger's health; when damaged, its repair (or why it was not repaired).
    ``request_for`` is called only then: reading the delivery logs takes time."""
    try:
        health = check_ledger(state_dir)
    except CxsmtpError as exc:
        return [fail("ledger", str(exc), exc.exit_code)]
    if health.state != "damaged":
        return [ledger_line(health)]
    damaged = f"{health.path}: damaged: {health.detail}"
    request = request_for()
    if request.busy:
        why = (
            f"postponed: {', '.join(request.busy)} holds its spool's lock and may be sending "
            "through this ledger; run cxsmtp doctor again when it has finished"
        )
        return _not_repaired(damaged, why, ExitCode.TEMPFAIL)
    if not request.histories and not request.empty_allowed:
        return _not_repaired(damaged, _why_not(request), ExitCode.CANTCREAT)
    sends = [send for history in request.histories for send in history.sends]
    try:
        repair = repair_ledger(state_dir, sends, horizon=request.window)
    except CxsmtpError as exc:
        return _not_repaired(damaged, str(exc), exc.exit_code)
    lines = [warn("ledger", damaged), ok("ledger repair", describe_repair(repair, request))]
    for history in request.histories:
        lines += [warn("ledger repair", f"not read: {what}") for what in history.unreadable]
    return lines


def _not_repaired(damaged: str, why: str, code: ExitCode) -> list[Check]:
    """Both lines fail with the repair's code: it says what to do next."""
    return [fail("ledger", damaged, code), fail("ledger repair", why, code)]


def _why_not(request: RepairRequest) -> str:
    hours = _hours(request.window)
    if request.named:
        return (
            "not done: none of the spools named can be read safely (see their lines); "
            f"their delivery logs hold the sends of the last {hours}"
        )
    return (
        f"not done: name the spools whose delivery logs hold the sends of the last {hours} "
        "(cxsmtp doctor SPOOL...), so the limits stay honest; or rebuild it with no "
        "history: cxsmtp doctor --empty"
    )


def describe_repair(repair: LedgerRepair, request: RepairRequest) -> str:
    """ "moved the damaged ledger to …; restored 815 sends of the last 24 h from 2
    spools: xs4all 812, backup 3"."""
    spools = len(request.histories)
    where = f" from {spools} spool(s)" if spools else " (no spool named: --empty)"
    per_server = ", ".join(f"{server} {n}" for server, n in sorted(repair.per_server.items()))
    moved = f"moved the damaged ledger to {repair.moved_to}" if repair.moved_to else "no file"
    return (
        f"{moved}; restored {repair.sends_restored} "
        f"send(s) of the last {_hours(request.window)}{where}"
        + (f": {per_server}" if per_server else "")
    )


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:g} h"
