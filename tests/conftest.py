"""Shared fixtures: an isolated config and state dir for every test, a test keyring,
helpers to run the real ``cxsmtp`` as a subprocess, and trustme certificates."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
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
    # A developer's shared ledger, default spool or libpq password never reaches a test.
    for name in ("CXSMTP_LEDGER_URL", "CXSMTP_SPOOL", "PGPASSWORD", "PGPASSFILE"):
        monkeypatch.delenv(name, raising=False)
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


TRACEBACK = "Traceback (most recent call last)"


def assert_no_traceback(argv: Sequence[str], stderr: str) -> None:
    """cron mails stderr: a traceback may reach it only when ``--debug`` asked for one
    (issue 10).  Every CLI run of the suite goes through here."""
    if "--debug" in argv:
        return
    assert TRACEBACK not in stderr, (
        f"cxsmtp {' '.join(argv)} printed a traceback without --debug:\n{stderr}"
    )


def run_cxsmtp(
    *args: str, input: str | None = None, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the real ``cxsmtp`` in a subprocess (environment of the test, plus ``env``);
    fails the test if a traceback reached stderr without ``--debug``."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    result = subprocess.run(
        [*cxsmtp_argv(), *args],
        input=input,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        check=False,
    )
    assert_no_traceback(args, result.stderr)
    return result


# `cxsmtp send` off a terminal starts every text line with the local ISO 8601 time
# (issue 11): ``2026-11-30T03:10:00+01:00 cxsmtp: error: ...``.
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d ", re.MULTILINE)


def strip_timestamps(text: str) -> str:
    """``text`` (what ``send`` printed on a pipe) without the time stamps; fails the
    test if a non-empty line has none, so the stamps stay checked where removed."""
    for line in text.splitlines():
        assert not line.strip() or TIMESTAMP.match(line), f"line without a time stamp: {line!r}"
    return TIMESTAMP.sub("", text)


def error_lines(stderr: str) -> list[str]:
    """The non-empty lines of ``send``'s stderr, time stamps removed (see above)."""
    return [line for line in strip_timestamps(stderr).splitlines() if line.strip()]


@pytest.fixture(autouse=True)
def no_traceback_from_cli_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same check for every ``CliRunner.invoke`` of the suite; and cxsmtp's own
    app lets no exception but SystemExit escape (its guard turns them into one line)."""
    testing = sys.modules.get("typer.testing")  # imported by the test modules that use it
    if testing is None:
        return
    original = testing.CliRunner.invoke

    def invoke(self: Any, app: Any, args: Any = None, *rest: Any, **kw: Any) -> Any:
        result = original(self, app, args, *rest, **kw)
        argv = shlex.split(args) if isinstance(args, str) else [str(a) for a in args or ()]
        assert_no_traceback(argv, _runner_output(result))
        escaped = result.exception
        cli = sys.modules.get("carerix_smtp.cli.app")
        ours = cli is not None and app is cli.app
        if ours and escaped is not None and not isinstance(escaped, SystemExit):
            raise AssertionError(
                f"cxsmtp {' '.join(argv)}: {type(escaped).__name__} escaped the CLI's guard"
            ) from escaped
        return result

    monkeypatch.setattr(testing.CliRunner, "invoke", invoke)


def _runner_output(result: Any) -> str:
    """What a CliRunner run printed (stderr is separate in click >= 8.2, else mixed in)."""
    try:
        stderr = result.stderr
    except ValueError:  # stderr not captured separately
        stderr = ""
    return f"{result.output}{stderr}"


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


@pytest.fixture
def configured(isolated: Isolated, sink_factory: Any) -> Any:
    """``configured(**sink_options)``: a running sink and the isolated config file with one
    server entry, "local", pointing at it (``entry={...}`` sets the entry's keys)."""
    from servers import entry_for

    from carerix_smtp.config.file import Config, save_config

    def make(**sink_kw: Any) -> Any:
        entry_kw = sink_kw.pop("entry", {})
        sink = sink_factory(**sink_kw)
        save_config(Config(path=isolated.config, servers={"local": entry_for(sink, **entry_kw)}))
        return sink

    return make


@pytest.fixture
def listed(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often each spool directory is listed (every listing goes through
    SpoolLayout.listing, SpoolLayout.scandir too)."""
    from carerix_smtp.spool import layout as layout_module

    counts: Counter[str] = Counter()
    real = layout_module.SpoolLayout.listing

    def counting(
        self: layout_module.SpoolLayout, rel: str
    ) -> AbstractContextManager[Iterator[os.DirEntry[str]]]:
        counts[rel or "."] += 1
        return real(self, rel)

    monkeypatch.setattr(layout_module.SpoolLayout, "listing", counting)
    return counts
