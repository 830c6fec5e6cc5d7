"""``cxsmtp ledger init`` / ``ledger show``: the rate ledger, shared by several hosts
on PostgreSQL or the state dir's SQLite file (issue 16)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer

from carerix_smtp.cli.context import get_context
from carerix_smtp.cli.render import print_json

if TYPE_CHECKING:
    from carerix_smtp.limits.accounts import LedgerReport

ledger_app = typer.Typer(
    help="The rate ledger: set up a shared one on PostgreSQL, show usage per account.",
    no_args_is_help=True,
)

# `server add/edit --account NAME` (cli/server.py): the ledger's key of the entry's limits.
AccountOpt = Annotated[
    str | None,
    typer.Option(
        "--account",
        metavar="NAME",
        help="The provider account whose limits this entry shares with other entries "
        "and hosts that name it (the rate ledger's key) [default: the entry's name].",
        show_default=False,
    ),
]


def init(
    ctx: typer.Context,
    url: Annotated[
        str,
        typer.Argument(
            metavar="URL",
            help="postgresql://USER@HOST[:PORT]/DBNAME, without a password (PGPASSWORD, "
            "PGPASSFILE or the setting ledger-password-command gives it).",
        ),
    ],
) -> None:
    """Create (or upgrade) the shared ledger's tables in a PostgreSQL database.

    Safe to run again and from several hosts; a database whose schema is newer than
    this cxsmtp is refused.  Then point each host at it: cxsmtp settings set ledger URL.

    Example: cxsmtp ledger init postgresql://cxsmtp@db.example/cxsmtp
    """
    from carerix_smtp.config.ledger_url import mask_url
    from carerix_smtp.limits.open import init_shared_ledger

    version = init_shared_ledger(url, get_context(ctx).load_config().settings)
    typer.echo(f"ledger ready: {mask_url(url.strip())} (schema version {version})")


def show(
    ctx: typer.Context,
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show which ledger this host uses and, per account, what its windows hold now.

    Example: cxsmtp ledger show --json
    """
    from carerix_smtp.limits.accounts import ledger_report

    cli = get_context(ctx)
    config = cli.load_config()
    report = ledger_report(config.settings, config.servers.values(), cli.state_dir, cli.env)
    if json_:
        print_json(report.to_json())
    else:
        _render(report)


def _render(report: LedgerReport) -> None:
    typer.echo(f"ledger: {report.ledger} (from {report.source})")
    if not report.exists:
        typer.echo("no ledger file yet: nothing sent")
        return
    if not report.accounts:
        typer.echo("no server configured: no account to show")
        return
    head = ("account", "servers", "hour", "day (all)", "running", "next batch")
    rows = [head]
    for row in report.accounts:
        lim = row.limits
        nxt = row.next_batch_at
        rows.append(
            (
                row.account,
                ",".join(row.servers),
                f"{row.sent_hour}/{lim.rate_per_hour}",
                f"{row.sent_day} ({row.sent_day_all})/{lim.email_send_limit}",
                str(row.reserved),
                _when(nxt),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for r in rows:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())


def _when(at: float) -> str:
    if at == float("inf"):
        return "never"
    if at <= time.time():
        return "now"
    return time.strftime("%H:%M:%S", time.localtime(at))


def register(app: typer.Typer) -> None:
    ledger_app.command("init")(init)
    ledger_app.command("show")(show)
    app.add_typer(ledger_app, name="ledger")
