"""``cxsmtp queue delete|hold|release|flush|purge``: the commands that change the
queue, each under the spool lock (a running send: exit 75, as ``retry`` does)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from carerix_smtp.cli.queue_options import AllOpt, IdsArg, SpoolOption, YesOpt, resolve
from carerix_smtp.cli.render import print_json

if TYPE_CHECKING:
    from carerix_smtp.spool.spool import Spool


@contextlib.contextmanager
def _locked(path: Path, doing: str) -> Iterator[Spool]:
    from carerix_smtp.spool.layout import SpoolBusyError
    from carerix_smtp.spool.spool import Spool

    spool = Spool(path)
    spool.check(writable=True)
    with spool.lock() as locked:
        if not locked:
            raise SpoolBusyError(
                f"a cxsmtp send is running on {path}; {doing} when it has finished"
            )
        yield spool


def _ids_or_all(ids: list[str] | None, everything: bool) -> list[str]:
    from carerix_smtp.errors import UsageError

    if bool(ids) == everything:
        raise UsageError("give queue IDs or --all (not both)")
    return ids or []


def delete(
    ctx: typer.Context,
    ids: IdsArg = None,
    spool: SpoolOption = None,
    state: Annotated[
        str | None,
        typer.Option(
            "--state",
            metavar="STATE",
            help="Every message in this state: queued, deferred, held, failed, pending or all.",
            show_default=False,
        ),
    ] = None,
    everything: AllOpt = False,
    yes: YesOpt = False,
) -> None:
    """Delete messages from the queue with their records, like postsuper -d; each
    removal is a line in the delivery log.  More than one message goes only with
    --yes (else exit 64 with the count).  --all: every message not sent.

    Example:  cxsmtp queue delete --state failed --yes --spool /var/spool/mailing
    """
    from carerix_smtp.spool.removal import delete as remove
    from carerix_smtp.spool.removal import select

    path = resolve(ctx, spool)
    with _locked(path, "delete") as target:
        chosen = select(target.layout, ids or [], state=state, everything=everything)
        done = remove(target.layout, chosen, target.log_delivery, confirmed=yes)
    for removal in done:
        typer.echo(f"deleted: {removal.id} ({removal.state})")
    if not done:
        typer.echo("nothing to delete")


def hold(
    ctx: typer.Context, ids: IdsArg = None, spool: SpoolOption = None, everything: AllOpt = False
) -> None:
    """Hold queued or deferred messages (postsuper -h): they move to SPOOL/held/,
    which send never takes from, until released.  --all: every queued and deferred one.

    Example:  cxsmtp queue hold --all --spool /var/spool/mailing
    """
    from carerix_smtp.spool.held import hold as hold_messages

    wanted = _ids_or_all(ids, everything)
    path = resolve(ctx, spool)
    with _locked(path, "hold") as target:
        moved = hold_messages(target.layout, wanted, everything=everything)
    for name in moved:
        typer.echo(f"held: {name}")
    if not moved:
        typer.echo("nothing to hold")


def release(
    ctx: typer.Context, ids: IdsArg = None, spool: SpoolOption = None, everything: AllOpt = False
) -> None:
    """Release held messages (postsuper -H), due now: back to the queue, or to
    deferred/ with their retry state when they were held from there.

    Example:  cxsmtp queue release --all --spool /var/spool/mailing
    """
    from carerix_smtp.spool.held import release as release_messages

    wanted = _ids_or_all(ids, everything)
    path = resolve(ctx, spool)
    with _locked(path, "release") as target:
        moved = release_messages(target.layout, wanted, now=time.time(), everything=everything)
    for name in moved:
        typer.echo(f"released: {name}")
    if not moved:
        typer.echo("nothing to release")


def flush(
    ctx: typer.Context,
    spool: Annotated[
        Path | None,
        typer.Argument(
            metavar="[SPOOL]",
            help="Spool directory [default: the 'spool' setting].",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Make every deferred message due now, then run cxsmtp send on the spool
    (postqueue -f); prints send's summary and exits with its code.  Held messages
    stay held.

    Example:  cxsmtp queue flush /var/spool/mailing
    """
    from carerix_smtp.cli.spool_cmds import send
    from carerix_smtp.spool.held import make_due

    path = resolve(ctx, spool)
    with _locked(path, "flush") as target:
        count = make_due(target.layout, time.time())
    if count:
        typer.echo(f"cxsmtp: {count} deferred message(s) due now")
    send(ctx, path)


def purge(
    ctx: typer.Context,
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than",
            metavar="AGE",
            help="Remove sent messages and records older than this: 7d, 12h, 90m, 45s.",
        ),
    ],
    spool: Annotated[
        Path | None,
        typer.Argument(
            metavar="[SPOOL]",
            help="Spool directory [default: the 'spool' setting].",
            show_default=False,
        ),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="JSON: {messages, records, complete}.")
    ] = False,
) -> None:
    """Remove sent messages (sent/NAME.eml) and their records older than AGE now, as
    the retain_sent setting does bit by bit during send runs.  Queued, deferred,
    held and failed messages are never touched.

    Example:  cxsmtp queue purge --older-than 7d /var/spool/mailing
    """
    from carerix_smtp.config.servers import parse_duration
    from carerix_smtp.spool.retention import purge_sent

    age = parse_duration(older_than, "--older-than")
    path = resolve(ctx, spool)
    with _locked(path, "purge") as target:
        report = purge_sent(target.layout, time.time() - age)
    if json_out:
        print_json(report.to_json())
        return
    typer.echo(
        f"purged {report.messages} sent message(s) and {report.records} record file(s) "
        f"older than {older_than}"
    )


def register_changes(queue: typer.Typer) -> None:
    queue.command("delete")(delete)
    queue.command("hold")(hold)
    queue.command("release")(release)
    queue.command("flush")(flush)
    queue.command("purge")(purge)
