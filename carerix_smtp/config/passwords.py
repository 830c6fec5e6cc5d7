"""Where a server's password comes from, in this order (SPEC §1):

1. the environment variable ``CXSMTP_PASSWORD_<NAME>`` (name upper-cased,
   every other character than A-Z and 0-9 as ``_``) — works under cron;
2. the server's ``password_command`` (like msmtp's ``passwordeval``): run
   without a shell, with a timeout; the first line of its output is the password;
3. the system keyring (service ``cxsmtp``, user = server name).

A server with a username and no password from any source is an error that lists
what was tried and how to set each source; it never becomes an unauthenticated
send.  Keyring backends that cannot work (``fail``, ``null``, an empty chain)
are refused, and a backend that hangs (a locked Secret Service) is bounded by a
timeout.  The password never goes into the TOML file, a log line or an error.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import subprocess
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, TypeVar

from carerix_smtp.errors import KeyringUnavailableError, SecretError

if TYPE_CHECKING:
    from carerix_smtp.config.file import ServerEntry

log = logging.getLogger(__name__)

SERVICE = "cxsmtp"
COMMAND_TIMEOUT = 15.0
KEYRING_TIMEOUT_ENV = "CXSMTP_KEYRING_TIMEOUT"
DEFAULT_KEYRING_TIMEOUT = 10.0

T = TypeVar("T")


def env_var_name(server: str) -> str:
    """``CXSMTP_PASSWORD_<NAME>``: ``smtp-relay.1`` -> ``CXSMTP_PASSWORD_SMTP_RELAY_1``."""
    return "CXSMTP_PASSWORD_" + re.sub(r"[^A-Z0-9]", "_", server.upper())


def _how_to_set(server: str) -> str:
    return (
        f"set one: export {env_var_name(server)}=...; or "
        f"'cxsmtp server edit {server} --password-command \"pass show smtp/{server}\"'; or "
        f"'cxsmtp server password {server}' (needs a keyring backend)"
    )


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


def store_password(server: str, password: str, env: Mapping[str, str] | None = None) -> None:
    """Store in the keyring; refused (with the other sources as advice) when none is usable."""
    env = os.environ if env is None else env
    if not password:
        raise SecretError("the password is empty")
    import keyring

    try:
        _keyring_call(
            lambda: keyring.set_password(SERVICE, server, password),
            env,
            f"storing the password of {server!r}",
        )
    except KeyringUnavailableError as exc:
        raise KeyringUnavailableError(
            f"cannot store the password of {server!r}: {exc}; the password is never written "
            f"to the config file. Instead: export {env_var_name(server)}=... in the environment "
            f"that runs cxsmtp, or use --password-command"
        ) from None


def delete_password(server: str, env: Mapping[str, str] | None = None) -> bool:
    """Remove the keyring entry; False when there was none or no keyring is usable."""
    env = os.environ if env is None else env
    import keyring
    from keyring.errors import PasswordDeleteError

    def delete() -> bool:
        try:
            keyring.delete_password(SERVICE, server)
        except PasswordDeleteError:
            return False
        return True

    try:
        return _keyring_call(delete, env, f"deleting the password of {server!r}")
    except KeyringUnavailableError as exc:
        log.warning("could not remove a stored password of %r: %s", server, exc)
        return False


# --- password_command ----------------------------------------------------


def run_password_command(server: str, command: str, timeout: float = COMMAND_TIMEOUT) -> str:
    """Run ``command`` without a shell; its first output line is the password."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise SecretError(f"server {server!r}: password_command cannot be parsed: {exc}") from None
    if not argv:
        raise SecretError(f"server {server!r}: password_command is empty")
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise SecretError(f"server {server!r}: password_command {argv[0]!r} not found") from None
    except PermissionError:
        raise SecretError(
            f"server {server!r}: password_command {argv[0]!r} is not executable"
        ) from None
    except subprocess.TimeoutExpired:
        raise SecretError(
            f"server {server!r}: password_command {argv[0]!r} did not finish within {timeout:g} s"
        ) from None
    if proc.returncode != 0:
        raise SecretError(
            f"server {server!r}: password_command {argv[0]!r} exited with status {proc.returncode}"
        )
    first = proc.stdout.split(b"\n", 1)[0].rstrip(b"\r")
    if not first:
        raise SecretError(f"server {server!r}: password_command {argv[0]!r} printed nothing")
    try:
        return first.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretError(
            f"server {server!r}: password_command {argv[0]!r} printed something that is not UTF-8"
        ) from None


# --- lookup --------------------------------------------------------------


def get_password(entry: ServerEntry, env: Mapping[str, str] | None = None) -> str | None:
    """The password for ``entry``, or None when the entry has no username.

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
    raise SecretError(
        f"no password for server {entry.name!r} (user {entry.username}): tried "
        + ", ".join(tried)
        + "; "
        + _how_to_set(entry.name)
    )


def password_source(entry: ServerEntry, env: Mapping[str, str] | None = None) -> str:
    """Where the password would come from: env, command, keyring or none (never the password)."""
    env = os.environ if env is None else env
    if env.get(env_var_name(entry.name)):
        return "env"
    if entry.password_command:
        return "command"
    try:
        return "keyring" if keyring_get(entry.name, env) else "none"
    except KeyringUnavailableError:
        return "none"
