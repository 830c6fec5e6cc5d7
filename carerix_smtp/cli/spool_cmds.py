"""``cxsmtp send``, ``enqueue``, ``status``, ``retry``: the spool (SPEC §3)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from carerix_smtp.cli.context import CliContext, get_context
from carerix_smtp.cli.render import print_json

if TYPE_CHECKING:
    from carerix_smtp.sender import Plan, ProgressEvent, RunSummary
    from carerix_smtp.spool import SpoolStatus

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


def _err(message: str) -> None:
    print(f"cxsmtp: {message}", file=sys.stderr)


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
            help="Send at most N messages in this run.",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Print the plan (messages, bytes, servers); send nothing."),
    ] = False,
    json_out: JsonOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print errors only.")] = False,
) -> None:
    """Send what is due in SPOOL now, then exit: made for cron.

    A second run while one holds the spool's lock exits at once (0). Exit codes:
    0 nothing wrong (also: nothing to do, limit reached, locked), 65 some messages
    or recipients failed permanently, 75 deferred / server unreachable /
    interrupted, 77 authentication refused, 78 configuration or spool error.

    Example (crontab):  */5 * * * *  cxsmtp send /var/spool/mailing
    """
    from carerix_smtp.sender import SendOptions, plan_send, run_send, stop_on_signals

    cli = get_context(ctx)
    config = cli.load_config()
    options = SendOptions(server=server, max_messages=max_messages, dry_run=dry_run)
    if dry_run:
        _render_plan(plan_send(spool, config, options), spool, json_out)
        return
    stop = threading.Event()
    show_bar = cli.stdout_is_terminal and not (quiet or json_out)
    with _progress(cli, show_bar) as progress, stop_on_signals(stop):
        summary = run_send(spool, config, options, stop=stop, progress=progress)
    _render_summary(summary, spool, json_out=json_out, quiet=quiet, terminal=cli.stdout_is_terminal)
    raise typer.Exit(int(summary.exit_code))


class _progress:
    """A rich progress bar fed by the sender's ProgressEvents (terminal only)."""

    def __init__(self, cli: CliContext, enabled: bool) -> None:
        self.cli = cli
        self.enabled = enabled
        self.bar: Any = None
        self.task: Any = None

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
            self.task = self.bar.add_task("sending", total=event.total)
        elif event.kind == "message" and self.task is not None:
            self.bar.update(self.task, completed=event.done, description=event.name[:30])

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


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
    if summary.next_retry is not None:
        line += f"; next retry {_when(summary.next_retry)}"
    typer.echo(line)


def _render_plan(plan: Plan, spool: Path, json_out: bool) -> None:
    if json_out:
        print_json({"dry_run": True, **plan.to_json()})
        return
    typer.echo(f"dry run: {plan.messages} message(s), {_size(plan.bytes)} due in {spool}")
    for entry in plan.servers.values():
        typer.echo(
            f"  {entry.messages} message(s), {_size(entry.bytes)} through {entry.server} "
            f"({entry.host})"
        )
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
    from carerix_smtp.message import complete_headers
    from carerix_smtp.spool import Spool

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


def status(spool: SpoolArg, json_out: JsonOpt = False) -> None:
    """Counts per state, bytes, oldest message, next retry, and who did not get what.

    Example:  cxsmtp status /var/spool/mailing --json
    """
    from carerix_smtp.spool import Spool

    result = Spool(spool).status()
    if json_out:
        print_json(result.to_json())
        return
    _render_status(result)


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
    from carerix_smtp.spool import Spool, SpoolBusyError

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
