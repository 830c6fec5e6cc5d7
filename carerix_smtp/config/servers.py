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
from pathlib import Path
from typing import Any

from carerix_smtp.config import passwords as secrets
from carerix_smtp.config.credentials import credentials_path
from carerix_smtp.config.fallbacks import check_fallbacks, dependants
from carerix_smtp.config.file import (
    FLOAT_KEYS,
    INT_KEYS,
    SENDMAIL_MODES,
    SERVER_KEYS,
    Config,
    ServerEntry,
    check_server_name,
    normalise_address,
    save_config,
    server_from_dict,
    server_to_dict,
)
from carerix_smtp.config.helo import check_helo_name
from carerix_smtp.config.hosts import parse_host
from carerix_smtp.config.presets import describe_preset
from carerix_smtp.config.tls import make_ssl_context
from carerix_smtp.errors import ConfigError, InputError, UsageError

log = logging.getLogger(__name__)

# Keys that `--set KEY=VALUE` may change (the named options cover the others).
TUNABLE_KEYS = tuple(sorted(k for k in SERVER_KEYS if k in INT_KEYS or k in FLOAT_KEYS))
# Keys that `--unset KEY` returns to their default (None for the named ones).
UNSETTABLE_KEYS = (
    "username",
    "password_command",
    "ca_file",
    "helo_name",
    "oauth_token_command",
    "account",
    *TUNABLE_KEYS,
)


@dataclasses.dataclass(frozen=True)
class Edited:
    """What ``edit_server`` did, for the message."""

    entry: ServerEntry
    unset: tuple[str, ...] = ()
    password_removed: bool = False


@dataclasses.dataclass(frozen=True)
class Removal:
    """What ``remove_server`` did, for the message: nothing about the default is silent."""

    name: str
    password_removed: bool
    dropped_users: tuple[str, ...]
    new_default: str | None  # the only server left, now saved as the default
    default_cleared: bool  # the default was removed (--force) and several servers remain
    dropped_from_fallbacks: tuple[str, ...] = ()  # servers whose fallback list named it


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


def parse_unset(keys: Iterable[str]) -> tuple[str, ...]:
    """``["ca-file", "username"]`` -> ``("ca_file", "username")``; other keys refused."""
    out: list[str] = []
    for item in keys:
        key = item.strip().replace("-", "_")
        if key not in UNSETTABLE_KEYS:
            if key in ("host", "name"):
                why = "is required"
            elif key in SERVER_KEYS:
                why = "cannot be unset (its own option sets it back)"
            else:
                why = "is not a server key"
            known = ", ".join(UNSETTABLE_KEYS)
            raise UsageError(f"--unset {item!r}: {key} {why}; keys that can be unset: {known}")
        if key not in out:
            out.append(key)
    return tuple(out)


def check_ca_file(path: str, server: str | None = None) -> None:
    """Refuse a CA file that `cxsmtp test`/`send` could not load (InputError, exit 66)."""
    try:
        make_ssl_context(path)
    except InputError as exc:
        hint = f"to use the system's CA store: cxsmtp server edit {server} --unset ca_file"
        raise InputError(
            f"--ca-file: {exc.message}; give a PEM file of one or more "
            "'-----BEGIN CERTIFICATE-----' blocks",
            hint=hint if server else None,
        ) from None


def _validated(entry: ServerEntry, config: Config) -> ServerEntry:
    """Run the same validation as loading the file would, so a saved file always loads."""
    where = f"server {entry.name!r}"
    if entry.oauth_token_command and entry.username is None:  # issue 14: the token's account
        raise UsageError(
            f"{where}: an oauth_token_command needs a username (the account the token is "
            "for): add --username USER"
        )
    if entry.helo_name is not None:  # issue 14: the EHLO name's syntax (RFC 5321 §4.1.1.1)
        entry = dataclasses.replace(entry, helo_name=check_helo_name(entry.helo_name))
    checked = server_from_dict(entry.name, server_to_dict(entry), where)
    lists = _fallback_lists(config) | {entry.name: checked.fallback}
    check_fallbacks(lists, str(config.path))  # issue 14: defined servers, no loop
    return checked


def _fallback_lists(config: Config) -> dict[str, list[str]]:
    return {name: entry.fallback for name, entry in config.servers.items()}


def add_server(
    config: Config,
    name: str,
    host: str,
    *,
    password: str | None = None,
    make_default: bool = False,
    env: Mapping[str, str] | None = None,
    store: secrets.StoreChoice | None = None,
    **fields: Any,
) -> ServerEntry:
    check_server_name(name)
    if name in config.servers:
        raise ConfigError(
            f"a server named {name!r} already exists in {config.path}; "
            f"change it with 'cxsmtp server edit {name}' or remove it first"
        )
    secrets.check_env_var_free(name, config.servers)
    parse_host(host)  # a HostSyntaxError shows the accepted forms
    entry = _validated(ServerEntry(name=name, host=host.strip(), **fields), config)
    if entry.ca_file is not None:
        check_ca_file(entry.ca_file)
    if password is not None:
        if entry.username is None:
            raise UsageError("a password needs a username: use --login or --username")
        secrets.store_password(
            name, password, env, credentials=credentials_path(config.path), choice=store
        )
    if config.settings.default_server is None and len(config.servers) <= 1:
        # Save the default that was implicit (the only server) or that this first one
        # becomes: adding another later must not leave cron with "no default server".
        config.settings.default_server = next(iter(config.servers), name)
    config.servers[name] = entry
    if make_default:
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
    unset: Iterable[str] = (),
    **changes: Any,
) -> Edited:
    """Change the given keys; ``unset`` keys return to their defaults.  Unsetting the
    username also removes the stored password: without a username it is never used."""
    entry = config.server(name)
    keys = _apply_unset(changes, unset)
    if "host" in changes:
        parse_host(changes["host"])
        changes["host"] = changes["host"].strip()
    updated = _validated(dataclasses.replace(entry, **changes), config)
    if changes.get("ca_file") is not None:
        check_ca_file(changes["ca_file"], name)
    if password is not None:
        if updated.username is None:
            raise UsageError("a password needs a username: use --login or --username")
        secrets.store_password(name, password, env, credentials=credentials_path(config.path))
    config.servers[name] = updated
    if make_default:
        config.settings.default_server = name
    save_config(config)
    removed = False
    if "username" in keys and entry.username is not None:
        removed = secrets.delete_password(name, env, credentials=credentials_path(config.path))
    return Edited(updated, keys, removed)


def _apply_unset(changes: dict[str, Any], unset: Iterable[str]) -> tuple[str, ...]:
    """Put each ``--unset`` key's default into ``changes``; refuse an empty value."""
    for key in ("username", "password_command", "oauth_token_command"):
        if changes.get(key) is not None and not str(changes[key]).strip():
            option = "--" + key.replace("_", "-")
            raise UsageError(f"{option} is empty; to remove {key} use --unset {key}")
    keys = parse_unset(unset)
    for key in keys:
        if key in changes:
            raise UsageError(f"--unset {key} and a new value for {key} cannot be combined")
        changes[key] = SERVER_KEYS[key].default
    return keys


def remove_server(
    config: Config, name: str, env: Mapping[str, str] | None = None, *, force: bool = False
) -> Removal:
    """Remove the entry, its per-user choices and its stored password.

    The default server: with one server left that one becomes the default; with
    several left, refused unless ``force`` (then there is no default).
    """
    config.server(name)
    default = config.settings.default_server
    remaining = sorted(n for n in config.servers if n != name)
    if default == name and len(remaining) > 1 and not force:
        raise ConfigError(
            f"server {name!r} is the default server; first choose another with "
            f"'cxsmtp server use NAME' ({', '.join(remaining)}), or add --force to "
            "remove it and leave no default"
        )
    users = tuple(sorted(addr for addr, server in config.users.items() if server == name))
    # Like its per-user choices, it leaves the fallback lists that name it (issue 14).
    relying = dependants(_fallback_lists(config), name)
    for other in relying:
        entry = config.servers[other]
        config.servers[other] = dataclasses.replace(
            entry, fallback=[n for n in entry.fallback if n != name]
        )
    del config.servers[name]
    for addr in users:
        del config.users[addr]
    new_default = None
    if default in (None, name) and len(remaining) == 1:
        new_default = config.settings.default_server = remaining[0]
    elif default == name:
        config.settings.default_server = None
    save_config(config)
    cleared = default == name and len(remaining) > 1
    removed = secrets.delete_password(name, env, credentials=credentials_path(config.path))
    return Removal(name, removed, users, new_default, cleared, relying)


def set_password(
    config: Config,
    name: str,
    password: str,
    env: Mapping[str, str] | None = None,
    store: secrets.StoreChoice | None = None,
) -> secrets.Stored:
    """Store in the keyring or the credentials file (``store``; default: see choose_store)."""
    _check_has_username(config, name)
    return secrets.store_password(
        name, password, env, credentials=credentials_path(config.path), choice=store
    )


def _check_has_username(config: Config, name: str) -> None:
    if config.server(name).username is None:
        raise ConfigError(
            f"server {name!r} has no username; set one with 'cxsmtp server edit {name} --username USER'"
        )


def password_target(
    config: Config, name: str, requested: str | None, env: Mapping[str, str] | None = None
) -> secrets.StoreChoice:
    """Where ``server password`` will store: checked before the password is asked for."""
    _check_has_username(config, name)
    return secrets.choose_store(name, requested, env)


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
    elif key in ("spool", "sendmail_mode", "retain_sent"):
        _set_spool_setting(config, key, value)
    elif key == "helo_name":  # "" returns to the automatic name (smtp/ehlo.py)
        helo = check_helo_name(value, "helo-name") if value.strip() else None
        config.settings.helo_name = helo
    elif key in ("ledger", "ledger_password_command"):
        _set_ledger_setting(config, key, value)
    else:
        raise UsageError(
            f"unknown setting {key!r}; known: email-send-limit, send-limit-window, "
            "default-server, nameservers, spool, sendmail-mode, retain-sent, helo-name, "
            "ledger, ledger-password-command"
        )
    save_config(config)


def _set_ledger_setting(config: Config, key: str, value: str) -> None:
    """issue 16: ``ledger`` (sqlite or a PostgreSQL URL without password) and the
    command that prints the ledger database's password ("" removes it)."""
    from carerix_smtp.config.ledger_url import check_ledger_url

    if key == "ledger":
        try:
            config.settings.ledger = check_ledger_url(value, "ledger")
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
    else:
        config.settings.ledger_password_command = value.strip() or None


def _set_spool_setting(config: Config, key: str, value: str) -> None:
    if key == "spool":
        if not value.strip():
            raise UsageError("spool must be a directory path, not empty")
        config.settings.spool = str(Path(value.strip()).expanduser().absolute())
    elif key == "sendmail_mode":
        if value.strip() not in SENDMAIL_MODES:
            raise UsageError(f"sendmail-mode must be queue or send, not {value!r}")
        config.settings.sendmail_mode = value.strip()
    else:
        config.settings.retain_sent = parse_duration(value, "retain-sent")


_DURATION_UNITS = {"d": 86_400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(value: str, what: str) -> float:
    """Durations: "30d", "12h", "90m", "45s" or plain seconds ("0" too) -> seconds."""
    text = value.strip().lower()
    unit = _DURATION_UNITS.get(text[-1:]) if text else None
    number = text[:-1] if unit is not None else text
    try:
        seconds = float(number) * (unit or 1.0)
    except ValueError:
        seconds = -1.0
    if not number or seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise UsageError(
            f"{what} must be a duration like 30d, 12h, 90m, 45s or seconds (0 or more), "
            f"not {value!r}"
        )
    return seconds


def describe_server(
    config: Config, entry: ServerEntry, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Effective values of an entry, for ``server show``/``list`` (never the password)."""
    env = os.environ if env is None else env
    endpoint = entry.endpoint
    credentials = credentials_path(config.path)
    source = (
        secrets.password_source(entry, env, credentials=credentials) if entry.username else "none"
    )
    if entry.oauth_token_command and entry.username:
        source = "oauth2"  # issue 14: the token command wins; no password is looked up
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
        "oauth_token_command": entry.oauth_token_command,  # OAUTHBEARER/XOAUTH2 when set
        "ca_file": entry.ca_file,
        "tls_verify": entry.tls_verify,
        "allow_plaintext_auth": entry.allow_plaintext_auth,
        "accepts_large_amounts": entry.accepts_large_amounts,
        "rate_per_hour": entry.effective_rate_per_hour,
        **_helo_shown(config, entry),
        "default": _is_default(config, entry),
        "users": sorted(addr for addr, name in config.users.items() if name == entry.name),
        "fallback": list(entry.fallback),  # issue 14: tried in this order
        "fallback_for": list(dependants(_fallback_lists(config), entry.name)),
        "account": entry.ledger_key,  # issue 16: the key of its limits in the rate ledger
    }
    for key in TUNABLE_KEYS:
        data.setdefault(key, getattr(entry, key))
    data.update(describe_preset(entry.preset, entry.name))
    return data


def _helo_shown(config: Config, entry: ServerEntry) -> dict[str, Any]:
    """The EHLO name and where it comes from: entry > settings > automatic (None)."""
    if entry.helo_name:
        return {"helo_name": entry.helo_name, "helo_name_from": "entry"}
    if config.settings.helo_name:
        return {"helo_name": config.settings.helo_name, "helo_name_from": "settings"}
    return {"helo_name": None, "helo_name_from": "automatic (this host's name or address)"}


def _is_default(config: Config, entry: ServerEntry) -> bool:
    if config.settings.default_server is not None:
        return config.settings.default_server == entry.name
    return len(config.servers) == 1


def describe_settings(config: Config) -> dict[str, Any]:
    from carerix_smtp.config.ledger_url import mask_url

    return {
        "config_file": str(config.path),
        "email_send_limit": config.settings.email_send_limit,
        "send_limit_window": config.settings.send_limit_window,
        "default_server": config.settings.default_server,
        "nameservers": config.settings.nameservers,
        "spool": config.settings.spool,
        "sendmail_mode": config.settings.sendmail_mode,
        "retain_sent": config.settings.retain_sent,
        "helo_name": config.settings.helo_name,
        # issue 16: which rate ledger (a URL's password masked) and whether a command gives
        # the database's password (never shown)
        "ledger": mask_url(config.settings.ledger),
        "ledger_password_command": config.settings.ledger_password_command,
        "servers": sorted(config.servers),
        "users": dict(sorted(config.users.items())),
    }
