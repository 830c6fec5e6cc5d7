"""How the console script leaves (cli/leave.exit_now): the exit code, everything
printed and the atexit handlers are kept; only the interpreter's teardown of its
modules is skipped -- and not while another non-daemon thread still runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PRELUDE = """
import atexit, sys, threading
from carerix_smtp.cli.entry import main
atexit.register(lambda: print("atexit ran", flush=True))
"""


def run(code: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CXSMTP_CONFIG": str(tmp_path / "config.toml")}
    env["CXSMTP_STATE_DIR"] = str(tmp_path / "state")
    argv = [sys.executable, "-c", PRELUDE + code, *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, cwd="/")


def test_output_exit_code_and_atexit_handlers_are_kept(tmp_path: Path) -> None:
    done = run("sys.argv[0] = 'cxsmtp'; main()", tmp_path, "--version")
    assert done.returncode == 0
    assert done.stdout.splitlines()[0].startswith("cxsmtp ")
    assert done.stdout.splitlines()[1:] == ["atexit ran"]
    refused = run("sys.argv[0] = 'cxsmtp'; main()", tmp_path, "--no-such-option")
    assert refused.returncode == 64 and "--no-such-option" in refused.stderr
    assert refused.stdout == "atexit ran\n"


def test_a_running_non_daemon_thread_is_waited_for(tmp_path: Path) -> None:
    code = (
        "import time\n"
        "def late():\n"
        "    time.sleep(0.3); print('thread ended', flush=True)\n"
        "threading.Thread(target=late).start()\n"
        "sys.argv[0] = 'cxsmtp'; main()\n"
    )
    done = run(code, tmp_path, "--version")
    # The thread still ran when the command was done: the process waited for it.
    assert done.returncode == 0 and "thread ended" in done.stdout
    assert done.stdout.index("thread ended") < done.stdout.index("atexit ran")
