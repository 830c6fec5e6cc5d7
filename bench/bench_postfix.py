"""cxsmtp against Postfix itself, the durable relay a user would pick instead (issue 12).

A private Postfix instance runs from a temp dir on the normal disk: its own
config_directory (main.cf, master.cf), queue_directory and data_directory, smtpd on
a free loopback port, ``relayhost = [127.0.0.1]:SINKPORT`` pointing at Postfix's
``smtp-sink``, default concurrency.  Each round:

  Postfix: ``defer_transports = smtp`` (the transport the relayhost uses), N (2,000)
    messages of ~2 KB injected through its smtpd with smtplib (timed for
    information only), all N waiting in the deferred queue; then ``defer_transports``
    cleared, ``postfix reload`` (until the new qmgr runs), and ``postqueue -f`` timed
    until the queue is empty (polled, with a deadline); the delivery log must then
    show N ``status=sent``.
  cxsmtp: the same N messages as a spool on the same disk (state dir too), ``cxsmtp
    send`` as a subprocess (process start included) through a server entry with the
    default connections, to the same sink.

Target: cxsmtp's messages/s >= 1.0x Postfix's flush, median of ROUNDS interleaved
rounds.  Without Postfix (or not as root) the target is SKIPped with the reason; under
CI=true (where .ci/run installs Postfix) that counts as a failure.  The instance is
stopped at the end, even on error (``postfix stop``; SIGKILL to its master's process
group if the master does not exit).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import pwd
import shutil
import signal
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import (
    LOOPBACK,
    PostfixSink,
    add_server,
    cxsmtp_env,
    disk_dir,
    filesystem,
    free_port,
    interleaved,
    report,
    send_spool,
    settle_disk,
    skipped,
    small_message,
    target,
    wait_for_port,
    write_spool,
)

N = 2000
ROUNDS = 3
TARGET = 1.0  # cxsmtp >= 1.0x Postfix's flush
DEADLINE = 120.0  # seconds for any one wait (injection settled, queue empty)
POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"
POSTQUEUE = "/usr/sbin/postqueue"
DAEMONS = "/usr/lib/postfix/sbin"
QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")
TARGET_NAME = "cxsmtp send vs Postfix postqueue -f"

# The services a relay-only instance needs; no chroot (column 5 "n"), so that nothing
# has to be copied into the queue directory.
MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
proxywrite unix - - n - 1 proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
command_directory = /usr/sbin
daemon_directory = {daemons}
mail_owner = postfix
setgid_group = postdrop
myhostname = bench.example
mydestination =
alias_maps =
alias_database =
local_recipient_maps =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [{sink_host}]:{sink_port}
defer_transports = smtp
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
smtputf8_enable = no
"""


class PostfixStartError(RuntimeError):
    """The private instance could not be started: SKIP (outside CI), not a miss."""


def why_not() -> str:
    """Why no private Postfix can run here ("" when it can)."""
    if not Path(POSTFIX).exists() or not Path(f"{DAEMONS}/master").exists():
        return f"Postfix not installed ({POSTFIX}, {DAEMONS}/master)"
    if os.geteuid() != 0:
        return "a private Postfix instance needs root (its master runs as root)"
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "no user 'postfix' (the Debian package creates it)"
    if not PostfixSink.available():
        return "smtp-sink not installed"
    return ""


class PrivatePostfix:
    """A Postfix instance of its own under ``root``, relaying to ``sink_port``."""

    def __init__(self, root: Path, sink_host: str, sink_port: int) -> None:
        self.root = root
        self.conf = root / "conf"
        self.queue = root / "queue"
        self.host = LOOPBACK
        self.port = free_port()
        self.sink = (sink_host, sink_port)
        self.master_pid = 0
        self.sent_before = 0

    # -- life cycle

    def __enter__(self) -> PrivatePostfix:
        self.root.mkdir(mode=0o755)  # the postfix user must reach data_directory below it
        for sub in ("conf", "queue", "data"):
            (self.root / sub).mkdir()
        shutil.chown(self.root / "data", user="postfix")
        (self.conf / "master.cf").write_text(MASTER_CF.format(listen=f"{self.host}:{self.port}"))
        (self.conf / "main.cf").write_text(
            MAIN_CF.format(
                root=self.root, daemons=DAEMONS, sink_host=self.sink[0], sink_port=self.sink[1]
            )
        )
        try:
            self._command(POSTFIX, "-c", str(self.conf), "start")
            self.master_pid = self._pid_file()
            wait_for_port(self.host, self.port)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            self.__exit__()
            raise PostfixStartError(str(exc)) from exc
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(
            [POSTFIX, "-c", str(self.conf), "stop"], capture_output=True, check=False, timeout=30
        )
        pid = self.master_pid or self._pid_file()
        if pid and not _gone(pid, timeout=10):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)  # the master leads its own process group
            _gone(pid, timeout=5)

    def _pid_file(self) -> int:
        try:
            return int((self.queue / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return 0

    def _command(self, *argv: str) -> None:
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}\n"
                f"last lines of {self.root}/maillog:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 8) -> str:
        try:
            return "\n".join((self.root / "maillog").read_text().splitlines()[-lines:])
        except OSError:
            return "(no maillog)"

    # -- one round

    def set_deferred(self, deferred: bool) -> None:
        """Set or clear ``defer_transports`` and reload until a new qmgr runs."""
        before = self._qmgr()
        value = "smtp" if deferred else ""
        self._command(POSTCONF, "-c", str(self.conf), "-e", f"defer_transports={value}")
        self._command(POSTFIX, "-c", str(self.conf), "reload")
        _wait(lambda: bool(self._qmgr()) and not (self._qmgr() & before), "a new qmgr")

    def inject(self, messages: list[bytes]) -> float:
        """Seconds to hand ``messages`` to smtpd, then wait until all are deferred."""
        start = time.perf_counter()
        with smtplib.SMTP(self.host, self.port, local_hostname="bench.example", timeout=60) as s:
            for index, data in enumerate(messages):
                s.sendmail("sender@example.com", [f"rcpt{index}@example.org"], data)
        elapsed = time.perf_counter() - start
        count = len(messages)
        _wait(lambda: self.queued() == {"deferred": count}, f"{count} deferred messages")
        return elapsed

    def flush(self, count: int) -> float:
        """Seconds from ``postqueue -f`` to an empty queue; checks the log's status=sent."""
        start = time.perf_counter()
        self._command(POSTQUEUE, "-c", str(self.conf), "-f")
        _wait(self.empty, "an empty queue", period=0.02)
        elapsed = time.perf_counter() - start
        expected = self.sent_before + count
        _wait(lambda: self.sent_lines() >= expected, f"{expected} status=sent in the maillog")
        if self.sent_lines() != expected or "status=bounced" in self._log():
            raise RuntimeError(f"Postfix did not deliver exactly {count}:\n{self.log_tail()}")
        self.sent_before = expected
        return elapsed

    # -- observation

    def queued(self) -> dict[str, int]:
        """Queue files per queue (non-empty queues only)."""
        counts = {}
        for name in QUEUES:
            found = sum(len(files) for _, _, files in os.walk(self.queue / name))
            if found:
                counts[name] = found
        return counts

    def empty(self) -> bool:
        """No queue file left; stops at the first one found, so that polling costs the
        machine (2 cores, shared with Postfix) next to nothing while the flush runs."""
        return not any(files for name in QUEUES for _, _, files in os.walk(self.queue / name))

    def _log(self) -> str:
        try:
            return (self.root / "maillog").read_text()
        except OSError:
            return ""

    def sent_lines(self) -> int:
        return self._log().count("status=sent")

    def _qmgr(self) -> set[int]:
        """Process ids of the master's qmgr children."""
        found = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat.rsplit(")", 1)[1]
                if name == "qmgr" and int(rest.split()[1]) == self.master_pid:
                    found.add(int(entry.name))
        return found


def _wait(predicate: Callable[[], bool], what: str, period: float = 0.05) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {what} after {DEADLINE:.0f} s")
        time.sleep(period)


def _gone(pid: int, timeout: float) -> bool:
    """True once process ``pid`` no longer exists (polled until ``timeout``)."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def measure(root: Path, messages: list[bytes], rounds: int) -> dict[str, float]:
    injected: list[float] = []
    numbers = itertools.count()
    root.chmod(0o755)  # mkdtemp's 0700 would keep the postfix user out
    with PostfixSink() as sink, PrivatePostfix(root / "postfix", sink.host, sink.port) as postfix:
        env = cxsmtp_env(root / "cxsmtp")
        add_server(env, "bench", sink.port)  # the entry's default connections

        def postfix_round() -> float:
            if next(numbers):  # the first round starts with defer_transports set
                postfix.set_deferred(True)
            injected.append(postfix.inject(messages))
            postfix.set_deferred(False)
            settle_disk()  # as the spool before a cxsmtp round (write_spool): all on disk
            return postfix.flush(len(messages))

        def cxsmtp_round() -> float:
            spool = write_spool(root / "cxsmtp" / f"spool-{time.monotonic_ns()}", messages)
            try:
                return send_spool(env, spool, "bench", DEADLINE)
            finally:
                shutil.rmtree(spool, ignore_errors=True)
                settle_disk()

        figures = interleaved(rounds, {"postfix": postfix_round, "cxsmtp": cxsmtp_round})
    figures["inject"] = sorted(injected)[len(injected) // 2]
    return figures


def version() -> str:
    result = subprocess.run(
        [POSTCONF, "-d", "-h", "mail_version"], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() or "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=N, help=f"messages (default {N})")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="interleaved rounds")
    args = parser.parse_args()
    # SIGTERM (a CI timeout, run_all stopped) must still stop the instance: as SystemExit
    # it unwinds through PrivatePostfix.__exit__, where the default action would not.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    reason = why_not()
    if reason:
        skipped(TARGET_NAME, reason)
        return 1 if os.environ.get("CI") == "true" else 0
    messages = [small_message(i) for i in range(args.n)]
    with disk_dir("cxsmtp-bench-postfix-") as tmp:
        root = Path(tmp)
        print(
            f"{args.n} x {len(messages[0])} bytes through a private Postfix {version()} "
            f"(default concurrency) and through `cxsmtp send`\n(subprocess, server entry "
            f"defaults), queue, spool and state on {filesystem(root)} ({root}), to the same "
            f"smtp-sink;\nmedian of {args.rounds} interleaved rounds:",
            flush=True,
        )
        try:
            figures = measure(root, messages, args.rounds)
        except PostfixStartError as exc:
            skipped(TARGET_NAME, f"Postfix could not be started: {exc}")
            return 1 if os.environ.get("CI") == "true" else 0
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            target(TARGET_NAME, f"error: {exc}", False)
            return 1
    return 0 if verdict(figures, args.n) else 1


def verdict(figures: dict[str, Any], n: int) -> bool:
    flush, ours = figures["postfix"], figures["cxsmtp"]
    report("Postfix: injection through smtpd (not compared)", f"{n / figures['inject']:6.0f} msg/s")
    report(
        "Postfix: postqueue -f until the queue is empty", f"{n / flush:6.0f} msg/s ({flush:.2f} s)"
    )
    return target(
        TARGET_NAME,
        f"{n / ours:6.0f} msg/s ({ours:.2f} s) = {flush / ours:.2f}x Postfix (target >= {TARGET})",
        flush / ours >= TARGET,
    )


if __name__ == "__main__":
    sys.exit(main())
