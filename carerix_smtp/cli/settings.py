"""``cxsmtp settings …``: the global settings (the 24-hour send limit, the default
server, nameservers) and the per-sender server choices."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from carerix_smtp.cli.context import get_context
from carerix_smtp.cli.render import print_fields, print_json

settings_app = typer.Typer(help="Show and change global settings.", no_args_is_help=True)


def show(
    ctx: typer.Context,
    json_: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print one JSON object: config_file, email_send_limit, send_limit_window, "
            "default_server, nameservers, spool, sendmail_mode, retain_sent (seconds), "
            "ledger (a URL's password masked), ledger_password_command, "
            "servers and users (sender address -> server).",
        ),
    ] = False,
) -> None:
    """Show the global settings and which server each sender address uses."""
    from carerix_smtp.config.servers import describe_settings

    data = describe_settings(get_context(ctx).load_config())
    if json_:
        print_json(data)
        return
    users: dict[str, str] = data.pop("users")
    print_fields(data)
    _print_users(users)


def _print_users(users: dict[str, Any]) -> None:
    """The per-sender choices as a two-column table (``server use NAME --user ADDRESS``)."""
    if not users:
        typer.echo("users: none (every sender uses the default server)")
        return
    typer.echo("users:")
    width = max(len("sender"), *(len(address) for address in users))
    typer.echo(f"  {'sender'.ljust(width)}  server")
    for address, server in users.items():
        typer.echo(f"  {address.ljust(width)}  {server}")


def set_(
    ctx: typer.Context,
    key: Annotated[
        str,
        typer.Argument(
            metavar="KEY",
            help="email-send-limit, send-limit-window, default-server, nameservers, spool "
            "(the default spool directory), sendmail-mode (queue or send), retain-sent "
            "(how long sent messages are kept: 30d, 12h, 90m, 45s, seconds; 0 = not kept) "
            'helo-name (the EHLO name of entries without their own; "" for automatic), '
            "ledger (sqlite, or a PostgreSQL URL without password that several hosts share) "
            'or ledger-password-command (prints that database\'s password; "" removes it).',
        ),
    ],
    value: Annotated[str, typer.Argument(metavar="VALUE", help="The new value.")],
) -> None:
    """Change a setting.

    Example: cxsmtp settings set email-send-limit 20000   (default: 10,000 per 24 hours)
    """
    from carerix_smtp.config.servers import set_setting

    set_setting(get_context(ctx).load_config(), key, value)
    typer.echo(f"{key} = {value}")


def register(app: typer.Typer) -> None:
    settings_app.command("show")(show)
    settings_app.command("set")(set_)
    app.add_typer(settings_app, name="settings")
