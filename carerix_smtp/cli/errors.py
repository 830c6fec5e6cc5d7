"""The one place where errors become ``cxsmtp: error: …`` and an exit code.

Three kinds reach the edge (``CxsmtpGroup.invoke``):

- a :class:`CxsmtpError`: its message, exit by its class;
- an ``OSError`` the core did not wrap: the path and the system's reason, exit by
  errno, as :meth:`StorageError.from_os_error` (a safety net: the spool and the
  ledger raise StorageError themselves);
- anything else is a bug: one line naming the exception, exit 70 (EX_SOFTWARE).

cron mails whatever reaches stderr, so a traceback is printed only with ``--debug``,
and never with locals (they may hold a password).  Typer's and click's own exits,
usage errors and Ctrl-C (exit 130, click's way) pass through unchanged.
"""

from __future__ import annotations

import errno
import json
import logging
import sys
import threading
import traceback
from typing import Any

import typer
from typer.core import TyperGroup

try:  # typer >= 0.22 vendors click
    from typer._click.exceptions import ClickException
    from typer._click.exceptions import UsageError as ClickUsageError
except ImportError:  # pragma: no cover - older typer with click as a dependency
    from click import ClickException  # type: ignore[no-redef]
    from click import UsageError as ClickUsageError  # type: ignore[no-redef]

from carerix_smtp.errors import CxsmtpError, ExitCode, StorageError

# Exceptions that are typer's and click's way of exiting: never reported by us.
_CLICK_EXITS: tuple[type[BaseException], ...] = (typer.Exit, typer.Abort, ClickException)
_MAX_MESSAGE = 500  # characters of an unexpected exception's text (a 5 MB header line…)


def report_error(exc: CxsmtpError, debug: bool = False) -> None:
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    print(f"cxsmtp: error: {exc}", file=sys.stderr)
    if exc.hint:
        print(f"cxsmtp: hint: {exc.hint}", file=sys.stderr)


def warn(message: str) -> None:
    print(f"cxsmtp: warning: {message}", file=sys.stderr)


def unexpected_line(exc: BaseException, debug: bool = False, where: str = "") -> str:
    """``cxsmtp: error: unexpected <Type>: <message> (run with --debug …)``, one line."""
    try:
        text = " ".join(str(exc).split())
    except Exception:  # a broken __str__ must not hide the error
        text = "(no message)"
    if len(text) > _MAX_MESSAGE:
        text = text[:_MAX_MESSAGE] + "…"
    line = f"cxsmtp: error: unexpected {type(exc).__name__}{where}"
    line = f"{line}: {text}" if text else line
    return line if debug else f"{line} (run with --debug for the traceback)"


def report_unexpected(exc: BaseException, debug: bool = False) -> int:
    """Report an exception that is not a CxsmtpError; returns the exit code."""
    if isinstance(exc, OSError):
        storage = StorageError.from_os_error(exc, "access")
        storage.__traceback__ = exc.__traceback__
        report_error(storage, debug)
        return int(storage.exit_code)
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    print(unexpected_line(exc, debug), file=sys.stderr)
    return int(ExitCode.SOFTWARE)


def _debug_of(ctx: Any) -> bool:
    """``--debug`` (also when the failure came before the callback set ``ctx.obj``)."""
    params = getattr(ctx, "params", None) or {}
    return bool(getattr(ctx.obj, "debug", False) or params.get("debug"))


JSON_KEY = "cxsmtp.json"  # ctx.meta (shared by every context of a run): --json given


def print_json_error(code: int, kind: str, message: str, hint: str | None) -> None:
    """The one JSON object a ``--json`` command prints on stdout when it fails."""
    error = {"code": code, "kind": kind, "message": message, "hint": hint}
    print(json.dumps({"ok": False, "error": error}, indent=2), flush=True)


def _json_usage_error(exc: ClickUsageError) -> None:
    ctx = exc.ctx
    if ctx is not None and ctx.meta.get(JSON_KEY):
        print_json_error(int(ExitCode.USAGE), "UsageError", exc.format_message(), None)


class CxsmtpGroup(TyperGroup):
    """Root group: maps CxsmtpError to its exit code, usage errors to EX_USAGE (64),
    and any other exception to one line (see the module docstring); with ``--json``
    also one JSON object on stdout.  Global options may follow the subcommand
    (cli/argv.py)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from carerix_smtp.cli.render import tidy_help

        tidy_help(self)

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        from carerix_smtp.cli.argv import hoist_global_options
        from carerix_smtp.cli.params import lighten

        lighten(self, ctx)  # plain values without importing pydantic (cli/params.py)
        argv = hoist_global_options(self, ctx, list(args))
        ctx.meta[JSON_KEY] = argv.json
        return list(super().parse_args(ctx, argv.args))

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().make_context(*args, **kwargs)
        except ClickUsageError as exc:
            exc.exit_code = int(ExitCode.USAGE)
            _json_usage_error(exc)
            raise

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except ClickUsageError as exc:
            exc.exit_code = int(ExitCode.USAGE)
            _json_usage_error(exc)
            raise
        except _CLICK_EXITS:
            raise
        except CxsmtpError as exc:
            raise typer.Exit(self._report(ctx, exc)) from None
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                raise  # stdout closed by the reader (``| head``): click exits quietly
            storage = StorageError.from_os_error(exc, "access")
            storage.__traceback__ = exc.__traceback__
            raise typer.Exit(self._report(ctx, storage)) from None
        except Exception as exc:
            code = report_unexpected(exc, _debug_of(ctx))
            if ctx.meta.get(JSON_KEY):
                message = unexpected_line(exc, debug=True).removeprefix("cxsmtp: error: ")
                print_json_error(
                    code, type(exc).__name__, message, "run with --debug for the traceback"
                )
            raise typer.Exit(code) from None

    @staticmethod
    def _report(ctx: Any, exc: CxsmtpError) -> int:
        report_error(exc, _debug_of(ctx))
        code = int(exc.exit_code)
        if ctx.meta.get(JSON_KEY):
            print_json_error(code, type(exc).__name__, str(exc), exc.hint)
        return code


class OneLineFormatter(logging.Formatter):
    """Log lines without tracebacks (``--debug`` keeps them): a ``log.exception``
    somewhere in the core must not mail a trace to cron either."""

    def formatException(self, ei: Any) -> str:
        return ""

    def formatStack(self, stack_info: str) -> str:
        return ""


def guard_threads(debug: bool) -> None:
    """An exception escaping a thread: one line, not Python's traceback (the process)."""
    if debug:
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit or args.exc_value is None:
            return
        name = args.thread.name if args.thread is not None else "?"
        print(unexpected_line(args.exc_value, where=f" in thread {name}"), file=sys.stderr)

    threading.excepthook = hook
