"""The options and arguments the ``cxsmtp queue`` commands share, and the spool they
act on (cli/queue_cmds.py: list, show; cli/queue_changes.py: the rest)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from carerix_smtp.cli.context import get_context

SpoolOpt = Annotated[
    Path | None,
    typer.Argument(
        metavar="[SPOOL]",
        help="Spool directory [default: the 'spool' setting, or CXSMTP_SPOOL].",
        show_default=False,
    ),
]
SpoolOption = Annotated[
    Path | None,
    typer.Option(
        "--spool",
        metavar="SPOOL",
        help="Spool directory [default: the 'spool' setting, or CXSMTP_SPOOL].",
        show_default=False,
    ),
]
IdsArg = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="ID...", help="Queue IDs (file names without .eml).", show_default=False
    ),
]
AllOpt = Annotated[bool, typer.Option("--all", help="Every message this command applies to.")]
YesOpt = Annotated[
    bool, typer.Option("--yes", "-y", help="Do it even when more than one message would go.")
]


def resolve(ctx: typer.Context, given: Path | None) -> Path:
    """SPOOL as given, else the configured default spool (config/spool_path.py)."""
    if given is not None:
        return given
    from carerix_smtp.config.spool_path import resolve_spool

    cli = get_context(ctx)
    return resolve_spool(None, cli.load_config(), cli.env)
