"""Fallback relays of server entries (issue 14): ``fallback = ["relay2", ...]``.

The lists must name defined servers, none twice, and must not form a loop
(a -> a, a -> b -> a, ...).  A send run uses only an entry's own list (a
fallback's fallbacks are not followed), yet a loop is refused anyway: it is
always a mistake, and following lists later must not be able to spin.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from carerix_smtp.errors import ConfigError


def check_fallbacks(fallbacks: Mapping[str, Sequence[str]], where: str) -> None:
    """``fallbacks``: server name -> its fallback list, for every defined server.
    Raises ConfigError (one line, naming the server and the cycle)."""
    for name, names in fallbacks.items():
        seen: set[str] = set()
        for other in names:
            if other not in fallbacks:
                known = ", ".join(sorted(fallbacks))
                raise ConfigError(
                    f"{where}: server {name!r}: fallback {other!r} is not defined (known: {known})"
                )
            if other in seen:
                raise ConfigError(f"{where}: server {name!r}: fallback {other!r} is named twice")
            seen.add(other)
    cycle = find_cycle(fallbacks)
    if cycle:
        raise ConfigError(
            f"{where}: fallback loop {' -> '.join(cycle)}; a server cannot fall back "
            "to itself, directly or through others"
        )


def find_cycle(fallbacks: Mapping[str, Sequence[str]]) -> list[str]:
    """The first loop found, as names with the first one repeated at the end
    (``["a", "b", "a"]``); ``[]`` when there is none."""
    done: set[str] = set()
    for start in sorted(fallbacks):
        if start in done:
            continue
        path: list[str] = []
        # depth-first, iterative: (name, index of the next fallback to follow)
        stack: list[tuple[str, int]] = [(start, 0)]
        on_path: set[str] = set()
        while stack:
            name, index = stack.pop()
            if index == 0:
                path.append(name)
                on_path.add(name)
            names = [n for n in fallbacks.get(name, ()) if n in fallbacks]
            if index < len(names):
                stack.append((name, index + 1))
                following = names[index]
                if following in on_path:
                    return [*path[path.index(following) :], following]
                if following not in done:
                    stack.append((following, 0))
                continue
            on_path.discard(name)
            path.pop()
            done.add(name)
    return []


def dependants(fallbacks: Mapping[str, Sequence[str]], name: str) -> tuple[str, ...]:
    """The servers that name ``name`` as a fallback."""
    return tuple(sorted(n for n, names in fallbacks.items() if name in names))
