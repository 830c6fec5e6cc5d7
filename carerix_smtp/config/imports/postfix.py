"""Postfix as a relay client (main.cf + its lookup tables) -> an import plan.

main.cf syntax (postconf(5)): ``name = value``; a line that starts with white space
continues the one before; a line whose first non-blank character is ``#`` is a
comment; ``$name``/``${name}``/``$(name)`` refer to other parameters.  Tables
(``hash:``, ``lmdb:``, ``btree:``, ``cdb:``, ``texthash:``) are read from their
source text file (the one ``postmap`` compiles): ``key  value`` per line.

TLS, decided here: ``smtp_tls_wrappermode = yes`` -> ssl; ``none`` -> none;
``may`` -> auto (STARTTLS when offered; required on 587 or with a password);
``encrypt`` and every level above it -> starttls (certificate verified, always);
not set -> auto (Postfix would not use TLS at all; cxsmtp's port rule is safer).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carerix_smtp.config.hosts import parse_host
from carerix_smtp.config.imports.plan import (
    ImportPlan,
    PlannedServer,
    entry_name,
    helo_name,
    make_entry,
)
from carerix_smtp.errors import ConfigError, CxsmtpError, InputError

DEFAULT_CONFIG_DIR = Path("/etc/postfix")
SOURCE_TABLES = ("hash", "btree", "lmdb", "cdb", "dbm", "sdbm", "texthash")
SERVICE_PORTS = {"smtp": 25, "submission": 587, "smtps": 465, "submissions": 465}
SECURITY_BY_LEVEL = {
    "none": "none",
    "may": "auto",
    "encrypt": "starttls",
    "dane": "starttls",
    "dane-only": "starttls",
    "fingerprint": "starttls",
    "verify": "starttls",
    "secure": "starttls",
}
LEVEL_NOTES = {
    "encrypt": "cxsmtp also verifies the relay's certificate (Postfix's encrypt does not)",
    "dane": "DANE is not supported; the certificate is verified against CAs",
    "dane-only": "DANE is not supported; the certificate is verified against CAs",
    "fingerprint": "fingerprints are not supported; the certificate is verified against CAs",
    "may": "auto: STARTTLS when offered, required on port 587 or with a password",
}
NOT_CARRIED = {
    "smtp_tls_policy_maps": "per-destination TLS policies are not supported",
    "transport_maps": "per-domain transports are not supported",
    "smtp_tls_CApath": "a CA directory is not supported; use ca_file",
    "smtp_tls_cert_file": "TLS client certificates are not supported",
    "smtp_sasl_mechanism_filter": "cxsmtp chooses the mechanism the server offers",
    "smtp_bind_address": "a source address is not supported",
}
_REFERENCE = re.compile(r"\$(?:\{(\w+)\}|\((\w+)\)|(\w+))")


def parse_main_cf(text: str) -> dict[str, str]:
    """``name = value`` pairs, continuation lines joined with a space."""
    params: dict[str, str] = {}
    last: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line[0].isspace() and last is not None:
            params[last] = f"{params[last]} {stripped}".strip()
            continue
        name, eq, value = stripped.partition("=")
        if eq:
            last = name.strip()
            params[last] = value.strip()
    return params


def expand(value: str, params: dict[str, str], depth: int = 0) -> str:
    """``$name`` and ``${name}`` from ``params``; unknown names are left as written."""
    if depth > 10:
        return value

    def one(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name not in params:
            return match.group(0)
        return expand(params[name], params, depth + 1)

    return _REFERENCE.sub(one, value)


def parse_table(text: str) -> dict[str, str]:
    """postmap's source format: ``key value``; keys lower-cased (as postmap does)."""
    table: dict[str, str] = {}
    last: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line[0].isspace() and last is not None:
            table[last] = f"{table[last]} {stripped}"
            continue
        key, *value = stripped.split(None, 1)
        last = key.lower()
        table[last] = value[0].strip() if value else ""
    return table


def split_list(value: str) -> list[str]:
    """Postfix lists: separated by commas and/or white space."""
    return [item for item in re.split(r"[\s,]+", value) if item]


@dataclass
class PostfixConfig:
    """main.cf's parameters (expanded on read) and the tables it names."""

    config_dir: Path
    params: dict[str, str]
    plan: ImportPlan
    tables: dict[str, dict[str, str]] = field(default_factory=dict)

    def get(self, name: str, default: str = "") -> str:
        return expand(self.params.get(name, default), self.params).strip()

    def flag(self, name: str) -> bool:
        return self.get(name, "no").lower() == "yes"

    def lookup(self, parameter: str, keys: list[str]) -> str | None:
        """The first table of ``parameter`` with one of ``keys`` (tried in order)."""
        for spec in split_list(self.get(parameter)):
            table = self._table(parameter, spec)
            for key in keys:
                if key.lower() in table:
                    return table[key.lower()]
        return None

    def table(self, parameter: str) -> dict[str, str]:
        merged: dict[str, str] = {}
        for spec in reversed(split_list(self.get(parameter))):
            merged.update(self._table(parameter, spec))
        return merged

    def _table(self, parameter: str, spec: str) -> dict[str, str]:
        if spec not in self.tables:
            self.tables[spec] = self._read_table(parameter, spec)
        return self.tables[spec]

    def _read_table(self, parameter: str, spec: str) -> dict[str, str]:
        kind, _, name = spec.partition(":")
        if kind not in SOURCE_TABLES or not name:
            self.plan.note(f"{parameter}: {spec} is not a file table; not carried over")
            return {}
        path = self._locate(Path(name))
        try:
            return parse_table(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            compiled = " (only the compiled table is there)" if _has_compiled(path) else ""
            raise InputError(
                f"{parameter}: cannot read the source file {path}{compiled}; "
                "the import reads the text file that postmap compiles"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise InputError(f"{parameter}: {path}: cannot read: {reason}") from None

    def _locate(self, path: Path) -> Path:
        """A table named under /etc/postfix is read from --config-dir when that differs."""
        if not path.is_absolute():
            return self.config_dir / path
        if self.config_dir != DEFAULT_CONFIG_DIR and path.is_relative_to(DEFAULT_CONFIG_DIR):
            moved = self.config_dir / path.relative_to(DEFAULT_CONFIG_DIR)
            if moved.exists() or not path.exists():
                return moved
        return path


def _has_compiled(path: Path) -> bool:
    return any(path.with_name(path.name + ext).exists() for ext in (".db", ".lmdb", ".cdb"))


def read_postfix(
    config_dir: Path = DEFAULT_CONFIG_DIR, *, allow_plaintext_auth: bool = False
) -> ImportPlan:
    """relayhost (+ extra destinations), sender-dependent relays and fallback relays
    each become an entry named after the host; passwords from smtp_sasl_password_maps."""
    config_dir = config_dir.absolute()
    main_cf = config_dir / "main.cf"
    try:
        text = main_cf.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(
            f"{main_cf}: no such file; give Postfix's directory with --config-dir"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise InputError(f"{main_cf}: cannot read: {reason}") from None
    params = parse_main_cf(text)
    params["config_directory"] = str(config_dir)  # the copy being read, wherever it is
    postfix = PostfixConfig(config_dir, params, ImportPlan(source=str(main_cf)))
    return _plan(postfix, allow_plaintext_auth)


def _plan(postfix: PostfixConfig, allow_plaintext_auth: bool) -> ImportPlan:
    plan = postfix.plan
    primary = split_list(postfix.get("relayhost"))
    senders = _sender_relays(postfix)
    fallbacks = primary[1:] + split_list(postfix.get("smtp_fallback_relay"))
    if not primary and not senders:
        raise ConfigError(
            f"{plan.source}: relayhost and sender_dependent_relayhost_maps are empty: Postfix "
            "sends straight to each recipient's MX host, which cxsmtp does not do; nothing to import"
        )
    names: dict[str, str] = {}
    relays = list(dict.fromkeys(primary[:1] + list(senders.values()) + fallbacks))
    for relay in relays:
        names[relay] = entry_name(_host_of(_relay_host(relay), plan), set(names.values()))
    fallback_names = [names[r] for r in dict.fromkeys(fallbacks)]
    for relay in relays:
        own = [] if relay in fallbacks else [n for n in fallback_names if n != names[relay]]
        plan.servers.append(_server(postfix, relay, names[relay], own, allow_plaintext_auth))
    if primary:
        plan.default = names[primary[0]]
    else:
        plan.note("relayhost is empty: mail from other senders needs a default server "
                  "('cxsmtp server use NAME')")  # fmt: skip
    for address, relay in senders.items():
        plan.add_user(address, names[relay], "sender_dependent_relayhost_maps")
    _note_not_carried(postfix)
    return plan


def _host_of(relay: str, plan: ImportPlan) -> str:
    try:
        return parse_host(relay).host
    except CxsmtpError as exc:
        raise ConfigError(f"{plan.source}: relay {relay!r}: {exc}") from None


def _relay_host(relay: str) -> str:
    """``[smtp.example.com]:submission`` -> ``[smtp.example.com]:587``; else as written."""
    host, colon, port = relay.rpartition(":")
    if colon and port.lower() in SERVICE_PORTS and not host.endswith(":"):
        return f"{host}:{SERVICE_PORTS[port.lower()]}"
    return relay


def _sender_relays(postfix: PostfixConfig) -> dict[str, str]:
    """address -> relay from sender_dependent_relayhost_maps (addresses only)."""
    out: dict[str, str] = {}
    parameter = "sender_dependent_relayhost_maps"
    for key, value in postfix.table(parameter).items():
        relay = value.strip()
        if key.startswith("@") or "@" not in key:
            postfix.plan.note(f"{parameter}: {key} is not one address; not carried over "
                              "(the users map takes addresses)")  # fmt: skip
        elif relay.upper() == "DUNNO" or not relay:
            continue
        else:
            out[key] = _relay_host(relay)
    return out


def _server(
    postfix: PostfixConfig, relay: str, name: str, fallback: list[str], allow_plaintext: bool
) -> PlannedServer:
    host = _relay_host(relay)
    fields: dict[str, Any] = {"host": host, "security": _security(postfix)}
    if fallback:
        fields["fallback"] = fallback
    fields.update(_names_and_files(postfix))
    password = _credentials(postfix, relay, host, fields)
    where = f"{postfix.plan.source}: relay {relay}"
    if fields["security"] == "none" and "username" in fields:
        if not allow_plaintext:
            raise ConfigError(
                f"{where}: smtp_tls_security_level = none with a SASL password would send it "
                "unencrypted; import with --allow-plaintext-auth if you really mean it"
            )
        fields["allow_plaintext_auth"] = True
    return PlannedServer(make_entry(where, name, fields), f"relay {relay}", password)


def _names_and_files(postfix: PostfixConfig) -> dict[str, str]:
    """helo_name from smtp_helo_name, ca_file from smtp_tls_CAfile (as Postfix reads them)."""
    fields: dict[str, str] = {}
    helo = postfix.get("smtp_helo_name")
    if "$" in helo:
        postfix.plan.note(
            f"smtp_helo_name = {helo}: not set in main.cf; cxsmtp's EHLO name is used"
        )
    elif helo:
        checked = helo_name(postfix.plan, "main.cf", "smtp_helo_name", helo)
        fields.update({"helo_name": checked} if checked else {})
    ca_file = postfix.get("smtp_tls_CAfile")
    if ca_file:
        fields["ca_file"] = ca_file
        if not Path(ca_file).exists():
            postfix.plan.note(f"smtp_tls_CAfile {ca_file} does not exist here yet")
    return fields


def _security(postfix: PostfixConfig) -> str:
    if postfix.flag("smtp_tls_wrappermode"):
        return "ssl"
    level = postfix.get("smtp_tls_security_level").lower()
    if not level:
        level = "encrypt" if postfix.flag("smtp_enforce_tls") else ""
        level = level or ("may" if postfix.flag("smtp_use_tls") else "")
    if not level:
        postfix.plan.note("smtp_tls_security_level is not set (Postfix: no TLS); "
                          "imported as auto (cxsmtp's rule by port)")  # fmt: skip
        return "auto"
    if level not in SECURITY_BY_LEVEL:
        raise ConfigError(f"{postfix.plan.source}: smtp_tls_security_level {level!r} is unknown; "
                          f"known: {', '.join(SECURITY_BY_LEVEL)}")  # fmt: skip
    if level in LEVEL_NOTES:
        postfix.plan.note(f"smtp_tls_security_level = {level}: {LEVEL_NOTES[level]}")
    return SECURITY_BY_LEVEL[level]


def _credentials(
    postfix: PostfixConfig, relay: str, host: str, fields: dict[str, Any]
) -> str | None:
    """``[host]:port user:password`` looked up as the relay is written, then by host."""
    parameter = "smtp_sasl_password_maps"
    if not postfix.get(parameter):
        return None
    if not postfix.flag("smtp_sasl_auth_enable"):
        postfix.plan.note(f"{parameter} is set but smtp_sasl_auth_enable is not yes: "
                          "no passwords imported")  # fmt: skip
        return None
    bare = parse_host(host).host
    value = postfix.lookup(parameter, [relay, host, bare])
    if value is None:
        return None
    username, colon, password = value.partition(":")
    fields["username"] = username
    if not colon or not password:
        postfix.plan.note(f"{parameter}: {relay} has no password after 'user:'")
        return None
    return password


def _note_not_carried(postfix: PostfixConfig) -> None:
    for parameter, why in NOT_CARRIED.items():
        if postfix.get(parameter):
            postfix.plan.note(f"{parameter} not carried over ({why})")
    if postfix.flag("smtp_sender_dependent_authentication"):
        postfix.plan.note("smtp_sender_dependent_authentication: per-sender passwords are not "
                          "carried over (one login per server entry)")  # fmt: skip
