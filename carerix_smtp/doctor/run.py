"""``run_doctor``: every check in order -- the configuration file, each server's
password source, the state dir, the rate ledger (repaired when damaged), then
each spool named -- and the report they add up to."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from carerix_smtp.config.file import Config
from carerix_smtp.doctor.history import SpoolHistory, read_history
from carerix_smtp.doctor.report import DoctorReport
from carerix_smtp.doctor.setup import check_config, check_servers
from carerix_smtp.doctor.shared_ledger import shared_ledger_checks
from carerix_smtp.doctor.spools import SpoolHealth, check_spool
from carerix_smtp.doctor.state import (
    RepairRequest,
    check_and_repair_ledger,
    check_state_dir,
    history_window,
)


@dataclass(frozen=True)
class DoctorOptions:
    """What to check.  ``empty``: with a damaged ledger and no spool named, rebuild
    it with no history (the limits start from zero)."""

    config_path: Path
    state_dir: Path
    spools: Sequence[Path] = ()
    empty: bool = False
    env: Mapping[str, str] = field(default_factory=lambda: os.environ)
    clock: Callable[[], float] = time.time


def run_doctor(options: DoctorOptions) -> DoctorReport:
    report = DoctorReport()
    config, line = check_config(options.config_path)
    report.checks.append(line)
    if config is not None:
        report.checks += check_servers(config, options.env)
    report.checks.append(check_state_dir(options.state_dir))
    spools = [check_spool(path, options.clock()) for path in _unique(options.spools)]

    def request() -> RepairRequest:
        return _repair_request(spools, config, options)

    settings = config.settings if config is not None else None
    shared = shared_ledger_checks(settings, options.state_dir, options.env)
    ledger_lines = shared or check_and_repair_ledger(options.state_dir, request)
    report.checks += ledger_lines
    report.repaired = any(c.name == "ledger repair" and c.status == "ok" for c in ledger_lines)
    for health in spools:
        report.checks += health.checks
    return report


def _repair_request(
    spools: Sequence[SpoolHealth], config: Config | None, options: DoctorOptions
) -> RepairRequest:
    window = history_window(config)
    since = options.clock() - window
    busy = [f"{h.path} (pid {h.holder})" for h in spools if h.holder is not None and h.holder_alive]
    # a spool whose layout cannot be trusted is not read (its log could be anyone's)
    histories = [_by_account(read_history(h.path, since), config) for h in spools if h.usable]
    return RepairRequest(histories, window, options.empty, busy, named=len(spools))


def _by_account(history: SpoolHistory, config: Config | None) -> SpoolHistory:
    """The log names the server entry; the ledger counts its account (issue 16)."""
    if config is not None:
        keys = {name: entry.ledger_key for name, entry in config.servers.items()}
        history.sends = [
            dataclasses.replace(send, server=keys.get(send.server, send.server))
            for send in history.sends
        ]
    return history


def _unique(paths: Sequence[Path]) -> list[Path]:
    """The spools named, each once (the same directory twice would count its sends twice)."""
    seen: set[str] = set()
    out: list[Path] = []
    for path in paths:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            out.append(Path(path))
    return out
