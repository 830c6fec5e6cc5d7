"""The greeting and EHLO: the server's 220 banner, its extensions (SIZE, AUTH,
STARTTLS, PIPELINING ...), the HELO fallback for old servers, and the name we
give ourselves in EHLO.
"""

from __future__ import annotations

import re
import socket
from typing import TYPE_CHECKING

from carerix_smtp.smtp.phases import PHASE_GREETING

if TYPE_CHECKING:
    from carerix_smtp.smtp.conversation import Conversation


def read_greeting(session: Conversation) -> None:
    # RFC 5321 §4.5.3.2.1: wait 5 minutes for the 220 greeting (command_timeout).
    with session.phase(PHASE_GREETING) as facts:
        reply = session.channel.read_reply(PHASE_GREETING, session.command_timeout, "the greeting")
        session.greeting = reply
        facts["banner"] = reply.one_line
        if reply.code != 220:
            raise session.reply_error(PHASE_GREETING, "the server refused the session", reply)


def ehlo(session: Conversation, phase: str) -> None:
    with session.phase(phase) as facts:
        name = _local_name(session)
        reply = session.command(f"EHLO {name}", phase)
        if reply.permanent and reply.code in (500, 502, 504, 550):
            # RFC 5321 §4.1.1.1 / §3.2: an old server; fall back to HELO, no extensions.
            facts["ehlo_refused"] = reply.one_line
            reply = session.command(f"HELO {name}", phase)
            if not reply.ok:
                raise session.reply_error(phase, "HELO refused", reply)
            session.extensions = {}
        elif not reply.ok:
            raise session.reply_error(phase, "EHLO refused", reply)
        else:
            session.extensions = _parse_extensions(reply.text)
        session.ehlo_reply = reply
        size = session.extensions.get("SIZE", "").strip()
        session.max_size = int(size) if size.isdigit() and int(size) > 0 else None
        facts["capabilities"] = [f"{k} {v}".strip() for k, v in session.extensions.items()]
        facts["size"] = session.max_size
        facts["auth"] = session.auth_mechanisms
        facts["local_name"] = name


def _local_name(session: Conversation) -> str:
    """Our EHLO name: the given one, else this host's name if it is a FQDN, else an
    address literal (RFC 5321 §4.1.4) — never a getfqdn() lookup."""
    if session.local_hostname:
        return session.local_hostname
    host = socket.gethostname()
    if "." in host and re.fullmatch(r"[A-Za-z0-9.-]+", host):
        return host
    assert session.channel.sock is not None
    address = session.channel.sock.getsockname()[0]
    return f"[IPv6:{address}]" if ":" in address else f"[{address}]"


def _parse_extensions(text: str) -> dict[str, str]:
    """EHLO reply text -> {KEYWORD: params}; the first line is the greeting name."""
    extensions: dict[str, str] = {}
    for line in text.split("\n")[1:]:
        keyword, _, params = line.strip().partition(" ")
        if not keyword or "=" in keyword:  # skip old "AUTH=LOGIN" lines
            continue
        key = keyword.upper()
        if key == "AUTH" and key in extensions:
            params = f"{extensions[key]} {params}"
        extensions[key] = params.strip()
    return extensions
