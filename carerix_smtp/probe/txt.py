"""What the DKIM and DMARC checks of ``cxsmtp test --from`` share: TXT lookups
through the same dnspython resolver the SPF check uses (``[settings] nameservers``
or ``CXSMTP_NAMESERVER``, else the system's), and the ``tag=value; ...`` syntax
both records are written in (RFC 6376 §3.2, RFC 7489 §6.4)."""

from __future__ import annotations

import re

import dns.exception
import dns.name
import dns.resolver

_TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


class TagListError(ValueError):
    """A ``tag=value`` list that does not parse; the message says where."""


class TxtTempError(Exception):
    """No usable DNS answer (timeout, SERVFAIL): the result is not known yet."""


def lookup_txt(name: str, resolver: dns.resolver.Resolver | None, timeout: float) -> list[str]:
    """The TXT records at ``name``, each one's strings joined (RFC 6376 §3.6.2.2,
    RFC 7489 §6.6.3); ``[]`` when the name or its TXT records do not exist.

    Raises ``TxtTempError`` when DNS gives no answer to rely on."""
    resolver = resolver or dns.resolver.Resolver()
    try:
        answer = resolver.resolve(dns.name.from_text(name), "TXT", lifetime=timeout, search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.Timeout:
        raise TxtTempError(f"no DNS answer for {name} TXT within {timeout:g} s") from None
    except dns.exception.DNSException as exc:
        raise TxtTempError(f"DNS error for {name} TXT: {exc}") from None
    return [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer]


def parse_tag_list(text: str) -> dict[str, str]:
    """``"v=DKIM1; k=rsa; p=MIIB..."`` -> ``{"v": "DKIM1", "k": "rsa", "p": "MIIB..."}``
    in the order written.  Tag names are kept as written (both RFCs compare them
    case-sensitively); whitespace around names and values is dropped, empty
    segments (``;;``, a trailing ``;``) are ignored, a repeated tag is an error
    (RFC 6376 §3.2)."""
    tags: dict[str, str] = {}
    for segment in text.split(";"):
        if not segment.strip():
            continue
        name, sep, value = segment.partition("=")
        name = name.strip()
        if not sep:
            raise TagListError(f"{segment.strip()!r} is not tag=value")
        if not _TAG_NAME.fullmatch(name):
            raise TagListError(f"{name!r} is not a tag name")
        if name in tags:
            raise TagListError(f"the tag {name}= appears twice")
        tags[name] = value.strip()
    return tags
