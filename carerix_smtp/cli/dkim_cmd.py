"""``cxsmtp dkim …``: the DKIM keys `send` signs with, one per sender domain."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from carerix_smtp.cli.context import get_context
from carerix_smtp.cli.render import print_fields, print_json

if TYPE_CHECKING:
    from carerix_smtp.config.dkim import DkimKey

dkim_app = typer.Typer(
    help="DKIM keys: `send` signs mail from a domain (or its subdomains) that has one.",
    no_args_is_help=True,
)

DomainArg = Annotated[str, typer.Argument(help="The sender domain, as in From: (example.com).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def add(
    ctx: typer.Context,
    domain: DomainArg,
    selector: Annotated[
        str, typer.Option("--selector", "-s", metavar="SEL", help="The DKIM selector (s=).")
    ],
    key: Annotated[
        Path | None,
        typer.Option("--key", metavar="PEM", help="Use this private key (mode 0600 or narrower)."),
    ] = None,
    generate: Annotated[bool, typer.Option("--generate", help="Make a new key.")] = False,
    type_: Annotated[
        str, typer.Option("--type", metavar="rsa|ed25519", help="With --generate.")
    ] = "rsa",
    bits: Annotated[
        int | None,
        typer.Option(
            "--bits", metavar="N", help="RSA key size with --generate.", show_default="2048"
        ),
    ] = None,
) -> None:
    """Store a DKIM private key for DOMAIN and print the TXT record to publish.

    The key is copied into the config directory (mode 0600); replacing a domain's
    key replaces its record too.

    Example: cxsmtp dkim add example.com --selector s1 --generate
    """
    from carerix_smtp.config.dkim_store import add_key, generate_pem, read_given_key
    from carerix_smtp.errors import UsageError

    if (key is None) == (not generate):
        raise UsageError("give either --key PEM or --generate")
    if key is not None and (bits is not None or type_ != "rsa"):
        raise UsageError("--type and --bits go with --generate, not --key")
    pem = read_given_key(key) if key is not None else generate_pem(type_.lower(), bits)
    config = get_context(ctx).load_config()
    added = add_key(config, domain, selector, pem, source=key)
    how = "generated a new" if added.generated else "stored the"
    typer.echo(f"{how} {added.key.algorithm} key for {added.key.domain} in {added.key.key_file}")
    if added.replaced is not None:
        typer.echo(
            f"it replaces selector {added.replaced.selector!r}: keep its record until mail signed with it has arrived"
        )
    typer.echo("publish this TXT record (then check it with: cxsmtp test NAME --from ADDRESS):")
    print_fields(_record(added.key, added.txt))


def list_(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """List the DKIM keys.

    Example: cxsmtp dkim list
    """
    config = get_context(ctx).load_config()
    rows = [_describe(key) for _, key in sorted(config.dkim.items())]
    if json_:
        print_json(rows)
        return
    if not rows:
        typer.echo(
            "no DKIM keys yet; add one with: cxsmtp dkim add DOMAIN --selector SEL --generate"
        )
    for row in rows:
        typer.echo(
            f"{row['domain']:<28} {row['selector']:<12} {row['algorithm']:<15} {row['key_file']}"
        )


def show(ctx: typer.Context, domain: DomainArg, json_: JsonOpt = False) -> None:
    """Show DOMAIN's key and the TXT record to publish for it.

    Example: cxsmtp dkim show example.com
    """
    from carerix_smtp.config.dkim import public_txt
    from carerix_smtp.config.dkim_store import find_key

    key = find_key(get_context(ctx).load_config(), domain)
    data = {**_describe(key), **_record(key, public_txt(key))}
    if json_:
        print_json(data)
    else:
        print_fields(data)


def remove(ctx: typer.Context, domain: DomainArg) -> None:
    """Remove DOMAIN's key: its mail is sent unsigned from then on.

    Example: cxsmtp dkim remove example.com
    """
    from carerix_smtp.config.dkim_store import remove_key

    key = remove_key(get_context(ctx).load_config(), domain)
    typer.echo(f"removed the DKIM key for {key.domain} (selector {key.selector})")
    typer.echo(f"its TXT record at {key.record_name} may go once mail signed with it has arrived")


def _describe(key: DkimKey) -> dict[str, Any]:
    return {
        "domain": key.domain,
        "selector": key.selector,
        "algorithm": key.algorithm,
        "key_file": str(key.key_file),
        "headers": ", ".join(key.headers),
    }


def _record(key: DkimKey, txt: str) -> dict[str, Any]:
    from carerix_smtp.config.dkim import txt_strings, zone_line

    return {
        "name": key.record_name,
        "value": txt,
        "strings": " ".join(f'"{part}"' for part in txt_strings(txt)),
        "zone": zone_line(key, txt),
    }


def register(app: typer.Typer) -> None:
    dkim_app.command("add")(add)
    dkim_app.command("list")(list_)
    dkim_app.command("show")(show)
    dkim_app.command("remove")(remove)
    app.add_typer(dkim_app, name="dkim")
