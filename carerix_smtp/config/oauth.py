"""OAuth2 access tokens for SMTP (XOAUTH2, OAUTHBEARER) from a server's
``oauth_token_command`` -- like msmtp's ``passwordeval`` with ``auth oauthbearer``:
a tool such as oama or mutt_oauth2.py refreshes the token and prints it.

The command runs as a ``password_command`` does (config/passwords.py): without a
shell, with a timeout, its first output line is the token, which is never logged,
shown or put in an error.  A run fetches the token once; when the server rejects
it, once more (it may have expired since); a second rejection is final.  One
:class:`TokenSource` per server and run, shared by its connections, so a refreshed
token is reused by the later ones.
"""

from __future__ import annotations

import os
import shlex
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from carerix_smtp.config.passwords import run_secret_command
from carerix_smtp.errors import ConfigError, SecretError, UsageError

if TYPE_CHECKING:
    from carerix_smtp.config.file import ServerEntry

COMMAND_TIMEOUT = 15.0  # as password_command's


def _command_failed(server: str, what: str) -> SecretError:
    """The command itself is not repeated: a careless one may hold a token."""
    return SecretError(
        f"server {server!r}: oauth_token_command {what}",
        hint=(
            f"run the server's oauth_token_command by hand to see why (cxsmtp server show "
            f"{server} shows it)"
        ),
    )


def run_token_command(server: str, command: str, timeout: float = COMMAND_TIMEOUT) -> str:
    """Run ``command`` without a shell; its first output line is the access token."""

    def failed(what: str) -> SecretError:
        return _command_failed(server, what)

    first = run_secret_command(command, timeout, failed).strip()
    program = shlex.split(command)[0]
    if not first:
        raise failed(f"{program!r} printed nothing")
    try:
        token = first.decode("ascii")
    except UnicodeDecodeError:
        raise failed(f"{program!r} printed something that is not ASCII") from None
    if not token.isprintable() or " " in token:
        raise failed(f"{program!r} printed more than one word or control bytes")
    return token


class TokenSource:
    """The access token of one server for one run: fetched on first use, fetched
    again at most once (:meth:`refresh`) after the server rejected it."""

    def __init__(self, server: str, command: str, *, timeout: float = COMMAND_TIMEOUT) -> None:
        self.server = server
        self._command = command
        self._timeout = timeout
        self._token: str | None = None
        self.refreshed = False  # the one refresh of this run is used up
        self._lock = threading.Lock()  # connections of a run may share it across threads

    def __repr__(self) -> str:  # never the token
        return f"<TokenSource {self.server} refreshed={self.refreshed}>"

    def token(self) -> str:
        """The current token (runs the command the first time)."""
        with self._lock:
            if self._token is None:
                self._token = run_token_command(self.server, self._command, self._timeout)
            return self._token

    def refresh(self, rejected: str) -> str | None:
        """A new token after ``rejected`` was refused, or None when this run's one
        refresh is used up.  A connection whose token another one already refreshed
        gets that one without running the command again."""
        with self._lock:
            if self._token is not None and self._token != rejected:
                return self._token
            if self.refreshed:
                return None
            self.refreshed = True
            self._token = run_token_command(self.server, self._command, self._timeout)
            return self._token


# What AUTH is given: a password, or the entry's token source.
Credential: TypeAlias = "str | TokenSource"


def token_source(entry: ServerEntry) -> TokenSource | None:
    """The entry's token source (the first token is fetched now, so a broken command
    fails before any connection), or None when it has no ``oauth_token_command``."""
    command = entry.oauth_token_command
    if not command:
        return None
    if entry.username is None:
        raise ConfigError(
            f"server {entry.name!r}: oauth_token_command needs a username (the account the "
            f"token is for): cxsmtp server edit {entry.name} --username USER"
        )
    source = TokenSource(entry.name, command)
    source.token()
    return source


def credential_for(
    entry: ServerEntry, env: Mapping[str, str] | None = None, *, credentials: Path | None = None
) -> Credential | None:
    """What AUTH sends for ``entry``: its token source when it has an
    ``oauth_token_command`` (which then wins: no password is looked up), else its
    password (config/passwords.py), else None (no username)."""
    from carerix_smtp.config.passwords import get_password

    source = token_source(entry)
    if source is not None:
        return source
    return get_password(entry, os.environ if env is None else env, credentials=credentials)


def check_token_options(
    token_command: str | None, *, login: bool, password_stdin: bool, password_command: bool
) -> None:
    """``server add/edit --oauth-token-command`` with a password option: refused, as
    the two would contradict each other (on an entry with both, the token wins)."""
    if token_command is None:
        return
    given = [
        option
        for option, on in (
            ("--login", login),
            ("--password-stdin", password_stdin),
            ("--password-command", password_command),
        )
        if on
    ]
    if given:
        raise UsageError(
            "--oauth-token-command signs in with an OAuth2 token, not a password: leave out "
            + ", ".join(given)
        )
