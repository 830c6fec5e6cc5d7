"""``cxsmtp status`` as data: the spool's counts and who did not get what, per
server the limits, the messages sent per hour over the last day (ledger) and the
last error (history), and the last run.  Read-only; the CLI renders it."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from carerix_smtp.errors import ConfigError
from carerix_smtp.send.history import RunHistory, load_history
from carerix_smtp.spool.records import iso
from carerix_smtp.spool.spool import Spool

# The limits' part (ledger, schedule) is imported when there is a server to show.
if TYPE_CHECKING:
    from carerix_smtp.config.file import Config
    from carerix_smtp.send.gates import LedgerSource
    from carerix_smtp.send.plan import ServerLimits
    from carerix_smtp.spool.listing import SpoolStatus

HOURS = 24  # the chart's slots: one per hour of the last day


@dataclass
class StatusReport:
    spool: SpoolStatus
    history: RunHistory
    servers: list[ServerLimits] = field(default_factory=list)
    hourly: dict[str, list[int]] = field(default_factory=dict)  # server -> HOURS counts
    limits_error: str = ""  # the config could not be read: no limits shown
    at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        data = self.spool.to_json()
        data["last_run"] = _run_json(self.history)
        data["server_errors"] = [
            {
                "server": name,
                "message": error.message,
                "kind": error.kind,
                "since": iso(error.first_seen),
                "last_seen": iso(error.last_seen),
                "recovered_at": iso(error.recovered_at),
            }
            for name, error in sorted(self.history.servers.items())
        ]
        data["servers"] = [
            {**item.to_json(), "sent_per_hour": self.hourly.get(item.server, [0] * HOURS)}
            for item in self.servers
        ]
        if self.limits_error:
            data["limits_error"] = self.limits_error
        return data


def _run_json(history: RunHistory) -> dict[str, Any] | None:
    run = history.last_run
    if run is None:
        return None
    return {
        "when": iso(run.when),
        "status": run.status,
        "sent": run.sent,
        "deferred": run.deferred,
        "failed": run.failed,
        "exit_code": run.exit_code,
    }


def collect_status(
    spool_path: Path,
    load_config: Callable[[], Config],
    state_dir: Path,
    *,
    ledger: LedgerSource | None = None,
    clock: Callable[[], float] = time.time,
) -> StatusReport:
    """Everything ``cxsmtp status`` shows.  A config that cannot be read still gives
    the spool's part (``limits_error`` says why the rest is missing)."""
    # A pass over 100,000 files makes a few hundred thousand short-lived objects (stat
    # results, rows) and no cycles: the cyclic GC would only walk them (~10 % of it).
    paused = gc.isenabled()
    gc.disable()
    try:
        return _collect(spool_path, load_config, state_dir, ledger, clock)
    finally:
        if paused:
            gc.enable()


def status_cache_path(state_dir: Path, spool_path: Path) -> Path:
    """The user's status cache of one spool (spool/status_cache.py): in the state
    directory, named after the spool's absolute path."""
    import hashlib

    key = hashlib.sha256(os.fsencode(os.path.abspath(spool_path))).hexdigest()[:24]
    return state_dir / "status-cache" / key


def _collect(
    spool_path: Path,
    load_config: Callable[[], Config],
    state_dir: Path,
    ledger: LedgerSource | None,
    clock: Callable[[], float],
) -> StatusReport:
    now = clock()
    spool = Spool(spool_path, clock=clock).status(
        now, cache=status_cache_path(state_dir, spool_path)
    )
    report = StatusReport(spool, load_history(state_dir))
    report.at = now
    try:
        config = load_config()
    except ConfigError as exc:
        report.limits_error = str(exc)
        return report
    if not config.servers:  # no server yet: nothing to say about limits
        return report
    from carerix_smtp.limits.hourly import SendSource, sends_per_hour
    from carerix_smtp.send.gates import open_ledger
    from carerix_smtp.send.plan import limits_status

    the_ledger, ours = open_ledger(ledger)
    try:
        report.servers = limits_status(
            spool_path, config, ledger=the_ledger, clock=clock, queue=report.spool.queue
        )
        if the_ledger is not None:
            # the ledger counts per account (issue 16); the chart is per server entry
            by_key = sends_per_hour(cast("SendSource", the_ledger), now, HOURS)
            report.hourly = {
                name: by_key[entry.ledger_key]
                for name, entry in config.servers.items()
                if entry.ledger_key in by_key
            }
    finally:
        if ours and the_ledger is not None:
            the_ledger.close()
    return report
