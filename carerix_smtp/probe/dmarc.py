"""The DMARC check of ``cxsmtp test --from`` (RFC 7489): the policy the From domain
publishes, and whether the mail cxsmtp sends would pass it — SPF aligned (the
envelope domain, SPF pass) or DKIM aligned (the key's d=, DKIM pass).

Finding the record: ``_dmarc.FROM`` first, then ``_dmarc.`` of each parent while it
has at least two labels (``a.b.example.com`` -> ``b.example.com`` ->
``example.com``), the "tree walk" of DMARCbis rather than RFC 7489 §6.6.3's Public
Suffix List lookup: cxsmtp has no PSL dependency, and for the question "is my own
domain set up" the walk finds the same record.

Relaxed alignment (``adkim=r``/``aspf=r``) compares organizational domains.  Without
the PSL, ``organizational_domain`` takes the last two labels, three under the common
two-label country suffixes (``co.uk``, ``com.au``, …); under a suffix it does not
know it may call two unrelated domains aligned — the hint then still names both.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from carerix_smtp.probe.txt import TagListError, TxtTempError, lookup_txt, parse_tag_list

if TYPE_CHECKING:
    import dns.resolver

POLICIES = ("none", "quarantine", "reject")  # RFC 7489 §6.3 p=
# Second-level labels under which ccTLDs register names (co.uk, com.au, ac.jp, ...).
_SECOND_LEVEL = frozenset({"ac", "co", "com", "edu", "go", "gov", "ne", "net", "or", "org"})


class DmarcRecordError(ValueError):
    """A DMARC record that does not parse; the message says what is wrong."""


@dataclass(frozen=True)
class DmarcRecord:
    """A parsed DMARC record (RFC 7489 §6.3); defaults as there."""

    policy: str  # p=
    subdomain_policy: str | None = None  # sp=; None: p= applies
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100
    rua: tuple[str, ...] = ()

    def policy_for(self, subdomain: bool) -> str:
        """The policy for mail from the record's own domain or from a subdomain."""
        return (self.subdomain_policy or self.policy) if subdomain else self.policy


def parse_dmarc_record(text: str) -> DmarcRecord:
    """Parse a DMARC record; raises ``DmarcRecordError`` naming the problem."""
    try:
        tags = parse_tag_list(text)
    except TagListError as exc:
        raise DmarcRecordError(str(exc)) from None
    if next(iter(tags), None) != "v" or tags["v"] != "DMARC1":
        raise DmarcRecordError("it must start with v=DMARC1")
    if "p" not in tags:
        raise DmarcRecordError("no p= tag (none, quarantine or reject)")
    policy = _choice(tags, "p", POLICIES)
    sp = _choice(tags, "sp", POLICIES) if "sp" in tags else None
    pct_text = tags.get("pct", "100")
    if not pct_text.isdigit() or int(pct_text) > 100:
        raise DmarcRecordError(f"pct={pct_text}: a whole number from 0 to 100")
    rua = tuple(part.strip() for part in tags.get("rua", "").split(",") if part.strip())
    return DmarcRecord(
        policy,
        sp,
        _choice(tags, "adkim", ("r", "s"), "r"),
        _choice(tags, "aspf", ("r", "s"), "r"),
        int(pct_text),
        rua,
    )


def _choice(tags: dict[str, str], name: str, allowed: tuple[str, ...], default: str = "") -> str:
    value = tags.get(name, default).strip().lower()
    if value not in allowed:
        raise DmarcRecordError(f"{name}={tags.get(name)}: one of {', '.join(allowed)}")
    return value


def organizational_domain(domain: str) -> str:
    """The last two labels (three under co.uk-style suffixes); see the module doc."""
    labels = domain.rstrip(".").lower().split(".")
    keep = 2
    if len(labels) >= 3 and len(labels[-1]) == 2 and labels[-2] in _SECOND_LEVEL:
        keep = 3
    return ".".join(labels[-keep:])


def aligned(domain: str | None, from_domain: str, mode: str) -> bool:
    """RFC 7489 §3.1: strict = the same name; relaxed = the same organizational domain."""
    if not domain:
        return False
    domain, from_domain = domain.rstrip(".").lower(), from_domain.rstrip(".").lower()
    if mode == "s":
        return domain == from_domain
    return organizational_domain(domain) == organizational_domain(from_domain)


def candidate_domains(from_domain: str) -> list[str]:
    """The From domain, then its parents down to two labels (at most 8 names)."""
    labels = from_domain.rstrip(".").lower().split(".")
    return [".".join(labels[i:]) for i in range(max(len(labels) - 1, 1))][:8]


@dataclass(frozen=True)
class DmarcLookup:
    """Where the record was found (or not): the names asked, the record's domain
    and text, or why it is unusable."""

    queried: tuple[str, ...]
    domain: str | None = None
    text: str | None = None
    record: DmarcRecord | None = None
    error: str | None = None  # malformed, or several records
    temperror: str | None = None


def find_dmarc(
    from_domain: str, *, resolver: dns.resolver.Resolver | None = None, timeout: float = 10.0
) -> DmarcLookup:
    """The first name in ``candidate_domains`` with a ``v=DMARC1`` TXT record."""
    queried: list[str] = []
    for domain in candidate_domains(from_domain):
        name = f"_dmarc.{domain}"
        queried.append(name)
        try:
            texts = lookup_txt(name, resolver, timeout)
        except TxtTempError as exc:
            return DmarcLookup(tuple(queried), domain, temperror=str(exc))
        # RFC 7489 §6.6.3: TXT records that do not start with v=DMARC1 are ignored.
        records = [t for t in texts if t.replace(" ", "").startswith("v=DMARC1")]
        if not records:
            continue
        if len(records) > 1:
            error = f"{name} has {len(records)} DMARC records; receivers then apply none"
            return DmarcLookup(tuple(queried), domain, records[0], error=error)
        try:
            record = parse_dmarc_record(records[0])
        except DmarcRecordError as exc:
            return DmarcLookup(tuple(queried), domain, records[0], error=f"{name}: {exc}")
        return DmarcLookup(tuple(queried), domain, records[0], record)
    return DmarcLookup(tuple(queried))


@dataclass(frozen=True)
class Identifier:
    """One authenticated identifier DMARC may use: SPF's or DKIM's."""

    domain: str | None  # the envelope domain (SPF) or d= (DKIM)
    result: str  # the SPF or DKIM check's result
    passed: bool
    aligned: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "result": self.result,
            "pass": self.passed,
            "aligned": self.aligned,
        }


@dataclass(frozen=True)
class DmarcVerdict:
    """Would mail from ``from_domain`` pass DMARC, and what happens if not.

    ``result``: pass | fail | none (no record) | error (unusable record) | temperror.
    """

    result: str
    from_domain: str
    lookup: DmarcLookup
    spf: Identifier
    dkim: Identifier
    policy: str | None = None  # the policy that applies to the From domain

    @property
    def enforced(self) -> bool:
        """A failure means quarantine or reject (for some of the mail, with pct<100)."""
        record = self.lookup.record
        return (
            self.result == "fail"
            and self.policy in ("quarantine", "reject")
            and record is not None
            and record.pct > 0
        )

    def to_dict(self) -> dict[str, Any]:
        record = self.lookup.record
        return {
            "result": self.result,
            "from_domain": self.from_domain,
            "queried": list(self.lookup.queried),
            "record_domain": self.lookup.domain,
            "record": self.lookup.text,
            "policy": self.policy,
            "p": record.policy if record else None,
            "sp": record.subdomain_policy if record else None,
            "adkim": record.adkim if record else None,
            "aspf": record.aspf if record else None,
            "pct": record.pct if record else None,
            "spf": self.spf.to_dict(),
            "dkim": self.dkim.to_dict(),
            "error": self.lookup.error or self.lookup.temperror,
        }


def evaluate(
    lookup: DmarcLookup, from_domain: str, spf: Identifier, dkim: Identifier
) -> DmarcVerdict:
    """RFC 7489 §6.6.2: pass when SPF or DKIM passes with an aligned domain."""
    record = lookup.record
    if lookup.temperror:
        return DmarcVerdict("temperror", from_domain, lookup, spf, dkim)
    if lookup.error:
        return DmarcVerdict("error", from_domain, lookup, spf, dkim)
    if record is None:
        return DmarcVerdict("none", from_domain, lookup, spf, dkim)
    spf = _align(spf, from_domain, record.aspf)
    dkim = _align(dkim, from_domain, record.adkim)
    subdomain = lookup.domain != from_domain.rstrip(".").lower()
    policy = record.policy_for(subdomain)
    result = "pass" if (spf.passed and spf.aligned) or (dkim.passed and dkim.aligned) else "fail"
    return DmarcVerdict(result, from_domain, lookup, spf, dkim, policy)


def _align(identifier: Identifier, from_domain: str, mode: str) -> Identifier:
    return replace(identifier, aligned=aligned(identifier.domain, from_domain, mode))
