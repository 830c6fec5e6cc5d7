"""The phases of ``cxsmtp test`` (SPEC §2), each timed, with what it learned and,
at the first failure, a concrete hint.

    resolve -> connect -> greeting -> ehlo -> tls -> ehlo-tls -> auth
            [-> size (--spool)] [-> mail -> rcpt -> data (--to)] [-> spf (--from)] -> quit

With implicit TLS ("SSL", port 465) the tls phase comes right after connect.  The
probe stops at the first failing phase; the ones after it are "skipped".  Hints
follow the seed's advice ("try putting the SMTP server between brackets", "add
the port for SSL or TLS") and name the option that fixes the problem.

``wait_until_ready`` retries the whole probe with backoff (the seed's "it takes
about 15 minutes before you can test it"); clock and sleep are injected.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from carerix_smtp.config.hosts import format_endpoint
from carerix_smtp.config.tls import SUBMISSION_PORT, SUBMISSIONS_PORT, TlsMode
from carerix_smtp.errors import (
    ConfigError,
    CxsmtpError,
    ExitCode,
    InputError,
    SmtpAuthError,
    SmtpConnectError,
    SmtpError,
    SmtpPolicyError,
    SmtpReplyError,
    SmtpTimeoutError,
    SmtpTLSError,
    SpoolError,
    UsageError,
)
from carerix_smtp.smtp.resolve import Resolution, ResolveError, Target
from carerix_smtp.smtp.transport import (
    PHASE_AUTH,
    PHASE_CONNECT,
    PHASE_DATA,
    PHASE_EHLO,
    PHASE_EHLO_TLS,
    PHASE_GREETING,
    PHASE_MAIL,
    PHASE_QUIT,
    PHASE_RCPT,
    PHASE_RESOLVE,
    PHASE_TLS,
    PhaseTrace,
    Reply,
    SmtpSession,
)

if TYPE_CHECKING:
    import dns.resolver

    from carerix_smtp.config.file import ServerEntry

log = logging.getLogger(__name__)

PHASE_SIZE = "size"
PHASE_SPF = "spf"

DEFAULT_TIMEOUT = 30.0  # per phase, like swaks; `--timeout` changes it
SNIFF_TIMEOUT = 5.0

# Exit codes of `cxsmtp test` (sysexits).  68 and 76 are not (yet) in ExitCode.
EXIT_NOHOST = ExitCode.NOHOST
EXIT_PROTOCOL = ExitCode.PROTOCOL

OK, FAILED, SKIPPED = "ok", "failed", "skipped"

SPF_NOTE = (
    "this checks the address cxsmtp connects to (the relay's submission address), "
    "which is usually but not always the address the relay sends out from"
)


@dataclass
class PhaseResult:
    name: str
    status: str  # ok | failed | skipped
    ms: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    summary: str = ""  # the facts on one line, for humans
    error: str | None = None
    hint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "ms": None if self.ms is None else round(self.ms, 1),
            "detail": self.detail,
            "error": self.error,
            "hint": self.hint,
        }


@dataclass
class ProbeReport:
    server: str
    host: str
    port: int
    phases: list[PhaseResult] = field(default_factory=list)
    hint: str | None = None
    error: str | None = None
    exit_code: int = 0
    attempts: int = 1

    @property
    def passed(self) -> bool:
        return self.exit_code == 0

    @property
    def failed_phase(self) -> PhaseResult | None:
        return next((p for p in self.phases if p.status == FAILED), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "host": self.host,
            "port": self.port,
            "ok": self.passed,
            "passed": self.passed,
            "exit_code": self.exit_code,
            "error": self.error,
            "hint": self.hint,
            "attempts": self.attempts,
            "phases": [p.to_dict() for p in self.phases],
        }


@dataclass
class ProbeOptions:
    to: str | None = None
    mail_from: str | None = None
    timeout: float | None = DEFAULT_TIMEOUT
    spool: Path | None = None
    local_hostname: str | None = None


# --- the probe ---------------------------------------------------------------------


def run_probe(
    entry: ServerEntry,
    password: str | None,
    options: ProbeOptions | None = None,
    *,
    resolver: dns.resolver.Resolver | None = None,
    ssl_context: ssl.SSLContext | None = None,
    password_error: CxsmtpError | None = None,
) -> ProbeReport:
    """Run every phase against ``entry``; never raises a CxsmtpError (it is reported).

    ``password_error``: why no password could be found (the auth phase fails with it,
    after connectivity and TLS have been checked).
    """
    options = options or ProbeOptions()
    endpoint = entry.endpoint
    report = ProbeReport(entry.name, entry.host, endpoint.port)
    probe = _Probe(entry, password, options, resolver, ssl_context, password_error, report)
    probe.run()
    return report


class _Probe:
    def __init__(
        self,
        entry: ServerEntry,
        password: str | None,
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
        self.mode = self.session.mode

    # The phases this run should go through, in order.
    def planned(self) -> list[str]:
        names = [PHASE_RESOLVE, PHASE_CONNECT]
        if self.mode is TlsMode.IMPLICIT:
            names += [PHASE_TLS, PHASE_GREETING, PHASE_EHLO]
        elif self.mode is TlsMode.PLAIN:
            names += [PHASE_GREETING, PHASE_EHLO]
        else:
            names += [PHASE_GREETING, PHASE_EHLO, PHASE_TLS, PHASE_EHLO_TLS]
        if self.entry.username is not None:
            names.append(PHASE_AUTH)
        if self.options.spool is not None:
            names.append(PHASE_SIZE)
        if self.options.to:
            names += [PHASE_MAIL, PHASE_RCPT, PHASE_DATA]
        if self.options.mail_from:
            names.append(PHASE_SPF)
        names.append(PHASE_QUIT)
        return names

    def run(self) -> None:
        failure: BaseException | None = None
        try:
            if self.password_error is not None and self.entry.username is not None:
                self._open_without_auth()
            else:
                self.session.open()
        except CxsmtpError as exc:
            failure = exc
        self._record_trace()
        if failure is not None:
            self._fail(failure)
        else:
            try:
                if self.options.spool is not None:
                    self._size_phase()
                if self.options.to:
                    self._message_phases()
                if self.options.mail_from:
                    self._spf_phase()
            except CxsmtpError as exc:
                self._fail(exc)
        self._quit_phase()
        self._fill_skipped()

    def _open_without_auth(self) -> None:
        """Check everything up to AUTH, then fail AUTH with the password error."""
        self.session.open(authenticate=False)
        assert self.password_error is not None
        self.session.trace.append(PhaseTrace(PHASE_AUTH, 0.0, False, {}, self.password_error))
        raise self.password_error

    # -- recording ------------------------------------------------------------------

    def _add(self, phase: PhaseResult) -> PhaseResult:
        self.report.phases.append(phase)
        return phase

    def _record_trace(self) -> None:
        for trace in self.session.trace:
            detail = _clean(trace.facts)
            status = OK if trace.ok else FAILED
            phase = PhaseResult(trace.name, status, trace.ms, detail, _summary(trace.name, detail))
            if trace.error is not None:
                phase.error = str(trace.error)
                if isinstance(trace.error, SmtpError) and trace.error.code is not None:
                    detail["code"] = trace.error.code
                    detail["enhanced"] = trace.error.enhanced
            self._add(phase)
        # STARTTLS that was optional and not offered/refused: say so rather than drop it.
        names = {p.name for p in self.report.phases}
        if (
            self.mode is TlsMode.STARTTLS_OPPORTUNISTIC
            and not self.session.encrypted
            and PHASE_EHLO in names
            and self.session.trace[-1].ok
        ):
            if PHASE_TLS not in names:
                self._insert_after(
                    PHASE_EHLO,
                    PhaseResult(
                        PHASE_TLS,
                        SKIPPED,
                        detail={"reason": "STARTTLS not offered; continued unencrypted"},
                        summary="STARTTLS not offered; continued unencrypted (no password)",
                    ),
                )
            self._insert_after(
                PHASE_TLS,
                PhaseResult(PHASE_EHLO_TLS, SKIPPED, summary="no TLS, no second EHLO"),
            )

    def _insert_after(self, name: str, phase: PhaseResult) -> None:
        index = next(i for i, p in enumerate(self.report.phases) if p.name == name)
        self.report.phases.insert(index + 1, phase)

    def _fail(self, error: BaseException) -> None:
        phase = self.report.failed_phase
        if phase is None:
            done = {p.name for p in self.report.phases}
            pending = [n for n in self.planned() if n not in done]
            name = getattr(error, "phase", "") or (pending[0] if pending else PHASE_QUIT)
            phase = self._add(PhaseResult(name, FAILED, error=str(error)))
        hint = self._hint(error, phase.name)
        phase.hint = hint
        self.report.hint = hint
        self.report.error = str(error)
        self.report.exit_code = exit_code_for(error)

    def _fill_skipped(self) -> None:
        done = {p.name for p in self.report.phases}
        for name in self.planned():
            if name not in done:
                self._add(PhaseResult(name, SKIPPED))
        order = {name: i for i, name in enumerate(self.planned())}
        self.report.phases.sort(key=lambda p: order.get(p.name, len(order)))

    # -- optional phases -------------------------------------------------------------

    def _size_phase(self) -> None:
        assert self.options.spool is not None
        start = time.perf_counter()
        largest, size = largest_message(self.options.spool)
        limit = self.session.max_size
        detail: dict[str, Any] = {
            "spool": str(self.options.spool),
            "largest": largest.name if largest else None,
            "largest_bytes": size,
            "server_size": limit,
        }
        ms = (time.perf_counter() - start) * 1000.0
        if largest is None:
            summary = "no .eml files in the spool"
        elif limit is None:
            summary = f"largest {largest.name} {_bytes(size)}; the server announces no SIZE limit"
        else:
            summary = f"largest {largest.name} {_bytes(size)} vs SIZE {_bytes(limit)}"
        phase = self._add(PhaseResult(PHASE_SIZE, OK, ms, detail, summary))
        if largest is not None and limit is not None and size > limit:
            phase.status = FAILED
            phase.error = (
                f"{largest} is {size} bytes, more than the {limit} bytes the server accepts "
                "(SIZE, RFC 1870)"
            )
            raise _PhaseFailure(phase.error, PHASE_SIZE, ExitCode.DATAERR)

    def _message_phases(self) -> None:
        assert self.options.to is not None
        session = self.session
        to = self.options.to
        sender = self.options.mail_from or _default_sender(self.entry, to)
        message = build_test_message(sender, to, self.entry)
        start = time.perf_counter()
        reply = session.mail(sender, size=len(message) if session.has_extension("SIZE") else None)
        self._reply_phase(PHASE_MAIL, reply, start, {"from": sender})
        start = time.perf_counter()
        reply = session.rcpt(to)
        self._reply_phase(PHASE_RCPT, reply, start, {"to": to})
        start = time.perf_counter()
        reply = session.data(message)
        self._reply_phase(PHASE_DATA, reply, start, {"bytes": len(message)})

    def _reply_phase(self, name: str, reply: Reply, start: float, detail: dict[str, Any]) -> None:
        ms = (time.perf_counter() - start) * 1000.0
        detail = {**detail, "reply": reply.one_line}
        phase = self._add(PhaseResult(name, OK, ms, detail, reply.one_line))
        if not reply.ok or (name == PHASE_DATA and reply.code != 250 and reply.code // 100 != 2):
            phase.status = FAILED
            error = SmtpReplyError(
                f"{self.session.where}: {name}: {reply.one_line}",
                host=self.session.endpoint.host,
                port=self.session.endpoint.port,
                phase=name,
                code=reply.code,
                enhanced=reply.enhanced,
                text=reply.text,
            )
            phase.error = str(error)
            detail["code"] = reply.code
            detail["enhanced"] = reply.enhanced
            phase.detail = detail
            if self.session.closed is False and name != PHASE_DATA:
                with contextlib.suppress(SmtpError):
                    self.session.reset()
            raise error

    def _spf_phase(self) -> None:
        from carerix_smtp.probe.spf import check_host

        assert self.options.mail_from is not None
        sender = self.options.mail_from
        domain = sender.rpartition("@")[2].strip().rstrip(">").lower()
        start = time.perf_counter()
        addresses = _spf_addresses(self.session)
        results = {}
        for address in addresses:
            results[address] = check_host(
                address,
                domain,
                sender,
                resolver=self.resolver,
                timeout=min(self.options.timeout or DEFAULT_TIMEOUT, 10.0),
            )
        ms = (time.perf_counter() - start) * 1000.0
        detail: dict[str, Any] = {
            "domain": domain,
            "results": {a: r.to_dict() for a, r in results.items()},
            "note": SPF_NOTE,
        }
        worst = _worst_spf([r.result for r in results.values()])
        decided = next(r for r in results.values() if r.result == worst)
        summary = ", ".join(f"{r.result} for {a}" for a, r in results.items())
        if decided.record:
            summary += f" ({decided.record})"
        phase = self._add(PhaseResult(PHASE_SPF, OK, ms, detail, summary))
        phase.detail["result"] = worst
        addr_list = ", ".join(addresses)
        if worst in ("fail", "permerror", "temperror"):
            phase.status = FAILED
            phase.error = f"SPF {worst} for {addr_list} from {domain}: {decided.reason}"
            raise _PhaseFailure(
                phase.error,
                PHASE_SPF,
                ExitCode.DATAERR if worst != "temperror" else ExitCode.TEMPFAIL,
                hint=_spf_hint(worst, domain, addresses, decided.record),
            )
        if worst != "pass":
            phase.hint = _spf_hint(worst, domain, addresses, decided.record)

    def _quit_phase(self) -> None:
        if self.session.closed:
            return
        start = time.perf_counter()
        self.session.close()
        self._add(PhaseResult(PHASE_QUIT, OK, (time.perf_counter() - start) * 1000.0))

    # -- hints ------------------------------------------------------------------------

    def _hint(self, error: BaseException, phase: str) -> str | None:
        if isinstance(error, _PhaseFailure):
            return self._size_hint() if error.phase == PHASE_SIZE else error.hint
        hint = self._specific_hint(error, phase)
        mx = self._mx_hint()
        if mx and phase not in (PHASE_RESOLVE, PHASE_MAIL, PHASE_RCPT, PHASE_DATA):
            # The seed's first advice: MX points elsewhere -> use the name itself.
            return f"{mx}; otherwise: {hint}" if hint else mx
        return hint

    def _mx_hint(self) -> str | None:
        resolution = self.session.resolution
        if resolution is None or not resolution.mx_elsewhere:
            return None
        endpoint = self.session.endpoint
        others = ", ".join(sorted({mx.name for mx in resolution.mx_hosts}))
        bracketed = format_endpoint(dataclasses.replace(endpoint, mx_lookup=False))
        return (
            f"the MX records of {endpoint.host} point at {others} (where mail for the domain is "
            f"delivered), not at {endpoint.host} itself: try '{bracketed}' — brackets mean no MX "
            f"lookup: cxsmtp server edit {self.entry.name} --host '{bracketed}'"
        )

    def _specific_hint(self, error: BaseException, phase: str) -> str | None:
        name = self.entry.name
        host = self.session.endpoint.host
        port = self.session.endpoint.port
        reason = getattr(error, "reason", None)
        peer = self.session.peer
        if isinstance(error, ResolveError) or (phase == PHASE_RESOLVE):
            if reason == "nxdomain":
                return f"the name {host} does not exist in DNS: check the spelling of the host"
            if reason == "null-mx":
                return (
                    f"{host} says it takes no mail (null MX); if it is the SMTP server's own "
                    f"name, write it in brackets so MX is not looked up: '[{host}]:{port}'"
                )
            if reason == "no-address":
                return f"{host} has no IPv4 or IPv6 address in DNS: check the host name"
            return (
                "DNS did not answer: check the network and the resolver (/etc/resolv.conf, "
                "[settings] nameservers or CXSMTP_NAMESERVER)"
            )
        if phase == PHASE_CONNECT:
            attempts = getattr(error, "attempts", ())
            shown = ", ".join(a.target.display for a in attempts) or f"{host}:{port}"
            if reason == "refused":
                return (
                    f"nothing accepts connections on port {port} at {shown} (connection "
                    "refused): check the port — 465 for SSL, 587 for STARTTLS, 25 for relays"
                )
            if reason == "timeout" or isinstance(error, SmtpTimeoutError):
                return (
                    f"no answer from {shown} within {self.session.connect_timeout:g} s: a "
                    f"firewall drops the packets or the host is down; many networks block "
                    f"outgoing port 25 — try port 587 or 465"
                )
            if reason == "unreachable":
                return f"no route to {shown}: a network problem between here and the server"
            return "the connection could not be made: check host, port and network"
        if phase == PHASE_GREETING:
            if isinstance(error, SmtpTimeoutError):
                if self.mode is not TlsMode.IMPLICIT and peer and sniff_tls(peer, self._sniff_t):
                    return (
                        f'port {port} speaks implicit TLS ("SSL") and waits for a TLS '
                        f"handshake, not plain SMTP: use --security ssl (cxsmtp server edit "
                        f"{name} --security ssl)"
                    )
                return (
                    "the server accepted the connection but sent no greeting: it may expect "
                    f"implicit TLS (--security ssl, port {SUBMISSIONS_PORT}), or it is overloaded"
                )
            code = getattr(error, "code", None)
            if code == 421:
                return "the server is busy or closing (421): try again later"
            if code is not None:
                return (
                    f"the server refuses this client ({code}): your address may be blocked or "
                    "not allowed to use this server; ask the provider"
                )
            return None
        if phase in (PHASE_TLS, PHASE_EHLO_TLS) or isinstance(error, SmtpTLSError):
            return self._tls_hint(error, reason)
        if phase == PHASE_AUTH or isinstance(error, SmtpAuthError):
            return self._auth_hint(error, reason)
        if isinstance(error, SmtpReplyError):
            return self._reply_hint(error, phase)
        if isinstance(error, (SmtpConnectError, SmtpTimeoutError)):
            return "the connection broke off: try again; if it repeats, the server drops you"
        return getattr(error, "hint", None)

    @property
    def _peer_name(self) -> str:
        peer = self.session.peer
        return peer.name if peer is not None else self.session.endpoint.host

    @property
    def _sniff_t(self) -> float:
        return min(self.options.timeout or SNIFF_TIMEOUT, SNIFF_TIMEOUT)

    def _tls_hint(self, error: BaseException, reason: str | None) -> str | None:
        name = self.entry.name
        host = self.session.endpoint.host
        port = self.session.endpoint.port
        if reason == "starttls-missing":
            what = "the password was not sent" if self.entry.username else "nothing was sent"
            return (
                f"the server does not offer STARTTLS on port {port}, so {what} (it would have "
                f"travelled unencrypted): use implicit TLS ('[{host}]:{SUBMISSIONS_PORT}', "
                f"--security ssl) or the submission port '[{host}]:{SUBMISSION_PORT}'"
            )
        if reason == "starttls-refused":
            return (
                "the server offers STARTTLS but refused to start it, so nothing secret was sent: "
                f"try again later, or use implicit TLS ('[{host}]:{SUBMISSIONS_PORT}')"
            )
        if reason == "not-tls" or (reason == "timeout" and self.mode is TlsMode.IMPLICIT):
            peer = self.session.peer
            banner = sniff_plain(peer, self._sniff_t) if peer else None
            seen = f" (it greets with '{banner}')" if banner else ""
            other = ""
            if port == SUBMISSIONS_PORT:
                other = f", or the submission port '[{host}]:{SUBMISSION_PORT}'"
            return (
                f"port {port} speaks plain SMTP{seen}, not implicit TLS: use STARTTLS — "
                f"cxsmtp server edit {name} --security starttls{other}"
            )
        cert = self._inspect_certificate() if reason in _CERT_REASONS else {}
        if reason == "hostname":
            names = ", ".join(cert.get("san", ())) or cert.get("subject") or "another name"
            return (
                f"the certificate is for {names}, not for {self._peer_name}: connect "
                f"with a name it covers (cxsmtp server edit {name} --host '[NAME]:{port}'); "
                f"or, insecure, --insecure-skip-verify"
            )
        if reason == "untrusted":
            issuer = cert.get("issuer")
            who = f" (issuer: {issuer})" if issuer else ""
            return (
                f"the certificate is self-signed or from an unknown CA{who}: give its CA "
                f"certificate with cxsmtp server edit {name} --ca-file CA.pem; or, insecure, "
                "--insecure-skip-verify"
            )
        if reason in ("expired", "not-yet-valid"):
            when = cert.get("not_after")
            what = (
                f"expired on {when}" if reason == "expired" and when else reason.replace("-", " ")
            )
            return (
                f"the server's certificate {what}: the provider must renew it (or this machine's "
                f"clock is wrong); meanwhile, insecure: cxsmtp server edit {name} "
                "--insecure-skip-verify"
            )
        if reason == "certificate":
            return (
                "the certificate was not accepted: check --ca-file, or the provider's certificate"
            )
        if reason == "eof":
            return (
                "the server closed the connection during the TLS handshake: the port may not "
                "speak TLS, or it supports no TLS version/cipher in common (cxsmtp needs TLS 1.2+)"
            )
        if reason == "timeout":
            return "the TLS handshake did not finish in time: the port may not speak TLS"
        if isinstance(error, InputError):
            return "check the --ca-file path: it must be a PEM file with CA certificates"
        return None

    def _inspect_certificate(self) -> dict[str, Any]:
        """The certificate the server presents, fetched again WITHOUT verification —
        only to describe it in the hint; nothing is sent over that connection."""
        peer = self.session.peer
        if peer is None:
            return {}
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        entry = dataclasses.replace(self.entry, username=None, password_command=None)
        resolution = Resolution(self.session.endpoint, (peer,))
        inspector = SmtpSession(
            entry,
            None,
            ssl_context=context,
            local_hostname=self.options.local_hostname,
            timeout=self._sniff_t,
            resolution=resolution,
        )
        try:
            inspector.open()
        except CxsmtpError as exc:
            log.debug("certificate inspection failed: %s", exc)
            return {}
        finally:
            inspector.close()
        return inspector.tls.to_dict() if inspector.tls else {}

    def _auth_hint(self, error: BaseException, reason: str | None) -> str | None:
        name = self.entry.name
        host = self.session.endpoint.host
        if isinstance(error, (ConfigError,)) and not isinstance(error, SmtpError):
            return error.hint or (
                f"set the password: cxsmtp server password {name}, or a password_command"
            )
        if reason == "auth-not-offered":
            return (
                f"the server offers no AUTH here: for sending with a login use the submission "
                f"port ('[{host}]:{SUBMISSION_PORT}' or :{SUBMISSIONS_PORT}); if this server "
                f"relays by IP address instead, remove the username (cxsmtp server edit {name})"
            )
        if reason == "no-mechanism":
            return (
                "the server offers only AUTH mechanisms cxsmtp does not speak (e.g. XOAUTH2): "
                "ask the provider for SMTP AUTH with PLAIN or LOGIN (an app password)"
            )
        if isinstance(error, SmtpPolicyError):
            return error.hint or (
                "the password is only sent encrypted: use TLS (--security ssl or starttls)"
            )
        code = getattr(error, "code", None)
        enhanced = getattr(error, "enhanced", None) or ""
        text = (getattr(error, "text", "") or "").lower()
        basic_disabled = enhanced in ("5.7.139", "5.7.30", "5.7.9", "5.7.14") or (
            "basic auth" in text or "app password" in text or "application-specific" in text
        )
        if basic_disabled:
            return (
                "the provider has disabled password (basic) authentication for this account or "
                "requires an app password: create an app password or token at the provider and "
                f"use it, e.g. cxsmtp server edit {name} --password-command 'pass show smtp/{name}'"
            )
        if code == 535:
            return (
                f"the server refused the username or password (535): check them (cxsmtp server "
                f"show {name}; set the password with cxsmtp server password {name}); a new "
                "account may need some minutes before it works (--wait-until-ready 15m)"
            )
        if code == 530:
            return (
                "the server wants something else first (530): usually an encrypted connection "
                "— use --security ssl or starttls"
            )
        if code == 538:
            return "the server requires encryption for AUTH (538): use --security ssl or starttls"
        if code is not None and 400 <= code < 500:
            return f"temporary authentication failure ({code}): try again later"
        return None

    def _reply_hint(self, error: SmtpReplyError, phase: str) -> str | None:
        code = error.code or 0
        enhanced = error.enhanced or ""
        name = self.entry.name
        if code == 421:
            return "the server is busy or closing (421): try again later"
        if code == 530 or (enhanced == "5.7.0" and "auth" in error.text.lower()):
            return (
                "the server requires authentication (530): add the login: cxsmtp server edit "
                f"{name} --username USER, then cxsmtp server password {name}"
            )
        if code == 552 or enhanced.startswith("5.3.4"):
            return "the message is larger than the server accepts (552)"
        if phase == PHASE_RCPT and (enhanced == "5.7.1" or "relay" in error.text.lower()):
            return (
                f"the server refused the recipient ({code}): it does not relay for you — "
                "authenticate (--username) or ask the provider to allow your address"
            )
        if phase == PHASE_RCPT and 500 <= code < 600:
            return f"the server refused the recipient ({code}): check the --to address"
        if phase == PHASE_MAIL and 500 <= code < 600:
            return (
                f"the server refused the sender ({code}): this account may only send from its "
                "own addresses; pass one with --from"
            )
        if 400 <= code < 500:
            return f"temporary refusal ({code}): try again later"
        return None

    def _size_hint(self) -> str | None:
        return (
            "that message will be refused by this server: split it or send it through a "
            "server with a larger limit"
        )


_CERT_REASONS = ("hostname", "untrusted", "expired", "not-yet-valid", "certificate")


class _PhaseFailure(CxsmtpError):
    """A check of the probe itself (SIZE, SPF) failed."""

    def __init__(self, message: str, phase: str, code: ExitCode, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.phase = phase
        self.code = code


# --- exit codes -----------------------------------------------------------------------


def exit_code_for(error: BaseException) -> int:
    """The exit code of a failed `cxsmtp test` (listed in cli/test_cmd.py's docstring)."""
    if isinstance(error, _PhaseFailure):
        return int(error.code)
    if isinstance(error, ResolveError) and error.reason in ("nxdomain", "no-address", "null-mx"):
        return EXIT_NOHOST
    if isinstance(error, SmtpTLSError):
        return EXIT_PROTOCOL
    if isinstance(error, SmtpAuthError):
        return int(ExitCode.NOPERM)
    if isinstance(error, SmtpPolicyError):
        return int(ExitCode.CONFIG)
    if isinstance(error, SmtpReplyError):
        if error.phase == PHASE_AUTH and error.code is not None and error.code >= 500:
            return int(ExitCode.NOPERM)
        return int(ExitCode.DATAERR if error.permanent else ExitCode.TEMPFAIL)
    if isinstance(error, (SmtpConnectError, SmtpTimeoutError)):
        return int(ExitCode.UNAVAILABLE)
    if isinstance(error, CxsmtpError):
        return int(error.exit_code)
    return int(ExitCode.SOFTWARE)  # pragma: no cover


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


# --- helpers ----------------------------------------------------------------------------


def sniff_tls(target: Target, timeout: float) -> bool:
    """Does ``target`` complete a TLS handshake right away (implicit TLS)?"""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only asking "is this TLS?"; nothing is sent
    try:
        with (
            socket.create_connection((target.address, target.port), timeout=timeout) as sock,
            context.wrap_socket(sock, server_hostname=target.name),
        ):
            return True
    except (OSError, ssl.SSLError):
        return False


def sniff_plain(target: Target, timeout: float) -> str | None:
    """The plain-text greeting of ``target``, if it sends one."""
    try:
        with socket.create_connection((target.address, target.port), timeout=timeout) as sock:
            data = sock.recv(512)
    except OSError:
        return None
    line = data.split(b"\n", 1)[0].decode("utf-8", "replace").strip()
    return line if line[:3].isdigit() else None


def largest_message(spool: Path) -> tuple[Path | None, int]:
    """The largest ``*.eml`` directly in ``spool`` (what `cxsmtp send` would send)."""
    if not spool.is_dir():
        raise SpoolError(f"spool {spool}: not a directory")
    largest: Path | None = None
    size = 0
    for path in spool.glob("*.eml"):
        try:
            current = path.stat().st_size
        except OSError:
            continue
        if largest is None or current > size:
            largest, size = path, current
    return largest, size


def build_test_message(sender: str, to: str, entry: ServerEntry) -> bytes:
    """A small RFC 5322 message that says what it is."""
    domain = sender.rpartition("@")[2] or "cxsmtp.invalid"
    date = formatdate(localtime=True)
    host = socket.gethostname()
    lines = [
        f"From: <{sender}>",
        f"To: <{to}>",
        f"Subject: cxsmtp test message ({date})",
        f"Date: {date}",
        # make_msgid with a domain: no getfqdn() DNS lookup.
        f"Message-ID: {make_msgid('cxsmtp-test', domain=domain)}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
        "Content-Transfer-Encoding: 7bit",
        "X-Mailer: cxsmtp test",
        "",
        "This is a test message sent by 'cxsmtp test'.",
        "",
        f"Sent {date} from {host} through server entry '{entry.name}' ({entry.host}).",
        "If you can read this, the server accepts and delivers mail from cxsmtp.",
        "",
    ]
    return "\r\n".join(lines).encode("ascii", "replace")


def _default_sender(entry: ServerEntry, to: str) -> str:
    """--from, else the login if it is an address, else the recipient (as swaks does)."""
    if entry.username and "@" in entry.username:
        return entry.username
    return to


def _spf_addresses(session: SmtpSession) -> list[str]:
    """The connected address first, then the other addresses the server name has."""
    addresses: list[str] = []
    if session.peer is not None:
        addresses.append(session.peer.address)
    if session.resolution is not None:
        for target in session.resolution.targets:
            if target.address not in addresses:
                addresses.append(target.address)
    return addresses[:4]


_SPF_ORDER = ("permerror", "temperror", "fail", "softfail", "neutral", "none", "pass")


def _worst_spf(results: list[str]) -> str:
    return min(results, key=_SPF_ORDER.index) if results else "none"


def _spf_hint(result: str, domain: str, addresses: list[str], record: str | None) -> str:
    shown = ", ".join(addresses)
    mechanisms = " ".join(f"ip{6 if ':' in a else 4}:{a}" for a in addresses)
    if result == "none":
        return (
            f"{domain} publishes no SPF record: add a TXT record like 'v=spf1 {mechanisms} ~all' "
            f"(or the include: your provider documents); {SPF_NOTE}"
        )
    if result in ("permerror", "temperror"):
        return f"the SPF record of {domain} cannot be evaluated ({result}): fix it; {SPF_NOTE}"
    return (
        f"the SPF record of {domain} ({record}) does not authorise {shown} ({result}): "
        f"add '{mechanisms}' or your provider's include: to it; {SPF_NOTE}"
    )


def _clean(facts: dict[str, Any]) -> dict[str, Any]:
    """JSON-friendly copy (tuples -> lists)."""
    out: dict[str, Any] = {}
    for key, value in facts.items():
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def _bytes(size: int | None) -> str:
    if size is None:
        return "-"
    if size >= 1_000_000:
        return f"{size / 1_000_000:.1f} MB"
    if size >= 1000:
        return f"{size / 1000:.1f} kB"
    return f"{size} B"


def _summary(name: str, d: dict[str, Any]) -> str:
    """One line of facts for the human output."""
    if name == PHASE_RESOLVE:
        if "mx" in d:
            if d.get("implicit_mx"):
                return "no MX records; using the name itself: " + ", ".join(d["addresses"])
            mx = ", ".join(
                f"{m['preference']} {m['host']} ({', '.join(m['addresses']) or m.get('error')})"
                for m in d["mx"]
            )
            return f"MX {mx}"
        return ", ".join(d.get("addresses", []))
    if name == PHASE_CONNECT:
        if "address" not in d:
            return ""  # the error lists every address tried
        tried = [t for t in d.get("tried", []) if t.get("result") != "ok"]
        text = f"connected to {d['address']}"
        if tried:
            text += "; before: " + ", ".join(f"{t['address']} {t['result']}" for t in tried)
        return text
    if name == PHASE_GREETING:
        return str(d.get("banner", ""))
    if name in (PHASE_EHLO, PHASE_EHLO_TLS):
        caps = []
        for cap in d.get("capabilities", []):
            key = cap.split(" ", 1)[0]
            if key == "SIZE" and d.get("size"):
                caps.append(f"SIZE {_bytes(d['size'])}")
            elif key in ("AUTH", "STARTTLS", "PIPELINING", "8BITMIME", "SMTPUTF8", "CHUNKING"):
                caps.append(cap)
        return ", ".join(caps) or "no extensions"
    if name == PHASE_TLS:
        if "version" not in d:
            return str(d.get("refused", ""))
        parts = [f"{d.get('version')} {d.get('cipher')}"]
        if d.get("subject"):
            parts.append(str(d["subject"]))
        if d.get("issuer"):
            parts.append(f"issuer {d['issuer']}")
        if d.get("not_after"):
            parts.append(f"valid until {d['not_after']}")
        if not d.get("verified", True):
            parts.append("NOT VERIFIED")
        return "; ".join(parts)
    if name == PHASE_AUTH and d.get("mechanism"):
        return f"AUTH {d['mechanism']}"
    return ""
