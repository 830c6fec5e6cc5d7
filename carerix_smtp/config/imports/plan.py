"""An import plan (entries, users, default, passwords, notes) and applying it.

Applying checks everything first (names taken, password variables, fallbacks, CA
files, where each password would go) and writes last: the passwords through the
same store as ``server add --password-stdin``, then the config file atomically.
A dry run does the checks and writes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carerix_smtp.config import passwords as secrets
from carerix_smtp.config.credentials import credentials_path
from carerix_smtp.config.file import (
    Config,
    ServerEntry,
    check_server_name,
    normalise_address,
    save_config,
    server_from_dict,
)
from carerix_smtp.errors import ConfigError, UsageError

_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class PlannedServer:
    """One entry to add; ``password`` (from the imported file) never reaches repr or output."""

    entry: ServerEntry
    origin: str  # where it came from, for messages: "account 'work'", "relayhost"
    password: str | None = field(default=None, repr=False)


@dataclass
class ImportPlan:
    source: str
    servers: list[PlannedServer] = field(default_factory=list)
    users: dict[str, str] = field(default_factory=dict)  # address -> entry name
    default: str | None = None
    notes: list[str] = field(default_factory=list)  # settings not carried over, and why

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def names(self) -> set[str]:
        return {planned.entry.name for planned in self.servers}

    def add_user(self, address: str, name: str, origin: str) -> None:
        """First one wins, as msmtp's ``--from`` picks the first matching account."""
        key = normalise_address(address)
        if "@" not in key or any(ch.isspace() for ch in key):
            self.note(f"{origin}: from {address!r} is not an e-mail address; not carried over")
        elif key in self.users and self.users[key] != name:
            self.note(f"{origin}: {key} already sends through {self.users[key]!r} (first wins)")
        else:
            self.users[key] = name


def entry_name(text: str, taken: set[str]) -> str:
    """A valid server name from an account or host name; collisions get -2, -3, …"""
    base = _NOT_IN_NAME.sub("-", text.strip()).strip("-") or "server"
    name, number = base, 2
    while name in taken:
        name, number = f"{base}-{number}", number + 1
    check_server_name(name)
    return name


def make_entry(where: str, name: str, fields: Mapping[str, Any]) -> ServerEntry:
    """Validate as loading the file would (host syntax, the plaintext-auth rule)."""
    return server_from_dict(name, fields, where)


def helo_name(plan: ImportPlan, origin: str, key: str, value: str) -> str | None:
    """The EHLO name if RFC 5321 allows it (config/helo.py); else a note, and none."""
    from carerix_smtp.config.helo import check_helo_name

    try:
        return check_helo_name(value, key)
    except UsageError as exc:
        plan.note(f"{origin}: {exc}; not carried over")
        return None


@dataclass(frozen=True)
class Outcome:
    """What happened (or would happen, ``dry_run``) to one planned server."""

    name: str
    host: str
    replaced: bool
    password_store: secrets.StoreChoice | None  # where its password goes; None: no password
    origin: str


@dataclass(frozen=True)
class ImportResult:
    servers: tuple[Outcome, ...]
    users: dict[str, str]
    default: str | None  # the default server set by this import
    default_kept: str | None  # the existing default, left as it was
    credentials: Path
    notes: tuple[str, ...]
    dry_run: bool


def apply_plan(
    config: Config,
    plan: ImportPlan,
    *,
    replace: bool = False,
    dry_run: bool = False,
    env: Mapping[str, str] | None = None,
    store: str | None = None,
) -> ImportResult:
    """Add the plan's entries to ``config`` and save; refuses to overwrite an entry or a
    sender's choice without ``replace``.  Nothing is written before every check passed."""
    if not plan.servers:
        raise ConfigError(f"{plan.source}: no server found to import")
    _check_conflicts(config, plan, replace)
    _check_references(config, plan)
    choices = {
        p.entry.name: secrets.choose_store(p.entry.name, store, env)
        for p in plan.servers
        if p.password is not None
    }
    default, kept = _default_after(config, plan)
    outcomes = tuple(
        Outcome(
            p.entry.name,
            p.entry.host,
            p.entry.name in config.servers,
            choices.get(p.entry.name),
            p.origin,
        )
        for p in plan.servers
    )
    credentials = credentials_path(config.path)
    result = ImportResult(
        outcomes, dict(plan.users), default, kept, credentials, tuple(plan.notes), dry_run
    )
    if dry_run:
        return result
    for planned in plan.servers:
        if planned.password is not None:
            name = planned.entry.name
            secrets.store_password(
                name, planned.password, env, credentials=credentials, choice=choices[name]
            )
        config.servers[planned.entry.name] = planned.entry
    config.users.update(plan.users)
    if default is not None:
        config.settings.default_server = default
    save_config(config)
    return result


def _check_conflicts(config: Config, plan: ImportPlan, replace: bool) -> None:
    if replace:
        return
    taken = sorted(plan.names() & set(config.servers))
    if taken:
        names = ", ".join(repr(n) for n in taken)
        raise ConfigError(
            f"{config.path} already has {'servers' if len(taken) > 1 else 'server'} {names}; add --replace to overwrite "
            "with the imported settings, or remove them first with 'cxsmtp server remove NAME'"
        )
    moved = sorted(a for a, n in plan.users.items() if config.users.get(a, n) != n)
    if moved:
        address = moved[0]
        raise ConfigError(
            f"{config.path}: {address} already sends through {config.users[address]!r}, "
            f"the import would send it through {plan.users[address]!r}; add --replace to "
            "take the imported choice"
        )


def _check_references(config: Config, plan: ImportPlan) -> None:
    """Password variables that would collide, fallbacks that name nothing, CA files."""
    from carerix_smtp.config.servers import check_ca_file

    kept = [n for n in config.servers if n not in plan.names()]
    known = set(kept) | plan.names()
    for planned in plan.servers:
        entry = planned.entry
        others = kept + [n for n in plan.names() if n != entry.name]
        secrets.check_env_var_free(entry.name, others)
        for name in entry.fallback:
            if name not in known:
                raise ConfigError(
                    f"{planned.origin}: fallback {name!r} is neither imported nor configured"
                )
        if entry.ca_file is not None and Path(entry.ca_file).exists():
            check_ca_file(entry.ca_file, entry.name)


def _default_after(config: Config, plan: ImportPlan) -> tuple[str | None, str | None]:
    """(default to save, existing default kept).  An existing default stays; without
    one, the plan's default, else a lone existing server, else the first imported
    (as ``server add`` saves the implicit default)."""
    current = config.settings.default_server
    if current is not None:
        keep = current if plan.default not in (None, current) else None
        return None, keep
    if plan.default is not None:
        return plan.default, None
    if len(config.servers) == 1:
        return next(iter(config.servers)), None
    if not config.servers:
        return plan.servers[0].entry.name, None
    return None, None
