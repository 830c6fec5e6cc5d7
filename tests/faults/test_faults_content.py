"""Hostile or extreme message files: CR/LF and CVE-2023-27043 address tricks in the
header, bare LF and lone "." lines in the body, a 5 MB header line, 100,000
recipients.  Each message is either sent exactly as it should be on the wire (checked
on what the server received) or moved to failed/ with a record — never a crash."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from servers import ScriptServer, entry_for, message_ids

from faults.fault_helpers import configure, duplicates, ids_in, send, smtp_script, tally, wire_form

pytestmark = pytest.mark.slow

HEAD = b"Date: Wed, 01 May 2024 12:00:00 +0000\nSubject: trick\n"

# name -> the address fields of a message.  The real addresses are in x.example
# (sender) and y.example (recipients); evil.example only ever appears where a
# parser that lets CR/LF, quotes or parentheses through would pick it up.
ADDRESS_TRICKS: dict[str, bytes] = {
    "cr-in-to": b"From: a@x.example\nTo: b@y.example\rRCPT TO:<evil@evil.example>\n",
    "cr-in-from": b"From: a@x.example\rMAIL FROM:<evil@evil.example>\nTo: b@y.example\n",
    "crlf-in-encoded-word": (
        b"From: a@x.example\n"
        b"To: =?utf-8?q?x=0D=0ARCPT_TO=3A=3Cevil=40evil.example=3E?= <b@y.example>\n"
    ),
    "nul-in-to": b"From: a@x.example\nTo: b@y.example\0evil@evil.example\n",
    "parameter-in-return-path": (
        b"Return-Path: <a@x.example> NOTIFY=NEVER ORCPT=rfc822;evil@evil.example\n"
        b"From: a@x.example\nTo: b@y.example\n"
    ),
    "command-after-angle": b"From: a@x.example\nTo: <b@y.example> RCPT TO:<evil@evil.example>\n",
    # CVE-2023-27043: email.utils.parseaddr/getaddresses took these apart wrongly
    "cve-paren-then-angle": b"From: a@x.example\nTo: b@y.example)<evil@evil.example>\n",
    "cve-quoted-at": b'From: a@x.example\nTo: "evil@evil.example"@y.example\n',
    "cve-quoted-comma": b'From: a@x.example\nTo: "evil@evil.example, b"@y.example\n',
    "cve-specials-in-from": b"From: evil@evil.example)<a@x.example>\nTo: b@y.example\n",
    "folded-crlf-between-addresses": (
        b"From: a@x.example\nTo: b@y.example,\n\tc@y.example,\r\n d@y.example\n"
    ),
}


def message(name: str, fields: bytes, body: bytes = b"hello\n") -> bytes:
    return fields + f"Message-ID: <{name}@x.example>\n".encode() + HEAD + b"\n" + body


def outcome(spool: Path, name: str) -> str:
    """'sent', or 'failed' with a record that says why; anything else fails the test."""
    if (spool / "sent" / name).exists():
        return "sent"
    assert (spool / "failed" / name).exists(), f"{name} is neither sent nor failed"
    record = json.loads((spool / "failed" / f"{name}.json").read_text())
    assert record, name
    return "failed"


def clean(address: str, domain: str) -> bool:
    """An address an envelope may carry, in the expected domain: no control
    characters, and no space or angle bracket outside a quoted local part."""
    local, _, got = address.rpartition("@")
    if got != domain or any(c in address for c in "\r\n\0"):
        return False
    quoted = len(local) > 1 and local.startswith('"') and local.endswith('"')
    return quoted or not any(c in local for c in ' <>"')


def test_address_tricks(tmp_path: Path, isolated: Any, sink_factory: Any, matrix: Any) -> None:
    sink = sink_factory()
    configure(isolated, entry_for(sink))
    spool = tmp_path / "spool"
    spool.mkdir()
    for name, fields in ADDRESS_TRICKS.items():
        (spool / f"{name}.eml").write_bytes(message(name, fields))
    result = send(spool)
    assert result.returncode in (0, 65), result.stderr  # all sent, or some failed (README)
    outcomes = {name: outcome(spool, f"{name}.eml") for name in ADDRESS_TRICKS}
    by_id = {mid: received for mid, received in zip(message_ids(sink), sink.messages, strict=True)}
    for name, how in outcomes.items():
        received = by_id.get(f"<{name}@x.example>")
        assert (received is not None) == (how == "sent"), name
        if received is not None:
            assert clean(received.mail_from, "x.example"), (name, received.mail_from)
            assert all(clean(r, "y.example") for r in received.rcpt_tos), (name, received.rcpt_tos)
            assert all("NOTIFY" not in o and "ORCPT" not in o for o in received.mail_options)
    failed = sorted(n for n, how in outcomes.items() if how == "failed")
    assert (result.returncode == 65) == bool(failed)
    state = tally(spool)
    lost = state.lost(f"{name}.eml" for name in ADDRESS_TRICKS)
    matrix(
        runs=1,
        total=len(ADDRESS_TRICKS),
        lost=lost,
        duplicates=duplicates(ids_in(r.data for r in sink.messages)),
        note=f"{len(failed)} refused: {', '.join(failed)}",
    )
    assert lost == 0 and state.queued == []


def wire_case(tmp_path: Path, isolated: Any, messages: dict[str, bytes], **entry: Any) -> Any:
    """Send ``messages`` to a scripted server that keeps the raw DATA; returns
    (result, {name: raw data received})."""
    with ScriptServer(smtp_script(), connections=3) as server:
        configure(isolated, entry_for(server.port, **entry))
        spool = tmp_path / "spool"
        spool.mkdir()
        for name, data in messages.items():
            (spool / f"{name}.eml").write_bytes(data)
        result = send(spool, timeout=120)
        datas = list(server.data)
        lines = list(server.lines)
    by_name = {}
    for data in datas:
        mid = next(iter(ids_in([data])))
        by_name[mid.strip("<>").partition("@")[0]] = data
    return spool, result, by_name, lines


def test_bare_lf_and_lone_dot_lines(tmp_path: Path, isolated: Any, matrix: Any) -> None:
    bodies = {
        "lone-dots": b"one\n.\ntwo\n..\n.x\n.\n",
        "crlf-dot-crlf-inside": b"one\r\n.\r\nstill the body\r\n.\r\n\r\nend\r\n",
        "mixed-endings": b"unix\nwindows\r\nunix again\n.\r\n.\nlast",
        "dot-at-the-very-end": b"text\n.",
    }
    messages = {
        name: message(name, b"From: a@x.example\nTo: b@y.example\n", body)
        for name, body in bodies.items()
    }
    spool, result, by_name, _ = wire_case(tmp_path, isolated, messages)
    assert result.returncode == 0, result.stderr
    for name, data in messages.items():
        assert outcome(spool, f"{name}.eml") == "sent"
        assert by_name[name] == wire_form(data), name  # CRLF everywhere, dots stuffed
    state = tally(spool)
    lost = state.lost(f"{n}.eml" for n in messages)
    matrix(runs=1, total=len(messages), lost=lost, duplicates=0)
    assert lost == 0 and len(by_name) == len(messages)


def test_five_megabyte_header_line(tmp_path: Path, isolated: Any, matrix: Any) -> None:
    long_field = b"X-Long: " + b"a" * (5 * 1024 * 1024) + b"\n"
    data = message("long-header", b"From: a@x.example\nTo: b@y.example\n" + long_field)
    messages = {
        "long-header": data,
        "normal": message("normal", b"From: a@x.example\nTo: b@y.example\n"),
    }
    spool, result, by_name, _ = wire_case(tmp_path, isolated, messages)
    assert result.returncode in (0, 65), result.stderr
    how = outcome(spool, "long-header.eml")
    if how == "sent":
        assert by_name["long-header"] == wire_form(data)  # the line arrived whole
    else:
        assert "long-header" not in by_name
        assert "long-header.eml" in result.stderr
    assert by_name["normal"] == wire_form(messages["normal"])
    lost = tally(spool).lost(f"{n}.eml" for n in messages)
    matrix(runs=1, total=2, lost=lost, duplicates=0, note=f"the 5 MB line: {how}")
    assert lost == 0


RECIPIENTS = 100_000


def test_many_recipients(tmp_path: Path, isolated: Any, matrix: Any) -> None:
    addresses = [f"r{n}@y.example" for n in range(RECIPIENTS)]
    to = b"To: " + b",\n ".join(a.encode() for a in addresses) + b"\n"
    data = message("many", b"From: a@x.example\n" + to)
    started = time.monotonic()
    spool, result, by_name, lines = wire_case(
        tmp_path, isolated, {"many": data}, command_timeout=30.0, data_timeout=60.0
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    rcpts = [line for line in lines if line.upper().startswith(b"RCPT TO:")]
    assert sorted(rcpts) == sorted(f"RCPT TO:<{a}>\r\n".encode() for a in addresses)
    assert by_name["many"] == wire_form(data)
    lost = tally(spool).lost(["many.eml"])
    matrix(
        runs=1, total=1, lost=lost, duplicates=0, note=f"{RECIPIENTS} recipients in {elapsed:.1f} s"
    )
    assert lost == 0 and outcome(spool, "many.eml") == "sent"
