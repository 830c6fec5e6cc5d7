"""The shared ledger end to end (issue 16): real ``cxsmtp send`` processes of several
"hosts" (each its own config, state dir and spool) sharing one provider account's
limits through a real PostgreSQL server (tests/pg_server.py; ``pg``/``pg_url`` from
tests/limits/conftest.py), against one aiosmtpd
server that records when each message arrived.

Windows are advanced with libfaketime, preloaded directly (``LD_PRELOAD`` +
``FAKETIME``: no wrapper process, so the pid we wait on is cxsmtp's own).  The
server's arrival times are mapped onto the senders' clock (real time + the round's
offset), and every rolling window is checked: the windows that start at a send
hold the most (see test_limits_e2e.py).  Also the CLI of the shared ledger:
``ledger init`` / ``ledger show``, ``settings``, ``server --account``, ``doctor``,
bad and password-holding URLs, and fail-closed runs (exit 75, nothing sent).
"""

from __future__ import annotations

import bisect
import os
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import cxsmtp_argv, error_lines, free_port
from pg_server import PgServer
from servers import RecordingHandler, eml, names, smtp_server

from carerix_smtp.config.file import Config, ServerEntry, save_config
from carerix_smtp.config.tls import Security

LIBFAKETIME = next(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"), None)
FAST = {"connect_timeout": 5.0, "command_timeout": 5.0, "data_timeout": 5.0}
SHARED = {  # one account: 100 per batch window (24 min), 250 per hour
    "rate_per_hour": 250,
    "rate_window": 3600.0,
    "batch_max_messages": 100,
    "batch_interval": 1440.0,  # rate share 250 * 1440 / 3600 = 100
    "batch_deadline": 60.0,
}


# --- fixtures ----------------------------------------------------------------------


class TimedHandler(RecordingHandler):
    """Records each message's arrival on the senders' clock: real time + ``offset``."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = 0.0
        self.times: list[float] = []
        self.ids: list[str] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        content = envelope.original_content
        mid = content.split(b"Message-ID: ", 1)[1].split(b"\n", 1)[0].strip().decode()
        with self.lock:
            self.times.append(time.time() + self.offset)
            self.ids.append(mid)
        return reply


@pytest.fixture
def smtp() -> Iterator[Any]:
    handler = TimedHandler()
    with smtp_server(handler=handler) as server:
        yield server


# --- helpers -------------------------------------------------------------------------


def most_in_window(times: Sequence[float], window: float) -> int:
    """The most arrivals in any [s, s + window)."""
    ordered = sorted(times)
    return max(
        (bisect.bisect_left(ordered, s + window) - i for i, s in enumerate(ordered)), default=0
    )


def make_host(
    root: Path, name: str, port: int, url: str, count: int, first: int, **limits: Any
) -> dict[str, str]:
    """A host: config (entry ``name``, account "acme", the shared ledger), state dir,
    spool of ``count`` messages numbered from ``first``; its environment."""
    root.mkdir(parents=True)
    entry = ServerEntry(
        name=name, host=f"[127.0.0.1]:{port}", security=Security.NONE, account="acme",
        **{**FAST, **SHARED, **limits},
    )  # fmt: skip
    config = Config(path=root / "config.toml", servers={name: entry})
    config.settings.ledger = url
    save_config(config)
    spool = root / "spool"
    spool.mkdir()
    for n in range(first, first + count):
        (spool / f"m{n:05d}.eml").write_bytes(eml(n))
    inherited = {k: v for k, v in os.environ.items() if k != "CXSMTP_LEDGER_URL"}
    return {
        **inherited,
        "CXSMTP_CONFIG": str(config.path),
        "CXSMTP_STATE_DIR": str(root / "state"),
        "CXSMTP_SPOOL": str(spool),
    }


def start(env: dict[str, str], *args: str, offset: float | None = None) -> subprocess.Popen[str]:
    """``cxsmtp send`` of one host; ``offset``: its clock moved by libfaketime."""
    if offset is not None:
        assert LIBFAKETIME is not None
        env = {**env, "LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": f"+{offset:.0f}s"}
    return subprocess.Popen(
        [*cxsmtp_argv(), "send", env["CXSMTP_SPOOL"], *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish(process: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    assert "Traceback" not in err, err
    return process.returncode, out, err


def spool_state(env: dict[str, str]) -> tuple[list[str], list[str]]:
    """(sent, still queued or deferred) message files of a host's spool."""
    spool = Path(env["CXSMTP_SPOOL"])
    return names(spool / "sent"), names(spool) + names(spool / "deferred")


# --- three hosts, one account ------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(LIBFAKETIME is None, reason="libfaketime not installed")
def test_three_hosts_share_one_accounts_limits(tmp_path: Path, pg_url: str, smtp: Any) -> None:
    hosts = [
        make_host(tmp_path / f"host{i}", f"web{i}", smtp.port, pg_url, 300, first=i * 1000)
        for i in range(3)
    ]
    handler: TimedHandler = smtp.handler
    step = SHARED["batch_interval"] + 60  # one round per batch window, well apart
    codes: list[int] = []
    for round_ in range(16):
        handler.offset = offset = round_ * step + 1
        runs = [start(env, offset=offset) for env in hosts]
        results = [finish(run) for run in runs]
        codes += [code for code, _, _ in results]
        for code, out, err in results:
            assert code in (0, 75), (code, out, err)  # 75: limit reached, next window later
        if len(handler.ids) >= 900:
            break
    assert len(handler.ids) == 900 == len(set(handler.ids)), "every message exactly once"
    assert most_in_window(handler.times, SHARED["rate_window"]) <= 250
    assert most_in_window(handler.times, SHARED["batch_interval"]) <= 100
    for env in hosts:  # nothing lost: everything sent, and sent/ says so
        sent, left = spool_state(env)
        assert (len(sent), left) == (300, [])
    senders = [i for i, env in enumerate(hosts) if spool_state(env)[0]]
    assert len(senders) == 3, "every host got batches of the shared account"


# --- fail closed ----------------------------------------------------------------------------


def test_unreachable_database_sends_nothing_and_exits_75(tmp_path: Path, smtp: Any) -> None:
    url = f"postgresql://cxsmtp@127.0.0.1:{free_port()}/cxsmtp"
    env = make_host(tmp_path / "host", "web", smtp.port, url, 5, first=0)
    code, out, err = finish(start(env))
    assert code == 75, (out, err)
    lines = error_lines(err)
    assert lines[-1].startswith("cxsmtp: error: ledger database 127.0.0.1:"), err
    assert "unreachable" in lines[-1]
    assert smtp.handler.ids == []
    assert spool_state(env) == ([], [f"m{n:05d}.eml" for n in range(5)])


@pytest.mark.slow
def test_database_stopped_mid_run_then_next_run_continues(
    tmp_path: Path, pg: PgServer, pg_url: str, smtp: Any
) -> None:
    # real time: 15 per batch every 0.25 s, at most 60 in any second
    limits = {"rate_per_hour": 60, "rate_window": 1.0, "batch_max_messages": 15,
              "batch_interval": 0.25, "batch_deadline": 5.0}  # fmt: skip
    env = make_host(tmp_path / "host", "web", smtp.port, pg_url, 150, first=0, **limits)
    handler: TimedHandler = smtp.handler
    run = start(env, "--loop")
    deadline = time.monotonic() + 20
    while len(handler.ids) < 30 and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # polling the server's count with a deadline
    assert len(handler.ids) >= 30, finish(run)
    pg.stop()
    try:
        code, out, err = finish(run)
        assert code == 75, (out, err)
        assert "ledger database" in error_lines(err)[-1], err
        stopped_at = len(handler.ids)
        assert stopped_at < 150, "the run stopped before sending everything"
    finally:
        pg.start()
    code, out, err = finish(start(env, "--loop"))
    assert code == 0, (out, err)
    assert sorted(handler.ids) == sorted(set(handler.ids)), "no message twice"
    sent, left = spool_state(env)
    assert (len(sent), left, len(handler.ids)) == (150, [], 150)
    assert most_in_window(handler.times, limits["rate_window"]) <= limits["rate_per_hour"]
