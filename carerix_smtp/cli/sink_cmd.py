"""``cxsmtp sink``: the local capture server (SPEC §4)."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from carerix_smtp.sink import DEFAULT_LISTEN

if TYPE_CHECKING:
    from carerix_smtp.sink.server import Sink
    from carerix_smtp.sink.store import Received


class TlsChoice(str, Enum):
    implicit = "implicit"
    starttls = "starttls"


ListenOpt = Annotated[
    str,
    typer.Option(
        "--listen",
        metavar="HOST:PORT",
        help="HOST:PORT or [IPV6]:PORT; port 0 picks a free one.",
    ),
]
OutOpt = Annotated[
    Path, typer.Option("--out", metavar="DIR", help="Directory for the .eml files (created).")
]
TlsOpt = Annotated[
    TlsChoice | None,
    typer.Option(
        "--tls",
        metavar="implicit|starttls",
        help="implicit (TLS from the first byte) or starttls.",
        show_default=False,
    ),
]
CertOpt = Annotated[
    Path | None,
    typer.Option(
        "--cert", metavar="PATH", help="PEM certificate [default: generated].", show_default=False
    ),
]
KeyOpt = Annotated[
    Path | None,
    typer.Option("--key", metavar="PATH", help="PEM key for --cert.", show_default=False),
]
CaOutOpt = Annotated[
    Path | None,
    typer.Option(
        "--ca-out",
        metavar="PATH",
        help="Write the generated CA certificate here for clients to trust.",
        show_default=False,
    ),
]
AuthOpt = Annotated[
    str | None,
    typer.Option(
        "--auth",
        metavar="USER:PASSWORD",
        help="USER:PASSWORD accepted by AUTH PLAIN/LOGIN (offered after TLS).",
        show_default=False,
    ),
]
OAuthTokenOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--oauth-token",
        metavar="TOKEN",
        help="Offer XOAUTH2 and OAUTHBEARER and accept this access token (repeatable); a "
        "wrong one is refused as Gmail does (334 JSON status 401, then 535).",
        show_default=False,
    ),
]
OAuthUserOpt = Annotated[
    str | None,
    typer.Option(
        "--oauth-user",
        metavar="USER",
        help="Accept --oauth-token only for this user (default: any user).",
        show_default=False,
    ),
]
AuthRequiredOpt = Annotated[
    bool, typer.Option("--auth-required", help="Refuse MAIL before AUTH (530 5.7.0).")
]
AuthWithoutTlsOpt = Annotated[
    bool, typer.Option("--auth-without-tls", help="Also offer AUTH on an unencrypted session.")
]
LatencyOpt = Annotated[
    float, typer.Option("--latency", metavar="MS", help="Delay every reply by MS milliseconds.")
]
SizeOpt = Annotated[
    int | None,
    typer.Option(
        "--size",
        metavar="N",
        help="Advertise SIZE N and refuse bigger messages.",
        show_default=False,
    ),
]
MaxConnectionsOpt = Annotated[
    int | None,
    typer.Option(
        "--max-connections",
        metavar="N",
        help="421 4.7.0 to connections beyond N.",
        show_default=False,
    ),
]
FailOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--fail",
        metavar="RULE",
        help="Scripted error reply, repeatable: PHASE:CODE[:N][:times=K][:pattern=GLOB], "
        "PHASE connect|ehlo|mail|rcpt|data|eod, N = messages accepted first.",
        show_default=False,
    ),
]
DropOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--drop",
        metavar="PHASE[:N]",
        help="Close the connection without a reply (repeatable).",
        show_default=False,
    ),
]
HangOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--hang",
        metavar="PHASE[:N]",
        help="Never reply (repeatable; client timeout tests).",
        show_default=False,
    ),
]
AllowRemoteOpt = Annotated[
    bool, typer.Option("--allow-remote", help="Allow a non-loopback listen address.")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No line per message.")]
PortFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--port-file",
        metavar="PATH",
        help="Write the port listened on to this file once listening.",
        show_default=False,
    ),
]


def sink(
    listen: ListenOpt = DEFAULT_LISTEN,
    out: OutOpt = Path("sink-mail"),
    tls: TlsOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    ca_out: CaOutOpt = None,
    auth: AuthOpt = None,
    oauth_token: OAuthTokenOpt = None,
    oauth_user: OAuthUserOpt = None,
    auth_required: AuthRequiredOpt = False,
    auth_without_tls: AuthWithoutTlsOpt = False,
    latency: LatencyOpt = 0.0,
    size: SizeOpt = None,
    max_connections: MaxConnectionsOpt = None,
    fail: FailOpt = None,
    drop: DropOpt = None,
    hang: HangOpt = None,
    allow_remote: AllowRemoteOpt = False,
    quiet: QuietOpt = False,
    port_file: PortFileOpt = None,
) -> None:
    """Run a local SMTP server that stores every message as an .eml file.

    Nothing is delivered: each message goes to OUT as a file that starts with
    X-Cxsmtp-Envelope-From/-To lines, followed by the message exactly as
    received.  Stop it with Ctrl-C or SIGTERM.

    Example, STARTTLS with a generated certificate, AUTH, 50 ms per reply and
    one refused domain:

    \b
        cxsmtp sink --listen 127.0.0.1:2525 --out ./sink-mail \\
            --tls starttls --ca-out ca.pem --auth demo:demo --latency 50 \\
            --fail 'rcpt:550:pattern=*@bad.example'

    Example, OAuth2 (XOAUTH2/OAUTHBEARER) with one good token:

    \b
        cxsmtp sink --tls starttls --ca-out ca.pem --oauth-token tok123 \\
            --oauth-user demo@example.com
    """
    from carerix_smtp.sink.config import config_from_options
    from carerix_smtp.sink.run import serve_until_signal

    config = config_from_options(
        listen,
        auth=auth,
        fail=fail or [],
        drop=drop or [],
        hang=hang or [],
        out_dir=out,
        allow_remote=allow_remote,
        tls=tls.value if tls is not None else None,
        cert_file=cert,
        key_file=key,
        ca_out=ca_out,
        oauth_tokens=tuple(oauth_token or ()),
        oauth_user=oauth_user,
        auth_required=auth_required,
        auth_require_tls=not auth_without_tls,
        latency_ms=latency,
        size=size,
        max_connections=max_connections,
        keep_data=False,  # the files are the record; keep memory flat on long runs
    )
    stats = serve_until_signal(
        config,
        port_file=port_file,
        on_message=None if quiet else _print_message,
        on_listening=lambda running: _print_banner(running, out),
    )
    plural = "" if stats.messages == 1 else "s"
    typer.echo(f"stopped: {stats.messages} message{plural} received")


def _print_banner(running: Sink, out: Path) -> None:
    from carerix_smtp.sink.run import config_summary

    summary = config_summary(running)
    typer.echo(
        f"listening on {running.address_for_display}, storing in {out}"
        + (f" ({summary})" if summary else "")
    )
    if running.ca_file is not None:
        typer.echo(f"CA certificate for clients: {running.ca_file}")


def _print_message(message: Received) -> None:
    stamp = time.strftime("%H:%M:%S", time.localtime(message.time))
    sender = message.mail_from or "<>"
    typer.echo(f"{stamp} {sender} -> {', '.join(message.rcpt_tos)} ({message.size} bytes)")


def register(app: typer.Typer) -> None:
    app.command("sink")(sink)
