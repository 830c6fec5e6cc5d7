"""A server slow to greet (far away) gets its other connections opened while the
first one still does EHLO, not after it (send/spread.py, Pool.open_ahead): one
round trip less before they carry messages.  And a fast one gets none ahead.

A threaded scripted server on 127.0.0.1 holds the first connection's EHLO reply
until the other connections have arrived (or 5 s pass): only a client that opens
them meanwhile lets it go at once.  Counted, not timed."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
from servers import (
    ScriptConn,
    ThreadedScriptServer,
    answer_transactions,
    config_for,
    entry_for,
    make_spool,
)

from carerix_smtp.send.report import SendOptions
from carerix_smtp.send.run import run_send

WAIT = 3.0  # seconds the first EHLO reply waits for the others, at most (client: 5 s)


class SlowGreeting(ThreadedScriptServer):
    """Every connection greeted after ``greeting_delay``; the first connection's EHLO
    answered once ``expect`` connections came (``all_came``) or ``wait`` passed."""

    def __init__(
        self,
        *,
        greeting_delay: float,
        expect: int,
        wait: float = WAIT,
        refuse_first: bool = False,
        refuse_all: bool = False,
    ) -> None:
        super().__init__()
        self.refuse_first = refuse_first or refuse_all  # the first one's EHLO gets a 421
        self.refuse_all = refuse_all  # and every other one's too
        self.quits = 0
        self.greeting_delay = greeting_delay
        self.expect = expect
        self.wait = wait
        self.all_came: bool | None = None

    def serve(self, conn: ScriptConn, index: int) -> None:
        self.stop.wait(self.greeting_delay)  # a server far away (never set meanwhile)
        conn.send(b"220 slow.test ESMTP\r\n")
        if index == 0:
            conn.readline()
            with self.cond:
                self.all_came = self.cond.wait_for(lambda: self.accepted >= self.expect, self.wait)
            if self.refuse_first:
                conn.send(b"421 4.3.2 not now\r\n")
                return
            conn.send(b"250-slow.test\r\n250 PIPELINING\r\n")
        elif self.refuse_all:
            conn.readline()
            conn.send(b"421 4.3.2 not now\r\n")
            return
        else:
            conn.ehlo("PIPELINING")
        answer_transactions(conn, on_quit=self._quit)

    def _quit(self) -> None:
        with self.cond:
            self.quits += 1

    def __enter__(self) -> SlowGreeting:
        super().__enter__()
        return self


def test_a_server_slow_to_greet_gets_its_connections_opened_during_the_first_ehlo(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    spool = make_spool(tmp_path, 12)
    with SlowGreeting(greeting_delay=0.05, expect=3) as server:
        config = config_for(tmp_path, entry_for(server.port, connections=3))
        summary = run_send(spool, config, SendOptions(), password_source=lambda entry: None)
    assert server.errors == []
    assert (summary.status, summary.sent) == ("ok", 12)
    assert server.all_came is True and server.accepted == 3
    assert "server local: slow to open a connection; up to 3 connections" in caplog.messages


@pytest.mark.parametrize("messages", [1, 2])
def test_no_more_connections_ahead_than_messages(tmp_path: Path, messages: int) -> None:
    spool = make_spool(tmp_path, messages)
    with SlowGreeting(greeting_delay=0.05, expect=messages) as server:
        config = config_for(tmp_path, entry_for(server.port, connections=3))
        summary = run_send(spool, config, SendOptions(), password_source=lambda entry: None)
    assert server.errors == []
    assert (summary.status, summary.sent) == ("ok", messages)
    assert server.all_came is True and server.accepted == messages


def test_a_server_quick_to_greet_gets_no_connection_ahead(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, 1)
    with SlowGreeting(greeting_delay=0.0, expect=2, wait=0.5) as server:
        config = config_for(tmp_path, entry_for(server.port, connections=3))
        summary = run_send(spool, config, SendOptions(), password_source=lambda entry: None)
    assert server.errors == []
    assert (summary.status, summary.sent) == ("ok", 1)
    assert server.all_came is False and server.accepted == 1


def test_the_first_connection_failing_the_ones_opened_ahead_take_the_messages(
    tmp_path: Path,
) -> None:
    spool = make_spool(tmp_path, 6)
    with SlowGreeting(greeting_delay=0.05, expect=3, refuse_first=True) as server:
        config = config_for(tmp_path, entry_for(server.port, connections=3))
        summary = run_send(spool, config, SendOptions(), password_source=lambda entry: None)
        with server.cond:  # each connection opened ahead ends with QUIT
            assert server.cond.wait_for(lambda: server.quits == 2, WAIT)
    assert server.errors == [] and server.all_came is True and server.accepted == 3
    assert (summary.status, summary.sent) == ("ok", 6)
    assert list(spool.glob("*.eml")) == []
    pool_threads = [t for t in threading.enumerate() if t.name.startswith("cxsmtp-local-")]
    assert pool_threads == []  # the pool's threads ended with the run


def test_every_connection_failing_leaves_all_queued(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, 6)
    with SlowGreeting(greeting_delay=0.05, expect=3, refuse_all=True) as server:
        config = config_for(tmp_path, entry_for(server.port, connections=3))
        summary = run_send(spool, config, SendOptions(), password_source=lambda entry: None)
    assert server.errors == [] and server.all_came is True
    assert (summary.status, summary.sent) == ("unreachable", 0)
    assert sorted(p.name for p in spool.glob("*.eml")) == [f"m{n:05d}.eml" for n in range(6)]
