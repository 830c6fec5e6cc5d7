"""What the send runs of a state dir remember between runs: the last run (when, status,
counts, exit code) and the last error per server (``STATE_DIR/send-history.json``).

cron runs ``cxsmtp send`` every 5 minutes and mails whatever it prints, so an error
that repeats on every run would be 288 mails a day.  With ``--quiet`` a server's
error is printed when it first appears, when it changes, and once a day after that
(with "still failing since ..."); a line says when the server works again.  Without
``--quiet`` every run prints it, and it is recorded all the same.  ``cxsmtp status``
reads the file (``load_history``) to show the last run and the servers' errors.

The file is written atomically (a temporary file in the state dir, fsync, rename),
0600, never through a symlink, under an flock on the state dir so that runs on other
spools do not lose each other's updates.  It is a convenience: a file that cannot be
read or written is logged as a warning and the run goes on (its exit code is the run's).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from carerix_smtp.send.report import RunSummary, ServerFailure, ServerNotice

log = logging.getLogger(__name__)

FILENAME = "send-history.json"
VERSION = 1
REPEAT_EVERY = 24 * 3600.0  # --quiet: an unchanged error is printed again once a day
# Failures that `cxsmtp test NAME` diagnoses phase by phase (DNS, TCP, TLS, AUTH).
DIAGNOSABLE = frozenset({"connect", "tls", "auth"})


def local_iso(ts: float) -> str:
    """``2026-11-30T03:10:00+01:00``: local time with its offset, seconds precision."""
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


def human_duration(seconds: float) -> str:
    """3725 -> "1 h 2 min", 90000 -> "1 d 1 h", 42 -> "42 s"."""
    total = max(0, round(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    if minutes:
        return f"{minutes} min"
    return f"{secs} s"


@dataclass
class RunRecord:
    """The last run: when it ended, its status word and counts, its exit code."""

    when: float
    status: str
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    exit_code: int = 0

    @property
    def outcome(self) -> str:
        return self.status


@dataclass
class ServerError:
    """A server's last error; ``recovered_at`` is set once a run reached it again."""

    message: str
    kind: str
    first_seen: float
    last_seen: float
    last_printed: float
    recovered_at: float | None = None


@dataclass
class RunHistory:
    last_run: RunRecord | None = None
    servers: dict[str, ServerError] = field(default_factory=dict)

    def update(self, summary: RunSummary, *, now: float, quiet: bool) -> list[ServerNotice]:
        """Record ``summary``; what to tell about the servers' errors and recoveries."""
        self.last_run = RunRecord(
            when=now,
            status=summary.status,
            sent=summary.sent,
            deferred=summary.deferred,
            failed=summary.failed,
            exit_code=int(summary.exit_code),
        )
        notices: list[ServerNotice] = []
        failed = set()
        for failure in summary.server_failures:
            if failure.kind == "deferring":  # the provider's pace, not an error
                continue
            failed.add(failure.server)
            notices.append(self.failed(failure, now=now, quiet=quiet))
        for name in summary.servers_reached:
            if name not in failed:
                notice = self.reached(name, now=now)
                if notice is not None:
                    notices.append(notice)
        return notices

    def failed(self, failure: ServerFailure, *, now: float, quiet: bool) -> ServerNotice:
        old = self.servers.get(failure.server)
        ongoing = old is not None and old.recovered_at is None
        if old is None or not ongoing:
            entry = ServerError(failure.message, failure.kind, now, now, now)
            news = True
        else:
            entry = old
            news = old.message != failure.message or now - old.last_printed >= REPEAT_EVERY
            entry.message, entry.kind = failure.message, failure.kind
        entry.last_seen = now
        shown = news or not quiet
        if shown:
            entry.last_printed = now
        self.servers[failure.server] = entry
        text = failure.message
        if ongoing:
            text += f" (still failing since {local_iso(entry.first_seen)})"
        if failure.kind in DIAGNOSABLE:
            text += f"; run `cxsmtp test {failure.server}` for a diagnosis"
        return ServerNotice(failure.server, "error", text, shown)

    def reached(self, name: str, *, now: float) -> ServerNotice | None:
        old = self.servers.get(name)
        if old is None or old.recovered_at is not None:
            return None
        old.recovered_at = now
        text = (
            f"server {name} works again after {human_duration(now - old.first_seen)} "
            f"(failing since {local_iso(old.first_seen)})"
        )
        return ServerNotice(name, "info", text, True)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "last_run": None if self.last_run is None else asdict(self.last_run),
            "servers": {name: asdict(error) for name, error in sorted(self.servers.items())},
        }

    @classmethod
    def from_json(cls, data: Any) -> RunHistory:
        """Raises ValueError/TypeError/KeyError for a file that is not ours."""
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise ValueError("not a cxsmtp send history (version 1)")
        last = data.get("last_run")
        servers = data.get("servers") or {}
        if not isinstance(servers, dict):
            raise ValueError("'servers' is not an object")
        return cls(
            last_run=None if last is None else RunRecord(**last),
            servers={str(name): ServerError(**error) for name, error in servers.items()},
        )


# --- the file ----------------------------------------------------------------------


def load_history(state_dir: Path) -> RunHistory:
    """The state dir's history; empty when there is none (or it is unusable: logged)."""
    try:
        fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return RunHistory()  # no state dir yet: no run recorded
    try:
        return _read(fd, state_dir)
    except OSError as exc:
        log.warning("cannot read %s: %s", state_dir / FILENAME, exc.strerror or exc)
        return RunHistory()
    finally:
        os.close(fd)


def record_run(
    state_dir: Path, summary: RunSummary, *, now: float, quiet: bool
) -> list[ServerNotice]:
    """Add ``summary`` to the state dir's history; the notices to print (see
    ``RunHistory.update``).  A history that cannot be written is a warning only."""
    try:
        with _locked_dir(state_dir) as fd:
            history = _read(fd, state_dir)
            notices = history.update(summary, now=now, quiet=quiet)
            _write(fd, state_dir, history)
            return notices
    except OSError as exc:
        log.warning("cannot record the run in %s: %s", state_dir / FILENAME, exc.strerror or exc)
        return RunHistory().update(summary, now=now, quiet=quiet)


@contextlib.contextmanager
def _locked_dir(state_dir: Path) -> Iterator[int]:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by close (and by the kernel on a crash)
        yield fd
    finally:
        os.close(fd)


def _read(dir_fd: int, state_dir: Path) -> RunHistory:
    path = state_dir / FILENAME
    try:
        fd = os.open(FILENAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return RunHistory()
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):
            raise OSError(exc.errno, "a symbolic link; it is not used") from None
        log.warning("cannot read %s: %s; starting a new one", path, exc.strerror or exc)
        return RunHistory()
    try:
        with os.fdopen(fd, "rb") as handle:
            return RunHistory.from_json(json.loads(handle.read(1 << 20)))
    except (ValueError, TypeError, KeyError) as exc:
        log.warning("%s is damaged (%s); starting a new one", path, exc)
        return RunHistory()


def _write(dir_fd: int, state_dir: Path, history: RunHistory) -> None:
    data = (json.dumps(history.to_json(), indent=1) + "\n").encode()
    temp = f".{FILENAME}.{os.urandom(6).hex()}.tmp"  # (secrets: 5 ms to import)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, 0o600, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(fd, 0o600)  # whatever the umask
            handle.write(data)
            handle.flush()
            os.fsync(fd)
        # rename() replaces a name, it never writes through a symlink at the target
        os.replace(temp, FILENAME, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=dir_fd)
        raise
    os.fsync(dir_fd)
