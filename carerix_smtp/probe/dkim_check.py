"""The DKIM check of ``cxsmtp test --from``: is the public key record of the
configured key published, does it parse, and is it the configured key's?

``check_dkim(key, from_domain)`` looks up ``SELECTOR._domainkey.DOMAIN`` (RFC 6376
§3.6.2.1), parses it (§3.6.1: ``v=DKIM1``, ``k=``, ``p=``, ``h=``, ``s=``, ``t=``)
and compares its public key with the one derived from the configured private key
(``public_txt`` of config/dkim.py).  Keys are compared as keys, not as text: an RSA
``p=`` may be a SubjectPublicKeyInfo or a bare PKCS#1 RSAPublicKey, both valid.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from carerix_smtp.errors import CxsmtpError
from carerix_smtp.probe.txt import TagListError, TxtTempError, lookup_txt, parse_tag_list

if TYPE_CHECKING:
    import dns.resolver

    from carerix_smtp.config.dkim import DkimKey

# The results.  "pass": the published key is the configured one; "none": no key
# configured for the From domain (nothing to check); the others fail the phase.
RESULTS = (
    "temperror",
    "key-error",
    "missing",
    "multiple",
    "malformed",
    "revoked",
    "mismatch",
    "none",
    "pass",
)
KEY_TYPES = ("rsa", "ed25519")  # RFC 6376 §3.6.1, RFC 8463


class DkimRecordError(ValueError):
    """A DKIM key record that does not parse; the message says what is wrong."""


@dataclass(frozen=True)
class DkimRecord:
    """A parsed key record (RFC 6376 §3.6.1)."""

    key_type: str  # k=, default rsa
    public_key: str  # p=, base64 without whitespace; "" = revoked
    hashes: tuple[str, ...] = ()  # h=; () = any
    services: tuple[str, ...] = ("*",)  # s=
    flags: tuple[str, ...] = ()  # t=: y testing, s strict

    @property
    def revoked(self) -> bool:
        return self.public_key == ""

    @property
    def testing(self) -> bool:
        return "y" in self.flags


def parse_dkim_record(text: str) -> DkimRecord:
    """Parse a DKIM key record; raises ``DkimRecordError`` naming the problem."""
    try:
        tags = parse_tag_list(text)
    except TagListError as exc:
        raise DkimRecordError(str(exc)) from None
    if "v" in tags:
        if next(iter(tags)) != "v":
            raise DkimRecordError("v= must be the first tag")
        if tags["v"] != "DKIM1":
            raise DkimRecordError(f"v={tags['v']}: only v=DKIM1 is defined")
    key_type = tags.get("k", "rsa").lower()
    if key_type not in KEY_TYPES:
        raise DkimRecordError(f"k={key_type}: unknown key type (rsa or ed25519)")
    if "p" not in tags:
        raise DkimRecordError("no p= tag (the public key)")
    public_key = re.sub(r"\s+", "", tags["p"])
    if public_key:
        try:
            base64.b64decode(public_key, validate=True)
        except (binascii.Error, ValueError):
            raise DkimRecordError("p= is not valid base64") from None
    return DkimRecord(
        key_type,
        public_key,
        _colon_list(tags.get("h")),
        _colon_list(tags.get("s")) or ("*",),
        _colon_list(tags.get("t")),
    )


def _colon_list(value: str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return tuple(part.strip().lower() for part in value.split(":") if part.strip())


def public_key_der(record: DkimRecord) -> bytes:
    """The record's public key as DER SubjectPublicKeyInfo, for comparing keys.
    Raises ``DkimRecordError`` when ``p=`` is not a key of type ``k=``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    raw = base64.b64decode(record.public_key)
    key: Any
    try:
        if record.key_type == "ed25519":  # RFC 8463 §4.2: the raw 32-byte key
            key = ed25519.Ed25519PublicKey.from_public_bytes(raw)
        else:
            key = _rsa_public_key(raw, record.public_key)
            if not isinstance(key, rsa.RSAPublicKey):
                raise ValueError("not an RSA key")
    except ValueError as exc:
        raise DkimRecordError(f"p= is not a {record.key_type} public key ({exc})") from None
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _rsa_public_key(raw: bytes, b64: str) -> Any:
    from cryptography.hazmat.primitives import serialization

    try:
        return serialization.load_der_public_key(raw)
    except ValueError:  # a bare RSAPublicKey (PKCS#1), as some publish it
        pem = f"-----BEGIN RSA PUBLIC KEY-----\n{b64}\n-----END RSA PUBLIC KEY-----\n"
        return serialization.load_pem_public_key(pem.encode("ascii"))


@dataclass(frozen=True)
class DkimCheck:
    """The outcome for one From domain."""

    result: str  # one of RESULTS
    from_domain: str
    domain: str | None = None  # d= of the configured key (the From domain or a parent)
    selector: str | None = None
    name: str | None = None  # SELECTOR._domainkey.DOMAIN
    record: str | None = None  # what DNS has there
    expected: str | None = None  # the TXT record to publish
    reason: str = ""
    testing: bool = False  # t=y: receivers treat failures as unsigned
    error: CxsmtpError | None = None  # with key-error: the key problem

    @property
    def passed(self) -> bool:
        return self.result == "pass"

    def to_dict(self) -> dict[str, Any]:
        return {
            "result": self.result,
            "from_domain": self.from_domain,
            "domain": self.domain,
            "selector": self.selector,
            "name": self.name,
            "record": self.record,
            "expected": self.expected,
            "reason": self.reason,
            "testing": self.testing,
        }


def check_dkim(
    key: DkimKey | None,
    from_domain: str,
    *,
    resolver: dns.resolver.Resolver | None = None,
    timeout: float = 10.0,
) -> DkimCheck:
    """Is ``key``'s public key published at its selector, intact and matching?"""
    if key is None:
        return DkimCheck("none", from_domain, reason=f"no DKIM key configured for {from_domain}")
    name = key.record_name  # SELECTOR._domainkey.DOMAIN
    found = DkimCheck("pass", from_domain, key.domain, key.selector, name)
    try:
        expected = _expected_txt(key)
        expected_der = public_key_der(parse_dkim_record(expected))
    except CxsmtpError as exc:
        return _with(found, "key-error", str(exc), error=exc)
    except DkimRecordError as exc:
        return _with(found, "key-error", f"the configured key gives no usable record: {exc}")
    found = _with(found, "pass", "", expected=expected)
    try:
        records = lookup_txt(name, resolver, timeout)
    except TxtTempError as exc:
        return _with(found, "temperror", str(exc))
    return _compare(found, records, expected_der)


def _compare(found: DkimCheck, records: list[str], expected_der: bytes) -> DkimCheck:
    name = found.name
    if not records:
        return _with(found, "missing", f"no TXT record at {name}")
    if len(records) > 1:
        return _with(found, "multiple", f"{len(records)} TXT records at {name}; one is needed")
    text = records[0]
    try:
        record = parse_dkim_record(text)
        if record.revoked:
            return _with(found, "revoked", f"the key at {name} is revoked (empty p=)", text)
        published = public_key_der(record)
    except DkimRecordError as exc:
        return _with(found, "malformed", f"the record at {name} does not parse: {exc}", text)
    if not ({"*", "email"} & set(record.services)):
        reason = f"s={':'.join(record.services)}: the key is not for e-mail"
        return _with(found, "malformed", reason, text)
    if record.hashes and "sha256" not in record.hashes:
        reason = f"h={':'.join(record.hashes)}: sha256, which cxsmtp signs with, is not allowed"
        return _with(found, "malformed", reason, text)
    if published != expected_der:
        reason = f"the key at {name} is not the configured key's public key"
        return _with(found, "mismatch", reason, text, testing=record.testing)
    reason = f"the key at {name} matches the configured key"
    return _with(found, "pass", reason, text, testing=record.testing)


def _with(
    found: DkimCheck, result: str, reason: str, record: str | None = None, **kw: Any
) -> DkimCheck:
    return replace(found, result=result, reason=reason, record=record, **kw)


def _expected_txt(key: DkimKey) -> str:
    """The record to publish for ``key`` (raises DkimKeyError when the key is unusable)."""
    from carerix_smtp.config.dkim import public_txt

    return public_txt(key)
