"""How ``cxsmtp status`` looks: plain lines off a terminal (cron, pipes), rich
tables, colours and a chart of the messages sent per hour on a terminal."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

    from carerix_smtp.send.history import RunHistory
    from carerix_smtp.send.plan import ServerLimits
    from carerix_smtp.send.status import StatusReport
    from carerix_smtp.spool.listing import SpoolStatus

SHOWN = 20  # lines of "not delivered"; --json has them all
STYLES = {"queued": "cyan", "deferred": "yellow", "pending": "yellow", "sent": "green"}
STYLES["failed"] = "red"
STYLES["held"] = "magenta"
BLOCKS = " ▁▂▃▄▅▆▇█"  # eighths of a chart row
CHART_ROWS = 4


def size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError  # pragma: no cover


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def clock(ts: float) -> str:
    """HH:MM:SS today, else the date too (local time)."""
    moment = datetime.fromtimestamp(ts).astimezone()
    if moment.date() == datetime.now().astimezone().date():
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%Y-%m-%d %H:%M:%S")


# --- the lines both forms share ------------------------------------------------------


def state_rows(result: SpoolStatus) -> list[tuple[str, int, str, str]]:
    """(state, messages, size, detail) per state."""
    sent = f"{result.recipients_failed} recipient(s) refused" if result.recipients_failed else ""
    deferred = f"{result.due_now} due now, next retry {when(result.next_retry)}"
    if result.partial:
        deferred += f", {result.partial} already sent to some recipients"
    rows = [
        ("queued", result.queued, f"oldest {when(result.queued.oldest)}"),
        ("deferred", result.deferred, deferred),
        ("sent", result.sent, sent),
        ("failed", result.failed, ""),
    ]
    if result.held.count:  # only when there are some: held is rare
        rows.insert(2, ("held", result.held, "send skips them: cxsmtp queue release"))
    return [
        (label, count.count, size(count.bytes), extra if count.count else "")
        for label, count, extra in rows
    ]


def history_lines(history: RunHistory) -> list[tuple[str, str]]:
    """(style, line): the last run, then the last error of each server."""
    out: list[tuple[str, str]] = []
    run = history.last_run
    if run is not None:
        style = "green" if run.exit_code == 0 else "red"
        out.append(
            (
                style,
                f"last run: {when(run.when)}: {run.status} (exit {run.exit_code}): sent "
                f"{run.sent}, deferred {run.deferred}, failed {run.failed}",
            )
        )
    for name, error in sorted(history.servers.items()):
        message = error.message.removeprefix(f"server {name}: ")
        if error.recovered_at is not None:
            line = (
                f"server {name}: working again since {clock(error.recovered_at)} "
                f"(failing since {clock(error.first_seen)}: {message})"
            )
            out.append(("green", line))
        else:
            out.append(
                ("red", f"server {name}: failing since {clock(error.first_seen)}: {message}")
            )
    return out


def limit_lines(item: ServerLimits, now: float) -> list[str]:
    """A server's limits, what it used and what it still may, its ETA."""
    from carerix_smtp.limits.rule import format_duration

    lim = item.limits
    hour, day = format_duration(lim.rate_window), format_duration(lim.send_limit_window)
    lines = [
        f"{item.server} ({item.host}): {lim.rate_per_hour} per {hour}; a batch every "
        f"{format_duration(lim.batch_interval)} of at most {lim.batch_count_cap} message(s) "
        f"and {size(lim.batch_max_bytes)}, within {format_duration(lim.batch_deadline)}",
        f"  sent      last {hour}: {item.sent_hour} ({size(item.bytes_hour)}); "
        f"last {day}: {item.sent_day} ({size(item.bytes_day)}); all servers {day}: "
        f"{item.sent_day_all} of {lim.email_send_limit}",
    ]
    moment = item.next_window_at
    if moment is None or moment <= now:
        window = "next window: now"
    elif math.isinf(moment):
        window = f"no next window ({item.reason})"
    else:
        why = f" ({item.reason})" if item.reason else ""
        window = f"next window at {clock(moment)}{why}"
    running = f" ({item.reserved} held by a running batch)" if item.reserved else ""
    lines.append(f"  now       the windows allow {item.window_allows} more{running}; {window}")
    if item.queued:
        if item.eta is None:
            eta = "-"
        elif math.isinf(item.eta):
            eta = "never at current limits"
        else:
            eta = f"{clock(item.eta)} ({item.batches_left} batch(es))"
        lines.append(f"  queued    {item.queued} message(s), {size(item.queued_bytes)}; ETA {eta}")
    return lines


def more_line(total: int, spool: str) -> str:
    return f"… and {total - SHOWN} more (cxsmtp status {spool} --json lists them all)"


# --- plain text ----------------------------------------------------------------------


def render_plain(report: StatusReport) -> None:
    result = report.spool
    typer.echo(f"spool {result.path}")
    for label, count, amount, extra in state_rows(result):
        typer.echo(f"  {label:<9} {count:>7}  {amount}" + (f", {extra}" if extra else ""))
    typer.echo(f"  {'in flight':<9} {result.in_flight:>7}")
    running = f"yes (pid {result.running_pid})" if result.running_pid else "no"
    typer.echo(f"  send running: {running}")
    for _, line in history_lines(report.history):
        typer.echo(line)
    if result.undelivered:
        typer.echo(f"not delivered ({len(result.undelivered)}):")
        for row in result.undelivered[:SHOWN]:
            typer.echo(f"  {row.message}  {row.recipient or '-'}  {row.status}: {row.reply}")
        if len(result.undelivered) > SHOWN:
            typer.echo(f"  {more_line(len(result.undelivered), str(result.path))}")
    stale_lines(result, typer.echo)
    if report.servers:
        typer.echo("sending limits:")
        for item in report.servers:
            for line in limit_lines(item, report.at):
                typer.echo(f"  {line}")


def stale_lines(result: SpoolStatus, echo: Callable[[str], object]) -> None:
    if result.stale_tmp:
        echo("files in tmp/ older than a day (a producer that never finished?):")
        for name in result.stale_tmp:
            echo(f"  {name}")


# --- a terminal ----------------------------------------------------------------------


def render_rich(report: StatusReport, console: Console) -> None:
    from rich.table import Table

    result = report.spool
    table = Table(title=f"spool {result.path}", title_justify="left")
    for column, justify in (("state", "left"), ("messages", "right"), ("size", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    table.add_column("")
    for label, count, amount, extra in state_rows(result):
        style = STYLES[label] if count else "dim"
        table.add_row(f"[{style}]{label}[/]", str(count), amount, extra)
    running = f"yes (pid {result.running_pid})" if result.running_pid else "no"
    table.caption = f"in flight {result.in_flight}; send running: {running}"
    console.print(table)
    for style, line in history_lines(report.history):
        console.print(line, style=style, markup=False)
    if result.undelivered:
        rows = Table(title=f"not delivered ({len(result.undelivered)})", title_justify="left")
        for column in ("message", "recipient", "state", "reply"):
            rows.add_column(column)
        for row in result.undelivered[:SHOWN]:
            rows.add_row(
                row.message,
                row.recipient or "-",
                f"[{STYLES[row.status]}]{row.status}[/]",
                row.reply,
            )
        if len(result.undelivered) > SHOWN:
            rows.caption = more_line(len(result.undelivered), str(result.path))
        console.print(rows)
    stale_lines(result, console.print)
    for item in report.servers:
        console.print()
        for line in limit_lines(item, report.at):
            console.print(line, markup=False)
        counts = report.hourly.get(item.server, [0] * 24)
        console.print(
            chart(
                counts, item.limits.rate_per_hour, item.sent_day_all, item.limits.email_send_limit
            )
        )


def chart(counts: list[int], hourly: int, day: int, day_limit: int) -> Text:
    """Messages sent per hour, oldest hour first: one column per hour, full height
    the hourly limit (a column at the limit is red, past 80 % yellow)."""
    from rich.text import Text

    top = max(hourly, *counts, 1)
    text = Text(f"  sent per hour, last {len(counts)} h (full height: {top} an hour)\n")
    for row in range(CHART_ROWS - 1, -1, -1):
        text.append("  │")
        for count in counts:
            eighths = math.ceil(count / top * CHART_ROWS * 8) - row * 8
            if count and row == 0:
                eighths = max(eighths, 1)
            glyph = BLOCKS[max(0, min(8, eighths))]
            if row == 0 and not count:
                glyph = "·"
            style = "red" if count >= hourly else "yellow" if count >= 0.8 * hourly else "green"
            text.append(glyph * 2, style=style)
            text.append(" ")
        text.append("\n")
    width = len(counts) * 3
    text.append(f"  └{'─' * width}\n")
    text.append(f"   -{len(counts)} h".ljust(width - 1) + "now\n")
    style = "red" if day >= day_limit else "yellow" if day >= 0.8 * day_limit else "green"
    text.append(f"  last 24 h, all servers: {day} of {day_limit}", style=style)
    return text
