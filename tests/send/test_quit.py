"""The end of a send run: QUIT is written and the connection closed without waiting
for the 221 (Postfix's ``smtp_skip_quit_response = yes``): the transactions are
over, and the reply would cost a round trip at the end of every run.  The probe
(``cxsmtp test``) still waits for it and reports it."""

from __future__ import annotations

import threading
from pathlib import Path

from servers import (
    ScriptConn,
    ScriptServer,
    answer_transactions,
    config_for,
    host_entry,
    make_spool,
    names,
)

from carerix_smtp.send.report import SendOptions
from carerix_smtp.send.run import run_send
from carerix_smtp.smtp.session import SmtpSession


class HeldQuit:
    """A script that answers everything at once but holds its 221 until the client
    has closed (or a generous deadline passes): ``closed_first`` says which came."""

    def __init__(self, hold: float) -> None:
        self.hold = hold  # seconds to wait for the client's close before the 221
        self.closed_first: bool | None = None
        self.quit_seen = threading.Event()

    def __call__(self, conn: ScriptConn) -> None:
        conn.send(b"220 quit.test ESMTP\r\n")
        conn.ehlo("PIPELINING")

        def held() -> None:  # before the 221
            self.quit_seen.set()
            conn.sock.settimeout(self.hold)
            try:
                self.closed_first = conn.buffer == b"" and conn.sock.recv(1) == b""
            except (TimeoutError, OSError):
                self.closed_first = False

        answer_transactions(conn, on_quit=held)


def test_a_send_run_closes_after_quit_without_awaiting_the_221(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, 3)
    script = HeldQuit(hold=2.0)  # less than the client's QUIT timeout (5 s)
    with ScriptServer(script) as server:
        config = config_for(tmp_path, host_entry(server.host, security="none"))
        summary = run_send(spool, config, SendOptions(), password_source=lambda entry: None)
        assert server.done.wait(15)
    assert server.errors == []
    assert (summary.status, summary.sent) == ("ok", 3)
    assert names(spool / "sent") != [] and names(spool) == []
    assert script.quit_seen.is_set() and script.closed_first is True


def test_a_session_closed_plainly_still_awaits_the_221(tmp_path: Path) -> None:
    script = HeldQuit(hold=0.5)  # then it answers; the client's timeout is 5 s
    with ScriptServer(script) as server:
        session = SmtpSession(host_entry(server.host, security="none"), None, local_hostname="t")
        session.open()
        session.close()
        assert server.done.wait(15)
    assert script.quit_seen.is_set() and script.closed_first is False
    assert session.closed
