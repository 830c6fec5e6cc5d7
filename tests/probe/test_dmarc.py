"""DMARC (RFC 7489): the record's syntax, alignment, finding the record (served by the
loopback DNS server) and the verdict."""

from __future__ import annotations

import pytest
from dns_server import HANG, SERVFAIL, dns_server

from carerix_smtp.probe.dmarc import (
    DmarcLookup,
    DmarcRecord,
    DmarcRecordError,
    Identifier,
    aligned,
    candidate_domains,
    evaluate,
    find_dmarc,
    organizational_domain,
    parse_dmarc_record,
)
from carerix_smtp.smtp.resolve import make_resolver

# --- syntax ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("v=DMARC1; p=none", DmarcRecord("none"), id="minimal"),
        pytest.param(
            "v=DMARC1; p=reject; sp=quarantine; adkim=s; aspf=s; pct=50; "
            "rua=mailto:a@example.com, mailto:b@example.com",
            DmarcRecord(
                "reject",
                "quarantine",
                "s",
                "s",
                50,
                ("mailto:a@example.com", "mailto:b@example.com"),
            ),
            id="every-tag",
        ),
        pytest.param("v=DMARC1;p=quarantine;", DmarcRecord("quarantine"), id="no-spaces-trailing"),
        pytest.param("v=DMARC1 ; p = Reject", DmarcRecord("reject"), id="spaces-and-case"),
        pytest.param(
            "v=DMARC1; p=none; fo=1; ruf=mailto:f@x.test",
            DmarcRecord("none"),
            id="unused-tags-ignored",
        ),
        pytest.param("v=DMARC1; p=none; pct=0", DmarcRecord("none", pct=0), id="pct-zero"),
    ],
)
def test_parse_dmarc_record(text: str, expected: DmarcRecord) -> None:
    assert parse_dmarc_record(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("p=reject; v=DMARC1", "start with v=DMARC1", id="v-not-first"),
        pytest.param("v=DMARC2; p=reject", "start with v=DMARC1", id="wrong-version"),
        pytest.param("v=DMARC1", "no p=", id="no-policy"),
        pytest.param(
            "v=DMARC1; p=block", "p=block: one of none, quarantine, reject", id="unknown-policy"
        ),
        pytest.param("v=DMARC1; p=none; sp=maybe", "sp=maybe", id="unknown-sp"),
        pytest.param("v=DMARC1; p=none; adkim=x", "adkim=x: one of r, s", id="bad-adkim"),
        pytest.param("v=DMARC1; p=none; pct=150", "pct=150", id="pct-over-100"),
        pytest.param("v=DMARC1; p=none; pct=half", "pct=half", id="pct-not-number"),
        pytest.param("v=DMARC1; p=none; p=reject", "appears twice", id="duplicate-tag"),
        pytest.param("v=DMARC1; reject", "is not tag=value", id="no-equals"),
    ],
)
def test_parse_dmarc_record_refuses(text: str, message: str) -> None:
    with pytest.raises(DmarcRecordError, match=message.replace("=", "=")):
        parse_dmarc_record(text)


def test_subdomain_policy_applies_only_to_subdomains() -> None:
    record = parse_dmarc_record("v=DMARC1; p=reject; sp=none")
    assert record.policy_for(subdomain=False) == "reject"
    assert record.policy_for(subdomain=True) == "none"
    assert parse_dmarc_record("v=DMARC1; p=reject").policy_for(subdomain=True) == "reject"


# --- organizational domain and alignment -----------------------------------------------


@pytest.mark.parametrize(
    ("domain", "org"),
    [
        pytest.param("example.com", "example.com", id="two-labels"),
        pytest.param("mail.example.com", "example.com", id="subdomain"),
        pytest.param("a.b.Example.COM.", "example.com", id="deep-case-dot"),
        pytest.param("shop.example.co.uk", "example.co.uk", id="co-uk"),
        pytest.param("example.com.au", "example.com.au", id="com-au"),
        pytest.param("localhost", "localhost", id="one-label"),
    ],
)
def test_organizational_domain(domain: str, org: str) -> None:
    assert organizational_domain(domain) == org


@pytest.mark.parametrize(
    ("domain", "from_domain", "mode", "result"),
    [
        pytest.param("example.com", "example.com", "s", True, id="strict-same"),
        pytest.param("EXAMPLE.com.", "example.com", "s", True, id="strict-case-dot"),
        pytest.param("bounce.example.com", "example.com", "s", False, id="strict-subdomain"),
        pytest.param("bounce.example.com", "example.com", "r", True, id="relaxed-subdomain"),
        pytest.param("example.com", "news.example.com", "r", True, id="relaxed-parent"),
        pytest.param("a.example.com", "b.example.com", "r", True, id="relaxed-siblings"),
        pytest.param("relay.test", "example.com", "r", False, id="relaxed-other-domain"),
        pytest.param("a.co.uk", "b.co.uk", "r", False, id="relaxed-co-uk-strangers"),
        pytest.param(None, "example.com", "r", False, id="no-domain"),
    ],
)
def test_aligned(domain: str | None, from_domain: str, mode: str, result: bool) -> None:
    assert aligned(domain, from_domain, mode) is result


@pytest.mark.parametrize(
    ("domain", "names"),
    [
        pytest.param("example.com", ["example.com"], id="two-labels"),
        pytest.param(
            "a.b.example.com", ["a.b.example.com", "b.example.com", "example.com"], id="walk"
        ),
        pytest.param("localhost", ["localhost"], id="one-label"),
    ],
)
def test_candidate_domains(domain: str, names: list[str]) -> None:
    assert candidate_domains(domain) == names


# --- finding the record ------------------------------------------------------------------

ZONE = {
    "_dmarc.example.test": {"TXT": ["v=DMARC1; p=reject; sp=quarantine; adkim=s"]},
    "_dmarc.other.test": {"TXT": ["google-site-verification=x", "v=DMARC1; p=none"]},
    "_dmarc.two.test": {"TXT": ["v=DMARC1; p=none", "v=DMARC1; p=reject"]},
    "_dmarc.broken.test": {"TXT": ["v=DMARC1; p=sometimes"]},
    "_dmarc.onlyother.test": {"TXT": ["not dmarc"]},
    "_dmarc.servfail.test": {"TXT": SERVFAIL},
    "_dmarc.hang.test": {"TXT": HANG},
}


@pytest.fixture(scope="module")
def dns():
    with dns_server({k: dict(v) for k, v in ZONE.items()}) as server:
        yield server


def find(dns, domain: str) -> DmarcLookup:
    return find_dmarc(domain, resolver=make_resolver([dns.nameserver]), timeout=0.5)


def test_record_at_the_from_domain(dns) -> None:
    lookup = find(dns, "example.test")
    assert lookup.domain == "example.test" and lookup.record is not None
    assert lookup.record.policy == "reject" and lookup.record.adkim == "s"
    assert lookup.queried == ("_dmarc.example.test",)


def test_record_found_at_a_parent(dns) -> None:
    lookup = find(dns, "a.news.example.test")
    assert lookup.domain == "example.test"
    assert lookup.queried == (
        "_dmarc.a.news.example.test",
        "_dmarc.news.example.test",
        "_dmarc.example.test",
    )


def test_other_txt_records_are_ignored(dns) -> None:
    lookup = find(dns, "other.test")
    assert lookup.record == DmarcRecord("none") and lookup.error is None


@pytest.mark.parametrize(
    ("domain", "error"),
    [
        pytest.param("two.test", "_dmarc.two.test has 2 DMARC records", id="two-records"),
        pytest.param("broken.test", "_dmarc.broken.test: p=sometimes", id="malformed"),
    ],
)
def test_unusable_record(dns, domain: str, error: str) -> None:
    lookup = find(dns, domain)
    assert lookup.record is None and error in (lookup.error or "")


@pytest.mark.parametrize("domain", ["missing.test", "onlyother.test", "sub.missing.test"])
def test_no_record(dns, domain: str) -> None:
    lookup = find(dns, domain)
    assert lookup.record is None and lookup.error is None and lookup.temperror is None
    assert lookup.queried[-1] == f"_dmarc.{'.'.join(domain.split('.')[-2:])}"


@pytest.mark.parametrize("domain", ["servfail.test", "hang.test"])
def test_dns_failure_is_temperror(dns, domain: str) -> None:
    lookup = find(dns, domain)
    assert lookup.record is None and f"_dmarc.{domain}" in (lookup.temperror or "")


# --- the verdict -------------------------------------------------------------------------

SPF_PASS = Identifier("example.test", "pass", True)
SPF_SOFT = Identifier("example.test", "softfail", False)
DKIM_PASS = Identifier("example.test", "pass", True)
DKIM_PARENT = Identifier("example.test", "pass", True)  # d= the parent of a subdomain From
DKIM_NONE = Identifier(None, "none", False)
DKIM_BAD = Identifier("example.test", "mismatch", False)
RELAY_SPF = Identifier("relay.test", "pass", True)  # a relay's own envelope domain


def lookup_of(text: str, domain: str = "example.test") -> DmarcLookup:
    return DmarcLookup((f"_dmarc.{domain}",), domain, text, parse_dmarc_record(text))


@pytest.mark.parametrize(
    ("text", "from_domain", "spf", "dkim", "result", "policy", "enforced"),
    [
        pytest.param(
            "v=DMARC1; p=reject",
            "example.test",
            SPF_PASS,
            DKIM_NONE,
            "pass",
            "reject",
            False,
            id="spf-aligned",
        ),
        pytest.param(
            "v=DMARC1; p=reject",
            "example.test",
            SPF_SOFT,
            DKIM_PASS,
            "pass",
            "reject",
            False,
            id="dkim-aligned",
        ),
        pytest.param(
            "v=DMARC1; p=reject",
            "example.test",
            SPF_SOFT,
            DKIM_NONE,
            "fail",
            "reject",
            True,
            id="neither-reject",
        ),
        pytest.param(
            "v=DMARC1; p=reject",
            "example.test",
            RELAY_SPF,
            DKIM_BAD,
            "fail",
            "reject",
            True,
            id="spf-misaligned-dkim-failed",
        ),
        pytest.param(
            "v=DMARC1; p=quarantine; pct=0",
            "example.test",
            SPF_SOFT,
            DKIM_NONE,
            "fail",
            "quarantine",
            False,
            id="pct-zero-not-enforced",
        ),
        pytest.param(
            "v=DMARC1; p=none",
            "example.test",
            SPF_SOFT,
            DKIM_NONE,
            "fail",
            "none",
            False,
            id="neither-p-none",
        ),
        pytest.param(
            "v=DMARC1; p=reject; adkim=s",
            "news.example.test",
            Identifier("news.example.test", "softfail", False),
            DKIM_PARENT,
            "fail",
            "reject",
            True,
            id="dkim-parent-strict",
        ),
        pytest.param(
            "v=DMARC1; p=reject; sp=none",
            "news.example.test",
            Identifier("news.example.test", "softfail", False),
            DKIM_PARENT,
            "pass",
            "none",
            False,
            id="dkim-parent-relaxed-sp",
        ),
    ],
)
def test_evaluate(
    text: str,
    from_domain: str,
    spf: Identifier,
    dkim: Identifier,
    result: str,
    policy: str,
    enforced: bool,
) -> None:
    verdict = evaluate(lookup_of(text), from_domain, spf, dkim)
    assert (verdict.result, verdict.policy, verdict.enforced) == (result, policy, enforced)
    assert verdict.to_dict()["record"] == text


def test_evaluate_without_record() -> None:
    verdict = evaluate(DmarcLookup(("_dmarc.x.test",)), "x.test", SPF_PASS, DKIM_PASS)
    assert verdict.result == "none" and not verdict.enforced and verdict.policy is None
