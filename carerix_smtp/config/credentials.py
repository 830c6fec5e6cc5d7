"""The credentials file: passwords kept beside the configuration when no keyring works.

A host without a desktop session (where cron runs) has no usable keyring, so,
as Poetry does, a password can be kept in ``credentials.toml`` next to the
config file instead::

    [passwords]
    xs4all = "s3cret"

It is stored unencrypted, so it is only ever written atomically (temp file in
the same directory, fsync, rename) with mode 0600, and it is refused — read or
write — when it is a symlink, its mode is wider than 0600 or another user owns
it: a password that others could have read or replaced is not used.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import tomli_w

from carerix_smtp.config.file import atomic_write
from carerix_smtp.errors import SecretError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

FILE_NAME = "credentials.toml"
_HEADER = (
    b"# cxsmtp passwords, stored UNENCRYPTED (no usable keyring).  Keep this file mode 0600.\n"
    b"# Prefer the keyring, a password_command or CXSMTP_PASSWORD_<NAME>; see the README.\n"
)


def credentials_path(config_path: Path) -> Path:
    """``credentials.toml`` in the configuration file's directory."""
    return config_path.with_name(FILE_NAME)


def _read(path: Path) -> dict[str, str]:
    """The stored passwords; {} when there is no file.  Refuses a file others can reach."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        if os.path.islink(path):
            raise SecretError(
                f"{path}: is a symlink; cxsmtp reads passwords only from a regular file"
            ) from None
        raise SecretError(f"{path}: cannot read: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as handle:
        _check_private(path, os.fstat(handle.fileno()))
        raw = handle.read()
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        raise SecretError(
            f'{path}: not valid TOML; expected [passwords] with NAME = "PASSWORD" lines'
        ) from None
    table = data.get("passwords", {})
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise SecretError(f'{path}: [passwords] must hold NAME = "PASSWORD" lines (strings)')
    return dict(table)


def _check_private(path: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise SecretError(f"{path}: not a regular file")
    if st.st_uid != os.getuid():
        raise SecretError(
            f"{path}: owned by uid {st.st_uid}, not by you (uid {os.getuid()}); cxsmtp does "
            "not use passwords from a file another user controls"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise SecretError(
            f"{path}: mode {mode:04o} is wider than 0600, so others may have read the passwords "
            f"in it; run 'chmod 600 {path}' (and change those passwords)"
        )


def _write(path: Path, passwords: dict[str, str]) -> None:
    if not passwords:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise SecretError(f"{path}: cannot remove: {exc.strerror or exc}") from None
        return
    body = tomli_w.dumps({"passwords": dict(sorted(passwords.items()))}).encode("utf-8")
    atomic_write(path, _HEADER + body, mode=0o600)


def read_password(path: Path, server: str) -> str | None:
    return _read(path).get(server) or None


def write_password(path: Path, server: str, password: str) -> None:
    """Add or replace ``server``'s password (refused when the file is not private)."""
    passwords = _read(path)
    passwords[server] = password
    _write(path, passwords)


def delete_password(path: Path, server: str) -> bool:
    """Remove ``server``'s password; False when the file holds none for it."""
    passwords = _read(path)
    if passwords.pop(server, None) is None:
        return False
    _write(path, passwords)
    return True
