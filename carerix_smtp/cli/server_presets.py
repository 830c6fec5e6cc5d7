"""``server add --preset`` and ``--helo-name``: the options and the notes printed
after an entry is made from a preset (the table is config/presets.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from carerix_smtp.config.file import Config, ServerEntry

PresetHostArg = Annotated[
    str | None,
    typer.Argument(help='Server, e.g. "[smtp.xs4all.nl]:587" (optional with --preset).'),
]
PresetOpt = Annotated[
    str | None,
    typer.Option(
        "--preset",
        metavar="PROVIDER",
        help="Fill host, security, username convention and published limits for a "
        "provider: gmail, google-workspace, microsoft365, amazon-ses:REGION, sendgrid, "
        "mailgun, mailgun:eu, postmark. Options given with it win.",
        show_default=False,
    ),
]
HeloNameOpt = Annotated[
    str | None,
    typer.Option(
        "--helo-name",
        metavar="NAME",
        help="The name cxsmtp gives itself in EHLO: a host name or [192.0.2.10]. "
        "Default: 'cxsmtp settings set helo-name', else this host's name.",
        show_default=False,
    ),
]


def preset_username(preset: str | None, login: str | None, username: str | None) -> str | None:
    """The username to read a password for: --username, else the preset's fixed one
    (SendGrid's ``apikey``), so ``--password-stdin`` works without ``--username``."""
    if preset is None or login is not None or username is not None:
        return username
    from carerix_smtp.config.presets import find_preset

    return find_preset(preset).preset.username


def preset_prompts(preset: str | None) -> bool:
    """Ask for a password on a terminal?  Not for an OAuth2 provider (Gmail, Microsoft
    365): its token comes from --oauth-token-command; an app password can still be set
    with ``server password`` or ``--password-stdin``."""
    if preset is None:
        return True
    from carerix_smtp.config.presets import find_preset

    return not find_preset(preset).preset.oauth2


def with_preset(
    preset: str | None, host: str | None, fields: dict[str, Any], helo_name: str | None
) -> tuple[str, dict[str, Any]]:
    """HOST and the entry's fields: the preset's, under the options given."""
    from carerix_smtp.config.presets import apply_preset

    if helo_name is not None:
        fields["helo_name"] = helo_name
    return apply_preset(preset, host, fields)


def report_preset(config: Config, entry: ServerEntry) -> None:
    """After ``server add --preset``: how to sign in, and the limits (what was applied,
    what could not be)."""
    if entry.preset is None:
        return
    from carerix_smtp.config.presets import preset_notes

    limit = config.settings.email_send_limit
    for note in preset_notes(entry.preset, entry.name, entry.effective_rate_per_hour, limit):
        typer.echo(f"note: {note}")
