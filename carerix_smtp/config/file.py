"""The configuration file: load, validate, save.

One TOML file (tomllib to read, tomli-w to write)::

    [settings]
    email_send_limit = 10000        # seed: Maintenance > Settings > emailSendLimit
    default_server = "xs4all"

    [servers.xs4all]
    host = "[smtp.xs4all.nl]:587"   # as written; see config/hosts.py
    username = "jan"
    accepts_large_amounts = true     # seed: 6,000 instead of 1,200 emails an hour

    [users."alice@example.com"]
    server = "xs4all"               # seed: My account > Outgoing mail server

Path: ``--config``, else ``CXSMTP_CONFIG``, else the platform's user config dir.
Written atomically (temp file in the same directory, fsync, rename), mode 0600.
Passwords are never stored here (see config/passwords.py).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from carerix_smtp.config.dkim import DkimKey, dkim_from_dict, dkim_to_dict
from carerix_smtp.config.fallbacks import check_fallbacks
from carerix_smtp.config.hosts import Endpoint, parse_host
from carerix_smtp.config.tls import Security, TlsMode, check_plaintext_auth, security_for_port
from carerix_smtp.errors import ConfigError, CxsmtpError, UnknownServerError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

APP_NAME = "cxsmtp"
CONFIG_ENV = "CXSMTP_CONFIG"
STATE_ENV = "CXSMTP_STATE_DIR"

# seed: "1.200 emails an hour", "6.000 units an hour" with "Accepts large amounts of email"
DEFAULT_RATE = 1200
LARGE_RATE = 6000
# seed: "every 5 minutes 500 emails ... if the batch is maximum 80 Mb"
DEFAULT_BATCH_MESSAGES = 500
DEFAULT_BATCH_BYTES = 80_000_000
DEFAULT_BATCH_INTERVAL = 300.0
# seed: "needs to be able to send every batch within 1 minute"
DEFAULT_BATCH_DEADLINE = 60.0
# seed: emailSendLimit "default setting 10.000"
DEFAULT_SEND_LIMIT = 10_000
DEFAULT_RETAIN_SENT = 30 * 86_400.0
SENDMAIL_MODES = ("queue", "send")


@dataclass
class ServerEntry:
    """One "Other SMTP server" entry.  Field names are the TOML keys."""

    name: str
    host: str
    username: str | None = None
    accepts_large_amounts: bool = False
    security: Security = Security.AUTO
    ca_file: str | None = None
    tls_verify: bool = True
    allow_plaintext_auth: bool = False
    password_command: str | None = None
    rate_per_hour: int | None = None
    rate_window: float = 3600.0
    batch_max_messages: int = DEFAULT_BATCH_MESSAGES
    batch_max_bytes: int = DEFAULT_BATCH_BYTES
    batch_interval: float = DEFAULT_BATCH_INTERVAL
    batch_deadline: float = DEFAULT_BATCH_DEADLINE
    connections: int = 1
    # RFC 5321 §4.5.3.2: 5 minutes per command, 10 minutes for the end of data.
    connect_timeout: float = 30.0
    command_timeout: float = 300.0
    data_timeout: float = 600.0
    # Postfix: minimal_backoff_time 300 s, maximal_backoff_time 4000 s, 5 days in queue.
    retry_initial: float = 300.0
    retry_max: float = 4000.0
    max_queue_age: float = 432_000.0
    # issue 14: the provider's daily limit for this server (messages per rolling 24 h),
    # e.g. from a preset; None = only the global email_send_limit.
    daily_limit: int | None = None
    # issue 14: OAuth2 (a command that prints a current access token, like msmtp's
    # passwordeval with "auth oauthbearer"), fallback relays in order, the EHLO name,
    # and the preset an entry was made from (its limits' sources for ``server show``).
    oauth_token_command: str | None = None
    fallback: list[str] = field(default_factory=list)
    helo_name: str | None = None
    preset: str | None = None
    # issue 16: the provider account whose limits this entry shares (the rate ledger's
    # key); entries of several hosts, whatever their names, with one account share them.
    account: str | None = None

    @property
    def ledger_key(self) -> str:
        """The key of this entry's limits in the rate ledger: the account, else the name."""
        return self.account or self.name

    @property
    def endpoint(self) -> Endpoint:
        return parse_host(self.host)

    @property
    def effective_rate_per_hour(self) -> int:
        if self.rate_per_hour is not None:
            return self.rate_per_hour
        return LARGE_RATE if self.accepts_large_amounts else DEFAULT_RATE

    def tls_mode(self, has_password: bool) -> TlsMode:
        return security_for_port(self.endpoint.port, self.security, has_password)

    @property
    def expects_password(self) -> bool:
        return self.username is not None


@dataclass
class Settings:
    email_send_limit: int = DEFAULT_SEND_LIMIT
    send_limit_window: float = 86_400.0
    default_server: str | None = None
    nameservers: list[str] = field(default_factory=list)
    # The spool used when a command names none (cxsmtp send, sendmail); see config/spool_path.py.
    spool: str | None = None
    # What `cxsmtp sendmail` does after queuing: "queue" (leave it for cron) or "send" (a run now).
    sendmail_mode: str = "queue"
    # How long sent messages stay in the spool (seconds); 0 = remove them at once.
    retain_sent: float = DEFAULT_RETAIN_SENT
    helo_name: str | None = None  # issue 14: the EHLO name of entries without their own
    # issue 16: "sqlite" (the state dir's file) or a PostgreSQL URL without password
    # (config/ledger_url.py); CXSMTP_LEDGER_URL wins.  The password: libpq's
    # PGPASSWORD/PGPASSFILE, or this command's first output line.
    ledger: str = "sqlite"
    ledger_password_command: str | None = None


@dataclass
class Config:
    path: Path
    settings: Settings = field(default_factory=Settings)
    servers: dict[str, ServerEntry] = field(default_factory=dict)
    users: dict[str, str] = field(default_factory=dict)
    dkim: dict[str, DkimKey] = field(default_factory=dict)  # by domain (config/dkim.py)

    def server(self, name: str) -> ServerEntry:
        try:
            return self.servers[name]
        except KeyError:
            known = ", ".join(sorted(self.servers)) or "none yet; add one with 'cxsmtp server add'"
            raise UnknownServerError(
                f"no server named {name!r} in {self.path} (known: {known})"
            ) from None

    def default(self) -> ServerEntry:
        name = self.settings.default_server
        if name is None:
            if len(self.servers) == 1:
                return next(iter(self.servers.values()))
            if not self.servers:
                raise ConfigError(
                    f"no server configured in {self.path}; add one with 'cxsmtp server add NAME HOST'"
                )
            raise ConfigError(
                f"no default server in {self.path}; choose one with 'cxsmtp server use NAME'"
            )
        return self.server(name)

    def server_for_sender(self, address: str | None) -> ServerEntry:
        """The per-user choice for this From address (seed: My account), else the default."""
        if address:
            name = self.users.get(normalise_address(address))
            if name is not None:
                return self.server(name)
        return self.default()


def normalise_address(address: str) -> str:
    """Key for [users]: trimmed, the domain lower-cased (the local part keeps its case)."""
    address = address.strip()
    local, at, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}" if at else address


# --- paths ---------------------------------------------------------------


def resolve_config_path(
    explicit: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Path:
    env = os.environ if env is None else env
    if explicit:
        return Path(explicit).expanduser()
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV]).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME)) / "config.toml"


def resolve_state_dir(
    explicit: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Path:
    env = os.environ if env is None else env
    if explicit:
        return Path(explicit).expanduser()
    if env.get(STATE_ENV):
        return Path(env[STATE_ENV]).expanduser()
    import platformdirs

    return Path(platformdirs.user_state_dir(APP_NAME))


# --- validation ----------------------------------------------------------

SERVER_KEYS = {f.name: f for f in dataclasses.fields(ServerEntry) if f.name != "name"}
_SETTINGS_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}

# key -> (type, minimum) for numbers; minimum None = no lower bound check
INT_KEYS = {
    "rate_per_hour": 1,
    "daily_limit": 1,
    "batch_max_messages": 1,
    "batch_max_bytes": 1,
    "connections": 1,
    "email_send_limit": 0,
}
FLOAT_KEYS = {
    "rate_window": 1.0,
    "batch_interval": 0.0,
    "batch_deadline": 0.1,
    "connect_timeout": 0.1,
    "command_timeout": 0.1,
    "data_timeout": 0.1,
    "retry_initial": 0.0,
    "retry_max": 0.0,
    "max_queue_age": 0.0,
    "send_limit_window": 1.0,
    "retain_sent": 0.0,
}
_BOOL_KEYS = {"accepts_large_amounts", "tls_verify", "allow_plaintext_auth"}
_STR_KEYS = {
    "host",
    "username",
    "ca_file",
    "password_command",
    "default_server",
    "oauth_token_command",
    "helo_name",
    "preset",
    "spool",
    "account",
    "ledger_password_command",
}


def _convert(where: str, key: str, value: Any) -> Any:
    if key in _BOOL_KEYS:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be true or false, not {value!r}")
        return value
    if key in INT_KEYS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {key} must be a whole number, not {value!r}")
        if value < INT_KEYS[key]:
            raise ConfigError(f"{where}: {key} must be at least {INT_KEYS[key]}, not {value}")
        return value
    if key in FLOAT_KEYS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: {key} must be a number of seconds, not {value!r}")
        if value < FLOAT_KEYS[key]:
            raise ConfigError(f"{where}: {key} must be at least {FLOAT_KEYS[key]}, not {value}")
        return float(value)
    if key in _STR_KEYS:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where}: {key} must be a non-empty string, not {value!r}")
        return value.strip()
    if key == "security":
        try:
            return Security(str(value).lower())
        except ValueError:
            raise ConfigError(
                f"{where}: security must be one of auto, ssl, starttls, none, not {value!r}"
            ) from None
    if key == "ledger":
        from carerix_smtp.config.ledger_url import check_ledger_url

        if not isinstance(value, str):
            raise ConfigError(f"{where}: ledger must be a string, not {value!r}")
        return check_ledger_url(value, f"{where}: ledger")
    if key == "sendmail_mode":
        if value not in SENDMAIL_MODES:
            raise ConfigError(f"{where}: sendmail_mode must be queue or send, not {value!r}")
        return value
    if key == "nameservers":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f'{where}: nameservers must be a list of "IP" or "IP:PORT" strings')
        return list(value)
    if key == "fallback":
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{where}: fallback must be a list of server names")
        return list(value)
    raise AssertionError(key)  # pragma: no cover


def _table(where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a table")
    return value


def server_from_dict(name: str, data: Mapping[str, Any], where: str) -> ServerEntry:
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in SERVER_KEYS:
            raise ConfigError(
                f"{where}: unknown key {key!r}; known keys: {', '.join(sorted(SERVER_KEYS))}"
            )
        kwargs[key] = _convert(where, key, value)
    if "host" not in kwargs:
        raise ConfigError(f"{where}: host is missing")
    try:
        parse_host(kwargs["host"])
    except CxsmtpError as exc:
        raise ConfigError(f"{where}: host: {exc}") from None
    entry = ServerEntry(name=name, **kwargs)
    try:
        check_plaintext_auth(entry.security, entry.allow_plaintext_auth, entry.expects_password)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return entry


def config_from_dict(path: Path, data: Mapping[str, Any]) -> Config:
    config = Config(path=path)
    for section, value in data.items():
        if section == "settings":
            settings: dict[str, Any] = {}
            for key, item in _table(f"{path}: [settings]", value).items():
                where = f"{path}: [settings]"
                if key not in _SETTINGS_FIELDS:
                    known = ", ".join(sorted(_SETTINGS_FIELDS))
                    raise ConfigError(f"{where}: unknown key {key!r}; known keys: {known}")
                settings[key] = _convert(where, key, item)
            config.settings = Settings(**settings)
        elif section == "servers":
            for name, table in _table(f"{path}: [servers]", value).items():
                where = f"{path}: [servers.{name}]"
                check_server_name(name, where)
                config.servers[name] = server_from_dict(name, _table(where, table), where)
        elif section == "users":
            for address, table in _table(f"{path}: [users]", value).items():
                where = f'{path}: [users."{address}"]'
                table = _table(where, table)
                unknown = set(table) - {"server"}
                if unknown:
                    raise ConfigError(
                        f"{where}: unknown key {sorted(unknown)[0]!r}; known keys: server"
                    )
                if not isinstance(table.get("server"), str):
                    raise ConfigError(f"{where}: server must be the name of a server")
                config.users[normalise_address(address)] = table["server"]
        elif section == "dkim":
            config.dkim = dkim_from_dict(path, value)
        else:
            raise ConfigError(
                f"{path}: unknown section [{section}]; known sections: settings, servers, users, dkim"
            )
    for address, name in config.users.items():
        if name not in config.servers:
            raise ConfigError(f'{path}: [users."{address}"]: server {name!r} is not defined')
    default = config.settings.default_server
    if default is not None and default not in config.servers:
        raise ConfigError(f"{path}: [settings]: default_server {default!r} is not defined")
    check_fallbacks({n: e.fallback for n, e in config.servers.items()}, str(path))
    return config


def check_server_name(name: str, where: str = "server name") -> None:
    if not name or not all(ch.isalnum() or ch in "-_." for ch in name):
        raise ConfigError(
            f"{where}: invalid server name {name!r}; use letters, digits, '-', '_' and '.'"
        )


def load_config(path: Path, *, missing_ok: bool = True) -> Config:
    """Read and validate ``path``; a missing file is an empty configuration."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if missing_ok:
            return Config(path=path)
        raise ConfigError(f"{path}: no such configuration file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return config_from_dict(path, data)


def server_to_dict(entry: ServerEntry) -> dict[str, Any]:
    """Only the keys that differ from the defaults, so the file stays short."""
    out: dict[str, Any] = {"host": entry.host}
    defaults = ServerEntry(name=entry.name, host=entry.host)
    for key in SERVER_KEYS:
        value = getattr(entry, key)
        if key == "host" or value == getattr(defaults, key) or value is None or value == []:
            continue
        out[key] = value.value if isinstance(value, Security) else value
    return out


def config_to_dict(config: Config) -> dict[str, Any]:
    settings: dict[str, Any] = {"email_send_limit": config.settings.email_send_limit}
    if config.settings.send_limit_window != Settings().send_limit_window:
        settings["send_limit_window"] = config.settings.send_limit_window
    if config.settings.default_server is not None:
        settings["default_server"] = config.settings.default_server
    if config.settings.nameservers:
        settings["nameservers"] = config.settings.nameservers
    if config.settings.spool is not None:
        settings["spool"] = config.settings.spool
    if config.settings.sendmail_mode != Settings().sendmail_mode:
        settings["sendmail_mode"] = config.settings.sendmail_mode
    if config.settings.retain_sent != Settings().retain_sent:
        settings["retain_sent"] = config.settings.retain_sent
    if config.settings.helo_name is not None:
        settings["helo_name"] = config.settings.helo_name
    if config.settings.ledger != Settings().ledger:
        settings["ledger"] = config.settings.ledger
    if config.settings.ledger_password_command is not None:
        settings["ledger_password_command"] = config.settings.ledger_password_command
    data: dict[str, Any] = {"settings": settings}
    data["servers"] = {name: server_to_dict(e) for name, e in sorted(config.servers.items())}
    data["users"] = {addr: {"server": name} for addr, name in sorted(config.users.items())}
    if config.dkim:
        data["dkim"] = dkim_to_dict(config.path, config.dkim)
    return data


def save_config(config: Config) -> None:
    """Write atomically: temp file in the same directory, fsync, rename; mode 0600."""
    text = tomli_w.dumps(config_to_dict(config)).encode("utf-8")
    atomic_write(config.path, text, mode=0o600)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never half."""
    directory = path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write: {exc.strerror}") from None
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(directory)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ConfigError(f"{path}: cannot write: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` survive a crash."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
