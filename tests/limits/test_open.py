"""limits/open.py: the one place that opens the configured ledger (issue 16)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from conftest import free_port

from carerix_smtp.config.file import Settings
from carerix_smtp.errors import LedgerUnavailableError
from carerix_smtp.limits.open import (
    SKEW_WARNING,
    ledger_password,
    open_ledger,
    warn_on_clock_skew,
    with_password,
)
from carerix_smtp.limits.sqlite import Ledger


def test_sqlite_by_default_in_the_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert open_ledger(Settings(), state, {}, existing_only=True) is None
    assert not state.exists(), "a read-only open creates nothing"
    store = open_ledger(Settings(), state, {})
    assert isinstance(store, Ledger) and store.path == state / Ledger.FILENAME
    store.close()
    again = open_ledger(Settings(), state, {}, existing_only=True)
    assert isinstance(again, Ledger)
    again.close()


def test_env_url_opens_the_shared_store(tmp_path: Path, pg_url: str) -> None:
    from carerix_smtp.limits.postgres import PostgresLedger

    store = open_ledger(Settings(), tmp_path, {"CXSMTP_LEDGER_URL": pg_url}, existing_only=True)
    assert isinstance(store, PostgresLedger)
    store.close()
    assert not (tmp_path / Ledger.FILENAME).exists()


def test_unreachable_is_ledger_unavailable_naming_the_host(tmp_path: Path) -> None:
    port = free_port()
    settings = Settings(ledger=f"postgresql://cx@127.0.0.1:{port}/cxsmtp")
    with pytest.raises(LedgerUnavailableError) as caught:
        open_ledger(settings, tmp_path, {})
    assert caught.value.exit_code == 75
    assert f"127.0.0.1:{port}" in str(caught.value)


def test_password_command_is_used_and_never_shown(tmp_path: Path, pg_url: str) -> None:
    settings = Settings(ledger=pg_url, ledger_password_command="echo s3cret-pw")
    assert ledger_password(settings) == "s3cret-pw"
    assert ledger_password(Settings()) is None
    conninfo = with_password(pg_url, "s3cret-pw")
    assert "password=s3cret-pw" in conninfo and with_password(pg_url, None) == pg_url
    store = open_ledger(settings, tmp_path, {})  # trust auth: the password is ignored
    assert store is not None and "s3cret" not in str(getattr(store, "where", ""))
    store.close()


class SkewedStore:
    def __init__(self, host: float, database: float) -> None:
        self.times = (host, database)

    def clock_skew(self) -> tuple[float, float]:
        return self.times


def test_clock_skew_warning_names_both_times(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "carerix_smtp.limits.open")
    host = 1_796_000_000.0
    assert warn_on_clock_skew(SkewedStore(host, host - SKEW_WARNING)) == SKEW_WARNING
    assert caplog.records == [], "5 s is within the tolerance"
    assert warn_on_clock_skew(SkewedStore(host, host + 12.5)) == -12.5
    [record] = caplog.records
    text = record.getMessage()
    assert "this host's clock (2026-11-30T00:53:20+00:00)" in text
    assert "the ledger database's (2026-11-30T00:53:32+00:00) by -12.5 s" in text
    assert warn_on_clock_skew(object()) is None  # SQLite: no clock of its own
