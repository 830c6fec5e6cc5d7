"""Provider presets: ``cxsmtp server add NAME --preset gmail``.

One table, :data:`PRESETS`: where each provider's submission server is, how it is
signed in to, and the sending limits the provider publishes, each with the page the
number comes from (kept in the row too, so ``server show`` can print it).

What a preset fills: host, security, the username where the provider fixes one
(SendGrid's ``apikey``), ``rate_per_hour`` where the provider publishes a rate
(per second, minute or hour), ``daily_limit`` where it publishes a daily one (the
server's own rolling 24 hours, besides the global email-send-limit) and the
``preset`` key.  Providers whose
limits depend on the plan (SendGrid, Mailgun, Postmark) publish no number: their
rows leave the limits unset and say so.

Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from carerix_smtp.config.tls import Security
from carerix_smtp.errors import UsageError

_PER_HOUR = {"second": 3600, "minute": 60, "hour": 1}


@dataclass(frozen=True)
class Limit:
    """A published sending limit: ``count`` ``unit`` per ``per``, and where it is written."""

    count: int
    per: str  # "second" | "minute" | "hour" | "day"
    unit: str  # "messages" | "recipients" (cxsmtp counts messages)
    source: str  # the documentation page (URL) and what it says

    @property
    def per_hour(self) -> int | None:
        """The limit as messages an hour, for ``rate_per_hour``; None for a daily one."""
        factor = _PER_HOUR.get(self.per)
        return None if factor is None else self.count * factor

    def __str__(self) -> str:
        unit = self.unit.removesuffix("s") if self.count == 1 else self.unit
        return f"{self.count:,} {unit} per {self.per} ({self.source})"


@dataclass(frozen=True)
class Preset:
    """One provider.  ``host`` is in the HOST syntax of config/hosts.py; ``{region}``
    is filled from the preset's argument (``amazon-ses:eu-west-1``)."""

    name: str
    title: str
    host: str
    security: Security
    username: str | None  # a fixed username (SendGrid: "apikey"); None: the user's own
    login: str  # the username/password convention, in words
    oauth2: bool  # the provider wants OAuth2 (XOAUTH2/OAUTHBEARER) for SMTP AUTH
    rate: Limit | None  # carried into rate_per_hour
    daily: Limit | None  # carried into daily_limit
    note: str
    docs: str  # the page for host, port and sign-in
    argument: str = ""  # "REGION" for amazon-ses:REGION, "" when none is taken
    choices: tuple[str, ...] = ()  # the accepted arguments


# Regions with an SES SMTP endpoint, as listed in the SMTP-credentials example of
# https://docs.aws.amazon.com/ses/latest/dg/smtp-credentials.html (SMTP_REGIONS).
# The authority is "SMTP endpoints" in https://docs.aws.amazon.com/general/latest/gr/ses.html;
# a region added there later: cxsmtp server add NAME "[email-smtp.REGION.amazonaws.com]:587".
SES_REGIONS = (
    "us-east-2",
    "us-east-1",
    "us-west-2",
    "ap-south-1",
    "ap-northeast-2",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-northeast-1",
    "ca-central-1",
    "eu-central-1",
    "eu-west-1",
    "eu-west-2",
    "eu-south-1",
    "eu-north-1",
    "sa-east-1",
    "us-gov-west-1",
    "us-gov-east-1",
)

_OAUTH_NOTE = (
    "sign-in with the account password is being retired for SMTP: set a command that "
    "prints a current OAuth2 access token with 'cxsmtp server edit {name} "
    "--oauth-token-command CMD' (e.g. oama or mutt_oauth2.py)"
)
_GOOGLE_DOCS = "https://support.google.com/mail/answer/7126229"
_GOOGLE_APP_PASSWORDS = (
    "; an app password (https://support.google.com/accounts/answer/185833, accounts "
    "with 2-Step Verification) works as an ordinary password instead: "
    "'cxsmtp server password {name}'"
)
_M365_LIMITS = (
    "https://learn.microsoft.com/en-us/office365/servicedescriptions/"
    "exchange-online-service-description/exchange-online-limits#sending-limits-1"
)
_SES_QUOTAS = "https://docs.aws.amazon.com/ses/latest/dg/quotas.html"

PRESETS: tuple[Preset, ...] = (
    Preset(
        name="gmail",
        title="Gmail (personal account)",
        host="[smtp.gmail.com]:587",
        security=Security.STARTTLS,
        username=None,
        login="your Gmail address",
        oauth2=True,
        rate=None,  # Google publishes no hourly rate
        # https://support.google.com/mail/answer/22839 ("You have reached a limit for sending mail")
        daily=Limit(
            500,
            "day",
            "messages",
            "https://support.google.com/mail/answer/22839: Gmail stops sending after "
            "more than 500 emails in a day",
        ),
        note=_OAUTH_NOTE + _GOOGLE_APP_PASSWORDS,
        docs=_GOOGLE_DOCS,
    ),
    Preset(
        name="google-workspace",
        title="Google Workspace (Gmail with your own domain)",
        host="[smtp.gmail.com]:587",
        security=Security.STARTTLS,
        username=None,
        login="your Workspace address",
        oauth2=True,
        rate=None,  # Google publishes no hourly rate
        # https://support.google.com/a/answer/166852 ("Gmail sending limits in Google Workspace")
        daily=Limit(
            2000,
            "day",
            "messages",
            "https://support.google.com/a/answer/166852: messages per day 2,000 "
            "(500 for trial accounts), over a rolling 24 hours",
        ),
        note=_OAUTH_NOTE
        + _GOOGLE_APP_PASSWORDS
        + "; the SMTP relay service (smtp-relay.gmail.com) has other limits: add it "
        "with its HOST instead",
        docs=_GOOGLE_DOCS,
    ),
    Preset(
        name="microsoft365",
        title="Microsoft 365 / Exchange Online",
        host="[smtp.office365.com]:587",
        security=Security.STARTTLS,
        username=None,
        login="the mailbox's address",
        oauth2=True,
        # _M365_LIMITS, "Sending limits": message rate limit 30 messages per minute
        rate=Limit(30, "minute", "messages", f"{_M365_LIMITS}: 30 messages per minute"),
        # _M365_LIMITS, "Sending limits": recipient rate limit 10,000 recipients per day
        daily=Limit(10_000, "day", "recipients", f"{_M365_LIMITS}: 10,000 recipients per day"),
        note=_OAUTH_NOTE + "; SMTP AUTH must be enabled for the mailbox",
        docs="https://learn.microsoft.com/en-us/exchange/mail-flow-best-practices/"
        "how-to-set-up-a-multifunction-device-or-application-to-send-email-using-microsoft-365-or-office-365",
    ),
    Preset(
        name="amazon-ses",
        title="Amazon SES",
        host="[email-smtp.{region}.amazonaws.com]:587",
        security=Security.STARTTLS,
        username=None,
        login="the SMTP username from the SES console (not the IAM access key)",
        oauth2=False,
        # _SES_QUOTAS: "If your account is in the sandbox, you can send 1 email per second."
        rate=Limit(1, "second", "recipients", f"{_SES_QUOTAS}: 1 per second in the sandbox"),
        # _SES_QUOTAS: "... in the sandbox, you can send up to 200 emails per 24-hour period."
        daily=Limit(200, "day", "recipients", f"{_SES_QUOTAS}: 200 per 24 hours in the sandbox"),
        note="these are the sandbox quotas; out of the sandbox they are your account's "
        "own (SES console, Account dashboard): raise the rate with "
        "'cxsmtp server edit {name} --set rate_per_hour=N'",
        docs="https://docs.aws.amazon.com/ses/latest/dg/smtp-connect.html",
        argument="REGION",
        choices=SES_REGIONS,
    ),
    Preset(
        name="sendgrid",
        title="Twilio SendGrid",
        host="[smtp.sendgrid.net]:587",
        security=Security.STARTTLS,
        username="apikey",
        login='the username is the word "apikey"; the password is an API key with Mail permission',
        oauth2=False,
        rate=None,
        daily=None,
        note="SendGrid publishes no sending rate for SMTP: the limit is your plan's",
        docs="https://www.twilio.com/docs/sendgrid/for-developers/sending-email/"
        "integrating-with-the-smtp-api",
    ),
    Preset(
        name="mailgun",
        title="Mailgun (mailgun:eu for the EU region)",
        host="[smtp.mailgun.org]:587",
        security=Security.STARTTLS,
        username=None,
        login="the sending domain's SMTP login (e.g. postmaster@mg.example.com) and its password",
        oauth2=False,
        rate=None,
        daily=None,
        note="Mailgun publishes no sending rate for SMTP: the limit is your plan's; an "
        "account in the EU region uses mailgun:eu (smtp.eu.mailgun.org)",
        docs="https://documentation.mailgun.com/docs/mailgun/user-manual/smtp-protocol/",
        argument="eu",
        choices=("eu",),
    ),
    Preset(
        name="postmark",
        title="Postmark",
        host="[smtp.postmarkapp.com]:587",
        security=Security.STARTTLS,
        username=None,
        login="an SMTP token's Access Key as username and its Secret Key as password "
        "(the Server API Token also works as both, but then shows as the username)",
        oauth2=False,
        rate=None,
        daily=None,
        note="Postmark publishes no sending rate for SMTP: the limit is your plan's",
        docs="https://postmarkapp.com/support/article/811-what-are-the-smtp-details-api-tokens-i-should-be-using",
    ),
)

_HOSTS_WITH_ARGUMENT = {"mailgun": {"eu": "[smtp.eu.mailgun.org]:587"}}


def known_presets() -> str:
    """``gmail, google-workspace, …, amazon-ses:REGION, …`` for messages and --help."""
    names: list[str] = []
    for preset in PRESETS:
        if preset.argument == "REGION":
            names.append(f"{preset.name}:{preset.argument}")
        else:
            names += [preset.name, *(f"{preset.name}:{c}" for c in preset.choices)]
    return ", ".join(names)


@dataclass(frozen=True)
class Chosen:
    """A preset with its argument applied: what ``server add --preset`` fills."""

    spec: str  # as saved in the entry's ``preset`` key, e.g. "amazon-ses:eu-west-1"
    preset: Preset
    host: str

    @property
    def rate_per_hour(self) -> int | None:
        return None if self.preset.rate is None else self.preset.rate.per_hour

    def fields(self) -> dict[str, Any]:
        """The entry's keys this preset sets (without host)."""
        out: dict[str, Any] = {"security": self.preset.security, "preset": self.spec}
        if self.preset.username is not None:
            out["username"] = self.preset.username
        if self.rate_per_hour is not None:
            out["rate_per_hour"] = self.rate_per_hour
        if self.preset.daily is not None:
            out["daily_limit"] = self.preset.daily.count
        return out


def find_preset(spec: str) -> Chosen:
    """``"amazon-ses:eu-west-1"`` -> the row with its host; a UsageError (exit 64)
    naming the known presets otherwise."""
    text = spec.strip().lower()
    name, sep, argument = text.partition(":")
    preset = next((p for p in PRESETS if p.name == name), None)
    if preset is None:
        raise UsageError(f"--preset {spec!r}: unknown preset; known: {known_presets()}")
    if not sep:
        if preset.argument == "REGION":
            raise UsageError(
                f"--preset {spec!r}: {name} needs a region, e.g. {name}:eu-west-1; "
                f"regions: {', '.join(preset.choices)}"
            )
        return Chosen(preset.name, preset, preset.host)
    if argument not in preset.choices:
        if preset.argument == "REGION":
            raise UsageError(
                f"--preset {spec!r}: {argument!r} is not a region with an SES SMTP endpoint; "
                f"regions: {', '.join(preset.choices)} (for another region give the HOST: "
                f'"[email-smtp.REGION.amazonaws.com]:587")'
            )
        raise UsageError(f"--preset {spec!r}: unknown preset; known: {known_presets()}")
    host = _HOSTS_WITH_ARGUMENT.get(preset.name, {}).get(argument)
    host = host or preset.host.format(region=argument)
    return Chosen(f"{preset.name}:{argument}", preset, host)


def apply_preset(
    spec: str | None, host: str | None, fields: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """The host and fields for ``server add``: the preset's, then the options given
    with it on top (explicit options win).  Without a preset HOST is required."""
    if spec is None:
        if host is None:
            raise UsageError(f"HOST is missing: give HOST or --preset PROVIDER ({known_presets()})")
        return host, fields
    chosen = find_preset(spec)
    return (host if host is not None else chosen.host), {**chosen.fields(), **fields}


def preset_notes(spec: str, name: str, rate_per_hour: int, send_limit: int) -> list[str]:
    """What the user should know after ``server add --preset``: sign-in and limits."""
    chosen = find_preset(spec)
    preset = chosen.preset
    notes = [f"{preset.title}: login: {preset.login}"]
    if preset.rate is not None and preset.rate.per_hour == rate_per_hour:
        notes.append(f"rate_per_hour {rate_per_hour:,}: {preset.rate}")
        if preset.rate.unit == "recipients":
            notes.append(
                "the provider counts recipients, cxsmtp counts messages: lower "
                "rate_per_hour if your messages have several recipients each"
            )
    daily = preset.daily
    if daily is not None:
        text = f"daily_limit {daily.count:,} per 24 hours: {daily}"
        if daily.unit == "recipients":
            text += " (the provider counts recipients, cxsmtp messages)"
        notes.append(text)
        if send_limit < daily.count:
            notes.append(f"the global email-send-limit ({send_limit:,}) is lower and applies too")
    notes.append(preset.note.format(name=name))
    return notes


def describe_preset(spec: str | None, name: str) -> dict[str, Any]:
    """``server show`` fields: the preset and the source of each limit it names."""
    if spec is None:
        return {}
    try:
        chosen = find_preset(spec)
    except UsageError:
        return {"preset": f"{spec} (not a preset this version knows)"}
    preset = chosen.preset
    return {
        "preset": chosen.spec,
        "preset_login": preset.login,
        "preset_rate": str(preset.rate) if preset.rate else "none published",
        "preset_daily_limit": str(preset.daily) if preset.daily else "none published",
        "preset_note": preset.note.format(name=name),
    }
