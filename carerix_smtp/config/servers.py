"""Server entries as a library: add, edit, remove, select, describe.

The CLI's ``server`` and ``settings`` commands are thin wrappers around these
functions.  Each one validates everything first and changes the file last, so
a refused change leaves the configuration untouched.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

from carerix_smtp.config import passwords as secrets
from carerix_smtp.config.file import (
    FLOAT_KEYS,
    INT_KEYS,
    SERVER_KEYS,
    Config,
    ServerEntry,
    check_server_name,
    normalise_address,
    save_config,
    server_from_dict,
    server_to_dict,
)
from carerix_smtp.config.hosts import parse_host
from carerix_smtp.errors import ConfigError, UsageError

log = logging.getLogger(__name__)

# Keys that `--set KEY=VALUE` may change (the named options cover the others).
TUNABLE_KEYS = tuple(sorted(k for k in SERVER_KEYS if k in INT_KEYS or k in FLOAT_KEYS))


def split_login(login: str) -> tuple[str, str]:
    """Seed: "username and password ... (separated by a space)".

    Split at the first run of white space; the password keeps any spaces after it.
    """
    parts = login.lstrip().split(None, 1)
    if len(parts) != 2 or not parts[1]:
        raise UsageError(
            '--login needs "USERNAME PASSWORD" separated by a space '
            "(the password may contain spaces)"
        )
    return parts[0], parts[1].rstrip("\r\n")


def parse_assignments(items: Iterable[str]) -> dict[str, Any]:
    """``["batch_deadline=30", "rate_per_hour=600"]`` -> typed values, validated."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in TUNABLE_KEYS:
            raise UsageError(
                f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(TUNABLE_KEYS)}"
            )
        try:
            number: float = int(value) if key in INT_KEYS else float(value)
        except ValueError:
            kind = "a whole number" if key in INT_KEYS else "a number of seconds"
            raise UsageError(f"--set {item!r}: {key} must be {kind}") from None
        out[key] = number
    return out


def _validated(entry: ServerEntry, config: Config) -> ServerEntry:
    """Run the same validation as loading the file would, so a saved file always loads."""
    where = f"server {entry.name!r}"
    return server_from_dict(entry.name, server_to_dict(entry), where)


def add_server(
    config: Config,
    name: str,
    host: str,
    *,
    password: str | None = None,
    make_default: bool = False,
    env: Mapping[str, str] | None = None,
    **fields: Any,
) -> ServerEntry:
    check_server_name(name)
    if name in config.servers:
        raise ConfigError(
            f"a server named {name!r} already exists in {config.path}; "
            f"change it with 'cxsmtp server edit {name}' or remove it first"
        )
    parse_host(host)  # a HostSyntaxError shows the accepted forms
    entry = _validated(ServerEntry(name=name, host=host.strip(), **fields), config)
    if password is not None:
        if entry.username is None:
            raise UsageError("a password needs a username: use --login or --username")
        secrets.store_password(name, password, env)
    config.servers[name] = entry
    if make_default or (config.settings.default_server is None and len(config.servers) == 1):
        config.settings.default_server = name
    save_config(config)
    return entry


def edit_server(
    config: Config,
    name: str,
    *,
    password: str | None = None,
    make_default: bool = False,
    env: Mapping[str, str] | None = None,
    **changes: Any,
) -> ServerEntry:
    entry = config.server(name)
    if "host" in changes:
        parse_host(changes["host"])
        changes["host"] = changes["host"].strip()
    updated = _validated(dataclasses.replace(entry, **changes), config)
    if password is not None:
        if updated.username is None:
            raise UsageError("a password needs a username: use --login or --username")
        secrets.store_password(name, password, env)
    config.servers[name] = updated
    if make_default:
        config.settings.default_server = name
    save_config(config)
    return updated


def remove_server(config: Config, name: str, env: Mapping[str, str] | None = None) -> bool:
    """Remove the entry, its per-user choices and its stored password."""
    config.server(name)
    users = [addr for addr, server in config.users.items() if server == name]
    del config.servers[name]
    for addr in users:
        del config.users[addr]
    if config.settings.default_server == name:
        config.settings.default_server = None
    save_config(config)
    return secrets.delete_password(name, env)


def set_password(
    config: Config, name: str, password: str, env: Mapping[str, str] | None = None
) -> None:
    entry = config.server(name)
    if entry.username is None:
        raise ConfigError(
            f"server {name!r} has no username; set one with 'cxsmtp server edit {name} --username USER'"
        )
    secrets.store_password(name, password, env)


def use_server(config: Config, name: str, user: str | None = None) -> None:
    """Seed: My account > Outgoing mail server.  Without ``user``: the default."""
    config.server(name)
    if user is None:
        config.settings.default_server = name
    else:
        address = normalise_address(user)
        if "@" not in address or any(ch.isspace() for ch in address):
            raise UsageError(f"--user {user!r} is not an e-mail address (user@example.com)")
        config.users[address] = name
    save_config(config)


def set_setting(config: Config, key: str, value: str) -> None:
    key = key.strip().replace("-", "_")
    if key == "email_send_limit":
        try:
            limit = int(value)
        except ValueError:
            limit = -1
        if limit < 0:
            raise UsageError(f"email-send-limit must be a whole number of 0 or more, not {value!r}")
        config.settings.email_send_limit = limit
    elif key == "send_limit_window":
        try:
            config.settings.send_limit_window = float(value)
        except ValueError:
            raise UsageError(
                f"send-limit-window must be a number of seconds, not {value!r}"
            ) from None
    elif key == "default_server":
        config.server(value)
        config.settings.default_server = value
    elif key == "nameservers":
        config.settings.nameservers = [v.strip() for v in value.split(",") if v.strip()]
    else:
        raise UsageError(
            f"unknown setting {key!r}; known: email-send-limit, send-limit-window, "
            "default-server, nameservers"
        )
    save_config(config)


def describe_server(
    config: Config, entry: ServerEntry, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Effective values of an entry, for ``server show``/``list`` (never the password)."""
    env = os.environ if env is None else env
    endpoint = entry.endpoint
    source = secrets.password_source(entry, env) if entry.username else "none"
    data: dict[str, Any] = {
        "name": entry.name,
        "host": entry.host,
        "hostname": endpoint.host,
        "port": endpoint.port,
        "mx_lookup": endpoint.mx_lookup,
        "ip_literal": endpoint.ip_literal,
        "security": entry.security.value,
        "tls_mode": entry.tls_mode(has_password=entry.username is not None).value,
        "username": entry.username,
        "password_source": source,
        "password_command": entry.password_command,
        "ca_file": entry.ca_file,
        "tls_verify": entry.tls_verify,
        "allow_plaintext_auth": entry.allow_plaintext_auth,
        "accepts_large_amounts": entry.accepts_large_amounts,
        "rate_per_hour": entry.effective_rate_per_hour,
        "default": _is_default(config, entry),
        "users": sorted(addr for addr, name in config.users.items() if name == entry.name),
    }
    for key in TUNABLE_KEYS:
        data.setdefault(key, getattr(entry, key))
    return data


def _is_default(config: Config, entry: ServerEntry) -> bool:
    if config.settings.default_server is not None:
        return config.settings.default_server == entry.name
    return len(config.servers) == 1


def describe_settings(config: Config) -> dict[str, Any]:
    return {
        "config_file": str(config.path),
        "email_send_limit": config.settings.email_send_limit,
        "send_limit_window": config.settings.send_limit_window,
        "default_server": config.settings.default_server,
        "nameservers": config.settings.nameservers,
        "servers": sorted(config.servers),
        "users": dict(sorted(config.users.items())),
    }
