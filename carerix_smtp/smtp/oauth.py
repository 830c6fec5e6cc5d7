"""OAuth2 sign-in over SMTP AUTH: OAUTHBEARER (RFC 7628) when the server offers
it, else XOAUTH2 (Google's and Microsoft's format); never a password mechanism
and never on an unencrypted connection (a bearer token is as good as a password
to whoever reads it).

A refused token: the server answers the initial response with a 334 error
challenge, base64 JSON such as ``{"status":"401","schemes":"bearer","scope":…}``
(RFC 7628 §3.2.2); the client answers it (OAUTHBEARER: ``%x01``, RFC 7628 §3.2.3;
XOAUTH2: an empty line, as Gmail takes it) and the server ends with 535.  The
token is then fetched once more (it may have expired); a second refusal is final.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from carerix_smtp.errors import SmtpPolicyError
from carerix_smtp.smtp.auth import AuthFailedError, mechanism_choices, secret_command
from carerix_smtp.smtp.phases import PHASE_AUTH
from carerix_smtp.smtp.wire import Reply

if TYPE_CHECKING:
    from carerix_smtp.config.oauth import TokenSource
    from carerix_smtp.smtp.conversation import Conversation

log = logging.getLogger(__name__)

OAUTH_PREFERENCE = ("OAUTHBEARER", "XOAUTH2")
# In the error itself: `send` shows the message only.
TOKEN_ADVICE = "check the token command: run it by hand; its token may be for another scope/user"
TOKEN_HINT = (
    "cxsmtp server show {name} shows the command and the username the token must be for; "
    "Gmail wants the scope https://mail.google.com/, Microsoft 365 SMTP.Send"
)


def xoauth2_response(user: str, token: str) -> bytes:
    """XOAUTH2's initial client response (before base64)."""
    return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()


def _saslname(user: str) -> str:
    """RFC 5801 §4 saslname: ``,`` and ``=`` escaped in the GS2 header."""
    return user.replace("=", "=3D").replace(",", "=2C")


def oauthbearer_response(user: str, token: str, host: str, port: int) -> bytes:
    """OAUTHBEARER's initial client response (RFC 7628 §3.1), before base64."""
    gs2 = f"n,a={_saslname(user)},"
    return f"{gs2}\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01".encode()


def initial_response(mechanism: str, user: str, token: str, host: str, port: int) -> bytes:
    if mechanism == "OAUTHBEARER":
        return oauthbearer_response(user, token, host, port)
    return xoauth2_response(user, token)


def error_status(challenge: str) -> str:
    """The ``status`` of a 334 error challenge (base64 JSON), or "unknown"."""
    try:
        data = json.loads(base64.b64decode(challenge.strip(), validate=True))
    except (binascii.Error, ValueError):
        return "unknown"
    status = data.get("status") if isinstance(data, dict) else None
    return str(status) if status not in (None, "") else "unknown"


@dataclass
class Attempt:
    """One OAuth2 exchange: the last reply, and the error status if the token was refused."""

    reply: Reply
    status: str | None = None


def exchange(session: Conversation, mechanism: str, user: str, token: str) -> Attempt:
    """``AUTH MECH <initial response>``; a 334 error challenge is answered so that
    the server can end the exchange (with 535).  Nothing here is logged."""
    endpoint = session.endpoint
    blob = initial_response(mechanism, user, token, endpoint.host, endpoint.port)
    line = f"AUTH {mechanism} {base64.b64encode(blob).decode('ascii')}"
    reply = secret_command(session, line, f"AUTH {mechanism} <token hidden>")
    if reply.code != 334:
        return Attempt(reply)
    status = error_status(reply.text)
    answer = "AQ==" if mechanism == "OAUTHBEARER" else ""  # base64 of %x01; Gmail: empty
    final = secret_command(session, answer, "<error challenge answered>")
    if final.code == 334:  # a server that keeps asking: cancel (RFC 4954 §4)
        final = secret_command(session, "*", "*")
    return Attempt(final, status)


def authenticate_oauth(
    session: Conversation, source: TokenSource, facts: dict[str, Any], where: dict[str, Any]
) -> None:
    """The auth phase with a token: OAUTHBEARER, else XOAUTH2; the token is fetched
    again once when refused.  Raises AuthFailedError (exit 77) on a final refusal."""
    user = session.entry.username
    assert user is not None  # token_source() refuses an entry without one
    if not session.encrypted:
        raise SmtpPolicyError(
            f"{session.where}: the connection is not encrypted; the OAuth2 token was not sent "
            "(a token is never sent in plain text, whatever allow_plaintext_auth says)",
            hint="use TLS: --security ssl or starttls",
            **where,
        )
    choices = mechanism_choices(session, facts, where, OAUTH_PREFERENCE)
    token = source.token()
    for mechanism in choices:
        attempt = exchange(session, mechanism, user, token)
        if attempt.reply.code != 504 or mechanism == choices[-1]:
            break  # 504: not supported after all (RFC 4954 §4); try the next
    facts["mechanism"] = mechanism
    while attempt.reply.code != 235 and attempt.reply.permanent and not attempt.reply.closing:
        fresh = source.refresh(token)
        if fresh is None:
            break
        log.info("%s: %s token refused; trying a freshly fetched one", session.where, mechanism)
        token = fresh
        facts["token_refreshed"] = True
        attempt = exchange(session, mechanism, user, token)
    _finish(session, mechanism, user, attempt, facts, where)


def _finish(
    session: Conversation,
    mechanism: str,
    user: str,
    attempt: Attempt,
    facts: dict[str, Any],
    where: dict[str, Any],
) -> None:
    reply = attempt.reply
    if attempt.status is not None:
        facts["oauth_status"] = attempt.status
    if reply.code == 235:
        session.auth_mechanism = mechanism
        log.info("%s: authenticated as %s with %s", session.where, user, mechanism)
        return
    if reply.closing or reply.temporary:
        raise session.reply_error(PHASE_AUTH, f"AUTH {mechanism} answered", reply)
    status = f", status {attempt.status}" if attempt.status is not None else ""
    raise AuthFailedError(
        f"{session.where}: OAuth2 token for {user!r} refused ({mechanism}{status}): "
        f"{reply.one_line}; {TOKEN_ADVICE}",
        reason="token-refused",
        hint=TOKEN_HINT.format(name=session.entry.name),
        code=reply.code,
        enhanced=reply.enhanced,
        text=reply.text,
        **where,
    )
