"""Shared helpers for the benchmarks: timing, medians, ratio lines."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def cxsmtp() -> list[str]:
    script = VENV_BIN / "cxsmtp"
    return [str(script)] if script.exists() else [sys.executable, "-m", "carerix_smtp"]


def median_seconds(func: Callable[[], object], runs: int = 10) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        func()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def run_quiet(argv: Sequence[str]) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def report(name: str, value: str, verdict: bool | None = None) -> None:
    mark = "" if verdict is None else ("  PASS" if verdict else "  FAIL")
    print(f"  {name:<48} {value}{mark}")


# --------------------------------------------------------------------------- SMTP peers
# Helpers for the spool/throughput benchmarks: a scratch dir, an isolated cxsmtp
# environment, a local SMTP sink, and the peak RSS of a child process.

SMTP_SINK = "/usr/sbin/smtp-sink"
LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Poll until something accepts connections on host:port (deadline, no fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {host}:{port} after {timeout} s") from None
            time.sleep(0.01)


def scratch_dir(prefix: str) -> tempfile.TemporaryDirectory[str]:
    """A temporary directory on tmpfs (/dev/shm) when there is one, else in /tmp."""
    shm = Path("/dev/shm")
    base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    return tempfile.TemporaryDirectory(prefix=prefix, dir=base)


def cxsmtp_env(work: Path) -> dict[str, str]:
    """The environment for cxsmtp subprocesses: config and state in ``work``, no keyring."""
    env = dict(os.environ)
    env.update(
        {
            "CXSMTP_CONFIG": str(work / "config.toml"),
            "CXSMTP_STATE_DIR": str(work / "state"),
            "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring",
            "NO_COLOR": "1",
        }
    )
    return env


def lifted_limits() -> list[str]:
    """``--set`` options that lift every per-server limit (keys: `cxsmtp server show`)."""
    values = {
        "rate_per_hour": 100_000_000,
        "batch_max_messages": 1_000_000,
        "batch_max_bytes": 100_000_000_000,
        "batch_deadline": 3600,
        "batch_interval": 1,
    }
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


def add_server(env: dict[str, str], name: str, port: int, *extra: str) -> None:
    """A plain (no TLS, no AUTH) server entry for 127.0.0.1:port with lifted limits."""
    run_checked(
        [
            *cxsmtp(),
            "server",
            "add",
            name,
            f"[{LOOPBACK}]:{port}",
            "--security",
            "none",
            "--default",
            *lifted_limits(),
            *extra,
        ],
        env,
    )
    run_checked([*cxsmtp(), "settings", "set", "email-send-limit", "100000000"], env)


def run_checked(argv: Sequence[str], env: dict[str, str]) -> str:
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
        )
    return result.stdout


class PostfixSink:
    """Postfix's ``smtp-sink`` on a loopback port (discards everything; PIPELINING).

    As root it needs ``-u nobody``, and the backlog argument is mandatory (TOOLING.md).
    """

    def __init__(self, *options: str) -> None:
        self.options = options
        self.host = LOOPBACK
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return Path(SMTP_SINK).exists() or shutil.which("smtp-sink") is not None

    def __enter__(self) -> PostfixSink:
        program = SMTP_SINK if Path(SMTP_SINK).exists() else shutil.which("smtp-sink")
        assert program is not None
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        self.port = free_port()
        self.proc = subprocess.Popen(
            [program, *user, *self.options, f"{self.host}:{self.port}", "1000"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(self.host, self.port)
        except RuntimeError:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def python_sink(**options: object):  # -> carerix_smtp.sink.server.Sink (not started)
    """carerix_smtp.sink.server.Sink in this process, messages in memory without their data."""
    from carerix_smtp.sink.config import SinkConfig
    from carerix_smtp.sink.server import Sink

    config = SinkConfig(keep_data=False, fsync=False, out_dir=None, **options)  # type: ignore[arg-type]
    return Sink(config)


def run_measured(
    argv: Sequence[str], env: dict[str, str], timeout: float
) -> tuple[int, float, int, float]:
    """Run a child; (exit status, wall seconds, peak RSS in bytes, start time.time()).

    The peak RSS is the child's own ru_maxrss from wait4(2) (not all children's).  At
    ``timeout`` the child gets SIGTERM (then SIGKILL 5 s later).
    """
    with tempfile.TemporaryFile() as errors:
        started_wall = time.time()
        started = time.perf_counter()
        proc = subprocess.Popen(
            list(argv), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors
        )
        # At the timeout SIGTERM (cxsmtp finishes the message in flight), 5 s later SIGKILL.
        timers = [
            threading.Timer(timeout, _signal, (proc, signal.SIGTERM)),
            threading.Timer(timeout + 5, _signal, (proc, signal.SIGKILL)),
        ]
        for timer in timers:
            timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            for timer in timers:
                timer.cancel()
        elapsed = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        errors.seek(0)
        text = errors.read().decode(errors="replace").strip()
    if proc.returncode != 0 and text:
        print(f"  {argv[-1]}: exit {proc.returncode}: {text[-2000:]}", file=sys.stderr)
    return proc.returncode, elapsed, usage.ru_maxrss * 1024, started_wall


def _signal(proc: subprocess.Popen[bytes], signum: int) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signum)


def small_message(index: int, size: int = 2048) -> bytes:
    """A plain-text message of about ``size`` bytes, CRLF line endings, unique Message-ID."""
    head = (
        "From: Bench Sender <sender@example.com>\r\n"
        f"To: Recipient {index} <rcpt{index}@example.org>\r\n"
        f"Subject: Benchmark message {index}\r\n"
        "Date: Fri, 27 Nov 2026 09:00:00 +0000\r\n"
        f"Message-ID: <bench-{index}@example.com>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: text/plain; charset="us-ascii"\r\n'
        "\r\n"
    ).encode()
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n"
    body = bytearray()
    while len(head) + len(body) + len(line) <= size:
        body += line
    return head + bytes(body)


def mib(n: float) -> str:
    return f"{n / 1024 / 1024:.1f} MiB"
