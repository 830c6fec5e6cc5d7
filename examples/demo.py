"""`make demo`: a two-minute tour of cxsmtp against a local capture server.

It starts ``cxsmtp sink`` on a free loopback port (STARTTLS with a generated
certificate, AUTH), adds a server entry for it, copies the messages of
``examples/spool/`` into a fresh spool, and runs ``cxsmtp test``, ``cxsmtp send``
and ``cxsmtp status`` exactly as you would type them; then it lists what the sink
received and stops the sink.

Everything lives in the repository's ignored ``.demo/`` folder (wiped at the start):
the configuration file, the state dir, the spool and the received mail.  The demo
server's password comes from ``CXSMTP_PASSWORD_DEMO`` and the keyring backend is
the null one, so your own configuration and keyring are never touched.  Nothing
goes beyond 127.0.0.1, and the sink is stopped on every path (even when the demo is
interrupted or killed).

Exit status: 0 when every step did what it should (``cxsmtp send`` exits 65 here on
purpose: one example message has no recipients), 1 otherwise.

``--dir DIR`` runs it in another directory (the tests use a temporary one); that
directory is wiped only if it is empty or was made by an earlier demo.
"""

from __future__ import annotations

import argparse
import email.policy
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from email.parser import BytesHeaderParser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_SPOOL = ROOT / "examples" / "spool"
DEFAULT_DIR = ROOT / ".demo"
MARKER = ".cxsmtp-demo"  # a directory holding this file was made by the demo: safe to wipe
SERVER = "demo"
USERNAME = "demo"
TEST_RECIPIENT = "you@example.com"
EXIT_DATAERR = 65  # sysexits EX_DATAERR: `cxsmtp send` when a message failed permanently
SINK_START_DEADLINE = 20.0  # seconds for the sink to write its port file
SINK_STOP_DEADLINE = 10.0  # seconds after SIGTERM before SIGKILL
COMMAND_TIMEOUT = 120.0


class DemoError(Exception):
    """A step did not do what it should; the message says which and why."""


def cxsmtp_argv() -> list[str]:
    """The ``cxsmtp`` script installed next to this interpreter, else ``python -m``."""
    script = Path(sys.executable).with_name("cxsmtp")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "carerix_smtp"]


def shown(path: Path) -> str:
    """A path as a newcomer would type it: relative to the current directory if inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def say(text: str = "") -> None:
    print(text, flush=True)


def show_command(args: Sequence[str], suffix: str = "") -> None:
    say(f"$ {shlex.join(['cxsmtp', *args])}{suffix}")


def heading(text: str) -> None:
    say()
    say(f"== {text}")


class Demo:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.config = base / "config.toml"
        self.state_dir = base / "state"
        self.spool = base / "spool"
        self.received = base / "received"
        self.port_file = base / "sink.port"
        self.ca_file = base / "ca.pem"
        self.sink_log = base / "sink.log"
        self.password = secrets.token_urlsafe(12)
        self.env = dict(os.environ)
        self.env.update(
            {
                "CXSMTP_CONFIG": str(self.config),
                "CXSMTP_STATE_DIR": str(self.state_dir),
                # The null backend answers "no password" and stores nothing: the demo
                # never reads or writes the user's keyring.
                "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring",
                f"CXSMTP_PASSWORD_{SERVER.upper()}": self.password,
            }
        )
        self.sink: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ steps

    def run(self) -> None:
        say("cxsmtp demo: a local capture server, one server entry, a spool of example messages.")
        say(f"Everything lives in {shown(self.base)}/ (wiped first); nothing leaves 127.0.0.1.")
        say("To type the commands below yourself, first set the same environment:")
        say(f"$ export CXSMTP_CONFIG={shlex.quote(shown(self.config))}")
        say(f"$ export CXSMTP_STATE_DIR={shlex.quote(shown(self.state_dir))}")
        say(
            "$ export PYTHON_KEYRING_BACKEND=keyring.backends.null.Keyring  # keep off your keyring"
        )
        say(f"$ export CXSMTP_PASSWORD_{SERVER.upper()}=...  # the demo server's password")

        port = self.start_sink()
        self.add_server(port)
        count = self.fill_spool()
        self.test_server()
        self.send()
        self.status()
        self.list_received(count)

    def start_sink(self) -> int:
        heading("1. Start a local capture server (in the background)")
        args = [
            "sink",
            "--listen",
            "127.0.0.1:0",
            "--port-file",
            str(self.port_file),
            "--out",
            str(self.received),
            "--tls",
            "starttls",
            "--ca-out",
            str(self.ca_file),
            "--auth",
            f"{USERNAME}:{self.password}",
        ]
        display = [shown(Path(a)) if a.startswith(str(self.base)) else a for a in args]
        display[-1] = f"{USERNAME}:$CXSMTP_PASSWORD_{SERVER.upper()}"
        say(
            "$ cxsmtp "
            + " ".join(shlex.quote(a) for a in display[:-1])
            + f' "{display[-1]}" > {shlex.quote(shown(self.sink_log))} &'
        )
        with open(self.sink_log, "wb") as log:
            self.sink = subprocess.Popen(
                [*cxsmtp_argv(), *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.base,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        port = self.wait_for_port()
        say(
            f"sink running (pid {self.sink.pid}) on 127.0.0.1:{port}, CA for clients: {shown(self.ca_file)}"
        )
        return port

    def wait_for_port(self) -> int:
        assert self.sink is not None
        deadline = time.monotonic() + SINK_START_DEADLINE
        while time.monotonic() < deadline:
            if self.port_file.exists():
                text = self.port_file.read_text().strip()
                if text.isdigit() and self.ca_file.exists():
                    return int(text)
            if self.sink.poll() is not None:
                raise DemoError(
                    f"cxsmtp sink exited with status {self.sink.returncode} before listening:\n"
                    + self.sink_log.read_text(errors="replace")
                )
            time.sleep(0.02)  # polling a file with a deadline; the sink has no other signal
        raise DemoError(
            f"cxsmtp sink did not write {shown(self.port_file)} within {SINK_START_DEADLINE:.0f} s"
        )

    def add_server(self, port: int) -> None:
        heading("2. Add a server entry for it (password from $CXSMTP_PASSWORD_DEMO)")
        self.cxsmtp(
            [
                "server",
                "add",
                SERVER,
                f"[127.0.0.1]:{port}",
                "--username",
                USERNAME,
                "--ca-file",
                str(self.ca_file),
            ]
        )

    def fill_spool(self) -> int:
        heading("3. Fill a spool: each *.eml file in it is a queued message")
        sources = sorted(EXAMPLE_SPOOL.glob("*.eml"))
        if not sources:
            raise DemoError(f"no example messages in {EXAMPLE_SPOOL}")
        self.spool.mkdir()
        say(f"$ mkdir {shlex.quote(shown(self.spool))}")
        say(f"$ cp {shlex.quote(shown(EXAMPLE_SPOOL))}/*.eml {shlex.quote(shown(self.spool))}/")
        for source in sources:
            shutil.copyfile(source, self.spool / source.name)
        say(f"{len(sources)} messages queued (one of them deliberately broken)")
        return len(sources)

    def test_server(self) -> None:
        heading("4. Test the server, phase by phase, with a test message")
        self.cxsmtp(["test", SERVER, "--to", TEST_RECIPIENT])

    def send(self) -> None:
        heading("5. Send the spool (what cron would run every 5 minutes)")
        code = self.cxsmtp(["send", str(self.spool)], expect=(0, EXIT_DATAERR))
        if code != EXIT_DATAERR:
            raise DemoError(
                f"cxsmtp send exited {code}; expected {EXIT_DATAERR} because of the broken message"
            )
        say(
            f"(exit {EXIT_DATAERR} is expected: one example message has no recipients; it was"
            " moved to failed/ with a record of why, and the others were delivered)"
        )

    def status(self) -> None:
        heading("6. What happened to each message")
        self.cxsmtp(["status", str(self.spool)])

    def list_received(self, queued: int) -> None:
        heading("7. What the sink received (one .eml file per message, envelope first)")
        say(f"$ ls {shlex.quote(shown(self.received))}")
        files = sorted(self.received.glob("*.eml")) if self.received.is_dir() else []
        for path in files:
            envelope, subject = _envelope_and_subject(path)
            say(f"{path.name}")
            for line in envelope:
                say(f"    {line}")
            say(f"    Subject: {subject}")
        sent = len(list((self.spool / "sent").glob("*.eml")))
        expected = 1 + sent  # the test message, then every message send delivered
        if sent == 0 or sent >= queued:
            raise DemoError(
                f"{sent} of {queued} messages in {shown(self.spool)}/sent; expected all but"
                " the broken one"
            )
        if len(files) != expected:
            raise DemoError(
                f"the sink stored {len(files)} messages; expected {expected} "
                f"(the test message and {sent} sent)"
            )
        say(f"{len(files)} messages received: the test message and {sent} from the spool")

    def stop_sink(self) -> int | None:
        """Stop the sink (SIGTERM, then SIGKILL after a deadline); its exit status."""
        sink, self.sink = self.sink, None
        if sink is None:
            return None
        if sink.poll() is not None:
            return sink.returncode
        heading("8. Stop the sink")
        say(f"$ kill -TERM {sink.pid}")
        sink.send_signal(signal.SIGTERM)
        try:
            sink.wait(timeout=SINK_STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            say(f"sink still running after {SINK_STOP_DEADLINE:.0f} s: killing it")
            sink.kill()
            sink.wait()
        lines = self.sink_log.read_text(errors="replace").splitlines()
        # "stopped: N messages received" (a log line may follow it under load)
        stopped = [line for line in lines if line.startswith("stopped: ")]
        if stopped or lines:
            say((stopped or lines)[-1])
        return sink.returncode

    # ------------------------------------------------------------------ helpers

    def cxsmtp(self, args: Sequence[str], expect: Sequence[int] = (0,)) -> int:
        display = [shown(Path(a)) if a.startswith(str(self.base)) else a for a in args]
        show_command(display)
        try:
            result = subprocess.run(
                [*cxsmtp_argv(), *args],
                stdin=subprocess.DEVNULL,
                env=self.env,
                timeout=COMMAND_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise DemoError(
                f"cxsmtp {args[0]} did not finish within {COMMAND_TIMEOUT:.0f} s"
            ) from exc
        if result.returncode not in expect:
            raise DemoError(f"cxsmtp {args[0]} exited {result.returncode}")
        if self.sink is not None and self.sink.poll() is not None:
            raise DemoError(f"the sink exited unexpectedly (status {self.sink.returncode})")
        return result.returncode


def _envelope_and_subject(path: Path) -> tuple[list[str], str]:
    """The X-Cxsmtp-Envelope-* lines the sink prepends, and the decoded Subject."""
    with open(path, "rb") as handle:
        headers = BytesHeaderParser(policy=email.policy.default).parse(handle)
    envelope = [
        f"{name}: {value}"
        for name in ("X-Cxsmtp-Envelope-From", "X-Cxsmtp-Envelope-To")
        for value in headers.get_all(name, [])
    ]
    return envelope, str(headers.get("Subject", ""))


def _die_with_parent() -> None:
    """In the sink's child process: get SIGTERM if the demo dies (even by SIGKILL)."""
    import ctypes

    pr_set_pdeathsig = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # best effort: the try/finally in main() still stops the sink


def prepare(base: Path, explicit: bool) -> None:
    """Wipe ``base`` (only if it is the demo's own or empty) and recreate it."""
    if base.exists():
        made_by_demo = (base / MARKER).exists()
        if explicit and not made_by_demo and any(base.iterdir()):
            raise DemoError(f"{base} is not empty and was not made by the demo: not wiping it")
        shutil.rmtree(base)
    base.mkdir(parents=True)
    (base / MARKER).write_text("made by examples/demo.py; wiped by the next run\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The cxsmtp tour against a local sink.")
    parser.add_argument(
        "--dir", type=Path, help="Work here instead of .demo/ (wiped only if made by the demo)."
    )
    options = parser.parse_args(argv)
    base = (options.dir or DEFAULT_DIR).resolve()

    # Python's default SIGTERM skips `finally:`; turn it into an exit that runs it.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))

    try:
        prepare(base, explicit=options.dir is not None)
        demo = Demo(base)
        try:
            demo.run()
        finally:
            code = demo.stop_sink()
        if code != 0:
            raise DemoError(f"the sink exited with status {code} after SIGTERM; expected 0")
    except DemoError as exc:
        say()
        say(f"demo FAILED: {exc}")
        return 1
    except KeyboardInterrupt:
        say()
        say("demo interrupted")
        return 130
    except SystemExit:
        say()
        say("demo stopped by SIGTERM")
        raise
    say()
    say("demo OK: test passed, the spool was sent (one broken message failed as expected).")
    say(f"Look around in {shown(base)}/, or run `make test` for the whole suite.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
