"""What sendmail reads on stdin -> the bytes of a spool file.

The spool takes its envelope from header fields (SPEC §3): MAIL FROM from
Return-Path, else Sender, else From; RCPT TO from To + Cc + Bcc; Bcc and
Return-Path are removed from the transmitted copy.  So sendmail's envelope is
written as those fields:

- ``-f ADDR`` becomes ``Return-Path: <ADDR>`` (any Return-Path in the input is
  dropped, as Postfix does);
- the recipients (the arguments, or with ``-t`` To/Cc/Bcc minus the arguments)
  that To and Cc do not name go in one ``Bcc:`` field that replaces the input's Bcc;
- when To or Cc names an address that is not a recipient (a list's own address
  while the arguments are its members; ``-t`` with an argument that To names), the
  recipients go in an ``X-Cxsmtp-Envelope-To:`` field instead, which the spool
  takes as RCPT TO in place of To, Cc and Bcc, and removes before sending.

From (from -F and -f, else the user: getuser()@gethostname(), never a DNS lookup),
Date and Message-ID are added when missing.  Line endings become LF (the spool and
the SMTP client accept either); without -i a line with a single "." ends the input.
"""

from __future__ import annotations

import getpass
import re
import socket

from carerix_smtp.errors import MessageError, UsageError
from carerix_smtp.sendmail.options import SendmailOptions
from carerix_smtp.spool.envelope import ENVELOPE_TO, _addresses, index_fields, recipient_key
from carerix_smtp.spool.headers import FIELD_NAME, head_end, split_fields
from carerix_smtp.spool.message import STRIPPED_FIELDS, complete_headers

NAME = "stdin"
_DOT_LINE = re.compile(rb"^\.\r?$", re.MULTILINE)
# Dropped from the input: the fields the spool takes the envelope from and never
# transmits (Bcc, Return-Path, X-Cxsmtp-Envelope-To); the envelope is sendmail's, and
# an X-Cxsmtp-Envelope-To in the input would add recipients sendmail was not given
_DROPPED = STRIPPED_FIELDS


def read_body(data: bytes, dot_ends: bool) -> bytes:
    """The message as sendmail takes it: LF line endings, cut at a lone "." unless -i."""
    data = data.replace(b"\r\n", b"\n")
    if dot_ends:
        match = _DOT_LINE.search(data)
        if match is not None:
            data = data[: match.start()]
    return data


def default_sender() -> str:
    """user@host of the calling user; gethostname() only (no getfqdn(): a DNS lookup)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "nobody"
    return f"{user}@{socket.gethostname() or 'localhost'}"


def compose(data: bytes, opts: SendmailOptions) -> bytes:
    """The spool file for ``data`` read from stdin; MessageError/UsageError if unusable."""
    text = read_body(data, opts.dot_ends)
    if not text.strip():
        raise MessageError("sendmail: no message on standard input")
    end = head_end(text)
    if not FIELD_NAME.match(text, 0, 1000) or (end is None and b"\n" in text.rstrip(b"\n")):
        head, body = b"", b"\n" + text  # no header block: all of it is the body
    elif end is None:
        head, body = text if text.endswith(b"\n") else text + b"\n", b""
    else:
        head, body = text[:end], text[end:]
    fields = split_fields(head, NAME) if head else []
    indexed = index_fields(fields)
    visible = _addresses(indexed.get("to", []), "To", NAME)
    visible += _addresses(indexed.get("cc", []), "Cc", NAME)
    wanted = _recipients(opts, visible + _addresses(indexed.get("bcc", []), "Bcc", NAME))
    added = b""
    if opts.sender is not None:
        added += b"Return-Path: <" + _header_value(opts.sender) + b">\n"
    kept = b"".join(f.raw for f in fields if f.name not in _DROPPED)
    if "from" not in indexed:
        kept += b"From: " + _from_value(opts) + b"\n"
    return complete_headers(added + kept + _envelope(visible, wanted) + body, name=NAME)


def _envelope(visible: list[str], wanted: list[str]) -> bytes:
    """The field(s) that make the spool's envelope ``wanted``: a Bcc of the recipients
    that To and Cc do not name; an X-Cxsmtp-Envelope-To of all of them when To or Cc
    names someone who is not one (the spool would send to every To and Cc address)."""
    keys = {recipient_key(a) for a in wanted}
    if all(recipient_key(a) in keys for a in visible):
        shown = {recipient_key(a) for a in visible}
        hidden = [a for a in wanted if recipient_key(a) not in shown]
        return b"Bcc: " + _header_value(", ".join(hidden)) + b"\n" if hidden else b""
    folded = b",\n ".join(_header_value(a) for a in wanted)  # one address per line
    return ENVELOPE_TO.encode() + b": " + folded + b"\n"


def _recipients(opts: SendmailOptions, in_headers: list[str]) -> list[str]:
    named = list(dict.fromkeys(opts.recipients))
    if not opts.extract:
        if not named:
            raise UsageError("sendmail: no recipients: name them or use -t")
        return named
    minus = {recipient_key(a) for a in named}
    out = list(dict.fromkeys(a for a in in_headers if recipient_key(a) not in minus))
    if not out:
        raise MessageError("sendmail: -t: no recipients in To, Cc or Bcc")
    return out


def _from_value(opts: SendmailOptions) -> bytes:
    from email.utils import formataddr

    address = opts.sender or default_sender()
    if opts.full_name:
        return _header_value(formataddr((opts.full_name, address)))
    return _header_value(address)


def _header_value(text: str) -> bytes:
    if "\n" in text or "\r" in text:
        raise UsageError(f"sendmail: line break in {text!r}")
    return text.encode("utf-8")
