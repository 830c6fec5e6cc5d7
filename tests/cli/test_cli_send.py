"""``cxsmtp send / enqueue / status / retry`` as a user runs them: real subprocesses,
a real SMTP server on 127.0.0.1; every test checks the exit code and the output."""

from __future__ import annotations

import json
import os
import pty
import subprocess
from pathlib import Path
from typing import Any

from conftest import strip_timestamps
from servers import eml, entry_for, listing, make_spool, names

from carerix_smtp.config.file import Config, save_config
from carerix_smtp.sink.config import FailRule
from carerix_smtp.spool.spool import Spool


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# --- send ------------------------------------------------------------------------------


def test_send_prints_one_summary_line_off_a_terminal(
    tmp_path: Path, configured: Any, cxsmtp: Any
) -> None:
    sink = configured()
    spool = make_spool(tmp_path, 3)
    result = cxsmtp("send", str(spool))
    assert result.returncode == 0, result.stderr
    (line,) = lines(strip_timestamps(result.stdout))
    assert line.startswith("cxsmtp: ok: sent 3, deferred 0, failed 0 (")
    assert line.endswith("; left: 0 queued, 0 deferred")
    assert result.stderr == ""
    assert len(sink.messages) == 3 and len(names(spool / "sent")) == 3


def test_send_json_summary(tmp_path: Path, configured: Any, cxsmtp: Any) -> None:
    configured(fail=[FailRule("rcpt", 451, pattern="r1@*")])
    spool = make_spool(tmp_path, 3)
    result = cxsmtp("send", str(spool), "--json")
    assert result.returncode == 0, result.stderr  # a 4xx is retried later: nothing wrong
    assert result.stderr == ""  # a deferral is no error
    data = json.loads(result.stdout)  # one JSON object, no time stamp
    assert {"status", "sent", "deferred", "failed", "remaining", "bytes", "elapsed_s"} <= set(data)
    assert (data["status"], data["sent"], data["deferred"], data["failed"]) == ("deferred", 2, 1, 0)
    assert data["bytes"] == len(eml(0)) + len(eml(2))


def test_send_with_failures_exit_65_names_them_on_stderr(
    tmp_path: Path, configured: Any, cxsmtp: Any
) -> None:
    configured(fail=[FailRule("rcpt", 550, pattern="r0@*")])
    spool = make_spool(tmp_path, 2)
    (spool / "junk.eml").write_bytes(b"junk\n")
    result = cxsmtp("send", str(spool))
    assert result.returncode == 65
    err = strip_timestamps(result.stderr)
    assert "\ncxsmtp: failed: m00000.eml: r0@y.example: 550 5.1.1" in f"\n{err}"
    assert "\ncxsmtp: failed: junk.eml: header line 1 is not" in f"\n{err}"
    (line,) = lines(strip_timestamps(result.stdout))
    assert line.startswith("cxsmtp: failed: sent 1, deferred 0, failed 2")


def test_send_quiet_prints_errors_only(tmp_path: Path, configured: Any, cxsmtp: Any) -> None:
    configured()
    spool = make_spool(tmp_path, 2)
    result = cxsmtp("send", str(spool), "--quiet")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert len(names(spool / "sent")) == 2


def test_nothing_to_do_is_silent_under_cron(tmp_path: Path, configured: Any, cxsmtp: Any) -> None:
    configured()
    spool = make_spool(tmp_path, 0)
    result = cxsmtp("send", str(spool))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_wrong_password_exit_77_touches_nothing(
    tmp_path: Path, configured: Any, cxsmtp: Any
) -> None:
    sink = configured(
        auth=("user", "secret"),
        auth_required=True,
        auth_require_tls=False,
        entry={"username": "user", "allow_plaintext_auth": True},
    )
    spool = make_spool(tmp_path, 2)
    before = listing(spool)
    result = cxsmtp("send", str(spool), env={"CXSMTP_PASSWORD_LOCAL": "not-the-password"})
    assert result.returncode == 77
    assert "cxsmtp: error:" in result.stderr and "535" in result.stderr
    assert "not-the-password" not in result.stderr + result.stdout
    assert listing(spool) == before and sink.messages == []


def test_missing_spool_exit_78_creates_nothing(
    tmp_path: Path, configured: Any, cxsmtp: Any
) -> None:
    configured()
    missing = tmp_path / "no-such-spool"
    result = cxsmtp("send", str(missing))
    assert result.returncode == 78
    assert strip_timestamps(result.stderr).startswith(
        f"cxsmtp: error: spool {missing}: no such directory"
    )
    assert not missing.exists()


def test_unknown_server_exit_78(tmp_path: Path, configured: Any, cxsmtp: Any) -> None:
    configured()
    spool = make_spool(tmp_path, 1)
    result = cxsmtp("send", str(spool), "--server", "nope")
    assert result.returncode == 78
    assert "no server named 'nope'" in result.stderr and "local" in result.stderr
    assert names(spool) == ["m00000.eml"]


def test_unreachable_server_exit_75(tmp_path: Path, isolated: Any, cxsmtp: Any) -> None:
    from conftest import free_port

    save_config(Config(path=isolated.config, servers={"local": entry_for(free_port())}))
    spool = make_spool(tmp_path, 2)
    result = cxsmtp("send", str(spool))
    assert result.returncode == 75
    (line,) = lines(strip_timestamps(result.stderr))
    assert line.startswith("cxsmtp: error: server local: ")
    (summary,) = lines(strip_timestamps(result.stdout))
    assert summary.startswith("cxsmtp: unreachable: sent 0, deferred 0, failed 0 (")
    assert "left: 2 queued, 0 deferred" in summary and names(spool) == ["m00000.eml", "m00001.eml"]


def test_second_run_exits_0_with_a_notice(tmp_path: Path, configured: Any, cxsmtp: Any) -> None:
    sink = configured()
    spool = make_spool(tmp_path, 1)
    with Spool(spool).lock():
        result = cxsmtp("send", str(spool))
    assert result.returncode == 0
    assert lines(strip_timestamps(result.stdout)) == [
        f"cxsmtp: another cxsmtp send holds the lock on {spool} (pid {os.getpid()}); nothing done"
    ]
    assert sink.connections_total == 0


def test_dry_run_prints_the_plan(tmp_path: Path, configured: Any, cxsmtp: Any) -> None:
    sink = configured()
    spool = make_spool(tmp_path, 2)
    before = listing(spool)
    result = cxsmtp("send", str(spool), "--dry-run")
    assert result.returncode == 0
    out = lines(strip_timestamps(result.stdout))
    assert out[0].startswith("dry run: 2 message(s), ") and str(spool) in out[0]
    assert out[1].startswith("  local ([127.0.0.1]:") and "2 message(s)" in out[1]
    assert "1 batch(es); last message at " in out[1]
    assert listing(spool) == before and sink.connections_total == 0
    data = json.loads(cxsmtp("send", str(spool), "--dry-run", "--json").stdout)
    assert data["messages"] == 2 and data["servers"][0]["server"] == "local"


def test_progress_bar_on_a_terminal(tmp_path: Path, configured: Any) -> None:
    from conftest import assert_no_traceback, cxsmtp_argv

    configured()
    spool = make_spool(tmp_path, 3)
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [*cxsmtp_argv(), "send", str(spool)], stdout=terminal, stderr=subprocess.PIPE
    )
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    assert process.wait(timeout=30) == 0
    assert process.stderr is not None
    assert_no_traceback(process.args, process.stderr.read().decode())
    assert b"0/3" in output  # the bar (MofN column), drawn on the terminal
    assert b"cxsmtp: ok: sent 3" in output


# --- enqueue, status, retry ------------------------------------------------------------


def test_enqueue_files_and_stdin(tmp_path: Path, cxsmtp: Any) -> None:
    spool = make_spool(tmp_path, 0)
    source = tmp_path / "report.eml"
    source.write_bytes(b"From: a@x.example\nTo: r@y.example\n\nhello\n")
    result = cxsmtp("enqueue", str(spool), str(source))
    assert result.returncode == 0, result.stderr
    (name,) = lines(result.stdout)
    assert name.endswith("-report.eml") and names(spool) == [name]
    queued = (spool / name).read_bytes()
    assert b"\nMessage-ID: <" in queued and b"\nDate: " in queued
    assert queued.endswith(b"\n\nhello\n")
    piped = cxsmtp("enqueue", str(spool), "-", input="From: a@x.example\nTo: r@y.example\n\nhi\n")
    assert piped.returncode == 0 and len(names(spool)) == 2


def test_enqueue_refuses_bad_input_and_queues_nothing(tmp_path: Path, cxsmtp: Any) -> None:
    spool = make_spool(tmp_path, 0)
    good, bad = tmp_path / "good.eml", tmp_path / "bad.eml"
    good.write_bytes(eml(1))
    bad.write_bytes(b"From: a@x.example\n\nno recipients\n")
    result = cxsmtp("enqueue", str(spool), str(good), str(bad))
    assert result.returncode == 65
    assert "cxsmtp: error: " in result.stderr and "no recipients" in result.stderr
    assert names(spool) == []
    missing = cxsmtp("enqueue", str(spool), str(tmp_path / "missing.eml"))
    assert missing.returncode == 66 and "cannot read" in missing.stderr


def test_status_after_a_mixed_run(tmp_path: Path, configured: Any, cxsmtp: Any) -> None:
    configured(fail=[FailRule("rcpt", 550, pattern="r0@*"), FailRule("rcpt", 451, pattern="r1@*")])
    spool = make_spool(tmp_path, 3)
    assert cxsmtp("send", str(spool)).returncode == 65
    text = cxsmtp("status", str(spool))
    assert text.returncode == 0
    out = text.stdout
    assert f"spool {spool}" in out
    assert any(line.split()[:2] == ["sent", "1"] for line in lines(out))
    assert any(line.split()[:2] == ["deferred", "1"] for line in lines(out))
    assert any(line.split()[:2] == ["failed", "1"] for line in lines(out))
    assert "failed/m00000.eml  r0@y.example  failed: 550 5.1.1" in out
    assert "deferred/m00001.eml  r1@y.example  pending: 451" in out
    data = json.loads(cxsmtp("status", str(spool), "--json").stdout)
    assert (data["sent"]["count"], data["deferred"]["count"], data["failed"]["count"]) == (1, 1, 1)
    assert data["next_retry"] is not None and data["running_pid"] is None


def test_retry_all_then_send_again(tmp_path: Path, configured: Any, cxsmtp: Any) -> None:
    sink = configured(fail=[FailRule("rcpt", 550, times=1)])
    spool = make_spool(tmp_path, 1)
    assert cxsmtp("send", str(spool)).returncode == 65
    usage = cxsmtp("retry", str(spool))
    assert usage.returncode == 64 and "NAME" in usage.stderr
    with Spool(spool).lock():
        busy = cxsmtp("retry", str(spool), "--all")
    assert busy.returncode == 75 and "a cxsmtp send is running" in busy.stderr
    result = cxsmtp("retry", str(spool), "m00000.eml")
    assert (result.returncode, lines(result.stdout)) == (0, ["queued again: m00000.eml"])
    assert names(spool) == ["m00000.eml"] and names(spool / "failed") == []
    assert cxsmtp("send", str(spool)).returncode == 0
    assert len(sink.messages) == 1
