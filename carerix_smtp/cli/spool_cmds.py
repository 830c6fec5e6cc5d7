"""``cxsmtp send``, ``enqueue``, ``status``, ``retry``: the spool (SPEC §3)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from carerix_smtp.cli.context import CliContext, get_context
from carerix_smtp.cli.render import print_json

if TYPE_CHECKING:
    from carerix_smtp.limits.sqlite import Ledger
    from carerix_smtp.send.plan import Plan, ServerLimits
    from carerix_smtp.send.report import ProgressEvent, RunSummary
    from carerix_smtp.spool.listing import SpoolStatus

SpoolArg = Annotated[
    Path,
    typer.Argument(
        metavar="SPOOL", help="Spool directory: *.eml files in it are queued.", show_default=False
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON object instead of text.")]
SHOWN_FAILURES = 10  # per run on the terminal; --json and the records have them all


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError  # pragma: no cover


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    from datetime import datetime

    return datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _clock(ts: float) -> str:
    """HH:MM:SS today, else the date too (local time)."""
    from datetime import datetime

    when = datetime.fromtimestamp(ts).astimezone()
    if when.date() == datetime.now().astimezone().date():
        return when.strftime("%H:%M:%S")
    return when.strftime("%Y-%m-%d %H:%M:%S")


def _err(message: str) -> None:
    print(f"cxsmtp: {message}", file=sys.stderr)


def _existing_ledger(cli: CliContext) -> Callable[[], Ledger] | None:
    """The state dir's ledger if there is one (read-only commands create none)."""
    from carerix_smtp.limits.sqlite import Ledger

    path = cli.state_dir / Ledger.FILENAME
    if not path.exists():
        return None
    return lambda: Ledger(path)


# --- send --------------------------------------------------------------------------


def send(
    ctx: typer.Context,
    spool: SpoolArg,
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            "-s",
            help="Send every message through this server [default: the From's per-user "
            "choice, else the default server].",
            show_default=False,
        ),
    ] = None,
    max_messages: Annotated[
        int | None,
        typer.Option(
            "--max-messages",
            "-n",
            min=1,
            help="Send at most N messages in this run (on top of the limits).",
            show_default=False,
        ),
    ] = None,
    loop: Annotated[
        bool,
        typer.Option(
            "--loop",
            help="Batch after batch, sleeping until each window opens, until nothing is due.",
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print the plan (per server: messages, bytes, batches, when the last "
            "message goes at current limits); send nothing, change nothing.",
        ),
    ] = False,
    json_out: JsonOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print errors only.")] = False,
) -> None:
    """Send what the sending limits allow now from SPOOL, then exit: made for cron.

    Limits, per server (config: rate_per_hour, batch_max_messages, batch_max_bytes,
    batch_interval, batch_deadline): at most 1,200 messages an hour (6,000 with
    accepts_large_amounts) in any rolling hour; one batch every 5 minutes of at
    most 500 messages, the hour's share (rate/12) and 80 MB; each batch sized to
    finish within 1 minute and stopped at that deadline (the rest stays queued).
    Over all servers at most email-send-limit (10,000) messages in any 24 hours.
    They hold across runs and processes (a ledger in the state dir). A plain run
    sends at most one batch per server; when nothing is allowed yet it says when
    the next window opens and exits 0.

    --loop keeps going batch after batch until nothing is due (deferred messages
    not due yet end it; SIGTERM/SIGINT stop it cleanly, exit 75). --dry-run prints
    the plan and sends nothing.

    A second run while one holds the spool's lock exits at once (0). Exit codes:
    0 nothing wrong (also: nothing to do, limit reached, locked), 65 some messages
    or recipients failed permanently, 73 the rate ledger cannot be written or is
    damaged (cxsmtp doctor), 75 deferred / server unreachable / interrupted / disk
    full (the next run goes on), 77 authentication refused, 78 configuration or
    spool error. A file that cannot be written is named in the error (75 full
    disk or I/O error, 77 permission, 74 otherwise).

    Example (crontab):  */5 * * * *  cxsmtp send /var/spool/mailing
    """
    from carerix_smtp.limits.sqlite import Ledger
    from carerix_smtp.send.plan import plan_send
    from carerix_smtp.send.report import SendOptions
    from carerix_smtp.send.run import run_send
    from carerix_smtp.send.stopping import stop_on_signals

    cli = get_context(ctx)
    config = cli.load_config()
    options = SendOptions(server=server, max_messages=max_messages, dry_run=dry_run, loop=loop)
    if dry_run:
        plan = plan_send(spool, config, options, ledger=_existing_ledger(cli))
        _render_plan(plan, spool, json_out)
        return
    stop = threading.Event()

    def interruptible(seconds: float) -> None:
        stop.wait(seconds)

    def ledger() -> Ledger:
        return Ledger.in_state_dir(cli.state_dir, sleep=interruptible)

    show_bar = cli.stdout_is_terminal and not (quiet or json_out)
    with _progress(cli, show_bar) as progress, stop_on_signals(stop):
        summary = run_send(
            spool, config, options, ledger=ledger, sleep=interruptible, stop=stop, progress=progress
        )
    _render_summary(summary, spool, json_out=json_out, quiet=quiet, terminal=cli.stdout_is_terminal)
    raise typer.Exit(int(summary.exit_code))


class _progress:
    """A rich progress bar fed by the sender's ProgressEvents (terminal only)."""

    def __init__(self, cli: CliContext, enabled: bool) -> None:
        self.cli = cli
        self.enabled = enabled
        self.bar: Any = None
        self.task: Any = None
        self.offset = 0  # messages of the earlier passes (--loop)

    def __enter__(self) -> Any:
        if not self.enabled:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self.bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=self.cli.console,
            transient=True,
        )
        self.bar.start()
        return self.update

    def update(self, event: ProgressEvent) -> None:
        if event.kind == "start":
            if self.task is None:
                self.task = self.bar.add_task("sending", total=event.total)
            else:  # the next batch of --loop
                done = self.bar.tasks[0].completed
                self.offset = int(done)
                self.bar.update(self.task, total=done + event.total, description="sending")
        elif event.kind == "message" and self.task is not None:
            self.bar.update(
                self.task, completed=self.offset + event.done, description=event.name[:30]
            )
        elif event.kind == "wait" and self.task is not None and event.until is not None:
            self.bar.update(self.task, description=f"waiting until {_clock(event.until)}")

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


_LIMIT_WORDS = {
    "count": "batch full",
    "bytes": "batch full (bytes)",
    "deadline": "batch deadline reached",
}


def _limit_text(summary: RunSummary) -> str:
    """ "limit reached; next window at 12:35:00 (rate 1200 per 1 h reached)" or ""."""
    import math

    if summary.limited_by is None or not summary.remaining:
        return ""
    if summary.limited_by == "max-messages":
        return f"{summary.limit_reason} reached"
    words = _LIMIT_WORDS.get(summary.limited_by, "limit reached")
    when = summary.next_window_at
    if when is None or math.isinf(when):
        return f"{words}; no next window ({summary.limit_reason})"
    reason = f" ({summary.limit_reason})" if summary.limit_reason else ""
    return f"{words}; next window at {_clock(when)}{reason}"


def _render_summary(
    summary: RunSummary, spool: Path, *, json_out: bool, quiet: bool, terminal: bool
) -> None:
    if json_out:
        print_json(summary.to_json())
        return
    for error in summary.errors:
        _err(f"error: {error}")
    for failure in summary.failures[:SHOWN_FAILURES]:
        _err(f"failed: {failure}")
    if len(summary.failures) > SHOWN_FAILURES:
        more = len(summary.failures) - SHOWN_FAILURES
        _err(f"failed: … and {more} more (cxsmtp status {spool})")
    if quiet:
        return
    if summary.status == "locked":
        holder = f" (pid {summary.lock_holder})" if summary.lock_holder else ""
        typer.echo(f"cxsmtp: another cxsmtp send holds the lock on {spool}{holder}; nothing done")
        return
    if summary.status == "nothing-to-do":
        if terminal:  # under cron a line every 5 minutes would be a mail every 5 minutes
            typer.echo(f"cxsmtp: nothing to send in {spool}")
        return
    line = (
        f"cxsmtp: {summary.status}: sent {summary.sent}, deferred {summary.deferred}, "
        f"failed {summary.failed}, remaining {summary.remaining} "
        f"({_size(summary.bytes)} in {summary.elapsed_s:.1f} s)"
    )
    if summary.deadline_cut:
        line += "; the batch deadline cut a batch short"
    limit = _limit_text(summary)
    if limit:
        line += f"; {limit}"
    if summary.next_retry is not None:
        line += f"; next retry {_when(summary.next_retry)}"
    typer.echo(line)


SHOWN_BATCHES = 10


def _render_plan(plan: Plan, spool: Path, json_out: bool) -> None:
    import math

    if json_out:
        print_json({"dry_run": True, **plan.to_json()})
        return
    typer.echo(f"dry run: {plan.messages} message(s), {_size(plan.bytes)} due in {spool}")
    for entry in plan.servers.values():
        if entry.last_at is None:
            last = ""
        elif math.isinf(entry.last_at):
            last = f"; the rest never goes: {entry.blocked}"
        else:
            last = f"; last message at {_clock(entry.last_at)}"
        typer.echo(
            f"  {entry.server} ({entry.host}): {entry.messages} message(s), "
            f"{_size(entry.bytes)} in {len(entry.batches)} batch(es){last}"
        )
        for number, batch in enumerate(entry.batches[:SHOWN_BATCHES], 1):
            start = "now" if batch.start <= plan.at else f"at {_clock(batch.start)}"
            typer.echo(
                f"    batch {number} {start}: {batch.count} message(s), {_size(batch.bytes)}"
            )
        if len(entry.batches) > SHOWN_BATCHES:
            typer.echo(f"    … and {len(entry.batches) - SHOWN_BATCHES} more batch(es)")
    for name, reason in plan.invalid:
        typer.echo(f"  would fail: {name}: {reason}")
    if plan.waiting:
        typer.echo(f"  {plan.waiting} deferred, not due yet (next {_when(plan.next_retry)})")


# --- enqueue -----------------------------------------------------------------------


def enqueue(
    spool: SpoolArg,
    files: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[FILE…|-]",
            help="Messages to queue; '-' or none: one from stdin.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Queue RFC 5322 messages in SPOOL, adding Message-ID and Date when missing.

    Every message is checked first (sender, recipients, syntax); if one is not
    usable nothing is queued. Each is written to SPOOL/tmp/ and renamed into the
    queue, so a running `cxsmtp send` never sees half a file. Prints the queued names.

    Example:  cxsmtp enqueue /var/spool/mailing report.eml
    """
    from carerix_smtp.errors import InputError
    from carerix_smtp.spool.message import complete_headers
    from carerix_smtp.spool.spool import Spool

    target = Spool(spool)
    target.check(writable=True)
    prepared: list[tuple[str, bytes]] = []
    for item in files or ["-"]:
        if item == "-":
            raw, hint = sys.stdin.buffer.read(), ""
        else:
            try:
                raw, hint = Path(item).read_bytes(), item
            except OSError as exc:
                raise InputError(f"{item}: cannot read: {exc.strerror}") from None
        prepared.append((hint, complete_headers(raw, name=item if item != "-" else "stdin")))
    for hint, data in prepared:
        typer.echo(target.enqueue(data, hint=hint).name)


# --- status ------------------------------------------------------------------------


def status(ctx: typer.Context, spool: SpoolArg, json_out: JsonOpt = False) -> None:
    """Counts per state, bytes, oldest message, next retry, who did not get what,
    and per server the sending limits: messages and bytes sent in the last hour
    and 24 hours (the configured windows), what the current window still allows,
    when the next batch window opens, and an ETA for the queued messages at
    current limits. Changes nothing.

    Example:  cxsmtp status /var/spool/mailing --json
    """
    from carerix_smtp.errors import ConfigError
    from carerix_smtp.send.plan import limits_status
    from carerix_smtp.spool.spool import Spool

    cli = get_context(ctx)
    result = Spool(spool).status()
    servers: list[ServerLimits] | None = None
    problem = ""
    try:
        config = cli.load_config()
        if config.servers:  # no server yet: nothing to say about limits
            servers = limits_status(spool, config, ledger=_existing_ledger(cli))
    except ConfigError as exc:  # the spool part is still worth showing
        problem = str(exc)
    if json_out:
        data = result.to_json()
        data["servers"] = [item.to_json() for item in servers or []]
        if problem:
            data["limits_error"] = problem
        print_json(data)
        return
    _render_status(result)
    if problem:
        _err(f"limits not shown: {problem}")
    if servers:
        _render_limits(servers)


def _render_status(result: SpoolStatus) -> None:
    typer.echo(f"spool {result.path}")
    rows = [
        ("queued", result.queued, f"oldest {_when(result.queued.oldest)}"),
        (
            "deferred",
            result.deferred,
            f"{result.due_now} due now, next retry {_when(result.next_retry)}",
        ),
        ("sent", result.sent, ""),
        ("failed", result.failed, ""),
    ]
    for label, count, extra in rows:
        detail = f"{_size(count.bytes)}" + (f", {extra}" if count.count and extra else "")
        typer.echo(f"  {label:<9} {count.count:>7}  {detail}")
    typer.echo(f"  {'in flight':<9} {result.in_flight:>7}")
    running = f"yes (pid {result.running_pid})" if result.running_pid else "no"
    typer.echo(f"  send running: {running}")
    if result.failed_messages:
        typer.echo("failed messages:")
        for message in result.failed_messages:
            typer.echo(f"  {message.message}: {message.reason}")
    if result.failed_recipients:
        typer.echo("recipients not (yet) reached:")
        for rcpt in result.failed_recipients:
            typer.echo(f"  {rcpt.message}  {rcpt.recipient}  {rcpt.status}: {rcpt.reply}")
    if result.stale_tmp:
        typer.echo("files in tmp/ older than a day (a producer that never finished?):")
        for name in result.stale_tmp:
            typer.echo(f"  {name}")


def _render_limits(servers: list[ServerLimits]) -> None:
    import math
    import time

    from carerix_smtp.limits.rule import format_duration

    now = time.time()
    typer.echo("sending limits:")
    for item in servers:
        lim = item.limits
        hour, day = format_duration(lim.rate_window), format_duration(lim.send_limit_window)
        typer.echo(
            f"  {item.server} ({item.host}): {lim.rate_per_hour} per {hour}; a batch every "
            f"{format_duration(lim.batch_interval)} of at most {lim.batch_count_cap} message(s) "
            f"and {_size(lim.batch_max_bytes)}, within {format_duration(lim.batch_deadline)}"
        )
        typer.echo(
            f"    sent      last {hour}: {item.sent_hour} ({_size(item.bytes_hour)}); "
            f"last {day}: {item.sent_day} ({_size(item.bytes_day)}); all servers {day}: "
            f"{item.sent_day_all} of {lim.email_send_limit}"
        )
        when = item.next_window_at
        if when is None or when <= now:
            window = "next window: now"
        elif math.isinf(when):
            window = f"no next window ({item.reason})"
        else:
            window = f"next window at {_clock(when)} ({item.reason})"
        running = f" ({item.reserved} held by a running batch)" if item.reserved else ""
        typer.echo(f"    now       the windows allow {item.window_allows} more{running}; {window}")
        if item.queued:
            if item.eta is None:
                eta = "-"
            elif math.isinf(item.eta):
                eta = "never at current limits"
            else:
                eta = f"{_clock(item.eta)} ({item.batches_left} batch(es))"
            typer.echo(
                f"    queued    {item.queued} message(s), {_size(item.queued_bytes)}; ETA {eta}"
            )


# --- retry -------------------------------------------------------------------------


def retry(
    spool: SpoolArg,
    names: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[NAME…]", help="Messages in failed/ or deferred/.", show_default=False
        ),
    ] = None,
    everything: Annotated[
        bool, typer.Option("--all", help="Every failed and deferred message.")
    ] = False,
) -> None:
    """Put failed messages back in the queue and make deferred ones due now.

    Example:  cxsmtp retry /var/spool/mailing --all
    """
    from carerix_smtp.errors import UsageError
    from carerix_smtp.spool.layout import SpoolBusyError
    from carerix_smtp.spool.spool import Spool

    if bool(names) == everything:
        raise UsageError("give message NAMEs or --all (not both)")
    target = Spool(spool)
    with target.lock() as locked:
        if not locked:
            raise SpoolBusyError(f"a cxsmtp send is running on {spool}; retry when it has finished")
        moved = target.retry(names or [], everything=everything)
    for name in moved:
        typer.echo(f"due now: {name}" if name.startswith("deferred/") else f"queued again: {name}")
    if not moved:
        typer.echo("nothing to retry")


def register(app: typer.Typer) -> None:
    app.command("send")(send)
    app.command("enqueue")(enqueue)
    app.command("status")(status)
    app.command("retry")(retry)
