"""Where to connect for an endpoint: MX records, then addresses (dnspython).

For a name written without brackets (``smtp.example.com``, ``smtp.example.com:2525``)
the MX records are looked up, in preference order, then the A/AAAA records of each
exchanger; a name without MX records is its own exchanger (the "implicit MX" of
RFC 5321 §5.1).  A null MX (a single ``MX 0 .``, RFC 7505) means "this domain takes
no mail" and is an error.  Bracketed names skip MX (Postfix's relayhost syntax, the
seed's "try putting it between brackets"); IP literals skip DNS entirely.

Every query has a deadline (dnspython ``lifetime``).  The nameservers can be set
(``[settings] nameservers`` or ``CXSMTP_NAMESERVER=127.0.0.1:5353``, which wins) so
that tests answer from a DNS server on loopback.  Without an explicit nameserver,
A/AAAA go through the system resolver (``getaddrinfo``, so ``/etc/hosts`` and
``localhost`` work as in every other client), bounded by the same deadline.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from carerix_smtp.config.hosts import Endpoint
from carerix_smtp.errors import ConfigError, SmtpConnectError, SmtpTimeoutError

if TYPE_CHECKING:  # dnspython is imported where a query needs it: ~50 ms at start-up,
    # which a send to an IP literal or through the system resolver never pays
    import dns.resolver

log = logging.getLogger(__name__)

NAMESERVER_ENV = "CXSMTP_NAMESERVER"
DEFAULT_DNS_TIMEOUT = 10.0
PHASE = "resolve"


class ResolveError(SmtpConnectError):
    """The name cannot be turned into an address to connect to.

    ``reason`` is one of ``nxdomain`` (the name does not exist), ``no-address``
    (it exists but has no A/AAAA, nor have its exchangers), ``null-mx`` (RFC 7505),
    ``servfail`` (no nameserver could answer).
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        host: str,
        port: int,
        resolution: Resolution | None = None,
    ) -> None:
        super().__init__(message, host=host, port=port, phase=PHASE)
        self.reason = reason
        self.resolution = resolution


class ResolveTimeoutError(SmtpTimeoutError):
    """No DNS answer within the deadline."""

    reason = "timeout"

    def __init__(self, message: str, *, host: str, port: int) -> None:
        super().__init__(message, host=host, port=port, phase=PHASE)


@dataclass(frozen=True)
class MxHost:
    """One exchanger from the MX records, with what its name resolved to."""

    preference: int
    name: str
    addresses: tuple[str, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class Target:
    """One address to try.  ``name`` is the host name the certificate must match."""

    name: str
    address: str
    port: int
    preference: int | None = None

    @property
    def display(self) -> str:
        """``name[address]:port`` as Postfix logs it; just ``[address]:port`` for literals."""
        if self.name == self.address:
            return f"[{self.address}]:{self.port}"
        return f"{self.name}[{self.address}]:{self.port}"


@dataclass(frozen=True)
class Resolution:
    """What DNS said about an endpoint, in the order the addresses should be tried."""

    endpoint: Endpoint
    targets: tuple[Target, ...]
    mx_looked_up: bool = False
    mx_hosts: tuple[MxHost, ...] = ()
    implicit_mx: bool = False  # no MX records: the name's own addresses (RFC 5321 §5.1)
    nameservers: tuple[str, ...] = field(default=())

    @property
    def mx_elsewhere(self) -> bool:
        """MX records point at hosts other than the name itself (hint: use brackets)."""
        own = self.endpoint.host.lower().rstrip(".")
        return any(mx.name.lower().rstrip(".") != own for mx in self.mx_hosts)

    @property
    def addresses(self) -> list[str]:
        return [t.address for t in self.targets]

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "mx_lookup": self.mx_looked_up,
            "addresses": [t.display for t in self.targets],
        }
        if self.mx_looked_up:
            data["mx"] = [
                {
                    "preference": mx.preference,
                    "host": mx.name,
                    "addresses": list(mx.addresses),
                    **({"error": mx.error} if mx.error else {}),
                }
                for mx in self.mx_hosts
            ]
            data["implicit_mx"] = self.implicit_mx
            data["mx_elsewhere"] = self.mx_elsewhere
        if self.nameservers:
            data["nameservers"] = list(self.nameservers)
        return data


# --- resolver construction -------------------------------------------------


def parse_nameserver(text: str) -> tuple[str, int]:
    """``"IP"``, ``"IP:PORT"``, ``"[IPv6]:PORT"`` or a bare IPv6 address -> (ip, port)."""
    raw = text
    text = text.strip()
    port = 53
    host = text
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ConfigError(
                f"nameserver {raw!r}: '[' without ']'; write IP, IP:PORT or [IPv6]:PORT"
            )
        host, rest = text[1:close], text[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(f"nameserver {raw!r}: write IP, IP:PORT or [IPv6]:PORT")
            port = _nameserver_port(raw, rest[1:])
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = _nameserver_port(raw, port_text)
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        raise ConfigError(
            f"nameserver {raw!r}: {host!r} is not an IP address; write IP, IP:PORT or [IPv6]:PORT"
        ) from None


def _nameserver_port(raw: str, text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ConfigError(f"nameserver {raw!r}: port {text!r} is not a number in 1-65535")
    return int(text)


def make_resolver(
    nameservers: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    timeout: float = DEFAULT_DNS_TIMEOUT,
) -> dns.resolver.Resolver | None:
    """A resolver asking exactly the configured nameservers, or None for the system's.

    ``CXSMTP_NAMESERVER`` (comma-separated) overrides ``nameservers`` (the config's
    ``[settings] nameservers``).
    """
    env = os.environ if env is None else env
    chosen: list[str] = list(nameservers or [])
    override = env.get(NAMESERVER_ENV, "").strip()
    if override:
        chosen = [part for part in override.split(",") if part.strip()]
    if not chosen:
        return None
    import dns.nameserver
    import dns.resolver

    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [
        dns.nameserver.Do53Nameserver(ip, port) for ip, port in map(parse_nameserver, chosen)
    ]
    resolver.timeout = timeout
    resolver.lifetime = timeout
    return resolver


def describe_resolver(resolver: dns.resolver.Resolver | None) -> tuple[str, ...]:
    if resolver is None:
        return ()
    import dns.nameserver

    out = []
    for ns in resolver.nameservers:
        if isinstance(ns, dns.nameserver.Do53Nameserver):
            host = f"[{ns.address}]" if ":" in ns.address else ns.address
            out.append(f"{host}:{ns.port}")
        else:
            out.append(str(ns))
    return tuple(out)


# --- lookups ---------------------------------------------------------------


def resolve_endpoint(
    endpoint: Endpoint,
    resolver: dns.resolver.Resolver | None = None,
    *,
    timeout: float = DEFAULT_DNS_TIMEOUT,
) -> Resolution:
    """The addresses to try for ``endpoint``, in order; raises ResolveError/ResolveTimeoutError."""
    port = endpoint.port
    if endpoint.ip_literal:
        target = Target(endpoint.host, endpoint.host, port)
        return Resolution(endpoint, (target,), nameservers=describe_resolver(resolver))
    lookup = _Lookup(endpoint, resolver, timeout)
    if not endpoint.mx_lookup:
        addresses = lookup.addresses(endpoint.host, own_name=True)
        targets = tuple(Target(endpoint.host, a, port) for a in addresses)
        return Resolution(endpoint, targets, nameservers=lookup.nameservers)

    return _resolve_mx(endpoint, lookup)


def _resolve_mx(endpoint: Endpoint, lookup: _Lookup) -> Resolution:
    """The MX records, then each exchanger's addresses (or the name's own: implicit MX)."""
    port = endpoint.port
    records = lookup.mx(endpoint.host)
    if records is None:
        # RFC 5321 §5.1: no MX records -> the name itself is the exchanger.
        addresses = lookup.addresses(endpoint.host, own_name=True)
        targets = tuple(Target(endpoint.host, a, port) for a in addresses)
        return Resolution(
            endpoint, targets, mx_looked_up=True, implicit_mx=True, nameservers=lookup.nameservers
        )
    if len(records) == 1 and records[0][1] == "":
        raise ResolveError(
            f"{endpoint.host}: the domain publishes a null MX record (RFC 7505): it accepts "
            "no mail, so it cannot be an SMTP server to send through",
            reason="null-mx",
            host=endpoint.host,
            port=port,
        )
    mx_hosts, targets_list = _exchangers(records, lookup, port)
    resolution = Resolution(
        endpoint,
        tuple(targets_list),
        mx_looked_up=True,
        mx_hosts=tuple(mx_hosts),
        nameservers=lookup.nameservers,
    )
    if not targets_list:
        names = ", ".join(f"{mx.name} ({mx.error})" for mx in mx_hosts)
        raise ResolveError(
            f"{endpoint.host}: none of its MX hosts has an address: {names}",
            reason="no-address",
            host=endpoint.host,
            port=port,
            resolution=resolution,
        )
    return resolution


def _exchangers(
    records: list[tuple[int, str]], lookup: _Lookup, port: int
) -> tuple[list[MxHost], list[Target]]:
    """Each exchanger with what its name resolved to, and the addresses to try, in order."""
    mx_hosts: list[MxHost] = []
    targets_list: list[Target] = []
    for preference, name in records:
        if not name:  # a "." among real exchangers: ignore it
            continue
        try:
            addresses = lookup.addresses(name, own_name=False)
        except ResolveError as exc:
            mx_hosts.append(MxHost(preference, name, (), exc.reason))
            continue
        mx_hosts.append(MxHost(preference, name, tuple(addresses)))
        targets_list.extend(Target(name, a, port, preference) for a in addresses)
    return mx_hosts, targets_list


class _Lookup:
    def __init__(
        self, endpoint: Endpoint, resolver: dns.resolver.Resolver | None, timeout: float
    ) -> None:
        self.endpoint = endpoint
        self.resolver = resolver
        self.timeout = timeout
        self.nameservers = describe_resolver(resolver)

    def _query(self, name: str, rdtype: str) -> dns.resolver.Answer | None:
        """The answer, or None for "the name exists but has no such records"."""
        import dns.exception
        import dns.name
        import dns.resolver

        resolver = self.resolver
        if resolver is None:
            try:
                resolver = dns.resolver.Resolver()
            except (dns.resolver.NoResolverConfiguration, OSError) as exc:
                raise ResolveError(
                    f"{name}: no DNS resolver configured on this system ({exc}); set "
                    f"[settings] nameservers or {NAMESERVER_ENV}",
                    reason="servfail",
                    host=self.endpoint.host,
                    port=self.endpoint.port,
                ) from None
        qname = dns.name.from_text(name)  # absolute: never append a search domain
        try:
            return resolver.resolve(qname, rdtype, lifetime=self.timeout, search=False)
        except dns.resolver.NXDOMAIN:
            raise ResolveError(
                f"{name}: name not found (NXDOMAIN)",
                reason="nxdomain",
                host=self.endpoint.host,
                port=self.endpoint.port,
            ) from None
        except dns.resolver.NoAnswer:
            return None
        except dns.exception.Timeout:
            raise ResolveTimeoutError(
                f"{name}: no DNS answer for {rdtype} within {self.timeout:g} s",
                host=self.endpoint.host,
                port=self.endpoint.port,
            ) from None
        except dns.resolver.NoNameservers as exc:
            raise ResolveError(
                f"{name}: no nameserver could answer the {rdtype} query ({_short(exc)})",
                reason="servfail",
                host=self.endpoint.host,
                port=self.endpoint.port,
            ) from None
        except dns.exception.DNSException as exc:
            raise ResolveError(
                f"{name}: {rdtype} lookup failed: {_short(exc)}",
                reason="servfail",
                host=self.endpoint.host,
                port=self.endpoint.port,
            ) from None

    def mx(self, name: str) -> list[tuple[int, str]] | None:
        """MX records sorted by preference (then name, so runs are repeatable), or None."""
        answer = self._query(name, "MX")
        if answer is None:
            return None
        records = []
        for rdata in answer:
            exchange = rdata.exchange.to_text(omit_final_dot=True).lower()
            records.append((int(rdata.preference), "" if exchange in ("", ".") else exchange))
        # RFC 5321 §5.1 asks senders to randomise among equal preferences to spread
        # load; a single relay client gains nothing from it, and a fixed order makes
        # `cxsmtp test` reports repeatable.
        records.sort()
        return records or None

    def addresses(self, name: str, *, own_name: bool) -> list[str]:
        if self.resolver is None:
            return self._system_addresses(name)
        found: list[str] = []
        for rdtype in ("A", "AAAA"):
            answer = self._query(name, rdtype)
            if answer is not None:
                found.extend(rdata.address for rdata in answer)
        if not found:
            raise ResolveError(
                f"{name}: the name exists but has no A or AAAA record",
                reason="no-address",
                host=self.endpoint.host,
                port=self.endpoint.port,
            )
        return _dedupe(found)

    def _system_addresses(self, name: str) -> list[str]:
        """getaddrinfo in a worker thread so that the deadline holds even when libc hangs."""
        import concurrent.futures

        executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        future = executor.submit(socket.getaddrinfo, name, None, 0, socket.SOCK_STREAM)
        executor.shutdown(wait=False)
        try:
            infos = future.result(timeout=self.timeout)
        except concurrent.futures.TimeoutError:
            raise ResolveTimeoutError(
                f"{name}: no address from the system resolver within {self.timeout:g} s",
                host=self.endpoint.host,
                port=self.endpoint.port,
            ) from None
        except socket.gaierror as exc:
            not_found = exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5))
            raise ResolveError(
                f"{name}: name not found"
                if not_found
                else f"{name}: lookup failed: {exc.strerror}",
                reason="nxdomain" if not_found else "servfail",
                host=self.endpoint.host,
                port=self.endpoint.port,
            ) from None
        found = [str(info[4][0]) for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)]
        # IPv4 first: on servers it is the family that works more often.
        found.sort(key=lambda a: ":" in a)
        return _dedupe(found)


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
