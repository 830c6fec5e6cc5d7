"""doctor/run.py: a rebuilt SQLite ledger counts sends under the entry's account
(issue 16), as the sender does; entries without one keep their name."""

from __future__ import annotations

from pathlib import Path

from carerix_smtp.config.file import Config, ServerEntry
from carerix_smtp.doctor.history import SpoolHistory
from carerix_smtp.doctor.run import _by_account
from carerix_smtp.limits.repair import SendEvent


def test_repair_history_is_keyed_by_account(tmp_path: Path) -> None:
    config = Config(
        path=tmp_path / "c.toml",
        servers={
            "web": ServerEntry("web", "[h]:587", account="acme"),
            "own": ServerEntry("own", "[h]:588"),
        },
    )
    sends = [SendEvent("web", 1.0, 10), SendEvent("own", 2.0, 20), SendEvent("gone", 3.0, 30)]
    history = _by_account(SpoolHistory(tmp_path, sends=list(sends)), config)
    assert [s.server for s in history.sends] == ["acme", "own", "gone"]
    untouched = _by_account(SpoolHistory(tmp_path, sends=list(sends)), None)
    assert untouched.sends == sends
