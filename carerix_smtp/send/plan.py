"""``--dry-run`` and the limits part of ``cxsmtp status``: ``plan_send`` reads
(never claims) the due messages and plays the batches forward at current limits
(``Plan``, ``PlanEntry``, ``PlannedBatchInfo``); ``limits_status`` gives each
server's use of its limits and the ETA of its queue (``ServerLimits``).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from carerix_smtp.errors import ConfigError, MessageError
from carerix_smtp.limits.rule import Limits
from carerix_smtp.limits.schedule import Schedule, ServerQueue, simulate_schedule
from carerix_smtp.send.gates import LedgerSource, open_ledger
from carerix_smtp.send.report import SendOptions, iso_finite, listing_limit
from carerix_smtp.spool.listing import Candidate, DueQueue
from carerix_smtp.spool.records import iso
from carerix_smtp.spool.spool import Spool

if TYPE_CHECKING:
    from carerix_smtp.config.file import Config, ServerEntry
    from carerix_smtp.limits.ledger import LedgerStore


@dataclass
class PlannedBatchInfo:
    start: float
    count: int
    bytes: int
    last_at: float  # expected time of its last message

    def to_json(self) -> dict[str, Any]:
        return {
            "start": iso(self.start),
            "messages": self.count,
            "bytes": self.bytes,
            "last_at": iso(self.last_at),
        }


@dataclass
class PlanEntry:
    server: str
    host: str
    messages: int = 0
    bytes: int = 0
    sizes: list[int] = field(default_factory=list, repr=False)  # in sending order
    batches: list[PlannedBatchInfo] = field(default_factory=list)
    last_at: float | None = None  # when the last message should go (inf: never)
    blocked: str = ""  # why not (inf): e.g. email-send-limit 0

    def to_json(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "host": self.host,
            "messages": self.messages,
            "bytes": self.bytes,
            "batches": [b.to_json() for b in self.batches],
            "last_at": iso_finite(self.last_at),
            "blocked": self.blocked or None,
        }


@dataclass
class Plan:
    """``--dry-run``: what runs would do at current limits (nothing is changed)."""

    messages: int = 0
    bytes: int = 0
    servers: dict[str, PlanEntry] = field(default_factory=dict)
    invalid: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    waiting: int = 0  # deferred, not due yet
    next_retry: float | None = None
    at: float = 0.0  # when the plan was made
    last_at: float | None = None  # the last message of all (inf: never)

    def to_json(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "bytes": self.bytes,
            "at": iso(self.at),
            "last_at": iso_finite(self.last_at),
            "servers": [e.to_json() for e in self.servers.values()],
            "invalid": [{"file": f, "reason": r} for f, r in self.invalid],
            "waiting": self.waiting,
            "next_retry": iso(self.next_retry),
        }


def _route_candidates(
    spool: Spool,
    config: Config,
    candidates: Sequence[Candidate],
    server: str | None,
    plan: Plan,
    limit: int | None = None,
    *,
    read_all: bool = True,
) -> None:
    """Sort due messages by server into ``plan`` (sizes in sending order), noting the
    unusable ones.  ``read_all`` False: read a message's header only when its server
    depends on it (then unparseable files are not noticed)."""
    from carerix_smtp.spool.message import read_message  # email parsing: when needed

    fixed = _fixed_server(config, server)
    for candidate in candidates:
        if limit is not None and plan.messages >= limit:
            break
        directory = spool.dir("deferred") if candidate.kind == "deferred" else spool.path
        if candidate.file_type != "file":
            plan.invalid.append((candidate.name, f"{candidate.file_type}: not followed"))
            continue
        size = candidate.size
        entry = fixed
        if entry is None or read_all:
            try:
                message = read_message(directory / candidate.name)
            except MessageError as exc:
                plan.invalid.append((candidate.name, str(exc)))
                continue
            size = message.size
            entry = entry or config.server_for_sender(message.from_address)
        item = plan.servers.setdefault(entry.name, PlanEntry(entry.name, entry.host))
        item.messages += 1
        item.bytes += size
        item.sizes.append(size)
        plan.messages += 1
        plan.bytes += size


def _fixed_server(config: Config, server: str | None) -> ServerEntry | None:
    """The server every message goes to when that is known without reading any."""
    if server:
        return config.server(server)
    if len(config.servers) == 1 or not config.users:
        with contextlib.suppress(ConfigError):
            return config.default()
    return None


def _route_queue(spool: Spool, config: Config, queue: DueQueue, plan: Plan) -> None:
    """``_route_candidates`` for a status's queue (no header read): with one server
    for all, only the sizes of the regular files count, without a Candidate each."""
    fixed = _fixed_server(config, None)
    if fixed is None:
        _route_candidates(spool, config, queue.candidates(), None, plan, read_all=False)
        return
    sizes = queue.sizes()
    if sizes:
        item = plan.servers[fixed.name] = PlanEntry(fixed.name, fixed.host, sizes=sizes)
        item.messages = plan.messages = len(sizes)
        item.bytes = plan.bytes = sum(sizes)


def _schedule(
    config: Config, queues: Mapping[str, Sequence[int]], ledger: LedgerStore | None, now: float
) -> tuple[Schedule, dict[str, Limits]]:
    """The batches that would send ``queues`` at current limits (nothing is changed).

    The schedule is keyed by the entries' ledger keys (their account, issue 16):
    entries that share an account share its batches, so their queues are joined.
    """
    limits = {name: Limits.from_entry(config.server(name), config.settings) for name in queues}
    by_key: dict[str, tuple[Limits, list[int]]] = {}
    for name, sizes in queues.items():
        by_key.setdefault(config.server(name).ledger_key, (limits[name], []))[1].extend(sizes)
    if ledger is not None:
        return ledger.plan(by_key), limits
    server_queues = {key: ServerQueue(lim, sizes) for key, (lim, sizes) in by_key.items()}
    return simulate_schedule(server_queues, [], now), limits


def _fill_plan(plan: Plan, config: Config, ledger: LedgerStore | None, now: float) -> None:
    queues = {name: entry.sizes for name, entry in plan.servers.items() if entry.sizes}
    if not queues:
        return
    schedule, limits = _schedule(config, queues, ledger, now)
    plan.last_at = schedule.last_at
    for name, entry in plan.servers.items():
        batches = schedule.for_server(config.server(name).ledger_key)
        entry.batches = [PlannedBatchInfo(b.start, b.count, b.bytes, b.last_at) for b in batches]
        planned = sum(b.count for b in batches)
        if planned < entry.messages:
            entry.last_at = math.inf
            lim = limits[name]
            entry.blocked = (
                "email-send-limit is 0: sending is switched off"
                if lim.email_send_limit == 0
                else "the limits never allow the rest"
            )
        else:
            entry.last_at = max((b.last_at for b in batches), default=None)


def plan_send(
    spool_path: Path,
    config: Config,
    options: SendOptions | None = None,
    *,
    ledger: LedgerSource | None = None,
    clock: Callable[[], float] = time.time,
) -> Plan:
    """``--dry-run``: read (never claim) the due messages, say where each would go and,
    per server, the batches that would send them at current limits (from the ledger
    when given, else as if nothing had been sent) and when the last one would go."""
    options = options or SendOptions()
    spool = Spool(spool_path, clock=clock)
    spool.check(writable=False)
    if options.server:
        config.server(options.server)
    now = clock()
    plan = Plan(at=now)
    # Every due message is read and its size kept anyway: without --max-messages
    # the listing holds them all, in one pass (a window would list the spool again
    # for each 10,000).
    limit = listing_limit(options) if options.max_messages is not None else None
    candidates = spool.candidates(now, limit=limit)
    _route_candidates(spool, config, candidates, options.server, plan, options.max_messages)
    the_ledger, ours = open_ledger(ledger)
    try:
        _fill_plan(plan, config, the_ledger, now)
    finally:
        if ours and the_ledger is not None:
            the_ledger.close()
    plan.waiting, plan.next_retry = candidates.waiting, candidates.next_retry
    return plan


@dataclass
class ServerLimits:
    """``cxsmtp status``: one server's use of its limits and the ETA of its queue."""

    server: str
    host: str
    limits: Limits
    queued: int = 0  # due messages that go through this server
    queued_bytes: int = 0
    sent_hour: int = 0  # "hour": the rate window; "day": the send-limit window
    bytes_hour: int = 0
    sent_day: int = 0
    bytes_day: int = 0
    sent_day_all: int = 0  # all servers: what email-send-limit counts
    reserved: int = 0  # slots held by batches running now (other runs)
    window_allows: int = 0  # messages the windows allow right now
    next_window_at: float | None = None  # the next batch may start (now: <= at; inf: never)
    reason: str = ""  # why not now
    eta: float | None = None  # the last queued message (inf: never)
    batches_left: int = 0

    def to_json(self) -> dict[str, Any]:
        lim = self.limits
        return {
            "server": self.server,
            "host": self.host,
            "limits": {
                "rate": lim.rate_per_hour,
                "rate_window_s": lim.rate_window,
                "batch_messages": lim.batch_count_cap,
                "batch_bytes": lim.batch_max_bytes,
                "batch_interval_s": lim.batch_interval,
                "batch_deadline_s": lim.batch_deadline,
                "email_send_limit": lim.email_send_limit,
                "send_limit_window_s": lim.send_limit_window,
            },
            "queued": self.queued,
            "queued_bytes": self.queued_bytes,
            "sent_hour": self.sent_hour,
            "bytes_hour": self.bytes_hour,
            "sent_day": self.sent_day,
            "bytes_day": self.bytes_day,
            "sent_day_all_servers": self.sent_day_all,
            "running_batch_slots": self.reserved,
            "window_allows": self.window_allows,
            "next_window_at": iso_finite(self.next_window_at),
            "reason": self.reason or None,
            "eta": iso_finite(self.eta),
            "batches_left": self.batches_left,
        }


def limits_status(
    spool_path: Path,
    config: Config,
    *,
    ledger: LedgerSource | None = None,
    clock: Callable[[], float] = time.time,
    queue: DueQueue | None = None,
) -> list[ServerLimits]:
    """Per server with due messages or recent sends: usage, what the window allows
    now, the next window and the ETA of its queue.  Without a ledger (none yet):
    nothing was sent.  Reads the spool (headers only when the server depends on
    them); changes nothing.  ``queue``: the due queue a status pass listed already
    (SpoolStatus.queue), so the spool is not listed again."""
    spool = Spool(spool_path, clock=clock)
    spool.check(writable=False)
    now = clock()
    plan = Plan(at=now)
    if queue is not None:
        _route_queue(spool, config, queue, plan)
    else:
        _route_candidates(spool, config, spool.candidates(now), None, plan, read_all=False)
    the_ledger, ours = open_ledger(ledger)
    try:
        out: list[ServerLimits] = []
        queues = {name: entry.sizes for name, entry in plan.servers.items() if entry.sizes}
        schedule, _ = _schedule(config, queues, the_ledger, now)
        for name, entry in config.servers.items():
            lim = Limits.from_entry(entry, config.settings)
            item = ServerLimits(name, entry.host, lim)
            queued = plan.servers.get(name)
            if queued is not None:
                item.queued, item.queued_bytes = queued.messages, queued.bytes
            if the_ledger is not None:
                usage = the_ledger.usage(entry.ledger_key, lim)
                item.sent_hour, item.bytes_hour = usage.sent_hour, usage.bytes_hour
                item.sent_day, item.bytes_day = usage.sent_day, usage.bytes_day
                item.sent_day_all = usage.sent_day_all
                item.reserved = usage.reserved
                item.window_allows = usage.window_allows
                item.next_window_at = usage.next_batch_at
                item.reason = usage.reason
            else:
                item.window_allows = min(lim.rate_per_hour, lim.email_send_limit)
                item.next_window_at = now if lim.email_send_limit > 0 else math.inf
            if not (item.queued or item.sent_day or item.reserved):
                continue  # nothing queued for it, nothing sent through it lately
            batches = schedule.for_server(entry.ledger_key)
            item.batches_left = len(batches)
            if item.queued:
                planned = sum(b.count for b in batches)
                item.eta = (
                    math.inf
                    if planned < item.queued
                    else max((b.last_at for b in batches), default=None)
                )
            out.append(item)
        return out
    finally:
        if ours and the_ledger is not None:
            the_ledger.close()
