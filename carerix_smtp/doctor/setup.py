"""The configuration file and each server's password source.

A password is obtained the way ``cxsmtp send`` obtains it
(:func:`carerix_smtp.config.passwords.get_password`, with its timeouts: 15 s for
a ``password_command``, 10 s for the keyring) and dropped at once: only the
source it came from is reported.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from carerix_smtp.config.credentials import credentials_path
from carerix_smtp.config.file import Config, ServerEntry, load_config
from carerix_smtp.config.passwords import env_var_name, get_password
from carerix_smtp.doctor.report import Check, fail, ok, warn
from carerix_smtp.errors import CxsmtpError, ExitCode

if TYPE_CHECKING:
    from carerix_smtp.config.oauth import Credential

# A password, or (oauth_token_command, issue 14) a token source whose first token was fetched.
PasswordLookup = Callable[[ServerEntry, Mapping[str, str]], "Credential | None"]


def check_config(path: Path) -> tuple[Config | None, Check]:
    """Load and validate the configuration file: the Config (None if unusable) and its line."""
    name = "config"
    try:
        config = load_config(path, missing_ok=False)
    except CxsmtpError as exc:
        if not path.exists() and not path.is_symlink():
            return Config(path=path), warn(
                name, f"{path}: no configuration file yet (add a server: cxsmtp server add)"
            )
        return None, fail(name, str(exc), exc.exit_code)
    count = len(config.servers)
    default = config.settings.default_server
    detail = f"{path}: valid, {count} server(s)" + (f", default {default}" if default else "")
    if count == 0:
        return config, warn(name, f"{path}: valid, but no server configured")
    return config, ok(name, detail)


def password_origin(entry: ServerEntry, env: Mapping[str, str]) -> str:
    """The source :func:`get_password` takes the password from, in its own order."""
    if entry.oauth_token_command:  # issue 14: the token wins; no password is looked up
        return "oauth_token_command"
    if env.get(env_var_name(entry.name)):
        return f"environment {env_var_name(entry.name)}"
    if entry.password_command:
        return "password_command"
    return "keyring or credentials file"


def check_server(
    entry: ServerEntry,
    env: Mapping[str, str],
    lookup: PasswordLookup = get_password,
    clock: Callable[[], float] = time.monotonic,
) -> Check:
    """Is this server's password source reachable?  Never reports the password."""
    name = f"server {entry.name}"
    where = entry.host
    if entry.username is None:
        return ok(name, f"{where}: no AUTH (no username)")
    origin = password_origin(entry, env)
    start = clock()
    try:
        password = lookup(entry, env)
    except CxsmtpError as exc:
        # SecretError names the sources tried and how to set each; never a secret
        return fail(name, f"{where}: user {entry.username}: {exc}", exc.exit_code)
    except Exception as exc:  # a keyring backend's own error: its text is not ours to print
        what = f"the {origin} failed ({type(exc).__name__})"
        return fail(name, f"{where}: user {entry.username}: {what}", ExitCode.CONFIG)
    took = clock() - start
    found = bool(password)
    del password  # not kept a moment longer than needed
    if not found:
        return warn(name, f"{where}: user {entry.username}: {origin} gave an empty password")
    slow = f" (took {took:.1f} s)" if took >= 1.0 else ""
    what = "OAuth2 token" if entry.oauth_token_command else "password"
    return ok(name, f"{where}: user {entry.username}, {what} from the {origin}{slow}")


def check_servers(config: Config, env: Mapping[str, str]) -> list[Check]:
    from carerix_smtp.config.oauth import credential_for

    lookup = functools.partial(credential_for, credentials=credentials_path(config.path))
    return [check_server(entry, env, lookup) for _, entry in sorted(config.servers.items())]
