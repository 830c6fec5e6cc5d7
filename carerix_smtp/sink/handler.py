"""The sink's aiosmtpd handler hooks: the EHLO offer (AUTH, PIPELINING), AUTH and
its credentials check, MAIL/RCPT with their faults, and at end of data the
:class:`Received` record and its storage.

AUTH
    AUTH PLAIN and LOGIN are offered only with ``auth`` set, XOAUTH2 and
    OAUTHBEARER only with ``oauth_tokens`` (sink/oauth.py), and, unless
    ``auth_require_tls=False``, only on an encrypted session (aiosmtpd does not
    know an implicit TLS session is encrypted, so the sink decides from the
    transport itself).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session

from carerix_smtp.sink import oauth
from carerix_smtp.sink.protocol import SinkSMTP, format_peer
from carerix_smtp.sink.store import Received

if TYPE_CHECKING:
    from carerix_smtp.sink.config import SinkConfig
    from carerix_smtp.sink.faults import FaultScript

log = logging.getLogger(__name__)


class SinkHandler:
    """aiosmtpd handler hooks; per-connection state lives on ``server``.

    ``faults`` decides the scripted replies and counts the messages accepted;
    ``store`` keeps a message (the sink's bookkeeping; may run in a worker thread).
    """

    def __init__(
        self,
        config: SinkConfig,
        faults: FaultScript,
        store: Callable[[Received, bytes], Received],
    ) -> None:
        self.config = config
        self.faults = faults
        self.store = store

    async def handle_EHLO(
        self,
        server: SinkSMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        fault = self.faults.fault("ehlo")
        if fault is not None:
            return [fault]
        session.host_name = hostname  # the 5-argument hook must set it itself
        config = self.config
        offered = config.auth_offered
        offer_auth = bool(offered) and (server.encrypted or not config.auth_require_tls)
        lines = [line[4:] for line in responses if line[4:9].upper() != "AUTH "]
        if offer_auth:  # aiosmtpd lists every auth_* method; say what is configured
            lines.insert(-1, "AUTH " + " ".join(offered))
            # An AUTH line with a token is longer than aiosmtpd's 512 (RFC 4954 §4 allows
            # 12288); the reader's line limit (1001) still caps it: tokens up to ~650 bytes.
            server.command_size_limits["AUTH"] = server.line_length_limit
        if config.pipelining:  # RFC 2920; aiosmtpd reads commands in order from a buffer
            lines.insert(-1, "PIPELINING")
        if config.chunking:  # RFC 3030 BDAT (SinkSMTP.smtp_BDAT)
            lines.insert(-1, "CHUNKING")
        return [f"250-{line}" for line in lines[:-1]] + [f"250 {lines[-1]}"]

    async def handle_HELO(
        self, server: SinkSMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        fault = self.faults.fault("ehlo")
        if fault is not None:
            return fault
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_AUTH(
        self, server: SinkSMTP, session: Session, envelope: Envelope, args: list[str]
    ) -> object:
        config = self.config
        if not config.auth_offered:
            return "502 5.5.1 AUTH not available"
        if config.auth_require_tls and not server.encrypted:
            return "538 5.7.11 Encryption required for requested authentication mechanism"
        if args[0].upper() not in config.auth_offered:
            return "504 5.5.4 Unrecognized authentication type"
        return MISSING  # go on with aiosmtpd's PLAIN / LOGIN, or auth_XOAUTH2 / _OAUTHBEARER

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        return await self._oauth(server, "XOAUTH2", args)

    async def auth_OAUTHBEARER(self, server: SMTP, args: list[str]) -> AuthResult:
        return await self._oauth(server, "OAUTHBEARER", args)

    async def _oauth(self, server: SMTP, mechanism: str, args: list[str]) -> AuthResult:
        """Check the token; a wrong one gets Gmail's answer: 334 + base64 JSON status,
        then 535 5.7.8 after the client's (empty or %x01) response."""
        if len(args) == 1:  # no initial response: ask for it (an empty challenge)
            blob = await server.challenge_auth(b"", encode_to_b64=False)
        else:
            try:
                blob = base64.b64decode(args[1], validate=True)
            except binascii.Error:
                await server.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        if blob is MISSING:  # the client cancelled; aiosmtpd has answered
            return AuthResult(success=False, handled=True)
        assert isinstance(blob, bytes)
        parsed = oauth.parse_initial_response(mechanism, blob)
        if parsed is None:
            await server.push(f"501 5.5.2 Malformed {mechanism} response")
            return AuthResult(success=False, handled=True)
        user, token = parsed
        if self._token_ok(user, token):
            return AuthResult(success=True, auth_data=LoginPassword(user.encode("utf-8"), b""))
        log.info("sink: AUTH %s token refused for %r", mechanism, user)
        answer = await server.challenge_auth(oauth.ERROR_CHALLENGE)
        if answer is MISSING:
            return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False, message=oauth.REFUSED)

    def _token_ok(self, user: str, token: str) -> bool:
        config = self.config
        user_ok = config.oauth_user is None or hmac.compare_digest(
            user.encode("utf-8"), config.oauth_user.encode("utf-8")
        )
        matches = [
            hmac.compare_digest(token.encode("utf-8"), t.encode("utf-8"))
            for t in config.oauth_tokens
        ]
        return user_ok and any(matches)

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        """aiosmtpd's authenticator: the PLAIN/LOGIN credentials against ``auth``."""
        auth = self.config.auth
        if auth is None or not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user_ok = hmac.compare_digest(data.login, auth[0].encode("utf-8"))
        password_ok = hmac.compare_digest(data.password, auth[1].encode("utf-8"))
        if user_ok and password_ok:
            return AuthResult(success=True, auth_data=data)
        log.info("sink: AUTH %s refused for %r", mechanism, data.login.decode("utf-8", "replace"))
        return AuthResult(success=False, handled=False)

    async def handle_MAIL(
        self,
        server: SinkSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if self.config.auth_required and not session.authenticated:
            return "530 5.7.0 Authentication required"
        fault = self.faults.fault("mail", address)
        if fault is not None:
            return fault
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(
        self,
        server: SinkSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        fault = self.faults.fault("rcpt", address)
        if fault is not None:
            return fault
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, server: SinkSMTP, session: Session, envelope: Envelope) -> str:
        fault = self.faults.fault("eod")
        if fault is not None:
            return fault
        data = envelope.original_content or b""
        auth = session.auth_data
        auth_user = (
            auth.login.decode("utf-8", "replace") if isinstance(auth, LoginPassword) else None
        )
        record = Received(
            time=time.time(),
            # aiosmtpd keeps the null sender (RFC 5321 §4.5.5) as "<>"
            mail_from="" if envelope.mail_from in (None, "<>") else envelope.mail_from,
            rcpt_tos=tuple(envelope.rcpt_tos),
            data=data if self.config.keep_data else b"",
            path=None,
            session_peer=format_peer(session.peer),
            mail_options=tuple(envelope.mail_options),
            size=len(data),
            tls=server.encrypted,
            auth_user=auth_user,
        )
        try:
            if self.config.out_dir is None:
                record = self.store(record, data)
            else:  # in a worker thread: fsync must not stall the other connections
                record = await server.loop.run_in_executor(None, self.store, record, data)
        except OSError as exc:
            log.error("cannot store a message in %s: %s", self.config.out_dir, exc)
            return "451 4.3.0 Cannot store the message, try again later"
        self.faults.accepted += 1
        name = record.path.name if record.path else "memory"
        return f"250 2.0.0 OK: queued as {name}"
