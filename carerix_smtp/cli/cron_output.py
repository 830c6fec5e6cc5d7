"""``cxsmtp send``'s output where cron reads it (issue 11).

- ``stamp_lines``: on a non-terminal every text line starts with an ISO 8601 time
  (``2026-11-30T03:10:00+01:00 cxsmtp: error: …``), so a log file appended to by cron
  says when; a terminal and ``--json``'s object on stdout stay as they are.
- ``render_run_errors``: the run's errors, with the servers' errors as
  send/history.py decided (``--quiet``: an unchanged one once a day) and the lines
  saying that a server works again.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any, TextIO

import typer

from carerix_smtp.send.history import local_iso

if TYPE_CHECKING:
    from carerix_smtp.send.report import RunSummary


class Stamped:
    """A text stream that starts every line with the local time (seconds, offset)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.at_line_start = True

    def write(self, text: str) -> int:
        import time

        parts = text.split("\n")
        out: list[str] = []
        for index, part in enumerate(parts):
            if part and self.at_line_start:
                out.append(f"{local_iso(time.time())} ")
                self.at_line_start = False
            out.append(part)
            if index < len(parts) - 1:
                out.append("\n")
                self.at_line_start = True
        self.stream.write("".join(out))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def __getattr__(self, name: str) -> Any:  # encoding, errors, fileno…
        return getattr(self.stream, name)


def stamp_lines(ctx: typer.Context, *, stdout: bool = True) -> None:
    """Until the command ends, time-stamp what goes to stdout (unless ``stdout`` is
    False: ``--json``) and stderr when they are not terminals -- including the
    ``cxsmtp: error:`` line the CLI's error guard prints after the command raised
    (restored when the root context closes, after that guard)."""
    saved_out, saved_err = sys.stdout, sys.stderr
    if stdout and not saved_out.isatty():
        sys.stdout = Stamped(saved_out)
    if not saved_err.isatty():
        sys.stderr = Stamped(saved_err)
    handlers = [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.StreamHandler) and h.stream is saved_err
    ]
    for handler in handlers:
        handler.setStream(sys.stderr)

    def restore() -> None:
        for handler in handlers:
            handler.setStream(saved_err)
        sys.stdout, sys.stderr = saved_out, saved_err

    ctx.find_root().call_on_close(restore)


def render_run_errors(summary: RunSummary) -> None:
    """The run's errors on stderr: the servers' as their notices say (shown or not,
    with the `cxsmtp test NAME` hint), the others (signals...) as they are; and on
    stdout the servers that work again."""
    noticed = {n.server for n in summary.notices if n.level == "error"}
    told = {f.message for f in summary.server_failures if f.server in noticed}
    for error in summary.errors:
        if error not in told:
            print(f"cxsmtp: error: {error}", file=sys.stderr)
    for notice in summary.notices:
        if notice.shown and notice.level == "error":
            print(f"cxsmtp: error: {notice.text}", file=sys.stderr)
    for notice in summary.notices:
        if notice.level != "error":
            typer.echo(f"cxsmtp: {notice.text}")


def render_deferring(summary: RunSummary) -> None:
    """Servers that deferred message after message: normal operation, one line each."""
    for failure in summary.server_failures:
        if failure.kind == "deferring":
            typer.echo(f"cxsmtp: {failure.message}")
