"""``cxsmtp send``, ``enqueue``, ``status``, ``retry``: the spool (SPEC §3)."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from carerix_smtp.cli.completion import complete_server_name
from carerix_smtp.cli.context import CliContext, get_context
from carerix_smtp.cli.render import print_json
from carerix_smtp.cli.status_view import clock as _clock
from carerix_smtp.cli.status_view import size as _size
from carerix_smtp.cli.status_view import when as _when

if TYPE_CHECKING:
    from carerix_smtp.cli.progress import SendProgress
    from carerix_smtp.config.file import Config
    from carerix_smtp.limits.ledger import LedgerStore
    from carerix_smtp.send.plan import Plan
    from carerix_smtp.send.report import RunSummary

SpoolArg = Annotated[
    Path | None,
    typer.Argument(
        metavar="SPOOL",
        help="Spool directory: *.eml files in it are queued [default: CXSMTP_SPOOL, else "
        "the setting spool (cxsmtp settings set spool DIR)].",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON object instead of text.")]
SHOWN_FAILURES = 20  # per run, sorted; --json and the records have them all


def _err(message: str) -> None:
    print(f"cxsmtp: {message}", file=sys.stderr)


def _spool(cli: CliContext, given: Path | None, config: Config | None = None) -> Path:
    """SPOOL, else CXSMTP_SPOOL, else the setting ``spool`` (config/spool_path.py)."""
    from carerix_smtp.config.spool_path import resolve_spool

    if given is not None:
        return given
    return resolve_spool(None, config or cli.load_config(), cli.env)


def _names_a_message(word: Path, suffix: str = ".eml") -> bool:
    """True when the first positional word is not the SPOOL but a message (enqueue's
    FILE, retry's NAME): then the default spool is meant.  A directory is a SPOOL."""
    text = str(word)
    return text == "-" or (text.endswith(suffix) and not word.is_dir())


def _existing_ledger(cli: CliContext) -> Callable[[], LedgerStore | None]:
    """Opens the configured ledger when asked: None when it is the SQLite file and
    there is none yet (read-only commands create none); a shared ledger that cannot
    be reached is exit 75 (limits/open.py)."""

    def opened() -> LedgerStore | None:
        from carerix_smtp.limits.open import open_ledger

        settings = cli.load_config().settings
        return open_ledger(settings, cli.state_dir, cli.env, existing_only=True)

    return opened


# --- send --------------------------------------------------------------------------


def send(
    ctx: typer.Context,
    spool: SpoolArg = None,
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            "-s",
            metavar="NAME",
            autocompletion=complete_server_name,
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
            metavar="N",
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
    damaged (cxsmtp doctor), 75 a server could not be used at all (unreachable,
    TLS, greeting refused) / interrupted / disk full (the next run goes on), 77
    authentication refused, 78 configuration or spool error. Messages a server
    deferred (4xx, e.g. a provider's rate limit) are retried later: exit 0. A file that cannot be written is named in the error (75 full
    disk or I/O error, 77 permission, 74 otherwise).

    Example (crontab):  */5 * * * *  cxsmtp send /var/spool/mailing
    """
    # Imported here, and only what this run needs: cron starts ``cxsmtp send`` every
    # few minutes, mostly on an empty spool (issue 12: start-up within 2x ``import
    # typer, rich``); the ledger, the plan and the SMTP client come when used.
    from carerix_smtp.cli.cron_output import stamp_lines
    from carerix_smtp.send.report import SendOptions
    from carerix_smtp.send.run import run_send
    from carerix_smtp.send.stopping import stop_on_signals

    stamp_lines(ctx, stdout=not json_out)  # non-terminals only: a log file says when
    cli = get_context(ctx)
    config = cli.load_config()
    spool = _spool(cli, spool, config)
    options = SendOptions(server=server, max_messages=max_messages, dry_run=dry_run, loop=loop)
    if dry_run:
        from carerix_smtp.send.plan import plan_send

        plan = plan_send(spool, config, options, ledger=_existing_ledger(cli))
        _render_plan(plan, spool, json_out)
        return
    stop = threading.Event()

    def interruptible(seconds: float) -> None:
        stop.wait(seconds)

    def ledger() -> LedgerStore:
        from carerix_smtp.limits.open import open_ledger

        opened = open_ledger(config.settings, cli.state_dir, cli.env, sleep=interruptible)
        assert opened is not None  # existing_only=False always opens one
        return opened

    show_bar = cli.stdout_is_terminal and not (quiet or json_out)
    with _progress(cli, show_bar) as progress, stop_on_signals(stop):
        summary = run_send(
            spool,
            config,
            options,
            ledger=ledger,
            sleep=interruptible,
            stop=stop,
            progress=progress,
            history_dir=cli.state_dir,
            quiet=quiet,
        )
    render_summary(summary, spool, json_out=json_out, quiet=quiet, terminal=cli.stdout_is_terminal)
    raise typer.Exit(int(summary.exit_code))


def _progress(cli: CliContext, enabled: bool) -> SendProgress | contextlib.nullcontext[None]:
    """The progress bar on a terminal (progress.py); off a terminal nothing (rich is
    not even imported: cron's runs start faster)."""
    if not enabled:
        return contextlib.nullcontext(None)
    from carerix_smtp.cli.progress import SendProgress

    return SendProgress(cli.console, enabled)


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


def _left_text(summary: RunSummary) -> str:
    """ "left: 3 queued, 2 deferred (next retry ...)": deferred mail is not hidden."""
    text = f"left: {summary.left_queued} queued, {summary.left_deferred} deferred"
    if summary.left_deferred and summary.next_retry is not None:
        text += f" (next retry {_when(summary.next_retry)})"
    return text


def render_summary(
    summary: RunSummary, spool: Path, *, json_out: bool, quiet: bool, terminal: bool
) -> None:
    from carerix_smtp.cli.cron_output import render_deferring, render_run_errors

    if json_out:
        print_json(summary.to_json())
        return
    render_run_errors(summary)
    for failure in sorted(summary.failures)[:SHOWN_FAILURES]:
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
        f"failed {summary.failed}"
    )
    if summary.recipients_failed:
        line += f", recipients refused {summary.recipients_failed}"
    line += f" ({_size(summary.bytes)} in {summary.elapsed_s:.1f} s); {_left_text(summary)}"
    if summary.deadline_cut:
        line += "; the batch deadline cut a batch short"
    limit = _limit_text(summary)
    if limit:
        line += f"; {limit}"
    typer.echo(line)
    for note in summary.fallback_notes():  # issue 14: fallback relays
        typer.echo(f"cxsmtp: {note}")
    render_deferring(summary)


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
    ctx: typer.Context,
    spool: SpoolArg = None,
    files: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="FILE",
            help="Messages to queue; '-' or none: one from stdin.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Queue RFC 5322 messages in SPOOL, adding Message-ID and Date when missing.

    Every message is checked first (sender, recipients, syntax); if one is not
    usable nothing is queued. Each is written to SPOOL/tmp/ and renamed into the
    queue, so a running `cxsmtp send` never sees half a file. Prints the queued names.

    Without SPOOL (the first word is '-' or a *.eml file) the default spool is used.

    Example:  cxsmtp enqueue /var/spool/mailing report.eml
    """
    from carerix_smtp.errors import InputError
    from carerix_smtp.spool.message import complete_headers
    from carerix_smtp.spool.spool import Spool

    if spool is not None and _names_a_message(spool):
        files, spool = [str(spool), *(files or [])], None
    target = Spool(_spool(get_context(ctx), spool))
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


def status(ctx: typer.Context, spool: SpoolArg = None, json_out: JsonOpt = False) -> None:
    """Counts per state (queued, deferred with the next retry, sent, failed), who
    did not get what (each once), the last run and each server's last error, and
    per server the sending limits: messages and bytes sent in the last hour and 24
    hours (the configured windows), what the current window still allows, when
    the next batch window opens, and an ETA for the queued messages at current
    limits.  On a terminal: tables, colours and a chart of the messages sent per
    hour over the last 24 hours.  Changes nothing.

    Example:  cxsmtp status /var/spool/mailing --json
    """
    from carerix_smtp.cli.status_view import render_plain, render_rich
    from carerix_smtp.send.status import collect_status

    cli = get_context(ctx)
    spool = _spool(cli, spool)
    report = collect_status(spool, cli.load_config, cli.state_dir, ledger=_existing_ledger(cli))
    if json_out:
        print_json(report.to_json())
        return
    if cli.stdout_is_terminal:
        render_rich(report, cli.console)
    else:
        render_plain(report)
    if report.limits_error:
        _err(f"limits not shown: {report.limits_error}")


# --- retry -------------------------------------------------------------------------


def retry(
    ctx: typer.Context,
    spool: SpoolArg = None,
    names: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="NAME", help="Messages in failed/ or deferred/.", show_default=False
        ),
    ] = None,
    everything: Annotated[
        bool, typer.Option("--all", help="Every failed and deferred message.")
    ] = False,
) -> None:
    """Put failed messages back in the queue and make deferred ones due now.

    Without SPOOL (the first word is a NAME ending in .eml) the default spool is used.

    Example:  cxsmtp retry /var/spool/mailing --all
    """
    from carerix_smtp.errors import UsageError
    from carerix_smtp.spool.layout import SpoolBusyError
    from carerix_smtp.spool.spool import Spool

    if spool is not None and _names_a_message(spool):
        names, spool = [str(spool), *(names or [])], None
    spool = _spool(get_context(ctx), spool)
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
