"""Test servers and helpers that every test module may use.

- ``smtp_server``: aiosmtpd on a free loopback port (TLS from trustme, AUTH), with a
  ``RecordingHandler`` that keeps what it received;
- ``ScriptServer``: a raw-socket server run by a script, for the faults aiosmtpd
  cannot produce (hangs, drops, injected replies);
- ``host_entry`` (a ServerEntry for one host) and, for the sender's tests, ``eml``,
  ``make_spool``, ``entry_for`` (a ServerEntry for a running Sink), ``config_for``,
  ``listing``, ``names``, ``message_ids``, ``record`` and an injected ``Clock``.

The ``sink_factory`` fixture (cxsmtp's own Sink, started per test) is in conftest.py.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, AuthResult, LoginPassword, auth_mechanism
from conftest import free_port

from carerix_smtp.config.file import Config, ServerEntry
from carerix_smtp.config.tls import Security
from carerix_smtp.sink.server import Sink

USER = "jan"
PASSWORD = "s3cret pass"


# --- server helpers (shared with test_probe / test_cli_test) ----------------------


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    mail_options: list[str]


@dataclass
class RecordingHandler:
    """aiosmtpd handler that records messages and AUTH attempts and injects replies."""

    messages: list[Received] = field(default_factory=list)
    mechanisms_tried: list[str] = field(default_factory=list)
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    mail_reply: str | None = None
    data_reply: str | None = None
    refuse_auth_with: str | None = None  # e.g. "535 5.7.139 basic authentication is disabled"
    received_event: threading.Event = field(default_factory=threading.Event)

    async def handle_AUTH(self, server: Any, session: Any, envelope: Any, args: list[str]) -> Any:
        self.mechanisms_tried.append(args[0].upper())
        return MISSING

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.mail_reply:
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address in self.rcpt_replies:
            return self.rcpt_replies[address]
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_reply:
            return self.data_reply
        self.messages.append(
            Received(
                envelope.mail_from,
                list(envelope.rcpt_tos),
                envelope.original_content,
                list(envelope.mail_options),
            )
        )
        self.received_event.set()
        return "250 2.0.0 queued"

    @auth_mechanism("CRAM-MD5")
    async def auth_CRAM_MD5(self, server: Any, args: list[str]) -> AuthResult:
        challenge = b"<1896.697170952@cxsmtp.test>"
        answer = await server.challenge_auth(challenge)
        if answer is MISSING:
            return AuthResult(success=False, handled=True)
        user, _, digest = answer.partition(b" ")
        expected = hmac.new(PASSWORD.encode(), challenge, hashlib.md5).hexdigest().encode()
        ok = user == USER.encode() and hmac.compare_digest(digest, expected)
        return AuthResult(success=ok, handled=False, auth_data=LoginPassword(user, b""))


@dataclass
class RunningServer:
    port: int
    handler: RecordingHandler
    controller: Controller

    @property
    def host(self) -> str:
        return f"[127.0.0.1]:{self.port}"


@contextmanager
def smtp_server(
    *,
    implicit_tls: ssl.SSLContext | None = None,
    starttls: ssl.SSLContext | None = None,
    auth: bool = False,
    auth_require_tls: bool = True,
    require_starttls: bool = False,
    auth_required: bool = False,
    mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN"),
    handler: RecordingHandler | None = None,
    **smtp_kwargs: Any,
) -> Iterator[RunningServer]:
    """A real aiosmtpd server on a free 127.0.0.1 port."""
    handler = handler or RecordingHandler()

    def authenticator(
        server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        if handler.refuse_auth_with:
            return AuthResult(success=False, handled=False, message=handler.refuse_auth_with)
        ok = (
            isinstance(data, LoginPassword)
            and data.login == USER.encode()
            and data.password == PASSWORD.encode()
        )
        return AuthResult(success=ok, handled=False)

    kwargs: dict[str, Any] = dict(smtp_kwargs)
    if auth:
        kwargs["authenticator"] = authenticator
        kwargs["auth_require_tls"] = auth_require_tls and implicit_tls is None
        kwargs["auth_required"] = auth_required
        exclude = [m for m in ("PLAIN", "LOGIN", "CRAM-MD5") if m not in mechanisms]
        kwargs["auth_exclude_mechanism"] = exclude
    elif "CRAM-MD5" not in mechanisms:
        kwargs["auth_exclude_mechanism"] = ["CRAM-MD5"]
    if starttls is not None:
        kwargs["tls_context"] = starttls
        kwargs["require_starttls"] = require_starttls
    port = free_port()
    controller = Controller(
        handler, hostname="127.0.0.1", port=port, ssl_context=implicit_tls, **kwargs
    )
    controller.start()
    try:
        yield RunningServer(port, handler, controller)
    finally:
        controller.stop()


class ScriptConn:
    """The server side of one connection of a ScriptServer."""

    def __init__(self, sock: socket.socket, server: ScriptServer | ThreadedScriptServer) -> None:
        # Each reply leaves at once, as from a server that answers pipelined commands
        # together: with Nagle, the second of two replies written one after the other
        # waits for the client's delayed ACK (40 ms a message on Linux).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.server = server
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def readline(self) -> bytes:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("client closed")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        self.server.lines.append(line + b"\n")
        return line + b"\n"

    def read_data(self) -> bytes:
        """Raw bytes up to and including CRLF.CRLF (still dot-stuffed)."""
        while b"\r\n.\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("client closed")
            self.buffer += chunk
        end = self.buffer.index(b"\r\n.\r\n") + 5
        data, self.buffer = self.buffer[:end], self.buffer[end:]
        self.server.data.append(data)
        return data

    def ehlo(self, *extensions: str) -> None:
        self.readline()
        lines = ["cxsmtp.test", *extensions]
        text = "".join(f"250-{x}\r\n" for x in lines[:-1]) + f"250 {lines[-1]}\r\n"
        self.send(text.encode())

    def starttls(self, context: ssl.SSLContext) -> None:
        self.sock = context.wrap_socket(self.sock, server_side=True)

    def wait_closed(self, timeout: float = 5.0) -> None:
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except OSError:
            pass


class ScriptServer:
    """A raw listening socket on 127.0.0.1 that runs ``script(conn)`` per connection
    and records every line it reads (``lines``) and raw message data (``data``)."""

    def __init__(self, script: Callable[[ScriptConn], None], connections: int = 1) -> None:
        self.script = script
        self.lines: list[bytes] = []
        self.data: list[bytes] = []
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        self.done = threading.Event()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.listener.settimeout(0.1)
        self.port = int(self.listener.getsockname()[1])
        self.connections = connections
        self.thread = threading.Thread(target=self._run, daemon=True)

    @property
    def host(self) -> str:
        return f"[127.0.0.1]:{self.port}"

    @property
    def text(self) -> str:
        return b"".join(self.lines).decode("utf-8", "replace")

    def __enter__(self) -> ScriptServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        self.listener.close()

    def _run(self) -> None:
        served = 0
        while not self.stop.is_set() and served < self.connections:
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            served += 1
            conn = ScriptConn(sock, self)
            try:
                self.script(conn)
            except (OSError, ConnectionError, ssl.SSLError):
                pass
            except BaseException as exc:  # pragma: no cover - shown by the test
                self.errors.append(exc)
            finally:
                conn.sock.close()
        self.done.set()


class ThreadedScriptServer:
    """Like ScriptServer, but every connection is served at once, in a thread of its
    own, by ``serve(conn, index)`` (index: the order of arrival); ``accepted`` counts
    the connections (``cond`` is notified at each)."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.data: list[bytes] = []
        self.errors: list[BaseException] = []
        self.accepted = 0
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = int(self.listener.getsockname()[1])
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)

    def serve(self, conn: ScriptConn, index: int) -> None:
        raise NotImplementedError

    def __enter__(self) -> ThreadedScriptServer:
        self.acceptor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.acceptor.join(10)
        for thread in self.threads:
            thread.join(10)
        self.listener.close()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            with self.cond:
                index = self.accepted
                self.accepted += 1
                self.cond.notify_all()
            thread = threading.Thread(target=self._run, args=(sock, index), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _run(self, sock: socket.socket, index: int) -> None:
        conn = ScriptConn(sock, self)
        try:
            self.serve(conn, index)
        except (OSError, ConnectionError):
            pass
        except BaseException as exc:  # pragma: no cover - shown by the test
            self.errors.append(exc)
        finally:
            conn.sock.close()


def answer_transactions(
    conn: ScriptConn,
    on_quit: Callable[[], None] = lambda: None,
    on_data: Callable[[], None] = lambda: None,
) -> None:
    """After EHLO: DATA gets 354 and its data 250 (``on_data`` first), QUIT ``on_quit``
    and then 221 (the script ends there), any other command 250."""
    while True:
        verb = conn.readline().split()[0].upper()
        if verb == b"DATA":
            conn.send(b"354 go ahead\r\n")
            conn.read_data()
            on_data()
            conn.send(b"250 2.0.0 queued\r\n")
        elif verb == b"QUIT":
            on_quit()
            conn.send(b"221 2.0.0 bye\r\n")
            return
        else:
            conn.send(b"250 2.0.0 ok\r\n")


def hang(conn: ScriptConn) -> None:
    """Accept and never speak."""
    conn.server.stop.wait(30)


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound, then closed)."""
    return free_port()


def host_entry(host: str, **kw: Any) -> ServerEntry:
    kw.setdefault("connect_timeout", 5.0)
    kw.setdefault("command_timeout", 5.0)
    kw.setdefault("data_timeout", 5.0)
    return ServerEntry(name="test", host=host, **kw)


def client_context(ca_file: Path) -> ssl.SSLContext:
    from carerix_smtp.config.tls import make_ssl_context

    return make_ssl_context(str(ca_file))


# --- the sender's helpers ---

FAST = {"connect_timeout": 5.0, "command_timeout": 5.0, "data_timeout": 5.0}
# The sending limits (issue 5) lifted: `cxsmtp send` applies them through the ledger,
# and these tests are about delivery, not pacing (test_limits_e2e.py sets its own).
NO_LIMITS = {
    "rate_per_hour": 1_000_000,
    "batch_max_messages": 1_000_000,
    "batch_interval": 0.0,
    "batch_deadline": 3600.0,
}


def eml(n: int, *, sender: str = "a@x.example", to: str = "r{n}@y.example", **extra: str) -> bytes:
    headers = [f"From: {sender}", f"To: {to.format(n=n)}", f"Message-ID: <{n}.test@x.example>"]
    headers += [f"{k.replace('_', '-')}: {v}" for k, v in extra.items()]
    headers += ["Date: Wed, 01 May 2024 12:00:00 +0000", f"Subject: message {n}"]
    return ("\n".join(headers) + f"\n\nbody of {n}\n.\n").encode()


def make_spool(root: Path, count: int = 0, **kw: Any) -> Path:
    spool = root / "spool"
    spool.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        (spool / f"m{n:05d}.eml").write_bytes(eml(n, **kw))
    return spool


def entry_for(sink: Sink | int, name: str = "local", **kw: Any) -> ServerEntry:
    port = sink if isinstance(sink, int) else sink.port
    options: dict[str, Any] = {"security": Security.NONE, **FAST, **NO_LIMITS, **kw}
    return ServerEntry(name=name, host=f"[127.0.0.1]:{port}", **options)


def config_for(root: Path, *entries: ServerEntry, users: dict[str, str] | None = None) -> Config:
    config = Config(path=root / "config.toml", servers={e.name: e for e in entries})
    config.users = dict(users or {})
    if len(entries) > 1:
        config.settings.default_server = entries[0].name
    return config


def message_ids(sink: Sink) -> list[str]:
    out = []
    for received in sink.messages:
        match = re.search(rb"^Message-ID: (<[^>]+>)", received.data, re.MULTILINE | re.IGNORECASE)
        out.append(match.group(1).decode() if match else "?")
    return out


def listing(spool: Path) -> dict[str, bytes]:
    """Every file below SPOOL except the tool's own state: what a run may not touch."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(spool):
        dirnames[:] = [d for d in dirnames if d != ".cxsmtp"]
        for name in filenames:
            path = Path(dirpath) / name
            out[str(path.relative_to(spool))] = path.read_bytes()
    return out


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.eml"))


def record(spool: Path, where: str) -> dict[str, Any]:
    """The record of ``where`` (``"failed/m.eml"``): ``NAME.eml.json`` beside it, or
    for sent/ the newest line naming it in ``sent/records-DAY.jsonl`` (issue 12)."""
    rel, _, name = where.rpartition("/")
    if rel == "sent":
        return sent_record(spool, name)
    return json.loads((spool / f"{where}.json").read_text())


def sent_record(spool: Path, name: str) -> dict[str, Any]:
    """The newest record of sent/``name`` in the day files (KeyError: none)."""
    found: dict[str, Any] | None = None
    for day in sorted((spool / "sent").glob("records-*.jsonl")):
        for line in day.read_bytes().splitlines():
            try:
                data = json.loads(line)
            except ValueError:
                continue  # a torn line
            if data.get("name") == name:
                found = data
    if found is None:
        raise KeyError(f"no record of sent/{name}")
    return found


def sent_lines(spool: Path) -> list[str]:
    """The names of every readable line of the day files, oldest first (duplicates
    kept; a line torn by a crash is skipped, as readers do)."""
    out = []
    for day in sorted((spool / "sent").glob("records-*.jsonl")):
        for line in day.read_bytes().splitlines():
            try:
                out.append(json.loads(line)["name"])
            except ValueError:
                continue
    return out


def delivery_log(spool: Path) -> list[dict[str, Any]]:
    """The entries of the spool's delivery log, oldest first.  A line torn by a
    SIGKILL (the kernel may stop a write where the file crosses a page) is skipped,
    as readers do; any other line that is not JSON fails the test."""
    out = []
    for line in (spool / ".cxsmtp" / "delivery.log").read_bytes().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            assert not line.rstrip().endswith(b"}"), f"not a torn line: {line!r}"
    return out


class Clock:
    """An injected wall clock: starts at the real time, moves only when told."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def token_command(root: Path, *tokens: str) -> tuple[str, Path]:
    """An ``oauth_token_command`` (issue 14) that prints ``tokens`` one per run, the
    last one again after that, and counts its runs in the returned file.  The tokens
    are read from a file, so they are in no process's argv."""
    import shlex
    import sys

    root.mkdir(parents=True, exist_ok=True)
    (root / "tokens").write_text("\n".join(tokens) + "\n")
    count = root / "runs"
    script = root / "token.py"
    script.write_text(
        "import pathlib, sys\n"
        "here = pathlib.Path(sys.argv[0]).parent\n"
        "runs = here / 'runs'\n"
        "n = int(runs.read_text()) if runs.exists() else 0\n"
        "runs.write_text(str(n + 1))\n"
        "tokens = (here / 'tokens').read_text().split()\n"
        "print(tokens[min(n, len(tokens) - 1)])\n"
    )
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}", count


def token_runs(count: Path) -> int:
    return int(count.read_text()) if count.exists() else 0
