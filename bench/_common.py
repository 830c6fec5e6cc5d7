"""Shared helpers for the benchmarks: timing, medians, ratio lines."""

from __future__ import annotations

import contextlib
import json
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
from typing import Any

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
    print(f"  {name:<48} {value}{mark}", flush=True)


# --------------------------------------------------------------------------- targets
# Every target of issue 12 goes through target() (or skipped()): the line is printed
# and, under run_all.py, also appended to the file named by RESULTS_ENV, so that the
# summary at the end lists each target with its verdict.

RESULTS_ENV = "CXSMTP_BENCH_RESULTS"


def target(name: str, value: str, ok: bool) -> bool:
    """Print a target's line with PASS/FAIL, record it for run_all.py; returns ``ok``."""
    report(name, value, ok)
    _record(name, value, "PASS" if ok else "FAIL")
    return ok


def noted(name: str, value: str) -> None:
    """A figure that is not a target but explains one (listed as INFO in the summary)."""
    report(name, value)
    _record(name, value, "INFO")


def skipped(name: str, reason: str) -> None:
    """A target that could not be measured here (e.g. Postfix not installed)."""
    print(f"  {name:<48} SKIP: {reason}", flush=True)
    _record(name, reason, "SKIP")


def _record(name: str, value: str, verdict: str) -> None:
    path = os.environ.get(RESULTS_ENV)
    if not path:
        return
    entry = {"script": Path(sys.argv[0]).stem, "target": name, "value": value, "verdict": verdict}
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")


def interleaved(rounds: int, steps: dict[str, Callable[[], float]]) -> dict[str, float]:
    """Median seconds per step over ``rounds`` rounds, each round running every step
    once.  The order rotates from round to round, so that a load change on the shared
    machine or a warm-up effect hits every step alike rather than always the first."""
    samples = interleaved_samples(rounds, steps)
    return {name: statistics.median(values) for name, values in samples.items()}


def interleaved_samples(
    rounds: int, steps: dict[str, Callable[[], float]]
) -> dict[str, list[float]]:
    """The seconds of every step in every round (``interleaved``), in round order."""
    names = list(steps)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(steps[name]())
    return samples


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """The median over rounds of numerator / denominator measured in the same round:
    for two cases compared with each other, a round's pair shares the machine's
    speed at that moment (which here drifts by 20-30 % within seconds), which the
    ratio of two separate medians does not."""
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


def filesystem(path: Path) -> str:
    """The file system type of ``path`` (from /proc/mounts), e.g. "ext4" or "tmpfs"."""
    best, kind = "", "unknown"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    resolved = str(path.resolve())
    for line in mounts:
        fields = line.split()
        if len(fields) < 3 or len(fields[1]) < len(best):
            continue
        if (resolved + "/").startswith(fields[1].rstrip("/") + "/"):
            best, kind = fields[1], fields[2]
    return kind


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


def disk_dir(prefix: str) -> tempfile.TemporaryDirectory[str]:
    """A temporary directory in the default temp dir: the normal disk (ext4 here)."""
    return tempfile.TemporaryDirectory(prefix=prefix)


def write_spool(path: Path, messages: Sequence[bytes]) -> Path:
    """A fresh spool directory holding ``messages`` as NNNNNN.eml files, on disk
    (``os.sync``) as a producer leaves them (``cxsmtp enqueue`` syncs each file): the
    timed run that follows does not pay for writing them back, nor does the case
    after it."""
    path.mkdir(parents=True)
    for index, data in enumerate(messages):
        (path / f"{index:06d}.eml").write_bytes(data)
    os.sync()
    return path


def settle_disk() -> None:
    """Write back what the last case left dirty (its spool removed, its sent/ and
    records), so that the next timed case does not wait behind it (``os.sync``)."""
    os.sync()


def left_over(spool: Path) -> int:
    """Messages not sent: still queued, claimed, deferred or failed."""
    places = (
        spool,
        spool / "deferred",
        spool / "failed",
        *(spool / ".cxsmtp" / "claims").glob("*"),
    )
    return sum(1 for place in places if place.is_dir() for _ in place.glob("*.eml"))


def send_spool(env: dict[str, str], spool: Path, server: str, timeout: float) -> float:
    """Wall seconds of ``cxsmtp send -s SERVER SPOOL`` as a subprocess (process start
    included); RuntimeError unless it exits 0 having sent every message."""
    argv = [*cxsmtp(), "send", "--quiet", "--server", server, str(spool)]
    code, wall, _, _ = run_measured(argv, env, timeout)
    left = left_over(spool)
    if code != 0 or left:
        raise RuntimeError(f"cxsmtp send -s {server} {spool}: exit {code}, {left} not sent")
    return wall


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


def python_sink(**options: object) -> Any:  # carerix_smtp.sink.server.Sink, not started
    """carerix_smtp.sink.server.Sink in this process, messages in memory without their data."""
    from carerix_smtp.sink.config import SinkConfig
    from carerix_smtp.sink.server import Sink

    config = SinkConfig(keep_data=False, fsync=False, out_dir=None, **options)
    return Sink(config)


# A fresh small process between the benchmark and the measured child.  On Linux a
# child's ru_maxrss is at least the RSS of the process that forked it (exec records
# the old memory's high-water mark), so a child started straight from this process
# would report this process's peak once it has grown (an in-process measurement, the
# sink's buffers).  The launcher is a bare interpreter (-S, a few MB), forks, execs
# the command, and writes the child's own figures to the report file.
_LAUNCHER = """
import os, signal, sys, time
report, argv = sys.argv[1], sys.argv[2:]
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the group's SIGTERM is for the child
started_wall, started = time.time(), time.perf_counter()
pid = os.fork()
if pid == 0:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        print(f"{argv[0]}: {exc}", file=sys.stderr)
    os._exit(127)
_, status, usage = os.wait4(pid, 0)
elapsed = time.perf_counter() - started
with open(report, "w") as handle:
    handle.write(f"{usage.ru_maxrss} {elapsed!r} {started_wall!r}")
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def run_measured(
    argv: Sequence[str], env: dict[str, str], timeout: float
) -> tuple[int, float, int, float]:
    """Run a child; (exit status, wall seconds, peak RSS in bytes, start time.time()).

    The peak RSS is the child's own ru_maxrss from wait4(2), taken by _LAUNCHER; the
    wall time runs from its fork to its exit.  At ``timeout`` the child gets SIGTERM
    (cxsmtp finishes the message in flight), 5 s later SIGKILL.
    """
    with tempfile.TemporaryFile() as errors, tempfile.TemporaryDirectory() as tmp:
        report_file = Path(tmp) / "rusage"
        started_wall, started = time.time(), time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-S", "-c", _LAUNCHER, str(report_file), *argv],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errors,
            start_new_session=True,  # its own process group: the timers signal both
        )
        timers = [
            threading.Timer(timeout, _signal, (proc, signal.SIGTERM)),
            threading.Timer(timeout + 5, _signal, (proc, signal.SIGKILL)),
        ]
        for timer in timers:
            timer.start()
        try:
            code = proc.wait()
        finally:
            for timer in timers:
                timer.cancel()
        elapsed, peak = time.perf_counter() - started, 0
        with contextlib.suppress(OSError, ValueError):  # absent after a SIGKILL
            maxrss, inner, started_at = report_file.read_text().split()
            peak, elapsed, started_wall = int(maxrss) * 1024, float(inner), float(started_at)
        errors.seek(0)
        text = errors.read().decode(errors="replace").strip()
    if code != 0 and text:
        print(f"  {argv[-1]}: exit {code}: {text[-2000:]}", file=sys.stderr)
    return code, elapsed, peak, started_wall


def _signal(proc: subprocess.Popen[bytes], signum: int) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum)


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
