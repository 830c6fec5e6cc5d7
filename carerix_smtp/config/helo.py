"""The EHLO name: its syntax and which one applies.

``server add/edit NAME --helo-name NAME`` sets it per entry, ``settings set
helo-name NAME`` for every entry without its own; without either, cxsmtp uses this
host's name when it is a fully qualified one, else an address literal of the
connection (smtp/ehlo.py).  Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING

from carerix_smtp.errors import UsageError

if TYPE_CHECKING:
    from carerix_smtp.config.file import ServerEntry, Settings

ACCEPTED = (
    "a host name such as mail.example.com, or an address literal such as [192.0.2.10] "
    "or [IPv6:2001:db8::1]"
)
# RFC 5321 §4.1.2: sub-domain = Let-dig [Ldh-str]; no '_' and no '-' at either end.
_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_MAX_DOMAIN = 255  # RFC 5321 §4.5.3.1.2


def check_helo_name(text: str, option: str = "--helo-name") -> str:
    """The EHLO name as RFC 5321 §4.1.1.1 allows it (``Domain / address-literal``),
    normalised (``[ipv6:…]`` -> ``[IPv6:…]``); a one-line UsageError otherwise."""
    value = text.strip()
    if value.startswith("[") and value.endswith("]"):
        return _address_literal(text, value[1:-1].strip(), option)
    why = _domain_problem(value)
    if why is not None:
        raise UsageError(f"{option} {text!r}: {why}; give {ACCEPTED}")
    return value.rstrip(".") if value != "." else value


def _address_literal(text: str, inner: str, option: str) -> str:
    """``[192.0.2.10]`` or ``[IPv6:2001:db8::1]`` (RFC 5321 §4.1.3)."""
    try:
        if inner.lower().startswith("ipv6:"):
            return f"[IPv6:{ipaddress.IPv6Address(inner[5:])}]"
        return f"[{ipaddress.IPv4Address(inner)}]"
    except ValueError:
        hint = " (an IPv6 address is written [IPv6:ADDRESS])" if ":" in inner else ""
        raise UsageError(
            f"{option} {text!r}: {inner!r} is not an IP address{hint}; give {ACCEPTED}"
        ) from None


def _domain_problem(value: str) -> str | None:
    if not value:
        return "it is empty"
    if any(ch.isspace() for ch in value):
        return "it contains white space"
    name = value.rstrip(".")
    if len(name) > _MAX_DOMAIN:
        return f"it is longer than {_MAX_DOMAIN} characters"
    labels = name.split(".")
    bad = next((label for label in labels if not _LABEL.match(label)), None)
    if bad is not None:
        return f"{bad!r} is not a host name label (letters, digits and '-' inside)"
    if all(label.isdigit() for label in labels):
        return "an IP address is written in brackets, e.g. [192.0.2.10]"
    return None


def helo_name_for(entry: ServerEntry, settings: Settings, given: str | None = None) -> str | None:
    """The EHLO name to use: ``given`` (a caller's option) > the entry's > the global
    setting > None (smtp/ehlo.py then uses this host's name or an address literal)."""
    return given or entry.helo_name or settings.helo_name
