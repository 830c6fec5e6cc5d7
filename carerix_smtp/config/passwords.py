"""Where a server's password comes from, in this order (SPEC §1):

1. the environment variable ``CXSMTP_PASSWORD_<NAME>`` (name upper-cased,
   every other character than A-Z and 0-9 as ``_``) — works under cron;
2. the server's ``password_command`` (like msmtp's ``passwordeval``): run
   without a shell, with a timeout; the first line of its output is the password;
3. the system keyring (service ``cxsmtp``, user = server name);
4. the credentials file ``credentials.toml`` beside the config file (see
   config/credentials.py): where a password is stored when no keyring is usable
   (a host without a desktop session, where cron runs), as Poetry does.

A server with a username and no password from any source is an error that lists
what was tried and how to set each source; it never becomes an unauthenticated
send.  Keyring backends that cannot work (``fail``, ``null``, an empty chain)
are not used, and a backend that hangs (a locked Secret Service) is bounded by a
timeout.  The password never goes into the TOML config, a log line or an error.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import subprocess
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

from carerix_smtp.config import credentials as credfile
from carerix_smtp.errors import ConfigError, KeyringUnavailableError, SecretError, UsageError

if TYPE_CHECKING:
    from carerix_smtp.config.file import ServerEntry

log = logging.getLogger(__name__)

SERVICE = "cxsmtp"
COMMAND_TIMEOUT = 15.0
KEYRING_TIMEOUT_ENV = "CXSMTP_KEYRING_TIMEOUT"
DEFAULT_KEYRING_TIMEOUT = 10.0

T = TypeVar("T")
Store = Literal["keyring", "file"]
STORES: tuple[Store, ...] = ("keyring", "file")


def env_var_name(server: str) -> str:
    """``CXSMTP_PASSWORD_<NAME>``: ``smtp-relay.1`` -> ``CXSMTP_PASSWORD_SMTP_RELAY_1``."""
    return "CXSMTP_PASSWORD_" + re.sub(r"[^A-Z0-9]", "_", server.upper())


def env_var_collision(name: str, existing: Iterable[str]) -> str | None:
    """The existing server whose password variable ``name`` would share (``a.b``/``a_b``)."""
    var = env_var_name(name)
    for other in sorted(existing):
        if other != name and env_var_name(other) == var:
            return other
    return None


def check_env_var_free(name: str, existing: Iterable[str]) -> None:
    """Refuse a name whose ``CXSMTP_PASSWORD_…`` is already another entry's."""
    other = env_var_collision(name, existing)
    if other is not None:
        raise ConfigError(
            f"server name {name!r} reads the same password variable {env_var_name(name)} as "
            f"the existing server {other!r}; choose a name that differs from it in letters or "
            "digits (the variable name upper-cases the name and turns every other character "
            "into _)"
        )


def _how_to_set(server: str) -> str:
    return (
        f"set one: export {env_var_name(server)}=...; or "
        f"'cxsmtp server edit {server} --password-command \"pass show smtp/{server}\"'; or "
        f"'cxsmtp server password {server}' (the keyring, else the credentials file)"
    )


def default_credentials(env: Mapping[str, str]) -> Path:
    """The credentials file beside the config file that ``env`` selects."""
    from carerix_smtp.config.file import resolve_config_path

    return credfile.credentials_path(resolve_config_path(None, env))


# --- keyring -------------------------------------------------------------


def _keyring_timeout(env: Mapping[str, str]) -> float:
    try:
        return float(env.get(KEYRING_TIMEOUT_ENV, DEFAULT_KEYRING_TIMEOUT))
    except ValueError:
        return DEFAULT_KEYRING_TIMEOUT


def _with_timeout(func: Callable[[], T], timeout: float, what: str) -> T:
    """Run a keyring call in a daemon thread; a backend stuck in unlock() cannot hang us."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(func())
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target, name="cxsmtp-keyring", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise KeyringUnavailableError(
            f"the keyring did not answer within {timeout:g} s while {what} (locked or hanging?)"
        )
    if error:
        raise error[0]
    return result[0]


def keyring_backend_problem() -> str | None:
    """Why the active keyring backend cannot store passwords, or None if it can."""
    try:
        import keyring
        from keyring.backends import chainer, fail, null
    except Exception as exc:
        return f"the keyring module cannot be loaded ({type(exc).__name__})"
    try:
        backend = keyring.get_keyring()
    except Exception as exc:
        return f"no keyring backend could be chosen ({type(exc).__name__})"
    kind = f"{type(backend).__module__}.{type(backend).__name__}"
    if isinstance(backend, fail.Keyring | null.Keyring):
        return f"no usable keyring backend (active: {kind})"
    if isinstance(backend, chainer.ChainerBackend) and not backend.backends:
        return f"no usable keyring backend (active: {kind} with no backends)"
    return None


def _keyring_call(func: Callable[[], T], env: Mapping[str, str], what: str) -> T:
    problem = keyring_backend_problem()
    if problem is not None:
        raise KeyringUnavailableError(problem)
    from keyring.errors import KeyringError

    try:
        return _with_timeout(func, _keyring_timeout(env), what)
    except KeyringError as exc:
        raise KeyringUnavailableError(f"the keyring refused: {type(exc).__name__}") from None


def keyring_get(server: str, env: Mapping[str, str]) -> str | None:
    import keyring

    return _keyring_call(
        lambda: keyring.get_password(SERVICE, server), env, f"reading the password of {server!r}"
    )


def keyring_problem(env: Mapping[str, str] | None = None, server: str = "") -> str | None:
    """Why the keyring cannot be used now (unusable backend, no D-Bus, hanging), else None.

    Asked before a password is prompted for, so a refusal never comes after typing it.
    """
    env = os.environ if env is None else env
    import keyring

    try:  # a read of the entry shows whether the backend answers at all
        _keyring_call(lambda: keyring.get_password(SERVICE, server or SERVICE), env, "checking it")
    except KeyringUnavailableError as exc:
        return str(exc)
    except Exception as exc:  # a backend's own error (no D-Bus...): its text is not ours
        return f"the keyring failed ({type(exc).__name__})"
    return None


@dataclass(frozen=True)
class StoreChoice:
    """Where a password is going to be stored, and why the file when it was not asked for."""

    store: Store
    keyring_problem: str | None = None


def choose_store(
    server: str, requested: str | None = None, env: Mapping[str, str] | None = None
) -> StoreChoice:
    """``--password-store``: keyring, file, or (None) the keyring when it is usable."""
    if requested is not None and requested not in STORES:
        raise UsageError(f"--password-store {requested!r}: expected keyring or file")
    if requested == "file":
        return StoreChoice("file")
    problem = keyring_problem(env, server)
    if problem is None:
        return StoreChoice("keyring")
    if requested == "keyring":
        raise KeyringUnavailableError(
            f"cannot store the password of {server!r} in the keyring: {problem}; use "
            f"--password-store file, --password-command, or export {env_var_name(server)}=..."
        )
    return StoreChoice("file", problem)


@dataclass(frozen=True)
class Stored:
    """Where a password was stored; ``warning``: one line for the user (the file is plain)."""

    store: Store
    path: Path | None = None
    warning: str | None = None

    @property
    def where(self) -> str:
        return "the keyring" if self.store == "keyring" else f"{self.path}"


def store_password(
    server: str,
    password: str,
    env: Mapping[str, str] | None = None,
    *,
    credentials: Path | None = None,
    choice: StoreChoice | None = None,
) -> Stored:
    """Store in the keyring, or in the credentials file when no keyring is usable (or
    ``choice`` says so); the other store's copy is removed so that it cannot win later."""
    env = os.environ if env is None else env
    if not password:
        raise SecretError("the password is empty")
    credentials = default_credentials(env) if credentials is None else credentials
    choice = choice or choose_store(server, None, env)
    if choice.store == "file":
        credfile.write_password(credentials, server, password)
        if choice.keyring_problem is None:
            _keyring_delete_quietly(server, env)  # a keyring copy would be found first
        return Stored("file", credentials, unencrypted_warning(server, credentials, choice))
    import keyring

    _keyring_call(
        lambda: keyring.set_password(SERVICE, server, password),
        env,
        f"storing the password of {server!r}",
    )
    credfile.delete_password(credentials, server)  # no plain copy left behind
    return Stored("keyring")


def unencrypted_warning(server: str, path: Path, choice: StoreChoice) -> str:
    why = f": {choice.keyring_problem}" if choice.keyring_problem else ""
    return (
        f"the password of {server!r} is stored UNENCRYPTED in {path} (mode 0600){why}; "
        "to avoid that, use a keyring (cxsmtp server password "
        f"{server} --password-store keyring), a password_command (cxsmtp server edit {server} "
        f"--password-command 'pass show smtp/{server}') or export {env_var_name(server)}=..."
    )


def _keyring_delete(server: str, env: Mapping[str, str]) -> bool:
    import keyring
    from keyring.errors import PasswordDeleteError

    def delete() -> bool:
        try:
            keyring.delete_password(SERVICE, server)
        except PasswordDeleteError:
            return False
        return True

    return _keyring_call(delete, env, f"deleting the password of {server!r}")


def _keyring_delete_quietly(server: str, env: Mapping[str, str]) -> bool:
    try:
        return _keyring_delete(server, env)
    except KeyringUnavailableError as exc:
        log.info("no keyring to remove a password of %r from: %s", server, exc)
        return False


def delete_password(
    server: str, env: Mapping[str, str] | None = None, *, credentials: Path | None = None
) -> bool:
    """Remove the password from the keyring and the credentials file; False when neither
    held one (an unusable keyring is skipped with a log line)."""
    env = os.environ if env is None else env
    credentials = default_credentials(env) if credentials is None else credentials
    in_keyring = _keyring_delete_quietly(server, env)
    in_file = credfile.delete_password(credentials, server)
    return in_keyring or in_file


# --- password_command ----------------------------------------------------


def _command_failed(server: str, what: str) -> SecretError:
    """A failed password_command: the hint is to fix it (it is set), or to override it.
    The command itself is not repeated: a careless one may hold the password."""
    return SecretError(
        f"server {server!r}: password_command {what}",
        hint=(
            f"run the server's password_command by hand to see why (cxsmtp server show "
            f"{server} shows it); or override it: export {env_var_name(server)}=... comes first"
        ),
    )


def run_secret_command(command: str, timeout: float, failed: Callable[[str], SecretError]) -> bytes:
    """Run ``command`` without a shell and return its first output line (raw bytes);
    ``failed(what)`` makes the error.  Shared by password_command and
    oauth_token_command (config/oauth.py)."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise failed(f"cannot be parsed: {exc}") from None
    if not argv:
        raise failed("is empty")
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise failed(f"{argv[0]!r} not found") from None
    except PermissionError:
        raise failed(f"{argv[0]!r} is not executable") from None
    except subprocess.TimeoutExpired:
        raise failed(f"{argv[0]!r} did not finish within {timeout:g} s") from None
    if proc.returncode != 0:
        raise failed(f"{argv[0]!r} exited with status {proc.returncode}")
    first: bytes = proc.stdout.split(b"\n", 1)[0]
    return first


def run_password_command(server: str, command: str, timeout: float = COMMAND_TIMEOUT) -> str:
    """Run ``command`` without a shell; its first output line is the password."""

    def failed(what: str) -> SecretError:
        return _command_failed(server, what)

    first = run_secret_command(command, timeout, failed).rstrip(b"\r")
    program = shlex.split(command)[0]
    if not first:
        raise failed(f"{program!r} printed nothing")
    try:
        return first.decode("utf-8")
    except UnicodeDecodeError:
        raise failed(f"{program!r} printed something that is not UTF-8") from None


# --- lookup --------------------------------------------------------------


def get_password(
    entry: ServerEntry, env: Mapping[str, str] | None = None, *, credentials: Path | None = None
) -> str | None:
    """The password for ``entry``, or None when the entry has no username.

    ``credentials``: the credentials file (default: beside the config ``env`` selects).
    Raises :class:`SecretError` naming every source tried when none has one.
    """
    env = os.environ if env is None else env
    if entry.username is None:
        return None
    var = env_var_name(entry.name)
    if env.get(var):
        return env[var]
    if entry.password_command:
        return run_password_command(entry.name, entry.password_command)
    tried = [f"{var} (not set)", "password_command (not configured)"]
    try:
        password = keyring_get(entry.name, env)
    except KeyringUnavailableError as exc:
        tried.append(f"keyring ({exc})")
    else:
        if password:
            return password
        tried.append("keyring (no entry)")
    credentials = default_credentials(env) if credentials is None else credentials
    password = credfile.read_password(credentials, entry.name)  # refuses a file others reach
    if password:
        return password
    tried.append(f"credentials file {credentials} (no entry)")
    raise SecretError(
        f"no password for server {entry.name!r} (user {entry.username}): tried "
        + ", ".join(tried)
        + "; "
        + _how_to_set(entry.name)
    )


def password_source(
    entry: ServerEntry, env: Mapping[str, str] | None = None, *, credentials: Path | None = None
) -> str:
    """Where the password would come from: env, command, keyring, file or none
    (never the password; a password_command is not run)."""
    env = os.environ if env is None else env
    if env.get(env_var_name(entry.name)):
        return "env"
    if entry.password_command:
        return "command"
    try:
        if keyring_get(entry.name, env):
            return "keyring"
    except KeyringUnavailableError:
        pass
    credentials = default_credentials(env) if credentials is None else credentials
    try:
        return "file" if credfile.read_password(credentials, entry.name) else "none"
    except SecretError:  # a file that is not private is not used
        return "none"
