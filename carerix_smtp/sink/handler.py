"""The sink's aiosmtpd handler hooks: the EHLO offer (AUTH, PIPELINING), AUTH and
its credentials check, MAIL/RCPT with their faults, and at end of data the
:class:`Received` record and its storage.

AUTH
    AUTH PLAIN and LOGIN are offered only with ``auth`` set and, unless
    ``auth_require_tls=False``, only on an encrypted session (aiosmtpd does not
    know an implicit TLS session is encrypted, so the sink decides from the
    transport itself).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session

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
        offer_auth = config.auth is not None and (server.encrypted or not config.auth_require_tls)
        lines = [line[4:] for line in responses if offer_auth or line[4:9].upper() != "AUTH "]
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
        if config.auth is None:
            return "502 5.5.1 AUTH not available"
        if config.auth_require_tls and not server.encrypted:
            return "538 5.7.11 Encryption required for requested authentication mechanism"
        return MISSING  # go on with aiosmtpd's PLAIN / LOGIN

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
