"""Crash safety in real subprocesses: SIGKILL at random points, overlapping runs, SIGTERM.

The promise (SPEC §3, README): nothing is lost; a message is sent twice only when
its data was in flight at the moment of a crash — at most one per connection per
crash.  The sender runs as ``cxsmtp send`` in a subprocess; the SMTP server (the
cxsmtp Sink) runs in the test process and counts Message-IDs.
"""

from __future__ import annotations

import json
import logging
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import strip_timestamps
from faults.fault_helpers import kill_process_group
from servers import delivery_log, entry_for, make_spool, message_ids, names, sent_lines

from carerix_smtp.config.file import Config, save_config
from carerix_smtp.sink.config import PhaseRule
from carerix_smtp.spool.spool import Spool

MESSAGES = 500


@pytest.fixture
def server(isolated: Any, sink_factory: Any) -> Any:
    sink = sink_factory()
    save_config(Config(path=isolated.config, servers={"local": entry_for(sink)}))
    return sink


def start_send(spool: Path, *args: str) -> subprocess.Popen[str]:
    from conftest import cxsmtp_argv

    return subprocess.Popen(
        [*cxsmtp_argv(), "send", str(spool), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the kill reaches every process
    )


def delivered(sink: Any) -> Counter[str]:
    return Counter(message_ids(sink))


def kill_at_random_point(spool: Path, sink: Any, rng: random.Random, total: int) -> bool:
    """Start a run, SIGKILL it once the server has a few more messages; True if killed."""
    unique = len(delivered(sink))
    if unique >= total - 1:
        return False
    target = len(sink.messages) + rng.randint(1, min(40, total - unique - 1))
    process = start_send(spool)
    try:
        sink.wait_until(lambda s: len(s.messages) >= target, timeout=30)
        # A random kill point: at the reply, in the journal write, in the rename…
        time.sleep(rng.uniform(0, 0.004))
    finally:
        # the whole group, and a check that every process of it is gone (issue 10)
        kill_process_group(process)
    return process.returncode == -signal.SIGKILL


def run_to_completion(spool: Path, sink: Any) -> None:
    process = start_send(spool)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert Spool(spool).claims() == [] and names(spool) == []


def assert_delivered_once_except_in_flight(spool: Path, sink: Any, total: int, kills: int) -> None:
    received = delivered(sink)
    expected = {f"<{n}.test@x.example>" for n in range(total)}
    assert set(received) == expected, "a message was lost"
    duplicates = sum(count - 1 for count in received.values())
    assert duplicates <= kills, f"{duplicates} duplicates for {kills} kills (one connection)"
    # every duplicate was in flight at a kill, and was logged as a possible duplicate
    requeued = {e.get("message_id") for e in delivery_log(spool) if e["outcome"] == "requeued"}
    assert {mid for mid, count in received.items() if count > 1} <= requeued
    assert len(names(spool / "sent")) == total
    assert names(spool / "failed") == [] and names(spool / "deferred") == []
    # each sent message's record is in the day file once: redone after a kill, never twice
    assert sorted(sent_lines(spool)) == names(spool / "sent")


def crash_trials(tmp: Path, sink: Any, seed: int, kills_wanted: int) -> int:
    rng = random.Random(seed)
    spool = make_spool(tmp, MESSAGES)
    kills = 0
    for _ in range(kills_wanted):
        kills += kill_at_random_point(spool, sink, rng, MESSAGES)
    run_to_completion(spool, sink)
    assert_delivered_once_except_in_flight(spool, sink, MESSAGES, kills)
    return kills


def test_sigkill_at_random_points_loses_nothing(tmp_path: Path, server: Any) -> None:
    kills = crash_trials(tmp_path, server, seed=20240501, kills_wanted=3)
    assert kills >= 1


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_fifty_trials(tmp_path: Path, isolated: Any, sink_factory: Any) -> None:
    kills = 0
    for round_ in range(5):
        sink = sink_factory()
        save_config(Config(path=isolated.config, servers={"local": entry_for(sink)}))
        kills += crash_trials(tmp_path / f"round{round_}", sink, seed=round_, kills_wanted=11)
    assert kills >= 50


def test_ten_concurrent_runs_deliver_each_message_once(tmp_path: Path, server: Any) -> None:
    spool = make_spool(tmp_path, 300)
    processes = [start_send(spool, "--json") for _ in range(10)]
    results = [p.communicate(timeout=120) for p in processes]
    assert [p.returncode for p in processes] == [0] * 10, [err for _, err in results]
    summaries = [json.loads(out) for out, _ in results]
    assert {s["status"] for s in summaries} <= {"ok", "locked", "nothing-to-do"}
    assert sum(s["sent"] for s in summaries) == 300
    assert sorted(delivered(server).values()) == [1] * 300
    assert len(names(spool / "sent")) == 300
    assert sorted(sent_lines(spool)) == names(spool / "sent")


def test_sigterm_mid_run_exits_75_and_leaves_nothing_locked(
    tmp_path: Path,
    isolated: Any,
    sink_factory: Any,
) -> None:
    sink = sink_factory(latency_ms=2)
    save_config(Config(path=isolated.config, servers={"local": entry_for(sink)}))
    spool = make_spool(tmp_path, 300)
    process = start_send(spool)
    assert sink.wait_until(lambda s: len(s.messages) >= 20, timeout=30)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 75, err
    assert "SIGTERM received" in strip_timestamps(err)
    assert strip_timestamps(out).startswith("cxsmtp: interrupted: sent ")
    state = Spool(spool)
    assert state.claims() == [] and state.holder_pid() is None
    assert (spool / ".cxsmtp" / "journal").stat().st_size == 0
    sent_first = len(names(spool / "sent"))
    assert sent_first < 300 and len(names(spool)) == 300 - sent_first
    run_to_completion(spool, sink)
    # a clean stop finishes the message in flight: no duplicates at all
    assert sorted(delivered(sink).values()) == [1] * 300


def test_second_sigterm_abandons_a_hung_transaction(
    tmp_path: Path,
    isolated: Any,
    sink_factory: Any,
) -> None:
    hanging = threading.Event()

    class Flag(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "hanging" in record.getMessage():
                hanging.set()

    sink_log = logging.getLogger("carerix_smtp.sink.protocol")
    flag, level = Flag(), sink_log.level
    sink_log.addHandler(flag)
    sink_log.setLevel(logging.DEBUG)
    try:
        sink = sink_factory(hang=[PhaseRule("eod")])
        entry = entry_for(sink, command_timeout=60.0, data_timeout=60.0)
        save_config(Config(path=isolated.config, servers={"local": entry}))
        spool = make_spool(tmp_path, 2)
        process = start_send(spool)
        # the whole message is out; the server will never answer the final "."
        assert hanging.wait(timeout=30)
        process.send_signal(signal.SIGTERM)
        assert process.stderr is not None
        assert "SIGTERM received" in process.stderr.readline()  # finishing: still waiting
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=20)  # far less than the 60 s data timeout
    finally:
        sink_log.removeHandler(flag)
        sink_log.setLevel(level)
    assert process.returncode == 75, err
    assert "received twice" in err
    assert Spool(spool).claims() == [] and Spool(spool).holder_pid() is None
    assert names(spool) == ["m00000.eml", "m00001.eml"]  # back in the queue, unchanged
