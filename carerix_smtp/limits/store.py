"""What both ledger stores do the same way around their own transactions
(:class:`~carerix_smtp.limits.sqlite.Ledger`, one machine;
:class:`~carerix_smtp.limits.postgres.PostgresLedger`, several): who this process
is, sleeping through short waits, the grants this process holds, and the usage and
schedule made from the windows' state once a store has read it."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence

from carerix_smtp.limits.ledger import BatchGrant, Clock, Usage, Wait
from carerix_smtp.limits.owner import Owner
from carerix_smtp.limits.rule import (
    BatchSize,
    Decision,
    Limits,
    WindowState,
    next_batch,
    plan_batch_size,
    window_allowance,
)
from carerix_smtp.limits.schedule import Schedule, ServerQueue, simulate_schedule
from carerix_smtp.limits.sqlite_state import LoadedState


class StoreBase:
    """The part of a ledger store that does not touch its database.  A store sets
    these attributes in its ``__init__`` and implements ``open_batch`` and ``usage``;
    ``NOUN`` is what its log lines call the key of a grant."""

    NOUN = "server"
    clock: Clock
    confirm_group: int
    confirm_group_seconds: float
    _owner: Owner | None
    _owner_pid: int
    _current_owner: Owner | None
    _grants: list[BatchGrant]

    @property
    def owner(self) -> Owner:
        if self._owner is not None:
            return self._owner
        pid = os.getpid()
        if self._current_owner is None or self._owner_pid != pid:
            self._current_owner = Owner.current()
            self._owner_pid = pid
        return self._current_owner

    def open_batch(
        self,
        server: str,
        limits: Limits,
        queued_sizes: Sequence[int] = (),
        *,
        connections: int = 1,
    ) -> BatchGrant | Wait:
        raise NotImplementedError

    def usage(self, server: str, limits: Limits) -> Usage:
        raise NotImplementedError

    def acquire(
        self,
        server: str,
        limits: Limits,
        queued_sizes: Sequence[int] = (),
        *,
        sleep: Callable[[float], None],
        max_wait: float | None = None,
        connections: int = 1,
    ) -> BatchGrant | Wait:
        """:meth:`open_batch`, sleeping (with the injected ``sleep``) through short waits.

        Waits longer than ``max_wait`` (default: the batch deadline) are
        returned to the caller; ``math.inf`` sleeps until a batch is granted.
        """
        limit = limits.batch_deadline if max_wait is None else max_wait
        while True:
            result = self.open_batch(server, limits, queued_sizes, connections=connections)
            if isinstance(result, BatchGrant):
                return result
            delay = result.until - self.clock()
            if math.isinf(result.until) or delay > limit:
                return result
            sleep(max(0.0, delay))

    def next_window_at(self, server: str, limits: Limits) -> float:
        """When the next batch of ``server`` may start (now if now; ``math.inf``: never)."""
        return self.usage(server, limits).next_batch_at

    def eta(self, server: str, limits: Limits, queued_sizes: Sequence[int]) -> Schedule:
        """:meth:`plan` for one server: ``.last_at`` is when the last message should go."""
        return self.plan({server: (limits, queued_sizes)})

    def plan(self, queues: Mapping[str, tuple[Limits, Sequence[int]]]) -> Schedule:
        raise NotImplementedError

    def flush(self) -> None:
        """Write the confirmed sends that this process's open grants still hold in memory.

        Done before every read of the windows, so this process always sees its
        own sends (another process counts them as reserved slots meanwhile).
        """
        for grant in list(self._grants):
            grant.flush()

    def _grant(
        self,
        server: str,
        limits: Limits,
        now: float,
        reservation: int,
        decision: Decision,
        size: BatchSize,
        loaded: LoadedState,
    ) -> BatchGrant:
        """The grant of the reservation just inserted (this process holds it until closed)."""
        grant = BatchGrant(
            self,  # type: ignore[arg-type]
            reservation,
            server,
            limits,
            now,
            decision.count,
            size,
            loaded.timing,
            decision.release,
            group_max=self.confirm_group,
            group_seconds=self.confirm_group_seconds,
        )
        self._grants.append(grant)
        log_for(self).info(
            "%s %s: batch of up to %d message(s) (planned %d, limited by %s)",
            self.NOUN,
            server,
            decision.count,
            size.count,
            size.limited_by,
        )
        return grant

    def _closed(self, grant: BatchGrant) -> None:
        """``grant``'s reservation was closed: this process holds it no longer."""
        if grant in self._grants:
            self._grants.remove(grant)
        log_for(self).info(
            "%s %s: batch done: %d message(s), %d bytes%s",
            self.NOUN,
            grant.server,
            grant.sent,
            grant.sent_bytes,
            " (cut short by the deadline)" if grant.cut_by_deadline else "",
        )


def log_for(store: object) -> logging.Logger:
    """The logger of the store's own module (what the log lines always named)."""
    return logging.getLogger(type(store).__module__)


def usage_from_state(
    server: str, limits: Limits, now: float, loaded: LoadedState, counts: tuple[int, int, int, int]
) -> Usage:
    """A store's ``usage`` from the state read; ``counts``: sent, bytes in the hour, the day."""
    state = loaded.state
    size = plan_batch_size((), limits, loaded.timing)
    decision = next_batch(state, limits, now, size.count)
    timing = loaded.timing
    per_byte = timing.per_byte
    sent_hour, bytes_hour, sent_day, bytes_day = counts
    return Usage(
        server=server,
        at=now,
        limits=limits,
        sent_hour=sent_hour,
        bytes_hour=bytes_hour,
        sent_day=sent_day,
        bytes_day=bytes_day,
        sent_day_all=len(state.all_sends),
        reserved=state.server_reserved,
        reserved_all=state.all_reserved,
        window_allows=max(0, _window_allows(state, limits, now)),
        last_batch_at=state.last_batch_start,
        next_batch_at=decision.at,
        next_batch_size=decision.count,
        waiting_for=decision.kind,
        reason=decision.reason,
        seconds_per_message=timing.per_message,
        seconds_per_megabyte=None if per_byte is None else per_byte * 1_000_000,
    )


def _window_allows(state: WindowState, limits: Limits, now: float) -> int:
    """Messages the windows still allow at ``now`` (the batch interval aside)."""
    daily = (
        window_allowance(
            state.server_sends, now, limits.daily_window, limits.daily_limit, state.server_reserved
        )
        if limits.daily_limit is not None
        else limits.rate_per_hour
    )
    return min(
        daily,
        window_allowance(
            state.server_sends,
            now,
            limits.rate_window,
            limits.rate_per_hour,
            state.server_reserved,
        ),
        window_allowance(
            state.all_sends,
            now,
            limits.send_limit_window,
            limits.email_send_limit,
            state.all_reserved,
        ),
    )


def schedule_from_state(
    queues: Mapping[str, tuple[Limits, Sequence[int]]],
    loaded: Mapping[str, LoadedState],
    now: float,
) -> Schedule:
    """The schedule that would send ``{server: (limits, queued sizes)}``, played forward
    (:func:`~carerix_smtp.limits.schedule.simulate_schedule`) from the windows' state:
    live reservations of other runs count as sends at their deadline; the servers
    share the email_send_limit window."""
    widest_name = max(queues, key=lambda name: queues[name][0].send_limit_window)
    widest_state = loaded[widest_name].state
    pending_at = max(now, widest_state.reservations_end or now)
    all_sends = [*widest_state.all_sends, *[pending_at] * widest_state.all_reserved]
    server_queues = {}
    for name, (lim, sizes) in queues.items():
        state = loaded[name].state
        sends = sorted([*state.server_sends, *[pending_at] * state.server_reserved])
        server_queues[name] = ServerQueue(
            lim, sizes, sends, state.last_batch_start, loaded[name].timing
        )
    return simulate_schedule(server_queues, sorted(all_sends), now)
