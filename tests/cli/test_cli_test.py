"""``cxsmtp test``: exit codes and output, human and --json, through Typer's runner and
as a real subprocess of the installed ``cxsmtp``."""

from __future__ import annotations

import io
import json
import ssl
from pathlib import Path
from typing import Any

import pytest
from conftest import Isolated, run_cxsmtp
from dns_server import dns_server
from servers import PASSWORD, USER, ScriptServer, closed_port, hang, smtp_server
from typer.testing import CliRunner

from carerix_smtp.cli.app import app
from carerix_smtp.cli.test_cmd import render_report
from carerix_smtp.config.file import Config, ServerEntry, Settings, save_config
from carerix_smtp.config.tls import Security
from carerix_smtp.probe.report import PhaseResult, ProbeReport

runner = CliRunner()


def configure(isolated: Isolated, host: str, name: str = "local", **kw: Any) -> Path:
    kw.setdefault("connect_timeout", 5.0)
    kw.setdefault("command_timeout", 5.0)
    entry = ServerEntry(name=name, host=host, **kw)
    config = Config(path=isolated.config, settings=Settings(default_server=name))
    config.servers[name] = entry
    save_config(config)
    return isolated.config


def invoke(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, list(args), env=env)


def test_passing_run_human(isolated: Isolated) -> None:
    with smtp_server() as server:
        configure(isolated, server.host, security=Security.NONE)
        result = invoke("test")
    assert result.exit_code == 0, result.output
    assert "local ([127.0.0.1]:" in result.output
    assert "✔ greeting" in result.output and "220" in result.output
    assert "✔ quit" in result.output
    assert result.output.rstrip().endswith("PASSED")


def test_passing_run_json_subprocess_delivers(
    isolated: Isolated, ca_file: Path, server_ssl_context: ssl.SSLContext
) -> None:
    with smtp_server(starttls=server_ssl_context, auth=True) as server:
        config = configure(isolated, server.host, username=USER, ca_file=str(ca_file))
        result = run_cxsmtp(
            "--config", str(config), "test", "local", "--to", "me@example.com", "--json",
            env={"CXSMTP_PASSWORD_LOCAL": PASSWORD},
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["server"] == "local" and data["passed"] is True and data["ok"] is True
    assert data["port"] == server.port and data["host"] == server.host
    assert [p["name"] for p in data["phases"]][-4:] == ["mail", "rcpt", "data", "quit"]
    assert {p["status"] for p in data["phases"]} == {"ok"}
    assert set(data["phases"][0]) == {"name", "status", "ms", "detail", "error", "hint"}
    assert PASSWORD not in result.stdout + result.stderr
    assert server.handler.messages[0].rcpt_tos == ["me@example.com"]


def test_refused_human_and_json(isolated: Isolated) -> None:
    port = closed_port()
    configure(isolated, f"[127.0.0.1]:{port}", security=Security.NONE)
    human = invoke("test", "local")
    assert human.exit_code == 69
    assert "✘ connect" in human.output and "– greeting" in human.output
    assert "hint: nothing accepts connections on port" in human.output
    assert "FAILED (exit 69)" in human.output
    result = run_cxsmtp("test", "local", "--json")
    assert result.returncode == 69
    data = json.loads(result.stdout)
    assert data["passed"] is False and "connection refused" in data["hint"]
    connect = next(p for p in data["phases"] if p["name"] == "connect")
    assert connect["status"] == "failed" and connect["hint"] == data["hint"]


def test_mx_hint_in_subprocess_with_loopback_dns(isolated: Isolated) -> None:
    port = closed_port()
    records = {
        "smtp.example.test": {"MX": [(10, "mx.example.test")]},
        "mx.example.test": {"A": ["127.0.0.1"]},
    }
    with dns_server(records) as dns:
        configure(isolated, f"smtp.example.test:{port}")
        result = run_cxsmtp("test", env={"CXSMTP_NAMESERVER": dns.nameserver})
    assert result.returncode == 69, result.stderr
    assert "MX 10 mx.example.test (127.0.0.1)" in result.stdout
    assert f"try '[smtp.example.test]:{port}'" in result.stdout


def test_wrong_password_exit_77(
    isolated: Isolated, ca_file: Path, server_ssl_context: ssl.SSLContext
) -> None:
    with smtp_server(starttls=server_ssl_context, auth=True) as server:
        configure(isolated, server.host, username=USER, ca_file=str(ca_file))
        result = invoke("test", "--json", env={"CXSMTP_PASSWORD_LOCAL": "wrong-one"})
    assert result.exit_code == 77
    data = json.loads(result.stdout)
    assert "535" in data["hint"] and "wrong-one" not in result.output


def test_no_password_exit_78_after_tls(
    isolated: Isolated, ca_file: Path, server_ssl_context: ssl.SSLContext
) -> None:
    with smtp_server(starttls=server_ssl_context, auth=True) as server:
        configure(isolated, server.host, username=USER, ca_file=str(ca_file))
        result = invoke("test")
    assert result.exit_code == 78
    assert "✔ tls" in result.output and "✘ auth" in result.output
    assert "CXSMTP_PASSWORD_LOCAL" in result.output


def test_untrusted_certificate_exit_76(
    isolated: Isolated, server_ssl_context: ssl.SSLContext
) -> None:
    with smtp_server(implicit_tls=server_ssl_context) as server:
        configure(isolated, server.host, security=Security.SSL)
        result = run_cxsmtp("test")
    assert result.returncode == 76
    assert "✘ tls" in result.stdout and "--ca-file" in result.stdout


def test_timeout_option_bounds_a_hung_server(isolated: Isolated) -> None:
    with ScriptServer(hang) as server:
        configure(isolated, server.host, security=Security.NONE, command_timeout=300.0)
        result = invoke("test", "--timeout", "0.3", "--json")
    assert result.exit_code == 69
    data = json.loads(result.stdout)
    greeting = next(p for p in data["phases"] if p["name"] == "greeting")
    assert greeting["status"] == "failed" and greeting["ms"] < 3000


def test_wait_until_ready_retries_then_reports(isolated: Isolated) -> None:
    configure(isolated, f"[127.0.0.1]:{closed_port()}", security=Security.NONE)
    result = invoke("test", "--wait-until-ready", "0.2")
    assert result.exit_code == 69
    assert "attempt 1 failed at connect" in result.output  # the retry note (stderr)
    assert "FAILED after 2 attempts (exit 69)" in result.output


def test_unknown_server_and_bad_duration(isolated: Isolated) -> None:
    configure(isolated, "[127.0.0.1]:2525")
    result = run_cxsmtp("test", "nosuch")
    assert result.returncode == 78
    assert "cxsmtp: error: no server named 'nosuch'" in result.stderr
    bad = invoke("test", "--wait-until-ready", "soon")
    assert bad.exit_code == 64 and "invalid duration" in bad.output


def test_help_documents_exit_codes() -> None:
    result = invoke("test", "--help")
    assert result.exit_code == 0
    for text in ("--wait-until-ready", "--spool", "68 host name not found", "77 authentication"):
        assert text in result.output


def test_rich_table_on_a_terminal() -> None:
    from rich.console import Console

    report = ProbeReport("xs4all", "[smtp.xs4all.nl]:587", 587, exit_code=77, hint="check it")
    report.phases = [
        PhaseResult("resolve", "ok", 1.0, summary="1.2.3.4"),
        PhaseResult("auth", "failed", 12.0, error="535 refused"),
        PhaseResult("quit", "skipped"),
    ]
    out = io.StringIO()
    render_report(report, terminal=True, console=Console(file=out, width=120, no_color=True))
    text = out.getvalue()
    assert "xs4all ([smtp.xs4all.nl]:587)" in text and "535 refused" in text
    assert "hint: check it" in text and "FAILED (exit 77)" in text


@pytest.mark.parametrize("flag", ["--json", None])
def test_password_never_printed(
    isolated: Isolated, ca_file: Path, server_ssl_context: ssl.SSLContext, flag: str | None
) -> None:
    with smtp_server(starttls=server_ssl_context, auth=True) as server:
        configure(isolated, server.host, username=USER, ca_file=str(ca_file))
        args = ["--debug", "test", *([flag] if flag else [])]
        result = run_cxsmtp(*args, env={"CXSMTP_PASSWORD_LOCAL": PASSWORD})
    assert result.returncode == 0, result.stderr
    assert PASSWORD not in result.stdout and PASSWORD not in result.stderr
    assert "AUTH PLAIN <credentials hidden>" in result.stderr


def test_bad_addresses_and_missing_spool_are_usage_errors(
    isolated: Isolated, tmp_path: Path
) -> None:
    configure(isolated, "[127.0.0.1]:2525")
    result = invoke("test", "--to", "nobody")
    assert result.exit_code == 64 and "not an e-mail address" in result.output
    missing = invoke("test", "--spool", str(tmp_path / "nope"))
    assert missing.exit_code == 64


def test_spool_above_size_exit_65(isolated: Isolated, tmp_path: Path) -> None:
    (tmp_path / "huge.eml").write_bytes(b"x" * 4000)
    with smtp_server(data_size_limit=1000) as server:
        configure(isolated, server.host, security=Security.NONE)
        result = invoke("test", "--spool", str(tmp_path))
    assert result.exit_code == 65
    assert "✘ size" in result.output and "huge.eml" in result.output
