"""SPF (RFC 7208) evaluation: does the sender domain authorise this address?

``check_host(ip, domain, sender)`` implements RFC 7208 §4-§7 on dnspython: the
mechanisms all, include, a, mx, ptr (never matches, as §5.5 recommends not to
rely on it), ip4, ip6, exists; the modifiers redirect (and exp, ignored);
qualifiers + - ~ ?; macros (§7) in domain specs; the limits of §4.6.4 (10 DNS
mechanisms/modifiers, 10 MX names, 2 void lookups).

Why not a library: pyspf (the maintained choice) was last released in 2020 and
configures its DNS globally, which makes pointing one check at a loopback
nameserver awkward; the subset cxsmtp needs is small and testable here.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import dns.exception
import dns.name
import dns.resolver

log = logging.getLogger(__name__)

MAX_DNS_TERMS = 10  # RFC 7208 §4.6.4
MAX_VOID_LOOKUPS = 2  # RFC 7208 §4.6.4
MAX_MX_NAMES = 10  # RFC 7208 §4.6.4
DEFAULT_TIMEOUT = 10.0

RESULTS = ("pass", "fail", "softfail", "neutral", "none", "permerror", "temperror")
_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_MECHANISMS = ("all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists")


@dataclass(frozen=True)
class SpfResult:
    """The outcome; ``domain`` and ``record`` are those of the policy that decided."""

    result: str
    domain: str
    record: str | None = None
    mechanism: str | None = None
    reason: str = ""
    lookups: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "result": self.result,
            "domain": self.domain,
            "record": self.record,
            "mechanism": self.mechanism,
            "reason": self.reason,
            "lookups": self.lookups,
        }


class _Abort(Exception):
    def __init__(self, result: str, reason: str, domain: str, record: str | None = None) -> None:
        super().__init__(reason)
        self.result = result
        self.reason = reason
        self.domain = domain
        self.record = record


@dataclass
class _State:
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    sender: str
    helo: str
    resolver: dns.resolver.Resolver
    timeout: float
    lookups: int = 0
    void: int = 0
    cache: dict[tuple[str, str], list[Any]] = field(default_factory=dict)


def check_host(
    ip: str,
    domain: str,
    sender: str,
    *,
    resolver: dns.resolver.Resolver | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    helo: str = "",
) -> SpfResult:
    """RFC 7208 §4 check_host() for the connecting ``ip`` and the MAIL FROM ``sender``."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return SpfResult("permerror", domain, reason=f"{ip!r} is not an IP address")
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if "@" not in sender:
        sender = f"postmaster@{domain}"
    state = _State(address, sender, helo or domain, resolver or dns.resolver.Resolver(), timeout)
    try:
        result, record, mechanism, reason, where = _check(state, domain.rstrip(".").lower(), 0)
    except _Abort as abort:
        return SpfResult(
            abort.result, abort.domain, abort.record, None, abort.reason, state.lookups
        )
    return SpfResult(result, where, record, mechanism, reason, state.lookups)


def _check(state: _State, domain: str, depth: int) -> tuple[str, str | None, str | None, str, str]:
    """-> (result, record, mechanism, reason, domain that decided)."""
    if depth > MAX_DNS_TERMS:
        raise _Abort("permerror", "include/redirect loop", domain)
    if not _valid_domain(domain):
        return "none", None, None, f"{domain!r} is not a valid domain", domain
    record = _find_record(state, domain)
    if record is None:
        return "none", None, None, f"{domain} publishes no SPF record", domain
    terms = record.split()[1:]
    redirect: str | None = None
    for term in terms:
        name, sep, value = term.partition("=")
        if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]*", name):
            name = name.lower()
            if name == "redirect":
                if redirect is not None:
                    raise _Abort("permerror", "two redirect= modifiers", domain, record)
                redirect = value
            elif name == "exp":
                pass  # explanation text: not needed for a diagnosis
            continue  # unknown modifiers are ignored (§6)
        qualifier = "+"
        if term[:1] in _QUALIFIERS:
            qualifier, term = term[0], term[1:]
        if _match(state, domain, record, term, depth):
            result = _QUALIFIERS[qualifier]
            shown = term if qualifier == "+" else qualifier + term
            return result, record, shown, f"{shown} in the SPF record of {domain}", domain
    if redirect is not None:
        _count(state, domain, record)
        target = _expand(state, redirect, domain, record)
        result, sub_record, mechanism, reason, where = _check(state, target, depth + 1)
        if result == "none":
            raise _Abort("permerror", f"redirect={target}: no SPF record there", target)
        return result, sub_record, mechanism, reason, where
    return "neutral", record, None, f"no mechanism of {domain}'s SPF record matched", domain


def _match(state: _State, domain: str, record: str, term: str, depth: int) -> bool:
    match = re.fullmatch(r"([A-Za-z0-9]+)(?::([^/]*))?((?:/\d+)?(?://\d+)?)", term)
    if match is None:
        raise _Abort("permerror", f"syntax error in SPF term {term!r}", domain, record)
    name = match.group(1).lower()
    argument = match.group(2)
    cidr = match.group(3) or ""
    if name not in _MECHANISMS:
        raise _Abort("permerror", f"unknown SPF mechanism {term!r}", domain, record)
    if name == "all":
        if argument is not None or cidr:
            raise _Abort("permerror", f"syntax error in SPF term {term!r}", domain, record)
        return True
    if name in ("ip4", "ip6"):
        if not argument:
            raise _Abort("permerror", f"{name} without a network in {term!r}", domain, record)
        try:
            network = ipaddress.ip_network(argument + cidr, strict=False)
        except ValueError:
            raise _Abort("permerror", f"bad network in SPF term {term!r}", domain, record) from None
        if (name == "ip4") != (network.version == 4):
            raise _Abort("permerror", f"bad network in SPF term {term!r}", domain, record)
        return state.ip.version == network.version and state.ip in network
    # Everything else costs a DNS lookup (§4.6.4).
    _count(state, domain, record)
    target = _expand(state, argument, domain, record) if argument else domain
    cidr4, cidr6 = _cidrs(cidr, domain, record, term)
    if name == "include":
        if not argument:
            raise _Abort("permerror", f"include without a domain in {term!r}", domain, record)
        result, _rec, _mech, reason, where = _check(state, target, depth + 1)
        if result == "pass":
            return True
        if result in ("fail", "softfail", "neutral"):
            return False
        if result == "temperror":
            raise _Abort("temperror", reason, where)
        raise _Abort("permerror", f"include:{target}: {reason}", where)  # none/permerror
    if name == "a":
        return _addresses_match(state, target, cidr4, cidr6)
    if name == "mx":
        exchangers = _lookup(state, target, "MX")
        if len(exchangers) > MAX_MX_NAMES:
            raise _Abort("permerror", f"{target} has more than 10 MX records", domain, record)
        names = [rdata.exchange.to_text(omit_final_dot=True) for rdata in exchangers]
        return any(_addresses_match(state, n, cidr4, cidr6) for n in names if n and n != ".")
    if name == "exists":
        return bool(_lookup(state, target, "A"))
    return False  # ptr: RFC 7208 §5.5 "SHOULD NOT be used"; never matches here


def _addresses_match(state: _State, name: str, cidr4: int, cidr6: int) -> bool:
    rdtype, prefix = ("A", cidr4) if state.ip.version == 4 else ("AAAA", cidr6)
    for rdata in _lookup(state, name, rdtype):
        network = ipaddress.ip_network(f"{rdata.address}/{prefix}", strict=False)
        if state.ip in network:
            return True
    return False


def _cidrs(text: str, domain: str, record: str, term: str) -> tuple[int, int]:
    match = re.fullmatch(r"(?:/(\d+))?(?://(\d+))?", text)
    if match is None:  # pragma: no cover - the term regex already shaped it
        raise _Abort("permerror", f"bad prefix length in {term!r}", domain, record)
    cidr4 = int(match.group(1)) if match.group(1) else 32
    cidr6 = int(match.group(2)) if match.group(2) else 128
    if cidr4 > 32 or cidr6 > 128:
        raise _Abort("permerror", f"bad prefix length in {term!r}", domain, record)
    return cidr4, cidr6


def _count(state: _State, domain: str, record: str) -> None:
    state.lookups += 1
    if state.lookups > MAX_DNS_TERMS:
        raise _Abort(
            "permerror",
            f"more than {MAX_DNS_TERMS} DNS lookups (RFC 7208 §4.6.4); flatten the record",
            domain,
            record,
        )


def _find_record(state: _State, domain: str) -> str | None:
    records = []
    for rdata in _lookup(state, domain, "TXT", void_counts=False):
        text = b"".join(rdata.strings).decode("utf-8", "replace")
        if text.lower() == "v=spf1" or text.lower().startswith("v=spf1 "):
            records.append(text)
    if len(records) > 1:
        raise _Abort("permerror", f"{domain} publishes {len(records)} SPF records", domain)
    return records[0] if records else None


def _lookup(state: _State, name: str, rdtype: str, *, void_counts: bool = True) -> list[Any]:
    key = (name.lower(), rdtype)
    if key in state.cache:
        return state.cache[key]
    try:
        answer = state.resolver.resolve(
            dns.name.from_text(name), rdtype, lifetime=state.timeout, search=False
        )
        result = list(answer)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        result = []
    except dns.exception.Timeout:
        raise _Abort("temperror", f"no DNS answer for {name} {rdtype}", name) from None
    except dns.exception.DNSException as exc:
        raise _Abort("temperror", f"DNS error for {name} {rdtype}: {exc}", name) from None
    if not result and void_counts:
        state.void += 1
        if state.void > MAX_VOID_LOOKUPS:
            raise _Abort(
                "permerror", "more than 2 lookups without an answer (RFC 7208 §4.6.4)", name
            )
    state.cache[key] = result
    return result


def _valid_domain(domain: str) -> bool:
    labels = domain.split(".")
    return len(labels) >= 2 and all(0 < len(label) <= 63 for label in labels)


_MACRO = re.compile(r"%(?:\{([slodiphcrtv])(\d*)(r?)([.\-+,/_=]*)\}|(.))", re.IGNORECASE)


def _expand(state: _State, spec: str, domain: str, record: str) -> str:
    """RFC 7208 §7 macro expansion of a domain-spec."""

    def value(letter: str) -> str:
        letter = letter.lower()
        local, _, sender_domain = state.sender.rpartition("@")
        if letter == "s":
            return state.sender
        if letter == "l":
            return local or "postmaster"
        if letter == "o":
            return sender_domain
        if letter == "d":
            return domain
        if letter == "i":
            if state.ip.version == 4:
                return str(state.ip)
            return ".".join(state.ip.exploded.replace(":", ""))
        if letter == "v":
            return "in-addr" if state.ip.version == 4 else "ip6"
        if letter == "h":
            return state.helo
        if letter == "p":
            return "unknown"
        raise _Abort("permerror", f"macro %{{{letter}}} not allowed in {spec!r}", domain, record)

    def replace(match: re.Match[str]) -> str:
        if match.group(5) is not None:
            literal = {"%": "%", "_": " ", "-": "%20"}.get(match.group(5))
            if literal is None:
                raise _Abort("permerror", f"bad macro in {spec!r}", domain, record)
            return literal
        parts = re.split("[" + re.escape(match.group(4) or ".") + "]", value(match.group(1)))
        if match.group(3):
            parts.reverse()
        if match.group(2):
            count = int(match.group(2))
            if count == 0:
                raise _Abort("permerror", f"bad macro in {spec!r}", domain, record)
            parts = parts[-count:]
        return ".".join(parts)

    expanded = _MACRO.sub(replace, spec) if "%" in spec else spec
    expanded = expanded.rstrip(".").lower()
    if len(expanded) > 253:  # §7.3: drop labels from the left until it fits
        expanded = expanded[-253:].partition(".")[2]
    return expanded
