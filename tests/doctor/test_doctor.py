"""``cxsmtp doctor`` as a user runs it: the real CLI in a subprocess, real spools, a real
ledger made by a real ``cxsmtp send`` against the Sink on 127.0.0.1, a real flock held
by this test process."""

from __future__ import annotations

import fcntl
import json
import os
import stat
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from servers import eml, entry_for, make_spool, names

from carerix_smtp.config.file import Config, save_config
from carerix_smtp.doctor.history import is_counted, read_history
from carerix_smtp.limits.sqlite import Ledger
from carerix_smtp.spool.spool import Spool

SECRET = "pw-9f3c-never-printed"


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def statuses(text: str) -> dict[str, str]:
    """``{"ledger": "ok", …}``: each line's name and status (the last line of a name wins)."""
    out: dict[str, str] = {}
    for line in lines(text):
        status, _, rest = line.partition("  ")
        out[rest.split(": ", 1)[0].strip()] = status.strip()
    return out


def configure(isolated: Any, *entries: Any) -> None:
    config = Config(path=isolated.config, servers={e.name: e for e in entries})
    if len(entries) > 1:
        config.settings.default_server = entries[0].name
    save_config(config)


def ledger_path(isolated: Any) -> Path:
    return isolated.state_dir / "ledger.sqlite3"


def damage(path: Path) -> bytes:
    """Garbage over the ledger's first page (its schema), the header kept: what a
    torn write or a bad disk block leaves.  Returns the damaged bytes."""
    for suffix in ("-wal", "-shm"):
        assert not path.with_name(path.name + suffix).exists()  # closed cleanly: all in the file
    with open(path, "r+b") as handle:
        handle.seek(100)
        handle.write(b"\xde\xad\xbe\xef" * 1000)
    return path.read_bytes()


@pytest.fixture
def sent_spool(tmp_path: Path, isolated: Any, sink_factory: Any, cxsmtp: Any) -> Any:
    """A server limited to 4 messages an hour, and a spool from which 3 messages (two
    recipients each) were sent by a real ``cxsmtp send``: the ledger holds 3 sends."""
    sink = sink_factory()
    configure(isolated, entry_for(sink, "local", rate_per_hour=4))
    spool = make_spool(tmp_path, 3, to="r{n}@y.example, s{n}@y.example")
    result = cxsmtp("send", str(spool))
    assert result.returncode == 0, result.stderr
    assert len(names(spool / "sent")) == 3 and len(sink.messages) == 3
    with Ledger.in_state_dir(isolated.state_dir) as ledger:
        assert len(ledger.sends("local")) == 3
    return sink, spool


# --- a healthy setup ---------------------------------------------------------------------


def test_healthy_setup_every_line_ok_and_no_password_printed(
    tmp_path: Path, isolated: Any, sink_factory: Any, cxsmtp: Any
) -> None:
    sink = sink_factory()
    configure(
        isolated,
        entry_for(sink, "local", username="jan", allow_plaintext_auth=True),
        entry_for(sink, "plain"),
        entry_for(
            sink,
            "viacmd",
            username="piet",
            password_command=f"printf {SECRET}",
            allow_plaintext_auth=True,
        ),
    )
    spool = make_spool(tmp_path, 2)
    env = {"CXSMTP_PASSWORD_LOCAL": SECRET}
    assert cxsmtp("send", str(spool), "--server", "plain").returncode == 0
    (spool / "m9.eml").write_bytes(eml(9))

    result = cxsmtp("doctor", str(spool), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    out = lines(result.stdout)
    assert out and all(line.startswith("ok ") for line in out), result.stdout
    assert result.stderr == ""
    assert SECRET not in result.stdout + result.stderr
    text = result.stdout
    assert f"config: {isolated.config}: valid, 3 server(s)" in text
    assert "server local: [127.0.0.1]" in text
    assert "password from the environment CXSMTP_PASSWORD_LOCAL" in text
    assert "server plain: " in text and "no AUTH (no username)" in text
    assert "server viacmd: " in text and "password from the password_command" in text
    assert f"state dir: {isolated.state_dir}: writable" in text
    assert f"ledger: {ledger_path(isolated)}: sound" in text
    assert f"spool {spool}: owner " in text and "no symlinks" in text
    assert f"spool {spool} lock: free" in text
    assert f"spool {spool} replay: nothing pending" in text
    assert f"spool {spool} queue: queued 1, deferred 0 (0 due now), failed 0" in text


def test_json_is_a_list_of_the_same_lines(tmp_path: Path, isolated: Any, cxsmtp: Any) -> None:
    configure(isolated, entry_for(2525, "plain"))
    spool = make_spool(tmp_path, 1)
    text = cxsmtp("doctor", str(spool))
    result = cxsmtp("doctor", str(spool), "--json")
    assert (result.returncode, text.returncode) == (0, 0)
    data = json.loads(result.stdout)
    assert isinstance(data, list) and len(data) == len(lines(text.stdout))
    for item, line in zip(data, lines(text.stdout), strict=True):
        assert set(item) == {"status", "name", "detail"}
        assert line == f"{item['status']:<4}  {item['name']}: {item['detail']}"
    assert {item["name"] for item in data} >= {"config", "server plain", "state dir", "ledger"}


# --- the ledger repair ---------------------------------------------------------------------


def test_damaged_ledger_is_moved_aside_rebuilt_from_the_delivery_log_and_limits_hold(
    sent_spool: Any, isolated: Any, cxsmtp: Any
) -> None:
    sink, spool = sent_spool
    damaged = damage(ledger_path(isolated))

    result = cxsmtp("doctor", str(spool))
    assert result.returncode == 0, result.stdout + result.stderr
    repair = next(line for line in lines(result.stdout) if "ledger repair:" in line)
    assert repair.startswith("ok ")
    assert "restored 3 send(s) of the last 24 h from 1 spool(s): local 3" in repair
    moved = Path(repair.split("moved the damaged ledger to ", 1)[1].split(";", 1)[0])
    assert moved.parent == isolated.state_dir and moved.read_bytes() == damaged  # kept
    assert "ledger: " in result.stdout and "damaged" in result.stdout

    # sound again, with the 3 sends (one per message, not per recipient)
    again = cxsmtp("doctor", str(spool))
    assert again.returncode == 0 and statuses(again.stdout)["ledger"] == "ok", again.stdout
    with Ledger.in_state_dir(isolated.state_dir) as ledger:
        assert len(ledger.sends("local")) == 3

    # the restored counts hold: 4 an hour, 3 sent, so 1 of 3 new messages goes now
    for n in range(10, 13):
        (spool / f"m{n:05d}.eml").write_bytes(eml(n))
    send = cxsmtp("send", str(spool), "--json")
    summary = json.loads(send.stdout)
    assert (summary["status"], summary["sent"], summary["remaining"]) == ("limit", 1, 2)
    assert len(sink.messages) == 4


def test_damaged_ledger_without_a_spool_is_not_rebuilt_empty(
    sent_spool: Any, isolated: Any, cxsmtp: Any
) -> None:
    damaged = damage(ledger_path(isolated))
    result = cxsmtp("doctor")
    assert result.returncode == 73, result.stdout + result.stderr
    assert statuses(result.stdout)["ledger repair"] == "fail"
    assert "name the spools whose delivery logs hold the sends" in result.stdout
    assert "cxsmtp doctor --empty" in result.stdout
    assert ledger_path(isolated).read_bytes() == damaged
    assert not [p for p in isolated.state_dir.iterdir() if ".broken" in p.name]  # nothing moved

    empty = cxsmtp("doctor", "--empty")
    assert empty.returncode == 0, empty.stdout + empty.stderr
    assert "restored 0 send(s)" in empty.stdout and "--empty" in empty.stdout
    with Ledger.in_state_dir(isolated.state_dir) as ledger:
        assert ledger.sends("local") == []


def test_no_repair_while_a_live_run_holds_a_named_spool(
    sent_spool: Any, isolated: Any, cxsmtp: Any
) -> None:
    _, spool = sent_spool
    damaged = damage(ledger_path(isolated))
    with held_lock(spool):
        result = cxsmtp("doctor", str(spool))
    assert result.returncode == 75, result.stdout + result.stderr
    assert f"postponed: {spool} (pid {os.getpid()}) holds its spool's lock" in result.stdout
    assert ledger_path(isolated).read_bytes() == damaged


# --- spools --------------------------------------------------------------------------------


class held_lock:
    """The spool's flock, held by this process with its pid written in, as a send does."""

    def __init__(self, spool: Path) -> None:
        Spool(spool).prepare()
        self.path = spool / ".cxsmtp" / "lock"

    def __enter__(self) -> held_lock:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def test_lock_held_by_a_live_process_is_reported_with_its_pid(
    tmp_path: Path, isolated: Any, cxsmtp: Any
) -> None:
    spool = make_spool(tmp_path, 1)
    claimed = spool / ".cxsmtp" / "claims" / "queued" / "abc1~m00000.eml"
    with held_lock(spool) as lock:
        os.rename(spool / "m00000.eml", claimed)  # in flight under the live run
        result = cxsmtp("doctor", str(spool), "--json")
        # doctor did not take the lock away: still ours
        with pytest.raises(BlockingIOError):
            fcntl.flock(os.open(lock.path, os.O_RDONLY), fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert result.returncode == 0, result.stderr
    by_name = {item["name"]: item for item in json.loads(result.stdout)}
    lock_line = by_name[f"spool {spool} lock"]
    assert f"held by pid {os.getpid()} since " in lock_line["detail"]
    assert "alive: a run is in progress" in lock_line["detail"]
    assert by_name[f"spool {spool} replay"]["detail"].endswith("in progress (the lock is held)")
    assert claimed.exists()


def test_replay_left_by_a_killed_run_is_reported_not_recovered(
    tmp_path: Path, isolated: Any, cxsmtp: Any
) -> None:
    spool = make_spool(tmp_path, 2)
    Spool(spool).prepare()
    claimed = spool / ".cxsmtp" / "claims" / "queued" / "abc1~m00000.eml"
    os.rename(spool / "m00000.eml", claimed)
    journal = spool / ".cxsmtp" / "journal"
    journal.write_text('{"claim":"queued/abc2~m00001.eml","dest":"sent","name":"m00001.eml"}\n')
    (spool / ".cxsmtp" / "lock").write_text("999999999\n")  # the killed run's pid
    before = sorted(p.relative_to(spool) for p in spool.rglob("*"))

    result = cxsmtp("doctor", str(spool))
    assert result.returncode == 0, result.stdout + result.stderr
    out = statuses(result.stdout)
    assert out[f"spool {spool} lock"] == "ok" and out[f"spool {spool} replay"] == "warn"
    assert (
        "1 journaled outcome(s) not checkpointed, 1 message(s) in claims/ left by a run that "
        "stopped; the next cxsmtp send finishes them" in result.stdout
    )
    assert sorted(p.relative_to(spool) for p in spool.rglob("*")) == before
    assert claimed.exists() and journal.stat().st_size > 0


def test_symlinked_sent_dir_is_a_fail_line_naming_it(
    tmp_path: Path, isolated: Any, cxsmtp: Any
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    spool = make_spool(tmp_path, 1)
    (spool / "sent").symlink_to(elsewhere)
    result = cxsmtp("doctor", str(spool))
    assert result.returncode == 78, result.stdout + result.stderr
    (line,) = [line for line in lines(result.stdout) if line.startswith("fail")]
    assert line == (
        f"fail  spool {spool}: sent is a symbolic link (to {elsewhere}): cxsmtp never moves "
        "or writes files through one; replace it with a real directory"
    )
    assert list(elsewhere.iterdir()) == [] and (spool / "m00000.eml").exists()


def test_other_writable_spool_dir_and_foreign_state_mode_warn(
    tmp_path: Path, isolated: Any, cxsmtp: Any
) -> None:
    spool = make_spool(tmp_path, 0)
    Spool(spool).prepare()
    os.chmod(spool / "failed", 0o777)
    result = cxsmtp("doctor", str(spool))
    assert result.returncode == 0
    assert f"warn  spool {spool}: failed (mode 0777) is writable by others" in result.stdout
    assert stat.S_IMODE((spool / "failed").stat().st_mode) == 0o777  # reported, not changed


def test_missing_spool_fails_with_78(tmp_path: Path, isolated: Any, cxsmtp: Any) -> None:
    missing = tmp_path / "nope"
    result = cxsmtp("doctor", str(missing))
    assert result.returncode == 78
    assert f"fail  spool {missing}: spool {missing}: no such directory" in result.stdout
    assert not missing.exists()


# --- configuration and passwords -----------------------------------------------------------


def test_failing_password_command_is_a_fail_line_without_the_secret(
    isolated: Any, cxsmtp: Any
) -> None:
    command = f"sh -c 'echo {SECRET}; exit 1'"
    broken = entry_for(
        2525, "broken", username="jan", password_command=command, allow_plaintext_auth=True
    )
    configure(isolated, broken)
    result = cxsmtp("doctor")
    assert result.returncode == 78, result.stdout + result.stderr
    line = next(line for line in lines(result.stdout) if "server broken" in line)
    assert line.startswith("fail  server broken: [127.0.0.1]:2525: user jan: ")
    assert "password_command 'sh' exited with status 1" in line
    assert SECRET not in result.stdout + result.stderr


def test_no_password_anywhere_lists_the_sources(isolated: Any, cxsmtp: Any) -> None:
    configure(isolated, entry_for(2525, "nopw", username="jan", allow_plaintext_auth=True))
    result = cxsmtp("doctor")
    assert result.returncode == 78
    assert "CXSMTP_PASSWORD_NOPW (not set)" in result.stdout and "keyring" in result.stdout


def test_invalid_config_fails_78_and_the_rest_is_still_checked(isolated: Any, cxsmtp: Any) -> None:
    isolated.config.parent.mkdir(parents=True, exist_ok=True)
    isolated.config.write_text("[servers.x]\nhost = 'a.example'\nbogus = 1\n")
    result = cxsmtp("doctor")
    assert result.returncode == 78
    out = statuses(result.stdout)
    assert out["config"] == "fail" and "unknown key 'bogus'" in result.stdout
    assert out["state dir"] == "ok" and out["ledger"] == "ok"


def test_unwritable_state_dir_fails_73(tmp_path: Path, isolated: Any, cxsmtp: Any) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    isolated.state_dir.mkdir()
    os.chmod(isolated.state_dir, 0o500)
    try:
        result = cxsmtp("doctor")
    finally:
        os.chmod(isolated.state_dir, 0o700)
    assert result.returncode == 73
    assert f"fail  state dir: cannot write in {isolated.state_dir}: Permission denied" in (
        result.stdout
    )


def test_state_dir_that_is_a_file_fails_73(isolated: Any, cxsmtp: Any) -> None:
    isolated.state_dir.write_text("not a directory\n")
    result = cxsmtp("doctor")
    assert result.returncode == 73
    assert f"fail  state dir: {isolated.state_dir}: not a directory" in result.stdout


# --- which delivery-log lines count ---------------------------------------------------------


def test_history_reads_the_rotated_log_too_and_only_the_window(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, 0)
    Spool(spool).prepare()
    (spool / "sent" / "big.eml").write_bytes(b"x" * 1234)
    now = 1_714_564_800.0  # 2024-05-01T12:00:00Z

    def line(ago: float, server: str, **extra: Any) -> str:
        stamp = datetime.fromtimestamp(now - ago, timezone.utc).isoformat(timespec="seconds")
        entry = {"time": stamp, "server": server, "accepted": {"a@x": "250 ok"}, **extra}
        return json.dumps(entry) + "\n"

    log = spool / ".cxsmtp" / "delivery.log"
    log.with_suffix(".log.1").write_text(line(90_000, "a") + line(80_000, "a"))
    log.write_text(
        line(60, "b", moved_to="sent/big.eml")
        + line(30, "b", accepted={}, refused={"x@y": "550"})
        + '{"torn'
    )
    history = read_history(spool, now - 86_400)
    assert [(e.server, e.at, e.size) for e in history.sends] == [
        ("a", now - 80_000 + 1, 0),  # stamped a second later: the log has whole seconds
        ("b", now - 60 + 1, 1234),
    ]
    assert history.skipped == 1 and len(history.files) == 2


def test_history_never_reads_a_symlinked_log(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, 0)
    Spool(spool).prepare()
    fake = tmp_path / "fake.log"
    fake.write_text('{"time":"2024-05-01T12:00:00+00:00","server":"a","accepted":{"r":"250"}}\n')
    (spool / ".cxsmtp" / "delivery.log").symlink_to(fake)
    history = read_history(spool, 0.0)
    assert history.sends == [] and "delivery.log" in history.unreadable[0]


@pytest.mark.parametrize(
    ("entry", "counted"),
    [
        pytest.param(
            {"server": "x", "accepted": {"a@x": "250", "b@x": "250"}}, True, id="two-rcpt-one-send"
        ),
        pytest.param(
            {"server": "x", "accepted": {}, "possible_duplicate": True}, True, id="lost-after-dot"
        ),
        pytest.param(
            {"server": "x", "accepted": {}, "refused": {"a@x": "550"}}, False, id="refused"
        ),
        pytest.param(
            {"server": "x", "accepted": {}, "deferred": {"a@x": "451"}}, False, id="deferred"
        ),
        pytest.param({"file": "m.eml", "outcome": "requeued"}, False, id="recovery-requeued"),
        pytest.param({"accepted": {"a@x": "250"}}, False, id="no-server"),
    ],
)
def test_which_delivery_log_lines_count_as_a_send(entry: dict[str, Any], counted: bool) -> None:
    assert is_counted(entry) is counted
