"""``cxsmtp server …``: the seed's "Tables > Other SMTP server" and "My account"."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from carerix_smtp.cli.completion import complete_server_name
from carerix_smtp.cli.context import get_context
from carerix_smtp.cli.errors import warn
from carerix_smtp.cli.ledger_cmd import AccountOpt
from carerix_smtp.cli.render import format_value, print_fields, print_json
from carerix_smtp.cli.server_fallback import FallbackOpt, NoFallbackOpt, fallback_fields
from carerix_smtp.cli.server_presets import (
    HeloNameOpt,
    PresetHostArg,
    PresetOpt,
    preset_prompts,
    preset_username,
    report_preset,
    with_preset,
)

if TYPE_CHECKING:
    from carerix_smtp.config.file import Config, ServerEntry
    from carerix_smtp.config.servers import Edited

server_app = typer.Typer(
    help="Add, show, change, select and remove SMTP server entries.",
    no_args_is_help=True,
)

LoginOpt = Annotated[
    str | None,
    typer.Option(
        "--login",
        metavar='"USER PASSWORD"',
        help="Username and password in one value, split at the first space. Visible in the "
        "process list: prefer --username with --password-stdin.",
        show_default=False,
    ),
]
UsernameOpt = Annotated[
    str | None, typer.Option("--username", "-u", metavar="USER", help="Login name.")
]
PasswordStdinOpt = Annotated[
    bool,
    typer.Option("--password-stdin", help="Read the password from the first line of stdin."),
]
LargeOpt = Annotated[
    bool | None,
    typer.Option(
        "--accepts-large-amounts/--no-accepts-large-amounts",
        help="The account may send 6,000 emails an hour instead of 1,200.",
        show_default=False,
    ),
]
SecurityOpt = Annotated[
    str | None,
    typer.Option(
        "--security",
        metavar="MODE",
        help="auto (by port: 465 SSL, 587 STARTTLS), ssl, starttls or none.",
        show_default=False,
    ),
]
CaFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--ca-file", metavar="PATH", help="Trust this PEM CA bundle instead of the system store."
    ),
]
NoVerifyOpt = Annotated[
    bool | None,
    typer.Option(
        "--insecure-skip-verify/--verify",
        help="DANGEROUS: do not verify the server certificate (warned on every connection).",
        show_default=False,
    ),
]
PlainAuthOpt = Annotated[
    bool | None,
    typer.Option(
        "--allow-plaintext-auth/--no-allow-plaintext-auth",
        help="With --security none only: allow sending the password unencrypted.",
        show_default=False,
    ),
]
PasswordCommandOpt = Annotated[
    str | None,
    typer.Option(
        "--password-command",
        metavar="COMMAND",
        help="Command whose first output line is the password (run without a shell).",
    ),
]
OAuthTokenCommandOpt = Annotated[
    str | None,
    typer.Option(
        "--oauth-token-command",
        metavar="COMMAND",
        help="Sign in with OAuth2 (OAUTHBEARER, else XOAUTH2): a command whose first output "
        "line is a current access token, e.g. oama access USER (run without a shell).",
        show_default=False,
    ),
]
DefaultOpt = Annotated[bool, typer.Option("--default", help="Make this the default server.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="Change a limit or timeout, e.g. --set batch_deadline=30 (repeatable); "
        "'cxsmtp server show NAME' lists the keys.",
        show_default=False,
    ),
]
UnsetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--unset",
        metavar="KEY",
        help="Remove an optional key or return a limit to its default, e.g. --unset username "
        "(repeatable); unsetting username also removes the stored password.",
        show_default=False,
    ),
]
ForceOpt = Annotated[
    bool,
    typer.Option("--force", help="Remove the default server even if no default is left."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
PasswordStoreOpt = Annotated[
    str | None,
    typer.Option(
        "--password-store",
        metavar="keyring|file",
        help="Where to store the password: keyring, or file (credentials.toml beside the "
        "config, mode 0600, unencrypted). Default: the keyring when one is usable, else file.",
        show_default=False,
    ),
]


def _read_password(
    login: str | None,
    username: str | None,
    password_stdin: bool,
    password_command: str | None,
    prompt_allowed: bool,
) -> tuple[str | None, str | None]:
    """(username, password) from the options; the password is never echoed."""
    from carerix_smtp.config.servers import split_login
    from carerix_smtp.errors import UsageError

    password = None
    if login is not None:
        if username is not None or password_stdin:
            raise UsageError("--login cannot be combined with --username or --password-stdin")
        username, password = split_login(login)
        warn(
            "the password given with --login is visible in the process list; "
            "prefer --username USER --password-stdin"
        )
    elif password_stdin:
        if username is None:
            raise UsageError("--password-stdin needs --username")
        password = _stdin_password()
        if not password:
            raise UsageError("--password-stdin: the first line of standard input is empty")
    elif (
        username is not None and prompt_allowed and password_command is None and sys.stdin.isatty()
    ):
        password = typer.prompt(f"Password for {username}", hide_input=True) or None
    return username, password


def _stdin_password() -> str:
    """The first line of stdin; refused on a terminal, where it would wait and echo."""
    from carerix_smtp.errors import UsageError

    if sys.stdin.isatty():
        raise UsageError("stdin is a terminal; pipe the password in or leave out --password-stdin")
    return sys.stdin.readline().rstrip("\r\n")


def _password_wanted(
    login: str | None, username: str | None, password_stdin: bool, password_command: str | None
) -> bool:
    """Will ``add`` read a password (so the store must be chosen before any prompt)?"""
    if password_stdin and sys.stdin.isatty():
        _stdin_password()  # refused before anything else is asked
    prompt = username is not None and password_command is None and sys.stdin.isatty()
    return login is not None or password_stdin or prompt


def _report_store(name: str, choice: Any, credentials: Path) -> str:
    """Warn once when the password went into the plain file; the words for the message."""
    from carerix_smtp.config.passwords import unencrypted_warning

    if choice.store == "file":
        warn(unencrypted_warning(name, credentials, choice))
        return f"password stored in {credentials}"
    return "password stored in the keyring"


def _fields(
    username: str | None,
    large: bool | None,
    security: str | None,
    ca_file: Path | None,
    no_verify: bool | None,
    plain_auth: bool | None,
    password_command: str | None,
    assignments: list[str] | None,
) -> dict[str, Any]:
    from carerix_smtp.config.servers import parse_assignments
    from carerix_smtp.config.tls import parse_security

    fields: dict[str, Any] = {}
    if username is not None:
        fields["username"] = username
    if large is not None:
        fields["accepts_large_amounts"] = large
    if security is not None:
        try:
            fields["security"] = parse_security(security)
        except Exception as exc:  # ConfigError from the parser; this is a command-line value
            from carerix_smtp.errors import UsageError

            raise UsageError(f"--security: {exc}") from None
    if ca_file is not None:
        fields["ca_file"] = str(ca_file.resolve())  # checked by the core (exit 66)
    if no_verify is not None:
        fields["tls_verify"] = not no_verify
        if no_verify:
            warn("certificate verification is turned OFF for this server")
    if plain_auth is not None:
        fields["allow_plaintext_auth"] = plain_auth
    if password_command is not None:
        fields["password_command"] = password_command
    fields.update(parse_assignments(assignments or []))
    return fields


def add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A short name for the entry, e.g. xs4all.")],
    host: PresetHostArg = None,
    login: LoginOpt = None,
    username: UsernameOpt = None,
    password_stdin: PasswordStdinOpt = False,
    accepts_large_amounts: LargeOpt = None,
    security: SecurityOpt = None,
    ca_file: CaFileOpt = None,
    insecure_skip_verify: NoVerifyOpt = None,
    allow_plaintext_auth: PlainAuthOpt = None,
    password_command: PasswordCommandOpt = None,
    oauth_token_command: OAuthTokenCommandOpt = None,
    default: DefaultOpt = False,
    set_: SetOpt = None,
    password_store: PasswordStoreOpt = None,
    preset: PresetOpt = None,
    helo_name: HeloNameOpt = None,
    fallback: FallbackOpt = None,
    account: AccountOpt = None,
) -> None:
    """Add a server entry.

    HOST forms: smtp.example.com (MX lookup, port 25), [smtp.example.com] (no MX),
    [smtp.example.com]:465 (SSL), [smtp.example.com]:587 (STARTTLS),
    [192.0.2.10]:587, [2001:db8::1]:587.

    Example: cxsmtp server add xs4all "[smtp.xs4all.nl]:587" --username jan --password-stdin

    Example: cxsmtp server add mail --preset sendgrid --password-stdin

    Example: cxsmtp server add gmail --preset gmail --username me@gmail.com
    --oauth-token-command "oama access me@gmail.com"
    """
    from carerix_smtp.config.credentials import credentials_path
    from carerix_smtp.config.oauth import check_token_options
    from carerix_smtp.config.passwords import choose_store
    from carerix_smtp.config.servers import add_server

    cli = get_context(ctx)
    config = cli.load_config()
    default_before = config.settings.default_server
    username, ask = preset_username(preset, login, username), preset_prompts(preset)
    check_token_options(
        oauth_token_command, login=login is not None, password_stdin=password_stdin,
        password_command=password_command is not None,
    )  # fmt: skip
    no_prompt = password_command or oauth_token_command  # a command gives the secret
    choice = None
    if _password_wanted(login, username if ask else None, password_stdin, no_prompt):
        choice = choose_store(name, password_store, cli.env)  # before any prompt
    user, password = _read_password(login, username, password_stdin, no_prompt, ask)
    fields = _fields(
        user, accepts_large_amounts, security, ca_file, insecure_skip_verify,
        allow_plaintext_auth, password_command, set_,
    )  # fmt: skip
    if oauth_token_command is not None:
        fields["oauth_token_command"] = oauth_token_command
    fields |= fallback_fields(fallback, False)
    if account is not None:
        fields["account"] = account
    host, fields = with_preset(preset, host, fields, helo_name)
    entry = add_server(
        config, name, host, password=password, make_default=default, env=cli.env, store=choice,
        **fields,
    )  # fmt: skip
    stored = ""
    if password and choice:
        stored = f" ({_report_store(name, choice, credentials_path(config.path))})"
    _report_added(config, entry, default_before, stored)
    report_preset(config, entry)


def _report_added(
    config: Config, entry: ServerEntry, default_before: str | None, stored: str
) -> None:
    """``added server NAME: HOST (the default server) (password stored …)``, and a note
    when an earlier lone server became the saved default."""
    default = config.settings.default_server
    default_note = " (the default server)" if default == entry.name else ""
    typer.echo(f"added server {entry.name!r}: {entry.host}{default_note}{stored}")
    if default_before is None and default not in (None, entry.name):
        typer.echo(f"server {default!r} stays the default (now saved)")


def edit(
    ctx: typer.Context,
    name: Annotated[
        str, typer.Argument(help="The entry to change.", autocompletion=complete_server_name)
    ],
    host: Annotated[str | None, typer.Option("--host", metavar="HOST", help="New HOST.")] = None,
    login: LoginOpt = None,
    username: UsernameOpt = None,
    password_stdin: PasswordStdinOpt = False,
    accepts_large_amounts: LargeOpt = None,
    security: SecurityOpt = None,
    ca_file: CaFileOpt = None,
    insecure_skip_verify: NoVerifyOpt = None,
    allow_plaintext_auth: PlainAuthOpt = None,
    password_command: PasswordCommandOpt = None,
    oauth_token_command: OAuthTokenCommandOpt = None,
    default: DefaultOpt = False,
    set_: SetOpt = None,
    unset: UnsetOpt = None,
    helo_name: HeloNameOpt = None,
    fallback: FallbackOpt = None,
    no_fallback: NoFallbackOpt = False,
    account: AccountOpt = None,
) -> None:
    """Change a server entry; options not given stay as they are.

    Example: cxsmtp server edit xs4all --accepts-large-amounts --set batch_deadline=45

    Example: cxsmtp server edit xs4all --fallback relay2 --fallback relay3
    """
    from carerix_smtp.config.oauth import check_token_options
    from carerix_smtp.config.servers import edit_server

    cli = get_context(ctx)
    config = cli.load_config()
    check_token_options(
        oauth_token_command, login=login is not None, password_stdin=password_stdin,
        password_command=password_command is not None,
    )  # fmt: skip
    user, password = _read_password(login, username, password_stdin, password_command, False)
    fields = _fields(
        user,
        accepts_large_amounts,
        security,
        ca_file,
        insecure_skip_verify,
        allow_plaintext_auth,
        password_command,
        set_,
    )
    if host is not None:
        fields["host"] = host
    if helo_name is not None:
        fields["helo_name"] = helo_name
    if account is not None:
        fields["account"] = account
    if oauth_token_command is not None:
        fields["oauth_token_command"] = oauth_token_command
    fields |= fallback_fields(fallback, no_fallback)
    edited = edit_server(
        config, name, password=password, make_default=default, env=cli.env, unset=unset or (),
        **fields,
    )  # fmt: skip
    if password is not None:  # edit_server chose the same store: warn if it is the file
        from carerix_smtp.config.credentials import credentials_path
        from carerix_smtp.config.passwords import choose_store

        _report_store(name, choose_store(name, None, cli.env), credentials_path(config.path))
    typer.echo(f"changed server {edited.entry.name!r}{_unset_note(edited)}")


def _unset_note(edited: Edited) -> str:
    if not edited.unset:
        return ""
    note = f"; unset {', '.join(edited.unset)}"
    if edited.password_removed:
        note += " and removed its stored password"
    return note


def remove(
    ctx: typer.Context,
    name: Annotated[
        str, typer.Argument(help="The entry to remove.", autocompletion=complete_server_name)
    ],
    force: ForceOpt = False,
) -> None:
    """Remove a server entry, its per-user choices, its place in other entries'
    fallback lists and its stored password.

    Removing the default server makes the only server left the default; with several
    left it is refused unless --force (then `cxsmtp send` stops with exit 78 until
    'cxsmtp server use NAME' chooses one).
    """
    from carerix_smtp.config.servers import remove_server

    cli = get_context(ctx)
    config = cli.load_config()
    done = remove_server(config, name, cli.env, force=force)
    extra = " and its stored password" if done.password_removed else ""
    typer.echo(f"removed server {name!r}{extra}")
    if done.new_default:
        typer.echo(f"server {done.new_default!r} is now the default server")
    if done.default_cleared:
        warn(
            "there is no default server now: 'cxsmtp send' stops with exit 78 and leaves "
            "mail queued until you choose one with 'cxsmtp server use NAME'"
        )
    if done.dropped_users:
        default = config.settings.default_server
        where = f"goes to the default server {default!r}" if default else "has no server"
        who = ", ".join(done.dropped_users)
        warn(f"dropped the per-sender choice of {who}: their mail {where}")
    for other in done.dropped_from_fallbacks:
        warn(f"removed {name!r} from the fallback relays of server {other!r}")


def password(
    ctx: typer.Context,
    name: Annotated[
        str,
        typer.Argument(
            help="The entry whose password to set.", autocompletion=complete_server_name
        ),
    ],
    password_stdin: PasswordStdinOpt = False,
    password_store: PasswordStoreOpt = None,
) -> None:
    """Set or replace the password of a server: in the keyring, or in credentials.toml
    beside the config when no keyring is usable (or --password-store file).

    Example: printf '%s\\n' "$SMTP_PASSWORD" | cxsmtp server password xs4all --password-stdin
    """
    from carerix_smtp.config.servers import password_target, set_password
    from carerix_smtp.errors import UsageError

    cli = get_context(ctx)
    config = cli.load_config()
    if password_stdin and sys.stdin.isatty():
        _stdin_password()  # refused before anything else is asked
    choice = password_target(config, name, password_store, cli.env)  # before any prompt
    if password_stdin:
        secret = _stdin_password()
    elif sys.stdin.isatty():
        secret = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        raise UsageError("no terminal to ask for the password: use --password-stdin")
    if not secret:
        raise UsageError("the password is empty")
    stored = set_password(config, name, secret, cli.env, choice)
    if stored.warning:
        warn(stored.warning)
    typer.echo(f"password for {name!r} stored in {stored.where}")


def use(
    ctx: typer.Context,
    name: Annotated[
        str, typer.Argument(help="The entry to select.", autocompletion=complete_server_name)
    ],
    user: Annotated[
        str | None,
        typer.Option(
            "--user", metavar="ADDRESS", help="Only for messages whose From is this address."
        ),
    ] = None,
) -> None:
    """Select the default server, or the server for one sender address.

    Example: cxsmtp server use xs4all --user alice@example.com
    """
    from carerix_smtp.config.servers import use_server

    cli = get_context(ctx)
    use_server(cli.load_config(), name, user)
    if user:
        typer.echo(f"{user} now sends through {name!r}")
    else:
        typer.echo(f"{name!r} is now the default server")


def list_(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """List the server entries."""
    from carerix_smtp.config.servers import describe_server

    cli = get_context(ctx)
    config = cli.load_config()
    rows = [describe_server(config, e, cli.env) for _, e in sorted(config.servers.items())]
    if json_:
        print_json(rows)
        return
    if not rows:
        typer.echo("no servers yet; add one with: cxsmtp server add NAME HOST")
        return
    for row in rows:
        mark = "*" if row["default"] else " "
        typer.echo(
            f"{mark} {row['name']:<16} {row['host']:<32} {row['tls_mode']:<20} "
            f"user={format_value(row['username'])} password={row['password_source']} "
            f"{row['rate_per_hour']}/h"
        )


def show(
    ctx: typer.Context,
    name: Annotated[
        str, typer.Argument(help="The entry to show.", autocompletion=complete_server_name)
    ],
    json_: JsonOpt = False,
) -> None:
    """Show a server entry with every effective value, defaults included."""
    from carerix_smtp.config.servers import describe_server

    cli = get_context(ctx)
    config = cli.load_config()
    data = describe_server(config, config.server(name), cli.env)
    if json_:
        print_json(data)
    else:
        print_fields(data)


def register(app: typer.Typer) -> None:
    server_app.command("add")(add)
    server_app.command("list")(list_)
    server_app.command("show")(show)
    server_app.command("edit")(edit)
    server_app.command("remove")(remove)
    server_app.command("use")(use)
    server_app.command("password")(password)
    from carerix_smtp.cli import server_import

    server_import.register(server_app)
    app.add_typer(server_app, name="server")
