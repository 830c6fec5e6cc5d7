"""``cxsmtp status`` and the counts of ``cxsmtp send`` (issue 11): queued, deferred
and failed apart, sent-with-failures vs partial, a refused MAIL FROM as the
message's reply, failures listed once, the last run and each server's last error,
and on a terminal the tables and the chart of the messages sent per hour."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from servers import eml, entry_for, make_spool

from carerix_smtp.config.file import Config, save_config
from carerix_smtp.sink.config import FailRule

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def on_a_terminal(*args: str) -> tuple[int, str]:
    """Run cxsmtp with stdout on a pseudo-terminal; (exit code, what it showed)."""
    from conftest import assert_no_traceback, cxsmtp_argv

    controller, terminal = pty.openpty()
    env = {**os.environ, "COLUMNS": "120", "LINES": "50", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    process = subprocess.Popen(
        [*cxsmtp_argv(), *args], stdout=terminal, stderr=subprocess.PIPE, env=env
    )
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    code = process.wait(timeout=30)
    assert process.stderr is not None
    assert_no_traceback(process.args, process.stderr.read().decode())
    return code, output.decode()


def test_queued_deferred_and_failed_apart_in_send_and_status(
    tmp_path: Path, configured: Any, cxsmtp: Any
) -> None:
    configured(fail=[FailRule("rcpt", 550, pattern="r0@*"), FailRule("rcpt", 451, pattern="r1@*")])
    spool = make_spool(tmp_path, 4)
    sent = cxsmtp("send", str(spool), "--max-messages", "3", "--json")
    assert sent.returncode == 65, sent.stderr
    data = json.loads(sent.stdout)
    assert (data["sent"], data["deferred"], data["failed"]) == (1, 1, 1)
    assert data["left"]["queued"] == 1 and data["left"]["deferred"] == 1
    assert data["left"]["next_retry"] is not None

    text = cxsmtp("status", str(spool))
    assert text.returncode == 0, text.stderr
    rows = {line.split()[0]: line.split()[1] for line in lines(text.stdout)[1:5]}
    assert rows == {"queued": "1", "deferred": "1", "sent": "1", "failed": "1"}
    assert "next retry 20" in text.stdout
    status = json.loads(cxsmtp("status", str(spool), "--json").stdout)
    counts = [status[k]["count"] for k in ("queued", "deferred", "sent", "failed")]
    assert counts == [1, 1, 1, 1] and status["next_retry"] is not None

    again = cxsmtp("send", str(spool))  # the last queued one goes; the deferred waits
    (line,) = lines(again.stdout)
    assert "sent 1, deferred 0, failed 0 (" in line
    assert re.search(r"left: 0 queued, 1 deferred \(next retry 20\d\d-", line), line


def test_one_refused_recipient_is_sent_with_failures_not_partial(
    tmp_path: Path, configured: Any, cxsmtp: Any
) -> None:
    configured(
        fail=[FailRule("rcpt", 550, pattern="bad@*"), FailRule("rcpt", 451, pattern="later@*")]
    )
    spool = make_spool(tmp_path)
    (spool / "a.eml").write_bytes(eml(1, to="ok@y.example, bad@y.example"))
    (spool / "b.eml").write_bytes(eml(2, to="ok@y.example, later@y.example"))
    result = cxsmtp("send", str(spool), "--json")
    assert result.returncode == 65, result.stderr  # bad@ refused for good
    data = json.loads(result.stdout)
    assert (data["sent"], data["recipients_failed"], data["partial"]) == (1, 1, 1)
    assert (data["deferred"], data["failed"]) == (1, 0)
    text = cxsmtp("send", str(spool))  # nothing due; a.eml again to see the text line
    assert text.returncode == 0
    (spool / "c.eml").write_bytes(eml(3, to="ok@y.example, bad@y.example"))
    line = lines(cxsmtp("send", str(spool)).stdout)[-1]
    assert "sent 1, deferred 0, failed 0, recipients refused 1 (" in line

    status = json.loads(cxsmtp("status", str(spool), "--json").stdout)
    assert (status["sent"]["count"], status["recipients_failed"], status["partial"]) == (2, 2, 1)
    human = cxsmtp("status", str(spool)).stdout
    assert "2 recipient(s) refused" in human and "1 already sent to some recipients" in human


def test_refused_mail_from_is_the_messages_reply(
    tmp_path: Path, configured: Any, cxsmtp: Any
) -> None:
    configured(fail=[FailRule("mail", 550, pattern="nobody@*")])
    spool = make_spool(tmp_path)
    (spool / "m.eml").write_bytes(eml(1, sender="nobody@x.example", to="r1@y.example"))
    result = cxsmtp("send", str(spool), "--json")
    assert result.returncode == 65
    (failure,) = json.loads(result.stdout)["failures"]
    assert failure.startswith("m.eml: MAIL FROM refused: 550")
    record = json.loads((spool / "failed" / "m.eml.json").read_text())
    assert record["reply"]["code"] == 550
    assert record["reason"].startswith("failed: MAIL FROM refused: 550")
    refused = record["recipients"]["failed"]["r1@y.example"]
    assert refused["code"] is None and refused["text"] == "not tried: MAIL FROM refused"
    human = cxsmtp("status", str(spool)).stdout
    assert "failed/m.eml  -  failed: MAIL FROM refused: 550" in human
    assert "r1@y.example" not in human


def test_failures_listed_once_sorted_at_most_20(
    tmp_path: Path, configured: Any, cxsmtp: Any
) -> None:
    configured(fail=[FailRule("rcpt", 550)])
    spool = make_spool(tmp_path, 25)
    result = cxsmtp("send", str(spool))
    assert result.returncode == 65
    failed = [line for line in lines(result.stderr) if "failed: m0" in line]
    assert len(failed) == 20 and failed == sorted(failed)
    assert "… and 5 more" in result.stderr

    status = cxsmtp("status", str(spool))
    assert status.returncode == 0
    out = status.stdout
    assert "not delivered (25):" in out and "… and 5 more" in out
    assert "recipients not" not in out and "failed messages" not in out
    shown = [line.split()[0] for line in lines(out) if line.startswith("  failed/")]
    assert shown == [f"failed/m{n:05d}.eml" for n in range(20)]  # each once, sorted
    undelivered = json.loads(cxsmtp("status", str(spool), "--json").stdout)["undelivered"]
    assert len(undelivered) == 25 and undelivered[0]["recipient"] == "r0@y.example"


def test_last_run_and_last_error_per_server(tmp_path: Path, isolated: Any, cxsmtp: Any) -> None:
    from carerix_smtp.send.history import record_run
    from carerix_smtp.send.report import RunSummary, ServerFailure

    save_config(Config(path=isolated.config, servers={"xs4all": entry_for(9)}))
    spool = make_spool(tmp_path, 2)
    summary = RunSummary(status="deferred", deferred=2)
    summary.server_failures.append(
        ServerFailure("xs4all", "connect", "server xs4all: cannot connect: connection refused")
    )
    first = time.time() - 600
    record_run(isolated.state_dir, summary, now=first, quiet=True)
    record_run(isolated.state_dir, summary, now=first + 600, quiet=True)

    result = cxsmtp("status", str(spool))
    assert result.returncode == 0, result.stderr
    from carerix_smtp.cli.status_view import clock
    from carerix_smtp.spool.records import iso

    since = clock(first)  # HH:MM:SS today
    assert f"server xs4all: failing since {since}: cannot connect: connection refused" in (
        result.stdout
    )
    assert re.search(
        r"last run: 20\d\d-\d\d-\d\d .*: deferred \(exit \d+\): sent 0, deferred 2", result.stdout
    )
    data = json.loads(cxsmtp("status", str(spool), "--json").stdout)
    assert data["last_run"]["status"] == "deferred" and data["last_run"]["deferred"] == 2
    (error,) = data["server_errors"]
    assert error["server"] == "xs4all" and error["kind"] == "connect"
    assert error["since"] == iso(first) and error["recovered_at"] is None


def test_status_on_a_terminal_tables_colours_and_a_chart_of_24_hours(
    tmp_path: Path, configured: Any, cxsmtp: Any
) -> None:
    configured(fail=[FailRule("rcpt", 550, pattern="r0@*")])
    spool = make_spool(tmp_path, 4)
    assert cxsmtp("send", str(spool)).returncode == 65
    code, shown = on_a_terminal("status", str(spool))
    assert code == 0
    assert "\x1b[" in shown  # colours
    plain = ANSI.sub("", shown)
    assert "┃ state" in plain and "not delivered (1)" in plain  # rich tables
    assert "sent per hour, last 24 h" in plain
    bars = [line for line in plain.splitlines() if line.startswith("  │")]
    assert len(bars) == 4  # chart rows
    bottom = bars[-1][3:]
    cells = [bottom[i : i + 2] for i in range(0, len(bottom.rstrip()), 3)]
    assert len(cells) == 24  # one slot per hour
    assert cells[:-1] == ["··"] * 23 and cells[-1] != "··"  # 3 sent, all this hour
    assert "last 24 h, all servers: 3 of 10000" in plain

    piped = cxsmtp("status", str(spool)).stdout  # off a terminal: plain lines only
    assert "\x1b[" not in piped and "│" not in piped and "sent per hour" not in piped
