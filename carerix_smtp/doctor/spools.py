"""One spool, read only: its layout (real directories, owners, modes), its lock (who
holds it, alive or not), a pending replay (journal lines not checkpointed, messages
left in claims/ by a killed run) and the queue.

Nothing here recovers, moves or locks anything: ``cxsmtp send`` finishes a pending
replay itself (under its lock, :mod:`carerix_smtp.spool.recovery`).  The one
exception is how :meth:`SpoolLayout.holder_pid` asks whether the lock is held: a
non-blocking shared flock, taken and dropped at once when nobody holds it, which
never disturbs a live holder.
"""

from __future__ import annotations

import os
import pwd
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from carerix_smtp.doctor.report import Check, fail, ok, warn
from carerix_smtp.errors import CxsmtpError, ExitCode, StorageError
from carerix_smtp.spool.journal import Journal
from carerix_smtp.spool.layout import SpoolLayout
from carerix_smtp.spool.listing import list_dir


@dataclass
class SpoolHealth:
    """What the doctor found in one spool, for its lines and for the ledger repair."""

    path: Path
    checks: list[Check] = field(default_factory=list)
    usable: bool = True  # the layout can be trusted (no symlink, a directory)
    holder: int | None = None  # pid holding the lock (-1: held, pid unknown)
    holder_alive: bool = False


def owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (signal 0 checks without sending)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _subdirs(layout: SpoolLayout) -> list[Path]:
    """The directories ``SpoolLayout.prepare`` creates, outermost first."""
    return [
        layout.dir("sent"),
        layout.dir("failed"),
        layout.dir("deferred"),
        layout.dir("tmp"),
        layout.state_dir,
        layout.claims_dir,
        *layout.claim_dirs.values(),
    ]


def _state_files(layout: SpoolLayout) -> list[Path]:
    log = layout.delivery_log_path
    return [layout.lock_path, layout.journal_path, log, log.with_suffix(".log.1")]


def check_layout(layout: SpoolLayout, health: SpoolHealth) -> None:
    """The spool directory and its subdirectories: real directories, who owns them."""
    name = f"spool {layout.path}"
    try:
        layout.check(writable=False)
        top = os.stat(layout.path)
    except (CxsmtpError, OSError) as exc:
        health.usable = False
        health.checks.append(fail(name, str(exc), ExitCode.CONFIG))
        return
    owner = owner_name(top.st_uid)
    problems = len(health.checks)
    if not os.access(layout.path, os.W_OK | os.X_OK):
        health.checks.append(
            warn(
                name, f"not writable by this user (uid {os.getuid()}); cxsmtp send runs as {owner}"
            )
        )
    missing: list[str] = []
    for path in _subdirs(layout):
        _check_entry(layout, path, True, top.st_uid, health, missing)
    for path in _state_files(layout):
        _check_entry(layout, path, False, top.st_uid, health, missing)
    if len(health.checks) == problems:
        created = f"; created by the next send: {', '.join(missing)}" if missing else ""
        health.checks.append(
            ok(name, f"owner {owner}, mode {stat.S_IMODE(top.st_mode):04o}; no symlinks{created}")
        )


def _check_entry(
    layout: SpoolLayout,
    path: Path,
    is_dir: bool,
    top_uid: int,
    health: SpoolHealth,
    missing: list[str],
) -> None:
    """One subdirectory or state file: a symlink or a non-directory fails (nothing
    is read through it); a foreign owner or a mode others may write to warns."""
    name = f"spool {layout.path}"
    rel = str(path.relative_to(layout.path))
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if is_dir:
            missing.append(f"{rel}/")
        return
    except OSError as exc:
        health.checks.append(fail(name, f"{rel}: {exc.strerror}", ExitCode.CONFIG))
        health.usable = False
        return
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(path)
        health.usable = False
        health.checks.append(
            fail(
                name,
                f"{rel} is a symbolic link (to {target}): cxsmtp never moves or writes files "
                f"through one; replace it with a real {'directory' if is_dir else 'file'}",
                ExitCode.CONFIG,
            )
        )
        return
    if is_dir and not stat.S_ISDIR(st.st_mode):
        health.usable = False
        health.checks.append(fail(name, f"{rel} is not a directory", ExitCode.CONFIG))
        return
    mode = stat.S_IMODE(st.st_mode)
    private = path.is_relative_to(layout.state_dir)
    if st.st_uid != top_uid:
        health.checks.append(
            warn(
                name,
                f"{rel} is owned by {owner_name(st.st_uid)}, the spool by {owner_name(top_uid)}",
            )
        )
    if mode & (0o022 if private else 0o002):
        others = "group and others" if private else "others"
        health.checks.append(
            warn(name, f"{rel} (mode {mode:04o}) is writable by {others}: chmod go-w {path}")
        )
    elif is_dir and not os.access(path, os.W_OK | os.X_OK):
        health.checks.append(warn(name, f"{rel} is not writable by this user (uid {os.getuid()})"))


def check_lock(layout: SpoolLayout, health: SpoolHealth) -> None:
    """Who holds the spool's lock (the pid the holder wrote into it), and whether it lives."""
    name = f"spool {layout.path} lock"
    holder = layout.holder_pid()
    health.holder = holder
    if holder is None:
        health.checks.append(ok(name, "free (no run in progress)"))
        return
    if holder < 0:
        health.holder_alive = True  # the flock is held: its holder exists
        health.checks.append(warn(name, "held by a process that wrote no pid into it"))
        return
    health.holder_alive = pid_alive(holder)
    since = _held_since(layout.lock_path)
    if health.holder_alive:
        health.checks.append(ok(name, f"held by pid {holder}{since} (alive: a run is in progress)"))
    else:
        health.checks.append(
            warn(name, f"held by pid {holder}{since}, a process not visible from here")
        )


def _held_since(lock_path: Path) -> str:
    """When the holder wrote its pid (the lock file's mtime), for a hung run."""
    try:
        mtime = os.stat(lock_path).st_mtime
    except OSError:
        return ""
    held = max(0.0, time.time() - mtime)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(mtime))
    return f" since {stamp} ({_ago(held)})"


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def check_replay(layout: SpoolLayout, health: SpoolHealth) -> None:
    """Journal lines not checkpointed and messages left in claims/: what the next run
    finishes (read only: the journal is parsed, nothing is moved)."""
    name = f"spool {layout.path} replay"
    lines = len(Journal(layout, threading.Lock()).read())
    claimed = [p for p in layout.claimed() if not p.name.startswith(".")]
    if not lines and not claimed:
        health.checks.append(ok(name, "nothing pending (the journal is checkpointed)"))
        return
    found = f"{lines} journaled outcome(s) not checkpointed, {len(claimed)} message(s) in claims/"
    if health.holder is not None:
        health.checks.append(ok(name, f"{found}: in progress (the lock is held)"))
        return
    health.checks.append(
        warn(
            name,
            f"{found} left by a run that stopped; the next cxsmtp send finishes them "
            "(a claimed message without a journal line is queued again: a possible duplicate)",
        )
    )


def check_queue(layout: SpoolLayout, health: SpoolHealth, now: float) -> None:
    """Queued, deferred (and how many are due) and failed messages: one scandir each."""
    queued = sum(1 for _ in list_dir(layout.path))
    deferred = [entry[0] for entry in list_dir(layout.dir("deferred"))]
    failed = sum(1 for _ in list_dir(layout.dir("failed")))
    due = sum(1 for when in deferred if when <= now)
    detail = f"queued {queued}, deferred {len(deferred)} ({due} due now), failed {failed}"
    health.checks.append(ok(f"spool {layout.path} queue", detail))


def check_spool(path: Path, now: float | None = None) -> SpoolHealth:
    """Every line about one spool; the lock, replay and queue only when its layout
    can be trusted (a symlinked subdirectory is not read through)."""
    layout = SpoolLayout(Path(path), durable=False, clock=time.time)
    health = SpoolHealth(layout.path)
    check_layout(layout, health)
    if not health.usable:
        return health
    try:
        check_lock(layout, health)
        check_replay(layout, health)
        check_queue(layout, health, time.time() if now is None else now)
    except OSError as exc:  # e.g. a subdirectory this user may not read
        reason = StorageError.from_os_error(exc, "read")
        health.checks.append(fail(f"spool {layout.path}", str(reason), ExitCode.CONFIG))
    return health
