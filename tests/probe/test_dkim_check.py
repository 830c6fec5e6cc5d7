"""The DKIM check of `cxsmtp test --from`: the key record's syntax (RFC 6376 §3.6.1),
keys compared as keys, and the published record looked up through the loopback DNS
server against the configured private key."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from dns_server import SERVFAIL, dns_server
from hypothesis import given, settings
from hypothesis import strategies as st

from carerix_smtp.config.dkim import DkimKey, public_txt
from carerix_smtp.errors import DkimKeyError
from carerix_smtp.probe.dkim_check import (
    DkimRecord,
    DkimRecordError,
    check_dkim,
    parse_dkim_record,
    public_key_der,
)
from carerix_smtp.probe.txt import parse_tag_list
from carerix_smtp.smtp.resolve import make_resolver

RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED = ed25519.Ed25519PrivateKey.generate()


def spki_b64(key: rsa.RSAPrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def pkcs1_b64(key: rsa.RSAPrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.PKCS1
    )
    return base64.b64encode(der).decode()


def ed_b64(key: ed25519.Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


P = spki_b64(RSA)

# --- syntax ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(f"v=DKIM1; k=rsa; p={P}", DkimRecord("rsa", P), id="usual"),
        pytest.param(f"p={P}", DkimRecord("rsa", P), id="only-p-default-rsa"),
        pytest.param(f"v=DKIM1;k=RSA;p={P};", DkimRecord("rsa", P), id="tight-trailing-semicolon"),
        pytest.param(
            f"v=DKIM1; k=rsa; p={P[:100]} {P[100:200]}\t{P[200:]}",
            DkimRecord("rsa", P),
            id="p-with-whitespace",
        ),
        pytest.param(
            "v=DKIM1; k=ed25519; p=" + ed_b64(ED), DkimRecord("ed25519", ed_b64(ED)), id="ed25519"
        ),
        pytest.param("v=DKIM1; p=", DkimRecord("rsa", ""), id="revoked"),
        pytest.param(
            f"v=DKIM1; h=sha1:sha256; s=email; t=y:s; n=a note; p={P}",
            DkimRecord("rsa", P, ("sha1", "sha256"), ("email",), ("y", "s")),
            id="every-tag",
        ),
    ],
)
def test_parse_dkim_record(text: str, expected: DkimRecord) -> None:
    assert parse_dkim_record(text) == expected


def test_revoked_and_testing_flags() -> None:
    assert parse_dkim_record("v=DKIM1; p=").revoked
    record = parse_dkim_record(f"v=DKIM1; t=y; p={P}")
    assert record.testing and not record.revoked


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(f"k=rsa; v=DKIM1; p={P}", "v= must be the first tag", id="v-not-first"),
        pytest.param(f"v=DKIM2; p={P}", "only v=DKIM1", id="wrong-version"),
        pytest.param("v=DKIM1; k=rsa", "no p= tag", id="no-p"),
        pytest.param(f"v=DKIM1; k=dsa; p={P}", "k=dsa: unknown key type", id="unknown-k"),
        pytest.param("v=DKIM1; p=not*base64!", "not valid base64", id="bad-base64"),
        pytest.param(f"v=DKIM1; p={P}; p={P}", "appears twice", id="duplicate-tag"),
        pytest.param(f"v=DKIM1; {P}", "is not tag=value", id="missing-p-equals"),
        pytest.param(f"v=DKIM1; 1k=rsa; p={P}", "is not a tag name", id="bad-tag-name"),
    ],
)
def test_parse_dkim_record_refuses(text: str, message: str) -> None:
    with pytest.raises(DkimRecordError, match=message):
        parse_dkim_record(text)


def test_spki_and_pkcs1_forms_are_the_same_key() -> None:
    spki = public_key_der(DkimRecord("rsa", spki_b64(RSA)))
    assert public_key_der(DkimRecord("rsa", pkcs1_b64(RSA))) == spki
    assert public_key_der(DkimRecord("rsa", spki_b64(OTHER_RSA))) != spki


def test_ed25519_raw_key() -> None:
    der = public_key_der(DkimRecord("ed25519", ed_b64(ED)))
    assert der == ED.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize(
    "record",
    [
        pytest.param(DkimRecord("rsa", ed_b64(ED)), id="ed25519-bytes-as-rsa"),
        pytest.param(DkimRecord("ed25519", P), id="rsa-bytes-as-ed25519"),
        pytest.param(DkimRecord("rsa", base64.b64encode(b"junk").decode()), id="junk"),
    ],
)
def test_not_a_key_of_that_type(record: DkimRecord) -> None:
    with pytest.raises(DkimRecordError, match=f"p= is not a {record.key_type} public key"):
        public_key_der(record)


# --- the published record against the configured key ----------------------------------


def key_file(directory: Path, private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> Path:
    path = directory / "dkim.pem"
    path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def dkim_key(directory: Path, private: object = RSA, domain: str = "example.test") -> DkimKey:
    algorithm = "ed25519-sha256" if isinstance(private, ed25519.Ed25519PrivateKey) else "rsa-sha256"
    return DkimKey(domain, "s1", key_file(directory, private), algorithm, ("from",))  # type: ignore[arg-type]


NAME = "s1._domainkey.example.test"
ZONE = {
    "rsa.test": {"TXT": [f"v=DKIM1; k=rsa; p={P}"]},
    "pkcs1.test": {"TXT": [f"v=DKIM1; k=rsa; p={pkcs1_b64(RSA)}"]},
    "ed.test": {"TXT": [f"v=DKIM1; k=ed25519; p={ed_b64(ED)}"]},
    "other.test": {"TXT": [f"v=DKIM1; k=rsa; p={spki_b64(OTHER_RSA)}"]},
    "testing.test": {"TXT": [f"v=DKIM1; t=y; p={spki_b64(OTHER_RSA)}"]},
    "revoked.test": {"TXT": ["v=DKIM1; k=rsa; p="]},
    "broken.test": {"TXT": ["v=DKIM1; k=rsa p=abc"]},
    "two.test": {"TXT": [f"v=DKIM1; p={P}", f"v=DKIM1; p={spki_b64(OTHER_RSA)}"]},
    "web.test": {"TXT": [f"v=DKIM1; s=tlsrpt; p={P}"]},
    "sha1.test": {"TXT": [f"v=DKIM1; h=sha1; p={P}"]},
    "edtype.test": {"TXT": [f"v=DKIM1; k=ed25519; p={ed_b64(ED)}"]},
    "servfail.test": {"TXT": SERVFAIL},
}


@pytest.fixture(scope="module")
def dns():
    with dns_server({}) as server:
        yield server


def check(dns, key: DkimKey | None, published: str | None, from_domain: str = "example.test"):
    """Serve the record of ZONE[published] at s1._domainkey.example.test, then check."""
    dns.records.clear()
    dns.queries.clear()
    if published is not None:
        dns.records[NAME] = ZONE[published]
    return check_dkim(key, from_domain, resolver=make_resolver([dns.nameserver]), timeout=1.0)


@pytest.mark.parametrize(
    ("private", "published", "result", "reason"),
    [
        pytest.param(RSA, "rsa.test", "pass", f"the key at {NAME} matches", id="rsa-match"),
        pytest.param(RSA, "pkcs1.test", "pass", "matches", id="rsa-pkcs1-match"),
        pytest.param(ED, "ed.test", "pass", "matches", id="ed25519-match"),
        pytest.param(RSA, None, "missing", f"no TXT record at {NAME}", id="missing"),
        pytest.param(RSA, "other.test", "mismatch", "is not the configured key", id="wrong-key"),
        pytest.param(RSA, "edtype.test", "mismatch", "is not the configured key", id="wrong-type"),
        pytest.param(RSA, "revoked.test", "revoked", "revoked (empty p=)", id="revoked"),
        pytest.param(RSA, "broken.test", "malformed", "does not parse", id="malformed"),
        pytest.param(RSA, "two.test", "multiple", "2 TXT records", id="two-records"),
        pytest.param(RSA, "web.test", "malformed", "not for e-mail", id="not-email-service"),
        pytest.param(RSA, "sha1.test", "malformed", "sha256", id="sha1-only"),
        pytest.param(RSA, "servfail.test", "temperror", "DNS error", id="servfail"),
    ],
)
def test_check_dkim(
    dns, tmp_path: Path, private: object, published: str | None, result: str, reason: str
) -> None:
    key = dkim_key(tmp_path, private)
    outcome = check(dns, key, published)
    assert outcome.result == result and reason in outcome.reason
    assert outcome.name == NAME and outcome.domain == "example.test"
    assert outcome.expected == public_txt(key)
    assert outcome.record == (
        ZONE[published]["TXT"][0] if result not in ("missing", "multiple", "temperror") else None
    )
    assert outcome.passed is (result == "pass")


def test_testing_flag_is_reported(dns, tmp_path: Path) -> None:
    outcome = check(dns, dkim_key(tmp_path), "testing.test")
    assert outcome.result == "mismatch" and outcome.testing


def test_no_key_configured(dns) -> None:
    outcome = check(dns, None, "rsa.test")
    assert outcome.result == "none" and outcome.name is None
    assert outcome.reason == "no DKIM key configured for example.test"
    assert dns.queries == []  # nothing to look up


def test_key_of_a_parent_domain_is_looked_up_under_that_domain(dns, tmp_path: Path) -> None:
    outcome = check(dns, dkim_key(tmp_path), "rsa.test", from_domain="news.example.test")
    assert outcome.result == "pass" and outcome.domain == "example.test"
    assert outcome.from_domain == "news.example.test"


def test_unreadable_key(dns, tmp_path: Path) -> None:
    key = dkim_key(tmp_path)
    key.key_file.unlink()
    outcome = check(dns, key, "rsa.test")
    assert outcome.result == "key-error" and isinstance(outcome.error, DkimKeyError)
    assert str(key.key_file) in outcome.reason
    assert dns.queries == []  # the key problem is reported before DNS is asked


# --- the tag=value syntax both records share (probe/txt.py) -------------------------------

_names = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,6}", fullmatch=True)
_values = st.from_regex(r"[!-:<-~]([!-:<-~ ]{0,20}[!-:<-~])?", fullmatch=True)  # VALCHAR, no ';'


@settings(max_examples=50)
@given(st.dictionaries(_names, _values, max_size=6), st.sampled_from(["; ", ";", " ;\t"]))
def test_tag_list_round_trip(tags: dict[str, str], separator: str) -> None:
    text = separator.join(f"{name}={value}" for name, value in tags.items())
    assert parse_tag_list(text) == tags
