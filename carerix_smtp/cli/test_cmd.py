"""``cxsmtp test``: connectivity diagnosis, phase by phase (SPEC §2)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from carerix_smtp.cli.completion import complete_server_name
from carerix_smtp.cli.context import get_context

if TYPE_CHECKING:
    from collections.abc import Callable

    from rich.console import Console

    from carerix_smtp.cli.context import CliContext
    from carerix_smtp.probe.probe import ProbeRequest
    from carerix_smtp.probe.report import ProbeReport

SYMBOLS = {"ok": "✔", "failed": "✘", "skipped": "–"}


def test(
    ctx: typer.Context,
    name: Annotated[
        str | None,
        typer.Argument(
            help="Server entry to test [default: the default server].",
            show_default=False,
            autocompletion=complete_server_name,
        ),
    ] = None,
    to: Annotated[
        str | None,
        typer.Option("--to", help="Also send a small test message to ADDRESS.", metavar="ADDRESS"),
    ] = None,
    mail_from: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Sender address: used for --to; its domain's SPF (against the server's "
            "address), DKIM (the published key vs the configured one) and DMARC (policy "
            "and alignment) are checked.",
            metavar="ADDRESS",
        ),
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", help="Seconds to wait in each phase.", min=0.1, metavar="SECONDS"
        ),
    ] = 30.0,
    wait_until_ready: Annotated[
        str | None,
        typer.Option(
            "--wait-until-ready",
            help="Retry the whole test with backoff until it passes or DURATION (90s, 15m, "
            "1h) has gone by — for accounts that are activated late.",
            metavar="DURATION",
        ),
    ] = None,
    spool: Annotated[
        Path | None,
        typer.Option(
            "--spool",
            help="Compare the largest *.eml in DIR with the server's SIZE limit.",
            metavar="DIR",
            exists=True,
            file_okay=False,
        ),
    ] = None,
    all_: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Also test the entry's fallback relays, in order. Exit 0 only when every "
            "one passed, else the exit code of the first that failed.",
        ),
    ] = False,
) -> None:
    """Test a server: resolve, connect, greeting, EHLO, TLS, AUTH (and with --to a
    test message), reporting time and findings per phase and a hint on failure.

    Example: cxsmtp test xs4all --to me@example.com

    Example: cxsmtp test xs4all --all

    Exit codes: 0 passed; 68 host name not found; 69 unreachable (refused, timed
    out, no greeting, connection lost); 76 TLS failed (handshake, certificate,
    STARTTLS missing or refused); 77 authentication refused; 65 refused by the
    server (5xx to MAIL/RCPT/DATA or greeting), message above SIZE, SPF fail, DKIM record missing/wrong, or DMARC fail
    under p=quarantine/reject;
    75 temporary refusal (4xx); 78 configuration (unknown server, no password,
    unencrypted password refused, DKIM key unusable); 66 --ca-file unreadable.
    """
    from carerix_smtp.probe.probe import ProbeRequest, probe_server

    cli = get_context(ctx)
    request = ProbeRequest(
        name=name,
        to=to,
        mail_from=mail_from,
        timeout=timeout,
        wait_until_ready=wait_until_ready,
        spool=spool,
    )
    if all_:
        _test_chain(cli, request, json_)
    report = probe_server(request, cli.load_config, cli.env, on_retry=_retry_printer(cli))
    if json_:
        from carerix_smtp.cli.render import print_json

        print_json(report.to_dict())
    else:
        render_report(report, terminal=cli.stdout_is_terminal, console=cli.console)
    raise typer.Exit(report.exit_code)


def _test_chain(cli: CliContext, request: ProbeRequest, json_: bool) -> None:
    """``--all``: the entry and its fallbacks, each rendered as it is done."""
    from carerix_smtp.probe.chain import probe_chain

    def show(report: ProbeReport) -> None:
        if not json_:
            render_report(report, terminal=cli.stdout_is_terminal, console=cli.console)

    chain = probe_chain(
        request, cli.load_config, cli.env, on_retry=_retry_printer(cli), on_report=show
    )
    if json_:
        from carerix_smtp.cli.render import print_json

        print_json(chain.to_dict())
    else:
        verdicts = ", ".join(
            f"{r.server} {'passed' if r.passed else f'failed (exit {r.exit_code})'}"
            for r in chain.reports
        )
        usable = f"mail would go through {chain.usable}" if chain.usable else "no usable server"
        typer.echo(f"all: {verdicts}; {usable}")
    raise typer.Exit(chain.exit_code)


def _retry_printer(cli: CliContext) -> Callable[[ProbeReport, float], None]:
    """With --wait-until-ready: one line on stderr per failed attempt."""

    def on_retry(failed: ProbeReport, wait: float) -> None:
        phase = failed.failed_phase
        where = phase.name if phase else "?"
        cli.err_console.print(
            f"cxsmtp: attempt {failed.attempts} failed at {where}: {failed.error}; "
            f"retrying in {wait:.0f} s",
            markup=False,
        )

    return on_retry


def render_report(report: ProbeReport, *, terminal: bool, console: Console | None = None) -> None:
    """A rich table on a terminal, plain lines otherwise (cron mail, pipes)."""
    title = f"{report.server} ({report.host})"
    if terminal and console is not None:
        from rich.markup import escape
        from rich.table import Table

        # Hosts are written "[smtp.example.com]:587": escape them, they are not markup.
        table = Table(
            title=escape(title), show_header=True, header_style="bold", title_justify="left"
        )
        table.add_column("")
        table.add_column("phase")
        table.add_column("ms", justify="right")
        table.add_column("result", overflow="fold")
        for phase in report.phases:
            style = {"ok": "green", "failed": "red", "skipped": "dim"}[phase.status]
            table.add_row(
                f"[{style}]{SYMBOLS[phase.status]}[/]",
                phase.name,
                "" if phase.ms is None else f"{phase.ms:.0f}",
                escape(_facts(phase.summary, phase.error)),
            )
        console.print(table)
        for phase in report.phases:  # each failed phase's hint; the first one's is "hint:"
            if phase.hint and phase is not report.failed_phase:
                console.print(f"note ({phase.name}): {phase.hint}", markup=False)
        if report.hint:
            console.print(f"hint: {report.hint}", markup=False)
        console.print(_verdict(report), markup=False)
        return
    typer.echo(title)
    width = max(len(p.name) for p in report.phases)
    for phase in report.phases:
        ms = "" if phase.ms is None else f"{phase.ms:.0f} ms"
        line = f"{SYMBOLS[phase.status]} {phase.name.ljust(width)} {ms:>8}  "
        typer.echo((line + _facts(phase.summary, phase.error)).rstrip())
    for phase in report.phases:  # each failed phase's hint; the first one's is "hint:"
        if phase.hint and phase is not report.failed_phase:
            typer.echo(f"note ({phase.name}): {phase.hint}")
    if report.hint:
        typer.echo(f"hint: {report.hint}")
    typer.echo(_verdict(report))


def _facts(summary: str, error: str | None) -> str:
    if error:
        return f"{summary} — {error}" if summary else error
    return summary


def _verdict(report: ProbeReport) -> str:
    tries = f" after {report.attempts} attempts" if report.attempts > 1 else ""
    if report.passed:
        return f"PASSED{tries}"
    return f"FAILED{tries} (exit {report.exit_code})"


def register(app: typer.Typer) -> None:
    app.command("test")(test)
