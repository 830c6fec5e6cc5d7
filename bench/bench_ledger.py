"""Admission cost per message: the shared PostgreSQL ledger against the SQLite one.

Run: ``python bench/bench_ledger.py`` (part of ``make bench``).

The sender's path through each store, with limits that never make it wait:
``acquire`` a batch of 100, ``admit`` + ``confirm`` each message (sends written
in groups, as in a run), ``close``; 20 batches, so 2,000 messages a round, the
median of 5 rounds interleaved between the stores.  SQLite is the state dir's
file as a run opens it (durable: the reservation is fsynced); PostgreSQL is a
private server started in a temporary directory as the tests start it
(tests/pg_server.py: loopback, fsync off -- a production server with fsync on
costs more per batch, not per message, since sends are written in groups).
Prints microseconds per message for each and the ratio; no target (issue 16
asks for the figure).  Skips when PostgreSQL or psycopg is not installed.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # pg_server.py

from _common import report, skipped

from carerix_smtp.limits.ledger import BatchGrant, LedgerStore
from carerix_smtp.limits.rule import Limits

BATCHES = 20
PER_BATCH = 100
ROUNDS = 5
LIMITS = Limits(
    rate_per_hour=10_000_000,
    rate_window=3600.0,
    batch_max_messages=PER_BATCH,
    batch_max_bytes=10**12,
    batch_interval=0.0,
    batch_deadline=3600.0,
    email_send_limit=10**9,
    send_limit_window=86_400.0,
)


def one_round(store: LedgerStore, account: str) -> float:
    """Seconds per message for BATCHES batches of PER_BATCH messages."""
    sizes = [2000] * PER_BATCH
    start = time.perf_counter()
    for batch in range(BATCHES):
        grant = store.acquire(account, LIMITS, sizes, sleep=time.sleep)
        assert isinstance(grant, BatchGrant), grant
        with grant:
            for n in range(PER_BATCH):
                assert grant.admit(2000)
                grant.confirm(f"<{batch}.{n}@bench>", 2000)
    return (time.perf_counter() - start) / (BATCHES * PER_BATCH)


def measure(stores: dict[str, Callable[[], LedgerStore]]) -> dict[str, float]:
    opened = {name: make() for name, make in stores.items()}
    samples: dict[str, list[float]] = {name: [] for name in stores}
    try:
        for round_ in range(ROUNDS):
            order = list(opened)[round_ % 2 :] + list(opened)[: round_ % 2]
            for name in order:
                samples[name].append(one_round(opened[name], f"bench{round_}"))
    finally:
        for store in opened.values():
            store.close()
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> int:
    try:
        import psycopg  # noqa: F401
        from pg_server import find_initdb, pg_server
    except ImportError:
        skipped("ledger admission: PostgreSQL / SQLite", "psycopg not installed")
        return 0
    if find_initdb() is None:
        skipped("ledger admission: PostgreSQL / SQLite", "PostgreSQL (initdb) not installed")
        return 0
    from carerix_smtp.limits.postgres import PostgresLedger, init_schema
    from carerix_smtp.limits.sqlite import Ledger

    with tempfile.TemporaryDirectory(prefix="cxsmtp-bench-ledger-") as tmp, pg_server() as pg:
        url = pg.create_database()
        init_schema(url)
        figures = measure(
            {
                "sqlite": lambda: Ledger.in_state_dir(Path(tmp)),
                "postgres": lambda: PostgresLedger(url),
            }
        )
    sqlite, postgres = figures["sqlite"], figures["postgres"]
    print(f"  {BATCHES} batches x {PER_BATCH} messages, median of {ROUNDS} rounds")
    report("admission per message, SQLite", f"{sqlite * 1e6:8.1f} us")
    report("admission per message, PostgreSQL", f"{postgres * 1e6:8.1f} us")
    report("PostgreSQL / SQLite", f"{postgres / sqlite:8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
