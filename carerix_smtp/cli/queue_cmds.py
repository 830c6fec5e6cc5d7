"""``cxsmtp queue list|show|delete|hold|release|flush|purge``: the queue as Postfix's
mailq, postcat -q, postsuper -d/-h/-H and postqueue -f manage it (issue 13)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer

from carerix_smtp.cli.queue_options import SpoolOpt, resolve
from carerix_smtp.cli.render import print_json

if TYPE_CHECKING:
    from carerix_smtp.spool.queue import MessageDetail, QueueEntry

LIST_KEYS = (
    "JSON: {spool, state, messages: [{id, state (queued|deferred|held|failed), size, "
    "queued_at, sender, recipients (pending ones), next_retry, attempts, last_reply, "
    "problem}], total: {messages, bytes, by_state}}."
)


# --- list ----------------------------------------------------------------------------


def print_queue(spool: Path, state: str = "pending", json_out: bool = False) -> int:
    """Print the queue of ``spool`` as ``queue list`` does (also ``sendmail -bp`` and
    ``mailq``); returns the exit code."""
    from carerix_smtp.spool.layout import SpoolLayout
    from carerix_smtp.spool.queue import QueueTotals, list_queue, states_for

    states = states_for(state)
    layout = SpoolLayout(spool, durable=False, clock=time.time)
    totals = QueueTotals()
    out = sys.stdout
    layout.check(writable=False)  # before the first byte: a JSON error must be all of stdout
    entries = list_queue(layout, states)
    if json_out:
        _write_json_list(out, spool, state, entries, totals)
        return 0
    lines: list[str] = []
    count, size, by_state = 0, 0, totals.by_state
    for entry in entries:
        if not count:
            lines.append(
                f"{'-Queue ID-':<32} {'--Size--':>8} {'----Queued----':<19} "
                "-State- -Sender -> Recipients-\n"
            )
        count += 1
        size += entry.size
        by_state[entry.state] = by_state.get(entry.state, 0) + 1
        lines.append(_entry_line(entry))
        if len(lines) >= 512:  # written in blocks: as fast as one write, memory bounded
            out.write("".join(lines))
            lines.clear()
    out.write("".join(lines))
    if not count:
        out.write(f"{spool}: queue is empty ({', '.join(states)})\n")
        return 0
    counts = ", ".join(f"{s} {n}" for s, n in by_state.items())
    out.write(f"-- {count} message(s), {size} bytes ({counts})\n")
    return 0


_MINUTES: dict[int, str] = {}  # minute -> "YYYY-MM-DD HH:MM:" in local time


def _stamp(ts: float | None) -> str:
    """Local time to the second.  Formatted once per minute (time zones move by
    whole minutes at most): a queue of 100,000 is listed without 100,000 strftimes."""
    if ts is None:
        return "-"
    second = int(ts)
    minute, rest = divmod(second, 60)
    prefix = _MINUTES.get(minute)
    if prefix is None:
        if len(_MINUTES) > 4096:
            _MINUTES.clear()
        prefix = _MINUTES[minute] = time.strftime("%Y-%m-%d %H:%M:", time.localtime(second - rest))
    return f"{prefix}{rest:02d}"


def _entry_line(entry: QueueEntry) -> str:
    sender = "<>" if entry.sender == "" else entry.sender or "?"
    line = (
        f"{entry.id:<32} {entry.size:>8} {_stamp(entry.queued_at)} {entry.state:<7} "
        f"{sender} -> {', '.join(entry.recipients) or '-'}\n"
    )
    if entry.problem:
        line += f"    (unusable: {entry.problem})\n"
    elif entry.state in ("deferred", "failed") or entry.last_reply:
        parts = [entry.last_reply or "no reply recorded", f"attempts {entry.attempts}"]
        if entry.state == "deferred":
            parts.append(f"next retry {_stamp(entry.next_retry)}")
        line += f"    ({'; '.join(parts)})\n"
    return line


def _write_json_list(out: TextIO, spool: Path, state: str, entries: Any, totals: Any) -> None:
    """One JSON object, written as the entries come (100,000 need no list)."""
    out.write(f'{{"spool": {json.dumps(str(spool))}, "state": {json.dumps(state)}, "messages": [')
    for entry in entries:
        out.write(",\n" if totals.count else "\n")
        totals.add(entry)
        out.write(json.dumps(entry.to_json(), ensure_ascii=False))
    out.write(f'\n], "total": {json.dumps(totals.to_json())}}}\n')


def list_cmd(
    ctx: typer.Context,
    spool: SpoolOpt = None,
    state: Annotated[
        str,
        typer.Option(
            "--state",
            metavar="STATE",
            help="queued, deferred, held, failed, pending (queued+deferred+held) or all "
            "(pending+failed).",
        ),
    ] = "pending",
    json_out: Annotated[bool, typer.Option("--json", help=LIST_KEYS)] = False,
) -> None:
    """List the queue like mailq: queue ID, size, time queued, state, sender and the
    recipients still pending; for deferred and failed messages the last reply, the
    attempts and the next retry; a total line.  Sent mail is not listed.  Order:
    state by state (queued, deferred, held, failed), each oldest first (the order
    send takes them).

    Example:  cxsmtp queue list /var/spool/mailing --state all
    """
    raise typer.Exit(print_queue(resolve(ctx, spool), state, json_out))


# --- show ----------------------------------------------------------------------------


def show_cmd(
    ctx: typer.Context,
    queue_id: Annotated[
        str, typer.Argument(metavar="ID", help="Queue ID (file name without .eml).")
    ],
    spool: SpoolOpt = None,
    body: Annotated[bool, typer.Option("--body", help="Print the whole message too.")] = False,
    json_out: Annotated[
        bool,
        typer.Option(
            "--json",
            help="JSON: {id, state, path, size, mtime, envelope (as in queue list), "
            "headers, record (the per-recipient state), log (delivery log lines), "
            "message (with --body)}.",
        ),
    ] = False,
) -> None:
    """Show one message like postcat -q: state, file, size, envelope, header block,
    its record (per recipient: accepted, refused, pending, with each reply), and
    every attempt in the delivery log (time, server, reply).  An unknown ID exits 66.

    Example:  cxsmtp queue show 20261130T101500123456-a1b2c3 --body
    """
    from carerix_smtp.spool.layout import SpoolLayout
    from carerix_smtp.spool.queue import STATE_DIRS, read_body, show

    path = resolve(ctx, spool)
    layout = SpoolLayout(path, durable=False, clock=time.time)
    detail = show(layout, queue_id)
    data = (
        read_body(layout, STATE_DIRS.get(detail.state, detail.state), detail.id + ".eml")
        if body
        else None
    )
    if json_out:
        print_json(detail.to_json(data))
        return
    _render_detail(detail)
    if data is not None:
        typer.echo("-- message --")
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


def _render_detail(detail: MessageDetail) -> None:
    echo = typer.echo
    echo(f"id:        {detail.id}")
    echo(f"state:     {detail.state}")
    echo(f"file:      {detail.path}")
    echo(f"size:      {detail.size} bytes")
    entry = detail.entry
    if entry is not None:
        echo(f"queued:    {_stamp(entry.queued_at)}")
        if entry.next_retry is not None:
            echo(f"next try:  {_stamp(entry.next_retry)}")
        echo(f"sender:    {'<>' if entry.sender == '' else entry.sender or '?'}")
        echo(f"pending:   {', '.join(entry.recipients) or '-'}")
        if entry.problem:
            echo(f"unusable:  {entry.problem}")
    record = detail.record
    if record is not None:
        echo(
            f"attempts:  {record.attempts} (last {_stamp(record.last_attempt)}, "
            f"server {record.server or '-'})"
        )
        if record.reason:
            echo(f"reason:    {record.reason}")
        if record.reply is not None:
            echo(f"MAIL FROM: {record.reply.describe()} at {_stamp(record.reply.time)}")
        for label, results in (
            ("accepted", record.accepted),
            ("refused", record.failed),
            ("pending", record.pending),
        ):
            for rcpt, result in results.items():
                said = (
                    f"{result.describe()} at {_stamp(result.time)}" if result else "not tried yet"
                )
                echo(f"  {label:<9} {rcpt}: {said}")
    echo("-- headers --")
    echo(detail.head.decode("utf-8", "replace").rstrip("\r\n"))
    if detail.log:
        echo("-- delivery log --")
        for line in detail.log:
            echo(_log_text(line))


def _log_text(line: dict[str, Any]) -> str:
    parts = [str(line.get("time", "?")), str(line.get("outcome", "?"))]
    if line.get("server"):
        parts.append(f"server {line['server']}")
    for key in ("accepted", "refused", "deferred"):
        value = line.get(key)
        if isinstance(value, dict) and value:
            parts.append(f"{key}: " + ", ".join(f"{r} ({t})" for r, t in value.items()))
    for key in ("reply", "error", "note"):
        if line.get(key):
            parts.append(str(line[key]))
    return "  " + "; ".join(parts)


def register(app: typer.Typer) -> None:
    queue = typer.Typer(
        name="queue",
        help="Look at and manage the queue (as Postfix's mailq, postcat, postsuper, postqueue).",
        no_args_is_help=True,
        rich_markup_mode=None,
    )
    queue.command("list")(list_cmd)
    queue.command("show")(show_cmd)
    _register_changes(queue)
    app.add_typer(queue, name="queue")


def _register_changes(queue: typer.Typer) -> None:
    from carerix_smtp.cli.queue_changes import register_changes

    register_changes(queue)
