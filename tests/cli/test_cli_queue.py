"""``cxsmtp queue …`` end to end: the real program in a subprocess, a real spool,
and for hold/flush a real SMTP server (aiosmtpd, tests/servers.py)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from conftest import Isolated, run_cxsmtp
from servers import eml, entry_for, make_spool, smtp_server

from carerix_smtp.config.file import Config, save_config

DAY = 86400.0


def _deferred(spool: Path, name: str, *, due_in: float) -> None:
    (spool / "deferred").mkdir(exist_ok=True)
    (spool / "deferred" / name).write_bytes(eml(9, to="p@y.example"))
    record = {
        "name": name,
        "status": "deferred",
        "mail_from": "a@x.example",
        "attempts": 1,
        "recipients": {
            "pending": {
                "p@y.example": {"code": 451, "enhanced": "4.3.0", "text": "try later", "time": None}
            }
        },
    }
    (spool / "deferred" / f"{name}.json").write_text(json.dumps(record))
    when = time.time() + due_in
    os.utime(spool / "deferred" / name, (when, when))


def _use_server(isolated: Isolated, port: int) -> None:
    save_config(Config(path=isolated.config, servers={"local": entry_for(port)}))


def test_list_prints_one_line_per_message_and_a_total(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, 2)
    _deferred(spool, "d.eml", due_in=600)
    result = run_cxsmtp("queue", "list", str(spool))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("-Queue ID-")
    assert lines[1].startswith("m00000 ") and "queued  a@x.example -> r0@y.example" in lines[1]
    assert lines[3].startswith("d ") and "deferred a@x.example -> p@y.example" in lines[3]
    assert "(p@y.example: 451 4.3.0 try later; attempts 1; next retry " in lines[4]
    assert lines[-1].startswith("-- 3 message(s), ") and "(queued 2, deferred 1)" in lines[-1]


def test_list_json_has_the_documented_keys(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, 1)
    result = run_cxsmtp("queue", "list", str(spool), "--json", "--state", "all")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["state"] == "all"
    [entry] = data["messages"]
    assert set(entry) == {
        "id",
        "state",
        "size",
        "queued_at",
        "sender",
        "recipients",
        "next_retry",
        "attempts",
        "last_reply",
        "problem",
    }
    assert (entry["id"], entry["recipients"]) == ("m00000", ["r0@y.example"])
    assert data["total"] == {"messages": 1, "bytes": entry["size"], "by_state": {"queued": 1}}


def test_list_of_an_empty_queue_and_a_bad_state(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, 0)
    empty = run_cxsmtp("queue", "list", str(spool))
    assert (empty.returncode, empty.stdout) == (
        0,
        f"{spool}: queue is empty (queued, deferred, held)\n",
    )
    bad = run_cxsmtp("queue", "list", str(spool), "--state", "sent")
    assert bad.returncode == 64
    assert bad.stderr.strip().splitlines() == [
        "cxsmtp: error: unknown state 'sent'; accepted: pending, all, queued, deferred, held, failed"
    ]


def test_list_uses_the_configured_spool(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, 1)
    result = run_cxsmtp("queue", "list", env={"CXSMTP_SPOOL": str(spool)})
    assert result.returncode == 0, result.stderr
    assert "m00000" in result.stdout
    none = run_cxsmtp("queue", "list", env={"CXSMTP_SPOOL": ""})
    assert none.returncode == 78 and "no spool given and none configured" in none.stderr


def test_show_text_json_body_and_unknown(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, 0)
    _deferred(spool, "d.eml", due_in=600)
    text = run_cxsmtp("queue", "show", "d", str(spool), "--body")
    assert text.returncode == 0, text.stderr
    assert "state:     deferred" in text.stdout
    assert "  pending   p@y.example: 451 4.3.0 try later" in text.stdout
    assert "-- headers --\nFrom: a@x.example\nTo: p@y.example" in text.stdout
    assert text.stdout.endswith("body of 9\n.\n")
    data = json.loads(run_cxsmtp("queue", "show", "d.eml", str(spool), "--json").stdout)
    assert (data["state"], data["envelope"]["recipients"]) == ("deferred", ["p@y.example"])
    assert "message" not in data and data["record"]["attempts"] == 1
    unknown = run_cxsmtp("queue", "show", "nope", str(spool))
    assert unknown.returncode == 66
    assert unknown.stderr.startswith(f"cxsmtp: error: spool {spool}: no message 'nope'")


def test_delete_needs_yes_for_more_than_one(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, 3)
    refused = run_cxsmtp("queue", "delete", "--all", "--spool", str(spool))
    assert refused.returncode == 64
    assert "this would delete 3 messages; add --yes to delete them" in refused.stderr
    assert len(list(spool.glob("*.eml"))) == 3
    one = run_cxsmtp("queue", "delete", "m00001", "--spool", str(spool))
    assert (one.returncode, one.stdout) == (0, "deleted: m00001 (queued)\n")
    rest = run_cxsmtp("queue", "delete", "--all", "--yes", "--spool", str(spool))
    assert rest.returncode == 0, rest.stderr
    assert rest.stdout.splitlines() == ["deleted: m00000 (queued)", "deleted: m00002 (queued)"]
    assert not list(spool.glob("*.eml"))
    log = (spool / ".cxsmtp" / "delivery.log").read_text().splitlines()
    assert [json.loads(x)["outcome"] for x in log] == ["deleted"] * 3


def test_queue_changes_wait_for_a_running_send(tmp_path: Path) -> None:
    import fcntl

    spool = make_spool(tmp_path, 1)
    (spool / ".cxsmtp").mkdir()
    with open(spool / ".cxsmtp" / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        busy = run_cxsmtp("queue", "hold", "m00000", "--spool", str(spool))
    assert busy.returncode == 75
    assert f"a cxsmtp send is running on {spool}; hold when it has finished" in busy.stderr
    assert (spool / "m00000.eml").exists()


def _send(spool: Path) -> Any:
    return run_cxsmtp("send", str(spool))


def test_a_held_message_is_not_sent_until_released(tmp_path: Path, isolated: Isolated) -> None:
    spool = make_spool(tmp_path, 2)
    with smtp_server() as server:
        _use_server(isolated, server.port)
        held = run_cxsmtp("queue", "hold", "m00000", "--spool", str(spool))
        assert (held.returncode, held.stdout) == (0, "held: m00000\n")
        first = _send(spool)
        assert first.returncode == 0, first.stderr
        assert [m.rcpt_tos for m in server.handler.messages] == [["r1@y.example"]]
        listed = run_cxsmtp("queue", "list", str(spool), "--state", "held")
        assert "m00000" in listed.stdout and "held" in listed.stdout
        status = json.loads(run_cxsmtp("status", str(spool), "--json").stdout)
        assert status["held"]["count"] == 1
        text = run_cxsmtp("status", str(spool)).stdout
        assert "  held            1  " in text and "send skips them: cxsmtp queue release" in text
        released = run_cxsmtp("queue", "release", "--all", "--spool", str(spool))
        assert (released.returncode, released.stdout) == (0, "released: m00000\n")
        second = _send(spool)
        assert second.returncode == 0, second.stderr
    assert [m.rcpt_tos for m in server.handler.messages] == [["r1@y.example"], ["r0@y.example"]]
    assert sorted(p.name for p in (spool / "sent").glob("*.eml")) == ["m00000.eml", "m00001.eml"]


def test_flush_makes_deferred_due_and_sends(tmp_path: Path, isolated: Isolated) -> None:
    spool = make_spool(tmp_path, 0)
    _deferred(spool, "d.eml", due_in=3600)
    with smtp_server() as server:
        _use_server(isolated, server.port)
        result = run_cxsmtp("queue", "flush", str(spool))
    assert result.returncode == 0, result.stderr
    assert "1 deferred message(s) due now" in result.stdout
    assert "sent 1, deferred 0, failed 0" in result.stdout
    assert [m.rcpt_tos for m in server.handler.messages] == [["p@y.example"]]


def test_purge_removes_only_old_sent_mail(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, 1)
    sent = spool / "sent"
    sent.mkdir()
    now = time.time()
    for name, days in (("old.eml", 9), ("new.eml", 1)):
        (sent / name).write_bytes(eml(1))
        os.utime(sent / name, (now - days * DAY, now - days * DAY))
    result = run_cxsmtp("queue", "purge", "--older-than", "7d", str(spool), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"messages": 1, "records": 0, "complete": True}
    assert sorted(p.name for p in sent.iterdir()) == ["new.eml"]
    assert (spool / "m00000.eml").exists()
    bad = run_cxsmtp("queue", "purge", "--older-than", "soon", str(spool))
    assert bad.returncode == 64
    assert "--older-than must be a duration like 30d, 12h, 90m, 45s" in bad.stderr


def test_send_applies_retain_sent(tmp_path: Path, isolated: Isolated) -> None:
    spool = make_spool(tmp_path, 0)
    sent = spool / "sent"
    sent.mkdir()
    old = time.time() - 40 * DAY
    (sent / "ancient.eml").write_bytes(eml(1))
    os.utime(sent / "ancient.eml", (old, old))
    (sent / "recent.eml").write_bytes(eml(2))
    _use_server(isolated, 9)  # never contacted: nothing is queued
    result = _send(spool)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in sent.iterdir()) == ["recent.eml"]  # default: 30 days
