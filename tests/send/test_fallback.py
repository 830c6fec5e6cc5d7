"""Fallback relays in ``run_send`` (issue 14): when a server cannot be used for a run
its messages go to the first usable fallback; a message's own 4xx/5xx never does.

Real servers on 127.0.0.1 (cxsmtp's Sink, ScriptServer), the loopback DNS server,
and the real SQLite ledger for the per-server counts.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from dns_server import dns_server
from servers import (
    ScriptConn,
    ScriptServer,
    closed_port,
    config_for,
    entry_for,
    make_spool,
    message_ids,
    names,
)

from carerix_smtp.config.file import Config, ServerEntry
from carerix_smtp.config.tls import Security
from carerix_smtp.errors import ExitCode
from carerix_smtp.limits.rule import Limits
from carerix_smtp.limits.sqlite import Ledger
from carerix_smtp.send.report import SendOptions
from carerix_smtp.send.run import run_send
from carerix_smtp.sink.config import FailRule, PhaseRule
from carerix_smtp.spool.spool import Spool

EXPECTED = Counter(f"<{n}.test@x.example>" for n in range(5))


def send(spool: Path, config: Config, **kw: Any) -> Any:
    options = kw.pop("options", SendOptions())
    kw.setdefault("password_source", lambda entry: None)
    return run_send(spool, config, options, **kw)


def with_fallback(primary: ServerEntry, *relays: ServerEntry) -> ServerEntry:
    return dataclasses.replace(primary, fallback=[r.name for r in relays])


def uses(summary: Any) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in summary.to_json()["servers"]}


def assert_went_to_relay(summary: Any, spool: Path, relay: Any, why: str) -> None:
    assert (summary.status, summary.exit_code) == ("ok", ExitCode.OK), summary.errors
    assert summary.sent == 5 and Counter(message_ids(relay)) == EXPECTED
    assert names(spool) == [] and len(names(spool / "sent")) == 5
    assert Spool(spool).claims() == []
    row = uses(summary)
    assert row["primary"]["sent"] == 0 and row["primary"]["fallback"] == "relay"
    assert why in row["primary"]["skipped_reason"]
    assert row["relay"] == {
        "name": "relay",
        "sent": 5,
        "skipped_reason": None,
        "fallback": None,
        "used_for": ["primary"],
    }
    assert summary.errors == []  # the run did its job: no exit 75
    (failure,) = summary.server_failures
    assert failure.server == "primary" and "went through fallback relay" in failure.message


def run_with_primary(tmp_path: Path, primary: ServerEntry, relay_sink: Any, **kw: Any) -> Any:
    spool = make_spool(tmp_path, 5)
    relay = entry_for(relay_sink, "relay")
    config = config_for(tmp_path, with_fallback(primary, relay), relay)
    return spool, send(spool, config, **kw)


def test_connection_refused_goes_to_fallback(tmp_path: Path, sink_factory: Any) -> None:
    relay = sink_factory()
    primary = entry_for(closed_port(), "primary")
    spool, summary = run_with_primary(tmp_path, primary, relay)
    assert_went_to_relay(summary, spool, relay, "refused")


def test_name_that_does_not_resolve_goes_to_fallback(tmp_path: Path, sink_factory: Any) -> None:
    relay = sink_factory()
    primary = dataclasses.replace(entry_for(25, "primary"), host="[nosuch.test]:2525")
    spool = make_spool(tmp_path, 5)
    relay_entry = entry_for(relay, "relay")
    config = config_for(tmp_path, with_fallback(primary, relay_entry), relay_entry)
    with dns_server({}) as dns:  # every name NXDOMAIN
        config.settings.nameservers = [dns.nameserver]
        summary = send(spool, config)
    assert_went_to_relay(summary, spool, relay, "nosuch.test")


def test_no_greeting_goes_to_fallback(tmp_path: Path, sink_factory: Any) -> None:
    silent = sink_factory(hang=[PhaseRule("connect")])
    relay = sink_factory()
    primary = entry_for(silent, "primary", command_timeout=0.3, connect_timeout=0.3)
    spool, summary = run_with_primary(tmp_path, primary, relay)
    assert_went_to_relay(summary, spool, relay, "")
    assert silent.messages == []


def test_421_at_greeting_goes_to_fallback(tmp_path: Path, sink_factory: Any) -> None:
    busy = sink_factory(fail=[FailRule("connect", 421)])
    relay = sink_factory()
    spool, summary = run_with_primary(tmp_path, entry_for(busy, "primary"), relay)
    assert_went_to_relay(summary, spool, relay, "421")


def test_tls_failure_goes_to_fallback(tmp_path: Path, sink_factory: Any, ca_file: Path) -> None:
    # the server's certificate comes from the sink's own CA; the entry trusts another
    tls = sink_factory(tls="implicit")
    relay = sink_factory()
    primary = entry_for(tls, "primary", security=Security.SSL, ca_file=str(ca_file))
    spool, summary = run_with_primary(tmp_path, primary, relay)
    assert_went_to_relay(summary, spool, relay, "certificate")
    assert tls.messages == []
    assert summary.server_failures[0].kind == "tls"


def test_authentication_refused_goes_to_fallback(tmp_path: Path, sink_factory: Any) -> None:
    locked = sink_factory(auth=("jan", "right"), auth_required=True, auth_require_tls=False)
    relay = sink_factory()
    primary = entry_for(
        locked, "primary", username="jan", security=Security.NONE, allow_plaintext_auth=True
    )
    passwords = {"primary": "wrong"}
    spool, summary = run_with_primary(
        tmp_path, primary, relay, password_source=lambda e: passwords.get(e.name)
    )
    assert_went_to_relay(summary, spool, relay, "535")
    assert summary.server_failures[0].kind == "auth"
    assert "wrong" not in json.dumps(summary.to_json())


def test_first_usable_fallback_in_order(tmp_path: Path, sink_factory: Any) -> None:
    second, third = sink_factory(), sink_factory()
    primary = entry_for(closed_port(), "primary")
    dead = entry_for(closed_port(), "dead")
    relays = [dead, entry_for(second, "second"), entry_for(third, "third")]
    spool = make_spool(tmp_path, 5)
    summary = send(spool, config_for(tmp_path, with_fallback(primary, *relays), *relays))
    assert summary.status == "ok" and Counter(message_ids(second)) == EXPECTED
    assert third.messages == []
    row = uses(summary)
    assert row["primary"]["fallback"] == "second" and row["second"]["sent"] == 5
    assert "dead" not in row  # tried, not used: its error is a server error, not a route
    assert {f.server for f in summary.server_failures} == {"primary", "dead"}


def test_fallbacks_of_a_fallback_are_not_followed(tmp_path: Path, sink_factory: Any) -> None:
    last = sink_factory()
    primary = entry_for(closed_port(), "primary", fallback=["middle"])
    middle = entry_for(closed_port(), "middle", fallback=["last"])
    spool = make_spool(tmp_path, 5)
    config = config_for(tmp_path, primary, middle, entry_for(last, "last"))
    summary = send(spool, config)
    assert (summary.status, summary.exit_code) == ("unreachable", ExitCode.TEMPFAIL)
    assert last.messages == [] and len(names(spool)) == 5
    assert uses(summary)["primary"]["fallback"] is None
    assert len(summary.errors) == 2  # the primary's and the fallback's reason


def test_no_usable_fallback_and_refused_login_is_77(tmp_path: Path, sink_factory: Any) -> None:
    locked = sink_factory(auth=("jan", "right"), auth_required=True, auth_require_tls=False)
    primary = entry_for(
        locked, "primary", username="jan", allow_plaintext_auth=True, fallback=["dead"]
    )
    spool = make_spool(tmp_path, 5)
    config = config_for(tmp_path, primary, entry_for(closed_port(), "dead"))
    summary = send(spool, config, password_source=lambda e: "wrong" if e.username else None)
    assert (summary.status, summary.exit_code) == ("auth-failed", ExitCode.NOPERM)
    assert len(names(spool)) == 5 and Spool(spool).claims() == []


def test_recipient_refused_stays_the_outcome(tmp_path: Path, sink_factory: Any) -> None:
    picky = sink_factory(fail=[FailRule("rcpt", 550, pattern="r2@*")])
    relay = sink_factory()
    spool = make_spool(tmp_path, 5)
    relay_entry = entry_for(relay, "relay")
    config = config_for(tmp_path, entry_for(picky, "primary", fallback=["relay"]), relay_entry)
    summary = send(spool, config)
    assert summary.status == "failed" and summary.failed == 1 and summary.sent == 4
    assert relay.messages == [] and len(picky.messages) == 4
    row = uses(summary)
    assert row["primary"]["sent"] == 4 and row["primary"]["skipped_reason"] is None
    assert "relay" not in row and summary.server_failures == []


def test_message_deferred_is_not_retried_on_fallback(tmp_path: Path, sink_factory: Any) -> None:
    slow = sink_factory(fail=[FailRule("mail", 451)])
    relay = sink_factory()
    spool = make_spool(tmp_path, 3)
    config = config_for(
        tmp_path, entry_for(slow, "primary", fallback=["relay"]), entry_for(relay, "relay")
    )
    summary = send(spool, config)
    assert summary.deferred == 3 and summary.sent == 0 and relay.messages == []


def test_limits_are_counted_on_the_server_that_sent(tmp_path: Path, sink_factory: Any) -> None:
    relay_sink = sink_factory()
    primary = entry_for(closed_port(), "primary", fallback=["relay"])
    # the fallback's own limits apply: it may take 3 of the 5 in this batch
    relay = entry_for(relay_sink, "relay", batch_max_messages=3)
    spool = make_spool(tmp_path, 5)
    config = config_for(tmp_path, primary, relay)
    with Ledger(tmp_path / "ledger.sqlite3") as ledger:
        summary = send(spool, config, ledger=ledger)
        usage = {
            e.name: ledger.usage(e.name, Limits.from_entry(e, config.settings))
            for e in (primary, relay)
        }
    assert summary.sent == 3 and len(relay_sink.messages) == 3 and len(names(spool)) == 2
    assert usage["relay"].sent_hour == 3 and usage["primary"].sent_hour == 0
    assert summary.status == "limit" and summary.exit_code == ExitCode.OK
    assert uses(summary)["relay"]["sent"] == 3


def test_per_sender_route_and_direct_route_share_the_fallback(
    tmp_path: Path, sink_factory: Any
) -> None:
    # alice's mail goes to "primary" (down) -> relay; everyone else's to relay directly
    relay_sink = sink_factory()
    spool = make_spool(tmp_path)
    for n in range(4):
        sender = "alice@x.example" if n % 2 else "bob@x.example"
        (spool / f"m{n}.eml").write_bytes(
            (f"From: {sender}\nTo: r{n}@y.example\nMessage-ID: <{n}.t@x>\n\nbody\n").encode()
        )
    relay = entry_for(relay_sink, "relay")
    primary = entry_for(closed_port(), "primary", fallback=["relay"])
    config = config_for(tmp_path, relay, primary, users={"alice@x.example": "primary"})
    summary = send(spool, config)
    assert summary.sent == 4 and len(relay_sink.messages) == 4
    row = uses(summary)
    assert row["relay"]["sent"] == 4 and row["relay"]["used_for"] == ["primary"]


def test_several_connections_on_the_fallback(tmp_path: Path, sink_factory: Any) -> None:
    relay = sink_factory()
    spool = make_spool(tmp_path, 30)
    relay_entry = entry_for(relay, "relay", connections=3)
    config = config_for(
        tmp_path, entry_for(closed_port(), "primary", fallback=["relay"]), relay_entry
    )
    summary = send(spool, config)
    assert summary.sent == 30 and sorted(Counter(message_ids(relay)).values()) == [1] * 30


def test_primary_that_works_is_used(tmp_path: Path, sink_factory: Any) -> None:
    primary_sink, relay = sink_factory(), sink_factory()
    spool = make_spool(tmp_path, 5)
    config = config_for(
        tmp_path, entry_for(primary_sink, "primary", fallback=["relay"]), entry_for(relay, "relay")
    )
    summary = send(spool, config)
    assert summary.sent == 5 and len(primary_sink.messages) == 5 and relay.connections_total == 0
    assert uses(summary) == {
        "primary": {
            "name": "primary",
            "sent": 5,
            "skipped_reason": None,
            "fallback": None,
            "used_for": [],
        }
    }


@pytest.mark.parametrize("greeting", [b"421 4.3.2 closing\r\n", b"554 5.3.2 no service\r\n"])
def test_script_server_refusing_the_greeting(
    tmp_path: Path, sink_factory: Any, greeting: bytes
) -> None:
    def script(conn: ScriptConn) -> None:
        conn.send(greeting)

    relay = sink_factory()
    with ScriptServer(script) as server:
        primary = entry_for(server.port, "primary")
        spool, summary = run_with_primary(tmp_path, primary, relay)
    assert_went_to_relay(summary, spool, relay, greeting[:3].decode())


def test_fallback_passed_over_fails_the_run_only_for_its_own_mail(
    tmp_path: Path, sink_factory: Any
) -> None:
    # "dead" is tried for "primary" and passed over for "relay"; bob's mail goes to
    # "dead" directly: that mail cannot go, so this run is unreachable (75)
    relay_sink = sink_factory()
    spool = make_spool(tmp_path)
    for n, sender in enumerate(["alice@x.example", "bob@x.example", "alice@x.example"]):
        (spool / f"m{n}.eml").write_bytes(
            f"From: {sender}\nTo: r{n}@y.example\nMessage-ID: <{n}.t@x>\n\nbody\n".encode()
        )
    primary = entry_for(closed_port(), "primary", fallback=["dead", "relay"])
    dead, relay = entry_for(closed_port(), "dead"), entry_for(relay_sink, "relay")
    config = config_for(tmp_path, primary, dead, relay, users={"bob@x.example": "dead"})
    summary = send(spool, config)
    assert summary.sent == 2 and len(relay_sink.messages) == 2 and names(spool) == ["m1.eml"]
    assert (summary.status, summary.exit_code) == ("unreachable", ExitCode.TEMPFAIL)
    assert [e for e in summary.errors if e.startswith("server dead:")]
    assert uses(summary)["primary"]["fallback"] == "relay"


def test_skipped_primary_gives_back_its_share_of_the_send_limit(
    tmp_path: Path, sink_factory: Any
) -> None:
    # email-send-limit counts every server: the primary's batch, asked for before it
    # was found down, must not keep the fallback from the 5 the day allows
    relay_sink = sink_factory()
    spool = make_spool(tmp_path, 5)
    config = config_for(
        tmp_path,
        entry_for(closed_port(), "primary", fallback=["relay"]),
        entry_for(relay_sink, "relay"),
    )
    config.settings.email_send_limit = 5
    with Ledger(tmp_path / "ledger.sqlite3") as ledger:
        summary = send(spool, config, ledger=ledger)
    assert summary.sent == 5 and len(relay_sink.messages) == 5 and names(spool) == []
