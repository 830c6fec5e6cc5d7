"""``cxsmtp``: the Typer application and its global options."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from carerix_smtp import __version__
from carerix_smtp.cli.errors import CxsmtpGroup, OneLineFormatter, guard_threads, report_unexpected

# Command groups, each a module with ``register(app)``.  Heavy modules are
# imported inside the commands, so ``cxsmtp --help`` starts fast.
COMMAND_MODULES = (
    "server",
    "settings",
    "test_cmd",
    "spool_cmds",
    "sink_cmd",
    "doctor_cmd",
    "queue_cmds",
    "sendmail_cmd",
    "dkim_cmd",
    "ledger_cmd",
)

app = typer.Typer(
    cls=CxsmtpGroup,
    name="cxsmtp",
    help=(
        "Keep SMTP server entries, find out why a server does not work, and bulk-send "
        "a spool of .eml files from cron within the provider's limits.  The options "
        "below may also follow the command (cxsmtp send SPOOL --debug)."
    ),
    no_args_is_help=True,
    add_completion=True,  # --install-completion, --show-completion (cli/completion.py)
    # Locals hold passwords: never show them in a traceback.
    pretty_exceptions_show_locals=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cxsmtp {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            metavar="PATH",
            envvar="CXSMTP_CONFIG",
            help="Configuration file [default: the user config dir's cxsmtp/config.toml].",
            show_default=False,
        ),
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            "--state-dir",
            metavar="PATH",
            envvar="CXSMTP_STATE_DIR",
            help="Directory for state that survives runs (the rate ledger).",
            show_default=False,
        ),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show debug logs and tracebacks.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show info logs.")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    from carerix_smtp.cli.context import CliContext
    from carerix_smtp.config.file import resolve_config_path, resolve_state_dir

    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    handler = logging.StreamHandler()
    line = "cxsmtp: %(levelname)s: %(message)s"
    handler.setFormatter(logging.Formatter(line) if debug else OneLineFormatter(line))
    logging.basicConfig(level=level, handlers=[handler])
    ctx.obj = CliContext(
        config_path=resolve_config_path(config),
        state_dir=resolve_state_dir(state_dir),
        debug=debug,
    )


for _name in COMMAND_MODULES:
    importlib.import_module(f"carerix_smtp.cli.{_name}").register(app)


# Root options that may come before the command: with a value, and flags.
_ROOT_VALUES = frozenset({"--config", "--state-dir"})
_ROOT_FLAGS = frozenset({"--debug", "--verbose", "-v"})


def _command_word(args: list[str]) -> str | None:
    """The command ``args`` run when nothing but known root options come before it
    (no --help, --version or completion of the root); else None."""
    i = 0
    while i < len(args):
        name, eq, _ = args[i].partition("=")
        if name in _ROOT_VALUES:
            i += 1 if eq else 2
        elif args[i] in _ROOT_FLAGS:
            i += 1
        else:
            return None if args[i].startswith("-") else args[i]
    return None


@contextlib.contextmanager
def _only_the_command(args: list[str]) -> Iterator[None]:
    """Let Typer build only the command (or group) that runs: building all 16 costs
    ~15 ms of an empty cron run (issue 12).  Anything else (the root's help, an
    unknown word, shell completion) gets the whole tree, as always."""
    word = _command_word(args)
    commands, groups = app.registered_commands, app.registered_groups
    mine = [c for c in commands if c.name == word]
    their = [g for g in groups if g.name == word]
    if word is None or not (mine or their) or "_CXSMTP_COMPLETE" in os.environ:
        yield
        return
    app.registered_commands, app.registered_groups = mine, their
    try:
        yield
    finally:
        app.registered_commands, app.registered_groups = commands, groups


def main() -> None:
    """The ``cxsmtp`` script.  Errors inside a command are reported by CxsmtpGroup;
    this catches what fails around it (parsing, closing the context), so that no
    traceback reaches cron without ``--debug`` either."""
    debug = "--debug" in sys.argv[1:]
    guard_threads(debug)
    try:
        with _only_the_command(sys.argv[1:]):
            app(prog_name="cxsmtp")
    except Exception as exc:
        sys.exit(report_unexpected(exc, debug))
