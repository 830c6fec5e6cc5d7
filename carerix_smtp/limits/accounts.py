"""Usage per provider account, for ``cxsmtp ledger show`` (issue 16).

The ledger counts per account (a server entry's ``account``, else its name):
entries of one host, or of several hosts sharing a PostgreSQL ledger, that name
the same account share its windows.  Each account is shown once, with the
entries of this host's config that use it and the limits of the first of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from carerix_smtp.limits.ledger import LedgerStore
from carerix_smtp.limits.rule import Limits

if TYPE_CHECKING:
    from carerix_smtp.config.file import ServerEntry, Settings


@dataclass(frozen=True)
class AccountUsage:
    """One account's use of its windows right now."""

    account: str
    servers: tuple[str, ...]  # this host's entries that use it
    limits: Limits
    sent_hour: int  # in the rate window
    sent_day: int  # this account, in the send-limit window
    sent_day_all: int  # all accounts (what email_send_limit counts)
    reserved: int  # slots of batches running now, on any host
    window_allows: int
    next_batch_at: float  # now (<= at) or later; inf: never
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "servers": list(self.servers),
            "sent_hour": self.sent_hour,
            "rate_per_hour": self.limits.rate_per_hour,
            "rate_window_s": self.limits.rate_window,
            "sent_day": self.sent_day,
            "sent_day_all_accounts": self.sent_day_all,
            "email_send_limit": self.limits.email_send_limit,
            "send_limit_window_s": self.limits.send_limit_window,
            "running_batch_slots": self.reserved,
            "window_allows": self.window_allows,
            "next_batch_at": _iso(self.next_batch_at),
            "reason": self.reason or None,
        }


def accounts_of(entries: Iterable[ServerEntry]) -> dict[str, list[ServerEntry]]:
    """Entries grouped by their ledger key, in the order first seen."""
    out: dict[str, list[ServerEntry]] = {}
    for entry in entries:
        out.setdefault(entry.ledger_key, []).append(entry)
    return out


def account_usage(
    store: LedgerStore, entries: Iterable[ServerEntry], settings: Settings
) -> list[AccountUsage]:
    """Each account's usage, from the store (nothing is changed but stale reservations)."""
    rows = []
    for account, users in accounts_of(entries).items():
        limits = Limits.from_entry(users[0], settings)
        usage = store.usage(account, limits)
        rows.append(
            AccountUsage(
                account,
                tuple(entry.name for entry in users),
                limits,
                usage.sent_hour,
                usage.sent_day,
                usage.sent_day_all,
                usage.reserved,
                usage.window_allows,
                usage.next_batch_at,
                usage.reason,
            )
        )
    return rows


def _iso(epoch: float) -> str | None:
    if epoch != epoch or epoch in (float("inf"), float("-inf")):
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class LedgerReport:
    """``cxsmtp ledger show``: which ledger (password masked) and each account's usage."""

    ledger: str  # "sqlite" or the URL, masked
    source: str  # "default", "settings" or CXSMTP_LEDGER_URL
    exists: bool  # False: the SQLite file is not there yet (nothing sent)
    accounts: list[AccountUsage]

    def to_json(self) -> dict[str, Any]:
        return {
            "ledger": self.ledger,
            "from": self.source,
            "exists": self.exists,
            "accounts": [row.to_json() for row in self.accounts],
        }


def ledger_report(
    settings: Settings,
    entries: Iterable[ServerEntry],
    state_dir: Path,
    env: Mapping[str, str] | None = None,
) -> LedgerReport:
    """Open the configured ledger (never creating a SQLite file) and read each account."""
    from carerix_smtp.limits.open import ledger_choice, open_ledger

    choice = ledger_choice(settings, env)
    store = open_ledger(settings, state_dir, env, existing_only=True)
    if store is None:
        return LedgerReport(choice.shown, choice.source, False, [])
    try:
        return LedgerReport(
            choice.shown, choice.source, True, account_usage(store, entries, settings)
        )
    finally:
        store.close()
