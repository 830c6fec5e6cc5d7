"""Which connection of a server with ``connections`` > 1 takes a message (send/spread.py):
a server that answers at once keeps one connection, driven by the dispatching thread;
one that keeps the first connection waiting gets its other connections."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from servers import (
    ScriptConn,
    ThreadedScriptServer,
    answer_transactions,
    config_for,
    entry_for,
    make_spool,
    message_ids,
    names,
)

from carerix_smtp.send.report import SendOptions
from carerix_smtp.send.run import run_send
from carerix_smtp.send.spread import LATE, STRIDE, WAIT, WARM, Pace, answered, awaited


def send(spool: Path, config: Any) -> Any:
    return run_send(spool, config, SendOptions(), password_source=lambda entry: None)


# --- the pace: late replies, counted on the socket ------------------------------------


def test_a_fast_server_is_never_slow() -> None:
    pace = Pace()
    for _ in range(100):
        pace.note(0.0)
    assert not pace.slow and pace.late == 0.0


def test_late_replies_in_a_row_make_a_server_slow_and_one_in_time_ends_it() -> None:
    pace = Pace()
    pace.note(0.0)
    late = 0
    while not pace.slow and late < 20:
        pace.note(0.050)
        late += 1
    assert 5 <= late <= 8  # about six in a row
    assert pace.late > LATE and pace.wait > WAIT
    pace.note(0.0)
    assert not pace.slow


def test_a_hiccup_or_short_waits_are_not_slow() -> None:
    pace = Pace()
    for _ in range(50):
        pace.note(0.0)
    for _ in range(3):  # a fast server descheduled for a moment
        pace.note(0.010)
    assert not pace.slow
    short = Pace()
    for _ in range(50):
        short.note(WAIT / 4)  # always a little late: not worth another connection
    assert short.late > LATE and not short.slow


def test_the_first_late_reply_decides_at_once() -> None:
    pace = Pace()
    pace.note(0.050)  # no history: the first message of a slow server
    assert pace.slow


def sampled(pace: Pace, messages: int, wait: float) -> int:
    """How many of ``messages`` had their reply sampled (``due``), each sample ``wait``."""
    count = 0
    for _ in range(messages):
        if pace.due():
            pace.note(wait)
            count += 1
    return count


def test_a_server_in_time_is_sampled_every_stride_th_message_and_a_late_reply_ends_it() -> None:
    pace = Pace()
    assert sampled(pace, WARM, 0.0) == WARM  # a new server: every message
    assert sampled(pace, 10 * STRIDE, 0.0) == 10  # in time: every STRIDE-th
    pace.note(0.050)  # a late reply (one of those sampled)
    assert sampled(pace, 5, 0.0) == 5  # every message again, until it is calm


def test_a_server_that_turns_slow_is_seen_within_a_stride_and_six_replies() -> None:
    pace = Pace()
    sampled(pace, 200, 0.0)
    messages = 0
    while not pace.slow:
        if pace.due():
            pace.note(0.050)
        messages += 1
        assert messages <= STRIDE - 1 + 8
    assert messages >= 5


@pytest.fixture
def connected() -> Iterator[tuple[Any, socket.socket]]:
    """A Connection-shaped object whose session's socket is one end of a pair."""
    mine, theirs = socket.socketpair()
    channel = SimpleNamespace(sock=mine, rbuf=bytearray())
    yield SimpleNamespace(session=SimpleNamespace(channel=channel)), theirs
    mine.close()
    theirs.close()


def test_answered_asks_the_socket_and_the_buffer(connected: tuple[Any, socket.socket]) -> None:
    conn, peer = connected
    assert not answered(conn)
    conn.session.channel.rbuf += b"250 "
    assert answered(conn)  # read already, not parsed yet
    conn.session.channel.rbuf.clear()
    peer.sendall(b"250 2.0.0 ok\r\n")
    assert answered(conn) and awaited(conn) == 0.0
    assert answered(SimpleNamespace(session=None))  # nothing to wait for


def test_awaited_is_the_time_until_the_reply(connected: tuple[Any, socket.socket]) -> None:
    conn, peer = connected
    timer = threading.Timer(0.05, peer.sendall, args=(b"250 2.0.0 ok\r\n",))
    timer.start()
    try:
        assert 0.03 <= awaited(conn) < 0.5
    finally:
        timer.join()
    assert answered(conn)  # left for the reader


# --- whole passes -------------------------------------------------------------------------


@pytest.fixture
def smtp_sink() -> Iterator[int]:
    """Postfix's smtp-sink on a loopback port (a server in another process: one in
    this process would wait for the GIL, and look slow)."""
    import os
    import shutil
    import subprocess
    import time

    from conftest import free_port

    program = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    if not os.path.exists(program):
        pytest.skip("Postfix's smtp-sink is not installed")
    port = free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    process = subprocess.Popen([program, *user, f"127.0.0.1:{port}", "100"])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None
                threading.Event().wait(0.01)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_a_fast_server_keeps_one_connection(tmp_path: Path, smtp_sink: int) -> None:
    from carerix_smtp.smtp.session import SmtpSession

    carried: list[int] = []  # messages per session, in the order they were opened

    def factory(entry: Any, password: Any) -> SmtpSession:
        session = SmtpSession(entry, password, local_hostname="test")
        index = len(carried)
        carried.append(0)
        run = session.run

        def counted(*args: Any, **kw: Any) -> Any:
            carried[index] += 1
            return run(*args, **kw)

        session.run = counted  # type: ignore[method-assign]
        return session

    spool = make_spool(tmp_path, 400)
    config = config_for(tmp_path, entry_for(smtp_sink, connections=4))
    summary = run_send(
        spool, config, SendOptions(), password_source=lambda e: None, session_factory=factory
    )
    assert (summary.status, summary.sent) == ("ok", 400) and names(spool) == []
    # Other threads would only cost a hand-over per message: the first connection
    # carries (nearly) all, even on a busy machine where the server may lag a moment.
    assert sum(carried) == 400 and carried[0] >= 0.9 * 400, carried


def test_a_slow_server_gets_every_connection_from_the_start(
    tmp_path: Path, sink_factory: Any
) -> None:
    sink = sink_factory(latency_ms=20)  # the greeting and EHLO already show it
    spool = make_spool(tmp_path, 24)
    summary = send(spool, config_for(tmp_path, entry_for(sink, connections=3)))
    assert (summary.status, summary.sent) == ("ok", 24)
    assert sink.connections_total == 3 and sink.connections_max == 3  # never more
    assert sorted(message_ids(sink)) == sorted(f"<{n}.test@x.example>" for n in range(24))


class LateData(ThreadedScriptServer):
    """Greets and answers EHLO at once; every message's final reply comes ``late``
    seconds after its data (a server that scans what it accepts)."""

    def __init__(self, late: float) -> None:
        super().__init__()
        self.late = late
        self.messages = 0

    def serve(self, conn: ScriptConn, index: int) -> None:
        conn.send(b"220 late.test ESMTP\r\n")
        conn.ehlo("PIPELINING")
        answer_transactions(conn, on_data=self._work)

    def _work(self) -> None:
        self.stop.wait(self.late)  # the server at work (never set meanwhile)
        with self.cond:
            self.messages += 1


def test_late_replies_spread_a_quick_to_greet_server_and_say_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Quick to greet, slow to accept data: the first connection carries the first
    messages alone, then the late replies bring in the others (``cxsmtp send -v``
    says so)."""
    caplog.set_level(logging.INFO)
    spool = make_spool(tmp_path, 30)
    with LateData(late=0.03) as server:
        summary = send(spool, config_for(tmp_path, entry_for(server.port, connections=3)))
    assert server.errors == []
    assert (summary.status, summary.sent) == ("ok", 30) and server.messages == 30
    assert server.accepted == 3
    assert "server local: its replies come late; up to 3 connections" in caplog.messages
    assert not [m for m in caplog.messages if "slow to open" in m]


class TurnsSlow(LateData):
    """Answers the first ``after`` messages at once, then each final reply ``late``
    seconds after its data; notes how many messages it had taken when the second
    connection came."""

    def __init__(self, late: float, after: int) -> None:
        super().__init__(late)
        self.after = after
        self.second_at: int | None = None

    def serve(self, conn: ScriptConn, index: int) -> None:
        if index == 1:
            with self.cond:
                self.second_at = self.messages
        super().serve(conn, index)

    def _work(self) -> None:
        with self.cond:
            self.messages += 1
            slow = self.messages > self.after
        if slow:
            self.stop.wait(self.late)


def test_a_server_that_turns_slow_after_sampling_thinned_out_gets_its_connections(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Past WARM quick replies only every STRIDE-th is sampled; the first late one
    samples every message again, and the other connections come soon after."""
    caplog.set_level(logging.INFO)
    after = WARM + 4 * STRIDE
    spool = make_spool(tmp_path, after + 40)
    with TurnsSlow(late=0.03, after=after) as server:
        summary = send(spool, config_for(tmp_path, entry_for(server.port, connections=3)))
    assert server.errors == []
    assert (summary.status, summary.sent) == ("ok", after + 40) and server.messages == after + 40
    assert server.accepted == 3
    assert "server local: its replies come late; up to 3 connections" in caplog.messages
    assert server.second_at is not None
    # Seen within a stride and the six late replies in a row (and the two in flight).
    assert server.second_at <= after + STRIDE + 8 + 2, server.second_at
