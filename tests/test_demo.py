"""`make demo` (examples/demo.py) end to end: it passes, shows the tour, leaves nothing behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "demo.py"
EXAMPLES = sorted((ROOT / "examples" / "spool").glob("*.eml"))


def processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes (not this one) that contain ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # exited meanwhile, or not ours to read
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DEMO), *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),  # the isolated env of conftest: temporary HOME, config, state
        timeout=90,
        check=False,
    )


def test_demo_runs_the_tour_and_leaves_nothing_behind(tmp_path: Path) -> None:
    home = Path(os.environ["HOME"])
    base = tmp_path / f"demo-{uuid.uuid4().hex}"

    result = run_demo("--dir", str(base))

    output = result.stdout
    assert result.returncode == 0, output + result.stderr
    # Each step is shown as the command to type.
    for command in ("$ cxsmtp sink ", "$ cxsmtp server add demo ", "$ cxsmtp test demo --to "):
        assert command in output
    assert re.search(r"^\$ cxsmtp send \S*spool$", output, re.M)
    assert re.search(r"^\$ cxsmtp status \S*spool$", output, re.M)
    # The test passed, and every example message but the broken one was delivered.
    assert "PASSED" in output
    deliverable = len(EXAMPLES) - 1
    assert f"sent {deliverable}, deferred 0, failed 1" in output
    assert "exit 65 is expected" in output
    received = re.search(r"^(\d+) messages received: the test message and (\d+) from", output, re.M)
    assert received is not None, output
    assert (int(received[1]), int(received[2])) == (deliverable + 1, deliverable)
    assert len(list((base / "received").glob("*.eml"))) == deliverable + 1
    assert "X-Cxsmtp-Envelope-To: anna.devries@example.org" in output
    assert "stopped: " in output and "demo OK" in output
    # The password is never shown.
    assert "CXSMTP_PASSWORD_DEMO=..." in output
    # Nothing left running, nothing written outside the demo's directory.
    assert processes_mentioning(str(base)) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["home", base.name])
    assert list(home.iterdir()) == []


def test_demo_refuses_to_wipe_a_directory_it_did_not_make(tmp_path: Path) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")

    result = run_demo("--dir", str(tmp_path))

    assert result.returncode == 1
    assert "not wiping it" in result.stdout
    assert precious.read_text() == "keep me"
