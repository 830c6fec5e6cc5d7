"""The one place where errors become ``cxsmtp: error: …`` and an exit code."""

from __future__ import annotations

import sys
import traceback
from typing import Any

import typer
from typer.core import TyperGroup

try:  # typer >= 0.22 vendors click
    from typer._click.exceptions import UsageError as ClickUsageError
except ImportError:  # pragma: no cover - older typer with click as a dependency
    from click import UsageError as ClickUsageError  # type: ignore[no-redef]

from carerix_smtp.errors import CxsmtpError, ExitCode


def report_error(exc: CxsmtpError, debug: bool = False) -> None:
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    print(f"cxsmtp: error: {exc}", file=sys.stderr)
    if exc.hint:
        print(f"cxsmtp: hint: {exc.hint}", file=sys.stderr)


def warn(message: str) -> None:
    print(f"cxsmtp: warning: {message}", file=sys.stderr)


class CxsmtpGroup(TyperGroup):
    """Root group: maps CxsmtpError to its exit code, and usage errors to EX_USAGE (64)."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().make_context(*args, **kwargs)
        except ClickUsageError as exc:
            exc.exit_code = int(ExitCode.USAGE)
            raise

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except ClickUsageError as exc:
            exc.exit_code = int(ExitCode.USAGE)
            raise
        except CxsmtpError as exc:
            debug = bool(getattr(ctx.obj, "debug", False))
            report_error(exc, debug)
            raise typer.Exit(int(exc.exit_code)) from None
