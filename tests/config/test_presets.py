"""config/presets.py: one case per provider row (ids = the preset names), the
argument forms (amazon-ses:REGION, mailgun:eu), refusals, and what ``server add
--preset`` fills and says."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from carerix_smtp.config.file import Config, load_config
from carerix_smtp.config.hosts import parse_host
from carerix_smtp.config.presets import (
    PRESETS,
    SES_REGIONS,
    apply_preset,
    describe_preset,
    find_preset,
    known_presets,
    preset_notes,
)
from carerix_smtp.config.servers import add_server, describe_server
from carerix_smtp.config.tls import Security
from carerix_smtp.errors import ExitCode, UsageError

# spec, host, fixed username, rate_per_hour, daily limit (count, unit), OAuth2
ROWS: list[tuple[str, str, str | None, int | None, tuple[int, str] | None, bool]] = [
    ("gmail", "[smtp.gmail.com]:587", None, None, (500, "messages"), True),
    ("google-workspace", "[smtp.gmail.com]:587", None, None, (2000, "messages"), True),
    # 30 messages per minute = 1,800 an hour; 10,000 recipients per day
    ("microsoft365", "[smtp.office365.com]:587", None, 1800, (10_000, "recipients"), True),
    # sandbox: 1 per second = 3,600 an hour; 200 per 24 hours
    (
        "amazon-ses:eu-west-1",
        "[email-smtp.eu-west-1.amazonaws.com]:587",
        None,
        3600,
        (200, "recipients"),
        False,
    ),
    ("sendgrid", "[smtp.sendgrid.net]:587", "apikey", None, None, False),
    ("mailgun", "[smtp.mailgun.org]:587", None, None, None, False),
    ("mailgun:eu", "[smtp.eu.mailgun.org]:587", None, None, None, False),
    ("postmark", "[smtp.postmarkapp.com]:587", None, None, None, False),
]
URL = re.compile(r"^https://[a-z0-9.-]+\.[a-z]+/\S*: \S")


@pytest.mark.parametrize(
    ("spec", "host", "username", "rate", "daily", "oauth2"), ROWS, ids=[r[0] for r in ROWS]
)
def test_preset_row(
    spec: str,
    host: str,
    username: str | None,
    rate: int | None,
    daily: tuple[int, str] | None,
    oauth2: bool,
) -> None:
    chosen = find_preset(spec)
    preset = chosen.preset
    assert chosen.spec == spec and chosen.host == host
    endpoint = parse_host(chosen.host)  # valid HOST syntax, no MX lookup, submission port
    assert (endpoint.port, endpoint.mx_lookup) == (587, False)
    assert preset.security is Security.STARTTLS
    assert chosen.rate_per_hour == rate
    fields = chosen.fields()
    assert fields["preset"] == spec and fields["security"] is Security.STARTTLS
    assert fields.get("username") == username
    assert fields.get("rate_per_hour") == rate
    assert preset.oauth2 is oauth2
    assert ("--oauth-token-command" in preset.note) is oauth2
    if daily is None:
        assert preset.daily is None and preset.rate is None
        assert "publishes no sending rate" in preset.note  # and says why nothing is set
    else:
        assert preset.daily is not None
        assert (preset.daily.count, preset.daily.unit, preset.daily.per) == (*daily, "day")
    for limit in (preset.rate, preset.daily):
        if limit is not None:  # each number names its documentation page
            assert URL.match(limit.source), limit.source
    assert preset.docs.startswith("https://")
    assert preset.login


def test_every_row_has_a_case() -> None:
    assert {find_preset(r[0]).preset.name for r in ROWS} == {p.name for p in PRESETS}


@pytest.mark.parametrize("region", SES_REGIONS)
def test_every_ses_region_gives_its_endpoint(region: str) -> None:
    chosen = find_preset(f"amazon-ses:{region}")
    assert parse_host(chosen.host).host == f"email-smtp.{region}.amazonaws.com"


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("hotmail", "unknown preset; known: gmail, google-workspace, microsoft365, "
         "amazon-ses:REGION, sendgrid, mailgun, mailgun:eu, postmark"),
        ("amazon-ses", "amazon-ses needs a region, e.g. amazon-ses:eu-west-1; regions: us-east-2"),
        ("amazon-ses:mars-1", "'mars-1' is not a region with an SES SMTP endpoint"),
        ("mailgun:us", "unknown preset; known:"),
        ("gmail:eu", "unknown preset; known:"),
        ("", "unknown preset"),
    ],
    ids=["unknown", "ses-without-region", "ses-bad-region", "mailgun-us", "gmail-arg", "empty"],
)  # fmt: skip
def test_refused_presets_name_what_is_accepted(spec: str, words: str) -> None:
    with pytest.raises(UsageError) as caught:
        find_preset(spec)
    assert caught.value.exit_code == ExitCode.USAGE
    message = str(caught.value)
    assert words in message and "\n" not in message


def test_case_and_spaces_are_forgiven() -> None:
    assert find_preset(" Amazon-SES:EU-WEST-1 ").spec == "amazon-ses:eu-west-1"


def test_known_presets_lists_every_row() -> None:
    for preset in PRESETS:
        assert preset.name in known_presets()


def test_explicit_options_win_over_the_preset() -> None:
    host, fields = apply_preset(
        "microsoft365",
        "[smtp-alt.example.com]:465",
        {"security": Security.SSL, "rate_per_hour": 60},
    )
    assert host == "[smtp-alt.example.com]:465"
    assert fields == {
        "security": Security.SSL,
        "rate_per_hour": 60,
        "daily_limit": 10_000,
        "preset": "microsoft365",
    }


def test_without_a_preset_host_is_required() -> None:
    assert apply_preset(None, "smtp.example.com", {"username": "u"}) == (
        "smtp.example.com",
        {"username": "u"},
    )
    with pytest.raises(UsageError, match="HOST is missing: give HOST or --preset PROVIDER"):
        apply_preset(None, None, {})


def test_notes_for_a_daily_limit() -> None:
    notes = preset_notes("gmail", "gm", 1200, 10_000)
    assert notes[0] == "Gmail (personal account): login: your Gmail address"
    assert "cxsmtp server edit gm --oauth-token-command CMD" in notes[-1]
    assert "app password" in notes[-1] and "'cxsmtp server password gm'" in notes[-1]
    (daily,) = [n for n in notes if n.startswith("daily_limit")]
    assert daily.startswith("daily_limit 500 per 24 hours: 500 messages per day")
    assert not any("email-send-limit" in n for n in notes)  # 10,000 is not lower


def test_notes_for_ses_name_the_rate_and_what_it_counts() -> None:
    notes = preset_notes("amazon-ses:us-east-1", "ses", 3600, 100)
    assert any(n.startswith("rate_per_hour 3,600: 1 recipient per second (https://") for n in notes)
    assert any("the provider counts recipients, cxsmtp counts messages" in n for n in notes)
    (daily,) = [n for n in notes if n.startswith("daily_limit")]
    assert daily.startswith("daily_limit 200 per 24 hours") and "cxsmtp messages" in daily
    assert "the global email-send-limit (100) is lower and applies too" in notes
    assert any("cxsmtp server edit ses --set rate_per_hour=N" in n for n in notes)


def test_a_rate_given_on_the_command_line_is_not_credited_to_the_provider() -> None:
    notes = preset_notes("microsoft365", "m", 60, 10_000)
    assert not any(n.startswith("rate_per_hour") for n in notes)


def test_describe_preset() -> None:
    assert describe_preset(None, "x") == {}
    data = describe_preset("microsoft365", "m365")
    assert data["preset"] == "microsoft365"
    assert data["preset_rate"].startswith("30 messages per minute (https://learn.microsoft.com/")
    assert data["preset_daily_limit"].startswith("10,000 recipients per day (https://")
    assert "cxsmtp server edit m365 --oauth-token-command" in data["preset_note"]
    assert describe_preset("sendgrid", "s")["preset_rate"] == "none published"
    assert describe_preset("gone", "g") == {"preset": "gone (not a preset this version knows)"}


@pytest.mark.parametrize("spec", [r[0] for r in ROWS])
def test_an_entry_made_from_each_preset_saves_and_loads(tmp_path: Path, spec: str) -> None:
    config = Config(path=tmp_path / "config.toml")
    host, fields = apply_preset(spec, None, {})
    add_server(config, "p", host, **fields)
    loaded = load_config(config.path)
    entry = loaded.servers["p"]
    assert (entry.host, entry.preset, entry.security) == (host, spec, Security.STARTTLS)
    shown: dict[str, Any] = describe_server(loaded, entry, {})
    assert shown["preset"] == spec and shown["tls_mode"] == "starttls"
