"""Plain command-line values without pydantic (issue 12, start-up).

Typer 0.29 (the one installed) turns every parameter's value into its type through a pydantic
``TypeAdapter``; importing pydantic for that costs ~70 ms, a third of an empty
``cxsmtp send`` run from cron.  Most of our values need no such machinery: a str is
a str, ``--max-messages 10`` an int, SPOOL a Path.  ``lighten`` gives such
parameters a coercion of their own for the plain cases and leaves everything else
(choices, ranges, custom parsers, malformed input) to Typer's own, so values and
error messages stay exactly what Typer makes of them.

It uses Typer's private ``_coercion`` module: with a Typer that has none (older or
newer), ``lighten`` does nothing and Typer works as it always does.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

try:  # Typer's private coercion layer (see the module docstring)
    from typer._coercion import RuntimeParam, build_runtime_param
    from typer._param_types import coerce_cli_path, routes_to_path
except ImportError:  # pragma: no cover - another Typer: nothing to lighten
    RuntimeParam = None  # type: ignore[assignment,misc]

_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")
_FLOAT = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?")


def lighten(command: Any, ctx: Any) -> None:
    """Give the plain parameters of ``command`` and its subcommands the light
    coercion (once per parameter; a parameter already set up is left alone).

    ``ctx`` is the root's context: ``get_params`` also makes (and keeps) each
    command's --help option, whose names a subcommand's context inherits from it."""
    if RuntimeParam is None:
        return
    for param in command.get_params(ctx):
        descriptor = getattr(param, "type_descriptor", None)
        if descriptor is None or getattr(param, "_runtime_param", True) is not None:
            continue
        # A Typer whose private layer changed shape: leave its coercion alone.
        with contextlib.suppress(AttributeError, TypeError):
            if _plain(descriptor):
                param._runtime_param = _Light(
                    annotation=descriptor.annotation, parameter_info=descriptor.parameter_info
                )
    for sub in getattr(command, "commands", {}).values():
        lighten(sub, ctx)


def _plain(descriptor: Any) -> bool:
    """bool, str, int, float or Path without a parser, a clamp or a file to open."""
    info = descriptor.parameter_info
    if descriptor.file_annotation is not None or info.parser is not None:
        return False
    kind = descriptor.annotation
    if kind in (int, float):
        return not info.clamp  # a value out of min/max goes to Typer (its error)
    if kind is bool:
        return True  # True/False pass; "yes" from an environment variable: Typer
    if kind is str:
        return not routes_to_path(kind, info)  # exists=True etc. make a str a path
    return kind is Path and info.path_type in (None, Path)


if RuntimeParam is not None:

    class _Light(RuntimeParam):  # a frozen dataclass: the parent's fields only
        """The plain cases here; anything else goes to Typer's own coercion."""

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            kind = self.annotation
            if isinstance(value, str):
                if kind is str:
                    return value
                if kind is Path and value:
                    info = self.parameter_info
                    return coerce_cli_path(Path(value), info, path_type=Path, param=param, ctx=ctx)
                if kind is int and _INT.fullmatch(value):
                    return self._in_range(int(value), value, param, ctx)
                if kind is float and _FLOAT.fullmatch(value):
                    return self._in_range(float(value), value, param, ctx)
            elif type(value) is kind:  # a default of the right type
                return value
            return self._typer_own(value, param, ctx)

        def _in_range(self, number: float, text: str, param: Any, ctx: Any) -> Any:
            low, high = self.parameter_info.min, self.parameter_info.max
            if (low is not None and number < low) or (high is not None and number > high):
                return self._typer_own(text, param, ctx)  # Typer's error message
            return number

        @staticmethod
        def _typer_own(value: Any, param: Any, ctx: Any) -> Any:
            typer_own = build_runtime_param(param.type_descriptor)
            param._runtime_param = typer_own
            return typer_own._coerce_value(value, param=param, ctx=ctx)
