"""What goes into a send run and what comes out of it: ``SendOptions``, the
``ProgressEvent`` stream, one server's ``BatchReport``, the ``RunSummary`` (its
status, exit code and JSON), and what a run carries across its passes (``Totals``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from carerix_smtp.errors import ExitCode
from carerix_smtp.spool.listing import DEFAULT_CANDIDATE_LIMIT
from carerix_smtp.spool.records import iso

if TYPE_CHECKING:
    from carerix_smtp.config.oauth import Credential

DEFAULT_MAX_RECONNECTS = 3
# A server that defers this many whole messages in a row (451 "try later", rate
# limited) is left alone for the rest of the run; its messages stay queued.
DEFAULT_STOP_AFTER_DEFERRALS = 5


@dataclass
class SendOptions:
    server: str | None = None  # --server: every message through this one
    max_messages: int | None = None  # for the whole run (every pass of --loop)
    dry_run: bool = False
    loop: bool = False  # --loop: batch after batch until nothing is due
    deadline: float | None = None  # seconds after the start; the rest stays queued
    max_reconnects: int = DEFAULT_MAX_RECONNECTS
    stop_after_deferrals: int = DEFAULT_STOP_AFTER_DEFERRALS
    local_hostname: str | None = None


@dataclass
class ProgressEvent:
    kind: str  # "start" | "message" | "wait" | "end"
    total: int = 0
    done: int = 0
    name: str = ""
    outcome: str = ""  # sent | deferred | failed | skipped
    size: int = 0
    until: float | None = None  # "wait": sleeping until then (epoch seconds)
    reason: str = ""  # "wait": why
    server: str = ""  # "message": the server it went through ("" unusable file)


# status -> exit code (SPEC §3; the README lists them).  "locked", "nothing-to-do",
# "limit" (rest later), "deferred" (a server's 4xx: retried later, as Postfix does) and
# "ok" are all 0: nothing is wrong.  75 is for a server that could not be used at all
# (unreachable, TLS, greeting refused, connection lost again and again) and signals.
STATUS_EXIT = {
    "auth-failed": ExitCode.NOPERM,
    "config-error": ExitCode.CONFIG,
    "interrupted": ExitCode.TEMPFAIL,
    "failed": ExitCode.DATAERR,
    "unreachable": ExitCode.TEMPFAIL,
}


@dataclass
class BatchReport:
    """One server's batch in one pass.  ``limited_by``: why it ended with messages left
    ("count", "bytes", "deadline" -- the batch's own limits; "rate", "send-limit",
    "interval", "reserved" -- the windows; None: the server's queue was done)."""

    server: str
    started_at: float | None = None  # None: no batch was granted
    sent: int = 0  # counted in the ledger (accepted, or possibly delivered)
    bytes: int = 0
    max_messages: int = 0  # the grant
    planned: int = 0  # what the batch sizing made of the queue
    planned_by: str = ""  # count | bytes | deadline | queue
    deadline_cut: bool = False
    limited_by: str | None = None
    next_window_at: float | None = None  # math.inf: never (email-send-limit 0)
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "started_at": iso(self.started_at),
            "sent": self.sent,
            "bytes": self.bytes,
            "max_messages": self.max_messages,
            "planned": self.planned,
            "planned_by": self.planned_by,
            "deadline_cut": self.deadline_cut,
            "limited_by": self.limited_by,
            "next_window_at": iso_finite(self.next_window_at),
            "reason": self.reason,
        }


def iso_finite(ts: float | None) -> str | None:
    return None if ts is None or math.isinf(ts) else iso(ts)


@dataclass
class ServerFailure:
    """What made a server unusable in a run.  ``kind``: "connect" (unreachable, timed
    out, greeting refused), "tls", "auth", "policy", "dropped" (the connection was lost
    again and again), or "deferring" (it deferred message after message -- its pace,
    not an error)."""

    server: str
    kind: str
    message: str  # "server NAME: ..."


@dataclass
class ServerNotice:
    """A line about a server for the run's output (send/history.py decides which):
    ``level`` "error" or "info"; ``shown`` False: an unchanged error already told."""

    server: str
    level: str
    text: str
    shown: bool = True


@dataclass
class ServerUse:
    """One server's part in a run (issue 14: fallback relays): what it sent, why it
    was skipped (``skipped_reason``) and where its messages went then (``fallback``;
    None: they stayed queued), and for which servers it took messages (``used_for``)."""

    name: str
    sent: int = 0
    skipped_reason: str | None = None
    fallback: str | None = None
    used_for: list[str] = field(default_factory=list)


@dataclass
class RunSummary:
    """What one run did.  ``status`` is one word; ``exit_code`` follows SPEC §3."""

    status: str = "ok"
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    remaining: int = 0
    bytes: int = 0
    elapsed_s: float = 0.0
    partial: int = 0  # deferred, yet sent to some recipients (others still pending)
    recipients_failed: int = 0  # refused for good in messages sent to the others
    # what the spool holds after the run: not tried yet, waiting for a retry
    left_queued: int = 0
    left_deferred: int = 0
    possible_duplicates: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # run-level: servers, auth, signals
    failures: list[str] = field(default_factory=list)  # "NAME: reason" per failed message
    next_retry: float | None = None
    lock_holder: int | None = None
    # limits: the batches of every pass; what held back the messages still queued
    batches: list[BatchReport] = field(default_factory=list)
    deadline_cut: bool = False  # a batch deadline cut a batch short
    limited_by: str | None = None  # see BatchReport, or "max-messages"
    limit_reason: str = ""
    next_window_at: float | None = None  # math.inf: never
    # per server: what made it unusable in this run; which servers were reached
    server_failures: list[ServerFailure] = field(default_factory=list)
    servers_reached: list[str] = field(default_factory=list)
    notices: list[ServerNotice] = field(default_factory=list)  # send/history.py
    servers: dict[str, ServerUse] = field(default_factory=dict)  # by name (issue 14)

    def server_use(self, name: str) -> ServerUse:
        """``servers[name]``, made on first use (callers hold the run's lock)."""
        use = self.servers.get(name)
        if use is None:
            use = self.servers[name] = ServerUse(name)
        return use

    def fallback_notes(self) -> list[str]:
        """One line per server skipped for a fallback in this run."""
        return [
            f"server {u.name} was skipped ({u.skipped_reason}); its mail went through "
            f"fallback {u.fallback} ({self.servers[u.fallback].sent} sent there)"
            for u in sorted(self.servers.values(), key=lambda u: u.name)
            if u.fallback is not None and u.fallback in self.servers
        ]

    @property
    def exit_code(self) -> ExitCode:
        """SPEC §3 / sysexits: see ``STATUS_EXIT``."""
        return STATUS_EXIT.get(self.status, ExitCode.OK)

    def settle(self, *, unreachable: bool) -> None:
        """The final status when the run was not stopped by auth or a signal:
        something failed (65) > a server unreachable (75) > deferred (0) > rest later (0)
        > ok."""
        if self.status in ("auth-failed", "config-error", "interrupted", "locked", "nothing-to-do"):
            return
        if self.failed or self.recipients_failed:
            self.status = "failed"
        elif unreachable:
            self.status = "unreachable"
        elif self.deferred:
            self.status = "deferred"
        elif self.remaining:
            self.status = "limit"
        else:
            self.status = "ok"

    def note_limits(self, reports: Sequence[BatchReport], max_hit: int | None) -> None:
        """What held back the rest after a pass: the earliest next window wins."""
        self.limited_by, self.limit_reason, self.next_window_at = None, "", None
        if max_hit is not None:
            self.limited_by, self.limit_reason = "max-messages", f"--max-messages {max_hit}"
            return
        limited = [r for r in reports if r.limited_by is not None]
        if not limited:
            return
        first = min(
            limited, key=lambda r: math.inf if r.next_window_at is None else r.next_window_at
        )
        self.limited_by, self.limit_reason = first.limited_by, first.reason
        self.next_window_at = first.next_window_at

    def note_backlog(self, queued: Iterable[Any], deferred: Iterable[Any]) -> None:
        """What is left in the spool (``Spool.scan`` of the queue and deferred/; a
        deferred entry's mtime is its next attempt): deferred mail is not hidden in
        ``remaining``."""
        self.left_queued = sum(1 for _ in queued)
        self.left_deferred, self.next_retry = 0, None
        for entry in deferred:
            self.left_deferred += 1
            if self.next_retry is None or entry.mtime < self.next_retry:
                self.next_retry = entry.mtime

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "sent": self.sent,
            "deferred": self.deferred,
            "failed": self.failed,
            "remaining": self.remaining,
            "bytes": self.bytes,
            "elapsed_s": round(self.elapsed_s, 3),
            "partial": self.partial,
            "recipients_failed": self.recipients_failed,
            "left": {
                "queued": self.left_queued,
                "deferred": self.left_deferred,
                "next_retry": iso(self.next_retry),
            },
            "possible_duplicates": self.possible_duplicates,
            "errors": self.errors,
            "failures": sorted(self.failures),
            "next_retry": iso(self.next_retry),
            "deadline_cut": self.deadline_cut,
            "limited_by": self.limited_by,
            "limit_reason": self.limit_reason,
            "next_window_at": iso_finite(self.next_window_at),
            "batches": [b.to_json() for b in self.batches],
            "server_errors": [asdict(f) for f in self.server_failures],
            "servers": [asdict(self.servers[name]) for name in sorted(self.servers)],
        }


@dataclass
class Totals:
    """What lives across the passes of one run."""

    admitted: int = 0  # messages let through to the wire (--max-messages counts these)
    passwords: dict[str, Credential | None] = field(default_factory=dict)  # or token source


def listing_limit(options: SendOptions) -> int:
    """How many queue entries a listing holds at a time (spool.listing.CandidateList): no
    more than ``--max-messages`` can use; the rest is listed again if needed."""
    if options.max_messages is not None:
        return max(1, min(options.max_messages, DEFAULT_CANDIDATE_LIMIT))
    return DEFAULT_CANDIDATE_LIMIT
