"""msmtp's configuration file -> an import plan.

Syntax as msmtp reads it (src/conf.c, msmtp(1) "CONFIGURATION FILES"): one command
and its argument per line; a line whose first non-blank character is ``#`` is a
comment; an argument wholly enclosed in double quotes loses them (no escapes); an
empty argument of an on/off command means on.  ``defaults`` sets values for the
accounts that follow; ``account NAME : A, B`` starts from the defaults, then takes
every setting that A, then B, set (explicitly or by their own inheritance); a
command before any ``account`` belongs to an account named ``default``.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carerix_smtp.config.imports.plan import (
    ImportPlan,
    PlannedServer,
    entry_name,
    helo_name,
    make_entry,
)
from carerix_smtp.errors import ConfigError, InputError

# msmtp(1) "port": 25, or 465 with TLS without STARTTLS.
SMTP_PORT, SMTPS_PORT = 25, 465
OAUTH_METHODS = ("oauthbearer", "xoauth2")
# Methods that need no password from us; cxsmtp cannot do them.
UNSUPPORTED_AUTH = ("external", "gssapi", "ntlm")
HANDLED = {
    "host", "port", "tls", "tls_starttls", "auth", "user", "password", "passwordeval",
    "tls_trust_file", "tls_certcheck", "from", "domain", "protocol",
}  # fmt: skip
WHY_NOT = {
    "tls_fingerprint": "cxsmtp verifies the certificate against CAs (ca_file), not a fingerprint",
    "tls_cert_file": "TLS client certificates are not supported",
    "tls_key_file": "TLS client certificates are not supported",
    "tls_crl_file": "CRL files are not supported",
    "proxy_host": "SOCKS proxies are not supported",
    "proxy_port": "SOCKS proxies are not supported",
    "timeout": "cxsmtp's timeouts follow RFC 5321 (set them with 'server edit --set')",
    "logfile": "cxsmtp logs to stderr and the spool's delivery log",
    "syslog": "cxsmtp logs to stderr and the spool's delivery log",
}
# Characters that need msmtp's shell (it runs passwordeval with popen).
_SHELL_CHARS = frozenset("|&;<>()$`\\\"'*?[]#~=%{}!\n")


@dataclass
class Account:
    """An account as msmtp resolves it: ``values`` in effect, ``explicit`` the settings
    that another account inheriting from this one takes over (msmtp's mask)."""

    name: str
    line: int
    values: dict[str, str] = field(default_factory=dict)
    explicit: dict[str, str] = field(default_factory=dict)
    bases: tuple[str, ...] = ()
    own: set[str] = field(default_factory=set)  # commands in this account's own lines

    def set(self, command: str, argument: str) -> None:
        self.values[command] = argument
        self.explicit[command] = argument
        self.own.add(command)


def find_msmtprc(env: Mapping[str, str] | None = None) -> Path:
    """``~/.msmtprc``, then ``$XDG_CONFIG_HOME/msmtp/config`` (msmtp's own order)."""
    env = os.environ if env is None else env
    home = Path(env.get("HOME") or Path.home())
    xdg = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
    candidates = [home / ".msmtprc", xdg / "msmtp" / "config"]
    for path in candidates:
        if path.is_file():
            return path
    tried = " and ".join(str(p) for p in candidates)
    raise InputError(f"no msmtp configuration found: tried {tried}; give the file as FILE")


def split_line(line: str) -> tuple[str, str] | None:
    """``'  passwordeval "pass x" '`` -> ``("passwordeval", "pass x")``; None for a comment."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    command, *rest = text.split(None, 1)
    argument = rest[0].strip() if rest else ""
    if len(argument) >= 2 and argument[0] == argument[-1] == '"':
        argument = argument[1:-1]
    return command, argument


def parse_accounts(text: str, where: str) -> tuple[list[Account], list[str]]:
    """Accounts in file order, and notes about lines not carried over (``eval``)."""
    defaults = Account("", 0)
    accounts: dict[str, Account] = {}
    notes: list[str] = []
    current: Account | None = None
    for number, line in enumerate(text.splitlines(), 1):
        parsed = split_line(line)
        if parsed is None:
            continue
        command, argument = parsed
        if command == "eval":
            notes.append(f"line {number}: eval is not run by the import; set that value by hand")
            continue
        if command == "defaults":
            current = defaults
        elif command == "account":
            current = _start_account(argument, number, defaults, accounts, where)
            accounts[current.name] = current
        else:
            if current is None:  # msmtp 1.2 compatibility: an unnamed first account
                current = accounts["default"] = Account("default", number, dict(defaults.values))
            current.set(command, argument)
    return list(accounts.values()), notes


def _start_account(
    argument: str, number: int, defaults: Account, accounts: dict[str, Account], where: str
) -> Account:
    name, colon, bases_text = argument.partition(":")
    name = name.strip().strip('"')
    if not name:
        raise ConfigError(f"{where}:{number}: account needs a name")
    if name in accounts:
        raise ConfigError(f"{where}:{number}: account {name!r} was already defined")
    bases = tuple(b.strip().strip('"') for b in bases_text.split(",")) if colon else ()
    account = Account(name, number, dict(defaults.values), bases=bases)
    for base in bases:
        if base not in accounts:
            raise ConfigError(
                f"{where}:{number}: account {name!r} inherits from {base!r}, "
                "which is not (yet) defined above it"
            )
        account.values.update(accounts[base].explicit)
        account.explicit.update(accounts[base].explicit)
    return account


def is_on(value: str | None, default: bool) -> bool:
    if value is None:
        return default
    return value.strip().lower() in ("", "on")


def command_without_shell(command: str) -> str:
    """passwordeval runs in a shell, password_command does not: wrap when it must."""
    command = command.strip()
    if any(ch in _SHELL_CHARS for ch in command):
        return "sh -c " + shlex.quote(command)
    return command


@dataclass(frozen=True)
class _Options:
    allow_insecure: bool
    allow_plaintext_auth: bool
    env: Mapping[str, str]


def read_msmtprc(
    path: Path,
    *,
    allow_insecure: bool = False,
    allow_plaintext_auth: bool = False,
    env: Mapping[str, str] | None = None,
) -> ImportPlan:
    """Every account with a host becomes an entry; ``account default : NAME`` the default."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise InputError(f"{path}: cannot read: {reason}") from None
    accounts, notes = parse_accounts(text, str(path))
    plan = ImportPlan(source=str(path), notes=notes)
    options = _Options(allow_insecure, allow_plaintext_auth, env or os.environ)
    names: dict[str, str] = {}
    default = next((a for a in accounts if a.name == "default"), None)
    for account in accounts:
        if account is default and not account.own and len(account.bases) == 1:
            continue  # ``account default : NAME`` only names the default
        planned = _convert(account, plan, options, names)
        if planned is not None:
            plan.servers.append(planned)
    if default is not None:
        target = default.bases[0] if not default.own and len(default.bases) == 1 else "default"
        plan.default = names.get(target)
    _carry_from(accounts, plan, names)
    return plan


def _convert(
    account: Account, plan: ImportPlan, options: _Options, names: dict[str, str]
) -> PlannedServer | None:
    origin = f"account {account.name!r}"
    values = account.values
    if "host" not in values:
        plan.note(f"{origin}: no host (a base for other accounts?); not imported")
        return None
    if values.get("protocol", "smtp").lower() != "smtp":
        plan.note(f"{origin}: protocol {values['protocol']} is not supported; not imported")
        return None
    name = entry_name(account.name, set(names.values()))
    if name != account.name:
        plan.note(f"{origin}: imported as {name!r} (server names use letters, digits, - _ .)")
    fields, password = _fields(values, origin, plan, options)
    where = f"{plan.source}: {origin}"
    _check_plaintext(fields, where, options)
    _note_unhandled(account, plan, origin)
    entry = make_entry(where, name, fields)
    names[account.name] = name
    return PlannedServer(entry, origin, password)


def _fields(
    values: dict[str, str], origin: str, plan: ImportPlan, options: _Options
) -> tuple[dict[str, Any], str | None]:
    tls = is_on(values.get("tls"), False)
    starttls = is_on(values.get("tls_starttls"), True)
    security = ("starttls" if starttls else "ssl") if tls else "none"
    port = values.get("port") or str(SMTPS_PORT if security == "ssl" else SMTP_PORT)
    # Brackets: msmtp connects to the host itself, never to its MX hosts.
    fields: dict[str, Any] = {"host": f"[{values['host']}]:{port}", "security": security}
    if values.get("domain"):
        helo = helo_name(plan, origin, "domain", values["domain"])
        fields.update({"helo_name": helo} if helo else {})
    if tls:
        _tls_fields(values, origin, plan, options, fields)
    return fields, _auth_fields(values, origin, plan, fields)


def _tls_fields(
    values: dict[str, str],
    origin: str,
    plan: ImportPlan,
    options: _Options,
    fields: dict[str, Any],
) -> None:
    trust = values.get("tls_trust_file", "system")
    if trust and trust != "system":
        ca_file = fields["ca_file"] = _home(trust, options)
        if not Path(ca_file).exists():
            plan.note(f"{origin}: tls_trust_file {ca_file} does not exist here yet")
    elif not trust:
        plan.note(f"{origin}: an empty tls_trust_file is not carried over (CAs are trusted)")
    if not is_on(values.get("tls_certcheck"), True):
        if not options.allow_insecure:
            raise ConfigError(
                f"{plan.source}: {origin}: tls_certcheck off turns certificate checks off; "
                "cxsmtp verifies certificates: remove that line, or import with "
                "--allow-insecure to keep them off (warned on every connection)"
            )
        fields["tls_verify"] = False
        plan.note(f"{origin}: certificate checks are OFF (tls_certcheck off, --allow-insecure)")


def _home(path: str, options: _Options) -> str:
    home = options.env.get("HOME") or str(Path.home())
    return home + path[1:] if path.startswith("~/") or path == "~" else path


def _auth_fields(
    values: dict[str, str], origin: str, plan: ImportPlan, fields: dict[str, Any]
) -> str | None:
    """username, password_command / oauth_token_command; the password to store."""
    method = values.get("auth", "off").strip().lower() or "on"
    secrets = [k for k in ("user", "password", "passwordeval") if values.get(k)]
    if method == "off":
        if secrets:
            plan.note(f"{origin}: auth is off, so {', '.join(secrets)} not carried over")
        return None
    if method in UNSUPPORTED_AUTH:
        plan.note(f"{origin}: auth {method} is not supported; imported without authentication")
        return None
    if method not in ("on", *OAUTH_METHODS):
        plan.note(f"{origin}: auth {method}: cxsmtp chooses the mechanism the server offers")
    if values.get("user"):
        fields["username"] = values["user"]
    elif method not in OAUTH_METHODS:
        plan.note(f"{origin}: auth without user: imported without authentication")
        return None
    command = values.get("passwordeval")
    if method in OAUTH_METHODS:
        if command:
            fields["oauth_token_command"] = command_without_shell(command)
        else:
            plan.note(f"{origin}: auth {method} without passwordeval: a fixed token expires; "
                      "set oauth_token_command with 'cxsmtp server edit'")  # fmt: skip
        return None
    if command:
        fields["password_command"] = command_without_shell(command)
        return None
    if values.get("password"):
        return values["password"]
    plan.note(f"{origin}: no password in the file (msmtp asks the keyring, ~/.netrc or you); "
              "set it with 'cxsmtp server password NAME'")  # fmt: skip
    return None


def _check_plaintext(fields: dict[str, Any], where: str, options: _Options) -> None:
    """msmtp without TLS uses only SCRAM; cxsmtp would send the password as it is."""
    if fields["security"] == "none" and "username" in fields:
        if not options.allow_plaintext_auth:
            raise ConfigError(
                f"{where}: tls is off and the account authenticates: cxsmtp would send "
                "the password unencrypted; turn tls on in the file, or import with "
                "--allow-plaintext-auth"
            )
        fields["allow_plaintext_auth"] = True


def _note_unhandled(account: Account, plan: ImportPlan, origin: str) -> None:
    for command in account.values:
        if command in HANDLED:
            continue
        who = origin if command in account.explicit else "defaults"
        why = WHY_NOT.get(command, "no cxsmtp equivalent")
        plan.note(f"{who}: {command} not carried over ({why})")


def _carry_from(accounts: list[Account], plan: ImportPlan, names: dict[str, str]) -> None:
    """``from`` -> the users map; msmtp's patterns (``*?[`` and ``%U``…) are skipped."""
    for account in accounts:
        address = account.values.get("from", "").strip()
        if not address or account.name not in names:
            continue
        origin = f"account {account.name!r}"
        if any(ch in address for ch in "*?[%"):
            plan.note(f"{origin}: from {address!r} is a pattern; the users map takes "
                      "addresses only ('cxsmtp server use NAME --user ADDRESS')")  # fmt: skip
            continue
        plan.add_user(address, names[account.name], origin)
