"""``cxsmtp doctor``: the health check, and the repair of a damaged rate ledger."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from carerix_smtp.cli.context import get_context
from carerix_smtp.cli.render import print_json


def doctor(
    ctx: typer.Context,
    spools: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="SPOOL",
            help="Spools to check; their delivery logs rebuild a damaged ledger.",
            show_default=False,
        ),
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print a list of objects.")] = False,
    empty: Annotated[
        bool,
        typer.Option(
            "--empty",
            help="With a damaged ledger and no SPOOL: rebuild it with no history "
            "(the limits start from zero).",
        ),
    ] = False,
) -> None:
    """Check the configuration, each server's password source, the state dir, the rate
    ledger and each SPOOL; move a damaged ledger aside and rebuild it from the
    spools' delivery logs.  Passwords are obtained but never printed.

    Example: cxsmtp doctor /var/spool/mailing
    """
    from carerix_smtp.doctor.run import DoctorOptions, run_doctor

    cli = get_context(ctx)
    options = DoctorOptions(cli.config_path, cli.state_dir, tuple(spools or ()), empty, cli.env)
    report = run_doctor(options)
    if json_:
        print_json(report.to_json())
    else:
        for check in report.checks:
            typer.echo(f"{check.status:<4}  {check.name}: {check.detail}")
    raise typer.Exit(int(report.exit_code))


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
