"""Running a sink in the foreground, as ``cxsmtp sink`` does: serve until a stop
event or a signal, the port file, and the one-line summary for the banner."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path

from carerix_smtp.errors import SinkStartError
from carerix_smtp.sink.config import SinkConfig
from carerix_smtp.sink.server import Sink
from carerix_smtp.sink.store import Received, SinkStats, write_atomic


def write_port_file(path: Path, port: int) -> None:
    """Write the port atomically, so a reader polling the file never sees half of it."""
    try:
        write_atomic(path, f"{port}\n".encode(), fsync=False)
    except OSError as exc:
        raise SinkStartError(f"sink: cannot write the port file {path}: {exc.strerror}") from None


def config_summary(sink: Sink) -> str:
    """One line describing what a started sink offers (for the CLI's banner)."""
    config = sink.config
    parts = []
    if config.tls is not None:
        parts.append(f"TLS {config.tls}")
    if config.auth is not None:
        parts.append(f"AUTH {'required ' if config.auth_required else ''}for {config.auth[0]}")
    if config.oauth_tokens:  # never the tokens
        who = f" for {config.oauth_user}" if config.oauth_user else ""
        parts.append(f"OAuth2 {' '.join(config.oauth_mechanisms)}{who}")
    if config.latency_ms:
        parts.append(f"latency {config.latency_ms:g} ms")
    if config.size is not None:
        parts.append(f"SIZE {config.size}")
    if config.max_connections is not None:
        parts.append(f"max {config.max_connections} connections")
    faults = len(config.fail) + len(config.drop) + len(config.hang)
    if faults:
        parts.append(f"{faults} scripted fault{'s' if faults != 1 else ''}")
    return ", ".join(parts)


def run_sink(
    config: SinkConfig,
    stop_event: threading.Event,
    *,
    on_message: Callable[[Received], None] | None = None,
    on_listening: Callable[[Sink], None] | None = None,
) -> SinkStats:
    """Serve until ``stop_event`` is set (the CLI sets it from SIGTERM/SIGINT)."""
    sink = Sink(config, on_message=on_message)
    with sink:
        if on_listening is not None:
            on_listening(sink)
        stop_event.wait()
    return sink.stats()


def serve_until_signal(
    config: SinkConfig,
    *,
    port_file: Path | None = None,
    on_message: Callable[[Received], None] | None = None,
    on_listening: Callable[[Sink], None] | None = None,
) -> SinkStats:
    """:func:`run_sink` until SIGTERM or SIGINT (the previous handlers are restored
    after); once listening, the port goes to ``port_file``, then ``on_listening``."""

    def listening(running: Sink) -> None:
        if port_file is not None:
            write_port_file(port_file, running.port)
        if on_listening is not None:
            on_listening(running)

    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        return run_sink(config, stop, on_message=on_message, on_listening=listening)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
