"""An ``.eml`` file as cxsmtp sends it: envelope, transmitted bytes, capabilities needed.

Only the header block is parsed: it is split into fields here, and only the
fields the envelope needs are read (a strict fast grammar for plain address
lists, ``email.headerregistry`` with ``policy.default`` for anything else; see
"envelope" below).  The body stays the original bytes and is never decoded, so
a 50 MB message is held once in memory plus, at most, one copy with the changed
header block in front.  What changes in the transmitted bytes:

- ``Bcc`` is removed (its addresses still get the message: they are recipients);
- ``Return-Path`` is removed: RFC 5321 §4.4, "a message-originating SMTP system
  SHOULD NOT send a message that already contains a Return-path header field";
- a leading mbox ``From `` line, if any, is dropped (it is not RFC 5322).

``complete_headers`` adds ``Message-ID`` and ``Date`` when missing (RFC 5322
§3.6.1 requires Date; §3.6.4 says every message SHOULD have a Message-ID) as new
header lines; the rest of the file is kept byte for byte.  Line endings and
dot-stuffing are the transport's business (RFC 5321 §4.5.2).

Envelope (SPEC §3): MAIL FROM from Return-Path, else Sender, else the first From
address; RCPT TO from To + Cc + Bcc, deduplicated case-insensitively on the
domain, keeping the local part's case (RFC 5321 §2.4: local parts may be case
sensitive) and the first spelling seen.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from email import policy
from email.errors import InvalidHeaderDefect
from email.headerregistry import Address
from email.utils import format_datetime, getaddresses, make_msgid
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from carerix_smtp.errors import MessageError

# Header fields removed from what is transmitted (see the module docstring).
STRIPPED_FIELDS = frozenset({"bcc", "return-path"})
RECIPIENT_FIELDS = ("To", "Cc", "Bcc")

# RFC 5322 §2.2: a field name is printable US-ASCII except ":"; §4.5.3 (obsolete
# syntax) allows white space before the colon.
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*:")
# A domain: dot-atom text without specials, or an address literal "[...]" (RFC 5321 §4.1.3).
_DOMAIN = re.compile(r"[^\s<>()\[\],;:\\\"@]+|\[[^\[\]\\\s]+\]")
_FALLBACK_ID_DOMAIN = "cxsmtp.invalid"
CHUNK = 1 << 20  # bytes read at a time from a message file
# A file up to this size is read whole, in one system call, and kept: reading its
# header block and then its body again would cost more than the memory.  The body
# of anything bigger stays on disk and is streamed when sent.
SMALL_FILE = 1 << 16
MAX_HEAD = 8 << 20  # a header block larger than this is not a message


class HeaderField(NamedTuple):
    """One header field as it is in the file: its lower-cased name and its raw lines.
    (A named tuple: a message has a few dozen, made at C speed.)"""

    name: str
    raw: bytes


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
        return self.header_start != 0 or any(f.name in STRIPPED_FIELDS for f in self.fields)

    def transmitted_head(self) -> bytes:
        """The header block as sent: without Bcc, Return-Path and an mbox From line."""
        if not self.changes_on_wire:
            return self.head
        return b"".join(f.raw for f in self.fields if f.name not in STRIPPED_FIELDS)

    def transmitted(self) -> bytes:
        """The whole message as sent, in memory (tests, small messages)."""
        if self.raw is not None and not self.changes_on_wire:
            return self.raw
        with self.open_data() as stream:
            return stream.read()

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
                    end = _head_end(data)
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
        end = _head_end(head)
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
    end = _head_end(raw)
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
    if _is_mbox_line(head):  # mbox separator line, not part of the message
        newline = head.find(b"\n")
        header_start = len(head) if newline < 0 else newline + 1
    header_block = head[header_start:]
    fields = _split_fields(header_block, name)
    if not fields:
        raise MessageError(f"{name}: no header fields (not an RFC 5322 message)")
    line_ending = b"\r\n" if fields[0].raw.endswith(b"\r\n") else b"\n"
    if not fields[-1].raw.endswith(b"\n"):  # headers only, no final line break
        last = fields[-1]
        fields[-1] = HeaderField(last.name, last.raw + line_ending)

    indexed = _index_fields(fields)
    mail_from, from_address = _envelope_sender(indexed, name)
    recipients = _recipients(indexed, name)
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
        message_id=_message_id(indexed.get("message-id"), name),
        has_date="date" in indexed,
        needs_smtputf8=not all(a.isascii() for a in envelope),
        header_utf8=not header_block.isascii(),
        needs_8bitmime=eight_bit,
        line_ending=line_ending,
    )


def make_message_id(sender: str | None) -> str:
    """``<unique@sender-domain>``; never calls getfqdn() (a DNS lookup)."""
    domain = sender.rpartition("@")[2].strip("[]").lower() if sender else ""
    if not domain or not domain.isascii() or not _DOMAIN.fullmatch(domain):
        domain = _FALLBACK_ID_DOMAIN
    return make_msgid(domain=domain)


# --- header block ----------------------------------------------------------


def _head_end(data: bytes) -> int | None:
    """Offset of the empty line that ends the header block, or None if not in ``data``.

    The header block ends at the first empty line (RFC 5322 §2.1); the offset is
    just after the last header line's LF, so ``data[:offset]`` keeps it.
    """
    start = 0
    if _is_mbox_line(data):
        newline = data.find(b"\n")
        if newline < 0:
            return None
        start = newline + 1
    if data.startswith((b"\n", b"\r\n"), start):
        return start
    found = [i for i in (data.find(b"\n\n", start), data.find(b"\n\r\n", start)) if i >= 0]
    return min(found) + 1 if found else None


def _is_mbox_line(data: bytes) -> bool:
    """``From sender date`` (mbox), as opposed to a ``From :`` field (obsolete syntax)."""
    return data.startswith(b"From ") and not _FIELD_NAME.match(data, 0, 200)


# One whole field: the name, the colon, the rest of the line and its continuation
# lines (RFC 5322 §2.2.3: a line that starts with white space continues the field).
_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:[^\n]*(?:\n[ \t][^\n]*)*\n?")


def _split_fields(block: bytes, name: str) -> list[HeaderField]:
    """The header block's fields, each with its raw lines.  A block with anything
    unusual (a NUL, a bare CR, a line that is not a field) goes the slow way, line
    by line, which names the line that is wrong."""
    if b"\x00" not in block and block.count(b"\r") == block.count(b"\r\n"):
        fields: list[HeaderField] = []
        pos, end, match = 0, len(block), _FIELD.match
        while pos < end:
            found = match(block, pos)
            if found is None:
                break
            fields.append(HeaderField(found.group(1).decode("ascii").lower(), found.group(0)))
            pos = found.end()
        else:
            return fields
    return _split_lines(block, name)


def _split_lines(block: bytes, name: str) -> list[HeaderField]:
    fields: list[HeaderField] = []
    current: list[bytes] = []
    # Split at LF only: a bare CR inside a line must be seen, not taken as a line end.
    lines = [line + b"\n" for line in block.split(b"\n")]
    lines[-1] = lines[-1][:-1]
    if not lines[-1]:
        lines.pop()
    for number, line in enumerate(lines, start=1):
        content = line.rstrip(b"\r\n")
        if b"\r" in content or b"\x00" in content:
            raise MessageError(
                f"{name}: header line {number} contains a bare CR or a NUL byte "
                "(not an RFC 5322 message)"
            )
        if line[:1] in (b" ", b"\t"):
            if not current:
                raise MessageError(
                    f"{name}: header line 1 starts with white space (not an RFC 5322 message)"
                )
            current.append(line)
            continue
        if not _FIELD_NAME.match(content):
            raise MessageError(
                f"{name}: header line {number} is not a 'Name: value' field "
                "(not an RFC 5322 message)"
            )
        if current:
            fields.append(_field(current))
        current = [line]
    if current:
        fields.append(_field(current))
    return fields


def _field(lines: list[bytes]) -> HeaderField:
    first = lines[0]
    field_name = first[: first.index(b":")].strip().decode("ascii").lower()
    return HeaderField(field_name, b"".join(lines))


# --- envelope ----------------------------------------------------------------
#
# Only the fields the envelope needs are read (From, Sender, Return-Path, To, Cc,
# Bcc, Message-ID, Date), straight from the fields split above.  Most address
# fields are plain lists of "addr", "Name <addr>" or '"Name" <addr>': those match
# the strict grammar below (RFC 5322 §3.4 without the obsolete forms, groups,
# quoted local parts or CFWS inside an address; raw UTF-8 allowed, RFC 6532 §3.2)
# and cost a few microseconds.  A field the grammar does not match entirely — or
# one that is not valid UTF-8 — goes to email.headerregistry (policy.default), the
# field alone, exactly as BytesHeaderParser(policy=policy.default) would have
# parsed it: groups, comments inside addresses, quoted local parts, obsolete
# syntax and garbage keep their old treatment and error messages.  That parser
# costs ~300 us per message, which was a third of the sender's time per message.
# tests/test_message.py checks that the two paths agree.

_FIELDS_READ = frozenset({"from", "sender", "return-path", "to", "cc", "bcc", "message-id", "date"})
_NO_CTL = r"\x00-\x08\x0a-\x1f\x7f"  # control characters except HTAB (RFC 5234 CTL, WSP)
# CFWS (RFC 5322 §3.2.2) with comments that do not nest; possessive quantifiers
# everywhere, so a field that does not match fails in linear time.
_CFWS = rf"(?:[ \t]++|\((?:[^()\\{_NO_CTL}]|\\[^{_NO_CTL}])*+\))*+"
_ATEXT = r"[^\x00-\x20\x7f()<>\[\]:;@\\,.\"]"  # RFC 5322 §3.2.3, plus UTF-8 (RFC 6532)
_DOT_ATOM = rf"{_ATEXT}++(?:\.{_ATEXT}++)*+"
_ADDR_SPEC = rf"{_DOT_ATOM}@(?:{_DOT_ATOM}|\[[^\[\]\\\x00-\x20\x7f]*+\])"
_QUOTED = rf'"(?:[^"\\{_NO_CTL}]|\\[^{_NO_CTL}])*+"'
_WORD = rf'(?:[^\x00-\x20\x7f()<>\[\]:;@\\,"]++|{_QUOTED})'  # obs-phrase allows "."
_MAILBOX = re.compile(
    rf"{_CFWS}(?:(?P<bare>{_ADDR_SPEC})|(?:{_WORD}{_CFWS})*+<(?P<angle>{_ADDR_SPEC})>)"
    rf"{_CFWS}(?P<sep>,|\Z)"
)
_SIMPLE_MSGID = re.compile(r"<[A-Za-z0-9!#$%&'*+/=?^_`{|}~.@\[\]-]+>")  # RFC 5322 §3.6.4


def _index_fields(fields: Sequence[HeaderField]) -> dict[str, list[bytes]]:
    """Lower-cased name -> raw fields, in order, for the fields the envelope needs."""
    out: dict[str, list[bytes]] = {}
    for f in fields:
        if f.name in _FIELDS_READ:
            out.setdefault(f.name, []).append(f.raw)
    return out


def _value_text(raw: bytes) -> str | None:
    """A field's value unfolded (RFC 5322 §2.2.3), as text; None if not valid UTF-8."""
    try:
        text = raw.partition(b":")[2].decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text.replace("\r\n", "").replace("\n", "").strip(" \t")


def _registry_header(field: str, raw: bytes, name: str) -> Any:
    """The field as BytesHeaderParser(policy=policy.default) gave it: bytes decoded as
    ASCII with surrogateescape, value after the colon (email.policy.EmailPolicy
    header_source_parse + header_fetch_parse)."""
    value = raw.decode("ascii", "surrogateescape").partition(":")[2]
    value = value.lstrip(" \t").rstrip("\r\n")
    try:
        return policy.default.header_fetch_parse(field, value)
    except Exception:  # the parser's own bugs: see _unparseable
        raise _unparseable(field, value, name) from None


def _unparseable(field: str, value: str, name: str) -> MessageError:
    """The email package's parser crashes (IndexError, AttributeError, ...) on some
    malformed address fields; such a file is refused like any unusable message
    instead of stopping the run."""
    text = " ".join(value.split())
    shown = text if len(text) <= 80 else text[:77] + "..."
    return MessageError(f"{name}: {field}: cannot parse {shown!r} (not an RFC 5322 field)")


def _fast_addresses(value: str) -> list[str] | None:
    """The addr-specs of ``value`` when it is a plain mailbox list, else None."""
    out: list[str] = []
    pos, end = 0, len(value)
    while True:
        match = _MAILBOX.match(value, pos)
        if match is None:
            return None
        spec = match.group("bare") or match.group("angle")
        if "=?" in spec:  # the registry decodes RFC 2047 words even there
            return None
        out.append(spec)
        pos = match.end()
        if match.group("sep") != ",":
            return out
        if pos >= end:  # a trailing comma: obsolete syntax, the registry's business
            return None


def _unescape(text: str, name: str, where: str) -> str:
    """Header text as decoded by the parser (undecodable bytes as surrogates) -> str."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8")
    except UnicodeError:
        raise MessageError(f"{name}: {where}: address is not valid UTF-8") from None


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SPACE = re.compile(r"\s")


def _check_address(address: str, name: str, where: str) -> str:
    if "\r" in address or "\n" in address:
        raise MessageError(f"{name}: {where}: CR or LF inside the address {address!r}")
    if _CONTROL.search(address):
        raise MessageError(f"{name}: {where}: control character inside the address {address!r}")
    local, at, domain = address.rpartition("@")
    if not at or not local:
        raise MessageError(f"{name}: {where}: {address!r} is not an address (local@domain)")
    if not _DOMAIN.fullmatch(domain) or domain.startswith(".") or ".." in domain:
        raise MessageError(f"{name}: {where}: {address!r} has an invalid domain")
    if not local.startswith('"') and _SPACE.search(local):
        raise MessageError(f"{name}: {where}: {address!r} has white space in the local part")
    return address


def _addresses(raws: Sequence[bytes], field: str, name: str) -> list[str]:
    """The addresses of every ``field`` field (raw bytes), in order."""
    out: list[str] = []
    for raw in raws:
        text = _value_text(raw)
        if text is not None:
            if not text:
                continue
            fast = _fast_addresses(text)
            if fast is not None:
                out.extend(_check_address(spec, name, field) for spec in fast)
                continue
        value = _registry_header(field, raw, name)
        try:
            out.extend(_registry_addresses(value, field, name))
        except MessageError:
            raise
        except Exception:  # the parser's own bugs: see _unparseable
            raise _unparseable(field, str(value), name) from None
    return out


def _registry_addresses(value: Any, field: str, name: str) -> list[str]:
    """What the old parser made of a field (RFC 5322 §3.4 address-list, groups)."""
    out: list[str] = []
    addresses: tuple[Address, ...] = getattr(value, "addresses", ())
    for item in addresses:
        spec = item.addr_spec
        if not spec or spec == "<>":
            continue
        out.append(_check_address(_unescape(spec, name, field), name, field))
    if str(value).strip() and not addresses and ":" not in str(value):
        raise MessageError(f"{name}: {field}: no address in {str(value)!r}")
    invalid = [d for d in getattr(value, "defects", ()) if isinstance(d, InvalidHeaderDefect)]
    if invalid:  # the parser guessed: e.g. "r@bad domain" -> r@bad
        raise MessageError(f"{name}: {field}: {invalid[0]} in {str(value)!r}")
    return out


def _message_id(raws: Sequence[bytes] | None, name: str) -> str | None:
    """The first Message-ID field's value, stripped (None when absent or empty)."""
    if not raws:
        return None
    text = _value_text(raws[0])
    if text is None or not _SIMPLE_MSGID.fullmatch(text) or "=?" in text:
        text = str(_registry_header("Message-ID", raws[0], name))
    return text.strip() or None


def _envelope_sender(fields: dict[str, list[bytes]], name: str) -> tuple[str, str | None]:
    """(MAIL FROM, the From address used to choose the server)."""
    from_list = _addresses(fields.get("from", ()), "From", name)
    from_address = from_list[0] if from_list else None
    return_path = fields.get("return-path")
    if return_path:
        text = _value_text(return_path[0])
        if text is None or "=?" in text:
            text = str(_registry_header("Return-Path", return_path[0], name))
        text = _unescape(text, name, "Return-Path").strip()
        if text.replace(" ", "") == "<>":
            return "", from_address  # the null reverse-path (RFC 5321 §4.5.5)
        pairs = getaddresses([text])
        if pairs and pairs[0][1]:
            return _check_address(pairs[0][1], name, "Return-Path"), from_address
    sender = _addresses(fields.get("sender", ()), "Sender", name)
    if sender:
        return sender[0], from_address
    if from_address:
        return from_address, from_address
    raise MessageError(f"{name}: no sender: no Return-Path, Sender or From address")


def recipient_key(address: str) -> str:
    """Deduplication key: the domain lower-cased, the local part as written."""
    local, _, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}"


def _recipients(fields: dict[str, list[bytes]], name: str) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for field in RECIPIENT_FIELDS:
        for address in _addresses(fields.get(field.lower(), ()), field, name):
            key = recipient_key(address)
            if key not in seen:
                seen.add(key)
                out.append(address)
    if not out:
        raise MessageError(f"{name}: no recipients: no address in To, Cc or Bcc")
    return out
