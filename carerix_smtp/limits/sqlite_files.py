"""The SQLite ledger's files on disk: created and checked without following symlinks,
and every failure turned into one error that names the file.

``STATE_DIR/ledger.sqlite3`` and its siblings (``-wal``, ``-shm``, ``-journal``;
:data:`SIBLINGS`) are never used through a symbolic link: whoever may write the
state dir could otherwise make cxsmtp (run by cron, perhaps as root) create or
overwrite any file it can reach.  SQLite opens its files by name and follows
symlinks, so :func:`prepare_ledger_file` creates or opens the ledger with
``O_NOFOLLOW`` and looks at the siblings with ``lstat`` before SQLite does;
:func:`refuse_symlinks` repeats the sibling check once SQLite has opened them.

What remains (see :func:`prepare_ledger_file`) needs write access to the state
dir between those checks, and cxsmtp creates that dir 0700.

:func:`ledger_error` maps SQLite's errors: a damaged file is a
:class:`~carerix_smtp.errors.LedgerCorruptError` that says how to repair it, a
full disk or an I/O error a :class:`~carerix_smtp.errors.StorageError` (exit 75).
"""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
from pathlib import Path

from carerix_smtp.errors import (
    ExitCode,
    LedgerBusyError,
    LedgerCorruptError,
    StateError,
    StorageError,
    SymlinkRefusedError,
    storage_exit_code,
)

__all__ = [
    "SIBLINGS",
    "corrupt_error",
    "is_damaged",
    "ledger_error",
    "prepare_ledger_file",
    "refuse_symlinks",
    "sibling",
]

SIBLINGS = ("-wal", "-shm", "-journal")

# SQLite's primary result codes (stable C API values; typeshed lacks the constants)
_BUSY = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED
_READONLY, _IOERR, _CORRUPTED, _FULL, _CANTOPEN, _NOTADB = 8, 10, 11, 13, 14, 26


def sibling(path: Path, suffix: str) -> Path:
    """``ledger.sqlite3-wal`` and so on: SQLite's name for a file that goes with ``path``."""
    return path.with_name(path.name + suffix)


def symlink_error(path: Path) -> SymlinkRefusedError:
    return SymlinkRefusedError(
        f"refusing to use {path}: it is a symbolic link, and cxsmtp never opens the rate "
        "ledger's files through one; replace it with the real file or remove it",
        errno=errno.ELOOP,
    )


def refuse_symlinks(path: Path) -> None:
    """Raise :class:`SymlinkRefusedError` if ``path`` or one of its SQLite siblings is a
    symlink, :class:`StateError` if one is there but not a regular file."""
    for name in (path, *(sibling(path, s) for s in SIBLINGS)):
        try:
            mode = os.lstat(name).st_mode
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise os_error(exc, "check the rate ledger file", name) from None
        if stat.S_ISLNK(mode):
            raise symlink_error(name)
        if not stat.S_ISREG(mode):
            raise StateError(f"{name}: not a regular file; the rate ledger cannot use it")


def prepare_ledger_file(path: Path) -> None:
    """Create the state dir (0700) and the ledger file (0600) if missing, never through a
    symlink, and check its siblings, so that SQLite then opens what we checked.

    The residual race: SQLite opens the files by name after this returns.  Someone
    who can write the state dir could swap in a symlink in between (and
    :func:`refuse_symlinks` after the open would only see it if it stays).  The
    state dir is created 0700, so that is its owner or root -- who can already
    write the files directly.  The directories above the state dir are trusted
    as its owner chose them (they may be symlinks).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise os_error(exc, "create the state dir", path.parent) from None
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)  # 0600: sqlite would use 0644
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK) and os.path.islink(path):
            raise symlink_error(path) from None
        raise os_error(exc, "create the rate ledger", path) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StateError(f"{path}: not a regular file; the rate ledger cannot use it")
    finally:
        os.close(fd)
    refuse_symlinks(path)


def os_error(exc: OSError, what: str, path: Path) -> StateError | StorageError:
    """``cannot <what> <path>: <reason>``: a full disk or an I/O error is a StorageError
    (exit 75, a later run may succeed), anything else a StateError (73)."""
    if storage_exit_code(exc.errno) is ExitCode.TEMPFAIL:
        return StorageError.from_os_error(exc, what, path)
    return StateError(
        f"cannot {what} {path}: {exc.strerror or exc}",
        hint="check --state-dir / CXSMTP_STATE_DIR and its permissions",
    )


def corrupt_error(path: Path, reason: str) -> LedgerCorruptError:
    return LedgerCorruptError(
        f"the rate ledger {path} is damaged ({reason}); run `cxsmtp doctor SPOOL...` "
        "to move it aside and rebuild the counts from the spools' delivery logs"
    )


def primary_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF  # extended codes: the low byte


def is_damaged(exc: sqlite3.Error) -> bool:
    """SQLite found the file damaged or not a database at all."""
    text = str(exc)
    return (
        primary_code(exc) in (_CORRUPTED, _NOTADB)
        or "malformed" in text
        or "not a database" in text
    )


def ledger_error(exc: sqlite3.Error, path: Path, busy_timeout: float) -> StateError | StorageError:
    """The cxsmtp error for an SQLite error on the ledger at ``path``."""
    text = str(exc)
    primary = primary_code(exc)
    if primary in _BUSY or (primary is None and ("locked" in text or "busy" in text)):
        return LedgerBusyError(
            f"{path}: the rate ledger stayed busy for {busy_timeout:g} s "
            "(other cxsmtp processes are using it); try again"
        )
    if is_damaged(exc):
        return corrupt_error(path, text)
    if primary == _FULL:
        return StorageError(
            f"cannot write the rate ledger {path}: {os.strerror(errno.ENOSPC)}",
            errno=errno.ENOSPC,
        )
    if primary == _IOERR:
        return StorageError(
            f"cannot read or write the rate ledger {path}: {os.strerror(errno.EIO)} ({text})",
            errno=errno.EIO,
        )
    if primary in (_CANTOPEN, _READONLY):
        return StateError(
            f"{path}: cannot open or write the rate ledger ({text})",
            hint="check --state-dir / CXSMTP_STATE_DIR and its permissions",
        )
    return StateError(f"{path}: rate ledger: {text}")
