"""The header block of a message file: where it ends (``head_end``; a leading mbox
``From `` line is skipped) and its fields, each with its raw lines
(``split_fields``: a fast regular expression, or line by line for anything
unusual, which names the line that is wrong)."""

from __future__ import annotations

import re
from operator import itemgetter
from typing import NamedTuple

from carerix_smtp.errors import MessageError

# RFC 5322 §2.2: a field name is printable US-ASCII except ":"; §4.5.3 (obsolete
# syntax) allows white space before the colon.
FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*:")


class HeaderField(NamedTuple):
    """One header field as it is in the file: its lower-cased name and its raw lines.
    (A named tuple: a message has a few dozen, made at C speed.)"""

    name: str
    raw: bytes


def head_end(data: bytes) -> int | None:
    """Offset of the empty line that ends the header block, or None if not in ``data``.

    The header block ends at the first empty line (RFC 5322 §2.1); the offset is
    just after the last header line's LF, so ``data[:offset]`` keeps it.
    """
    start = 0
    if is_mbox_line(data):
        newline = data.find(b"\n")
        if newline < 0:
            return None
        start = newline + 1
    if data.startswith((b"\n", b"\r\n"), start):
        return start
    crlf = data.find(b"\n\r\n", start)
    # an LF-only empty line before it (searched no further: not through the body)
    lf = data.find(b"\n\n", start, crlf + 1 if crlf >= 0 else len(data))
    if lf >= 0:
        return lf + 1
    return crlf + 1 if crlf >= 0 else None


def is_mbox_line(data: bytes) -> bool:
    """``From sender date`` (mbox), as opposed to a ``From :`` field (obsolete syntax)."""
    return data.startswith(b"From ") and not FIELD_NAME.match(data, 0, 200)


# One whole field: the name, the colon, the rest of the line and its continuation
# lines (RFC 5322 §2.2.3: a line that starts with white space continues the field).
_FIELD = re.compile(rb"(([\x21-\x39\x3b-\x7e]+)[ \t]*:[^\n]*(?:\n[ \t][^\n]*)*\n?)")


# Field names seen, as bytes -> lower-cased str: every message repeats the same
# dozen (From, To, Subject, ...); bounded, so odd names cannot grow it for ever.
_first = itemgetter(0)
_FIELD_NAMES: dict[bytes, str] = {}
_FIELD_NAMES_MAX = 512


def split_fields(block: bytes, name: str) -> list[HeaderField]:
    """The header block's fields, each with its raw lines.  A block with anything
    unusual (a NUL, a bare CR, a line that is not a field) goes the slow way, line
    by line, which names the line that is wrong."""
    if b"\x00" not in block and block.count(b"\r") == block.count(b"\r\n"):
        found = _FIELD.findall(block)  # (field, name) pairs, in C
        # Matches never overlap: when their lengths add up to the block's, they
        # cover it with no gap -- every line is part of a field.
        if sum(map(len, map(_first, found))) == len(block):
            names = _FIELD_NAMES
            return [
                HeaderField(names.get(raw_name) or _field_name(raw_name), raw)
                for raw, raw_name in found
            ]
    return _split_lines(block, name)


def _field_name(raw_name: bytes) -> str:
    field_name = raw_name.decode("ascii").lower()
    if len(_FIELD_NAMES) < _FIELD_NAMES_MAX:
        _FIELD_NAMES[raw_name] = field_name
    return field_name


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
        if not FIELD_NAME.match(content):
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
