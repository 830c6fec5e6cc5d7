"""What the sink keeps of a message: the :class:`Received` record and the ``.eml``
file, written atomically.

Stored files
    ``<UTC time>-<sequence>-<random>.eml``, written to a hidden temporary file in
    the same directory, fsynced, renamed, and the directory fsynced.  The file
    starts with the envelope as header lines, CRLF terminated::

        X-Cxsmtp-Envelope-From: sender@example.com    ("<>" for the null sender)
        X-Cxsmtp-Envelope-To: first@example.com       (one line per recipient, in
        X-Cxsmtp-Envelope-To: second@example.com       RCPT order: no quoting issues)

    followed by exactly the bytes of DATA as received: dot-unstuffed (RFC 5321
    §4.5.2), line endings untouched, 8-bit and UTF-8 bytes untouched (8BITMIME
    and SMTPUTF8 are offered).  ``Received.data`` holds the same bytes without
    the envelope lines.  Like many servers, the sink refuses a message with a
    line over 1,000 octets (RFC 5321 §4.5.3.1.6): "500 5.5.2 Line too long".
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

ENVELOPE_FROM = b"X-Cxsmtp-Envelope-From"
ENVELOPE_TO = b"X-Cxsmtp-Envelope-To"  # what a spool takes RCPT TO from (spool/envelope.py)


@dataclass(frozen=True)
class Received:
    """One message the sink accepted."""

    time: float  # time.time() at end of data
    mail_from: str  # "" for the null sender
    rcpt_tos: tuple[str, ...]
    data: bytes = field(repr=False)  # DATA as received (dot-unstuffed); b"" without keep_data
    path: Path | None
    session_peer: str  # "127.0.0.1:54321"
    mail_options: tuple[str, ...]  # e.g. ("SIZE=1234", "BODY=8BITMIME", "SMTPUTF8")
    size: int  # len of DATA, also when keep_data is off
    tls: bool
    auth_user: str | None


@dataclass(frozen=True)
class SinkStats:
    messages: int
    connections_total: int
    connections_max: int


def save_eml(
    out_dir: Path, record: Received, data: bytes, sequence: int, *, fsync: bool
) -> Received:
    """Write the message to ``out_dir`` (see the module docstring); the record with its path."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(record.time))
    micro = int((record.time % 1) * 1_000_000)
    name = f"{stamp}.{micro:06d}Z-{sequence:06d}-{secrets.token_hex(3)}.eml"
    path = out_dir / name
    write_atomic(
        path,
        [envelope_header(record.mail_from, record.rcpt_tos), data],
        fsync=fsync,
    )
    return replace(record, path=path)


def envelope_header(mail_from: str, rcpt_tos: Sequence[str]) -> bytes:
    """The ``X-Cxsmtp-Envelope-*`` lines a stored file starts with."""

    def clean(address: str) -> bytes:
        # Addresses arrive as UTF-8 with surrogateescape (aiosmtpd); keep their bytes,
        # but never let a CR or LF start a new header.
        raw = address.encode("utf-8", "surrogateescape")
        return raw.replace(b"\r", b"").replace(b"\n", b"")

    lines = [ENVELOPE_FROM + b": " + (clean(mail_from) or b"<>") + b"\r\n"]
    lines += [ENVELOPE_TO + b": " + clean(rcpt) + b"\r\n" for rcpt in rcpt_tos]
    return b"".join(lines)


def write_atomic(path: Path, chunks: bytes | Sequence[bytes], *, fsync: bool) -> None:
    """Temp file in the same directory, fsync, rename, fsync the directory."""
    parts = [chunks] if isinstance(chunks, bytes) else list(chunks)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            for part in parts:
                handle.write(part)
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
