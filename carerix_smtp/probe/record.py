"""The report's phases of one probe: the session's trace turned into
``PhaseResult``s, the phases planned for this run, the failure with its hint and
exit code, and the phases skipped after it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from carerix_smtp.config.tls import TlsMode
from carerix_smtp.errors import SmtpError
from carerix_smtp.probe.exit_codes import exit_code_for
from carerix_smtp.probe.report import (
    FAILED,
    OK,
    PHASE_DKIM,
    PHASE_DMARC,
    PHASE_SIZE,
    PHASE_SPF,
    SKIPPED,
    PhaseResult,
    ProbeOptions,
    ProbeReport,
)
from carerix_smtp.probe.summary import phase_summary
from carerix_smtp.smtp.phases import (
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
)
from carerix_smtp.smtp.session import SmtpSession

if TYPE_CHECKING:
    from carerix_smtp.config.file import ServerEntry
    from carerix_smtp.probe.hints import ProbeHints


class PhaseRecorder:
    """Keeps ``report.phases``: in planned order, with the failure and its hint."""

    def __init__(
        self,
        report: ProbeReport,
        entry: ServerEntry,
        options: ProbeOptions,
        session: SmtpSession,
        hints: ProbeHints,
    ) -> None:
        self.report = report
        self.entry = entry
        self.options = options
        self.session = session
        self.hints = hints
        self.mode = session.mode

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
            names += [PHASE_SPF, PHASE_DKIM, PHASE_DMARC]
        names.append(PHASE_QUIT)
        return names

    def add(self, phase: PhaseResult) -> PhaseResult:
        self.report.phases.append(phase)
        return phase

    def record_trace(self) -> None:
        for trace in self.session.trace:
            detail = _clean(trace.facts)
            status = OK if trace.ok else FAILED
            phase = PhaseResult(
                trace.name, status, trace.ms, detail, phase_summary(trace.name, detail)
            )
            if trace.error is not None:
                phase.error = str(trace.error)
                if isinstance(trace.error, SmtpError) and trace.error.code is not None:
                    detail["code"] = trace.error.code
                    detail["enhanced"] = trace.error.enhanced
            self.add(phase)
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

    def fail(self, error: BaseException) -> None:
        phase = self.report.failed_phase
        if phase is None:
            done = {p.name for p in self.report.phases}
            pending = [n for n in self.planned() if n not in done]
            name = getattr(error, "phase", "") or (pending[0] if pending else PHASE_QUIT)
            phase = self.add(PhaseResult(name, FAILED, error=str(error)))
        hint = self.hints.hint(error, phase.name)
        phase.hint = hint
        self.report.hint = hint
        self.report.error = str(error)
        self.report.exit_code = exit_code_for(error)

    def fill_skipped(self) -> None:
        done = {p.name for p in self.report.phases}
        for name in self.planned():
            if name not in done:
                self.add(PhaseResult(name, SKIPPED))
        order = {name: i for i, name in enumerate(self.planned())}
        self.report.phases.sort(key=lambda p: order.get(p.name, len(order)))


def _clean(facts: dict[str, Any]) -> dict[str, Any]:
    """JSON-friendly copy (tuples -> lists)."""
    out: dict[str, Any] = {}
    for key, value in facts.items():
        out[key] = list(value) if isinstance(value, tuple) else value
    return out
