"""The ledger keyed by account (issue 16): entries naming one account share its
limits, an entry without ``account`` keeps its name as the key (existing SQLite
ledgers keep their data), and ``account_usage`` (``cxsmtp ledger show``) reads
each account once.  Both stores (tests/limits/conftest.py's ``store``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from servers import Clock, config_for, entry_for, make_spool

from carerix_smtp.config.file import Settings
from carerix_smtp.limits.accounts import account_usage, accounts_of, ledger_report
from carerix_smtp.limits.rule import Limits
from carerix_smtp.send.report import SendOptions
from carerix_smtp.send.run import run_send

LIMITED = {
    "rate_per_hour": 1200,
    "batch_max_messages": 5,
    "batch_interval": 300.0,
    "batch_deadline": 60.0,  # a wait of 300 s is not slept through
}


def send_through(name: str, spool: Path, config: Any, ledger: Any, clock: Clock) -> int:
    summary = run_send(
        spool, config, SendOptions(server=name), ledger=ledger, clock=clock,
        sleep=clock.advance, password_source=lambda e: None,
    )  # fmt: skip
    return summary.sent


def test_entries_of_one_account_share_its_batches(
    tmp_path: Path, sink_factory: Any, store: Any
) -> None:
    sink = sink_factory()
    clock = Clock()
    a = entry_for(sink, "a", account="acme", **LIMITED)
    b = entry_for(sink, "b", account="acme", **LIMITED)
    config = config_for(tmp_path, a, b)
    spool = make_spool(tmp_path, 12)
    ledger = store(clock=clock)
    assert send_through("a", spool, config, ledger, clock) == 5
    assert send_through("b", spool, config, ledger, clock) == 0, "acme's batch interval holds"
    clock.advance(300)
    assert send_through("b", spool, config, ledger, clock) == 5
    assert {s.server for s in ledger.sends()} == {"acme"}
    assert len(sink.messages) == 10


def test_entries_without_account_keep_their_own_limits(
    tmp_path: Path, sink_factory: Any, store: Any
) -> None:
    sink = sink_factory()
    clock = Clock()
    config = config_for(tmp_path, entry_for(sink, "a", **LIMITED), entry_for(sink, "b", **LIMITED))
    spool = make_spool(tmp_path, 12)
    ledger = store(clock=clock)
    assert send_through("a", spool, config, ledger, clock) == 5
    assert send_through("b", spool, config, ledger, clock) == 5
    assert sorted({s.server for s in ledger.sends()}) == ["a", "b"]  # keyed by name, as before


def test_account_usage_one_row_per_account(tmp_path: Path, sink_factory: Any, store: Any) -> None:
    sink = sink_factory()
    clock = Clock()
    entries = [
        entry_for(sink, "a", account="acme", **LIMITED),
        entry_for(sink, "b", account="acme", **LIMITED),
        entry_for(sink, "c", **LIMITED),
    ]
    config = config_for(tmp_path, *entries)
    ledger = store(clock=clock)
    assert send_through("b", make_spool(tmp_path, 3), config, ledger, clock) == 3
    assert list(accounts_of(entries)) == ["acme", "c"]
    rows = account_usage(ledger, entries, Settings())
    assert [(r.account, r.servers, r.sent_hour) for r in rows] == [
        ("acme", ("a", "b"), 3),
        ("c", ("c",), 0),
    ]
    acme = rows[0].to_json()
    assert (acme["rate_per_hour"], acme["running_batch_slots"]) == (1200, 0)
    assert rows[0].limits == Limits.from_entry(entries[0], Settings())


def test_ledger_report_creates_no_sqlite_file(tmp_path: Path, sink_factory: Any) -> None:
    sink = sink_factory()
    report = ledger_report(Settings(), [entry_for(sink, "a")], tmp_path / "state", {})
    assert (report.ledger, report.source, report.exists, report.accounts) == (
        "sqlite",
        "default",
        False,
        [],
    )
    assert not (tmp_path / "state").exists()
