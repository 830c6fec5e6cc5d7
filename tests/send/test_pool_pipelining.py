"""Pipelining on every connection of a pool (issue 12): each worker writes the next
message's MAIL/RCPT (and DATA) behind the current message's data, and a crash still
leaves at most one possible duplicate per connection.

The round trips are counted, not timed: a threaded scripted server (several
connections at once, real sockets) notes for every message whether the next
message's MAIL was already in its buffer when the message's data ended -- it can
only be there if the client wrote it in the same write as the end of the data.
"""

from __future__ import annotations

import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from servers import (
    ScriptConn,
    ThreadedScriptServer,
    config_for,
    delivery_log,
    entry_for,
    make_spool,
    message_ids,
    names,
)

from carerix_smtp.config.file import Config, save_config
from carerix_smtp.send.report import SendOptions
from carerix_smtp.send.run import run_send
from carerix_smtp.spool.spool import Spool

REPLY_DELAY = 0.02  # seconds before the reply to a message's data: a network round trip


class PipelineServer(ThreadedScriptServer):
    """SMTP on 127.0.0.1 with PIPELINING (and CHUNKING when asked), every connection
    in its own thread.  ``chained[c]``: per message of connection ``c``, whether the
    next MAIL was buffered already when its data ended (the last one of a
    connection is followed by QUIT, which counts as not chained)."""

    def __init__(self, *, chunking: bool) -> None:
        super().__init__()
        self.chunking = chunking
        self.chained: list[list[bool]] = []

    def __enter__(self) -> PipelineServer:
        super().__enter__()
        return self

    def serve(self, conn: ScriptConn, index: int) -> None:
        flags: list[bool] = []
        with self.cond:
            self.chained.append(flags)
        self._script(conn, flags)

    def _script(self, conn: ScriptConn, flags: list[bool]) -> None:
        conn.send(b"220 pipeline.test ESMTP\r\n")
        conn.ehlo("PIPELINING", *(["CHUNKING"] if self.chunking else []))
        while True:
            words = conn.readline().split()
            verb = words[0].decode().upper()
            if verb in ("MAIL", "RCPT", "RSET", "NOOP"):
                conn.send(b"250 2.0.0 ok\r\n")
            elif verb == "DATA":
                conn.send(b"354 go ahead\r\n")
                conn.read_data()
                self._end_of_data(conn, flags)
            elif verb == "BDAT":
                assert len(words) == 3, "one chunk per small message"
                size = int(words[1])
                while len(conn.buffer) < size:
                    chunk = conn.sock.recv(65536)
                    if not chunk:
                        return
                    conn.buffer += chunk
                conn.buffer = conn.buffer[size:]
                self._end_of_data(conn, flags)
            elif verb == "QUIT":
                conn.send(b"221 2.0.0 bye\r\n")
                return

    def _end_of_data(self, conn: ScriptConn, flags: list[bool]) -> None:
        flags.append(conn.buffer.startswith(b"MAIL FROM"))
        self.stop.wait(REPLY_DELAY)  # the round trip (never set while serving)
        conn.send(b"250 2.0.0 queued\r\n")


@pytest.mark.parametrize("chunking", [False, True], ids=["data", "bdat"])
def test_each_pool_connection_writes_the_next_envelope_behind_the_data(
    tmp_path: Path, chunking: bool
) -> None:
    spool = make_spool(tmp_path, 20)
    with PipelineServer(chunking=chunking) as server:
        config = config_for(tmp_path, entry_for(server.port, connections=2))
        summary = run_send(spool, config, SendOptions(), password_source=lambda entry: None)
    assert server.errors == []
    assert (summary.status, summary.sent) == ("ok", 20)
    assert len(server.chained) == 2  # both connections were used
    per_connection = [sum(flags) for flags in server.chained]
    # Every message but the first and the last of a connection can have the next
    # one's commands behind its data; the first may start before the next is ready.
    assert sum(len(flags) for flags in server.chained) == 20
    assert sum(per_connection) >= 20 - 2 * 2 - 2, server.chained
    assert all(count >= 3 for count in per_connection), server.chained


def test_pool_keeps_the_order_oldest_first(tmp_path: Path, sink_factory: Any) -> None:
    sink = sink_factory(latency_ms=5, chunking=True)
    spool = make_spool(tmp_path, 40)
    config = config_for(tmp_path, entry_for(sink, connections=3))
    interval = sys.getswitchinterval()
    summary = run_send(spool, config, SendOptions(), password_source=lambda entry: None)
    assert (summary.status, summary.sent) == ("ok", 40)
    assert sys.getswitchinterval() == interval  # lowered only while the threads ran
    got = [int(mid[1:].split(".")[0]) for mid in message_ids(sink)]
    assert sorted(got) == list(range(40))
    # three connections overlap, but none runs far ahead of the order of the queue:
    # a message is handed out only when its connection has room for it
    assert all(abs(position - number) <= 3 * 3 for position, number in enumerate(got))


# --- crash safety -------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_sigkill_of_a_pipelined_pool_loses_nothing(
    tmp_path: Path, isolated: Any, sink_factory: Any
) -> None:
    from send.test_crash import delivered, kill_at_random_point, run_to_completion

    connections = 3
    sink = sink_factory(latency_ms=2, chunking=True)
    entry = entry_for(sink, connections=connections)
    save_config(Config(path=isolated.config, servers={"local": entry}))
    total = 300
    spool = make_spool(tmp_path, total)
    rng = random.Random(20261130)
    kills = sum(kill_at_random_point(spool, sink, rng, total) for _ in range(3))
    run_to_completion(spool, sink)
    assert kills >= 1
    received = delivered(sink)
    assert set(received) == {f"<{n}.test@x.example>" for n in range(total)}, "a message was lost"
    duplicates = sum(count - 1 for count in received.values())
    assert duplicates <= kills * connections, f"{duplicates} duplicates for {kills} kills"
    requeued = {e.get("message_id") for e in delivery_log(spool) if e["outcome"] == "requeued"}
    assert {mid for mid, count in received.items() if count > 1} <= requeued
    assert Counter(message_ids(sink)) == received
    assert Spool(spool).claims() == [] and names(spool) == []
