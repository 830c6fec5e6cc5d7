"""TLS: implicit TLS and STARTTLS (the rules of RFC 3207: required or opportunistic,
anything read before the handshake discarded), the certificate checked against the
host *name*, what the handshake gave (:class:`TlsInfo`), and why it failed
(:class:`TlsFailedError`, with the reason the probe's hints need).
"""

from __future__ import annotations

import logging
import ssl
import time
from dataclasses import dataclass
from typing import Any, Protocol

from carerix_smtp.config.tls import TlsMode, make_ssl_context
from carerix_smtp.errors import SmtpTLSError
from carerix_smtp.smtp.conversation import Conversation
from carerix_smtp.smtp.ehlo import ehlo
from carerix_smtp.smtp.phases import PHASE_EHLO_TLS, PHASE_TLS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TlsInfo:
    version: str | None
    cipher: str | None
    bits: int | None
    verified: bool
    subject: str | None = None
    issuer: str | None = None
    san: tuple[str, ...] = ()
    not_after: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "cipher": self.cipher,
            "bits": self.bits,
            "verified": self.verified,
            "subject": self.subject,
            "issuer": self.issuer,
            "san": list(self.san),
            "not_after": self.not_after,
        }


class TlsFailedError(SmtpTLSError):
    """TLS could not be set up.  ``reason`` tells the probe which hint applies:

    ``hostname`` (certificate for another name), ``untrusted`` (self-signed or
    unknown CA), ``expired``, ``not-yet-valid``, ``certificate`` (other verification
    failure), ``not-tls`` (the peer speaks plain text), ``eof`` (closed during the
    handshake), ``protocol`` (other handshake failure), ``starttls-missing``,
    ``starttls-refused``.
    """

    def __init__(self, message: str, *, reason: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.reason = reason


class Encrypting(Conversation, Protocol):
    """A :class:`Conversation` that also keeps what the TLS handshake gave."""

    tls: TlsInfo | None


# Which OpenSSL verify codes mean what (X509_V_ERR_*).
_CERT_REASONS = {
    9: "not-yet-valid",
    10: "expired",
    18: "untrusted",  # DEPTH_ZERO_SELF_SIGNED_CERT
    19: "untrusted",  # SELF_SIGNED_CERT_IN_CHAIN
    20: "untrusted",  # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: "untrusted",  # UNABLE_TO_VERIFY_LEAF_SIGNATURE
    62: "hostname",  # HOSTNAME_MISMATCH
    64: "hostname",  # IP_ADDRESS_MISMATCH
}
_PLAINTEXT_TLS_ERRORS = (
    "WRONG_VERSION_NUMBER",
    "UNKNOWN_PROTOCOL",
    "HTTP_REQUEST",
    "PACKET_LENGTH_TOO_LONG",
    "RECORD_LAYER_FAILURE",
)


def starttls(session: Encrypting) -> None:
    if session.mode in (TlsMode.IMPLICIT, TlsMode.PLAIN):
        return
    assert session.peer is not None
    if not session.has_extension("STARTTLS"):
        if session.mode is TlsMode.STARTTLS_REQUIRED:
            with session.phase(PHASE_TLS):
                what = (
                    "the password was not sent"
                    if session.password is not None
                    else "nothing was sent"
                )
                raise TlsFailedError(
                    f"{session.where}: the server does not offer STARTTLS, which this entry "
                    f"requires; stopped before AUTH and MAIL, so {what}",
                    reason="starttls-missing",
                    host=session.endpoint.host,
                    port=session.endpoint.port,
                    phase=PHASE_TLS,
                )
        log.info("%s: STARTTLS not offered; continuing unencrypted (no password)", session.where)
        return
    with session.phase(PHASE_TLS) as facts:
        reply = session.command("STARTTLS", PHASE_TLS)
        if reply.code != 220:
            if session.mode is TlsMode.STARTTLS_OPPORTUNISTIC and not reply.closing:
                facts["refused"] = reply.one_line
                log.warning(
                    "%s: STARTTLS refused (%s); continuing unencrypted", session.where, reply
                )
                return
            if reply.closing:
                raise session.reply_error(PHASE_TLS, "STARTTLS answered", reply)
            raise TlsFailedError(
                f"{session.where}: STARTTLS refused: {reply.one_line}; stopped before AUTH and "
                "MAIL",
                reason="starttls-refused",
                host=session.endpoint.host,
                port=session.endpoint.port,
                phase=PHASE_TLS,
                code=reply.code,
                enhanced=reply.enhanced,
                text=reply.text,
            )
        if session.channel.rbuf:
            # RFC 3207 §6: anything that arrived with the 220 is not from the TLS peer
            # (a response-injection attack); it must not be read as a reply later.
            session.starttls_discarded = len(session.channel.rbuf)
            facts["discarded_bytes"] = len(session.channel.rbuf)
            log.warning(
                "%s: discarded %d bytes sent before the TLS handshake",
                session.where,
                len(session.channel.rbuf),
            )
            session.channel.rbuf.clear()
        handshake(session, facts)
    ehlo(session, PHASE_EHLO_TLS)


def handshake(session: Encrypting, facts: dict[str, Any]) -> None:
    target = session.peer
    assert session.channel.sock is not None and target is not None
    context = session.ssl_context or make_ssl_context(
        session.entry.ca_file, verify=session.entry.tls_verify
    )
    # SNI and certificate check against the host *name* (the MX host for MX
    # lookups), never against the address we happened to connect to.
    sock = context.wrap_socket(
        session.channel.sock, server_hostname=target.name, do_handshake_on_connect=False
    )
    session.channel.sock = sock
    sock.settimeout(session.command_timeout)
    try:
        sock.do_handshake()
    except ssl.SSLCertVerificationError as exc:
        reason = _CERT_REASONS.get(exc.verify_code, "certificate")
        raise TlsFailedError(
            f"{session.where}: certificate not accepted: {exc.verify_message or exc.reason}",
            reason=reason,
            host=session.endpoint.host,
            port=session.endpoint.port,
            phase=PHASE_TLS,
        ) from None
    except ssl.SSLError as exc:
        name = str(exc.reason or "")
        if any(marker in name for marker in _PLAINTEXT_TLS_ERRORS):
            reason, what = "not-tls", "the server does not speak TLS here"
        elif isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            reason, what = "eof", "the server closed the connection"
        else:
            reason, what = "protocol", "no common protocol or cipher"
        raise TlsFailedError(
            f"{session.where}: TLS handshake failed: {what} ({name or exc})",
            reason=reason,
            host=session.endpoint.host,
            port=session.endpoint.port,
            phase=PHASE_TLS,
        ) from None
    except TimeoutError:
        raise TlsFailedError(
            f"{session.where}: no TLS handshake within {session.command_timeout:g} s",
            reason="timeout",
            host=session.endpoint.host,
            port=session.endpoint.port,
            phase=PHASE_TLS,
        ) from None
    except OSError as exc:
        raise TlsFailedError(
            f"{session.where}: TLS handshake: connection lost ({exc.strerror or exc})",
            reason="eof",
            host=session.endpoint.host,
            port=session.endpoint.port,
            phase=PHASE_TLS,
        ) from None
    session.encrypted = True
    session.tls = _tls_info(sock, context.verify_mode != ssl.CERT_NONE)
    facts.update(session.tls.to_dict())


def _name_to_text(name: Any) -> str | None:
    """getpeercert()'s ((('commonName', 'x'),), …) -> 'CN=x, O=…'."""
    if not name:
        return None
    short = {
        "commonName": "CN",
        "organizationName": "O",
        "organizationalUnitName": "OU",
        "countryName": "C",
        "localityName": "L",
        "stateOrProvinceName": "ST",
    }
    parts = []
    for rdn in name:
        for key, value in rdn:
            parts.append(f"{short.get(key, key)}={value}")
    return ", ".join(parts)


def describe_certificate(der: bytes) -> dict[str, Any]:
    """Subject, issuer, SANs and expiry of a DER certificate (needs ``cryptography``,
    present with trustme; without it: empty).  For unverified connections, where
    ``getpeercert()`` returns nothing."""
    try:
        from cryptography import x509
    except ImportError:  # pragma: no cover
        return {}
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return {}
    san: list[str] = []
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        san = [f"DNS:{n}" for n in ext.get_values_for_type(x509.DNSName)]
        san += [f"IP Address:{a}" for a in ext.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        pass
    return {
        "subject": cert.subject.rfc4514_string() or None,
        "issuer": cert.issuer.rfc4514_string() or None,
        "san": tuple(san),
        "not_after": cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _tls_info(sock: ssl.SSLSocket, verified: bool) -> TlsInfo:
    cipher = sock.cipher()
    cert = sock.getpeercert() if verified else None
    san: tuple[str, ...] = ()
    subject = issuer = not_after = None
    if not verified:
        der = sock.getpeercert(binary_form=True)
        described = describe_certificate(der) if der else {}
        subject = described.get("subject")
        issuer = described.get("issuer")
        san = described.get("san", ())
        not_after = described.get("not_after")
    if cert:
        subject = _name_to_text(cert.get("subject"))
        issuer = _name_to_text(cert.get("issuer"))
        alt_names: Any = cert.get("subjectAltName", ())
        san = tuple(f"{kind}:{value}" for kind, value in alt_names)
        raw_after = cert.get("notAfter")
        if isinstance(raw_after, str):
            not_after = time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime(ssl.cert_time_to_seconds(raw_after))
            )
    return TlsInfo(
        version=sock.version(),
        cipher=cipher[0] if cipher else None,
        bits=cipher[2] if cipher else None,
        verified=verified,
        subject=subject,
        issuer=issuer,
        san=san,
        not_after=not_after,
    )
