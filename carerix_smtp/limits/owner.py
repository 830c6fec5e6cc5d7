"""Who holds a batch reservation, and whether that process can still send.

A reservation records its owner (host name, kernel boot id, pid namespace, pid
and the process start time, which defeats pid reuse); :func:`owner_state`
tells a live owner from a dead one, and from one that cannot be checked here
(another container or machine, or no ``/proc``).  Store-independent: any
ledger store releases reservations by these answers (see
:mod:`carerix_smtp.limits.ledger`).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from enum import Enum

__all__ = ["Owner", "OwnerState", "owner_state"]


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> str | None:
    """The start time of ``pid`` (clock ticks since boot) or None if it is gone or a zombie."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    fields = stat.rpartition(")")[2].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):  # a zombie cannot send
        return None
    return fields[19]  # field 22 of proc(5); fields[0] is field 3


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Owner:
    """Who holds a reservation; empty strings where the platform cannot tell."""

    host: str
    boot: str
    pidns: str
    pid: int
    start: str

    @classmethod
    def current(cls) -> Owner:
        pid = os.getpid()
        try:
            pidns = os.readlink("/proc/self/ns/pid")
        except OSError:
            pidns = ""
        return cls(
            host=socket.gethostname(),
            boot=_read("/proc/sys/kernel/random/boot_id"),
            pidns=pidns,
            pid=pid,
            start=_process_start(pid) or "",
        )


class OwnerState(Enum):
    ALIVE = "alive"  # keep the reservation
    GONE = "gone"  # dead, machine not rebooted: presume messages in flight
    GONE_UNSURE = "gone-unsure"  # dead, may have lost unsynced rows: presume all
    UNKNOWN = "unknown"  # cannot check: keep until the lease expires


def owner_state(owner: Owner, me: Owner) -> OwnerState:
    if owner.boot and me.boot:
        if owner.boot != me.boot:
            # Same host name, other boot id: the machine rebooted since.
            return OwnerState.GONE_UNSURE if owner.host == me.host else OwnerState.UNKNOWN
        if not owner.pidns or owner.pidns != me.pidns or not owner.start:
            return OwnerState.UNKNOWN
        start = _process_start(owner.pid)
        return OwnerState.ALIVE if start == owner.start else OwnerState.GONE
    if owner.host == me.host and not owner.boot and not me.boot:
        # No /proc: a pid that is gone is proof; a pid that exists may be reused.
        return OwnerState.UNKNOWN if _pid_exists(owner.pid) else OwnerState.GONE_UNSURE
    return OwnerState.UNKNOWN
