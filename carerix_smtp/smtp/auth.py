"""AUTH (RFC 4954): when the password may be sent, which SASL mechanism, and the
mechanisms themselves.  A new mechanism is one function and one row of
:data:`MECHANISMS`.  Nothing secret is ever logged.  An entry with an
``oauth_token_command`` signs in with an OAuth2 token instead (smtp/oauth.py):
the session's ``password`` is then a :class:`~carerix_smtp.config.oauth.TokenSource`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from carerix_smtp.config.oauth import TokenSource
from carerix_smtp.config.tls import auth_allowed
from carerix_smtp.errors import SmtpAuthError, SmtpPolicyError
from carerix_smtp.smtp.phases import PHASE_AUTH
from carerix_smtp.smtp.wire import CRLF, Reply

if TYPE_CHECKING:
    from carerix_smtp.smtp.conversation import Conversation

log = logging.getLogger(__name__)

# Writes a line of the exchange, shows ``shown`` in the debug log instead, and
# returns the reply: (line, shown) -> Reply.
SecretCommand = Callable[[str, str], Reply]


class AuthFailedError(SmtpAuthError):
    """``reason``: refused (535 and other 5xx), auth-not-offered, no-mechanism."""

    def __init__(self, message: str, *, reason: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.reason = reason


# --- the mechanisms: (command, username, password) -> the last reply ----------------


def _plain(command: SecretCommand, user: bytes, secret: bytes) -> Reply:
    token = base64.b64encode(b"\0" + user + b"\0" + secret).decode("ascii")
    return command(f"AUTH PLAIN {token}", "AUTH PLAIN <credentials hidden>")


def _login(command: SecretCommand, user: bytes, secret: bytes) -> Reply:
    reply = command("AUTH LOGIN", "AUTH LOGIN")
    if reply.code != 334:
        return reply
    reply = command(base64.b64encode(user).decode("ascii"), "<username hidden>")
    if reply.code != 334:
        return reply
    return command(base64.b64encode(secret).decode("ascii"), "<password hidden>")


def _cram_md5(command: SecretCommand, user: bytes, secret: bytes) -> Reply:
    reply = command("AUTH CRAM-MD5", "AUTH CRAM-MD5")
    if reply.code != 334:
        return reply
    try:
        challenge = base64.b64decode(reply.text.strip(), validate=True)
    except ValueError:
        command("*", "*")  # RFC 4954 §4: cancel the exchange
        return Reply(535, None, "unreadable CRAM-MD5 challenge", local=True)
    digest = hmac.new(secret, challenge, hashlib.md5).hexdigest()
    answer = base64.b64encode(user + b" " + digest.encode("ascii")).decode("ascii")
    return command(answer, "<response hidden>")


# Strongest first.  Over TLS every mechanism is safe from eavesdroppers; the
# challenge-response one also keeps the password from whatever terminates TLS
# (and from anyone, when verification was switched off), so it goes first.
MECHANISMS: dict[str, Callable[[SecretCommand, bytes, bytes], Reply]] = {
    "CRAM-MD5": _cram_md5,
    "PLAIN": _plain,
    "LOGIN": _login,
}
AUTH_PREFERENCE = tuple(MECHANISMS)


# --- the auth phase -------------------------------------------------------------------


# (session, token source, facts, where) -> None: smtp/oauth.py's exchange, passed in by
# the session, so that this module does not import the one that builds on it.
TokenExchange = Callable[["Conversation", TokenSource, dict[str, Any], dict[str, Any]], None]


def authenticate(session: Conversation, token_exchange: TokenExchange | None = None) -> None:
    """The auth phase, when the entry has a username (else nothing); with an OAuth2
    token source (``session.password``) ``token_exchange`` signs in."""
    username = session.entry.username
    if username is None:
        return
    with session.phase(PHASE_AUTH) as facts:
        where: dict[str, Any] = {
            "host": session.endpoint.host,
            "port": session.endpoint.port,
            "phase": PHASE_AUTH,
        }
        if isinstance(session.password, TokenSource):
            if token_exchange is None:
                raise SmtpPolicyError(f"{session.where}: no OAuth2 exchange here", **where)
            token_exchange(session, session.password, facts, where)
            return
        password = _password_to_send(session, where)
        choices = mechanism_choices(session, facts, where)
        for mechanism in choices:
            reply = _auth_exchange(session, mechanism, username, password)
            if reply.code == 504 and mechanism != choices[-1]:
                continue  # RFC 4954 §4: mechanism not supported after all; try the next
            break
        facts["mechanism"] = mechanism
        if reply.code == 235:
            session.auth_mechanism = mechanism
            log.info("%s: authenticated as %s with %s", session.where, username, mechanism)
            return
        if reply.closing or reply.temporary:
            raise session.reply_error(PHASE_AUTH, f"AUTH {mechanism} answered", reply)
        raise AuthFailedError(
            f"{session.where}: authentication as {username!r} refused: {reply.one_line}",
            reason="refused",
            code=reply.code,
            enhanced=reply.enhanced,
            text=reply.text,
            **where,
        )


def _password_to_send(session: Conversation, where: dict[str, Any]) -> str:
    """The password, if there is one and this connection may carry it."""
    if not isinstance(session.password, str):
        raise SmtpPolicyError(
            f"{session.where}: server entry {session.entry.name!r} has a username but no "
            "password was given; not sending unauthenticated",
            **where,
        )
    if not auth_allowed(session.encrypted, session.mode, session.entry.allow_plaintext_auth):
        raise SmtpPolicyError(
            f"{session.where}: the connection is not encrypted; the password was not sent",
            **where,
        )
    return session.password


def mechanism_choices(
    session: Conversation,
    facts: dict[str, Any],
    where: dict[str, Any],
    preference: tuple[str, ...] = AUTH_PREFERENCE,
) -> list[str]:
    """The mechanisms both sides support, ours in ``preference`` order."""
    offered = session.auth_mechanisms
    facts["offered"] = offered
    if not session.has_extension("AUTH"):
        raise AuthFailedError(
            f"{session.where}: the server offers no AUTH here; not sending mail unauthenticated",
            reason="auth-not-offered",
            **where,
        )
    choices = [m for m in preference if m in offered]
    if not choices:
        raise AuthFailedError(
            f"{session.where}: none of the offered AUTH mechanisms ({' '.join(offered)}) "
            f"is supported; cxsmtp supports {', '.join(preference)} here",
            reason="no-mechanism",
            **where,
        )
    return choices


def _auth_exchange(session: Conversation, mechanism: str, username: str, password: str) -> Reply:
    """Run one SASL exchange.  Nothing here is logged (RFC 4954 credentials)."""

    def command(line: str, shown: str) -> Reply:
        return secret_command(session, line, shown)

    return MECHANISMS[mechanism](command, username.encode("utf-8"), password.encode("utf-8"))


def secret_command(session: Conversation, line: str, shown: str) -> Reply:
    log.debug("%s C: %s", session.where, shown)  # ``shown`` never holds a secret
    session.write(line.encode("utf-8") + CRLF, PHASE_AUTH, session.command_timeout)
    reply = session.channel.read_reply(PHASE_AUTH, session.command_timeout, shown, log_reply=False)
    if reply.closing:
        session.abort()
    return reply
