"""A spool that is not writable, tested for real even when the suite runs as root:
the run is dropped to user ``nobody`` with setpriv(1)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import cxsmtp_argv

SETPRIV = shutil.which("setpriv")
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or SETPRIV is None, reason="needs root and setpriv to drop to nobody"
)

MESSAGE = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: x\r\n\r\nbody\r\n"


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory user nobody can enter (pytest's tmp_path is 0700 for root)."""
    path = Path(tempfile.mkdtemp(prefix="cxsmtp-perm-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def run_as_nobody(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HOME": str(home),
        "CXSMTP_CONFIG": str(home / "config.toml"),
        "CXSMTP_STATE_DIR": str(home / "state"),
    }
    argv = [SETPRIV or "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    return subprocess.run(
        [*argv, *cxsmtp_argv(), *args], capture_output=True, text=True, env=env, timeout=60
    )


@pytest.mark.parametrize("command", ["send", "enqueue"])
def test_unwritable_spool_is_exit_78_and_changes_nothing(public_dir: Path, command: str) -> None:
    home = public_dir / "home"
    home.mkdir()
    os.chown(home, 65534, 65534)
    spool = public_dir / "spool"
    spool.mkdir()
    (spool / "a.eml").write_bytes(MESSAGE)
    spool.chmod(0o755)  # owned by root: nobody may read but not write
    before = sorted(os.listdir(spool))
    args = (
        ["send", str(spool)] if command == "send" else ["enqueue", str(spool), str(spool / "a.eml")]
    )
    result = run_as_nobody(*args, home=home)
    assert result.returncode == 78, result.stderr
    assert str(spool) in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(os.listdir(spool)) == before
