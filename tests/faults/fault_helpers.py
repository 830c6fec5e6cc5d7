"""Helpers of the fault matrix: running ``cxsmtp send`` as a user does, accounting
for every message of a spool, a scripted SMTP server that breaks connections after
the data arrived, and killing a sender's whole process group."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import ssl
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import cxsmtp_argv, run_cxsmtp, strip_timestamps
from servers import ScriptConn

from carerix_smtp.config.file import Config, ServerEntry, save_config

MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(<[^>\r\n]+>)", re.MULTILINE | re.IGNORECASE)


def configure(isolated: Any, entry: ServerEntry) -> None:
    """The test's config file (CXSMTP_CONFIG) with ``entry`` as its only server."""
    save_config(Config(path=isolated.config, servers={entry.name: entry}))


# --- running the CLI --------------------------------------------------------------------


def send(spool: Path, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    """``cxsmtp send SPOOL ARGS`` in a subprocess; never a traceback on stderr."""
    result = run_cxsmtp("send", str(spool), *args, **kw)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def error_line(stderr: str) -> str:
    """The one line ``cxsmtp: error: …`` that stderr must be (time stamp removed)."""
    lines = [line for line in strip_timestamps(stderr).splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("cxsmtp: error: "), stderr
    return lines[0]


def start_send(spool: Path, *args: str, wrapper: Sequence[str] = ()) -> subprocess.Popen[str]:
    """``cxsmtp send`` in a new session, so that its whole process group (a wrapper
    such as faketime forks it) can be killed at once."""
    return subprocess.Popen(
        [*wrapper, *cxsmtp_argv(), "send", str(spool), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group ``pgid``, from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = stat.rpartition(")")[2].split()  # after "pid (comm)": state ppid pgrp …
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry))
    return members


def kill_process_group(process: subprocess.Popen[str], timeout: float = 10.0) -> list[int]:
    """SIGKILL the group led by ``process`` (started with start_new_session=True) and
    wait until every member is gone — a wrapper does not pass a signal on, so
    killing only the wrapper's pid would leave cxsmtp running.  Returns the members
    the signal hit (none when the run had already ended)."""
    members = group_members(process.pid)
    with contextlib.suppress(ProcessLookupError):  # the run ended on its own
        os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=timeout)
    deadline = time.monotonic() + timeout
    while (alive := group_members(process.pid)) and time.monotonic() < deadline:
        time.sleep(0.01)  # polling /proc with a deadline: there is no event for "exited"
    assert alive == [], f"still running after SIGKILL of the group: {alive}"
    remove_faketime_leftovers(process.pid)
    return members


def remove_faketime_leftovers(pid: int) -> None:
    """faketime's wrapper makes a POSIX semaphore and shared memory named after its
    pid and removes them when it exits.  SIGKILL leaves them in /dev/shm, and a later
    faketime that gets the same pid refuses to start ("faketime: sem_open: File
    exists"): a run that never starts, seen once in about 40 runs of the kill trials."""
    for name in (f"sem.faketime_sem_{pid}", f"faketime_shm_{pid}"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"/dev/shm/{name}")


# --- accounting ---------------------------------------------------------------------------


@dataclass
class Tally:
    """Where each message of a spool is now, by file name."""

    queued: list[str]
    deferred: list[str]
    sent: list[str]
    failed: list[str]
    in_flight: list[str]  # claimed (.cxsmtp/claims/KIND/TOKEN~NAME) by a run that died

    def everywhere(self) -> list[str]:
        return self.queued + self.deferred + self.sent + self.failed + self.in_flight

    def lost(self, expected: Iterable[str]) -> int:
        return len(set(expected) - set(self.everywhere()))

    def twice(self) -> list[str]:
        """Names found in more than one place (a message copied instead of moved)."""
        return sorted(n for n, c in Counter(self.everywhere()).items() if c > 1)


def tally(spool: Path) -> Tally:
    def eml(directory: Path) -> list[str]:
        return sorted(p.name for p in directory.glob("*.eml")) if directory.is_dir() else []

    claims = spool / ".cxsmtp" / "claims"
    in_flight = [p.name.partition("~")[2] for p in claims.glob("*/*~*.eml")]
    return Tally(
        eml(spool),
        eml(spool / "deferred"),
        eml(spool / "sent"),
        eml(spool / "failed"),
        sorted(in_flight),
    )


def spool_names(count: int) -> list[str]:
    """The file names servers.make_spool gives ``count`` messages."""
    return [f"m{n:05d}.eml" for n in range(count)]


def ids_in(datas: Iterable[bytes]) -> Counter[str]:
    """Message-IDs (with multiplicity) in raw message data as a server received it."""
    found: Counter[str] = Counter()
    for data in datas:
        match = MESSAGE_ID.search(data)
        found[match.group(1).decode() if match else "?"] += 1
    return found


def duplicates(received: Counter[str]) -> int:
    return sum(count - 1 for count in received.values())


# --- a scripted SMTP server that breaks connections ---------------------------------------


def smtp_script(
    *,
    extensions: Sequence[str] = ("PIPELINING", "8BITMIME", "SIZE 200000000"),
    drop_at: Iterable[int] = (),
    hang_at: Iterable[int] = (),
    starttls: ssl.SSLContext | None = None,
    inject: bytes = b"",
) -> Callable[[ScriptConn], None]:
    """A ScriptServer script that answers like a pipelining server, counting messages
    over all connections; at the Nth message (0-based) in ``drop_at`` it closes the
    connection after the whole data arrived (the data is recorded: the real RFC 1047
    case), in ``hang_at`` it never answers the final "." until the client gives up.
    With ``starttls`` it offers only STARTTLS first and sends ``inject`` right behind
    its 220 — bytes a man in the middle would slip in before the handshake."""
    counter = itertools.count()
    drops, hangs = frozenset(drop_at), frozenset(hang_at)

    def script(conn: ScriptConn) -> None:
        conn.send(b"220 cxsmtp.test ESMTP\r\n")
        if starttls is not None:
            conn.ehlo("STARTTLS", "PIPELINING")
            assert conn.readline().upper().startswith(b"STARTTLS")
            conn.send(b"220 2.0.0 ready to start TLS\r\n" + inject)
            conn.starttls(starttls)
        conn.ehlo(*extensions)
        replies = Replies(conn)
        while True:
            verb = replies.readline()[:4].upper()
            if verb == b"DATA":
                replies.send(b"354 go ahead\r\n")
                replies.flush()
                conn.read_data()
                n = next(counter)
                if n in drops:
                    return
                if n in hangs:
                    conn.wait_closed(timeout=60)
                    return
                replies.send(b"250 2.0.0 queued\r\n")
            elif verb == b"QUIT":
                replies.send(b"221 2.0.0 bye\r\n")
                replies.flush()
                return
            elif verb == b"AUTH":
                replies.send(b"235 2.7.0 ok\r\n")
            else:
                replies.send(b"250 2.0.0 ok\r\n")

    return script


class Replies:
    """Replies held back while more pipelined commands are already in the input, and
    written in one go before reading blocks — as Postfix does (RFC 2920 §3.2).  One
    small write per reply would meet Nagle and delayed ACK: 40 ms stalls."""

    def __init__(self, conn: ScriptConn) -> None:
        self.conn = conn
        self.pending: list[bytes] = []

    def send(self, reply: bytes) -> None:
        self.pending.append(reply)

    def flush(self) -> None:
        if self.pending:
            self.conn.send(b"".join(self.pending))
            self.pending.clear()

    def readline(self) -> bytes:
        if b"\n" not in self.conn.buffer:  # the next read would wait for the client
            self.flush()
        return self.conn.readline()


def unstuffed(raw: bytes) -> bytes:
    """Raw DATA (dot-stuffed, ending CRLF.CRLF) as the message it carries."""
    assert raw.endswith(b"\r\n.\r\n")
    lines = raw[:-3].split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


def wire_form(message: bytes) -> bytes:
    """What a correct sender transmits for ``message``: every line ending CRLF
    (a bare LF becomes CRLF), every line starting with "." dot-stuffed, then CRLF.CRLF."""
    text = message.replace(b"\r\n", b"\n")
    if not text.endswith(b"\n"):
        text += b"\n"
    lines = text[:-1].split(b"\n")
    return b"".join(
        (b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines
    ) + (b".\r\n")
