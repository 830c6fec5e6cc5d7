"""The phases ``cxsmtp test`` runs itself once the session is open: size (--spool),
mail, rcpt and data (--to: a small test message), spf, dkim and dmarc (--from), and
quit.  The phases up to AUTH are run by ``SmtpSession.open`` and recorded from its
trace."""

from __future__ import annotations

import contextlib
import socket
import time
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from carerix_smtp.errors import ExitCode, SmtpError, SmtpReplyError, SpoolError
from carerix_smtp.probe.exit_codes import PhaseFailure
from carerix_smtp.probe.hints import SPF_NOTE, dkim_hint, dmarc_hint, spf_hint
from carerix_smtp.probe.report import (
    DEFAULT_TIMEOUT,
    FAILED,
    OK,
    PHASE_DKIM,
    PHASE_DMARC,
    PHASE_SIZE,
    PHASE_SPF,
    PhaseResult,
    ProbeOptions,
)
from carerix_smtp.probe.summary import dmarc_summary, size_text
from carerix_smtp.smtp.phases import PHASE_DATA, PHASE_MAIL, PHASE_QUIT, PHASE_RCPT
from carerix_smtp.smtp.session import SmtpSession
from carerix_smtp.smtp.wire import Reply

if TYPE_CHECKING:
    import dns.resolver

    from carerix_smtp.config.dkim import DkimKey
    from carerix_smtp.config.file import ServerEntry
    from carerix_smtp.probe.dkim_check import DkimCheck
    from carerix_smtp.probe.record import PhaseRecorder


class ProbePhases:
    """The probe's own phases over an open ``session``; each is added to the report
    through ``recorder``, and a failure raises (``PhaseFailure`` or the SMTP error)."""

    def __init__(
        self,
        entry: ServerEntry,
        options: ProbeOptions,
        resolver: dns.resolver.Resolver | None,
        session: SmtpSession,
        recorder: PhaseRecorder,
        dkim_key: DkimKey | None = None,
    ) -> None:
        self.entry = entry
        self.options = options
        self.resolver = resolver
        self.session = session
        self.recorder = recorder
        self.dkim_key = dkim_key  # the key for the --from domain; None: none configured
        self.spf_result = "none"  # the spf phase's, for dmarc
        self.dkim_check: DkimCheck | None = None  # the dkim phase's, for dmarc

    def size(self) -> None:
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
            summary = (
                f"largest {largest.name} {size_text(size)}; the server announces no SIZE limit"
            )
        else:
            summary = f"largest {largest.name} {size_text(size)} vs SIZE {size_text(limit)}"
        phase = self.recorder.add(PhaseResult(PHASE_SIZE, OK, ms, detail, summary))
        if largest is not None and limit is not None and size > limit:
            phase.status = FAILED
            phase.error = (
                f"{largest} is {size} bytes, more than the {limit} bytes the server accepts "
                "(SIZE, RFC 1870)"
            )
            raise PhaseFailure(phase.error, PHASE_SIZE, ExitCode.DATAERR)

    def message(self) -> None:
        assert self.options.to is not None
        session = self.session
        to = self.options.to
        sender = self.options.mail_from or _default_sender(self.entry, to)
        message = self._signed(build_test_message(sender, to, self.entry), sender)
        start = time.perf_counter()
        reply = session.mail(sender, size=len(message) if session.has_extension("SIZE") else None)
        self._reply(PHASE_MAIL, reply, start, {"from": sender})
        start = time.perf_counter()
        reply = session.rcpt(to)
        self._reply(PHASE_RCPT, reply, start, {"to": to})
        start = time.perf_counter()
        reply = session.data(message)
        self._reply(PHASE_DATA, reply, start, {"bytes": len(message)})

    def _signed(self, message: bytes, sender: str) -> bytes:
        """The test message DKIM-signed as `send` would sign it, when the --from
        domain has a key (raises DkimSignError naming the key problem)."""
        key, domain = self.dkim_key, _domain_of(sender)
        if key is None or not (domain == key.domain or domain.endswith("." + key.domain)):
            return message
        from carerix_smtp.errors import DkimKeyError, DkimSignError
        from carerix_smtp.smtp.dkim_sign import sign_bytes

        try:
            return sign_bytes(key, message)
        except DkimSignError as exc:  # our own test message: the key is the problem (78)
            raise DkimKeyError(str(exc)) from None

    def _reply(self, name: str, reply: Reply, start: float, detail: dict[str, Any]) -> None:
        ms = (time.perf_counter() - start) * 1000.0
        detail = {**detail, "reply": reply.one_line}
        phase = self.recorder.add(PhaseResult(name, OK, ms, detail, reply.one_line))
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

    def spf(self) -> None:
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
                timeout=self._dns_timeout,
            )
        ms = (time.perf_counter() - start) * 1000.0
        detail: dict[str, Any] = {
            "domain": domain,
            "results": {a: r.to_dict() for a, r in results.items()},
            "note": SPF_NOTE,
        }
        worst = _worst_spf([r.result for r in results.values()])
        self.spf_result = worst
        decided = next(r for r in results.values() if r.result == worst)
        summary = ", ".join(f"{r.result} for {a}" for a, r in results.items())
        if decided.record:
            summary += f" ({decided.record})"
        phase = self.recorder.add(PhaseResult(PHASE_SPF, OK, ms, detail, summary))
        phase.detail["result"] = worst
        addr_list = ", ".join(addresses)
        if worst in ("fail", "permerror", "temperror"):
            phase.status = FAILED
            phase.error = f"SPF {worst} for {addr_list} from {domain}: {decided.reason}"
            raise PhaseFailure(
                phase.error,
                PHASE_SPF,
                ExitCode.DATAERR if worst != "temperror" else ExitCode.TEMPFAIL,
                hint=spf_hint(worst, domain, addresses, decided.record),
            )
        if worst != "pass":
            phase.hint = spf_hint(worst, domain, addresses, decided.record)

    def deliverability(self) -> None:
        """spf, dkim and dmarc: all three run (dmarc is decided by the other two, as a
        receiver decides it); the first failure is raised after them."""
        first: PhaseFailure | None = None
        for check in (self.spf, self.dkim, self.dmarc):
            try:
                check()
            except PhaseFailure as failure:
                phase = self.recorder.report.phases[-1]
                phase.hint = phase.hint or failure.hint
                first = first or failure
        if first is not None:
            raise first

    def dkim(self) -> None:
        """Is the configured key for the --from domain published, intact and the same?"""
        from carerix_smtp.probe.dkim_check import check_dkim

        start = time.perf_counter()
        check = check_dkim(
            self.dkim_key,
            _domain_of(self._sender),
            resolver=self.resolver,
            timeout=self._dns_timeout,
        )
        self.dkim_check = check
        ms = (time.perf_counter() - start) * 1000.0
        detail = check.to_dict()
        summary = check.reason + (" (t=y: testing)" if check.testing else "")
        ok = check.result in ("pass", "none")
        phase = self.recorder.add(PhaseResult(PHASE_DKIM, OK, ms, detail, summary if ok else ""))
        if ok:
            phase.hint = dkim_hint(check)
            return
        code = ExitCode.TEMPFAIL if check.result == "temperror" else ExitCode.DATAERR
        if check.error is not None:  # the private key: a local problem
            code = check.error.exit_code
        self._fail(phase, f"DKIM {check.result}: {check.reason}", code, dkim_hint(check))

    def dmarc(self) -> None:
        """The From domain's DMARC policy, and whether SPF or DKIM pass it aligned."""
        from carerix_smtp.probe.dmarc import Identifier, evaluate, find_dmarc

        start = time.perf_counter()
        from_domain = _domain_of(self._sender)
        lookup = find_dmarc(from_domain, resolver=self.resolver, timeout=self._dns_timeout)
        # In `cxsmtp test` the --from address is also the envelope sender (MAIL FROM).
        spf = Identifier(from_domain, self.spf_result, self.spf_result == "pass")
        dkim_check = self.dkim_check
        dkim = Identifier(
            dkim_check.domain if dkim_check else None,
            dkim_check.result if dkim_check else "none",
            bool(dkim_check and dkim_check.passed),
        )
        verdict = evaluate(lookup, from_domain, spf, dkim)
        ms = (time.perf_counter() - start) * 1000.0
        phase = self.recorder.add(
            PhaseResult(PHASE_DMARC, OK, ms, verdict.to_dict(), dmarc_summary(verdict))
        )
        hint = dmarc_hint(verdict)
        if verdict.result == "temperror":
            self._fail(phase, f"DMARC: {lookup.temperror}", ExitCode.TEMPFAIL, hint)
        if verdict.result == "error" or verdict.enforced:
            error = lookup.error or (
                f"DMARC fail for {from_domain}: neither SPF nor DKIM passes aligned "
                f"(p={verdict.policy})"
            )
            self._fail(phase, error, ExitCode.DATAERR, hint)
        phase.hint = hint

    @property
    def _sender(self) -> str:
        assert self.options.mail_from is not None
        return self.options.mail_from

    @property
    def _dns_timeout(self) -> float:
        return min(self.options.timeout or DEFAULT_TIMEOUT, 10.0)

    def _fail(self, phase: PhaseResult, error: str, code: ExitCode, hint: str | None) -> None:
        phase.status = FAILED
        phase.error = error
        phase.hint = hint
        raise PhaseFailure(error, phase.name, code, hint=hint)

    def quit(self) -> None:
        if self.session.closed:
            return
        start = time.perf_counter()
        self.session.close()
        self.recorder.add(PhaseResult(PHASE_QUIT, OK, (time.perf_counter() - start) * 1000.0))


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


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].strip().rstrip(">").lower()


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
