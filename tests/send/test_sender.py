"""send/ (run_send) against real SMTP servers on 127.0.0.1 (the cxsmtp Sink, plain aiosmtpd).

The helpers at the top are also imported by test_cli_send.py and test_crash.py.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_no_traceback
from servers import (
    Clock,
    config_for,
    delivery_log,
    eml,
    entry_for,
    listing,
    make_spool,
    message_ids,
    names,
    record,
)

from carerix_smtp.config.file import Config, ServerEntry
from carerix_smtp.errors import ExitCode, SecretError
from carerix_smtp.send.gates import CountGate
from carerix_smtp.send.outcome import ACCEPTED, DEFERRED, FAILED, classify
from carerix_smtp.send.plan import plan_send
from carerix_smtp.send.report import ProgressEvent, SendOptions
from carerix_smtp.send.run import run_send
from carerix_smtp.sink.config import FailRule, PhaseRule
from carerix_smtp.smtp.transaction import SendResult
from carerix_smtp.smtp.wire import Reply
from carerix_smtp.spool.spool import Spool

# --- helpers (shared with test_cli_send.py and test_crash.py) -------------------------------


def send(spool: Path, config: Config, **kw: Any) -> Any:
    options = kw.pop("options", SendOptions())
    kw.setdefault("password_source", lambda entry: None)
    return run_send(spool, config, options, **kw)


# --- the basics ----------------------------------------------------------------------------


def test_thousand_messages_delivered_exactly_once(tmp_path: Path, sink_factory: Any) -> None:
    sink = sink_factory()
    spool = make_spool(tmp_path, 1000)
    summary = send(spool, config_for(tmp_path, entry_for(sink)))
    assert (summary.status, summary.sent, summary.failed, summary.deferred) == ("ok", 1000, 0, 0)
    assert summary.exit_code == ExitCode.OK
    assert summary.remaining == 0 and summary.bytes == sum(len(eml(n)) for n in range(1000))
    received = Counter(message_ids(sink))
    assert received == Counter(f"<{n}.test@x.example>" for n in range(1000))
    assert sink.connections_total == 1  # one connection reused
    assert names(spool) == [] and len(names(spool / "sent")) == 1000
    assert Spool(spool).claims() == []
    assert (spool / ".cxsmtp" / "journal").stat().st_size == 0
    log_lines = (spool / ".cxsmtp" / "delivery.log").read_text().splitlines()
    assert len(log_lines) == 1000
    assert json.loads(log_lines[0])["outcome"] == "sent"


def test_bcc_never_transmitted_but_delivered(tmp_path: Path, sink_factory: Any) -> None:
    sink = sink_factory()
    spool = make_spool(tmp_path)
    (spool / "b.eml").write_bytes(
        eml(1, to="r@y.example", Cc="c@y.example", Bcc="Hidden <secret@z.example>")
    )
    summary = send(spool, config_for(tmp_path, entry_for(sink)))
    assert summary.sent == 1
    (received,) = sink.messages
    assert received.rcpt_tos == ("r@y.example", "c@y.example", "secret@z.example")
    assert b"secret@z.example" not in received.data and b"Bcc" not in received.data
    assert b"Cc: c@y.example" in received.data
    # the spool keeps the original, with Bcc, for the record
    assert b"Bcc:" in (spool / "sent" / "b.eml").read_bytes()


def test_message_id_and_date_added_and_kept_in_the_file(tmp_path: Path, sink_factory: Any) -> None:
    sink = sink_factory()
    spool = make_spool(tmp_path)
    (spool / "bare.eml").write_bytes(b"From: a@x.example\nTo: r@y.example\n\nhi\n")
    send(spool, config_for(tmp_path, entry_for(sink)))
    (received,) = sink.messages
    (sent_id,) = message_ids(sink)
    assert sent_id.endswith("@x.example>") and b"\r\nDate: " in received.data
    assert sent_id.encode() in (spool / "sent" / "bare.eml").read_bytes()
    assert record(spool, "sent/bare.eml")["message_id"] == sent_id


# --- per-recipient outcomes ---------------------------------------------------------------


def test_mixed_rcpt_replies_then_only_the_451_recipient_again(
    tmp_path: Path, sink_factory: Any
) -> None:
    sink = sink_factory(
        fail=[
            FailRule("rcpt", 550, pattern="bad@*"),
            FailRule("rcpt", 451, pattern="later@*", times=1),
        ]
    )
    spool = make_spool(tmp_path)
    (spool / "mix.eml").write_bytes(eml(1, to="ok@y.example, bad@y.example, later@y.example"))
    clock = Clock()
    config = config_for(tmp_path, entry_for(sink))

    first = send(spool, config, clock=clock)
    # a 4xx is retried later, as Postfix does: no error (issue 11)
    assert (first.status, first.deferred, first.exit_code) == ("deferred", 1, ExitCode.OK)
    assert sink.messages[0].rcpt_tos == ("ok@y.example",)
    state = record(spool, "deferred/mix.eml")
    assert list(state["recipients"]["accepted"]) == ["ok@y.example"]
    assert state["recipients"]["failed"]["bad@y.example"]["code"] == 550
    assert state["recipients"]["pending"]["later@y.example"]["code"] == 451
    assert (spool / "deferred" / "mix.eml").stat().st_mtime == pytest.approx(clock.now + 300)

    assert send(spool, config, clock=clock).status == "nothing-to-do"  # not due yet
    clock.advance(301)
    second = send(spool, config, clock=clock)
    assert (second.sent, second.recipients_failed, second.partial) == (1, 1, 0)  # issue 11
    assert second.exit_code == ExitCode.DATAERR  # bad@ failed permanently
    assert [m.rcpt_tos for m in sink.messages] == [("ok@y.example",), ("later@y.example",)]
    final = record(spool, "sent/mix.eml")
    assert final["attempts"] == 2 and final["status"] == "sent"
    assert sorted(final["recipients"]["accepted"]) == ["later@y.example", "ok@y.example"]
    assert list(final["recipients"]["failed"]) == ["bad@y.example"]
    assert names(spool / "deferred") == [] and not (spool / "deferred" / "mix.eml.json").exists()


def test_all_recipients_refused_goes_to_failed(tmp_path: Path, sink_factory: Any) -> None:
    sink = sink_factory(fail=[FailRule("rcpt", 550)])
    spool = make_spool(tmp_path, 1)
    summary = send(spool, config_for(tmp_path, entry_for(sink)))
    assert (summary.failed, summary.exit_code) == (1, ExitCode.DATAERR)
    assert "r0@y.example" in summary.failures[0] and "550" in summary.failures[0]
    assert record(spool, "failed/m00000.eml")["recipients"]["failed"]["r0@y.example"]["code"] == 550


def test_5xx_at_end_of_data_fails_with_record(tmp_path: Path, sink_factory: Any) -> None:
    sink = sink_factory(fail=[FailRule("eod", 554, times=1)])
    spool = make_spool(tmp_path, 2)
    summary = send(spool, config_for(tmp_path, entry_for(sink)))
    assert (summary.sent, summary.failed, summary.status) == (1, 1, "failed")
    assert names(spool / "failed") == ["m00000.eml"]
    failed = record(spool, "failed/m00000.eml")
    assert failed["recipients"]["failed"]["r0@y.example"]["code"] == 554
    assert failed["reason"].startswith("failed: 554")


def test_message_too_large_for_size_fails_before_mail(tmp_path: Path, sink_factory: Any) -> None:
    sink = sink_factory(size=2000)
    spool = make_spool(tmp_path)
    (spool / "big.eml").write_bytes(eml(1) + b"x" * 5000 + b"\n")
    (spool / "small.eml").write_bytes(eml(2))
    summary = send(spool, config_for(tmp_path, entry_for(sink)))
    assert (summary.sent, summary.failed) == (1, 1)
    reply = record(spool, "failed/big.eml")["recipients"]["failed"]["r1@y.example"]
    assert reply["code"] == 552 and "SIZE 2000" in reply["text"]
    assert [m.rcpt_tos for m in sink.messages] == [("r2@y.example",)]  # only small.eml


# --- temporary failures ----------------------------------------------------------------------


def test_451_after_n_messages_defers_then_leaves_the_server_alone(
    tmp_path: Path, sink_factory: Any
) -> None:
    sink = sink_factory(fail=[FailRule("eod", 451, after_n=5, times=5)])
    spool = make_spool(tmp_path, 20)
    clock = Clock()
    config = config_for(tmp_path, entry_for(sink))
    first = send(spool, config, clock=clock)
    assert (first.sent, first.deferred, first.remaining) == (5, 5, 10)
    # the provider's pace, not an error (issue 11): exit 0, told as a failure of kind
    # "deferring" (the text summary's line), not in ``errors`` (stderr)
    assert (first.status, first.exit_code, first.errors) == ("deferred", ExitCode.OK, [])
    (failure,) = first.server_failures
    assert failure.kind == "deferring" and "5 messages in a row deferred" in failure.message
    assert len(names(spool)) == 10 and len(names(spool / "deferred")) == 5
    clock.advance(300)
    second = send(spool, config, clock=clock)
    assert (second.sent, second.status) == (15, "ok")
    assert Counter(message_ids(sink)) == Counter(f"<{n}.test@x.example>" for n in range(20))


def test_421_mid_session_reconnects(tmp_path: Path, sink_factory: Any) -> None:
    sink = sink_factory(fail=[FailRule("mail", 421, after_n=3, times=1)])
    spool = make_spool(tmp_path, 8)
    summary = send(spool, config_for(tmp_path, entry_for(sink)))
    assert (summary.sent, summary.deferred) == (7, 1)
    assert sink.connections_total == 2
    assert names(spool / "deferred") == ["m00003.eml"]
    pending = record(spool, "deferred/m00003.eml")["recipients"]["pending"]
    assert pending["r3@y.example"]["code"] == 421


def test_reconnects_are_bounded(tmp_path: Path, sink_factory: Any) -> None:
    sink = sink_factory(fail=[FailRule("mail", 421)])
    spool = make_spool(tmp_path, 10)
    options = SendOptions(max_reconnects=2, stop_after_deferrals=0)
    summary = send(spool, config_for(tmp_path, entry_for(sink)), options=options)
    assert sink.connections_total == 3  # the first connection and 2 reconnects
    # lost more often than allowed: the server could not be used (exit 75)
    assert (summary.deferred, summary.remaining, summary.status) == (3, 7, "unreachable")
    assert summary.exit_code == ExitCode.TEMPFAIL
    assert [f.kind for f in summary.server_failures] == ["dropped"]
    assert any("connection lost 3 times" in e for e in summary.errors)


def test_connection_dropped_after_final_dot(tmp_path: Path, sink_factory: Any) -> None:
    sink = sink_factory(drop=[PhaseRule("eod", times=1)])
    spool = make_spool(tmp_path, 3)
    clock = Clock()
    config = config_for(tmp_path, entry_for(sink))
    first = send(spool, config, clock=clock)
    assert (first.sent, first.deferred) == (2, 1)
    log = [json.loads(line) for line in (spool / ".cxsmtp/delivery.log").read_text().splitlines()]
    assert log[0]["possible_duplicate"] is True and log[0]["outcome"] == "deferred"
    clock.advance(300)
    assert send(spool, config, clock=clock).sent == 1
    assert sorted(message_ids(sink)) == sorted(f"<{n}.test@x.example>" for n in range(3))


def test_hung_server_times_out_and_defers(tmp_path: Path, sink_factory: Any) -> None:
    sink = sink_factory(hang=[PhaseRule("eod", times=1)])
    spool = make_spool(tmp_path, 2)
    entry = entry_for(sink, command_timeout=0.3, data_timeout=0.3)
    start = time.monotonic()
    summary = send(spool, config_for(tmp_path, entry))
    assert time.monotonic() - start < 5
    assert (summary.deferred, summary.sent) == (1, 1)
    text = record(spool, "deferred/m00000.eml")["recipients"]["pending"]["r0@y.example"]["text"]
    assert "0.3 s" in text


def test_unreachable_server_touches_nothing(tmp_path: Path) -> None:
    from conftest import free_port

    spool = make_spool(tmp_path, 3)
    before = listing(spool)
    summary = send(spool, config_for(tmp_path, entry_for(free_port())))
    assert (summary.status, summary.exit_code) == ("unreachable", ExitCode.TEMPFAIL)
    assert summary.deferred == 0 and [f.kind for f in summary.server_failures] == ["connect"]
    assert summary.remaining == 3 and "refused" in summary.errors[0].lower()
    assert listing(spool) == before


def test_too_old_message_fails_instead_of_deferring(tmp_path: Path, sink_factory: Any) -> None:
    sink = sink_factory(fail=[FailRule("rcpt", 451)])
    spool = make_spool(tmp_path, 1)
    six_days_ago = time.time() - 6 * 86400
    os.utime(spool / "m00000.eml", (six_days_ago, six_days_ago))
    summary = send(spool, config_for(tmp_path, entry_for(sink)))
    assert (summary.failed, summary.deferred) == (0 + 1, 0)
    state = record(spool, "failed/m00000.eml")
    assert state["reason"].startswith("too old") and "451" in state["reason"]


# --- authentication and passwords --------------------------------------------------------------


@pytest.mark.parametrize("per_user", [False, True], ids=["one-server", "per-user-choice"])
def test_wrong_password_touches_nothing_exit_77(
    tmp_path: Path, sink_factory: Any, per_user: bool
) -> None:
    from conftest import free_port

    sink = sink_factory(auth=("user", "secret"), auth_required=True, auth_require_tls=False)
    entry = entry_for(sink, username="user", allow_plaintext_auth=True)
    if per_user:  # the server is known only once a message is read: claimed, then put back
        unused_default = entry_for(free_port(), "unused")
        config = config_for(tmp_path, unused_default, entry, users={"a@x.example": "local"})
    else:
        config = config_for(tmp_path, entry)
    spool = make_spool(tmp_path, 3)
    (spool / "deferred").mkdir()
    before = listing(spool)
    summary = send(spool, config, password_source=lambda e: "wrong")
    assert (summary.status, summary.exit_code) == ("auth-failed", ExitCode.NOPERM)
    assert "535" in summary.errors[0] and "wrong" not in summary.errors[0]
    assert listing(spool) == before and sink.messages == []
    ok = send(spool, config, password_source=lambda e: "secret")
    assert ok.sent == 3 and sink.messages[0].auth_user == "user"


def test_missing_password_is_a_config_error_never_an_unauthenticated_send(
    tmp_path: Path, sink_factory: Any
) -> None:
    sink = sink_factory()
    spool = make_spool(tmp_path, 1)
    config = config_for(tmp_path, entry_for(sink, username="user", allow_plaintext_auth=True))
    before = listing(spool)
    with pytest.raises(SecretError) as info:
        run_send(spool, config)  # the real sources: env, command, keyring: none has it
    assert info.value.exit_code == ExitCode.CONFIG
    assert sink.connections_total == 0 and listing(spool) == before


# --- bad files --------------------------------------------------------------------------------


def test_bad_files_go_to_failed_and_the_run_continues(tmp_path: Path, sink_factory: Any) -> None:
    sink = sink_factory()
    spool = make_spool(tmp_path)
    outside = tmp_path / "outside.eml"
    outside.write_bytes(eml(99))
    (spool / "prose.eml").write_bytes(b"Dear all,\nthis is not an RFC 5322 message.\n")
    (spool / "norcpt.eml").write_bytes(b"From: a@x.example\nSubject: to nobody\n\nhi\n")
    (spool / "garbage.eml").write_bytes(os.urandom(4096).replace(b"\n", b"\0"))
    (spool / "empty.eml").write_bytes(b"")
    (spool / "link.eml").symlink_to(outside)
    (spool / "dir.eml").mkdir()
    (spool / "good.eml").write_bytes(eml(1))
    summary = send(spool, config_for(tmp_path, entry_for(sink)))
    assert (summary.sent, summary.failed, summary.exit_code) == (1, 6, ExitCode.DATAERR)
    assert message_ids(sink) == ["<1.test@x.example>"]
    failed = spool / "failed"
    assert sorted(p.name for p in failed.iterdir() if not p.name.endswith(".json")) == [
        "dir.eml", "empty.eml", "garbage.eml", "link.eml", "norcpt.eml", "prose.eml"
    ]  # fmt: skip
    assert (failed / "link.eml").is_symlink() and (failed / "dir.eml").is_dir()
    assert outside.read_bytes() == eml(99)  # the target was never touched
    reasons = {name: record(spool, f"failed/{name}")["reason"] for name in os.listdir(failed)
               if name.endswith(".eml")}  # fmt: skip
    assert "symlink" in reasons["link.eml"] and "directory" in reasons["dir.eml"]
    assert "0 bytes" in reasons["empty.eml"] and "no recipients" in reasons["norcpt.eml"]
    assert "not an RFC 5322" in reasons["prose.eml"]
    assert "not an RFC 5322" in reasons["garbage.eml"]


@pytest.mark.parametrize(
    ("missing", "needy", "rcpt", "code"),
    [
        pytest.param("SMTPUTF8", eml(1, to="jösé@exämple.com"), "jösé@exämple.com", 553,
                     id="smtputf8"),
        pytest.param("8BITMIME", eml(1) + "café\n".encode(), "r1@y.example", 554, id="8bitmime"),
    ],
)  # fmt: skip
def test_needed_extension_not_offered_fails_clearly(
    tmp_path: Path, missing: str, needy: bytes, rcpt: str, code: int
) -> None:
    from aiosmtpd.controller import Controller
    from conftest import free_port

    class Handler:
        def __init__(self) -> None:
            self.received: list[Any] = []

        async def handle_EHLO(
            self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
        ) -> list[str]:
            session.host_name = hostname
            return [r for r in responses if missing not in r]

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            self.received.append(envelope)
            return "250 2.0.0 OK"

    port = free_port()
    handler = Handler()
    controller = Controller(handler, hostname="127.0.0.1", port=port, enable_SMTPUTF8=False)
    controller.start()
    try:
        spool = make_spool(tmp_path)
        (spool / "needy.eml").write_bytes(needy)
        (spool / "ascii.eml").write_bytes(eml(2))
        summary = send(spool, config_for(tmp_path, entry_for(port)))
    finally:
        controller.stop()
    assert (summary.sent, summary.failed) == (1, 1)
    assert [e.rcpt_tos for e in handler.received] == [["r2@y.example"]]
    reply = record(spool, "failed/needy.eml")["recipients"]["failed"][rcpt]
    assert reply["code"] == code and missing in reply["text"]


# --- run control: gate, deadline, stop, lock, servers ---------------------------------------------


class RecordingGate(CountGate):
    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.confirmed_ids: list[str] = []
        self.closed = False

    def confirm(self, message_id: str, size: int) -> None:
        super().confirm(message_id, size)
        self.confirmed_ids.append(message_id)

    def close(self) -> None:
        self.closed = True


def test_batch_gate_seam(tmp_path: Path, sink_factory: Any) -> None:
    sink = sink_factory(fail=[FailRule("rcpt", 550, pattern="r1@*")])
    spool = make_spool(tmp_path, 6)
    gate = RecordingGate(3)
    summary = send(spool, config_for(tmp_path, entry_for(sink)), gate_factory=lambda e: gate)
    assert (summary.sent, summary.failed, summary.remaining) == (2, 1, 3)
    assert gate.admitted == 3 and gate.closed
    assert gate.confirmed_ids == ["<0.test@x.example>", "<2.test@x.example>"]  # r1 refused
    assert names(spool) == ["m00003.eml", "m00004.eml", "m00005.eml"]  # untouched, queued


def test_max_messages(tmp_path: Path, sink_factory: Any) -> None:
    sink = sink_factory()
    spool = make_spool(tmp_path, 5)
    options = SendOptions(max_messages=2)
    summary = send(spool, config_for(tmp_path, entry_for(sink)), options=options)
    assert (summary.sent, summary.remaining, summary.status) == (2, 3, "limit")
    assert summary.exit_code == ExitCode.OK


def test_deadline_stops_between_messages(tmp_path: Path, sink_factory: Any) -> None:
    sink = sink_factory()
    spool = make_spool(tmp_path, 5)
    ticks = iter(range(100))
    summary = send(
        spool,
        config_for(tmp_path, entry_for(sink)),
        options=SendOptions(deadline=3.5),
        monotonic=lambda: float(next(ticks)),
    )
    assert summary.status == "limit" and summary.sent + summary.remaining == 5
    assert 1 <= summary.sent < 5
    assert len(names(spool)) == summary.remaining and Spool(spool).claims() == []


def test_stop_event_finishes_in_flight_message_and_exits_75(
    tmp_path: Path, sink_factory: Any
) -> None:
    sink = sink_factory()
    spool = make_spool(tmp_path, 10)
    stop = threading.Event()

    def progress(event: ProgressEvent) -> None:
        if event.kind == "message" and event.done == 3:
            stop.set()

    summary = send(spool, config_for(tmp_path, entry_for(sink)), stop=stop, progress=progress)
    assert (summary.status, summary.exit_code) == ("interrupted", ExitCode.TEMPFAIL)
    assert (summary.sent, summary.remaining) == (3, 7)
    assert Spool(spool).claims() == [] and len(names(spool)) == 7
    with Spool(spool).lock() as free:
        assert free


def test_second_run_while_locked_does_nothing(tmp_path: Path, sink_factory: Any) -> None:
    sink = sink_factory()
    spool = make_spool(tmp_path, 2)
    with Spool(spool).lock():
        summary = send(spool, config_for(tmp_path, entry_for(sink)))
    assert (summary.status, summary.exit_code, summary.lock_holder) == (
        "locked",
        ExitCode.OK,
        os.getpid(),
    )
    assert sink.connections_total == 0 and len(names(spool)) == 2


def test_server_chosen_per_sender(tmp_path: Path, sink_factory: Any) -> None:
    default, alices = sink_factory(), sink_factory()
    config = config_for(
        tmp_path,
        entry_for(default, "main"),
        entry_for(alices, "alices"),
        users={"alice@x.example": "alices"},
    )
    spool = make_spool(tmp_path, 2)
    (spool / "alice.eml").write_bytes(eml(7, sender="Alice <alice@X.EXAMPLE>"))
    summary = send(spool, config)
    assert summary.sent == 3
    assert message_ids(alices) == ["<7.test@x.example>"]
    assert sorted(message_ids(default)) == ["<0.test@x.example>", "<1.test@x.example>"]
    assert record(spool, "sent/alice.eml")["server"] == "alices"
    forced = make_spool(tmp_path / "other", 0)
    (forced / "alice.eml").write_bytes(eml(8, sender="alice@x.example"))
    send(forced, config, options=SendOptions(server="main"))
    assert "<8.test@x.example>" in message_ids(default)


def test_dry_run_plans_and_changes_nothing(tmp_path: Path, sink_factory: Any) -> None:
    sink = sink_factory()
    spool = make_spool(tmp_path, 3)
    (spool / "bad.eml").write_bytes(b"junk\n")
    before = listing(spool)
    plan = plan_send(spool, config_for(tmp_path, entry_for(sink)))
    assert (plan.messages, plan.bytes) == (3, sum(len(eml(n)) for n in range(3)))
    assert list(plan.servers) == ["local"] and plan.servers["local"].messages == 3
    assert [name for name, _ in plan.invalid] == ["bad.eml"]
    assert listing(spool) == before and sink.connections_total == 0


# --- the pure classification ---------------------------------------------------------------


def R(code: int) -> Reply:
    return Reply(code, f"{code // 100}.0.0", "text")


@pytest.mark.parametrize(
    ("mail", "rcpts", "data", "expected"),
    [
        pytest.param(250, {"a": 250, "b": 250}, 250, {"a": ACCEPTED, "b": ACCEPTED}, id="all-ok"),
        pytest.param(250, {"a": 250, "b": 550, "c": 451}, 250,
                     {"a": ACCEPTED, "b": FAILED, "c": DEFERRED}, id="mixed-rcpt"),
        pytest.param(451, {}, None, {"a": DEFERRED, "b": DEFERRED}, id="mail-451"),
        pytest.param(553, {}, None, {"a": FAILED, "b": FAILED}, id="mail-553"),
        pytest.param(250, {"a": 250, "b": 550}, 451, {"a": DEFERRED, "b": FAILED}, id="data-451"),
        pytest.param(250, {"a": 250, "b": 451}, 554, {"a": FAILED, "b": DEFERRED}, id="data-554"),
        pytest.param(250, {"a": 550, "b": 550}, None, {"a": FAILED, "b": FAILED}, id="none-ok"),
    ],
)  # fmt: skip
def test_classify(
    mail: int, rcpts: dict[str, int], data: int | None, expected: dict[str, str]
) -> None:
    result = SendResult(
        R(mail), {r: R(c) for r, c in rcpts.items()}, R(data) if data is not None else None
    )
    attempt = classify(result, ["a", "b", *(["c"] if "c" in rcpts else [])], now=0.0)
    assert {r: outcome for r, (outcome, _) in attempt.results.items()} == expected


@pytest.mark.parametrize(
    "state",
    [
        pytest.param(None, id="queued"),
        pytest.param({"pending": ["c@x.org"], "accepted": ["a@x.org"]}, id="deferred-pending"),
        pytest.param({"accepted": ["a@x.org"], "failed": ["b@x.org"]}, id="deferred-none-pending"),
    ],
)
def test_pending_for_is_what_state_for_gives(state: dict[str, list[str]] | None) -> None:
    """The next message's recipients are asked for without making its state (a
    pipelined run asks once per message): they must be those its state will have."""
    from carerix_smtp.send.outcome import pending_for, state_for
    from carerix_smtp.spool.claims import Claim
    from carerix_smtp.spool.message import parse_message
    from carerix_smtp.spool.records import MessageState, RecipientResult

    message = parse_message(
        b"From: s@x.org\nTo: a@x.org, b@x.org\nCc: c@x.org, A@X.ORG\n\nhi\n", name="m.eml"
    )
    sidecar = None
    if state is not None:
        reply = RecipientResult(250, None, "ok", 0.0)
        sidecar = MessageState(name="m.eml", status="deferred")
        for key in ("pending", "accepted", "failed"):
            getattr(sidecar, key).update({r: reply for r in state.get(key, [])})
    claim = Claim("deferred", "m.eml", Path("m.eml"), "deferred/t~m.eml", 1, 0.0, "file", sidecar)
    asked = pending_for(claim, message)  # first: state_for fills in a sidecar's pending
    assert asked  # each case has someone left
    assert asked == list(state_for(claim, message).pending)


@pytest.mark.slow
def test_fifty_megabyte_message_is_streamed(tmp_path: Path, sink_factory: Any) -> None:
    sink = sink_factory(keep_data=False)
    spool = make_spool(tmp_path)
    body = (b"0123456789" * 99 + b"\n") * 50_000  # 50 MB of 1000-byte lines
    (spool / "big.eml").write_bytes(eml(1) + body)
    summary = send(spool, config_for(tmp_path, entry_for(sink)))
    assert summary.sent == 1
    assert sink.messages[0].size >= len(body)


# --- several connections per server (ServerEntry.connections) -----------------------------------


def test_n_connections_deliver_each_message_exactly_once(tmp_path: Path, sink_factory: Any) -> None:
    sink = sink_factory(latency_ms=3)  # a round trip: the connections overlap
    spool = make_spool(tmp_path, 150)
    summary = send(spool, config_for(tmp_path, entry_for(sink, connections=3)))
    assert (summary.status, summary.sent, summary.deferred, summary.failed) == ("ok", 150, 0, 0)
    assert Counter(message_ids(sink)) == Counter(f"<{n}.test@x.example>" for n in range(150))
    assert sink.connections_max == 3 and sink.connections_total == 3
    assert names(spool) == [] and len(names(spool / "sent")) == 150
    assert Spool(spool).claims() == []
    assert (spool / ".cxsmtp" / "journal").stat().st_size == 0
    assert len((spool / ".cxsmtp" / "delivery.log").read_text().splitlines()) == 150
    assert summary.remaining == 0 and summary.bytes == sum(len(eml(n)) for n in range(150))


def test_connections_are_opened_only_when_needed(tmp_path: Path, sink_factory: Any) -> None:
    sink = sink_factory()
    spool = make_spool(tmp_path, 1)
    summary = send(spool, config_for(tmp_path, entry_for(sink, connections=4)))
    assert summary.sent == 1 and sink.connections_total == 1


# 3 ms: the connections open as messages come; 30 ms: a server slow to greet, whose
# connections all open at once, before the first message (send/spread.py).
@pytest.mark.parametrize("latency_ms", [3, 30])
def test_extra_connections_refused_the_others_carry_on(
    tmp_path: Path, sink_factory: Any, caplog: pytest.LogCaptureFixture, latency_ms: int
) -> None:
    sink = sink_factory(latency_ms=latency_ms, max_connections=2)  # 421 beyond 2
    spool = make_spool(tmp_path, 60)
    summary = send(spool, config_for(tmp_path, entry_for(sink, connections=4)))
    assert (summary.status, summary.sent, summary.remaining) == ("ok", 60, 0)
    assert summary.errors == []  # the server as a whole was fine
    assert caplog.text.count("421 4.7.0 Too many connections") == 2  # the 3rd and 4th
    assert sink.connections_total == 4  # no retry of a refused connection
    assert sorted(Counter(message_ids(sink)).values()) == [1] * 60


def test_one_connection_lost_the_others_go_on(tmp_path: Path, sink_factory: Any) -> None:
    # one connection is dropped right after a final "." (outcome unknown, RFC 1047)
    sink = sink_factory(latency_ms=2, drop=[PhaseRule("eod", after_n=20, times=1)])
    spool = make_spool(tmp_path, 80)
    summary = send(spool, config_for(tmp_path, entry_for(sink, connections=3)))
    assert (summary.sent, summary.deferred, summary.failed) == (79, 1, 0)
    (lost,) = names(spool / "deferred")
    assert record(spool, f"deferred/{lost}")["attempts"] == 1
    received = Counter(message_ids(sink))
    assert len(received) == 79 and set(received.values()) == {1}
    assert f"<{int(lost[1:6])}.test@x.example>" not in received  # dropped: not stored
    assert sink.connections_total == 4  # the lost one was replaced
    assert Spool(spool).claims() == []


def test_unreachable_server_with_several_connections_touches_nothing(tmp_path: Path) -> None:
    from conftest import free_port

    spool = make_spool(tmp_path, 5)
    before = listing(spool)
    entry = entry_for(free_port(), connections=3, connect_timeout=1.0)
    summary = send(spool, config_for(tmp_path, entry))
    assert summary.status == "unreachable" and summary.exit_code == ExitCode.TEMPFAIL
    assert (summary.sent, summary.deferred) == (0, 0) and listing(spool) == before


def test_stop_with_several_connections_finishes_what_is_in_flight(
    tmp_path: Path, sink_factory: Any
) -> None:
    sink = sink_factory(latency_ms=3)
    spool = make_spool(tmp_path, 100)
    stop = threading.Event()

    def progress(event: ProgressEvent) -> None:
        if event.kind == "message" and event.done == 20:
            stop.set()

    config = config_for(tmp_path, entry_for(sink, connections=3))
    summary = send(spool, config, stop=stop, progress=progress)
    assert (summary.status, summary.exit_code) == ("interrupted", ExitCode.TEMPFAIL)
    assert 20 <= summary.sent <= 23  # at most one more per connection: the ones in flight
    assert summary.sent + summary.remaining == 100 and summary.deferred == 0
    assert Spool(spool).claims() == [] and len(names(spool)) == summary.remaining
    assert len(message_ids(sink)) == summary.sent  # each in flight finished, none cut
    again = send(spool, config)
    assert again.sent == summary.remaining
    assert sorted(Counter(message_ids(sink)).values()) == [1] * 100


def test_auth_refused_on_another_connection_stops_the_run(
    tmp_path: Path, sink_factory: Any
) -> None:
    # the first connection is fine; a reconnect meets a refused password (exit 77)
    sink = sink_factory(latency_ms=2, fail=[FailRule("mail", 421, after_n=5, times=1)])
    spool = make_spool(tmp_path, 40)
    entry = entry_for(sink, connections=2)
    opened: list[int] = []

    from carerix_smtp.errors import SmtpAuthError
    from carerix_smtp.smtp.session import SmtpSession

    def factory(entry: ServerEntry, password: str | None) -> SmtpSession:
        session = SmtpSession(entry, password, local_hostname="test")
        opened.append(1)
        if len(opened) > 2:

            def refuse() -> None:
                raise SmtpAuthError("535 5.7.8 refused (test)", host="127.0.0.1", port=1)

            session.open = refuse  # type: ignore[method-assign]
        return session

    summary = send(spool, config_for(tmp_path, entry), session_factory=factory)
    assert (summary.status, summary.exit_code) == ("auth-failed", ExitCode.NOPERM)
    assert Spool(spool).claims() == []
    assert summary.sent + summary.deferred + len(names(spool)) == 40
    assert sorted(Counter(message_ids(sink)).values()) == [1] * summary.sent


# --- several connections in a real `cxsmtp send`: signals and crashes -----------------------------


def _start_send(spool: Path) -> Any:
    import subprocess

    from conftest import cxsmtp_argv

    # Its stderr is read by the test, and checked with conftest.assert_no_traceback.
    return subprocess.Popen(
        [*cxsmtp_argv(), "send", str(spool)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigterm_with_several_connections_exits_75_and_loses_nothing(
    tmp_path: Path, isolated: Any, sink_factory: Any
) -> None:
    import signal

    from carerix_smtp.config.file import save_config

    sink = sink_factory(latency_ms=2)
    save_config(Config(path=isolated.config, servers={"local": entry_for(sink, connections=3)}))
    spool = make_spool(tmp_path, 300)
    process = _start_send(spool)
    assert sink.wait_until(lambda s: len(s.messages) >= 30, timeout=30)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert_no_traceback(process.args, err)
    assert process.returncode == 75, err
    assert "SIGTERM received" in err
    state = Spool(spool)
    assert state.claims() == [] and state.holder_pid() is None
    assert (spool / ".cxsmtp" / "journal").stat().st_size == 0
    sent_first = len(names(spool / "sent"))
    assert 30 <= sent_first < 300
    assert sent_first == len(sink.messages)  # every transaction in flight finished
    assert len(names(spool)) == 300 - sent_first
    final = _start_send(spool)
    _, err = final.communicate(timeout=60)
    assert_no_traceback(final.args, err)
    assert final.returncode == 0, err
    assert sorted(Counter(message_ids(sink)).values()) == [1] * 300  # a clean stop: none twice


def test_second_sigterm_cuts_every_connection(
    tmp_path: Path, isolated: Any, sink_factory: Any
) -> None:
    import logging
    import signal

    from carerix_smtp.config.file import save_config

    hanging = threading.Semaphore(0)

    class Flag(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "hanging" in record.getMessage():
                hanging.release()

    sink_log = logging.getLogger("carerix_smtp.sink.protocol")
    flag, level = Flag(), sink_log.level
    sink_log.addHandler(flag)
    sink_log.setLevel(logging.DEBUG)
    try:
        # 20 ms a reply: a slow server, so the second message goes to the second
        # connection while the first waits (send/spread.py); a fast one keeps one.
        sink = sink_factory(hang=[PhaseRule("eod")], latency_ms=20)
        entry = entry_for(sink, connections=2, command_timeout=60.0, data_timeout=60.0)
        save_config(Config(path=isolated.config, servers={"local": entry}))
        spool = make_spool(tmp_path, 4)
        process = _start_send(spool)
        # two connections, each with a whole message out and no reply to the final "."
        assert hanging.acquire(timeout=30) and hanging.acquire(timeout=30)
        process.send_signal(signal.SIGTERM)
        assert process.stderr is not None
        assert "SIGTERM received" in process.stderr.readline()  # finishing: still waiting
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=20)
        assert_no_traceback(process.args, err)
    finally:
        sink_log.removeHandler(flag)
        sink_log.setLevel(level)
    assert time.monotonic() - started < 10  # far less than the 60 s data timeout
    assert process.returncode == 75, err
    assert "received twice" in err
    assert Spool(spool).claims() == [] and Spool(spool).holder_pid() is None
    assert names(spool) == [f"m{n:05d}.eml" for n in range(4)]  # all back, unchanged


@pytest.mark.parametrize("seed", [7, 11])
def test_sigkill_with_several_connections_at_most_one_duplicate_each(
    tmp_path: Path, isolated: Any, sink_factory: Any, seed: int
) -> None:
    import random
    import signal

    from carerix_smtp.config.file import save_config

    connections, total = 3, 200
    sink = sink_factory(latency_ms=1)
    entry = entry_for(sink, connections=connections)
    save_config(Config(path=isolated.config, servers={"local": entry}))
    spool = make_spool(tmp_path, total)
    rng = random.Random(seed)
    kills = 0
    for _ in range(3):
        target = len(sink.messages) + rng.randint(5, 30)
        process = _start_send(spool)
        try:
            if sink.wait_until(lambda s, t=target: len(s.messages) >= t, timeout=30):
                time.sleep(rng.uniform(0, 0.004))  # a random point: reply, journal, rename...
            process.kill()
        finally:
            _, err = process.communicate(timeout=30)
        assert_no_traceback(process.args, err)
        kills += process.returncode == -signal.SIGKILL
    final = _start_send(spool)
    _, err = final.communicate(timeout=60)
    assert_no_traceback(final.args, err)
    assert final.returncode == 0, err
    received = Counter(message_ids(sink))
    assert set(received) == {f"<{n}.test@x.example>" for n in range(total)}, "a message was lost"
    duplicates = sum(count - 1 for count in received.values())
    assert kills >= 1 and duplicates <= kills * connections
    requeued = {e.get("message_id") for e in delivery_log(spool) if e["outcome"] == "requeued"}
    assert {mid for mid, count in received.items() if count > 1} <= requeued
    assert len(names(spool / "sent")) == total and Spool(spool).claims() == []


# --- pipelining across messages on one connection ------------------------------------------------


def _counting_factory(writes: list[str]) -> Any:
    from carerix_smtp.smtp.session import SmtpSession

    class Counting(SmtpSession):
        def write(self, data: bytes, phase: str, timeout: float, *, abort: bool = True) -> None:
            writes.append(phase)
            super().write(data, phase, timeout, abort=abort)

    return lambda entry, password: Counting(entry, password, local_hostname="test")


def test_next_message_rides_behind_the_data_one_write_each(
    tmp_path: Path, sink_factory: Any
) -> None:
    sink = sink_factory()
    spool = make_spool(tmp_path, 20)
    writes: list[str] = []
    config = config_for(tmp_path, entry_for(sink))
    summary = send(spool, config, session_factory=_counting_factory(writes))
    assert summary.sent == 20
    assert Counter(message_ids(sink)) == Counter(f"<{n}.test@x.example>" for n in range(20))
    # the first message's commands are written on their own; every other message's
    # go out with the data of the one before: one write (and one round trip) each
    assert writes.count("mail") == 1 and writes.count("data-end") == 20
    assert len(writes) == writes.index("mail") + 1 + 20 + 1  # ... then QUIT


def test_stop_with_the_next_message_chained_sends_it_not(tmp_path: Path, sink_factory: Any) -> None:
    sink = sink_factory()
    spool = make_spool(tmp_path, 10)
    stop = threading.Event()

    def progress(event: ProgressEvent) -> None:
        if event.kind == "message" and event.done == 3:
            stop.set()  # the 4th message's commands are already on the wire

    writes: list[str] = []
    config = config_for(tmp_path, entry_for(sink))
    summary = send(
        spool, config, stop=stop, progress=progress, session_factory=_counting_factory(writes)
    )
    assert (summary.status, summary.sent, summary.remaining) == ("interrupted", 3, 7)
    assert len(sink.messages) == 3 and "quit" not in writes  # dropped: a QUIT would be data
    assert Spool(spool).claims() == [] and len(names(spool)) == 7
    assert send(spool, config).sent == 7
    assert sorted(Counter(message_ids(sink)).values()) == [1] * 10


def test_a_failed_message_does_not_disturb_the_next_one(tmp_path: Path, sink_factory: Any) -> None:
    sink = sink_factory(
        # m00003 refused at RCPT (nothing to send: RSET), m00005 at the final "."
        fail=[FailRule("rcpt", 550, pattern="r3@*"), FailRule("eod", 554, after_n=4, times=1)]
    )
    spool = make_spool(tmp_path, 8)
    summary = send(spool, config_for(tmp_path, entry_for(sink)))
    assert (summary.sent, summary.failed) == (6, 2)
    assert sorted(names(spool / "failed")) == ["m00003.eml", "m00005.eml"]
    assert sink.connections_total == 1


def test_big_messages_ride_behind_each_other_too(tmp_path: Path, sink_factory: Any) -> None:
    from carerix_smtp.spool.message import SMALL_FILE

    sink = sink_factory(keep_data=True)
    spool = make_spool(tmp_path)
    body = ("x" * 70 + "\n") * (SMALL_FILE // 71 + 100)  # bigger than SMALL_FILE: streamed
    for n in range(3):
        (spool / f"big{n}.eml").write_bytes(eml(n) + body.encode())
    writes: list[str] = []
    summary = send(
        spool, config_for(tmp_path, entry_for(sink)), session_factory=_counting_factory(writes)
    )
    assert summary.sent == 3 and writes.count("mail") == 1
    sent = [(eml(n) + body.encode()).replace(b"\n", b"\r\n") for n in range(3)]  # CRLF on the wire
    assert [m.data for m in sink.messages] == sent


def test_ledger_gate_counts_the_messages_ahead_against_the_batch_deadline() -> None:
    """Messages are admitted a little ahead of the wire (and on several connections):
    the batch deadline is checked for when each one will really be done."""
    from types import SimpleNamespace

    from carerix_smtp.send.gates import LedgerGate

    def gate(connections: int, finishing: int) -> Any:
        ledger = SimpleNamespace(clock=lambda: 100.0)
        timing = SimpleNamespace(empty=False, predict=lambda size: 1.0)
        grant = SimpleNamespace(
            timing=timing,
            deadline_at=102.5,  # 2.5 s left: two messages of 1 s, not three
            admit=lambda size: True,
            stop_reason=None,
            cut_by_deadline=False,
            confirm=lambda mid, size: None,
            release=lambda size: None,
            closed=False,
        )
        entry = SimpleNamespace(name="s", connections=connections)
        g = LedgerGate(ledger, entry, None, lambda n: [], lambda s: None, lambda: finishing)  # type: ignore[arg-type]
        g.grant = grant  # type: ignore[assignment]
        return g

    one = gate(connections=1, finishing=0)
    assert [one.admit(10) for _ in range(3)] == [True, True, False]
    assert one.stop_reason == "deadline" and one.grant.cut_by_deadline and one.refused
    one.confirm("<1@x>", 10)  # one done: room again
    assert one.admit(10)
    # while the message on the wire only waits for its reply, it hardly counts
    overlapped = gate(1, finishing=1)
    assert [overlapped.admit(10) for _ in range(4)] == [True, True, True, False]
    three = gate(connections=3, finishing=0)
    assert all(three.admit(10) for _ in range(5))  # 6th: ceil(6 / 3) = 2 rounds: fits
    assert three.admit(10) and not three.admit(10)  # 7th would need 3
