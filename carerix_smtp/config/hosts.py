"""HOST syntax: ``"[smtp.example.com]:587"`` -> :class:`Endpoint`.

Brackets mean "do not look up MX records", exactly as in Postfix's
``relayhost`` (seed: "try putting the SMTP server between brackets").
Pure: no I/O, no DNS.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from carerix_smtp.errors import HostSyntaxError

DEFAULT_PORT = 25

ACCEPTED_FORMS = (
    "accepted forms: smtp.example.com, smtp.example.com:2525, [smtp.example.com], "
    "[smtp.example.com]:587, [192.0.2.10]:587, [2001:db8::1]:587, [ipv6:2001:db8::1]:587"
)

# "smtp://…", "smtps://…", "http://…" (RFC 3986 §3.1 scheme) or "mailto:…": a URL, not a HOST.
_URL = re.compile(r"^(?:[a-z][a-z0-9+.-]*://|mailto:)", re.IGNORECASE)
# Ports that URL schemes imply when the URL names none (RFC 8314 §3.3: smtps = 465).
_SCHEME_PORTS = {"smtps": 465, "submissions": 465, "submission": 587}

# RFC 1123 host name: dot-separated labels of letters, digits and hyphens.
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class Endpoint:
    """Where to connect: a host name or IP address, a port, and whether MX applies."""

    host: str
    port: int = DEFAULT_PORT
    mx_lookup: bool = True
    ip_literal: bool = False

    def __str__(self) -> str:
        return format_endpoint(self)

    @property
    def address_for_display(self) -> str:
        """``host:port`` with IPv6 addresses bracketed, for messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _refuse(text: str, why: str) -> HostSyntaxError:
    return HostSyntaxError(f"invalid host {text!r}: {why}; {ACCEPTED_FORMS}")


def _without_password(text: str, url: SplitResult) -> str:
    """The URL for a message: a password in it is never repeated."""
    if url.password is None:
        return text
    host = url.netloc.rpartition("@")[2]
    return url._replace(netloc=f"{url.username}:***@{host}").geturl()


def _refuse_url(text: str) -> HostSyntaxError:
    """HOST given as a URL: say so, and what to write instead when it can be told."""
    try:
        url = urlsplit(text)
    except ValueError:  # e.g. an unclosed '[': show no more than the scheme
        scheme = text.partition(":")[0]
        why = f"a URL is not a host: leave out '{scheme}://'"
        return HostSyntaxError(f"invalid host '{scheme}://…': {why}; {ACCEPTED_FORMS}")
    shown = _without_password(text, url)
    scheme = url.scheme.lower()
    if scheme == "mailto":
        why = "a mailto: address is not a host; HOST is the SMTP server's name"
        return HostSyntaxError(f"invalid host {shown!r}: {why}; {ACCEPTED_FORMS}")
    try:
        port = url.port or _SCHEME_PORTS.get(scheme)
    except ValueError:
        port = None
    hint = ""
    if url.hostname:
        instead = f"[{url.hostname}]:{port}" if port else f"[{url.hostname}]:PORT"
        hint = f", e.g. {instead}"
    if url.username:
        hint += " (and the login name with --username)"
    why = f"a URL is not a host: leave out '{text.partition(':')[0]}://'{hint}"
    return HostSyntaxError(f"invalid host {shown!r}: {why}; {ACCEPTED_FORMS}")


def _parse_port(text: str, port_text: str) -> int:
    if not port_text.isascii() or not port_text.isdigit():
        raise _refuse(text, f"port {port_text!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise _refuse(text, f"port {port} is outside 1-65535")
    return port


def _parse_ip(text: str, inner: str) -> str | None:
    """The canonical IP address in ``inner``, or None if it is not an IP."""
    lowered = inner.lower()
    if lowered.startswith("ipv6:"):
        candidate = inner[5:]
        try:
            return str(ipaddress.IPv6Address(candidate))
        except ValueError:
            raise _refuse(text, f"{candidate!r} after 'ipv6:' is not an IPv6 address") from None
    try:
        return str(ipaddress.ip_address(inner))
    except ValueError:
        pass
    if ":" in inner:
        raise _refuse(text, f"{inner!r} is neither a host name nor an IPv6 address")
    return None


def _check_name(text: str, name: str) -> str:
    if not name:
        raise _refuse(text, "the host name is empty")
    if any(ch.isspace() for ch in name):
        raise _refuse(text, "the host name contains white space")
    name = name.lower().rstrip(".") if name != "." else name
    labels = name.split(".")
    for label in labels:
        if not _LABEL.match(label):
            raise _refuse(text, f"{label!r} is not a valid host name label")
    if all(label.isdigit() for label in labels):
        raise _refuse(text, f"{name!r} is not a valid IPv4 address or host name")
    return name


def parse_host(text: str) -> Endpoint:
    """Parse HOST as the SPEC's table writes it.

    >>> parse_host("[smtp.example.com]:587")
    Endpoint(host='smtp.example.com', port=587, mx_lookup=False, ip_literal=False)
    """
    raw = text
    text = text.strip()
    if not text:
        raise _refuse(raw, "it is empty")
    if _URL.match(text):
        raise _refuse_url(text)
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise _refuse(raw, "'[' is not closed by ']'")
        inner = text[1:close].strip()
        rest = text[close + 1 :]
        if "[" in inner:
            raise _refuse(raw, "brackets cannot be nested")
        if "]" in rest or "[" in rest:
            raise _refuse(raw, "unexpected bracket after ']'")
        if rest and not rest.startswith(":"):
            raise _refuse(raw, f"unexpected {rest!r} after ']'; a port is written ]:PORT")
        port = _parse_port(raw, rest[1:]) if rest else DEFAULT_PORT
        ip = _parse_ip(raw, inner)
        if ip is not None:
            return Endpoint(ip, port, mx_lookup=False, ip_literal=True)
        return Endpoint(_check_name(raw, inner), port, mx_lookup=False)
    if "]" in text:
        raise _refuse(raw, "']' without '['")
    if text.count(":") > 1:
        raise _refuse(raw, "an IPv6 address must be written in brackets, e.g. [2001:db8::1]:587")
    name, sep, port_text = text.partition(":")
    port = _parse_port(raw, port_text) if sep else DEFAULT_PORT
    try:
        ip = str(ipaddress.IPv4Address(name))
    except ValueError:
        return Endpoint(_check_name(raw, name), port, mx_lookup=True)
    # A bare IPv4 address has no MX records; treat it as the bracketed form.
    return Endpoint(ip, port, mx_lookup=False, ip_literal=True)


def format_endpoint(endpoint: Endpoint) -> str:
    """The canonical HOST string: brackets when MX is not looked up, port when not 25."""
    host = endpoint.host
    if not endpoint.mx_lookup:
        host = f"[{host}]"
    if endpoint.port != DEFAULT_PORT:
        return f"{host}:{endpoint.port}"
    return host
