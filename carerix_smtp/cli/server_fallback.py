"""``server add/edit --fallback NAME`` (repeatable, in order) and ``--no-fallback``
(issue 14); the lists are checked by config/fallbacks.py when the entry is saved."""

from __future__ import annotations

from typing import Annotated, Any

import typer

FallbackOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--fallback",
        metavar="NAME",
        help="Another entry to send through when this one cannot be used (unreachable, "
        "TLS, 421 at greeting, authentication refused); repeatable, tried in order. "
        "On edit it replaces the list.",
        show_default=False,
    ),
]
NoFallbackOpt = Annotated[
    bool,
    typer.Option("--no-fallback", help="Remove every fallback relay of this entry."),
]


def fallback_fields(fallback: list[str] | None, no_fallback: bool) -> dict[str, Any]:
    """The ``fallback`` key for add/edit: the names given (trimmed, in order), [] for
    --no-fallback, nothing when neither was given."""
    from carerix_smtp.errors import UsageError

    if no_fallback and fallback:
        raise UsageError("--fallback and --no-fallback cannot be combined")
    if no_fallback:
        return {"fallback": []}
    if not fallback:  # not given (Typer may pass [] for a repeatable option)
        return {}
    names = [name.strip() for name in fallback]
    if not all(names):
        raise UsageError("--fallback needs a server name; to remove them all use --no-fallback")
    return {"fallback": names}
