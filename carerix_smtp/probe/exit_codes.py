"""The exit code of a failed ``cxsmtp test``, and ``PhaseFailure``: the failure of
one of the probe's own checks (SIZE, SPF, DKIM, DMARC), which carries its exit code.

The DNS checks map as an SPF fail does: a record that is missing, wrong or would make
receivers refuse the mail (DKIM missing/another key/revoked/unparseable; DMARC fail
under p=quarantine or p=reject; an unusable DMARC record) is 65 (DATAERR); no DNS
answer is 75 (TEMPFAIL); an unusable DKIM private key keeps its own code (78).
Advice only (no DKIM key, no DMARC record, a DMARC fail under p=none) is exit 0."""

from __future__ import annotations

from carerix_smtp.errors import (
    CxsmtpError,
    ExitCode,
    SmtpAuthError,
    SmtpConnectError,
    SmtpPolicyError,
    SmtpReplyError,
    SmtpTimeoutError,
    SmtpTLSError,
)
from carerix_smtp.smtp.phases import PHASE_AUTH
from carerix_smtp.smtp.resolve import ResolveError

# Exit codes of `cxsmtp test` (sysexits).  68 and 76 are not (yet) in ExitCode.
EXIT_NOHOST = ExitCode.NOHOST
EXIT_PROTOCOL = ExitCode.PROTOCOL


class PhaseFailure(CxsmtpError):
    """A check of the probe itself (SIZE, SPF, DKIM, DMARC) failed."""

    def __init__(self, message: str, phase: str, code: ExitCode, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.phase = phase
        self.code = code


def exit_code_for(error: BaseException) -> int:
    """The exit code of a failed `cxsmtp test` (listed in cli/test_cmd.py's docstring)."""
    if isinstance(error, PhaseFailure):
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
