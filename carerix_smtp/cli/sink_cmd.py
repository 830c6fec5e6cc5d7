"""``cxsmtp sink``: the local capture server (SPEC §4)."""

from __future__ import annotations

import signal
import threading
import time
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from carerix_smtp.sink.sink import Received, Sink


class TlsChoice(str, Enum):
    implicit = "implicit"
    starttls = "starttls"


def sink(
    listen: Annotated[
        str,
        typer.Option(
            "--listen",
            metavar="HOST:PORT",
            help="HOST:PORT or [IPV6]:PORT; port 0 picks a free one.",
        ),
    ] = "127.0.0.1:2525",
    out: Annotated[
        Path, typer.Option("--out", metavar="DIR", help="Directory for the .eml files (created).")
    ] = Path("sink-mail"),
    tls: Annotated[
        TlsChoice | None,
        typer.Option(
            "--tls", help="implicit (TLS from the first byte) or starttls.", show_default=False
        ),
    ] = None,
    cert: Annotated[
        Path | None,
        typer.Option("--cert", help="PEM certificate [default: generated].", show_default=False),
    ] = None,
    key: Annotated[
        Path | None, typer.Option("--key", help="PEM key for --cert.", show_default=False)
    ] = None,
    ca_out: Annotated[
        Path | None,
        typer.Option(
            "--ca-out",
            metavar="PATH",
            help="Write the generated CA certificate here for clients to trust.",
            show_default=False,
        ),
    ] = None,
    auth: Annotated[
        str | None,
        typer.Option(
            "--auth",
            metavar="USER:PASSWORD",
            help="USER:PASSWORD accepted by AUTH PLAIN/LOGIN (offered after TLS).",
            show_default=False,
        ),
    ] = None,
    auth_required: Annotated[
        bool, typer.Option("--auth-required", help="Refuse MAIL before AUTH (530 5.7.0).")
    ] = False,
    auth_without_tls: Annotated[
        bool, typer.Option("--auth-without-tls", help="Also offer AUTH on an unencrypted session.")
    ] = False,
    latency: Annotated[
        float, typer.Option("--latency", metavar="MS", help="Delay every reply by MS milliseconds.")
    ] = 0.0,
    size: Annotated[
        int | None,
        typer.Option(
            "--size",
            metavar="N",
            help="Advertise SIZE N and refuse bigger messages.",
            show_default=False,
        ),
    ] = None,
    max_connections: Annotated[
        int | None,
        typer.Option(
            "--max-connections",
            metavar="N",
            help="421 4.7.0 to connections beyond N.",
            show_default=False,
        ),
    ] = None,
    fail: Annotated[
        list[str] | None,
        typer.Option(
            "--fail",
            metavar="RULE",
            help="Scripted error reply, repeatable: PHASE:CODE[:N][:times=K][:pattern=GLOB], "
            "PHASE connect|ehlo|mail|rcpt|data|eod, N = messages accepted first.",
            show_default=False,
        ),
    ] = None,
    drop: Annotated[
        list[str] | None,
        typer.Option(
            "--drop",
            metavar="PHASE[:N]",
            help="Close the connection without a reply (repeatable).",
            show_default=False,
        ),
    ] = None,
    hang: Annotated[
        list[str] | None,
        typer.Option(
            "--hang",
            metavar="PHASE[:N]",
            help="Never reply (repeatable; client timeout tests).",
            show_default=False,
        ),
    ] = None,
    allow_remote: Annotated[
        bool, typer.Option("--allow-remote", help="Allow a non-loopback listen address.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No line per message.")] = False,
    port_file: Annotated[
        Path | None,
        typer.Option(
            "--port-file",
            metavar="PATH",
            help="Write the port listened on to this file once listening.",
            show_default=False,
        ),
    ] = None,
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
    """
    from carerix_smtp.sink import sink as core

    host, port = core.parse_listen(listen)
    config = core.SinkConfig(
        host=host,
        port=port,
        out_dir=out,
        allow_remote=allow_remote,
        tls=tls.value if tls is not None else None,
        cert_file=cert,
        key_file=key,
        ca_out=ca_out,
        auth=core.parse_auth(auth) if auth is not None else None,
        auth_required=auth_required,
        auth_require_tls=not auth_without_tls,
        latency_ms=latency,
        size=size,
        max_connections=max_connections,
        fail=[core.parse_fail_rule(rule) for rule in fail or []],
        drop=[core.parse_phase_rule(rule) for rule in drop or []],
        hang=[core.parse_phase_rule(rule) for rule in hang or []],
        keep_data=False,  # the files are the record; keep memory flat on long runs
    )

    def on_listening(running: Sink) -> None:
        if port_file is not None:
            core.write_port_file(port_file, running.port)
        summary = core.config_summary(running)
        typer.echo(
            f"listening on {running.address_for_display}, storing in {out}"
            + (f" ({summary})" if summary else "")
        )
        if running.ca_file is not None:
            typer.echo(f"CA certificate for clients: {running.ca_file}")

    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        stats = core.run_sink(
            config, stop, on_message=None if quiet else _print_message, on_listening=on_listening
        )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    plural = "" if stats.messages == 1 else "s"
    typer.echo(f"stopped: {stats.messages} message{plural} received")


def _print_message(message: Received) -> None:
    stamp = time.strftime("%H:%M:%S", time.localtime(message.time))
    sender = message.mail_from or "<>"
    typer.echo(f"{stamp} {sender} -> {', '.join(message.rcpt_tos)} ({message.size} bytes)")


def register(app: typer.Typer) -> None:
    app.command("sink")(sink)
