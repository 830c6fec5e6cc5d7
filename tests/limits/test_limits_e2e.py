"""The sending limits end to end (issue 5): real ``cxsmtp send`` processes against the
recording Sink on 127.0.0.1, small limits by configuration (windows of seconds, not
hours), the real clock; and run_send in-process on an injected clock for the loop.

The server-side timestamps (``Received.time``, taken when the data arrived) are
checked against every rolling window: for every send ``s``, the sends in
``[s, s + window)`` never exceed the limit -- the windows starting at a send are
the ones that hold the most.
"""

from __future__ import annotations

import bisect
import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import strip_timestamps
from servers import (
    Clock,
    config_for,
    eml,
    entry_for,
    listing,
    make_spool,
    message_ids,
    names,
)

from carerix_smtp.config.file import Config, ServerEntry, save_config
from carerix_smtp.limits.sqlite import Ledger
from carerix_smtp.send.report import SendOptions
from carerix_smtp.send.run import run_send
from carerix_smtp.sink.config import FailRule, PhaseRule
from carerix_smtp.sink.server import Sink
from carerix_smtp.spool.spool import Spool


def limited(sink: Sink, name: str = "local", **limits: Any) -> ServerEntry:
    """A server entry with the given limits (entry_for lifts every limit otherwise)."""
    defaults: dict[str, Any] = {
        "rate_per_hour": 1200,
        "rate_window": 3600.0,
        "batch_max_messages": 500,
        "batch_max_bytes": 80_000_000,
        "batch_interval": 300.0,
        "batch_deadline": 60.0,
    }
    return entry_for(sink, name, **{**defaults, **limits})


def configure(isolated: Any, *entries: ServerEntry, users: dict[str, str] | None = None) -> None:
    config = Config(path=isolated.config, servers={e.name: e for e in entries})
    config.users = dict(users or {})
    if len(entries) > 1:
        config.settings.default_server = entries[0].name
    save_config(config)


def cxsmtp_popen(*args: str) -> subprocess.Popen[str]:
    from conftest import cxsmtp_argv

    return subprocess.Popen(
        [*cxsmtp_argv(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def send_json(cxsmtp: Any, spool: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = cxsmtp("send", str(spool), "--json", *args)
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def padded(n: int, size: int) -> bytes:
    """Message n with body lines added until it is about ``size`` bytes."""
    data = eml(n)
    line = b"x" * 69 + b"\n"
    return data + line * max(0, (size - len(data)) // len(line))


def most_in_window(times: Sequence[float], window: float) -> int:
    """The most sends in any [s, s + window)."""
    ordered = sorted(times)
    return max(
        (bisect.bisect_left(ordered, s + window) - i for i, s in enumerate(ordered)), default=0
    )


def ledger_times(isolated: Any, server: str | None = None) -> list[float]:
    with Ledger.in_state_dir(isolated.state_dir) as ledger:
        return [r.time for r in ledger.sends(server)]


def spool_of(root: Path, count: int, start: int = 0, **kw: Any) -> Path:
    """A spool with messages numbered start.., oldest first in that order."""
    spool = root
    spool.mkdir(parents=True, exist_ok=True)
    base = time.time() - 1000
    for n in range(start, start + count):
        path = spool / f"m{n:05d}.eml"
        path.write_bytes(eml(n, **kw))
        os.utime(path, (base + n, base + n))
    return spool


# --- across processes ----------------------------------------------------------------------


def test_concurrent_runs_on_two_spools_send_exactly_the_rate(
    tmp_path: Path,
    isolated: Any,
    sink_factory: Any,
    cxsmtp: Any,
) -> None:
    """A window that cannot roll during the test: the total is exactly the limit."""
    sink = sink_factory()
    configure(
        isolated, limited(sink, rate_per_hour=10, rate_window=600.0, batch_interval=0.0,
                          batch_deadline=1.0)
    )  # fmt: skip
    spools = [spool_of(tmp_path / "a", 12), spool_of(tmp_path / "b", 12, start=100)]
    processes = [cxsmtp_popen("send", str(spools[i % 2]), "--json") for i in range(6)]
    outputs = [p.communicate(timeout=60) for p in processes]
    assert [p.returncode for p in processes] == [0] * 6, [err for _, err in outputs]
    summaries = [json.loads(out) for out, _ in outputs]
    assert {s["status"] for s in summaries} <= {"ok", "limit", "locked"}
    assert len(sink.messages) == 10  # not one more, not one less
    assert sum(s["sent"] for s in summaries) == 10
    assert len(ledger_times(isolated, "local")) == 10
    assert sorted(Counter(message_ids(sink)).values()) == [1] * 10
    # back to back after them: nothing allowed, it says why and when, exit 0
    code, later = send_json(cxsmtp, spools[0])
    assert (code, later["sent"], later["status"], later["limited_by"]) == (0, 0, "limit", "rate")
    assert later["next_window_at"] is not None and "rate 10 per 10 min" in later["limit_reason"]
    text = cxsmtp("send", str(spools[1]))
    assert text.returncode == 0 and text.stderr == ""
    (line,) = strip_timestamps(text.stdout).splitlines()
    assert "sent 0," in line and "; limit reached; next window at " in line
    assert line.endswith("(rate 10 per 10 min reached)")
    assert len(sink.messages) == 10


def test_back_to_back_and_concurrent_runs_never_exceed_a_rolling_window(
    tmp_path: Path,
    isolated: Any,
    sink_factory: Any,
    cxsmtp: Any,
) -> None:
    """8 per 4 s window, a batch every second of at most 8 * 1 / 4 = 2 messages."""
    sink = sink_factory()
    configure(
        isolated, limited(sink, rate_per_hour=8, rate_window=4.0, batch_interval=1.0,
                          batch_deadline=2.0)
    )  # fmt: skip
    spools = [spool_of(tmp_path / "a", 30), spool_of(tmp_path / "b", 30, start=100)]
    results: list[tuple[int, str]] = []
    lock = threading.Lock()
    until = time.monotonic() + 4.0

    def runner(spool: Path) -> None:
        while time.monotonic() < until:
            result = cxsmtp("send", str(spool), "--json")
            with lock:
                results.append((result.returncode, result.stdout + result.stderr))

    threads = [threading.Thread(target=runner, args=(s,)) for s in (*spools, spools[0])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert all(code == 0 for code, _ in results), results
    summaries = [json.loads(out) for _, out in results]
    assert {s["status"] for s in summaries} <= {"ok", "limit", "locked"}
    server_times = [m.time for m in sink.messages]
    assert most_in_window(server_times, 4.0) <= 8
    assert most_in_window(ledger_times(isolated), 4.0) <= 8
    assert len(server_times) == sum(s["sent"] for s in summaries) == len(ledger_times(isolated))
    assert sorted(Counter(message_ids(sink)).values()) == [1] * len(server_times)
    assert len(server_times) >= 6  # it did send, in several windows


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_many_runs_two_servers_never_exceed_any_window(
    tmp_path: Path,
    isolated: Any,
    sink_factory: Any,
    cxsmtp: Any,
) -> None:
    """Two servers (8 per 4 s each, a batch a second) sharing email-send-limit 10 per
    6 s; four runners back to back on three spools for 20 s."""
    one, two = sink_factory(), sink_factory()
    limits = {"rate_per_hour": 8, "rate_window": 4.0, "batch_interval": 1.0,
              "batch_deadline": 2.0}  # fmt: skip
    configure(
        isolated, limited(one, "one", **limits), limited(two, "two", **limits),
        users={"b@x.example": "two"},
    )  # fmt: skip
    assert cxsmtp("settings", "set", "send-limit-window", "6").returncode == 0
    assert cxsmtp("settings", "set", "email-send-limit", "10").returncode == 0
    spools = [
        spool_of(tmp_path / "a", 100),
        spool_of(tmp_path / "b", 100, start=1000, sender="b@x.example"),
        spool_of(tmp_path / "c", 50, start=2000),
    ]
    spool_of(spools[2], 50, start=3000, sender="b@x.example")
    results: list[int] = []
    until = time.monotonic() + 20.0

    def runner(spool: Path) -> None:
        while time.monotonic() < until:
            results.append(cxsmtp("send", str(spool)).returncode)

    threads = [threading.Thread(target=runner, args=(s,)) for s in (*spools, spools[0])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert set(results) == {0}
    per_server = [[m.time for m in sink.messages] for sink in (one, two)]
    assert all(most_in_window(times, 4.0) <= 8 for times in per_server)
    everything = per_server[0] + per_server[1]
    assert most_in_window(everything, 6.0) <= 10
    assert most_in_window(ledger_times(isolated), 6.0) <= 10
    assert len(everything) == len(ledger_times(isolated)) >= 20
    ids = message_ids(one) + message_ids(two)
    assert sorted(Counter(ids).values()) == [1] * len(ids)


# --- the batch by bytes, the deadline ----------------------------------------------------


def test_large_messages_reduce_the_batch_by_bytes(
    tmp_path: Path,
    isolated: Any,
    sink_factory: Any,
    cxsmtp: Any,
) -> None:
    sink = sink_factory()
    configure(
        isolated, limited(sink, batch_max_bytes=10_000, batch_interval=0.0, rate_per_hour=1000)
    )
    spool = spool_of(tmp_path / "spool", 6)
    for n in range(6):  # about 3 KB each, m2 about 24 KB
        path = spool / f"m{n:05d}.eml"
        stamp = path.stat().st_mtime
        path.write_bytes(padded(n, 24_000 if n == 2 else 3_000))
        os.utime(path, (stamp, stamp))
    size = len(padded(0, 3_000))
    assert 3 * size <= 10_000 < 4 * size
    code, first = send_json(cxsmtp, spool)
    # m0, m1 fit; the big m2 would pass 10,000 bytes: the batch ends before it
    assert (code, first["sent"], first["limited_by"]) == (0, 2, "bytes")
    assert first["batches"][0]["planned_by"] == "bytes" and first["remaining"] == 4
    code, second = send_json(cxsmtp, spool)
    # larger than the byte cap: sent alone in its own batch, never stuck
    assert (code, second["sent"], second["limited_by"]) == (0, 1, "bytes")
    code, third = send_json(cxsmtp, spool)
    assert (code, third["sent"], third["status"]) == (0, 3, "ok")
    assert message_ids(sink) == [f"<{n}.test@x.example>" for n in range(6)]


def test_slow_server_the_deadline_cuts_then_the_next_batch_is_smaller(
    tmp_path: Path,
    isolated: Any,
    sink_factory: Any,
    cxsmtp: Any,
) -> None:
    """200 ms per reply (round trip): 0.2 s or more a message even pipelined; the batch deadline is 1.5 s."""
    sink = sink_factory(latency_ms=200)
    configure(
        isolated, limited(sink, batch_deadline=1.5, batch_interval=0.0, rate_per_hour=1000,
                          batch_max_messages=20)
    )  # fmt: skip
    spool = spool_of(tmp_path / "spool", 30)
    code, first = send_json(cxsmtp, spool)
    (batch,) = first["batches"]
    assert code == 0 and first["deadline_cut"] is True and batch["deadline_cut"] is True
    assert first["limited_by"] == "deadline" and 2 <= first["sent"] < 15
    assert first["sent"] == batch["sent"] == len(sink.messages)
    text = cxsmtp("send", str(spool))
    # the timing model knows now: the next batch is sized to fit, not cut
    (line,) = strip_timestamps(text.stdout).splitlines()
    assert "deadline cut" not in line and "; batch deadline reached; next window" in line
    second_count = len(sink.messages) - first["sent"]
    assert 1 <= second_count < first["sent"]
    code, third = send_json(cxsmtp, spool)
    (batch,) = third["batches"]
    assert third["deadline_cut"] is False and batch["planned_by"] == "deadline"
    assert batch["max_messages"] == batch["planned"] == third["sent"] < first["sent"]
    # and it ended within the deadline, on the server's clock
    times = [m.time for m in sink.messages[-third["sent"] :]]
    assert times[-1] - times[0] < 1.5


# --- the 24-hour send limit -------------------------------------------------------------


def test_send_limit_stops_sending_across_servers(
    tmp_path: Path,
    isolated: Any,
    sink_factory: Any,
    cxsmtp: Any,
) -> None:
    one, two = sink_factory(), sink_factory()
    configure(
        isolated,
        limited(one, "one", batch_interval=0.0),
        limited(two, "two", batch_interval=0.0),
        users={"b@x.example": "two"},
    )
    assert cxsmtp("settings", "set", "send-limit-window", "600").returncode == 0
    assert cxsmtp("settings", "set", "email-send-limit", "5").returncode == 0
    spool = spool_of(tmp_path / "spool", 4)
    spool_of(spool, 4, start=10, sender="b@x.example")
    code, first = send_json(cxsmtp, spool)
    assert code == 0 and first["sent"] == 5 == len(one.messages) + len(two.messages)
    assert len(one.messages) == 4 and len(two.messages) == 1  # oldest first
    assert first["limited_by"] == "send-limit"
    code, second = send_json(cxsmtp, spool)
    assert (code, second["sent"], second["limited_by"]) == (0, 0, "send-limit")
    assert "email-send-limit 5 per 10 min reached" in second["limit_reason"]
    assert len(one.messages) + len(two.messages) == 5
    assert sorted(names(spool)) == [f"m{n:05d}.eml" for n in (11, 12, 13)]


# --- --loop -------------------------------------------------------------------------------


def test_loop_empties_the_spool_over_several_windows(
    tmp_path: Path,
    isolated: Any,
    sink_factory: Any,
    cxsmtp: Any,
) -> None:
    """8 per 2 s, a batch every 0.5 s of 2: twelve messages take six batches."""
    sink = sink_factory(fail=[FailRule("rcpt", 451, pattern="later@*")])
    configure(
        isolated, limited(sink, rate_per_hour=8, rate_window=2.0, batch_interval=0.5,
                          batch_deadline=1.0)
    )  # fmt: skip
    spool = spool_of(tmp_path / "spool", 12)
    (spool / "later.eml").write_bytes(eml(99, to="later@y.example"))
    started = time.monotonic()
    result = cxsmtp("send", str(spool), "--loop", "--json", timeout=30)
    elapsed = time.monotonic() - started
    summary = json.loads(result.stdout)
    # the 451 message is deferred, not due for 5 minutes: the loop ends; a server's
    # 4xx is retried later, no error: exit 0 (issue 11)
    assert (result.returncode, summary["status"]) == (0, "deferred"), result.stderr
    assert result.stderr == ""
    assert (summary["sent"], summary["deferred"], summary["remaining"]) == (12, 1, 0)
    assert summary["next_retry"] is not None and names(spool) == []
    assert sorted(message_ids(sink)) == sorted(f"<{n}.test@x.example>" for n in range(12))
    assert len(summary["batches"]) >= 6 and all(b["sent"] <= 2 for b in summary["batches"])
    assert most_in_window([m.time for m in sink.messages], 2.0) <= 8
    assert elapsed >= 2.0  # it waited for the windows (six batches, 0.5 s apart)


def test_sigterm_ends_the_loop_while_it_waits(
    tmp_path: Path,
    isolated: Any,
    sink_factory: Any,
) -> None:
    sink = sink_factory()
    configure(
        isolated, limited(sink, rate_per_hour=2, rate_window=600.0, batch_interval=0.0,
                          batch_deadline=1.0)
    )  # fmt: skip
    spool = spool_of(tmp_path / "spool", 5)
    process = cxsmtp_popen("send", str(spool), "--loop")
    assert sink.wait_for(2, timeout=30)
    assert sink.wait_idle(timeout=30)  # the batch is over: the loop waits 10 minutes
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=10)
    assert process.returncode == 75, err
    out = strip_timestamps(out)
    assert out.startswith("cxsmtp: interrupted: sent 2, deferred 0, failed 0 (")
    assert "; left: 3 queued, 0 deferred" in out
    assert Spool(spool).claims() == [] and Spool(spool).holder_pid() is None
    assert len(names(spool)) == 3 and len(sink.messages) == 2


# --- --dry-run and status -------------------------------------------------------------------


def test_dry_run_plan_then_status_shows_the_usage(
    tmp_path: Path,
    isolated: Any,
    sink_factory: Any,
    cxsmtp: Any,
) -> None:
    """6 per minute, a batch every 20 s of 6 * 20 / 60 = 2."""
    sink = sink_factory()
    configure(isolated, limited(sink, rate_per_hour=6, rate_window=60.0, batch_interval=20.0))
    spool = spool_of(tmp_path / "spool", 5)
    size = len(eml(0))
    before = listing(spool)
    result = cxsmtp("send", str(spool), "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    (server,) = plan["servers"]
    assert (plan["dry_run"], plan["messages"], server["server"]) == (True, 5, "local")
    assert [b["messages"] for b in server["batches"]] == [2, 2, 1]
    assert [b["bytes"] for b in server["batches"]] == [2 * size, 2 * size, size]
    starts = [time.mktime(time.strptime(b["start"][:19], "%Y-%m-%dT%H:%M:%S"))
              for b in server["batches"]]  # fmt: skip
    assert [round(b - starts[0]) for b in starts] == [0, 20, 40]
    assert server["last_at"] == server["batches"][-1]["last_at"]
    text = strip_timestamps(cxsmtp("send", str(spool), "--dry-run").stdout).splitlines()
    assert text[0].startswith("dry run: 5 message(s), ") and text[0].endswith(f" due in {spool}")
    assert "5 message(s)" in text[1] and "in 3 batch(es); last message at " in text[1]
    assert text[2].startswith("    batch 1 now: 2 message(s)")
    assert text[3].startswith("    batch 2 at ") and text[4].startswith("    batch 3 at ")
    # nothing changed: no ledger, spool untouched, no connection
    assert not (isolated.state_dir / Ledger.FILENAME).exists()
    assert listing(spool) == before and sink.connections_total == 0

    code, sent = send_json(cxsmtp, spool)
    assert (code, sent["sent"], sent["limited_by"]) == (0, 2, "count")
    ledger_before = ledger_times(isolated)
    again = json.loads(cxsmtp("send", str(spool), "--dry-run", "--json").stdout)
    assert [b["messages"] for b in again["servers"][0]["batches"]] == [2, 1]
    assert again["servers"][0]["batches"][0]["start"] == sent["next_window_at"]
    assert ledger_times(isolated) == ledger_before  # the plan changed nothing

    status = json.loads(cxsmtp("status", str(spool), "--json").stdout)
    (usage,) = status["servers"]
    assert (usage["sent_hour"], usage["bytes_hour"], usage["sent_day"]) == (2, 2 * size, 2)
    assert (usage["queued"], usage["queued_bytes"]) == (3, 3 * size)
    assert usage["window_allows"] == 4 and usage["next_window_at"] == sent["next_window_at"]
    assert usage["eta"] == again["servers"][0]["last_at"] and usage["batches_left"] == 2
    human = cxsmtp("status", str(spool)).stdout
    assert "local ([127.0.0.1]:" in human and "6 per 1 min" in human
    assert f"last 1 min: 2 ({2 * size} B)" in human and "all servers 24 h: 2 of 10000" in human
    assert "the windows allow 4 more; next window at " in human
    assert "queued    3 message(s)" in human and "ETA " in human


# --- in-process, on an injected clock -----------------------------------------------------


@pytest.fixture
def fake_time() -> Iterator[Clock]:
    yield Clock()


def test_loop_on_an_injected_clock_follows_the_seed_defaults(
    tmp_path: Path,
    sink_factory: Any,
    fake_time: Clock,
) -> None:
    """1,200 an hour, a batch every 5 minutes of 100: 250 messages in 3 batches."""
    sink = sink_factory()
    config = config_for(tmp_path, limited(sink))
    spool = make_spool(tmp_path, 250)
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        fake_time.advance(seconds)

    t0 = fake_time()
    with Ledger(tmp_path / "ledger.sqlite3", clock=fake_time, sleep=sleep) as ledger:
        plain = run_send(
            spool, config, ledger=ledger, clock=fake_time, sleep=sleep,
            password_source=lambda e: None,
        )  # fmt: skip
        assert (plain.sent, plain.remaining, plain.status) == (100, 150, "limit")
        assert (plain.limited_by, plain.next_window_at) == ("count", t0 + 300)
        looped = run_send(
            spool, config, SendOptions(loop=True), ledger=ledger, clock=fake_time, sleep=sleep,
            password_source=lambda e: None,
        )  # fmt: skip
        sends = ledger.sends("local")
    assert (looped.status, looped.sent, looped.remaining, looped.exit_code) == ("ok", 150, 0, 0)
    # first a pass that finds the window closed (one batch every 5 minutes), then two
    assert [(b.limited_by, b.next_window_at) for b in looped.batches[:1]] == [
        ("interval", t0 + 300)
    ]
    granted = [b for b in looped.batches if b.started_at is not None]
    assert [(b.started_at, b.sent) for b in granted] == [(t0 + 300, 100), (t0 + 600, 50)]
    assert sleeps == [300.0, 300.0]  # once before each batch
    assert sorted(Counter(s.time for s in sends).items()) == [
        (t0, 100),
        (t0 + 300, 100),
        (t0 + 600, 50),
    ]
    assert len(sink.messages) == 250 and names(spool) == []


def test_lost_after_the_final_dot_counts_and_refused_does_not(
    tmp_path: Path,
    sink_factory: Any,
    fake_time: Clock,
) -> None:
    sink = sink_factory(
        drop=[PhaseRule("eod", times=1)], fail=[FailRule("rcpt", 550, pattern="r2@*")]
    )
    config = config_for(tmp_path, limited(sink))
    spool = make_spool(tmp_path, 4)
    with Ledger(tmp_path / "ledger.sqlite3", clock=fake_time) as ledger:
        summary = run_send(
            spool, config, ledger=ledger, clock=fake_time, password_source=lambda e: None
        )
        sends = ledger.sends("local")
        usage = ledger.usage("local", _limits(config))
    # m0 dropped after "." (unknown: counted), m1 and m3 sent, m2 refused (not counted)
    assert (summary.sent, summary.deferred, summary.failed) == (2, 1, 1)
    assert len(sink.messages) == 2 and len(sends) == 3
    assert [s.message_id for s in sends] == [
        "<0.test@x.example>",
        "<1.test@x.example>",
        "<3.test@x.example>",
    ]
    assert usage.reserved == 0  # the batch's unused slots went back at the end


def _limits(config: Config) -> Any:
    from carerix_smtp.limits.rule import Limits

    return Limits.from_entry(config.servers["local"], config.settings)
