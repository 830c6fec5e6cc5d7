"""The capture server itself: :class:`Sink` binds a loopback socket and serves
aiosmtpd in its own thread, counts connections (and refuses those over the limit),
and keeps the records of the messages stored.  The CLI uses it, and so do the other
modules' tests, as a real peer::

    import smtplib
    from carerix_smtp.sink.config import FailRule, SinkConfig, parse_fail_rule
    from carerix_smtp.sink.server import Sink

    config = SinkConfig(
        out_dir=tmp_path / "mail",                    # None: keep messages in memory only
        tls="starttls",                               # or "implicit", or None
        auth=("user", "secret"),
        fail=[parse_fail_rule("rcpt:550:pattern=*@bad.example"),
              FailRule("eod", 451, after_n=2, times=1)],
    )
    with Sink(config) as sink:                        # port 0 by default: a free port
        with smtplib.SMTP(sink.host, sink.port, local_hostname="test", timeout=5) as smtp:
            smtp.starttls(context=sink.client_ssl_context())   # verifies with sink.ca_file
            smtp.login("user", "secret")
            smtp.sendmail("a@example.com", ["b@example.com"], b"Subject: x\\r\\n\\r\\nhi\\r\\n")
        assert sink.wait_for(1, timeout=5)            # blocks on a Condition, no polling
        assert sink.messages[0].rcpt_tos == ("b@example.com",)

    # also: sink.wait_until(lambda s: s.connections_open == 0, 5), sink.wait_idle(5),
    # sink.connections_total / connections_open / connections_max, and
    # Sink(config, on_message=callback) -- called from the sink's threads, once per
    # stored message; keep it short and never call stop() from it.

What the sink does with messages, faults, latency, TLS and AUTH: see the docstrings
of the modules store, faults, protocol, tls and handler in this package.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

from carerix_smtp.errors import SinkStartError, UsageError
from carerix_smtp.sink.alarm import Alarm
from carerix_smtp.sink.config import SinkConfig
from carerix_smtp.sink.faults import FaultScript
from carerix_smtp.sink.handler import SinkHandler
from carerix_smtp.sink.protocol import SinkSMTP
from carerix_smtp.sink.store import Received, SinkStats, save_eml
from carerix_smtp.sink.tls import ServerTls

log = logging.getLogger(__name__)

SERVER_NAME = "localhost"
STOP_GRACE = 0.2  # seconds open connections get to close after the 421 at stop(); TLS
# ones wait for the client's close_notify, so they are aborted after it


class _MailLogFilter(logging.Filter):
    """aiosmtpd warns on every successful AUTH that login_data is deprecated."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "login_data is deprecated" not in str(record.msg)


_MAIL_LOG_FILTER = _MailLogFilter()


class Sink:
    """A capture SMTP server running in its own thread (see the module docstring)."""

    def __init__(
        self,
        config: SinkConfig | None = None,
        *,
        on_message: Callable[[Received], None] | None = None,
    ) -> None:
        self.config = config or SinkConfig()
        self.config.validate()
        self.on_message = on_message
        self._cond = threading.Condition()
        self._records: list[Received] = []
        self._connections_total = 0
        self._connections_open = 0
        self._connections_max = 0
        self._sequence = 0
        self._protocols: set[SinkSMTP] = set()
        self._faults = FaultScript(self.config)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._all_closed: asyncio.Event | None = None
        self._thread_error: BaseException | None = None
        self._address: tuple[str, int] = (self.config.host, self.config.port)
        self._tls = ServerTls()
        self._alarm: Alarm | None = None  # the loop's (latency), made in _serve

    # -- public API ------------------------------------------------------------

    @property
    def host(self) -> str:
        """The address listened on (after start())."""
        return self._address[0]

    @property
    def port(self) -> int:
        """The port listened on; the real one when the config said 0."""
        return self._address[1]

    @property
    def address_for_display(self) -> str:
        host = self.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def ca_file(self) -> Path | None:
        """PEM of the generated CA (None without TLS or with your own certificate)."""
        return self._tls.ca_file

    @property
    def ca_pem(self) -> bytes | None:
        return self._tls.ca_pem

    def client_ssl_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts the generated CA."""
        if self._tls.ca_file is None:
            raise ValueError("the sink has no generated CA (no TLS, or own certificate)")
        return ssl.create_default_context(cafile=str(self._tls.ca_file))

    @property
    def messages(self) -> list[Received]:
        """A copy of the records of the messages accepted so far, in order of storage."""
        with self._cond:
            return list(self._records)

    @property
    def connections_total(self) -> int:
        with self._cond:
            return self._connections_total

    @property
    def connections_open(self) -> int:
        with self._cond:
            return self._connections_open

    @property
    def connections_max(self) -> int:
        """The most connections open at the same time so far."""
        with self._cond:
            return self._connections_max

    def stats(self) -> SinkStats:
        with self._cond:
            return SinkStats(len(self._records), self._connections_total, self._connections_max)

    def wait_until(self, predicate: Callable[[Sink], bool], timeout: float) -> bool:
        """Block until ``predicate(sink)`` holds (re-checked on every message and
        connection change); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)

    def wait_for(self, count: int, timeout: float) -> bool:
        """Block until ``count`` messages have been stored; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._records) >= count, timeout)

    def wait_idle(self, timeout: float) -> bool:
        """Block until no connection is open; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._connections_open == 0, timeout)

    def start(self) -> Sink:
        """Bind, then serve in a background thread.  Raises :class:`UsageError` for a
        non-loopback address without ``allow_remote``, :class:`SinkStartError` when
        the address or the output directory cannot be used."""
        if self._thread is not None:
            raise RuntimeError("sink already started")
        logging.getLogger("mail.log").addFilter(_MAIL_LOG_FILTER)
        config = self.config
        if config.out_dir is not None:
            try:
                config.out_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise SinkStartError(
                    f"sink: cannot create the output directory {config.out_dir}: {exc.strerror}"
                ) from None
        sock = self._bind()
        implicit_ctx = None
        try:
            if config.tls is not None:
                server_ctx = self._tls.load(config)
                implicit_ctx = server_ctx if config.tls == "implicit" else None
        except BaseException:
            sock.close()
            self._tls.cleanup()
            raise
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(sock, implicit_ctx, ready), name="cxsmtp-sink", daemon=True
        )
        self._thread.start()
        ready.wait()
        if self._thread_error is not None:
            self._thread.join()
            self._thread = None
            self._tls.cleanup()
            raise SinkStartError(
                f"sink: cannot serve on {self.address_for_display}: {self._thread_error}"
            )
        log.info("sink listening on %s", self.address_for_display)
        return self

    def stop(self) -> None:
        """Stop listening, close open connections (421 first), join the thread."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(stopping.set)
        thread.join()
        self._thread = None
        self._loop = None
        self._tls.cleanup()
        log.info("sink on %s stopped", self.address_for_display)

    def __enter__(self) -> Sink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- setup -----------------------------------------------------------------

    def _bind(self) -> socket.socket:
        sock = bind_listener(self.config)
        bound = sock.getsockname()
        self._address = (str(bound[0]), int(bound[1]))
        return sock

    # -- the server thread -------------------------------------------------------

    def _run(
        self, sock: socket.socket, implicit_ctx: ssl.SSLContext | None, ready: threading.Event
    ) -> None:
        try:
            asyncio.run(self._serve(sock, implicit_ctx, ready))
        except BaseException as exc:  # reported by start(), or logged when already serving
            if not ready.is_set():
                self._thread_error = exc
                ready.set()
            else:
                log.exception("sink on %s failed", self.address_for_display)
        finally:
            sock.close()

    async def _serve(
        self, sock: socket.socket, implicit_ctx: ssl.SSLContext | None, ready: threading.Event
    ) -> None:
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._all_closed = asyncio.Event()
        self._all_closed.set()
        self._alarm = Alarm(loop)
        try:
            await self._serve_until_stopped(loop, sock, implicit_ctx, ready)
        finally:
            self._alarm.close()

    async def _serve_until_stopped(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        implicit_ctx: ssl.SSLContext | None,
        ready: threading.Event,
    ) -> None:
        assert self._stopping is not None and self._all_closed is not None
        server = await loop.create_server(self._make_protocol, sock=sock, ssl=implicit_ctx)
        self._loop = loop
        ready.set()
        await self._stopping.wait()
        server.close()
        for protocol in list(self._protocols):
            protocol.close_for_stop()
        try:
            await asyncio.wait_for(self._all_closed.wait(), STOP_GRACE)
        except asyncio.TimeoutError:
            for protocol in list(self._protocols):
                protocol.abort()
        await server.wait_closed()
        await asyncio.sleep(0)  # let connection_lost callbacks of aborted transports run
        # asyncio.run() then cancels what is left and shuts the executor down.

    def _make_protocol(self) -> SinkSMTP:
        config = self.config
        starttls_ctx = self._tls.context if config.tls == "starttls" else None
        handler = SinkHandler(config, self._faults, store=self._store)
        return SinkSMTP(
            handler,
            config=config,
            faults=self._faults,
            on_open=self._connection_opened,
            on_close=self._connection_closed,
            alarm=self._alarm,
            hostname=SERVER_NAME,
            ident="cxsmtp sink ESMTP",
            data_size_limit=config.size,  # None: no SIZE, no limit
            enable_SMTPUTF8=True,  # RFC 6531
            decode_data=False,  # bytes as received; offers 8BITMIME (RFC 6152)
            tls_context=starttls_ctx,
            require_starttls=config.require_starttls,
            timeout=config.idle_timeout,
            # TLS for AUTH is decided in handle_EHLO/handle_AUTH from the transport, which
            # also knows implicit TLS; auth_required is enforced in handle_MAIL.
            auth_require_tls=False,
            authenticator=handler.authenticate,
            loop=asyncio.get_running_loop(),
        )

    # -- called from the loop thread ----------------------------------------------

    def _connection_opened(self, protocol: SinkSMTP) -> bool:
        """Count a new connection; False when it is over max_connections."""
        self._protocols.add(protocol)
        if self._all_closed is not None:
            self._all_closed.clear()
        with self._cond:
            self._connections_total += 1
            self._connections_open += 1
            self._connections_max = max(self._connections_max, self._connections_open)
            limit = self.config.max_connections
            allowed = limit is None or self._connections_open <= limit
            self._cond.notify_all()
        return allowed

    def _connection_closed(self, protocol: SinkSMTP) -> None:
        self._protocols.discard(protocol)
        with self._cond:
            self._connections_open -= 1
            idle = self._connections_open == 0
            self._cond.notify_all()
        if idle and self._all_closed is not None:
            self._all_closed.set()

    # -- called from a worker thread ----------------------------------------------

    def _store(self, record: Received, data: bytes) -> Received:
        with self._cond:
            self._sequence += 1
            sequence = self._sequence
        out_dir = self.config.out_dir
        if out_dir is not None:
            record = save_eml(out_dir, record, data, sequence, fsync=self.config.fsync)
        with self._cond:
            self._records.append(record)
            self._cond.notify_all()
        if self.on_message is not None:
            try:
                self.on_message(record)
            except Exception:
                log.exception("sink: on_message callback failed")
        return record


def bind_listener(config: SinkConfig) -> socket.socket:
    """A listening, non-blocking socket for ``config.host``/``port`` (loopback unless
    ``allow_remote``)."""
    shown = (
        f"[{config.host}]:{config.port}" if ":" in config.host else (f"{config.host}:{config.port}")
    )
    try:
        infos = socket.getaddrinfo(
            config.host or None,
            config.port,
            type=socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE,
        )
    except socket.gaierror as exc:
        raise UsageError(f"sink: cannot resolve listen address {shown}: {exc}") from None
    family, type_, proto, _, sockaddr = infos[0]
    if not config.allow_remote and not _is_loopback(str(sockaddr[0])):
        raise UsageError(
            f"sink: refusing to listen on {shown}: not a loopback address",
            hint="allow other hosts to connect with --allow-remote (allow_remote=True)",
        )
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise SinkStartError(f"sink: cannot listen on {shown}: {exc.strerror}") from None
    return sock


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False
