"""The phases of ``cxsmtp test`` (SPEC §2), each timed, with what it learned and,
at the first failure, a concrete hint.

    resolve -> connect -> greeting -> ehlo -> tls -> ehlo-tls -> auth
            [-> size (--spool)] [-> mail -> rcpt -> data (--to)]
            [-> spf -> dkim -> dmarc (--from)] -> quit

With implicit TLS ("SSL", port 465) the tls phase comes right after connect.  The
probe stops at the first failing phase; the ones after it are "skipped" — except
that spf, dkim and dmarc all run (DNS checks that decide DMARC together).  Hints
follow the seed's advice ("try putting the SMTP server between brackets", "add
the port for SSL or TLS") and name the option that fixes the problem.

``wait_until_ready`` retries the whole probe with backoff (the seed's "it takes
about 15 minutes before you can test it"); clock and sleep are injected.

This module holds the entry points: ``probe_server`` (all of ``cxsmtp test``),
``run_probe`` (one probe of one server entry) and ``wait_until_ready``.  The phases
themselves are in phases.py, their recording in record.py, the hints in hints.py.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from carerix_smtp.config.credentials import credentials_path
from carerix_smtp.config.helo import helo_name_for
from carerix_smtp.config.oauth import credential_for
from carerix_smtp.errors import CxsmtpError, ExitCode, SecretError, UsageError
from carerix_smtp.probe.hints import ProbeHints
from carerix_smtp.probe.phases import ProbePhases
from carerix_smtp.probe.record import PhaseRecorder
from carerix_smtp.probe.report import DEFAULT_TIMEOUT, ProbeOptions, ProbeReport
from carerix_smtp.smtp.phases import PHASE_AUTH, PhaseTrace
from carerix_smtp.smtp.resolve import make_resolver
from carerix_smtp.smtp.session import SmtpSession

if TYPE_CHECKING:
    import dns.resolver

    from carerix_smtp.config.dkim import DkimKey
    from carerix_smtp.config.file import Config, ServerEntry
    from carerix_smtp.config.oauth import Credential


@dataclass
class ProbeRequest:
    """What ``cxsmtp test`` was asked: its arguments and options."""

    name: str | None = None  # the server entry; None: the default server
    to: str | None = None
    mail_from: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    wait_until_ready: str | None = None  # a duration, e.g. "15m"
    spool: Path | None = None


def probe_server(
    request: ProbeRequest,
    load_config: Callable[[], Config],
    env: Mapping[str, str],
    *,
    on_retry: Callable[[ProbeReport, float], None] | None = None,
) -> ProbeReport:
    """All of ``cxsmtp test``: check the addresses, find the server entry and its
    password, probe it (again, with backoff, while it fails and --wait-until-ready
    allows).  A bad option or configuration raises; a failed probe is reported."""
    for option, address in (("--to", request.to), ("--from", request.mail_from)):
        if address is not None and "@" not in address.strip("<> "):
            raise UsageError(f"{option} {address!r}: not an e-mail address (local@domain)")
    config = load_config()
    entry = config.server(request.name) if request.name else config.default()
    wait = request.wait_until_ready
    duration = parse_duration(wait) if wait else None
    resolver = make_resolver(config.settings.nameservers, env)
    password = password_error = None
    if entry.username is not None:
        try:
            # an oauth_token_command gives a token source (OAuth2), else the password
            password = credential_for(entry, env, credentials=credentials_path(config.path))
        except SecretError as exc:  # reported as the AUTH phase, after TLS was checked
            password_error = exc
    options = ProbeOptions(
        to=request.to,
        mail_from=request.mail_from,
        timeout=request.timeout,
        spool=request.spool,
        local_hostname=helo_name_for(entry, config.settings),  # issue 14: entry > settings
    )
    dkim_key = _dkim_key(config, request.mail_from)

    def attempt() -> ProbeReport:
        return run_probe(
            entry,
            password,
            options,
            resolver=resolver,
            password_error=password_error,
            dkim_key=dkim_key,
        )

    if duration is None:
        return attempt()
    return wait_until_ready(attempt, duration, on_retry=on_retry)


def run_probe(
    entry: ServerEntry,
    password: Credential | None,
    options: ProbeOptions | None = None,
    *,
    resolver: dns.resolver.Resolver | None = None,
    ssl_context: ssl.SSLContext | None = None,
    password_error: CxsmtpError | None = None,
    dkim_key: DkimKey | None = None,
) -> ProbeReport:
    """Run every phase against ``entry``; never raises a CxsmtpError (it is reported).

    ``password_error``: why no password could be found (the auth phase fails with it,
    after connectivity and TLS have been checked).  ``dkim_key``: the DKIM key for the
    --from domain (None: none configured), checked by the dkim phase.
    """
    options = options or ProbeOptions()
    endpoint = entry.endpoint
    report = ProbeReport(entry.name, entry.host, endpoint.port)
    probe = _Probe(entry, password, options, resolver, ssl_context, password_error, report)
    probe.phases.dkim_key = dkim_key  # used by the dkim phase only
    probe.run()
    return report


class _Probe:
    """One run: open the session (the phases up to AUTH), then the probe's own
    phases, recording each; the first failure ends it."""

    def __init__(
        self,
        entry: ServerEntry,
        password: Credential | None,
        options: ProbeOptions,
        resolver: dns.resolver.Resolver | None,
        ssl_context: ssl.SSLContext | None,
        password_error: CxsmtpError | None,
        report: ProbeReport,
    ) -> None:
        self.entry = entry
        self.password = password
        self.options = options
        self.resolver = resolver
        self.ssl_context = ssl_context
        self.password_error = password_error
        self.report = report
        self.session = SmtpSession(
            entry,
            password,
            resolver=resolver,
            ssl_context=ssl_context,
            local_hostname=options.local_hostname,
            timeout=options.timeout,
        )
        self.hints = ProbeHints(entry, self.session, options)
        self.recorder = PhaseRecorder(report, entry, options, self.session, self.hints)
        self.phases = ProbePhases(entry, options, resolver, self.session, self.recorder)

    def run(self) -> None:
        failure: BaseException | None = None
        try:
            if self.password_error is not None and self.entry.username is not None:
                self._open_without_auth()
            else:
                self.session.open()
        except CxsmtpError as exc:
            failure = exc
        self.recorder.record_trace()
        if failure is not None:
            self.recorder.fail(failure)
        else:
            try:
                if self.options.spool is not None:
                    self.phases.size()
                if self.options.to:
                    self.phases.message()
                if self.options.mail_from:
                    self.phases.deliverability()
            except CxsmtpError as exc:
                self.recorder.fail(exc)
        self.phases.quit()
        self.recorder.fill_skipped()

    def _open_without_auth(self) -> None:
        """Check everything up to AUTH, then fail AUTH with the password error."""
        self.session.open(authenticate=False)
        assert self.password_error is not None
        self.session.trace.append(PhaseTrace(PHASE_AUTH, 0.0, False, {}, self.password_error))
        raise self.password_error


def _dkim_key(config: Config, mail_from: str | None) -> DkimKey | None:
    """The DKIM key cxsmtp would sign mail from ``mail_from`` with, if any."""
    if mail_from is None:
        return None
    from carerix_smtp.config.dkim import key_for

    return key_for(config, mail_from.rpartition("@")[2].strip("<> ").lower())


# --- wait until ready -----------------------------------------------------------------

_NOT_RETRIED = (int(ExitCode.CONFIG), int(ExitCode.USAGE), int(ExitCode.NOINPUT))


def wait_until_ready(
    attempt: Callable[[], ProbeReport],
    duration: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    first_delay: float = 10.0,
    max_delay: float = 60.0,
    on_retry: Callable[[ProbeReport, float], None] | None = None,
) -> ProbeReport:
    """Run ``attempt`` until it passes or ``duration`` seconds have gone by, waiting
    ``first_delay`` seconds, doubling up to ``max_delay``, between attempts.
    Configuration errors are not retried: time does not fix them."""
    deadline = clock() + duration
    delay = first_delay
    count = 0
    while True:
        count += 1
        report = attempt()
        report.attempts = count
        if report.passed or report.exit_code in _NOT_RETRIED:
            return report
        remaining = deadline - clock()
        if remaining <= 0:
            return report
        wait = min(delay, remaining)
        if on_retry is not None:
            on_retry(report, wait)
        sleep(wait)
        delay = min(delay * 2, max_delay)


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``1h``, ``1h30m`` -> seconds."""
    import re

    raw = text
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", text)
    if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([hms])", "", text).strip():
        raise UsageError(f"invalid duration {raw!r}; write e.g. 90s, 15m, 1h or 1h30m")
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0}
    return sum(float(n) * scale[unit] for n, unit in parts)
