"""carerix_smtp.sink.config: SinkConfig's refusals and the option-string parsers."""

from __future__ import annotations

from pathlib import Path

import pytest

from carerix_smtp.errors import UsageError
from carerix_smtp.sink.config import (
    FailRule,
    PhaseRule,
    SinkConfig,
    parse_auth,
    parse_fail_rule,
    parse_listen,
    parse_phase_rule,
)


def test_config_repr_hides_password() -> None:
    assert "s3cret" not in repr(SinkConfig(auth=("user", "s3cret")))


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"port": 70000}, id="port-range"),
        pytest.param({"cert_file": Path("c.pem")}, id="cert-without-key"),
        pytest.param({"cert_file": Path("c"), "key_file": Path("k")}, id="cert-without-tls"),
        pytest.param({"ca_out": Path("ca.pem")}, id="ca-out-without-tls"),
        pytest.param({"require_starttls": True, "tls": "implicit"}, id="require-starttls"),
        pytest.param({"auth_required": True}, id="auth-required-without-auth"),
        pytest.param({"latency_ms": -1}, id="negative-latency"),
        pytest.param({"size": 0}, id="size-zero"),
        pytest.param({"max_connections": 0}, id="max-connections-zero"),
        pytest.param({"tls": "ssl"}, id="tls-mode"),
    ],
)
def test_config_refusals(options: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        SinkConfig(**options).validate()  # type: ignore[arg-type]


# --------------------------------------------------------------------- parsers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("eod:451", FailRule("eod", 451), id="phase-code"),
        pytest.param("EOD:451", FailRule("eod", 451), id="phase-case"),
        pytest.param("mail:421:3", FailRule("mail", 421, after_n=3), id="bare-after"),
        pytest.param("mail:421:after=3", FailRule("mail", 421, after_n=3), id="after"),
        pytest.param("data:554:times=2", FailRule("data", 554, times=2), id="times"),
        pytest.param(
            "rcpt:550:pattern=*@bad.example",
            FailRule("rcpt", 550, pattern="*@bad.example"),
            id="pattern",
        ),
        pytest.param(
            "rcpt:450:2:times=1:pattern=x@[IPv6:::1]",
            FailRule("rcpt", 450, after_n=2, times=1, pattern="x@[IPv6:::1]"),
            id="all-options-pattern-with-colons",
        ),
        pytest.param("connect:554", FailRule("connect", 554), id="connect"),
        pytest.param("ehlo:421", FailRule("ehlo", 421), id="ehlo"),
    ],
)
def test_parse_fail_rule(text: str, expected: FailRule) -> None:
    assert parse_fail_rule(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("quit:451", "unknown phase", id="unknown-phase"),
        pytest.param("eod", "missing CODE", id="missing-code"),
        pytest.param("eod:", "missing CODE", id="empty-code"),
        pytest.param("eod:abc", "CODE must be a number", id="code-not-number"),
        pytest.param("eod:250", "400 to 599", id="code-not-error"),
        pytest.param("eod:600", "400 to 599", id="code-too-high"),
        pytest.param("eod:451:x", "must be a number", id="after-not-number"),
        pytest.param("eod:451:after=-1", "must be a number", id="after-negative"),
        pytest.param("eod:451:times=0", "must be 1 or more", id="times-zero"),
        pytest.param("eod:451:color=red", "unknown option", id="unknown-option"),
        pytest.param("eod:451:pattern=*@x", "mail and rcpt only", id="pattern-wrong-phase"),
        pytest.param("rcpt:550:pattern=", "empty pattern", id="empty-pattern"),
    ],
)
def test_parse_fail_rule_refusals(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as caught:
        parse_fail_rule(text)
    assert "PHASE:CODE" in str(caught.value)  # names the accepted forms
    assert repr(text) in str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("eod", PhaseRule("eod"), id="phase"),
        pytest.param("eod:3", PhaseRule("eod", after_n=3), id="bare-after"),
        pytest.param("rcpt:after=2:times=1", PhaseRule("rcpt", 2, 1), id="options"),
        pytest.param("connect", PhaseRule("connect"), id="connect"),
    ],
)
def test_parse_phase_rule(text: str, expected: PhaseRule) -> None:
    assert parse_phase_rule(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("later", id="unknown-phase"),
        pytest.param("eod:x", id="not-a-number"),
        pytest.param("eod:pattern=*", id="no-pattern"),
        pytest.param("eod:times=0", id="times-zero"),
    ],
)
def test_parse_phase_rule_refusals(text: str) -> None:
    with pytest.raises(UsageError, match="accepted: PHASE") as caught:
        parse_phase_rule(text)
    assert repr(text) in str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("127.0.0.1:2525", ("127.0.0.1", 2525), id="ipv4"),
        pytest.param("[::1]:0", ("::1", 0), id="ipv6"),
        pytest.param("localhost:25", ("localhost", 25), id="name"),
        pytest.param("2525", ("127.0.0.1", 2525), id="port-only"),
        pytest.param(":2525", ("127.0.0.1", 2525), id="colon-port"),
    ],
)
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("::1:25", id="ipv6-without-brackets"),
        pytest.param("[::1]", id="brackets-without-port"),
        pytest.param("host:", id="empty-port"),
        pytest.param("host:65536", id="port-too-high"),
        pytest.param("host:x", id="port-not-number"),
    ],
)
def test_parse_listen_refusals(text: str) -> None:
    with pytest.raises(UsageError, match="HOST:PORT"):
        parse_listen(text)


def test_parse_auth() -> None:
    assert parse_auth("user:pa:ss") == ("user", "pa:ss")
    with pytest.raises(UsageError) as caught:
        parse_auth("user-only-s3cret")
    assert "s3cret" not in str(caught.value)
