"""Host syntax: every row of SPEC §1's table, the refusals, and a round trip."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carerix_smtp.config.hosts import ACCEPTED_FORMS, Endpoint, format_endpoint, parse_host
from carerix_smtp.errors import HostSyntaxError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "smtp.example.com", Endpoint("smtp.example.com", 25, True, False), id="name-mx"
        ),
        pytest.param(
            "[smtp.example.com]", Endpoint("smtp.example.com", 25, False, False), id="bracketed"
        ),
        pytest.param(
            "[smtp.example.com]:465", Endpoint("smtp.example.com", 465, False, False), id="ssl-465"
        ),
        pytest.param(
            "[smtp.example.com]:587",
            Endpoint("smtp.example.com", 587, False, False),
            id="starttls-587",
        ),
        pytest.param(
            "smtp.example.com:2525",
            Endpoint("smtp.example.com", 2525, True, False),
            id="name-mx-port",
        ),
        pytest.param(
            "[192.0.2.10]:587", Endpoint("192.0.2.10", 587, False, True), id="ipv4-literal"
        ),
        pytest.param(
            "[2001:db8::1]:587", Endpoint("2001:db8::1", 587, False, True), id="ipv6-literal"
        ),
        pytest.param(
            "[ipv6:2001:db8::1]:587", Endpoint("2001:db8::1", 587, False, True), id="ipv6-tagged"
        ),
        pytest.param(
            "[IPv6:2001:DB8::1]", Endpoint("2001:db8::1", 25, False, True), id="ipv6-tag-case"
        ),
        pytest.param(
            "  SMTP.Example.COM  ", Endpoint("smtp.example.com", 25, True, False), id="trim-case"
        ),
        pytest.param(
            "smtp.example.com.", Endpoint("smtp.example.com", 25, True, False), id="trailing-dot"
        ),
        pytest.param("192.0.2.10:2525", Endpoint("192.0.2.10", 2525, False, True), id="bare-ipv4"),
        pytest.param("[::1]:2525", Endpoint("::1", 2525, False, True), id="loopback-v6"),
        pytest.param("localhost", Endpoint("localhost", 25, True, False), id="single-label"),
        pytest.param(
            "smtp.example.com:65535",
            Endpoint("smtp.example.com", 65535, True, False),
            id="max-port",
        ),
    ],
)
def test_parse_accepted_forms(text: str, expected: Endpoint) -> None:
    assert parse_host(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        pytest.param("", "empty", id="empty"),
        pytest.param("   ", "empty", id="blank"),
        pytest.param("[smtp.example.com", "not closed", id="unclosed-bracket"),
        pytest.param("smtp.example.com]", "without '['", id="stray-close"),
        pytest.param("[[smtp.example.com]]", "nested", id="nested-brackets"),
        pytest.param("[]:587", "empty", id="empty-in-brackets"),
        pytest.param(":587", "empty", id="empty-name"),
        pytest.param("smtp.example.com:0", "outside 1-65535", id="port-0"),
        pytest.param("smtp.example.com:65536", "outside 1-65535", id="port-65536"),
        pytest.param("smtp.example.com:abc", "not a number", id="port-abc"),
        pytest.param("[smtp.example.com]:", "not a number", id="port-empty"),
        pytest.param("smtp.example.com:-1", "not a number", id="port-negative"),
        pytest.param("smtp.exa mple.com", "white space", id="space-inside"),
        pytest.param("2001:db8::1", "brackets", id="bare-ipv6"),
        pytest.param("[ipv6:smtp.example.com]", "not an IPv6", id="ipv6-tag-not-v6"),
        pytest.param("[ipv6:192.0.2.1]", "not an IPv6", id="ipv6-tag-v4"),
        pytest.param("[smtp.example.com]x", "unexpected", id="trailing-garbage"),
        pytest.param("[smtp.example.com]:587:1", "not a number", id="double-port"),
        pytest.param("smtp..example.com", "label", id="empty-label"),
        pytest.param("-smtp.example.com", "label", id="leading-hyphen"),
        pytest.param("smtp_example!.com", "label", id="bad-char"),
        pytest.param("999.1.1.1", "IPv4", id="bad-ipv4"),
    ],
)
def test_refusals_are_one_line_and_show_accepted_forms(text: str, why: str) -> None:
    with pytest.raises(HostSyntaxError) as info:
        parse_host(text)
    message = str(info.value)
    assert why in message
    assert ACCEPTED_FORMS in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "why", "instead"),
    [
        pytest.param("http://smtp.x", "leave out 'http://'", "[smtp.x]:PORT", id="http"),
        pytest.param("smtp://smtp.x:587", "leave out 'smtp://'", "[smtp.x]:587", id="smtp-port"),
        pytest.param("smtps://smtp.x", "leave out 'smtps://'", "[smtp.x]:465", id="smtps-465"),
        pytest.param("SMTPS://smtp.x:2465/", "leave out 'SMTPS://'", "[smtp.x]:2465", id="upper"),
        pytest.param(
            "smtp://[2001:db8::1]:25", "leave out 'smtp://'", "[2001:db8::1]:25", id="smtp-ipv6"
        ),
        pytest.param("smtp://jan@smtp.x:587", "--username", "[smtp.x]:587", id="user-in-url"),
        pytest.param("mailto:jan@example.com", "a mailto: address is not a host", "", id="mailto"),
        pytest.param("smtp://", "leave out 'smtp://'", "", id="scheme-only"),
        pytest.param("http://[smtp.x", "leave out 'http://'", "", id="unparsable-url"),
    ],
)
def test_url_is_not_a_host(text: str, why: str, instead: str) -> None:
    with pytest.raises(HostSyntaxError) as info:
        parse_host(text)
    message = str(info.value)
    assert "is not a host" in message and why in message
    assert f"e.g. {instead}" in message if instead else "e.g." not in message
    assert ACCEPTED_FORMS in message
    assert "is not a number" not in message and "\n" not in message


def test_url_refusal_never_repeats_a_password() -> None:
    with pytest.raises(HostSyntaxError) as info:
        parse_host("smtps://jan:s3cret@smtp.x:465")
    message = str(info.value)
    assert "s3cret" not in message
    assert "'smtps://jan:***@smtp.x:465'" in message and "e.g. [smtp.x]:465" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("smtp:2525", Endpoint("smtp", 2525, True, False), id="host-named-smtp"),
        pytest.param("mailto", Endpoint("mailto", 25, True, False), id="host-named-mailto"),
    ],
)
def test_names_like_schemes_are_still_hosts(text: str, expected: Endpoint) -> None:
    assert parse_host(text) == expected


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        pytest.param("smtp.example.com:25", "smtp.example.com", id="default-port-dropped"),
        pytest.param("[smtp.example.com]:587", "[smtp.example.com]:587", id="bracketed"),
        pytest.param("[ipv6:2001:db8::1]:587", "[2001:db8::1]:587", id="ipv6-tag-dropped"),
        pytest.param("192.0.2.10", "[192.0.2.10]", id="bare-ip-bracketed"),
    ],
)
def test_format_is_canonical(text: str, canonical: str) -> None:
    assert format_endpoint(parse_host(text)) == canonical


_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
_names = (
    st.lists(_label, min_size=1, max_size=4)
    .map(".".join)
    .filter(lambda n: not all(part.isdigit() for part in n.split(".")))
)
_ports = st.integers(min_value=1, max_value=65535)


@st.composite
def endpoints(draw: st.DrawFn) -> Endpoint:
    kind = draw(st.sampled_from(["name", "ipv4", "ipv6"]))
    port = draw(_ports)
    if kind == "name":
        return Endpoint(draw(_names), port, mx_lookup=draw(st.booleans()), ip_literal=False)
    if kind == "ipv4":
        return Endpoint(str(draw(st.ip_addresses(v=4))), port, mx_lookup=False, ip_literal=True)
    return Endpoint(str(draw(st.ip_addresses(v=6))), port, mx_lookup=False, ip_literal=True)


@given(endpoints())
def test_round_trip(endpoint: Endpoint) -> None:
    assert parse_host(format_endpoint(endpoint)) == endpoint


@given(st.text(max_size=40))
def test_never_crashes_on_arbitrary_text(text: str) -> None:
    try:
        endpoint = parse_host(text)
    except HostSyntaxError as exc:
        assert "\n" not in str(exc)
    else:
        assert 1 <= endpoint.port <= 65535
        assert endpoint.host
