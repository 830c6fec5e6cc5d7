"""``cxsmtp sink``: option handling in-process, and the real command as a subprocess."""

from __future__ import annotations

import os
import signal
import smtplib
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from conftest import cxsmtp_argv
from typer.testing import CliRunner

from carerix_smtp.cli.app import app
from carerix_smtp.cli.sink_cmd import register
from carerix_smtp.errors import UsageError

MSG = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nHello.\r\n"


def test_help_has_an_example() -> None:
    result = CliRunner().invoke(app, ["sink", "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output
    assert "cxsmtp sink --listen 127.0.0.1:2525" in result.output
    assert "--port-file" in result.output and "--fail" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--fail", "eod:250"], "invalid fail rule 'eod:250'", id="fail-code"),
        pytest.param(["--drop", "later"], "invalid rule 'later'", id="drop-phase"),
        pytest.param(["--listen", "::1:25"], "put IPv6 in brackets", id="listen-syntax"),
        pytest.param(["--listen", "0.0.0.0:0"], "refusing to listen on 0.0.0.0:0", id="remote"),
        pytest.param(["--ca-out", "ca.pem"], "needs TLS", id="ca-out-without-tls"),
        pytest.param(["--auth", "nocolon"], "USER:PASSWORD", id="auth-syntax"),
    ],
)
def test_usage_errors_exit_64(args: list[str], message: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["sink", "--out", str(tmp_path / "mail"), *args])
    assert result.exit_code == 64, result.output
    assert "cxsmtp: error: " in result.output
    assert message in result.output
    assert "listening" not in result.output


def test_remote_refusal_hints_allow_remote(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["sink", "--listen", "0.0.0.0:0"])
    assert result.exit_code == 64
    assert "--allow-remote" in result.output


def test_register_on_a_fresh_app() -> None:
    fresh = typer.Typer()
    register(fresh)
    result = CliRunner().invoke(fresh, ["--fail", "bogus"])
    assert isinstance(result.exception, UsageError)
    assert "accepted: PHASE:CODE" in str(result.exception)


# --------------------------------------------------------------------- subprocess


class RunningSink:
    def __init__(self, proc: subprocess.Popen[str], port_file: Path) -> None:
        self.proc = proc
        self.banner = self.readline()  # printed once listening (after the port file)
        self.port = int(port_file.read_text())

    def readline(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, (
            f"cxsmtp sink ended early: {self.proc.stderr.read() if self.proc.stderr else ''}"
        )
        return line


@pytest.fixture
def start_sink(tmp_path: Path) -> Iterator[object]:
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> RunningSink:
        port_file = tmp_path / "port"
        proc = subprocess.Popen(
            [
                *cxsmtp_argv(),
                "sink",
                "--listen",
                "127.0.0.1:0",
                "--port-file",
                str(port_file),
                "--out",
                str(tmp_path / "mail"),
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
        )
        procs.append(proc)
        return RunningSink(proc, port_file)

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_subprocess_stores_and_stops_cleanly(start_sink, tmp_path: Path, signum: int) -> None:
    sink = start_sink()
    assert sink.banner.strip() == (
        f"listening on 127.0.0.1:{sink.port}, storing in {tmp_path / 'mail'}"
    )
    with smtplib.SMTP("127.0.0.1", sink.port, local_hostname="client.test", timeout=5) as smtp:
        assert smtp.sendmail("a@example.com", ["b@example.com"], MSG) == {}
    line = sink.readline()  # printed after the file is stored
    assert line.rstrip().endswith(f"a@example.com -> b@example.com ({len(MSG)} bytes)")
    (stored,) = (tmp_path / "mail").glob("*.eml")
    assert stored.read_bytes().endswith(MSG)
    sink.proc.send_signal(signum)
    out, err = sink.proc.communicate(timeout=10)
    assert sink.proc.returncode == 0, err
    assert out.strip().splitlines()[-1] == "stopped: 1 message received"
    assert err == ""


@pytest.mark.timeout(30)
def test_subprocess_tls_auth_and_fault(start_sink, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    sink = start_sink(
        "--tls",
        "implicit",
        "--ca-out",
        str(ca),
        "--auth",
        "demo:s3cret",
        "--auth-required",
        "--fail",
        "rcpt:550:pattern=*@bad.example",
        "--quiet",
    )
    assert "TLS implicit" in sink.banner and "AUTH required for demo" in sink.banner
    assert sink.readline().strip() == f"CA certificate for clients: {ca}"
    context = ssl.create_default_context(cafile=str(ca))
    with smtplib.SMTP_SSL(
        "127.0.0.1", sink.port, local_hostname="client.test", timeout=5, context=context
    ) as smtp:
        smtp.login("demo", "s3cret")
        refused = smtp.sendmail("a@example.com", ["b@example.com", "c@bad.example"], MSG)
    assert set(refused) == {"c@bad.example"}
    sink.proc.terminate()
    out, err = sink.proc.communicate(timeout=10)
    assert sink.proc.returncode == 0, err
    # --quiet: after the banner and the CA line (read above), only the count
    assert out == "stopped: 1 message received\n"
    assert "s3cret" not in out + err
    (stored,) = (tmp_path / "mail").glob("*.eml")
    assert stored.read_bytes().startswith(
        b"X-Cxsmtp-Envelope-From: a@example.com\r\nX-Cxsmtp-Envelope-To: b@example.com\r\n"
    )
