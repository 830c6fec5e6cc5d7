"""SPF evaluation (RFC 7208) against records served by the loopback DNS server."""

from __future__ import annotations

import pytest
from dns_server import HANG, dns_server

from carerix_smtp.probe.spf import check_host
from carerix_smtp.smtp.resolve import make_resolver

ZONE = {
    "ip4.test": {"TXT": ["v=spf1 ip4:192.0.2.0/24 -all"]},
    "ip6.test": {"TXT": ["v=spf1 ip6:2001:db8::/32 -all"]},
    "a.test": {"TXT": ["v=spf1 a -all"], "A": ["192.0.2.10"], "AAAA": ["2001:db8::10"]},
    "acidr.test": {"TXT": ["v=spf1 a:host.acidr.test/24 -all"]},
    "host.acidr.test": {"A": ["198.51.100.1"]},
    "mx.test": {"TXT": ["v=spf1 mx -all"], "MX": [(10, "mail.mx.test")]},
    "mail.mx.test": {"A": ["192.0.2.25"]},
    "include.test": {"TXT": ["v=spf1 include:provider.test -all"]},
    "provider.test": {"TXT": ["v=spf1 ip4:203.0.113.0/24 ~all"]},
    "redirect.test": {"TXT": ["v=spf1 redirect=provider.test"]},
    "soft.test": {"TXT": ["v=spf1 ~all"]},
    "neutral.test": {"TXT": ["v=spf1 ?all"]},
    "plus.test": {"TXT": ["v=spf1 +all"]},
    "nomatch.test": {"TXT": ["v=spf1 ip4:192.0.2.1"]},
    "other-txt.test": {"TXT": ["google-site-verification=abc"]},
    "two.test": {"TXT": ["v=spf1 -all", "v=spf1 +all"]},
    "syntax.test": {"TXT": ["v=spf1 ip4:not-an-ip -all"]},
    "unknown.test": {"TXT": ["v=spf1 foo:bar -all"]},
    "badinclude.test": {"TXT": ["v=spf1 include:missing.test -all"]},
    "badredirect.test": {"TXT": ["v=spf1 redirect=missing.test"]},
    "exists.test": {"TXT": ["v=spf1 exists:%{i}.allow.exists.test -all"]},
    "192.0.2.7.allow.exists.test": {"A": ["127.0.0.2"]},
    "slow.test": {"TXT": HANG},
    "long.test": {"TXT": ["v=spf1 " + " ".join(f"ip4:10.0.{i}.0/24" for i in range(40)) + " -all"]},
    # 11 DNS-querying mechanisms: one over the limit of RFC 7208 §4.6.4.
    "many.test": {"TXT": ["v=spf1 " + " ".join(f"a:h{i}.many.test" for i in range(11)) + " -all"]},
    **{f"h{i}.many.test": {"A": ["198.51.100.99"]} for i in range(11)},
    # A loop through include must end as permerror, not recurse forever.
    "loop.test": {"TXT": ["v=spf1 include:loop.test -all"]},
}


@pytest.fixture(scope="module")
def resolver():
    with dns_server({k: dict(v) for k, v in ZONE.items()}) as dns:
        yield make_resolver([dns.nameserver])


@pytest.mark.parametrize(
    ("ip", "domain", "result", "mechanism"),
    [
        pytest.param("192.0.2.7", "ip4.test", "pass", "ip4:192.0.2.0/24", id="ip4-pass"),
        pytest.param("198.51.100.1", "ip4.test", "fail", "-all", id="ip4-fail"),
        pytest.param("2001:db8::5", "ip6.test", "pass", "ip6:2001:db8::/32", id="ip6-pass"),
        pytest.param("192.0.2.7", "ip6.test", "fail", "-all", id="ip6-v4-client"),
        pytest.param("192.0.2.10", "a.test", "pass", "a", id="a-v4"),
        pytest.param("2001:db8::10", "a.test", "pass", "a", id="a-v6"),
        pytest.param("192.0.2.11", "a.test", "fail", "-all", id="a-miss"),
        pytest.param("198.51.100.77", "acidr.test", "pass", "a:host.acidr.test/24", id="a-cidr"),
        pytest.param("192.0.2.25", "mx.test", "pass", "mx", id="mx"),
        pytest.param("203.0.113.9", "include.test", "pass", "include:provider.test", id="include"),
        pytest.param("192.0.2.1", "include.test", "fail", "-all", id="include-no-match"),
        pytest.param("203.0.113.9", "redirect.test", "pass", "ip4:203.0.113.0/24", id="redirect"),
        pytest.param("192.0.2.1", "redirect.test", "softfail", "~all", id="redirect-softfail"),
        pytest.param("192.0.2.1", "soft.test", "softfail", "~all", id="softfail"),
        pytest.param("192.0.2.1", "neutral.test", "neutral", "?all", id="neutral"),
        pytest.param("192.0.2.1", "plus.test", "pass", "all", id="plus-all"),
        pytest.param("192.0.2.2", "nomatch.test", "neutral", None, id="default-neutral"),
        pytest.param("192.0.2.1", "other-txt.test", "none", None, id="no-spf-record"),
        pytest.param("192.0.2.1", "missing.test", "none", None, id="nxdomain"),
        pytest.param("192.0.2.1", "two.test", "permerror", None, id="two-records"),
        pytest.param("192.0.2.1", "syntax.test", "permerror", None, id="syntax-error"),
        pytest.param("192.0.2.1", "unknown.test", "permerror", None, id="unknown-mechanism"),
        pytest.param("192.0.2.1", "badinclude.test", "permerror", None, id="include-none"),
        pytest.param("192.0.2.1", "badredirect.test", "permerror", None, id="redirect-none"),
        pytest.param("192.0.2.7", "exists.test", "pass", "exists:%{i}.allow.exists.test",
                     id="exists-macro"),
        pytest.param("192.0.2.8", "exists.test", "fail", "-all", id="exists-miss"),
        pytest.param("10.0.39.5", "long.test", "pass", "ip4:10.0.39.0/24", id="long-record"),
        pytest.param("192.0.2.1", "many.test", "permerror", None, id="ten-lookup-limit"),
        pytest.param("192.0.2.1", "loop.test", "permerror", None, id="include-loop"),
    ],
)  # fmt: skip
def test_check_host(resolver, ip: str, domain: str, result: str, mechanism: str | None) -> None:
    outcome = check_host(ip, domain, f"me@{domain}", resolver=resolver, timeout=2)
    assert outcome.result == result, outcome
    assert outcome.mechanism == mechanism


def test_lookup_limit_message(resolver) -> None:
    outcome = check_host("192.0.2.1", "many.test", "me@many.test", resolver=resolver)
    assert "10 DNS lookups" in outcome.reason and outcome.lookups == 11


def test_record_that_decided_is_reported(resolver) -> None:
    outcome = check_host("203.0.113.9", "include.test", "x@include.test", resolver=resolver)
    assert outcome.record == "v=spf1 include:provider.test -all"
    assert outcome.domain == "include.test"
    redirected = check_host("203.0.113.9", "redirect.test", "x@redirect.test", resolver=resolver)
    assert redirected.domain == "provider.test"
    assert redirected.record == "v=spf1 ip4:203.0.113.0/24 ~all"


def test_dns_timeout_is_temperror(resolver) -> None:
    outcome = check_host("192.0.2.1", "slow.test", "x@slow.test", resolver=resolver, timeout=0.3)
    assert outcome.result == "temperror"


def test_not_an_ip() -> None:
    assert check_host("nope", "a.test", "x@a.test").result == "permerror"
