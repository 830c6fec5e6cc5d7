"""send/history.py: the per-state-dir record of runs and of each server's last error,
and which repeated errors ``--quiet`` tells again (real files in a tmp state dir)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from carerix_smtp.send.history import (
    FILENAME,
    REPEAT_EVERY,
    RunHistory,
    human_duration,
    load_history,
    record_run,
)
from carerix_smtp.send.report import RunSummary, ServerFailure

T0 = 1_800_000_000.0
DOWN = ServerFailure("x", "connect", "server x: cannot connect to 127.0.0.1:1: refused")


def failing(failure: ServerFailure = DOWN) -> RunSummary:
    return RunSummary(status="unreachable", server_failures=[failure])


def shown(history: RunHistory, summary: RunSummary, now: float, quiet: bool = True) -> list[str]:
    return [n.text for n in history.update(summary, now=now, quiet=quiet) if n.shown]


def test_missing_history_is_empty(tmp_path: Path) -> None:
    history = load_history(tmp_path / "no-state-dir")
    assert history.last_run is None and history.servers == {}


def test_record_run_round_trip_0600(tmp_path: Path) -> None:
    summary = RunSummary(status="deferred", sent=3, deferred=2, failed=1, server_failures=[DOWN])
    record_run(tmp_path, summary, now=T0, quiet=True)
    path = tmp_path / FILENAME
    assert path.stat().st_mode & 0o777 == 0o600
    history = load_history(tmp_path)
    assert history.last_run is not None
    last = history.last_run
    assert (last.when, last.outcome, last.sent, last.deferred, last.failed) == (
        T0,
        "deferred",
        3,
        2,
        1,
    )
    assert last.exit_code == 0
    error = history.servers["x"]
    assert (error.message, error.kind, error.first_seen, error.recovered_at) == (
        DOWN.message,
        "connect",
        T0,
        None,
    )
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left


def test_never_written_through_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_text("precious")
    state = tmp_path / "state"
    state.mkdir()
    (state / FILENAME).symlink_to(target)
    notices = record_run(state, failing(), now=T0, quiet=True)
    assert [n.shown for n in notices] == [True]  # the run's error is still told
    assert target.read_text() == "precious" and (state / FILENAME).is_symlink()
    assert load_history(state).servers == {}


def test_damaged_history_starts_anew(tmp_path: Path) -> None:
    (tmp_path / FILENAME).write_text("{not json")
    record_run(tmp_path, failing(), now=T0, quiet=True)
    assert json.loads((tmp_path / FILENAME).read_text())["servers"]["x"]["first_seen"] == T0


@pytest.mark.parametrize(
    ("later", "failure", "told"),
    [
        (300, DOWN, False),
        (REPEAT_EVERY - 1, DOWN, False),
        (REPEAT_EVERY, DOWN, True),
        (300, ServerFailure("x", "connect", "server x: timed out"), True),
    ],
    ids=["repeat", "almost-a-day", "a-day", "changed"],
)
def test_quiet_repeats(later: float, failure: ServerFailure, told: bool) -> None:
    history = RunHistory()
    assert shown(history, failing(), T0) == [DOWN.message + "; run `cxsmtp test x` for a diagnosis"]
    lines = shown(history, failing(failure), T0 + later)
    assert bool(lines) is told
    if told:
        assert "(still failing since " in lines[0]
    assert history.servers["x"].first_seen == T0


def test_without_quiet_every_run_tells_it() -> None:
    history = RunHistory()
    for minute in range(3):
        assert len(shown(history, failing(), T0 + 60 * minute, quiet=False)) == 1


def test_recovery_is_told_once_and_a_new_error_is_news() -> None:
    history = RunHistory()
    shown(history, failing(), T0)
    (line,) = shown(history, RunSummary(servers_reached=["x"]), T0 + 3 * 3600 + 600)
    assert line.startswith("server x works again after 3 h 10 min (failing since ")
    assert history.servers["x"].recovered_at == T0 + 3 * 3600 + 600
    assert shown(history, RunSummary(servers_reached=["x"]), T0 + 4 * 3600) == []
    (again,) = shown(history, failing(), T0 + 5 * 3600)
    assert "still failing" not in again and history.servers["x"].first_seen == T0 + 5 * 3600


def test_a_deferring_server_is_no_error() -> None:
    history = RunHistory()
    summary = RunSummary(server_failures=[ServerFailure("x", "deferring", "server x: 5 deferred")])
    assert shown(history, summary, T0) == [] and history.servers == {}


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(42, "42 s"), (600, "10 min"), (3 * 3600, "3 h"), (3725, "1 h 2 min"), (90000, "1 d 1 h")],
)
def test_human_duration(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def test_file_is_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        record_run(tmp_path, failing(), now=T0, quiet=False)
    finally:
        os.umask(old)
    assert (tmp_path / FILENAME).stat().st_mode & 0o777 == 0o600
