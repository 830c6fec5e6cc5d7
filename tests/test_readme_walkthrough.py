"""README.md's "Quick start", run top to bottom as written, on a host without a keyring.

Convention (also stated in an HTML comment at the top of that section): in the section
from "## Quick start" to the next "## " heading, every ```sh block is run and every
```console block is only shown (the real-provider form).  Inside a ```sh block:

- a line starting with ``$ `` starts a command;
- a line starting with ``> `` (the shell's PS2 prompt) continues the previous command,
  and so does any line that follows a line ending in a backslash;
- every other line is output shown to the reader and is not run.

Comments are left to bash.  Nothing is substituted: the README sets its own shell
variables (``port=$(cat sink.port)``, ``sink_pid=$!``), so all commands of all blocks run,
in order, in ONE ``bash`` process (``set -eu -o pipefail``), so variables and the
background sink persist.  That process starts a new session; its process group (the sink
included) is killed at the end, also when an assertion fails.

Two scenarios, both with a fresh temporary HOME and cxsmtp found on PATH (the venv's bin):
``fail-keyring`` keeps the test's environment but sets
``PYTHON_KEYRING_BACKEND=keyring.backends.fail.Keyring``; ``env -i`` runs bash under
``env -i PATH=$PATH HOME=$HOME`` (no D-Bus, so no usable keyring either).  After the
walkthrough (which itself runs the cron command as cron does, sending the queued batch),
the crontab line it printed is run again the way cron runs it:
``env -i PATH=/usr/bin:/bin HOME=$HOME sh -c COMMAND`` from HOME, with one more message
queued: inside the 5-minute batch window it must exit 0 without a word (cron would mail
any output) and leave the message queued; then the clean-up the README shows
(``cxsmtp server remove local``) must remove the stored password.

The walkthrough test is marked slow (about 10 s per scenario: a sink and a dozen CLI
runs); the parser checks below it run in the normal suite.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SECTION = "## Quick start"
VENV_BIN = Path(sys.executable).parent
CRON_PATH = "/usr/bin:/bin"  # what cron gives a job (Vixie cron, cronie, busybox)
CRON_LINE = re.compile(r"^\*/5 \* \* \* \*\s+(\S.*)$", re.M)
WALK_TIMEOUT = 180.0
STOP_DEADLINE = 10.0
TOUR = "cxsmtp-tour"  # the directory the README works in, under HOME
PASSWORD = "tour-secret"  # the sink's password as the README writes it


@dataclass(frozen=True)
class Block:
    lang: str
    lines: list[str]


def quick_start_blocks(text: str) -> list[Block]:
    """The fenced code blocks of the Quick start section, in order."""
    start = text.index(f"\n{SECTION}\n")
    end = text.find("\n## ", start + len(SECTION) + 2)
    section = text[start : end if end != -1 else len(text)]
    blocks = []
    for match in re.finditer(r"^```(\w*)\n(.*?)^```$", section, re.M | re.S):
        blocks.append(Block(match[1], match[2].splitlines()))
    return blocks


def commands(block: Block) -> list[str]:
    """The shell commands of one block (see the module docstring for the convention)."""
    found: list[str] = []
    continues = False
    for line in block.lines:
        if line.startswith("$ "):
            found.append(line[2:])
        elif found and (continues or line.startswith("> ") or line == ">"):
            found[-1] += "\n" + (line[2:] if line.startswith(">") and not continues else line)
        else:
            continues = False
            continue
        continues = line.endswith("\\")
    return found


def walkthrough_script() -> str:
    blocks = quick_start_blocks(README.read_text(encoding="utf-8"))
    lines = [command for block in blocks if block.lang == "sh" for command in commands(block)]
    return "\n".join(["set -eu -o pipefail", *lines, ""])


def stop_group(pgid: int) -> None:
    """SIGTERM the walkthrough's process group (the background sink), SIGKILL after a deadline."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + STOP_DEADLINE
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)  # polling with a deadline: a group has nothing to wait on


@dataclass
class Walk:
    home: Path
    env: dict[str, str]  # the scenario's environment, for commands the test runs itself
    result: subprocess.CompletedProcess[str]

    @property
    def tour(self) -> Path:
        return self.home / TOUR

    def received(self) -> dict[str, list[str]]:
        """Envelope recipients per file the sink stored."""
        found = {}
        for path in sorted((self.tour / "received").glob("*.eml")):
            with open(path, "rb") as handle:
                headers = BytesHeaderParser().parse(handle)
            found[path.name] = headers.get_all("X-Cxsmtp-Envelope-To", [])
        return found


def scenario_env(name: str, home: Path) -> tuple[list[str], dict[str, str]]:
    """argv prefix and environment for bash in one scenario."""
    path = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', CRON_PATH)}"
    if name == "env -i":
        env = {"PATH": path, "HOME": str(home)}
        return ["env", "-i", f"PATH={path}", f"HOME={home}"], env
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CXSMTP_", "XDG_", "PYTHON")) and k != "NO_COLOR"
    }
    env.update(
        PATH=path,
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_STATE_HOME=str(home / ".local" / "state"),
        PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
    )
    return [], env


@pytest.fixture(params=["fail-keyring", "env -i"])
def walk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Walk]:
    home = tmp_path / "walk-home"
    home.mkdir()
    prefix, env = scenario_env(request.param, home)
    script = home / "walkthrough.sh"
    script.write_text(walkthrough_script())
    process = subprocess.Popen(
        [*prefix, "bash", str(script)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=home,
        env=env,
        start_new_session=True,  # its own process group: the sink goes with it
    )
    try:
        try:
            stdout, stderr = process.communicate(timeout=WALK_TIMEOUT)
        except subprocess.TimeoutExpired:
            stop_group(process.pid)
            stdout, stderr = process.communicate()
            stderr += f"\n(walkthrough killed after {WALK_TIMEOUT:.0f} s)"
        result = subprocess.CompletedProcess(process.args, process.wait(), stdout, stderr)
        yield Walk(home, env, result)
    finally:
        stop_group(process.pid)


@pytest.mark.slow  # about 10 s per scenario: a sink, a dozen CLI runs
def test_the_walkthrough_runs_as_written_and_ends_with_a_working_cron_line(walk: Walk) -> None:
    result = walk.result
    output = result.stdout + result.stderr
    assert result.returncode == 0, (
        f"README walkthrough failed (exit {result.returncode}):\n{output}\n"
        f"sink.log:\n{_read(walk.tour / 'sink.log')}"
    )
    # The test message and the three queued orders reached the sink, each once; the
    # orders were sent by the README's own run of the cron command, as cron runs it.
    recipients = sorted(r for rcpts in walk.received().values() for r in rcpts)
    assert recipients == [
        "customer1@example.org",
        "customer2@example.org",
        "customer3@example.org",
        "you@example.com",
    ], output
    assert len(list((walk.tour / "spool" / "sent").glob("*.eml"))) == 3
    assert list((walk.tour / "spool").glob("*.eml")) == []
    # Without a keyring the password went to a 0600 credentials.toml beside the config,
    # never into the config or the output.
    config_dir = walk.home / ".config" / "cxsmtp"
    credentials = config_dir / "credentials.toml"
    assert credentials.is_file(), output
    assert credentials.stat().st_mode & 0o777 == 0o600
    assert PASSWORD not in (config_dir / "config.toml").read_text()
    assert PASSWORD not in output
    assert "Traceback" not in output
    warnings = [line for line in result.stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "credentials.toml" in warnings[0], result.stderr

    # The crontab line it printed, run again exactly as cron runs it inside the batch
    # window it just used: exit 0, not a word (cron mails nothing), the new message waits.
    lines = CRON_LINE.findall(result.stdout)
    assert len(lines) == 1, result.stdout
    another = "From: shop@example.com\nTo: cron@example.org\nSubject: From cron\n\nHello.\n"
    queued = subprocess.run(
        ["cxsmtp", "enqueue", str(walk.tour / "spool"), "-"],
        input=another,
        capture_output=True,
        text=True,
        env=walk.env,
        timeout=60,
        check=False,
    )
    assert queued.returncode == 0, queued.stderr
    cron = subprocess.run(
        ["env", "-i", f"PATH={CRON_PATH}", f"HOME={walk.home}", "sh", "-c", lines[0]],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=walk.home,
        timeout=60,
        check=False,
    )
    assert (cron.returncode, cron.stdout, cron.stderr) == (0, "", "")
    assert len(list((walk.tour / "spool").glob("*.eml"))) == 1
    assert len(walk.received()) == 4

    # The clean-up it shows (a console block) forgets the entry and its stored password.
    removed = subprocess.run(
        ["cxsmtp", "server", "remove", "local"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=walk.env,
        timeout=60,
        check=False,
    )
    assert removed.returncode == 0, removed.stderr
    assert PASSWORD not in _read(credentials)


def test_the_walkthrough_covers_every_step_and_skips_the_provider_block() -> None:
    blocks = quick_start_blocks(README.read_text(encoding="utf-8"))
    script = walkthrough_script()
    for step in (
        "cxsmtp sink --listen 127.0.0.1:0 --port-file ",
        "cxsmtp server add ",
        "--password-stdin",
        "cxsmtp test ",
        "cxsmtp enqueue ",
        "cxsmtp send ",
        "cxsmtp status ",
        "env -i ",
    ):
        assert step in script, step
    shown_only = "\n".join(line for b in blocks if b.lang == "console" for line in b.lines)
    assert "[smtp.xs4all.nl]:587" in shown_only
    assert "smtp.xs4all.nl" not in script


def test_commands_follow_prompts_and_continuations() -> None:
    block = Block(
        "sh",
        ["$ a \\", "    b", "output", "$ for x in 1; do", ">   c", "> done", "more output"],
    )
    assert commands(block) == ["a \\\n    b", "for x in 1; do\n  c\ndone"]


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else "(none)"
