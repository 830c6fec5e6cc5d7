"""The envelope of a message, from its header fields (SPEC §3): MAIL FROM from
Return-Path, else Sender, else the first From address; RCPT TO from To + Cc +
Bcc, deduplicated case-insensitively on the domain, keeping the local part's case
(RFC 5321 §2.4: local parts may be case sensitive) and the first spelling seen.
An ``X-Cxsmtp-Envelope-To`` field, when there is one, names RCPT TO instead of To,
Cc and Bcc (what ``cxsmtp sendmail`` writes when its recipients are not the ones
the header fields name: a list's members, ``-t`` minus the arguments); like Bcc and
Return-Path it is removed from what is transmitted.
Also the Message-ID, and the checks that refuse an address that cannot be used.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from email.utils import getaddresses
from typing import TYPE_CHECKING, Any

from carerix_smtp.errors import MessageError
from carerix_smtp.spool.headers import HeaderField

if TYPE_CHECKING:  # email.policy and its header registry (~8 ms to import) are only
    # needed for a field the fast paths below do not take: imported there
    from email.headerregistry import Address

RECIPIENT_FIELDS = ("To", "Cc", "Bcc")
# RCPT TO when present (not To, Cc, Bcc); the field cxsmtp sink writes too (sink/store.py)
ENVELOPE_TO = "X-Cxsmtp-Envelope-To"
_ENVELOPE_KEY = ENVELOPE_TO.lower()

# A domain: dot-atom text without specials, or an address literal "[...]" (RFC 5321 §4.1.3).
DOMAIN = re.compile(r"[^\s<>()\[\],;:\\\"@]+|\[[^\[\]\\\s]+\]")

# Only the fields the envelope needs are read (From, Sender, Return-Path, To, Cc,
# Bcc, Message-ID, Date), straight from the fields headers.py split.  Most address
# fields are plain lists of "addr", "Name <addr>" or '"Name" <addr>': those match
# the strict grammar below (RFC 5322 §3.4 without the obsolete forms, groups,
# quoted local parts or CFWS inside an address; raw UTF-8 allowed, RFC 6532 §3.2)
# and cost a few microseconds.  A field the grammar does not match entirely — or
# one that is not valid UTF-8 — goes to email.headerregistry (policy.default), the
# field alone, exactly as BytesHeaderParser(policy=policy.default) would have
# parsed it: groups, comments inside addresses, quoted local parts, obsolete
# syntax and garbage keep their old treatment and error messages.  That parser
# costs ~300 us per message, which was a third of the sender's time per message.
# tests/spool/test_message.py checks that the two paths agree.

_FIELDS_READ = frozenset(
    {"from", "sender", "return-path", "to", "cc", "bcc", "message-id", "date"} | {_ENVELOPE_KEY}
)
_NO_CTL = r"\x00-\x08\x0a-\x1f\x7f"  # control characters except HTAB (RFC 5234 CTL, WSP)
# CFWS (RFC 5322 §3.2.2) with comments that do not nest; possessive quantifiers
# everywhere, so a field that does not match fails in linear time.
_CFWS = rf"(?:[ \t]++|\((?:[^()\\{_NO_CTL}]|\\[^{_NO_CTL}])*+\))*+"
_ATEXT = r"[^\x00-\x20\x7f()<>\[\]:;@\\,.\"]"  # RFC 5322 §3.2.3, plus UTF-8 (RFC 6532)
_DOT_ATOM = rf"{_ATEXT}++(?:\.{_ATEXT}++)*+"
_ADDR_SPEC = rf"{_DOT_ATOM}@(?:{_DOT_ATOM}|\[[^\[\]\\\x00-\x20\x7f]*+\])"
_QUOTED = rf'"(?:[^"\\{_NO_CTL}]|\\[^{_NO_CTL}])*+"'
_WORD = rf'(?:[^\x00-\x20\x7f()<>\[\]:;@\\,"]++|{_QUOTED})'  # obs-phrase allows "."
_MAILBOX = re.compile(
    rf"{_CFWS}(?:(?P<bare>{_ADDR_SPEC})|(?:{_WORD}{_CFWS})*+<(?P<angle>{_ADDR_SPEC})>)"
    rf"{_CFWS}(?P<sep>,|\Z)"
)
_SIMPLE_MSGID = re.compile(r"<[A-Za-z0-9!#$%&'*+/=?^_`{|}~.@\[\]-]+>")  # RFC 5322 §3.6.4


def index_fields(fields: Sequence[HeaderField]) -> dict[str, list[bytes]]:
    """Lower-cased name -> raw fields, in order, for the fields the envelope needs."""
    out: dict[str, list[bytes]] = {}
    for f in fields:
        if f.name in _FIELDS_READ:
            out.setdefault(f.name, []).append(f.raw)
    return out


def _value_text(raw: bytes) -> str | None:
    """A field's value unfolded (RFC 5322 §2.2.3), as text; None if not valid UTF-8."""
    try:
        text = raw.partition(b":")[2].decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text.replace("\r\n", "").replace("\n", "").strip(" \t")


def _registry_header(field: str, raw: bytes, name: str) -> Any:
    """The field as BytesHeaderParser(policy=policy.default) gave it: bytes decoded as
    ASCII with surrogateescape, value after the colon (email.policy.EmailPolicy
    header_source_parse + header_fetch_parse)."""
    value = raw.decode("ascii", "surrogateescape").partition(":")[2]
    value = value.lstrip(" \t").rstrip("\r\n")
    from email import policy

    try:
        return policy.default.header_fetch_parse(field, value)
    except Exception:  # the parser's own bugs: see _unparseable
        raise _unparseable(field, value, name) from None


def _unparseable(field: str, value: str, name: str) -> MessageError:
    """The email package's parser crashes (IndexError, AttributeError, ...) on some
    malformed address fields; such a file is refused like any unusable message
    instead of stopping the run."""
    text = " ".join(value.split())
    shown = text if len(text) <= 80 else text[:77] + "..."
    return MessageError(f"{name}: {field}: cannot parse {shown!r} (not an RFC 5322 field)")


def _fast_addresses(value: str) -> list[str] | None:
    """The addr-specs of ``value`` when it is a plain mailbox list, else None."""
    out: list[str] = []
    pos, end = 0, len(value)
    while True:
        match = _MAILBOX.match(value, pos)
        if match is None:
            return None
        spec = match.group("bare") or match.group("angle")
        if "=?" in spec:  # the registry decodes RFC 2047 words even there
            return None
        out.append(spec)
        pos = match.end()
        if match.group("sep") != ",":
            return out
        if pos >= end:  # a trailing comma: obsolete syntax, the registry's business
            return None


def _unescape(text: str, name: str, where: str) -> str:
    """Header text as decoded by the parser (undecodable bytes as surrogates) -> str."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8")
    except UnicodeError:
        raise MessageError(f"{name}: {where}: address is not valid UTF-8") from None


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SPACE = re.compile(r"\s")


def _check_address(address: str, name: str, where: str) -> str:
    if "\r" in address or "\n" in address:
        raise MessageError(f"{name}: {where}: CR or LF inside the address {address!r}")
    if _CONTROL.search(address):
        raise MessageError(f"{name}: {where}: control character inside the address {address!r}")
    local, at, domain = address.rpartition("@")
    if not at or not local:
        raise MessageError(f"{name}: {where}: {address!r} is not an address (local@domain)")
    if not DOMAIN.fullmatch(domain) or domain.startswith(".") or ".." in domain:
        raise MessageError(f"{name}: {where}: {address!r} has an invalid domain")
    if not local.startswith('"') and _SPACE.search(local):
        raise MessageError(f"{name}: {where}: {address!r} has white space in the local part")
    return address


def _plain(spec: str) -> bool:
    """True when an addr-spec of the fast grammar passes _check_address for sure: in
    ASCII that grammar has no white space or control character, a non-empty local
    part, one "@" and a domain DOMAIN matches — except the empty literal "[]".
    (Outside ASCII, str white space such as U+00A0 is atext there: checked.)"""
    return spec.isascii() and not spec.endswith("[]")


def _addresses(raws: Sequence[bytes], field: str, name: str) -> list[str]:
    """The addresses of every ``field`` field (raw bytes), in order."""
    out: list[str] = []
    for raw in raws:
        text = _value_text(raw)
        if text is not None:
            if not text:
                continue
            fast = _fast_addresses(text)
            if fast is not None:
                out.extend(
                    spec if _plain(spec) else _check_address(spec, name, field) for spec in fast
                )
                continue
        value = _registry_header(field, raw, name)
        try:
            out.extend(_registry_addresses(value, field, name))
        except MessageError:
            raise
        except Exception:  # the parser's own bugs: see _unparseable
            raise _unparseable(field, str(value), name) from None
    return out


def _registry_addresses(value: Any, field: str, name: str) -> list[str]:
    """What the old parser made of a field (RFC 5322 §3.4 address-list, groups)."""
    from email.errors import InvalidHeaderDefect

    out: list[str] = []
    addresses: tuple[Address, ...] = getattr(value, "addresses", ())
    for item in addresses:
        spec = item.addr_spec
        if not spec or spec == "<>":
            continue
        out.append(_check_address(_unescape(spec, name, field), name, field))
    if str(value).strip() and not addresses and ":" not in str(value):
        raise MessageError(f"{name}: {field}: no address in {str(value)!r}")
    invalid = [d for d in getattr(value, "defects", ()) if isinstance(d, InvalidHeaderDefect)]
    if invalid:  # the parser guessed: e.g. "r@bad domain" -> r@bad
        raise MessageError(f"{name}: {field}: {invalid[0]} in {str(value)!r}")
    return out


def first_message_id(raws: Sequence[bytes] | None, name: str) -> str | None:
    """The first Message-ID field's value, stripped (None when absent or empty)."""
    if not raws:
        return None
    text = _value_text(raws[0])
    if text is None or not _SIMPLE_MSGID.fullmatch(text) or "=?" in text:
        text = str(_registry_header("Message-ID", raws[0], name))
    return text.strip() or None


# From fields already read, raw bytes -> addresses: an application's messages come
# from the same sender or few.  Bounded; only fields read without an error.
_SENDERS: dict[bytes, tuple[str, ...]] = {}
_SENDERS_MAX = 64


def _from_addresses(raws: Sequence[bytes], name: str) -> list[str]:
    if len(raws) != 1:
        return _addresses(raws, "From", name)
    known = _SENDERS.get(raws[0])
    if known is None:
        known = tuple(_addresses(raws, "From", name))
        if len(_SENDERS) < _SENDERS_MAX:
            _SENDERS[raws[0]] = known
    return list(known)


def envelope_sender(fields: dict[str, list[bytes]], name: str) -> tuple[str, str | None]:
    """(MAIL FROM, the From address used to choose the server)."""
    from_list = _from_addresses(fields.get("from", ()), name)
    from_address = from_list[0] if from_list else None
    return_path = fields.get("return-path")
    if return_path:
        text = _value_text(return_path[0])
        if text is None or "=?" in text:
            text = str(_registry_header("Return-Path", return_path[0], name))
        text = _unescape(text, name, "Return-Path").strip()
        if text.replace(" ", "") == "<>":
            return "", from_address  # the null reverse-path (RFC 5321 §4.5.5)
        pairs = getaddresses([text])
        if pairs and pairs[0][1]:
            return _check_address(pairs[0][1], name, "Return-Path"), from_address
    sender = _addresses(fields.get("sender", ()), "Sender", name)
    if sender:
        return sender[0], from_address
    if from_address:
        return from_address, from_address
    raise MessageError(f"{name}: no sender: no Return-Path, Sender or From address")


def recipient_key(address: str) -> str:
    """Deduplication key: the domain lower-cased, the local part as written."""
    local, _, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}"


def envelope_recipients(fields: dict[str, list[bytes]], name: str) -> list[str]:
    """RCPT TO: the X-Cxsmtp-Envelope-To addresses when that field is there, else To +
    Cc + Bcc; deduplicated (recipient_key), first spelling kept."""
    explicit = _ENVELOPE_KEY in fields
    seen: set[str] = set()
    out: list[str] = []
    for field in (ENVELOPE_TO,) if explicit else RECIPIENT_FIELDS:
        for address in _addresses(fields.get(field.lower(), ()), field, name):
            key = recipient_key(address)
            if key not in seen:
                seen.add(key)
                out.append(address)
    if not out:
        where = ENVELOPE_TO if explicit else "To, Cc or Bcc"
        raise MessageError(f"{name}: no recipients: no address in {where}")
    return out
