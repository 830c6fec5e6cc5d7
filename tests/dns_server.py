"""A DNS server on 127.0.0.1 (UDP and TCP, same free port) answering from a dict.

    records = {
        "example.test": {"MX": [(10, "mx.example.test")], "TXT": ["v=spf1 mx -all"]},
        "mx.example.test": {"A": ["127.0.0.1"], "AAAA": ["::1"]},
    }
    with dns_server(records) as dns:
        resolver = make_resolver([dns.nameserver])        # "127.0.0.1:PORT"
        # or monkeypatch.setenv("CXSMTP_NAMESERVER", dns.nameserver)

A name not in the dict is NXDOMAIN; a name without the asked type is NOERROR with
no answer (dnspython's NoAnswer).  ``HANG`` as a value never answers (the client
times out), ``SERVFAIL`` answers SERVFAIL.  The dict may be changed while the
server runs; ``queries`` lists every (name, type) asked, for lookup-count checks.

For tests only: it binds 127.0.0.1 and nothing else.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from dnslib import AAAA, MX, QTYPE, RCODE, RR, TXT, A, DNSRecord
from dnslib.server import DNSLogger, DNSServer

HANG = "hang"
SERVFAIL = "servfail"

Records = dict[str, dict[str, Any]]


class _QuietLogger(DNSLogger):
    def __init__(self) -> None:
        super().__init__(log="-recv,-send,-request,-reply,-truncated,-error,-data", prefix=False)

    def log_error(self, handler: Any, e: Any) -> None:  # pragma: no cover
        pass


@dataclass
class _Resolver:
    records: Records
    release: threading.Event
    queries: list[tuple[str, str]] = field(default_factory=list)
    ttl: int = 60

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        reply = request.reply()
        qname = str(request.q.qname).rstrip(".").lower()
        qtype = QTYPE[request.q.qtype]
        self.queries.append((qname, qtype))
        entry = {k.lower().rstrip("."): v for k, v in self.records.items()}.get(qname)
        if entry is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        values = entry.get(qtype)
        if values == HANG:
            self.release.wait(30)  # the client gives up first
            return reply
        if values == SERVFAIL:
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        for value in values or []:
            reply.add_answer(
                RR(request.q.qname, QTYPE.reverse[qtype], rdata=_rdata(qtype, value), ttl=self.ttl)
            )
        return reply


def _rdata(qtype: str, value: Any) -> Any:
    if qtype == "A":
        return A(value)
    if qtype == "AAAA":
        return AAAA(value)
    if qtype == "MX":
        preference, exchange = value
        return MX(exchange if exchange != "." else ".", preference)
    if qtype == "TXT":
        data = value.encode() if isinstance(value, str) else value
        if isinstance(data, bytes):  # split into <=255-byte strings (RFC 1035 §3.3.14)
            data = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
        return TXT(data)
    raise ValueError(f"dns_server: unsupported type {qtype}")


@dataclass
class RunningDns:
    port: int
    resolver: _Resolver

    @property
    def nameserver(self) -> str:
        """``127.0.0.1:PORT``: for ``CXSMTP_NAMESERVER`` or ``[settings] nameservers``."""
        return f"127.0.0.1:{self.port}"

    @property
    def records(self) -> Records:
        return self.resolver.records

    @property
    def queries(self) -> list[tuple[str, str]]:
        return self.resolver.queries


@contextmanager
def dns_server(records: Records | None = None) -> Iterator[RunningDns]:
    release = threading.Event()
    resolver = _Resolver(records if records is not None else {}, release)
    udp, tcp = _bind_pair(resolver)
    for server in (udp, tcp):
        # A short poll interval so that stop() returns at once (socketserver polls).
        threading.Thread(
            target=server.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()
    try:
        yield RunningDns(int(udp.server.server_address[1]), resolver)
    finally:
        release.set()
        for server in (udp, tcp):
            server.stop()
            server.server.server_close()


def _bind_pair(resolver: _Resolver) -> tuple[DNSServer, DNSServer]:
    """UDP on a free port, then TCP on the same one (retry if TCP's is taken)."""
    last: OSError | None = None
    for _ in range(20):
        udp = DNSServer(resolver, address="127.0.0.1", port=0, logger=_QuietLogger())
        port = int(udp.server.server_address[1])
        try:
            tcp = DNSServer(
                resolver, address="127.0.0.1", port=port, tcp=True, logger=_QuietLogger()
            )
        except OSError as exc:
            udp.server.server_close()
            last = exc
            continue
        return udp, tcp
    raise RuntimeError(f"no free UDP+TCP port pair on 127.0.0.1: {last}")


def query(port: int, name: str, qtype: str = "A") -> DNSRecord:
    """Ask the server directly over UDP (for the server's own self-test)."""
    packet = DNSRecord.question(name, qtype).pack()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(packet, ("127.0.0.1", port))
        data, _ = sock.recvfrom(65535)
    return DNSRecord.parse(data)
