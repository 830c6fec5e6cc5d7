"""``server add --preset``, ``server show`` with a preset's sources, ``--helo-name``
and ``settings set helo-name``: exit codes and output, through Typer's runner and as
real subprocesses; the EHLO name ``cxsmtp test`` sends, as an aiosmtpd server got it."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

import pytest
from conftest import Isolated, run_cxsmtp
from servers import RecordingHandler, smtp_server
from typer.testing import CliRunner

from carerix_smtp.cli.app import app

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

runner = CliRunner()
API_KEY = "SG.not-a-real-key.Zq9s3cret"


def invoke(*args: str, input: str | None = None) -> Any:
    return runner.invoke(app, list(args), input=input)


def saved(isolated: Isolated) -> dict[str, Any]:
    return tomllib.loads(isolated.config.read_text())


def show(name: str) -> dict[str, Any]:
    result = invoke("server", "show", name, "--json")
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_add_with_a_preset_fills_the_entry_and_says_how_to_sign_in(isolated: Isolated) -> None:
    result = invoke(
        "server", "add", "work", "--preset", "microsoft365", "--username", "a@x.example"
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "added server 'work': [smtp.office365.com]:587 (the default server)"
    assert "note: Microsoft 365 / Exchange Online: login: the mailbox's address" in lines
    assert any("cxsmtp server edit work --oauth-token-command CMD" in line for line in lines)
    assert any(
        line.startswith("note: rate_per_hour 1,800: 30 messages per minute") for line in lines
    )
    assert any(
        x.startswith("note: daily_limit 10,000 per 24 hours: 10,000 recipients") for x in lines
    )
    assert saved(isolated)["servers"]["work"] == {
        "host": "[smtp.office365.com]:587",
        "username": "a@x.example",
        "security": "starttls",
        "rate_per_hour": 1800,
        "daily_limit": 10000,
        "preset": "microsoft365",
    }


def test_sendgrid_preset_supplies_the_username_for_password_stdin(isolated: Isolated) -> None:
    result = invoke(
        "server", "add", "sg", "--preset", "sendgrid", "--password-stdin", input=API_KEY
    )
    assert result.exit_code == 0, result.output
    assert "password stored in the keyring" in result.stdout
    assert API_KEY not in result.output and API_KEY not in isolated.config.read_text()
    data = show("sg")
    assert (data["username"], data["password_source"]) == ("apikey", "keyring")
    assert data["preset_rate"] == "none published"
    assert data["rate_per_hour"] == 1200  # nothing published: cxsmtp's own default


def test_options_given_with_the_preset_win(isolated: Isolated) -> None:
    result = invoke(
        "server", "add", "ses", "[email-smtp.eu-west-1.amazonaws.com]:465",
        "--preset", "amazon-ses:eu-west-1", "--security", "ssl",
        "--set", "rate_per_hour=50000", "--username", "AKIAEXAMPLE",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    entry = saved(isolated)["servers"]["ses"]
    assert entry["host"] == "[email-smtp.eu-west-1.amazonaws.com]:465"
    assert (entry["security"], entry["rate_per_hour"]) == ("ssl", 50000)
    assert entry["preset"] == "amazon-ses:eu-west-1"
    assert not any(line.startswith("note: rate_per_hour") for line in result.stdout.splitlines())


def test_show_prints_the_preset_and_the_source_of_each_limit(isolated: Isolated) -> None:
    assert invoke("server", "add", "ses", "--preset", "amazon-ses:us-east-1").exit_code == 0
    result = invoke("server", "show", "ses")
    assert result.exit_code == 0
    fields = dict(line.split(None, 1) for line in result.stdout.splitlines() if " " in line)
    assert fields["preset"].strip() == "amazon-ses:us-east-1"
    assert fields["host"].strip() == "[email-smtp.us-east-1.amazonaws.com]:587"
    quotas = "https://docs.aws.amazon.com/ses/latest/dg/quotas.html"
    assert (
        fields["preset_rate"].strip()
        == f"1 recipient per second ({quotas}: 1 per second in the sandbox)"
    )
    assert fields["preset_daily_limit"].startswith(f"200 recipients per day ({quotas}: 200 per")
    assert fields["rate_per_hour"].strip() == "3600"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "yahoo"], "cxsmtp: error: --preset 'yahoo': unknown preset; known: gmail, "
         "google-workspace, microsoft365, amazon-ses:REGION, sendgrid, mailgun, mailgun:eu, postmark"),
        (["--preset", "amazon-ses"], "cxsmtp: error: --preset 'amazon-ses': amazon-ses needs a region"),
        ([], "cxsmtp: error: HOST is missing: give HOST or --preset PROVIDER (gmail, "),
    ],
    ids=["unknown", "no-region", "no-host"],
)  # fmt: skip
def test_refusals_exit_64_with_one_line(isolated: Isolated, args: list[str], message: str) -> None:
    result = run_cxsmtp("server", "add", "x", *args)
    assert result.returncode == 64
    (line,) = result.stderr.splitlines()
    assert line.startswith(message)
    assert result.stdout == "" and not isolated.config.exists()


def test_helo_name_per_entry_add_edit_unset(isolated: Isolated) -> None:
    result = invoke(
        "server", "add", "m", "[smtp.example.com]:587", "--helo-name", "[ipv6:2001:db8::5]"
    )
    assert result.exit_code == 0, result.output
    assert saved(isolated)["servers"]["m"]["helo_name"] == "[IPv6:2001:db8::5]"
    assert (show("m")["helo_name"], show("m")["helo_name_from"]) == ("[IPv6:2001:db8::5]", "entry")
    assert invoke("server", "edit", "m", "--helo-name", "mx.example.org").exit_code == 0
    assert saved(isolated)["servers"]["m"]["helo_name"] == "mx.example.org"
    result = invoke("server", "edit", "m", "--unset", "helo_name")
    assert result.exit_code == 0 and "unset helo_name" in result.stdout
    assert "helo_name" not in saved(isolated)["servers"]["m"]
    assert show("m")["helo_name"] is None


def test_bad_helo_name_is_refused_and_nothing_is_saved(isolated: Isolated) -> None:
    assert invoke("server", "add", "m", "smtp.example.com").exit_code == 0
    before = isolated.config.read_text()
    result = run_cxsmtp("server", "edit", "m", "--helo-name", "my_host")
    assert result.returncode == 64
    assert result.stderr.splitlines() == [
        "cxsmtp: error: --helo-name 'my_host': 'my_host' is not a host name label (letters, "
        "digits and '-' inside); give a host name such as mail.example.com, or an address "
        "literal such as [192.0.2.10] or [IPv6:2001:db8::1]"
    ]
    assert isolated.config.read_text() == before


def test_global_helo_name_setting(isolated: Isolated) -> None:
    assert invoke("server", "add", "m", "smtp.example.com").exit_code == 0
    result = invoke("settings", "set", "helo-name", "relay.example.net")
    assert (result.exit_code, result.stdout) == (0, "helo-name = relay.example.net\n")
    assert saved(isolated)["settings"]["helo_name"] == "relay.example.net"
    assert (show("m")["helo_name"], show("m")["helo_name_from"]) == (
        "relay.example.net",
        "settings",
    )
    settings = json.loads(invoke("settings", "show", "--json").stdout)
    assert settings["helo_name"] == "relay.example.net"
    assert invoke("settings", "set", "helo-name", "").exit_code == 0
    assert "helo_name" not in saved(isolated)["settings"]
    bad = run_cxsmtp("settings", "set", "helo-name", "1.2.3.4")
    assert bad.returncode == 64
    assert bad.stderr.splitlines() == [
        "cxsmtp: error: helo-name '1.2.3.4': an IP address is written in brackets, e.g. "
        "[192.0.2.10]; give a host name such as mail.example.com, or an address literal such "
        "as [192.0.2.10] or [IPv6:2001:db8::1]"
    ]


@dataclasses.dataclass
class EhloRecorder(RecordingHandler):
    ehlo_names: list[str] = dataclasses.field(default_factory=list)

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        self.ehlo_names.append(hostname)
        return responses


def test_cxsmtp_test_says_the_entry_name_over_the_global_one(isolated: Isolated) -> None:
    handler = EhloRecorder()
    with smtp_server(handler=handler) as server:
        add = ["server", "add", "m", server.host, "--security", "none"]
        assert invoke(*add, "--helo-name", "client.example").exit_code == 0
        assert invoke("settings", "set", "helo-name", "global.example").exit_code == 0
        result = run_cxsmtp("test", "m", "--timeout", "5")
        assert result.returncode == 0, result.stderr
        assert invoke("server", "edit", "m", "--unset", "helo_name").exit_code == 0
        assert run_cxsmtp("test", "m", "--timeout", "5").returncode == 0
    assert handler.ehlo_names == ["client.example", "global.example"]


def test_oauth2_preset_does_not_ask_for_a_password_on_a_terminal(isolated: Isolated) -> None:
    """On a terminal ``add --username`` asks for the password; with an OAuth2 preset
    the token comes from --oauth-token-command, so nothing is asked (the run would
    otherwise wait for input until the timeout)."""
    import os
    import pty
    import subprocess

    from conftest import cxsmtp_argv

    main, terminal = pty.openpty()
    try:
        argv = [
            *cxsmtp_argv(),
            "server",
            "add",
            "gm",
            "--preset",
            "gmail",
            "--username",
            "a@b.example",
        ]
        result = subprocess.run(
            argv, stdin=terminal, capture_output=True, text=True, timeout=30, check=False
        )
    finally:
        os.close(main)
        os.close(terminal)
    assert result.returncode == 0, result.stderr
    assert "Password" not in result.stdout + result.stderr
    assert "added server 'gm': [smtp.gmail.com]:587" in result.stdout
    assert "'cxsmtp server password gm'" in result.stdout
    assert saved(isolated)["servers"]["gm"]["username"] == "a@b.example"
