"""The command line before click parses it: global options anywhere, and ``--json``.

``cxsmtp send SPOOL --debug`` and ``cxsmtp server list --config X`` are how people
type; click only accepts a group's options before the subcommand.  So the root
group moves the global options it finds after the subcommand in front of it, and
notes on the way whether the command that runs was given ``--json`` (its errors are
then JSON too, even when its own options could not be parsed).

The scan knows every option of the command that runs: a value taken by one of them
(``--password-command --debug``) stays where it is, as does everything after ``--``;
an option the command defines itself wins over a global one of the same name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The root options that may come after the subcommand (help, version and the
# completion options stay where click expects them).
MOVABLE = frozenset({"--config", "--state-dir", "--debug", "--verbose", "-v"})


@dataclass(frozen=True)
class Argv:
    args: list[str]  # the command line with the global options in front
    json: bool  # the command that runs has --json and was given it


def _options(command: Any, ctx: Any) -> dict[str, bool]:
    """Every option spelling of ``command`` -> whether it takes a value."""
    table: dict[str, bool] = {}
    for param in command.get_params(ctx):
        if getattr(param, "param_type_name", "") != "option":
            continue
        takes_value = not (getattr(param, "is_flag", False) or getattr(param, "count", False))
        for spelling in [*param.opts, *param.secondary_opts]:
            table[spelling] = takes_value
    return table


def _skip_options(args: list[str], start: int, table: dict[str, bool]) -> int:
    """The index of the first token after ``start`` that is not an option (or its value)."""
    i = start
    while i < len(args) and args[i].startswith("-") and args[i] not in ("-", "--"):
        name, eq, _ = args[i].partition("=")
        i += 2 if table.get(name) and not eq else 1
    return i


def _find_command(root: Any, ctx: Any, args: list[str], start: int) -> tuple[Any, int]:
    """The command the words from ``start`` name (a group's subcommand, …), and the
    index after its name.  Stops at an option or an unknown word (click reports it)."""
    command, i = root, start
    while i < len(args) and hasattr(command, "get_command"):
        sub = command.get_command(ctx, args[i])
        if sub is None:
            break
        command, i = sub, i + 1
    return command, i


def hoist_global_options(root: Any, ctx: Any, args: list[str]) -> Argv:
    """``args`` with the global options that follow the subcommand moved in front of it."""
    root_options = _options(root, ctx)
    start = _skip_options(args, 0, root_options)
    command, end = _find_command(root, ctx, args, start)
    if command is root:
        return Argv(list(args), json=False)
    own = _options(command, ctx)
    moved: list[str] = []
    kept: list[str] = []
    given_json = False
    i = end
    while i < len(args):
        token = args[i]
        if token == "--":
            kept.extend(args[i:])
            break
        name, eq, _ = token.partition("=")
        if name in own:
            width = 2 if own[name] and not eq else 1
            given_json = given_json or token == "--json"
            kept.extend(args[i : i + width])
        elif name in MOVABLE:
            width = 2 if root_options.get(name) and not eq else 1
            moved.extend(args[i : i + width])
        else:  # an argument, an unknown option, short options run together: click decides
            width = 1
            kept.append(token)
        i += width
    json_ = given_json and "--json" in own
    return Argv([*args[:start], *moved, *args[start:end], *kept], json=json_)
