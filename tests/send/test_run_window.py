"""A run is not capped by the listing's window (issue 12: runs stopped at 10,000)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from servers import config_for, entry_for, make_spool, message_ids

from carerix_smtp.limits.sqlite import Ledger
from carerix_smtp.send import report
from carerix_smtp.send.run import run_send


def test_a_run_with_lifted_limits_sends_past_the_listing_window(
    tmp_path: Path, sink_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The window is 10,000 entries; 100 here so that 250 messages need three of them.
    monkeypatch.setattr(report, "DEFAULT_CANDIDATE_LIMIT", 100)
    sink = sink_factory()
    spool = make_spool(tmp_path, 250)
    config = config_for(tmp_path, entry_for(sink))
    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        summary = run_send(spool, config, ledger=ledger, password_source=lambda entry: None)
    finally:
        ledger.close()
    assert (summary.status, summary.sent, summary.remaining) == ("ok", 250, 0)
    assert Counter(message_ids(sink)) == Counter(f"<{n}.test@x.example>" for n in range(250))
    assert [b.sent for b in summary.batches] == [250]
