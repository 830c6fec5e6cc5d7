"""The envelope of a queued message from its first bytes, cheaply (``queue list``
reads 100,000 of them in about a second): one ``os.open``/``os.read`` of HEAD_READ
bytes, then one regular expression pass over the header block for the envelope
fields (``fast_envelope``) when they are plain address lists, which bulk mail's
are; anything else goes through the sender's own parser (headers.py, envelope.py),
and a header block longer than HEAD_READ through ``read_message``.  Same rules as
the sender: MAIL FROM from Return-Path, else Sender, else From; RCPT TO from
X-Cxsmtp-Envelope-To when there is one, else To + Cc + Bcc, deduplicated on the domain (tests/spool/test_queue.py checks that the two
paths agree)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from carerix_smtp.errors import MessageError
from carerix_smtp.spool.envelope import envelope_recipients, envelope_sender, index_fields
from carerix_smtp.spool.headers import head_end, is_mbox_line, split_fields
from carerix_smtp.spool.message import read_message

HEAD_READ = 8192  # bytes read per message for its envelope; longer heads: read_message
_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def read_envelope(dir_fd: int, name: str, directory: Path) -> tuple[str, list[str]]:
    """(MAIL FROM, RCPT TO) from the file's first HEAD_READ bytes: the sender's own
    rules (envelope.py); the full reader when the header block is longer.  ``directory``:
    where the file is, for that reader.  FileNotFoundError when it has gone."""
    try:
        fd = os.open(name, _OPEN, dir_fd=dir_fd)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise MessageError(f"{name}: cannot read: {exc.strerror}") from None
    try:
        data = os.read(fd, HEAD_READ)
    except OSError as exc:
        raise MessageError(f"{name}: cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if data.startswith((b"From ", b"\n", b"\r\n")):  # mbox line, empty head: head_end
        end = head_end(data)
    else:  # head_end's rule, inline: the first empty line, LF or CRLF
        lf, crlf = data.find(b"\n\n"), data.find(b"\n\r\n")
        first = min(lf, crlf) if lf >= 0 and crlf >= 0 else max(lf, crlf)
        end = first + 1 if first >= 0 else None
    if end is None:
        if len(data) >= HEAD_READ:  # a long header block: the full reader
            message = read_message(directory / name, name=name)
            return message.mail_from, list(message.recipients)
        end = len(data)
    if not data.startswith(b"From "):
        fast = fast_envelope(data, end)
        if fast is not None:
            return fast
    block = data[:end]
    if is_mbox_line(block):
        block = block[block.find(b"\n") + 1 :]
    fields = index_fields(split_fields(block, name))
    sender, _ = envelope_sender(fields, name)
    return sender, envelope_recipients(fields, name)


# A plain address list: ``addr`` or ``Name <addr>`` items (a display name without
# quotes, comments or specials), addresses of ASCII atoms and a plain domain.
_ADDR = rb"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+"
_ITEM = rb"[ \t\r\n]*(?:[^<>,@\"()\\:;\[\]]*<(" + _ADDR + rb")>|(" + _ADDR + rb"))[ \t\r\n]*"
_LIST = re.compile(rb"(?:" + _ITEM + rb",)*" + _ITEM)
_ITEMS = re.compile(_ITEM)
# Every envelope field of a header block in one pass: (name, angled address, bare
# address, "") for a one-line field of one plain address, the common case; else
# (name, "", "", the value with its continuation lines).
_ENVELOPE_LINE = re.compile(
    rb"^(from|to|cc|bcc|sender|return-path|x-cxsmtp-envelope-to)[ \t]*:(?:[ \t]*(?:[^<>,@\"()\\:;\[\]\n]*<("
    + _ADDR
    + rb")>|("
    + _ADDR
    + rb"))[ \t\r]*$(?!\n[ \t])|([^\n]*(?:\n[ \t][^\n]*)*))",
    re.IGNORECASE | re.MULTILINE,
)
_ROLES: dict[bytes, int] = {}  # field name as written -> 0 From, 1 Sender, 2 Return-Path, 3 To...
_FIELDS = (b"from", b"sender", b"return-path", b"to", b"cc", b"bcc", b"x-cxsmtp-envelope-to")
_EXPLICIT = 6  # the role of X-Cxsmtp-Envelope-To: RCPT TO instead of To, Cc and Bcc
for _index, _field in enumerate(_FIELDS):
    for _spelling in (_field, _field.title(), _field.upper(), _field.capitalize()):
        _ROLES[_spelling] = _index


def fast_envelope(block: bytes, end: int | None = None) -> tuple[str, list[str]] | None:
    """(MAIL FROM, RCPT TO) of a header block whose envelope fields are plain lists
    of ``addr`` / ``Name <addr>`` (no quotes, comments, groups or encoded words in
    an address): what envelope.py makes of it, at a fraction of the cost (one
    regular expression pass); None for anything else (then parse it properly).
    ``end``: where the header block ends in ``block`` (default: its length)."""
    matches = _ENVELOPE_LINE.findall(block, 0, len(block) if end is None else end)
    if len(matches) == 2:  # the usual bulk message: one From, one To, one address each
        (first, a1, b1, _), (second, a2, b2, _) = matches
        one, other = a1 or b1, a2 or b2
        if _ROLES.get(first) == 3:  # To before From
            first, second, one, other = second, first, other, one
        simple = _ROLES.get(first) == 0 and _ROLES.get(second) == 3
        if simple and one and other and b"=?" not in one + other:
            return one.decode("ascii"), [other.decode("ascii")]
    senders: list[str | None] = [None, None, None]  # first From, Sender, Return-Path
    found: tuple[list[str], ...] = ([], [], [], [])  # To, Cc, Bcc, X-Cxsmtp-Envelope-To
    explicit = False
    for name, angled, bare, rest in matches:
        role = _ROLES.get(name)
        if role is None:
            role = _ROLES[name.lower()]
        if angled or bare:
            address = angled or bare
            if b"=?" in address:
                return None  # the registry decodes encoded words even there
            addresses = [address.decode("ascii")]
        elif not rest.strip():
            if role == _EXPLICIT:
                return None  # the real parser says what is wrong
            continue  # an empty field
        elif role == 2 and rest.replace(b" ", b"").strip() == b"<>":
            addresses = [""]  # the null reverse-path
        else:
            listed = _addresses_in(rest)
            if listed is None:
                return None
            addresses = listed
        if role >= 3:
            found[role - 3].extend(addresses)
            explicit = explicit or role == _EXPLICIT
        elif senders[role] is None and addresses:
            senders[role] = addresses[0]
    sender = next((s for s in (senders[2], senders[1], senders[0]) if s is not None), None)
    if explicit:
        recipients = found[3]
    else:
        recipients = found[0] + found[1] + found[2] if found[1] or found[2] else found[0]
    if sender is None or not recipients or "" in recipients:
        return None  # the real parser says what is wrong
    if len(recipients) == 1:
        return sender, recipients
    seen: set[str] = set()
    unique: list[str] = []
    for address in recipients:
        local, _, domain = address.rpartition("@")
        key = f"{local}@{domain.lower()}"
        if key not in seen:
            seen.add(key)
            unique.append(address)
    return sender, unique


def _addresses_in(value: bytes) -> list[str] | None:
    """The addresses of a plain list; None when it is not one."""
    if b"=?" in value or not _LIST.fullmatch(value):
        return None
    return [(angled or bare).decode("ascii") for angled, bare in _ITEMS.findall(value)]
