"""Security policy: which TLS mode a port gets, when a password may be sent,
and verified SSL contexts.  Pure apart from building the context."""

from __future__ import annotations

import logging
from enum import Enum
from typing import TYPE_CHECKING

from carerix_smtp.errors import ConfigError, InputError

if TYPE_CHECKING:  # ssl costs ~10 ms: imported when a context is made (issue 12)
    import ssl

log = logging.getLogger(__name__)

SUBMISSIONS_PORT = 465  # RFC 8314 §3.3: implicit TLS
SUBMISSION_PORT = 587  # RFC 6409; STARTTLS (RFC 3207) required by cxsmtp


class Security(str, Enum):
    """What the user asked for (``--security``)."""

    AUTO = "auto"
    SSL = "ssl"
    STARTTLS = "starttls"
    NONE = "none"


class TlsMode(str, Enum):
    """What the transport does."""

    IMPLICIT = "implicit"  # TLS from the first byte ("SSL")
    STARTTLS_REQUIRED = "starttls"  # abort if STARTTLS is not offered
    STARTTLS_OPPORTUNISTIC = "starttls-if-offered"
    PLAIN = "none"


def parse_security(text: str) -> Security:
    try:
        return Security(text.strip().lower())
    except ValueError:
        raise ConfigError(
            f"invalid security {text!r}; accepted: auto, ssl, starttls, none"
        ) from None


def security_for_port(port: int, security: Security, has_password: bool) -> TlsMode:
    """The TLS mode for a connection.

    ``auto``: 465 -> implicit TLS; 587 -> STARTTLS required; any other port ->
    STARTTLS if offered, required when a password is set (a password never
    travels in the clear by default).
    """
    if security is Security.SSL:
        return TlsMode.IMPLICIT
    if security is Security.STARTTLS:
        return TlsMode.STARTTLS_REQUIRED
    if security is Security.NONE:
        return TlsMode.PLAIN
    if port == SUBMISSIONS_PORT:
        return TlsMode.IMPLICIT
    if port == SUBMISSION_PORT or has_password:
        return TlsMode.STARTTLS_REQUIRED
    return TlsMode.STARTTLS_OPPORTUNISTIC


def check_plaintext_auth(
    security: Security, allow_plaintext_auth: bool, has_password: bool
) -> None:
    """Refuse a configuration that would send a password unencrypted without consent."""
    if security is Security.NONE and has_password and not allow_plaintext_auth:
        raise ConfigError(
            "security 'none' with a password would send the password unencrypted; "
            "use --security auto|starttls|ssl, or add --allow-plaintext-auth if you really mean it"
        )
    if allow_plaintext_auth and security is not Security.NONE:
        raise ConfigError("--allow-plaintext-auth only applies together with --security none")


def auth_allowed(encrypted: bool, mode: TlsMode, allow_plaintext_auth: bool) -> bool:
    """May credentials be sent on this connection now?"""
    if encrypted:
        return True
    return mode is TlsMode.PLAIN and allow_plaintext_auth


def make_ssl_context(ca_file: str | None = None, *, verify: bool = True) -> ssl.SSLContext:
    """A client context that verifies the certificate and host name, TLS 1.2 or newer.

    ``verify=False`` is only reachable through an explicit option and is logged
    as a warning every time.
    """
    import ssl

    try:
        ctx = ssl.create_default_context(cafile=ca_file)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        raise InputError(f"CA file {ca_file}: {exc.strerror or exc}") from None
    except ssl.SSLError as exc:
        raise InputError(
            f"CA file {ca_file}: not a PEM certificate bundle ({exc.reason})"
        ) from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        log.warning(
            "certificate verification is OFF: anyone on the path can read the password and mail"
        )
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
