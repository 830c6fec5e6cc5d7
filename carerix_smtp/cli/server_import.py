"""``cxsmtp server import msmtprc|postfix``: entries from another mailer's configuration."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from carerix_smtp.cli.context import get_context
from carerix_smtp.cli.errors import warn

if TYPE_CHECKING:
    from carerix_smtp.config.imports.plan import ImportPlan, ImportResult

import_app = typer.Typer(
    help="Import server entries from an msmtprc or a Postfix relay configuration.",
    no_args_is_help=True,
)

DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Show what would be imported; write nothing.")
]
ReplaceOpt = Annotated[
    bool,
    typer.Option("--replace", help="Overwrite entries (and sender choices) of the same name."),
]
PlainAuthOpt = Annotated[
    bool,
    typer.Option(
        "--allow-plaintext-auth",
        help="Import an account that authenticates without TLS (the password travels unencrypted).",
    ),
]
PasswordStoreOpt = Annotated[
    str | None,
    typer.Option(
        "--password-store",
        metavar="keyring|file",
        help="Where passwords found in the files go: keyring, or file (credentials.toml, "
        "0600, unencrypted). Default: the keyring when one is usable, else file.",
        show_default=False,
    ),
]


def msmtprc(
    ctx: typer.Context,
    file: Annotated[
        Path | None,
        typer.Argument(
            metavar="[FILE]",
            help="Default: ~/.msmtprc, then $XDG_CONFIG_HOME/msmtp/config.",
            show_default=False,
        ),
    ] = None,
    dry_run: DryRunOpt = False,
    replace: ReplaceOpt = False,
    allow_insecure: Annotated[
        bool,
        typer.Option(
            "--allow-insecure",
            help="Import accounts with tls_certcheck off (certificates not verified).",
        ),
    ] = False,
    allow_plaintext_auth: PlainAuthOpt = False,
    password_store: PasswordStoreOpt = None,
) -> None:
    """Import the accounts of an msmtprc as server entries.

    `account default : NAME` becomes the default server, `from` the sender's server;
    `password` goes to the password store (never the config), `passwordeval` becomes
    password_command.

    Example: cxsmtp server import msmtprc ~/.msmtprc --dry-run
    """
    from carerix_smtp.config.imports.msmtprc import find_msmtprc, read_msmtprc

    cli = get_context(ctx)
    path = file if file is not None else find_msmtprc(cli.env)
    plan = read_msmtprc(
        path,
        allow_insecure=allow_insecure,
        allow_plaintext_auth=allow_plaintext_auth,
        env=cli.env,
    )
    _apply(ctx, plan, dry_run, replace, password_store)


def postfix(
    ctx: typer.Context,
    config_dir: Annotated[
        Path,
        typer.Option("--config-dir", metavar="DIR", help="Postfix's configuration directory."),
    ] = Path("/etc/postfix"),
    dry_run: DryRunOpt = False,
    replace: ReplaceOpt = False,
    allow_plaintext_auth: PlainAuthOpt = False,
    password_store: PasswordStoreOpt = None,
) -> None:
    """Import Postfix's relayhost, fallback relays and SASL passwords as server entries.

    relayhost becomes the default server, smtp_fallback_relay its fallbacks,
    sender_dependent_relayhost_maps the senders' servers; passwords from the source
    file of smtp_sasl_password_maps go to the password store.

    Example: cxsmtp server import postfix --config-dir ~/postfix-copy --dry-run
    """
    from carerix_smtp.config.imports.postfix import read_postfix

    plan = read_postfix(config_dir, allow_plaintext_auth=allow_plaintext_auth)
    _apply(ctx, plan, dry_run, replace, password_store)


def _apply(
    ctx: typer.Context, plan: ImportPlan, dry_run: bool, replace: bool, store: str | None
) -> None:
    from carerix_smtp.config.imports.plan import apply_plan

    cli = get_context(ctx)
    config = cli.load_config()
    result = apply_plan(config, plan, replace=replace, dry_run=dry_run, env=cli.env, store=store)
    _render(result)


def _render(result: ImportResult) -> None:
    """One line per entry, sender and default; then each setting not carried over."""
    from carerix_smtp.config.passwords import unencrypted_warning

    dry = result.dry_run
    for server in result.servers:
        verb = ("would replace" if dry else "replaced") if server.replaced else None
        verb = verb or ("would add" if dry else "added")
        choice, where = server.password_store, ""
        if choice is not None:
            place = "the keyring" if choice.store == "keyring" else str(result.credentials)
            where = f" (password {'to' if dry else 'stored in'} {place})"
        typer.echo(f"{verb} server {server.name!r}: {server.host}{where}")
        if not dry and choice is not None and choice.store == "file":
            warn(unencrypted_warning(server.name, result.credentials, choice))
    for address, name in sorted(result.users.items()):
        typer.echo(f"{address} {'would send' if dry else 'sends'} through {name!r}")
    if result.default is not None:
        typer.echo(f"{result.default!r} {'would be' if dry else 'is'} the default server")
    if result.default_kept is not None:
        typer.echo(f"the default server stays {result.default_kept!r}")
    for note in result.notes:
        typer.echo(f"note: {note}")
    if dry:
        typer.echo("dry run: nothing written")


def register(server_app: typer.Typer) -> None:
    import_app.command("msmtprc")(msmtprc)
    import_app.command("postfix")(postfix)
    server_app.add_typer(import_app, name="import")
