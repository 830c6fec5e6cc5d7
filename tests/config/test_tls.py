"""Security policy: the TLS mode for a port, the plaintext-password rule, verified contexts."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import pytest

from carerix_smtp.config.tls import (
    Security,
    TlsMode,
    auth_allowed,
    check_plaintext_auth,
    make_ssl_context,
    parse_security,
    security_for_port,
)
from carerix_smtp.errors import ConfigError, InputError

A, S, T, N = Security.AUTO, Security.SSL, Security.STARTTLS, Security.NONE


@pytest.mark.parametrize(
    ("port", "security", "has_password", "mode"),
    [
        pytest.param(465, A, False, TlsMode.IMPLICIT, id="465-auto"),
        pytest.param(465, A, True, TlsMode.IMPLICIT, id="465-auto-password"),
        pytest.param(587, A, False, TlsMode.STARTTLS_REQUIRED, id="587-auto"),
        pytest.param(25, A, False, TlsMode.STARTTLS_OPPORTUNISTIC, id="25-auto"),
        pytest.param(25, A, True, TlsMode.STARTTLS_REQUIRED, id="25-auto-password"),
        pytest.param(2525, A, False, TlsMode.STARTTLS_OPPORTUNISTIC, id="2525-auto"),
        pytest.param(2525, A, True, TlsMode.STARTTLS_REQUIRED, id="2525-auto-password"),
        pytest.param(587, S, True, TlsMode.IMPLICIT, id="587-forced-ssl"),
        pytest.param(465, T, True, TlsMode.STARTTLS_REQUIRED, id="465-forced-starttls"),
        pytest.param(25, T, False, TlsMode.STARTTLS_REQUIRED, id="25-forced-starttls"),
        pytest.param(587, N, False, TlsMode.PLAIN, id="587-none"),
        pytest.param(25, N, True, TlsMode.PLAIN, id="25-none-password"),
    ],
)
def test_security_for_port(
    port: int, security: Security, has_password: bool, mode: TlsMode
) -> None:
    assert security_for_port(port, security, has_password) is mode


@pytest.mark.parametrize(
    ("security", "allow", "has_password", "ok"),
    [
        pytest.param(N, False, True, False, id="none-password-refused"),
        pytest.param(N, True, True, True, id="none-password-allowed"),
        pytest.param(N, False, False, True, id="none-no-password"),
        pytest.param(A, False, True, True, id="auto-password"),
        pytest.param(A, True, True, False, id="allow-without-none-refused"),
        pytest.param(S, True, False, False, id="allow-with-ssl-refused"),
    ],
)
def test_plaintext_auth_rule(security: Security, allow: bool, has_password: bool, ok: bool) -> None:
    if ok:
        check_plaintext_auth(security, allow, has_password)
    else:
        with pytest.raises(ConfigError):
            check_plaintext_auth(security, allow, has_password)


@pytest.mark.parametrize(
    ("encrypted", "mode", "allow", "ok"),
    [
        pytest.param(True, TlsMode.STARTTLS_REQUIRED, False, True, id="tls"),
        pytest.param(False, TlsMode.STARTTLS_OPPORTUNISTIC, False, False, id="no-tls-offered"),
        pytest.param(False, TlsMode.PLAIN, False, False, id="plain-not-allowed"),
        pytest.param(False, TlsMode.PLAIN, True, True, id="plain-allowed"),
        pytest.param(
            False, TlsMode.STARTTLS_OPPORTUNISTIC, True, False, id="allow-needs-plain-mode"
        ),
    ],
)
def test_auth_allowed(encrypted: bool, mode: TlsMode, allow: bool, ok: bool) -> None:
    assert auth_allowed(encrypted, mode, allow) is ok


@pytest.mark.parametrize("text", ["ssl", "SSL", " starttls ", "none", "auto"])
def test_parse_security(text: str) -> None:
    assert parse_security(text).value == text.strip().lower()


def test_parse_security_refuses_with_choices() -> None:
    with pytest.raises(ConfigError, match="accepted: auto, ssl, starttls, none"):
        parse_security("tls")


def test_context_verifies_by_default(ca_file: Path) -> None:
    ctx = make_ssl_context(str(ca_file))
    assert ctx.verify_mode is ssl.CERT_REQUIRED
    assert ctx.check_hostname is True
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_context_without_verification_is_warned(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        ctx = make_ssl_context(verify=False)
    assert ctx.verify_mode is ssl.CERT_NONE
    assert "verification is OFF" in caplog.text


def test_missing_ca_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no-such\.pem"):
        make_ssl_context(str(tmp_path / "no-such.pem"))


def test_garbage_ca_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(InputError, match="not a PEM"):
        make_ssl_context(str(bad))
