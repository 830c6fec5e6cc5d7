"""resolve.py against the loopback DNS server of tests/dns_server.py — never the outside world."""

from __future__ import annotations

import socket
import time

import dns.message
import dns.query
import pytest
from dns_server import HANG, SERVFAIL, dns_server, query
from servers import RecordingHandler, host_entry, smtp_server

from carerix_smtp.config.hosts import parse_host
from carerix_smtp.config.tls import Security
from carerix_smtp.errors import ConfigError, SmtpConnectError, SmtpTimeoutError
from carerix_smtp.smtp.resolve import (
    NAMESERVER_ENV,
    ResolveError,
    ResolveTimeoutError,
    describe_resolver,
    make_resolver,
    parse_nameserver,
    resolve_endpoint,
)
from carerix_smtp.smtp.session import SmtpSession

ZONE = {
    "example.test": {
        "MX": [(20, "mx2.example.test"), (10, "mx1.example.test")],
        "A": ["127.0.0.1"],
    },
    "mx1.example.test": {"A": ["127.0.0.1"], "AAAA": ["::1"]},
    "mx2.example.test": {"A": ["127.0.0.1"]},
    "self.test": {"MX": [(10, "self.test")], "A": ["127.0.0.1"]},
    "nomx.test": {"A": ["127.0.0.1"]},
    "nullmx.test": {"MX": [(0, ".")]},
    "noaddr.test": {"TXT": ["hello"]},
    "brokenmx.test": {"MX": [(10, "gone.test"), (20, "mx2.example.test")]},
    "allbroken.test": {"MX": [(10, "gone.test")]},
    "slow.test": {"MX": HANG},
    "fail.test": {"MX": SERVFAIL},
}


@pytest.fixture
def zone():
    with dns_server({k: dict(v) for k, v in ZONE.items()}) as server:
        yield server


def resolve(zone, host: str, timeout: float = 2.0):
    return resolve_endpoint(parse_host(host), make_resolver([zone.nameserver]), timeout=timeout)


def test_server_answers_udp_and_tcp(zone) -> None:
    assert "127.0.0.1" in str(query(zone.port, "nomx.test", "A"))
    request = dns.message.make_query("nomx.test", "A")
    response = dns.query.tcp(request, "127.0.0.1", port=zone.port, timeout=5)
    assert response.answer and "127.0.0.1" in response.answer[0].to_text()


def test_mx_in_preference_order_with_addresses(zone) -> None:
    res = resolve(zone, "example.test:2525")
    assert [(mx.preference, mx.name) for mx in res.mx_hosts] == [
        (10, "mx1.example.test"),
        (20, "mx2.example.test"),
    ]
    assert [(t.name, t.address, t.port) for t in res.targets] == [
        ("mx1.example.test", "127.0.0.1", 2525),
        ("mx1.example.test", "::1", 2525),
        ("mx2.example.test", "127.0.0.1", 2525),
    ]
    assert res.mx_elsewhere and not res.implicit_mx
    data = res.to_dict()
    assert data["mx"][0] == {
        "preference": 10,
        "host": "mx1.example.test",
        "addresses": ["127.0.0.1", "::1"],
    }
    assert data["addresses"][0] == "mx1.example.test[127.0.0.1]:2525"


def test_mx_pointing_at_itself_is_not_elsewhere(zone) -> None:
    res = resolve(zone, "self.test")
    assert not res.mx_elsewhere and res.addresses == ["127.0.0.1"]


def test_no_mx_uses_the_name_itself(zone) -> None:
    res = resolve(zone, "nomx.test")
    assert res.implicit_mx and res.mx_hosts == () and res.addresses == ["127.0.0.1"]
    assert not res.mx_elsewhere


def test_brackets_skip_mx(zone) -> None:
    res = resolve(zone, "[example.test]:587")
    assert res.addresses == ["127.0.0.1"] and not res.mx_looked_up
    assert ("example.test", "MX") not in zone.queries


def test_ip_literal_asks_nothing(zone) -> None:
    res = resolve(zone, "[127.0.0.1]:25")
    assert res.addresses == ["127.0.0.1"] and zone.queries == []


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        pytest.param("missing.test", "nxdomain", id="nxdomain-mx"),
        pytest.param("[missing.test]", "nxdomain", id="nxdomain-bracketed"),
        pytest.param("nullmx.test", "null-mx", id="null-mx"),
        pytest.param("[noaddr.test]", "no-address", id="no-address"),
        pytest.param("allbroken.test", "no-address", id="exchanger-missing"),
        pytest.param("fail.test", "servfail", id="servfail"),
    ],
)
def test_resolve_errors(zone, host: str, reason: str) -> None:
    with pytest.raises(ResolveError) as info:
        resolve(zone, host)
    assert info.value.reason == reason and info.value.phase == "resolve"
    assert isinstance(info.value, SmtpConnectError)


def test_null_mx_message_says_rfc_7505(zone) -> None:
    with pytest.raises(ResolveError, match="RFC 7505"):
        resolve(zone, "nullmx.test")


def test_broken_exchanger_is_skipped_and_reported(zone) -> None:
    res = resolve(zone, "brokenmx.test")
    assert res.addresses == ["127.0.0.1"]
    assert res.mx_hosts[0].error == "nxdomain" and res.mx_hosts[0].addresses == ()


def test_timeout_is_bounded(zone) -> None:
    start = time.monotonic()
    with pytest.raises(ResolveTimeoutError) as info:
        resolve(zone, "slow.test", timeout=0.3)
    assert time.monotonic() - start < 3
    assert isinstance(info.value, SmtpTimeoutError) and info.value.phase == "resolve"


def test_system_resolver_knows_localhost() -> None:
    res = resolve_endpoint(parse_host("[localhost]:2525"), None, timeout=5)
    assert "127.0.0.1" in res.addresses
    assert res.addresses.index("127.0.0.1") == 0  # IPv4 first


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1", ("127.0.0.1", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        (" ::1 ", ("::1", 53)),
        ("[::1]:5353", ("::1", 5353)),
    ],
)
def test_parse_nameserver(text: str, expected: tuple[str, int]) -> None:
    assert parse_nameserver(text) == expected


@pytest.mark.parametrize("text", ["dns.example", "127.0.0.1:0", "127.0.0.1:x", "[::1", "[::1]x"])
def test_parse_nameserver_refuses(text: str) -> None:
    with pytest.raises(ConfigError, match="nameserver"):
        parse_nameserver(text)


def test_env_overrides_settings() -> None:
    resolver = make_resolver(["192.0.2.1"], {NAMESERVER_ENV: "127.0.0.1:5353"})
    assert resolver is not None and describe_resolver(resolver) == ("127.0.0.1:5353",)
    assert describe_resolver(make_resolver(["127.0.0.1"], {})) == ("127.0.0.1:53",)
    assert make_resolver([], {}) is None


def test_mx_lookup_then_connect_end_to_end(zone) -> None:
    """MX of an unbracketed name -> exchanger's address 127.0.0.1 -> a real server."""
    with smtp_server(handler=RecordingHandler()) as server:
        zone.records["relay.test"] = {"MX": [(5, "mx1.relay.test")]}
        zone.records["mx1.relay.test"] = {"A": ["127.0.0.1"]}
        entry = host_entry(f"relay.test:{server.port}", security=Security.NONE)
        resolver = make_resolver([zone.nameserver])
        with SmtpSession(entry, None, resolver=resolver, local_hostname="c.test") as session:
            assert session.peer is not None and session.peer.name == "mx1.relay.test"
            assert session.send("a@example.com", ["b@example.com"], b"x\n").delivered
    assert len(server.handler.messages) == 1


def test_connect_falls_through_to_next_address(zone) -> None:
    """The first address refuses; the session goes on to the next one and reports both."""
    try:
        with socket.socket(socket.AF_INET6) as s6:
            s6.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    with smtp_server() as server:
        zone.records["two.test"] = {"A": ["127.0.0.1"], "AAAA": ["::1"]}
        zone.records["first.test"] = {"MX": [(1, "v6.test"), (2, "two.test")]}
        zone.records["v6.test"] = {"AAAA": ["::1"]}
        entry = host_entry(f"first.test:{server.port}", security=Security.NONE)
        with SmtpSession(
            entry, None, resolver=make_resolver([zone.nameserver]), local_hostname="c.test"
        ) as session:
            assert [a.reason for a in session.attempts] == ["refused", "ok"]
            assert session.peer is not None and session.peer.address == "127.0.0.1"
