"""The hints of ``cxsmtp test``: for the phase that failed, a concrete next step that
names the option which fixes it.  A new probe hint goes here.

``ProbeHints`` picks the hint by phase and error; ``TlsHints`` explains TLS and
certificate failures (it may connect again, without verification, to describe the
certificate, or sniff whether a port speaks TLS or plain SMTP).  ``spf_hint``,
``dkim_hint`` and ``dmarc_hint`` are the advice for the deliverability checks.  Hints follow the seed's advice ("try putting the SMTP
server between brackets", "add the port for SSL or TLS").
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import ssl
from typing import TYPE_CHECKING, Any

from carerix_smtp.config.hosts import format_endpoint
from carerix_smtp.config.tls import SUBMISSION_PORT, SUBMISSIONS_PORT, TlsMode
from carerix_smtp.errors import (
    ConfigError,
    CxsmtpError,
    InputError,
    SmtpAuthError,
    SmtpConnectError,
    SmtpError,
    SmtpPolicyError,
    SmtpReplyError,
    SmtpTimeoutError,
    SmtpTLSError,
)
from carerix_smtp.probe.exit_codes import PhaseFailure
from carerix_smtp.probe.report import PHASE_SIZE, ProbeOptions
from carerix_smtp.smtp.phases import (
    PHASE_AUTH,
    PHASE_CONNECT,
    PHASE_DATA,
    PHASE_EHLO_TLS,
    PHASE_GREETING,
    PHASE_MAIL,
    PHASE_RCPT,
    PHASE_RESOLVE,
    PHASE_TLS,
)
from carerix_smtp.smtp.resolve import Resolution, ResolveError, Target
from carerix_smtp.smtp.session import SmtpSession

if TYPE_CHECKING:
    from carerix_smtp.config.file import ServerEntry
    from carerix_smtp.probe.dkim_check import DkimCheck
    from carerix_smtp.probe.dmarc import DmarcVerdict

log = logging.getLogger(__name__)

SNIFF_TIMEOUT = 5.0

SPF_NOTE = (
    "this checks the address cxsmtp connects to (the relay's submission address), "
    "which is usually but not always the address the relay sends out from"
)

_CERT_REASONS = ("hostname", "untrusted", "expired", "not-yet-valid", "certificate")


class ProbeHints:
    """The hint for a failed phase of one probe (of ``entry`` over ``session``)."""

    def __init__(self, entry: ServerEntry, session: SmtpSession, options: ProbeOptions) -> None:
        self.entry = entry
        self.session = session
        self.options = options
        self.mode = session.mode
        self.tls = TlsHints(entry, session, options)

    def hint(self, error: BaseException, phase: str) -> str | None:
        if isinstance(error, PhaseFailure):
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
        reason = getattr(error, "reason", None)
        if isinstance(error, ResolveError) or (phase == PHASE_RESOLVE):
            return self._resolve_hint(reason)
        if phase == PHASE_CONNECT:
            return self._connect_hint(error, reason)
        if phase == PHASE_GREETING:
            return self._greeting_hint(error)
        if phase in (PHASE_TLS, PHASE_EHLO_TLS) or isinstance(error, SmtpTLSError):
            return self.tls.hint(error, reason)
        if phase == PHASE_AUTH or isinstance(error, SmtpAuthError):
            return self._auth_hint(error, reason)
        if isinstance(error, SmtpReplyError):
            return self._reply_hint(error, phase)
        if isinstance(error, (SmtpConnectError, SmtpTimeoutError)):
            return "the connection broke off: try again; if it repeats, the server drops you"
        return getattr(error, "hint", None)

    def _resolve_hint(self, reason: str | None) -> str:
        host = self.session.endpoint.host
        port = self.session.endpoint.port
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

    def _connect_hint(self, error: BaseException, reason: str | None) -> str:
        host = self.session.endpoint.host
        port = self.session.endpoint.port
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

    def _greeting_hint(self, error: BaseException) -> str | None:
        name = self.entry.name
        port = self.session.endpoint.port
        peer = self.session.peer
        if isinstance(error, SmtpTimeoutError):
            if (
                self.mode is not TlsMode.IMPLICIT
                and peer
                and sniff_tls(peer, self.tls.sniff_timeout)
            ):
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

    def _auth_hint(self, error: BaseException, reason: str | None) -> str | None:
        name = self.entry.name
        host = self.session.endpoint.host
        if isinstance(error, (ConfigError,)) and not isinstance(error, SmtpError):
            if error.hint or self.entry.password_command:  # never advise one that is set
                return error.hint
            return f"set the password: cxsmtp server password {name}, or a password_command"
        if reason == "token-refused":  # issue 14: the provider's status is in the error
            return error.hint if isinstance(error, SmtpError) else None
        if reason == "no-mechanism" and self.entry.oauth_token_command:
            return (
                "the server offers no OAuth2 mechanism (OAUTHBEARER, XOAUTH2): sign in with a "
                f"password instead (cxsmtp server edit {name} --unset oauth_token_command, then "
                f"cxsmtp server password {name})"
            )
        if reason == "auth-not-offered":
            return (
                f"the server offers no AUTH here: for sending with a login use the submission "
                f"port ('[{host}]:{SUBMISSION_PORT}' or :{SUBMISSIONS_PORT}); if this server "
                f"relays by IP address instead, remove the username (cxsmtp server edit {name} "
                "--unset username)"
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
                f"; or sign in with OAuth2: cxsmtp server edit {name} --oauth-token-command CMD "
                "(a tool such as oama prints the token)"
            )
        if code == 535:
            fix = (
                "check the password its password_command prints (cxsmtp server show "
                f"{name} shows the password_source)"
                if self.entry.password_command
                else f"check them (cxsmtp server show {name}; set the password with cxsmtp "
                f"server password {name})"
            )
            return (
                f"the server refused the username or password (535): {fix}; a new "
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


class TlsHints:
    """Why TLS failed, and what to do: STARTTLS missing or refused, plain SMTP on an
    implicit-TLS port, or a certificate that was not accepted (described by fetching
    it again without verification)."""

    def __init__(self, entry: ServerEntry, session: SmtpSession, options: ProbeOptions) -> None:
        self.entry = entry
        self.session = session
        self.options = options
        self.mode = session.mode

    @property
    def _peer_name(self) -> str:
        peer = self.session.peer
        return peer.name if peer is not None else self.session.endpoint.host

    @property
    def sniff_timeout(self) -> float:
        return min(self.options.timeout or SNIFF_TIMEOUT, SNIFF_TIMEOUT)

    def hint(self, error: BaseException, reason: str | None) -> str | None:
        if reason in ("starttls-missing", "starttls-refused"):
            return self._starttls_hint(reason)
        if reason == "not-tls" or (reason == "timeout" and self.mode is TlsMode.IMPLICIT):
            return self._plain_smtp_hint()
        if reason in _CERT_REASONS:
            return self._certificate_hint(reason)
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

    def _starttls_hint(self, reason: str) -> str:
        host = self.session.endpoint.host
        port = self.session.endpoint.port
        if reason == "starttls-missing":
            what = "the password was not sent" if self.entry.username else "nothing was sent"
            return (
                f"the server does not offer STARTTLS on port {port}, so {what} (it would have "
                f"travelled unencrypted): use implicit TLS ('[{host}]:{SUBMISSIONS_PORT}', "
                f"--security ssl) or the submission port '[{host}]:{SUBMISSION_PORT}'"
            )
        return (
            "the server offers STARTTLS but refused to start it, so nothing secret was sent: "
            f"try again later, or use implicit TLS ('[{host}]:{SUBMISSIONS_PORT}')"
        )

    def _plain_smtp_hint(self) -> str:
        name = self.entry.name
        host = self.session.endpoint.host
        port = self.session.endpoint.port
        peer = self.session.peer
        banner = sniff_plain(peer, self.sniff_timeout) if peer else None
        seen = f" (it greets with '{banner}')" if banner else ""
        other = ""
        if port == SUBMISSIONS_PORT:
            other = f", or the submission port '[{host}]:{SUBMISSION_PORT}'"
        return (
            f"port {port} speaks plain SMTP{seen}, not implicit TLS: use STARTTLS — "
            f"cxsmtp server edit {name} --security starttls{other}"
        )

    def _certificate_hint(self, reason: str) -> str:
        name = self.entry.name
        port = self.session.endpoint.port
        cert = self._inspect_certificate()
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
        # reason == "certificate"
        return "the certificate was not accepted: check --ca-file, or the provider's certificate"

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
            timeout=self.sniff_timeout,
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


def spf_hint(result: str, domain: str, addresses: list[str], record: str | None) -> str:
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


DNS_RETRY = (
    "DNS did not answer: check the network and the resolver ([settings] nameservers or "
    "CXSMTP_NAMESERVER), then try again"
)


def dkim_hint(check: DkimCheck) -> str | None:
    """What to publish or configure so that the DKIM check passes."""
    domain, name, record = check.domain, check.name, check.expected
    show = f"(cxsmtp dkim show {domain} prints it again, split for DNS)"
    if check.result == "none":
        return (
            f"cxsmtp signs nothing from {check.from_domain}: cxsmtp dkim add "
            f"{check.from_domain} --selector cxsmtp --generate, then publish the TXT record it "
            "prints (if your relay signs for this domain itself, that is enough — this check "
            "cannot see it)"
        )
    if check.result == "missing":
        return f"publish this TXT record at {name}: {record} {show}"
    if check.result in ("multiple", "malformed"):
        return f"replace the TXT records at {name} by this one: {record} {show}"
    if check.result == "revoked":
        return (
            f"the key at {name} was revoked: publish the configured key there ({record}), or "
            f"use a new selector: cxsmtp dkim add {domain} --selector NEW --generate"
        )
    if check.result == "mismatch":
        return (
            f"{name} holds another key than the configured one: publish the configured key's "
            f"record there: {record} {show}; or, if the published key is the right one, "
            f"configure its private key: cxsmtp dkim add {domain} --selector {check.selector} "
            "--key PRIVATE.pem"
        )
    if check.result == "key-error":
        return (check.error.hint if check.error else None) or (
            f"the private key for {domain} cannot be used: fix what the error names, or make "
            f"a new key under a new selector and publish its record: cxsmtp dkim add {domain} "
            "--selector NEW --generate"
        )
    if check.result == "temperror":
        return DNS_RETRY
    return None


def dmarc_hint(verdict: DmarcVerdict) -> str | None:
    """The DMARC record to publish, or the alignment to fix."""
    from carerix_smtp.probe.dmarc import organizational_domain

    lookup = verdict.lookup
    org = organizational_domain(verdict.from_domain)
    example = f"'v=DMARC1; p=none; rua=mailto:dmarc-reports@{org}'"
    if verdict.result == "none":
        return (
            f"{verdict.from_domain} publishes no DMARC record: publish a TXT record at "
            f"_dmarc.{org} such as {example} — start with p=none and read the reports; Gmail "
            "and Yahoo require a DMARC record from bulk senders"
        )
    if verdict.result == "error":
        return f"fix the record at _dmarc.{lookup.domain} ({lookup.error}), e.g. {example}"
    if verdict.result == "temperror":
        return DNS_RETRY
    if verdict.result != "fail":
        return None
    action = {"reject": "refuse it", "quarantine": "put it in the spam folder"}
    what = action.get(verdict.policy or "", "deliver it, but report the failure")
    record = lookup.record
    share = f" (pct={record.pct}: for {record.pct}% of it)" if record and record.pct < 100 else ""
    return (
        f"mail from {verdict.from_domain} fails DMARC: with p={verdict.policy} at "
        f"_dmarc.{lookup.domain} receivers {what}{share}; make one of these pass: "
        f"SPF — {_spf_fix(verdict)}; DKIM — {_dkim_fix(verdict)}"
    )


def _spf_fix(verdict: DmarcVerdict) -> str:
    spf = verdict.spf
    mode = verdict.lookup.record.aspf if verdict.lookup.record else "r"
    if not spf.passed:
        return f"SPF gives {spf.result} for {spf.domain} (see the spf phase)"
    return (
        f"the envelope domain {spf.domain} is not aligned with {verdict.from_domain} "
        f"(aspf={mode}): send with an envelope sender in {verdict.from_domain}"
        + (" or relax to aspf=r" if mode == "s" else "")
    )


def _dkim_fix(verdict: DmarcVerdict) -> str:
    dkim = verdict.dkim
    mode = verdict.lookup.record.adkim if verdict.lookup.record else "r"
    if dkim.result == "none":
        return f"no DKIM key: cxsmtp dkim add {verdict.from_domain} --selector cxsmtp --generate"
    if not dkim.passed:
        return f"the DKIM check gives {dkim.result} for d={dkim.domain} (see the dkim phase)"
    return (
        f"d={dkim.domain} is not aligned with {verdict.from_domain} (adkim={mode}): add a key "
        f"for {verdict.from_domain} itself: cxsmtp dkim add {verdict.from_domain} --selector "
        "cxsmtp --generate" + (", or relax to adkim=r" if mode == "s" else "")
    )


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
