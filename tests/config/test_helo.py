"""config/helo.py: the EHLO name's syntax (RFC 5321 §4.1.1.1) and its precedence;
the EHLO a real aiosmtpd server receives through ``cxsmtp send``'s session factory
and ``cxsmtp test``'s probe: entry vs global vs automatic."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path
from typing import Any

import pytest
from servers import RecordingHandler, host_entry, smtp_server

from carerix_smtp.config.file import Config, ServerEntry, Settings, save_config
from carerix_smtp.config.helo import check_helo_name, helo_name_for
from carerix_smtp.config.tls import Security
from carerix_smtp.errors import ExitCode, UsageError


@pytest.mark.parametrize(
    ("given", "saved"),
    [
        ("mail.example.com", "mail.example.com"),
        ("  mail.example.com.  ", "mail.example.com"),
        ("localhost", "localhost"),
        ("a-1.example", "a-1.example"),
        ("[192.0.2.10]", "[192.0.2.10]"),
        ("[ipv6:2001:DB8::1]", "[IPv6:2001:db8::1]"),
    ],
    ids=["fqdn", "trailing-dot", "single-label", "hyphen", "ipv4-literal", "ipv6-literal"],
)
def test_accepted(given: str, saved: str) -> None:
    assert check_helo_name(given) == saved


@pytest.mark.parametrize(
    ("given", "why"),
    [
        ("", "it is empty"),
        ("mail example.com", "it contains white space"),
        ("under_score.example", "'under_score' is not a host name label"),
        ("-mail.example.com", "'-mail' is not a host name label"),
        ("mail..example.com", "'' is not a host name label"),
        ("192.0.2.10", "an IP address is written in brackets, e.g. [192.0.2.10]"),
        ("[192.0.2.300]", "'192.0.2.300' is not an IP address"),
        ("[2001:db8::1]", "is not an IP address (an IPv6 address is written [IPv6:ADDRESS])"),
        ("a" * 64 + ".example", "is not a host name label"),
        (".".join(["abcdefgh"] * 29), "it is longer than 255 characters"),
    ],
    ids=[
        "empty",
        "space",
        "underscore",
        "leading-hyphen",
        "empty-label",
        "bare-ip",
        "bad-ipv4",
        "ipv6-without-tag",
        "long-label",
        "long-name",
    ],
)
def test_refused_with_one_line_naming_what_is_accepted(given: str, why: str) -> None:
    with pytest.raises(UsageError) as caught:
        check_helo_name(given)
    message = str(caught.value)
    assert caught.value.exit_code == ExitCode.USAGE
    assert message.startswith(f"--helo-name {given!r}: ") and why in message
    assert message.endswith("or [IPv6:2001:db8::1]") and "\n" not in message


@pytest.mark.parametrize(
    ("given", "entry", "setting", "expected"),
    [
        ("opt.example", "entry.example", "global.example", "opt.example"),
        (None, "entry.example", "global.example", "entry.example"),
        (None, None, "global.example", "global.example"),
        (None, None, None, None),
    ],
    ids=["option", "entry", "global", "automatic"],
)
def test_precedence(
    given: str | None, entry: str | None, setting: str | None, expected: str | None
) -> None:
    server = ServerEntry(name="s", host="smtp.example.com", helo_name=entry)
    assert helo_name_for(server, Settings(helo_name=setting), given) == expected


# --- what a real server receives ---------------------------------------------------


@dataclasses.dataclass
class EhloRecorder(RecordingHandler):
    """Records the name in each EHLO the server receives."""

    ehlo_names: list[str] = dataclasses.field(default_factory=list)

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        self.ehlo_names.append(hostname)
        return responses


def automatic_name() -> str:
    """What smtp/ehlo.py sends without a configured name: a FQDN host name, else the
    address literal of the connection (here 127.0.0.1)."""
    host = socket.gethostname()
    return host if "." in host else "[127.0.0.1]"


CASES = [
    ("entry.example", "global.example", "entry.example"),
    (None, "[192.0.2.7]", "[192.0.2.7]"),
    (None, None, None),
]
IDS = ["entry-over-global", "global", "automatic"]


def _config(tmp_path: Path, port: int, entry: str | None, setting: str | None) -> Config:
    server = host_entry(f"[127.0.0.1]:{port}", security=Security.NONE, helo_name=entry)
    config = Config(path=tmp_path / "config.toml", servers={"test": server})
    config.settings.helo_name = setting
    return config


@pytest.mark.parametrize(("entry", "setting", "expected"), CASES, ids=IDS)
def test_send_session_factory_says_the_configured_name(
    tmp_path: Path, entry: str | None, setting: str | None, expected: str | None
) -> None:
    from carerix_smtp.send.connection import default_session_factory

    handler = EhloRecorder()
    with smtp_server(handler=handler) as server:
        config = _config(tmp_path, server.port, entry, setting)
        session = default_session_factory(config)(config.servers["test"], None)
        with session:
            session.open()
    assert handler.ehlo_names == [expected or automatic_name()]


def test_send_option_wins_over_entry_and_global(tmp_path: Path) -> None:
    from carerix_smtp.send.connection import default_session_factory

    handler = EhloRecorder()
    with smtp_server(handler=handler) as server:
        config = _config(tmp_path, server.port, "entry.example", "global.example")
        factory = default_session_factory(config, local_hostname="option.example")
        with factory(config.servers["test"], None) as session:
            session.open()
    assert handler.ehlo_names == ["option.example"]


@pytest.mark.parametrize(("entry", "setting", "expected"), CASES, ids=IDS)
def test_probe_says_the_configured_name(
    tmp_path: Path, entry: str | None, setting: str | None, expected: str | None
) -> None:
    from carerix_smtp.probe.probe import ProbeRequest, probe_server

    handler = EhloRecorder()
    with smtp_server(handler=handler) as server:
        config = _config(tmp_path, server.port, entry, setting)
        save_config(config)
        report = probe_server(ProbeRequest("test", timeout=5.0), lambda: config, {})
    assert report.passed, report.error
    assert handler.ehlo_names == [expected or automatic_name()]
