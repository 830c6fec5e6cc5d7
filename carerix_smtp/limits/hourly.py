"""Messages sent per hour over the last day, per server, from the ledger's sends
(what ``cxsmtp status`` draws against the hourly and 24-hour limits)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from carerix_smtp.limits.ledger import SendRecord

HOUR = 3600.0


class SendSource(Protocol):
    def sends(self, server: str | None = None, since: float | None = None) -> list[SendRecord]: ...


def bucket_per_hour(
    sends: Iterable[SendRecord], now: float, hours: int = 24
) -> dict[str, list[int]]:
    """Per server, ``hours`` counts, oldest first: slot ``i`` holds the sends in
    ``[now - (hours - i) h, now - (hours - i - 1) h)``; the last slot ends now."""
    start = now - hours * HOUR
    out: dict[str, list[int]] = {}
    for send in sends:
        if not start <= send.time < now + 1:  # a clock a second ahead still counts as now
            continue
        slot = min(hours - 1, int((send.time - start) // HOUR))
        out.setdefault(send.server, [0] * hours)[slot] += 1
    return out


def sends_per_hour(ledger: SendSource, now: float, hours: int = 24) -> dict[str, list[int]]:
    """:func:`bucket_per_hour` over the ledger's sends of the last ``hours`` hours."""
    return bucket_per_hour(ledger.sends(since=now - hours * HOUR), now, hours)
