"""Shared fixtures: an isolated config and state dir for every test, a test keyring,
helpers to run the real ``cxsmtp`` as a subprocess, and trustme certificates."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keyring
import pytest

TESTS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS_DIR))

from keyring_backends import FileKeyring  # noqa: E402


@dataclass
class Isolated:
    config: Path
    state_dir: Path
    keyring_file: Path


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Isolated]:
    """Every test gets its own config file, state dir and keyring; nothing touches $HOME."""
    home = tmp_path / "home"
    home.mkdir()
    iso = Isolated(
        tmp_path / "config" / "config.toml", tmp_path / "state", tmp_path / "keyring.json"
    )
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / ".local" / "state"))
    monkeypatch.setenv("CXSMTP_CONFIG", str(iso.config))
    monkeypatch.setenv("CXSMTP_STATE_DIR", str(iso.state_dir))
    monkeypatch.setenv("CXSMTP_TEST_KEYRING", str(iso.keyring_file))
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring_backends.FileKeyring")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])
    )
    monkeypatch.setenv("NO_COLOR", "1")
    for name in [k for k in os.environ if k.startswith("CXSMTP_PASSWORD_")]:
        monkeypatch.delenv(name)
    previous = keyring.get_keyring()
    keyring.set_keyring(FileKeyring())
    yield iso
    keyring.set_keyring(previous)


def cxsmtp_argv() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m``."""
    script = Path(sys.executable).with_name("cxsmtp")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "carerix_smtp"]


def run_cxsmtp(
    *args: str, input: str | None = None, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the real ``cxsmtp`` in a subprocess (environment of the test, plus ``env``)."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run(
        [*cxsmtp_argv(), *args],
        input=input,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def cxsmtp():
    return run_cxsmtp


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def tls_ca():
    import trustme

    return trustme.CA()


@pytest.fixture(scope="session")
def ca_file(tls_ca, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="session")
def server_ssl_context(tls_ca):
    import ssl

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca.issue_cert("localhost", "127.0.0.1", "::1").configure_cert(ctx)
    return ctx


@pytest.fixture
def sink_factory() -> Iterator[Any]:
    from carerix_smtp.sink.config import SinkConfig
    from carerix_smtp.sink.server import Sink

    sinks: list[Sink] = []

    def start(**kw: Any) -> Any:
        kw.setdefault("fsync", False)
        sink = Sink(SinkConfig(**kw)).start()
        sinks.append(sink)
        return sink

    yield start
    for sink in sinks:
        sink.stop()
