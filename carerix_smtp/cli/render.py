"""Small rendering helpers shared by the commands."""

from __future__ import annotations

import json
from typing import Any

import typer
from typer.core import TyperArgument, TyperOption


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "-"
    return str(value)


def print_fields(data: dict[str, Any]) -> None:
    width = max(len(k) for k in data)
    for key, value in data.items():
        typer.echo(f"{key.ljust(width)}  {format_value(value)}")


# --- help text ---------------------------------------------------------------------
# Typer writes required arguments as {name}, adds the Python type to every
# argument (<str>, <list[str]>) and to options without a metavar.  cxsmtp's help
# shows NAME, SPOOL, PATH …: the root group rewrites its command tree once.

GLOBAL_EPILOG = (
    "Global options (cxsmtp --help) may also follow the command: --config PATH, "
    "--state-dir PATH, -v/--verbose, --debug."
)
_TYPE_WORDS = {"str": "TEXT", "int": "INTEGER", "float": "NUMBER", "path": "PATH", "bool": ""}


class _Argument(TyperArgument):
    """NAME in the usage line and the argument list: no braces, no Python type."""

    @property
    def display_name_raw(self) -> str:
        return self.metavar or (self.name or "").upper()

    def display_type_rich(self, ctx: Any) -> str | None:
        return None

    def get_usage_pieces(self, ctx: Any) -> list[str]:
        piece = self.display_name_raw
        if not self.required and not piece.startswith("["):
            piece = f"[{piece}]"
        return [piece + ("..." if self.nargs != 1 else "")]

    def get_help_record(self, ctx: Any) -> tuple[str, str] | None:
        record = super().get_help_record(ctx)
        if record is not None and self.nargs != 1 and not record[0].endswith("..."):
            record = (record[0] + "...", record[1])
        return record


class _Option(TyperOption):
    """An option's value as a word (TEXT, PATH, [a|b]) where it has no metavar."""

    def display_type_rich(self, ctx: Any) -> str | None:
        if self.metavar is not None:
            return self.metavar
        label = (self.display_type(ctx) or "").strip("<>")
        if label.startswith("list[") and label.endswith("]"):
            label = label[5:-1]
        label = label.removesuffix(" range")
        if "|" in label:
            return f"[{label}]"
        return _TYPE_WORDS.get(label, label.upper())


def tidy_help(command: Any, root: bool = True) -> None:
    """Give every parameter under ``command`` cxsmtp's help display; subcommands get
    a line saying that the global options may follow them."""
    for param in command.params:
        if type(param) is TyperArgument:
            param.__class__ = _Argument
        elif type(param) is TyperOption:
            param.__class__ = _Option
    subcommands = getattr(command, "commands", None)
    if subcommands is None:
        if not root and not command.epilog:
            command.epilog = GLOBAL_EPILOG
        return
    for sub in subcommands.values():
        tidy_help(sub, root=False)
