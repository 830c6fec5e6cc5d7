"""An ``.eml`` file as cxsmtp sends it: envelope, transmitted bytes, capabilities needed.

Only the header block is parsed: it is split into fields here, and only the
fields the envelope needs are read (a strict fast grammar for plain address
lists, ``email.headerregistry`` with ``policy.default`` for anything else; see
``carerix_smtp/spool/envelope.py``; the header block is split into fields in
``carerix_smtp/spool/headers.py``).  The body stays the original bytes and is never decoded, so
a 50 MB message is held once in memory plus, at most, one copy with the changed
header block in front.  What changes in the transmitted bytes:

- ``Bcc`` is removed (its addresses still get the message: they are recipients);
- ``Return-Path`` is removed: RFC 5321 §4.4, "a message-originating SMTP system
  SHOULD NOT send a message that already contains a Return-path header field";
- ``X-Cxsmtp-Envelope-To`` is removed (the envelope, when sendmail wrote one);
- a leading mbox ``From `` line, if any, is dropped (it is not RFC 5322).

``complete_headers`` adds ``Message-ID`` and ``Date`` when missing (RFC 5322
§3.6.1 requires Date; §3.6.4 says every message SHOULD have a Message-ID) as new
header lines; the rest of the file is kept byte for byte.  Line endings and
dot-stuffing are the transport's business (RFC 5321 §4.5.2).

Envelope (SPEC §3): MAIL FROM from Return-Path, else Sender, else the first From
address; RCPT TO from X-Cxsmtp-Envelope-To when present, else To + Cc + Bcc,
deduplicated case-insensitively on the domain, keeping the local part's case
(RFC 5321 §2.4: local parts may be case sensitive) and the first spelling seen.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import format_datetime, make_msgid
from operator import attrgetter
from pathlib import Path
from typing import Any, BinaryIO

from carerix_smtp.errors import MessageError
from carerix_smtp.spool.envelope import (
    DOMAIN,
    ENVELOPE_TO,
    envelope_recipients,
    envelope_sender,
    first_message_id,
    index_fields,
)
from carerix_smtp.spool.headers import HeaderField, head_end, is_mbox_line, split_fields

# Header fields removed from what is transmitted (see the module docstring).
STRIPPED_FIELDS = frozenset({"bcc", "return-path", ENVELOPE_TO.lower()})
_field_name = attrgetter("name")
_FALLBACK_ID_DOMAIN = "cxsmtp.invalid"
CHUNK = 1 << 20  # bytes read at a time from a message file
# A file up to this size is read whole, in one system call, and kept: reading its
# header block and then its body again would cost more than the memory.  The body
# of anything bigger stays on disk and is streamed when sent.
SMALL_FILE = 1 << 16
MAX_HEAD = 8 << 20  # a header block larger than this is not a message


@dataclass(frozen=True, eq=False)
class Message:
    """A parsed message: the header block as bytes; the body in ``raw`` or on disk.

    ``raw`` is the whole message when it was parsed from bytes (``parse_message``)
    or read from a file of at most SMALL_FILE bytes; for a bigger file
    ``read_message`` leaves it None and keeps ``path``: the body is streamed from
    the file when sent and never held in memory.
    """

    head: bytes  # everything before the empty line that ends the header block
    body_start: int  # offset of that empty line (or the end, if there is no body)
    size: int  # of the whole file
    raw: bytes | None
    path: Path | None
    fields: tuple[HeaderField, ...]
    header_start: int  # 0, or the length of a leading mbox "From " line
    mail_from: str  # "" for the null reverse-path "<>"
    recipients: tuple[str, ...]
    from_address: str | None
    message_id: str | None
    has_date: bool
    needs_smtputf8: bool  # a non-ASCII envelope address (RFC 6531)
    header_utf8: bool  # raw UTF-8 in the header block (RFC 6532; SMTPUTF8 if offered)
    needs_8bitmime: bool  # any byte >= 0x80 in the message (RFC 6152)
    line_ending: bytes

    @property
    def complete(self) -> bool:
        """True when Message-ID and Date are both present."""
        return self.message_id is not None and self.has_date

    @property
    def changes_on_wire(self) -> bool:
        """True when the transmitted header block differs from the file's."""
        return self.header_start != 0 or any(
            map(STRIPPED_FIELDS.__contains__, map(_field_name, self.fields))
        )

    def transmitted_head(self) -> bytes:
        """The header block as sent: without Bcc, Return-Path and an mbox From line."""
        if not self.changes_on_wire:
            return self.head
        return b"".join(f.raw for f in self.fields if f.name not in STRIPPED_FIELDS)

    def transmitted(self) -> bytes:
        """The whole message as sent, in memory (small messages, and those prepared
        ahead: up to smtp.wire.PREPARED_MAX).  The body of a file-backed message is
        read in one call, not a chunk at a time through ``open_data``."""
        if self.raw is not None and not self.changes_on_wire:
            return self.raw
        if self.raw is not None:
            return b"".join((self.transmitted_head(), memoryview(self.raw)[self.body_start :]))
        assert self.path is not None
        with open(self.path, "rb", buffering=0) as handle:
            handle.seek(self.body_start)
            return self.transmitted_head() + handle.readall()

    def open_data(self) -> BinaryIO:
        """A seekable stream of the message as sent: transmitted head, then the body
        bytes from ``raw`` or straight from the file.  Close it when done."""
        head = self.transmitted_head()
        if self.raw is not None:
            return io.BytesIO(b"".join((head, memoryview(self.raw)[self.body_start :])))
        assert self.path is not None
        handle = open(self.path, "rb")  # noqa: SIM115 - owned by the stream
        return io.BufferedReader(_HeadAndFile(head, handle, self.body_start), CHUNK)

    def completed_head(self, *, now: datetime | None = None) -> bytes | None:
        """The file's head with Message-ID and Date added; None when both are there.

        The new fields go at the end of the header block with the file's own line
        ending; nothing else changes.
        """
        if self.complete:
            return None
        eol = self.line_ending
        added = b""
        if self.message_id is None:
            added += b"Message-ID: " + make_message_id(self.from_address).encode("ascii") + eol
        if not self.has_date:
            when = now or datetime.now(timezone.utc).astimezone()
            added += b"Date: " + format_datetime(when).encode("ascii") + eol
        return b"".join((self.head[: self.header_start], *(f.raw for f in self.fields), added))


class _HeadAndFile(io.RawIOBase):
    """``head`` followed by ``handle`` from ``offset`` on, as one seekable raw stream."""

    def __init__(self, head: bytes, handle: BinaryIO, offset: int) -> None:
        super().__init__()
        self._head = head
        self._handle = handle
        self._offset = offset
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            pos += self._pos
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("only SEEK_SET and SEEK_CUR")
        self._pos = max(0, pos)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        head_len = len(self._head)
        if self._pos < head_len:
            n = min(len(view), head_len - self._pos)
            view[:n] = self._head[self._pos : self._pos + n]
            self._pos += n
            return n
        self._handle.seek(self._offset + self._pos - head_len)
        n = self._handle.readinto(view)  # type: ignore[attr-defined]
        self._pos += n or 0
        return n or 0

    def close(self) -> None:
        self._handle.close()
        super().close()


def read_message(path: Path, *, name: str | None = None) -> Message:
    """Parse the header block of the file at ``path``; nothing is decoded.

    A file of at most SMALL_FILE bytes is read whole in one system call and kept
    (``raw``).  Of a bigger one only the header block is read (at most MAX_HEAD
    bytes) and the rest scanned in chunks for 8-bit bytes: its body stays on disk.
    Unreadable or unparseable files raise MessageError.
    """
    name = name or path.name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if size <= SMALL_FILE:
                data = os.read(fd, size + 1)  # one read: the whole file (+1: it grew)
                if len(data) <= SMALL_FILE:
                    end = head_end(data)
                    body_start = len(data) if end is None else end
                    return _parse(
                        data[:body_start],
                        body_start,
                        len(data),
                        data,
                        path,
                        name,
                        not data.isascii(),
                    )
            with open(fd, "rb", buffering=0, closefd=False) as handle:
                head, body_start, eight_bit = _read_head(handle, size, name)
        finally:
            os.close(fd)
    except OSError as exc:
        raise MessageError(f"{name}: cannot read: {exc.strerror or exc}") from None
    return _parse(head[:body_start], body_start, size, None, path, name, eight_bit)


def _read_head(handle: BinaryIO, size: int, name: str) -> tuple[bytes, int, bool]:
    """(bytes read, the header block's end, 8-bit seen) of a big file: the header
    block is read (at most MAX_HEAD bytes), the rest scanned in chunks for bytes
    >= 0x80, nothing kept."""
    handle.seek(0)
    head = handle.read(min(size, CHUNK)) if size else b""
    while True:
        end = head_end(head)
        if end is not None or len(head) >= size:
            break
        if len(head) >= MAX_HEAD:
            raise MessageError(
                f"{name}: no end of the header block in the first {MAX_HEAD} bytes "
                "(not an RFC 5322 message)"
            )
        more = handle.read(CHUNK)
        if not more:
            break
        head += more
    body_start = end if end is not None else len(head)
    eight_bit = not head.isascii()
    if not eight_bit and len(head) < size:
        while chunk := handle.read(CHUNK):
            if not chunk.isascii():
                eight_bit = True
                break
    return head, body_start, eight_bit


def parse_message(raw: bytes, *, name: str = "message") -> Message:
    """Parse the header block of ``raw`` (the whole message, in memory).

    Raises MessageError (naming ``name``) for an empty file, a header block that is
    not RFC 5322, no sender, no recipients, or an address that cannot be used.
    """
    end = head_end(raw)
    body_start = len(raw) if end is None else end
    return _parse(raw[:body_start], body_start, len(raw), raw, None, name, not raw.isascii())


def complete_headers(raw: bytes, *, name: str = "message", now: datetime | None = None) -> bytes:
    """``raw`` with Message-ID and Date added when missing; ``raw`` itself when complete."""
    message = parse_message(raw, name=name)
    head = message.completed_head(now=now)
    if head is None:
        return raw
    return b"".join((head, memoryview(raw)[message.body_start :]))


def _parse(
    head: bytes,
    body_start: int,
    size: int,
    raw: bytes | None,
    path: Path | None,
    name: str,
    eight_bit: bool,
) -> Message:
    if size == 0:
        raise MessageError(f"{name}: the file is empty (0 bytes)")
    header_start = 0
    if is_mbox_line(head):  # mbox separator line, not part of the message
        newline = head.find(b"\n")
        header_start = len(head) if newline < 0 else newline + 1
    header_block = head[header_start:]
    fields = split_fields(header_block, name)
    if not fields:
        raise MessageError(f"{name}: no header fields (not an RFC 5322 message)")
    line_ending = b"\r\n" if fields[0].raw.endswith(b"\r\n") else b"\n"
    if not fields[-1].raw.endswith(b"\n"):  # headers only, no final line break
        last = fields[-1]
        fields[-1] = HeaderField(last.name, last.raw + line_ending)

    indexed = index_fields(fields)
    mail_from, from_address = envelope_sender(indexed, name)
    recipients = envelope_recipients(indexed, name)
    envelope = [mail_from, *recipients]
    return Message(
        head=head,
        body_start=body_start,
        size=size,
        raw=raw,
        path=path,
        fields=tuple(fields),
        header_start=header_start,
        mail_from=mail_from,
        recipients=tuple(recipients),
        from_address=from_address,
        message_id=first_message_id(indexed.get("message-id"), name),
        has_date="date" in indexed,
        needs_smtputf8=not "".join(envelope).isascii(),
        header_utf8=not header_block.isascii(),
        needs_8bitmime=eight_bit,
        line_ending=line_ending,
    )


def make_message_id(sender: str | None) -> str:
    """``<unique@sender-domain>``; never calls getfqdn() (a DNS lookup)."""
    domain = sender.rpartition("@")[2].strip("[]").lower() if sender else ""
    if not domain or not domain.isascii() or not DOMAIN.fullmatch(domain):
        domain = _FALLBACK_ID_DOMAIN
    return make_msgid(domain=domain)
