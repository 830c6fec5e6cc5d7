"""``cxsmtp settings …``: the seed's Maintenance > Settings (emailSendLimit)."""

from __future__ import annotations

from typing import Annotated

import typer

from carerix_smtp.cli.context import get_context
from carerix_smtp.cli.render import print_fields, print_json

settings_app = typer.Typer(help="Show and change global settings.", no_args_is_help=True)


def show(ctx: typer.Context, json_: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show the global settings."""
    from carerix_smtp.config.servers import describe_settings

    data = describe_settings(get_context(ctx).load_config())
    if json_:
        print_json(data)
    else:
        print_fields(data)


def set_(
    ctx: typer.Context,
    key: Annotated[
        str,
        typer.Argument(help="email-send-limit, send-limit-window, default-server or nameservers."),
    ],
    value: Annotated[str, typer.Argument(help="The new value.")],
) -> None:
    """Change a setting.

    Example: cxsmtp settings set email-send-limit 20000   (seed default: 10,000 per 24 hours)
    """
    from carerix_smtp.config.servers import set_setting

    set_setting(get_context(ctx).load_config(), key, value)
    typer.echo(f"{key} = {value}")


def register(app: typer.Typer) -> None:
    settings_app.command("show")(show)
    settings_app.command("set")(set_)
    app.add_typer(settings_app, name="settings")
