"""One error hierarchy for cxsmtp.

Every message is ready for the user: it names the file, key, server or
host:port involved and says what is accepted.  The CLI turns a
:class:`CxsmtpError` into ``cxsmtp: error: <message>`` on stderr and exits
with :attr:`CxsmtpError.exit_code`; nothing else in the package prints.
"""

from __future__ import annotations

import errno as errnos
from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes, sysexits(3) values as sendmail and msmtp use."""

    OK = 0
    USAGE = 64  # EX_USAGE: bad command line
    DATAERR = 65  # EX_DATAERR: some messages failed permanently
    NOINPUT = 66  # EX_NOINPUT: input file missing or unreadable
    NOHOST = 68  # EX_NOHOST: the server's name does not resolve
    UNAVAILABLE = 69  # EX_UNAVAILABLE: server unreachable, a test did not pass
    SOFTWARE = 70  # EX_SOFTWARE: internal error (a bug)
    CANTCREAT = 73  # EX_CANTCREAT: cannot write an output file
    IOERR = 74  # EX_IOERR
    TEMPFAIL = 75  # EX_TEMPFAIL: deferred, server unreachable, interrupted
    PROTOCOL = 76  # EX_PROTOCOL: TLS could not be set up
    NOPERM = 77  # EX_NOPERM: authentication refused
    CONFIG = 78  # EX_CONFIG: configuration error


class CxsmtpError(Exception):
    """Base of every error cxsmtp raises on purpose."""

    exit_code: ExitCode = ExitCode.SOFTWARE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(CxsmtpError):
    """A command-line value is wrong (exit 64)."""

    exit_code = ExitCode.USAGE


class HostSyntaxError(UsageError, ValueError):
    """A HOST string does not follow the accepted forms."""


class ConfigError(CxsmtpError):
    """The configuration file or an entry in it is wrong (exit 78)."""

    exit_code = ExitCode.CONFIG


class UnknownServerError(ConfigError, KeyError):
    """A server name that is not in the configuration."""

    def __str__(self) -> str:  # KeyError would add quotes
        return self.message


class SecretError(ConfigError):
    """No password could be found, stored or removed (exit 78)."""


class KeyringUnavailableError(SecretError):
    """No usable keyring backend (fail/null backend, locked, hanging)."""


class SpoolError(ConfigError):
    """The spool directory is missing, not a directory, or not writable."""


class NoSpoolError(ConfigError):
    """No SPOOL argument, no CXSMTP_SPOOL and no ``spool`` setting (exit 78)."""


class SpoolBusyError(CxsmtpError):
    """The spool is being changed by another run right now (exit 75)."""

    exit_code = ExitCode.TEMPFAIL


class StateError(CxsmtpError):
    """The state dir (rate ledger) cannot be opened, read or written (exit 73)."""

    exit_code = ExitCode.CANTCREAT


class LedgerBusyError(StateError):
    """Other processes held the ledger longer than the busy timeout (exit 75)."""

    exit_code = ExitCode.TEMPFAIL


class LedgerUnavailableError(StateError):
    """The shared ledger's database (PostgreSQL) cannot be reached or failed mid-run: the
    run sends nothing more (fail closed; exit 75).  The message names host:port, never
    the password."""

    exit_code = ExitCode.TEMPFAIL


class LedgerSchemaError(StateError):
    """The shared ledger's database has no cxsmtp schema (run ``cxsmtp ledger init URL``)
    or one newer than this cxsmtp knows (exit 78)."""

    exit_code = ExitCode.CONFIG


class GrantExceededError(StateError):
    """More messages were confirmed than a batch grant allowed (a bug in the caller)."""

    exit_code = ExitCode.SOFTWARE


class StorageError(CxsmtpError):
    """A file or directory of the spool or the state dir could not be read or written:
    the disk is full, an I/O error, a permission, a symlink where none may be.

    The message names the path and the operating system's reason.  The exit code
    says whether trying again later may help (75: ENOSPC, EDQUOT, EIO and other
    passing conditions), permission is missing (77), or something else failed (74).
    """

    def __init__(self, message: str, *, errno: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.errno = errno

    @classmethod
    def from_os_error(cls, exc: OSError, what: str, path: object = None) -> StorageError:
        """``cxsmtp: error: cannot <what> <path>: <strerror>`` from an OSError."""
        where = path if path is not None else exc.filename
        reason = exc.strerror or str(exc)
        text = (
            f"cannot {what} {where}: {reason}" if where is not None else f"cannot {what}: {reason}"
        )
        return cls(text, errno=exc.errno)

    @property
    def exit_code(self) -> ExitCode:  # type: ignore[override]
        return storage_exit_code(self.errno)


def storage_exit_code(err: int | None) -> ExitCode:
    """The exit code for an OSError's errno: 75 where a later run may succeed."""
    if err in _RETRY_LATER:
        return ExitCode.TEMPFAIL
    if err in (errnos.EACCES, errnos.EPERM):
        return ExitCode.NOPERM
    return ExitCode.IOERR


# Conditions that may be gone by the next run: a full disk or quota, a passing I/O fault.
_RETRY_LATER = frozenset(
    getattr(errnos, name)
    for name in ("ENOSPC", "EDQUOT", "EIO", "EAGAIN", "EBUSY", "ENOMEM", "EINTR", "ETIMEDOUT")
    if hasattr(errnos, name)
)


class SymlinkRefusedError(StorageError):
    """A spool or state-dir path is a symbolic link where cxsmtp only accepts a real
    directory or file (exit 78): it never moves or creates files through one."""

    @property
    def exit_code(self) -> ExitCode:  # type: ignore[override]
        return ExitCode.CONFIG


class LedgerCorruptError(StateError):
    """The rate ledger's database is damaged; ``cxsmtp doctor`` moves it aside and
    rebuilds the counts from the spools' delivery logs (exit 73)."""


class SinkStartError(CxsmtpError):
    """``cxsmtp sink`` cannot listen, or cannot create its output directory or files."""

    exit_code = ExitCode.UNAVAILABLE


class InputError(CxsmtpError):
    """An input file (message to enqueue, CA file…) is missing or invalid (exit 66)."""

    exit_code = ExitCode.NOINPUT


class MessageError(CxsmtpError):
    """A message cannot be sent as it is: no sender, no recipients, unparseable…"""

    exit_code = ExitCode.DATAERR


class DkimKeyError(ConfigError):
    """A DKIM private key cannot be used: unreadable, wider than 0600, not a key (78)."""


class DkimSignError(CxsmtpError):
    """A message cannot be DKIM-signed (its key or a header the signer rejects); it
    is deferred, never sent unsigned (exit 75)."""

    exit_code = ExitCode.TEMPFAIL


class SmtpError(CxsmtpError):
    """Something went wrong talking to an SMTP server.

    Carries where (``host``, ``port``, ``phase``) and, when the server replied,
    what it said (``code``, ``enhanced``, ``text``).
    """

    exit_code = ExitCode.TEMPFAIL

    def __init__(
        self,
        message: str,
        *,
        host: str = "",
        port: int = 0,
        phase: str = "",
        code: int | None = None,
        enhanced: str | None = None,
        text: str = "",
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.host = host
        self.port = port
        self.phase = phase
        self.code = code
        self.enhanced = enhanced
        self.text = text

    @property
    def permanent(self) -> bool:
        return self.code is not None and 500 <= self.code < 600


class SmtpConnectError(SmtpError, ConnectionError):
    """Name not found, connection refused, or connection lost."""


class SmtpTimeoutError(SmtpError, TimeoutError):
    """The server did not answer within the phase's timeout."""


class SmtpTLSError(SmtpError):
    """TLS could not be set up: handshake failed, certificate refused, STARTTLS missing."""


class SmtpAuthError(SmtpError):
    """The server refused the credentials or requires another mechanism (exit 77)."""

    exit_code = ExitCode.NOPERM


class SmtpReplyError(SmtpError):
    """The server answered a command with an error reply (4xx or 5xx)."""

    @property
    def exit_code(self) -> ExitCode:  # type: ignore[override]
        return ExitCode.DATAERR if self.permanent else ExitCode.TEMPFAIL


class SmtpPolicyError(SmtpError):
    """cxsmtp refused to go on: e.g. a password would travel unencrypted."""

    exit_code = ExitCode.CONFIG


class Interrupted(CxsmtpError):
    """SIGTERM or SIGINT arrived; the run stopped cleanly (exit 75)."""

    exit_code = ExitCode.TEMPFAIL
