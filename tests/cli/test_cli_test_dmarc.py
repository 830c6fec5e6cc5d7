"""``cxsmtp test NAME --from ADDR``: the spf, dkim and dmarc phases against a real SMTP
server (aiosmtpd) and the loopback DNS server, with the key configured through
``cxsmtp dkim add``; exit codes and output, human and --json."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import Isolated, run_cxsmtp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dns_server import dns_server
from servers import smtp_server
from typer.testing import CliRunner

from carerix_smtp.cli.app import app
from carerix_smtp.config.dkim import DkimKey
from carerix_smtp.config.file import Config, ServerEntry, Settings, save_config
from carerix_smtp.config.tls import Security

runner = CliRunner()

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
SPF_PASS = "v=spf1 ip4:127.0.0.1 -all"
SPF_SOFT = "v=spf1 ~all"


def txt_for(key: rsa.RSAPrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()


def configure(
    isolated: Isolated, host: str, key_dir: Path | None = None, key_mode: int = 0o600
) -> None:
    """A server entry ``local`` for ``host``; with ``key_dir``, KEY as the DKIM key of
    example.test (selector s1) in a ``[dkim."example.test"]`` table, as ``cxsmtp dkim
    add`` writes it."""
    entry = ServerEntry(
        name="local", host=host, security=Security.NONE, connect_timeout=5.0, command_timeout=5.0
    )
    config = Config(path=isolated.config, settings=Settings(default_server="local"))
    config.servers["local"] = entry
    if key_dir is not None:
        pem = key_dir / "example.test.s1.pem"
        pem.write_bytes(
            KEY.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        pem.chmod(key_mode)
        config.dkim["example.test"] = DkimKey("example.test", "s1", pem)
    save_config(config)


def zone(spf: str = SPF_PASS, dkim: str | None = None, dmarc: str | None = None) -> dict[str, Any]:
    records: dict[str, Any] = {"example.test": {"TXT": [spf]}}
    if dkim is not None:
        records["s1._domainkey.example.test"] = {"TXT": [dkim]}
    if dmarc is not None:
        records["_dmarc.example.test"] = {"TXT": [dmarc]}
    return records


def probe(
    isolated: Isolated,
    records: dict[str, Any],
    sender: str = "me@example.test",
    key_dir: Path | None = None,
) -> tuple[int, str]:
    """``cxsmtp test local --from SENDER`` (human output) -> (exit code, output)."""
    with dns_server(records) as dns, smtp_server() as server:
        configure(isolated, server.host, key_dir)
        result = runner.invoke(
            app,
            ["test", "local", "--from", sender, "--timeout", "2"],
            env={"CXSMTP_NAMESERVER": dns.nameserver},
        )
    return result.exit_code, result.output


def probe_json(
    isolated: Isolated,
    records: dict[str, Any],
    sender: str = "me@example.test",
    key_dir: Path | None = None,
    key_mode: int = 0o600,
) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """The same with --json -> (exit code, the report, its phases by name)."""
    with dns_server(records) as dns, smtp_server() as server:
        configure(isolated, server.host, key_dir, key_mode)
        result = runner.invoke(
            app,
            ["test", "local", "--from", sender, "--timeout", "2", "--json"],
            env={"CXSMTP_NAMESERVER": dns.nameserver},
        )
    data = json.loads(result.output)
    return result.exit_code, data, {p["name"]: p for p in data["phases"]}


# --- passing ---------------------------------------------------------------------------


def test_matching_key_and_aligned_pass(isolated: Isolated, tmp_path: Path) -> None:
    code, output = probe(
        isolated, zone(dkim=txt_for(KEY), dmarc="v=DMARC1; p=reject"), key_dir=tmp_path
    )
    assert code == 0, output
    lines = output.splitlines()
    assert [line.split()[1] for line in lines[-5:-1]] == ["spf", "dkim", "dmarc", "quit"]
    assert "✔ dkim" in output and "the key at s1._domainkey.example.test matches" in output
    assert (
        "p=reject at _dmarc.example.test; SPF pass, aligned (relaxed); "
        "DKIM pass, aligned (relaxed) — DMARC pass" in output
    )
    assert "note (d" not in output and output.rstrip().endswith("PASSED")


def test_json_carries_the_phases_like_spf(isolated: Isolated, tmp_path: Path) -> None:
    code, report, phases = probe_json(
        isolated,
        zone(dkim=txt_for(KEY), dmarc="v=DMARC1; p=quarantine; adkim=s; aspf=s"),
        key_dir=tmp_path,
    )
    assert code == 0 and report["passed"] is True
    names = [p["name"] for p in report["phases"]]
    assert names[-4:] == ["spf", "dkim", "dmarc", "quit"]
    for name in ("dkim", "dmarc"):
        assert set(phases[name]) == set(phases["spf"]) and phases[name]["status"] == "ok"
    dkim = phases["dkim"]["detail"]
    assert dkim["result"] == "pass" and dkim["domain"] == "example.test"
    assert dkim["selector"] == "s1" and dkim["record"] == txt_for(KEY)
    dmarc = phases["dmarc"]["detail"]
    assert (dmarc["result"], dmarc["policy"], dmarc["adkim"], dmarc["aspf"]) == (
        "pass", "quarantine", "s", "s"
    )  # fmt: skip
    assert dmarc["spf"] == {
        "domain": "example.test",
        "result": "pass",
        "pass": True,
        "aligned": True,
    }
    assert dmarc["dkim"]["aligned"] is True and dmarc["dkim"]["pass"] is True


def test_no_key_configured_is_a_note(isolated: Isolated) -> None:
    code, output = probe(isolated, zone(dmarc="v=DMARC1; p=reject"))
    assert code == 0, output
    assert "✔ dkim" in output and "no DKIM key configured for example.test" in output
    assert (
        "note (dkim): cxsmtp signs nothing from example.test: cxsmtp dkim add example.test "
        "--selector cxsmtp --generate" in output
    )
    assert "SPF pass, aligned (relaxed); no DKIM — DMARC pass" in output


# --- DKIM failures ---------------------------------------------------------------------


def test_missing_txt(isolated: Isolated, tmp_path: Path) -> None:
    code, report, phases = probe_json(isolated, zone(dmarc="v=DMARC1; p=none"), key_dir=tmp_path)
    assert code == 65 and report["exit_code"] == 65
    dkim = phases["dkim"]
    assert dkim["status"] == "failed" and dkim["detail"]["result"] == "missing"
    assert dkim["error"] == "DKIM missing: no TXT record at s1._domainkey.example.test"
    assert dkim["hint"].startswith("publish this TXT record at s1._domainkey.example.test")
    assert txt_for(KEY) in dkim["hint"] and report["hint"] == dkim["hint"]
    # DMARC still runs: SPF passes aligned, so mail passes DMARC without DKIM.
    assert phases["dmarc"]["status"] == "ok" and phases["dmarc"]["detail"]["result"] == "pass"
    assert phases["quit"]["status"] == "ok"


def test_wrong_key_subprocess(isolated: Isolated, tmp_path: Path) -> None:
    with dns_server(zone(dkim=txt_for(OTHER_KEY))) as dns, smtp_server() as server:
        configure(isolated, server.host, tmp_path)
        result = run_cxsmtp(
            "test", "local", "--from", "me@example.test", "--timeout", "2",
            env={"CXSMTP_NAMESERVER": dns.nameserver},
        )  # fmt: skip
    assert result.returncode == 65, result.stdout + result.stderr
    assert "✘ dkim" in result.stdout
    assert "DKIM mismatch: the key at s1._domainkey.example.test is not the configured" in (
        result.stdout
    )
    assert "hint: s1._domainkey.example.test holds another key than the configured one" in (
        result.stdout
    )
    assert txt_for(KEY) in result.stdout and result.stdout.rstrip().endswith("FAILED (exit 65)")


def test_revoked_key(isolated: Isolated, tmp_path: Path) -> None:
    code, _, phases = probe_json(isolated, zone(dkim="v=DKIM1; k=rsa; p="), key_dir=tmp_path)
    assert code == 65 and phases["dkim"]["detail"]["result"] == "revoked"
    assert "revoked (empty p=)" in phases["dkim"]["error"]


def test_dns_failure_is_temporary(isolated: Isolated, tmp_path: Path) -> None:
    records = zone(dmarc="v=DMARC1; p=none")
    records["s1._domainkey.example.test"] = {"TXT": "servfail"}
    code, _, phases = probe_json(isolated, records, key_dir=tmp_path)
    assert code == 75 and phases["dkim"]["detail"]["result"] == "temperror"
    assert "CXSMTP_NAMESERVER" in phases["dkim"]["hint"]


def test_unreadable_key_is_reported(isolated: Isolated, tmp_path: Path) -> None:
    """A key file others may read is refused (as `send` refuses it): exit 78, named."""
    code, _, phases = probe_json(
        isolated, zone(dkim=txt_for(KEY)), key_dir=tmp_path, key_mode=0o644
    )
    dkim = phases["dkim"]
    assert code == 78 and dkim["status"] == "failed" and dkim["detail"]["result"] == "key-error"
    assert str(tmp_path / "example.test.s1.pem") in dkim["error"] and "0644" in dkim["error"]
    assert "chmod 600" in dkim["error"]
    assert dkim["hint"].startswith("the private key for example.test cannot be used")


# --- DMARC -------------------------------------------------------------------------------


def test_dmarc_missing(isolated: Isolated, tmp_path: Path) -> None:
    code, output = probe(isolated, zone(dkim=txt_for(KEY)), key_dir=tmp_path)
    assert code == 0, output
    assert "✔ dmarc" in output and "no DMARC record (_dmarc.example.test)" in output
    assert (
        "note (dmarc): example.test publishes no DMARC record: publish a TXT record at "
        "_dmarc.example.test such as 'v=DMARC1; p=none; rua=mailto:dmarc-reports@example.test'"
        in output
    )


def test_dmarc_reject_without_aligned_spf(isolated: Isolated) -> None:
    """SPF only softfails for the envelope domain, no DKIM key: p=reject refuses it."""
    code, report, phases = probe_json(isolated, zone(spf=SPF_SOFT, dmarc="v=DMARC1; p=reject"))
    assert code == 65
    assert phases["spf"]["status"] == "ok" and phases["dkim"]["status"] == "ok"
    dmarc = phases["dmarc"]
    assert dmarc["status"] == "failed" and dmarc["detail"]["result"] == "fail"
    assert dmarc["detail"]["spf"]["pass"] is False and dmarc["detail"]["dkim"]["pass"] is False
    assert dmarc["error"] == (
        "DMARC fail for example.test: neither SPF nor DKIM passes aligned (p=reject)"
    )
    hint = dmarc["hint"]
    assert "with p=reject at _dmarc.example.test receivers refuse it;" in hint
    assert "SPF — SPF gives softfail for example.test" in hint
    assert "DKIM — no DKIM key: cxsmtp dkim add example.test --selector cxsmtp --generate" in hint
    assert report["hint"] == hint


def test_dmarc_none_failing_is_a_note(isolated: Isolated) -> None:
    code, _, phases = probe_json(isolated, zone(spf=SPF_SOFT, dmarc="v=DMARC1; p=none"))
    assert code == 0
    dmarc = phases["dmarc"]
    assert dmarc["status"] == "ok" and dmarc["detail"]["result"] == "fail"
    assert "receivers deliver it, but report the failure" in dmarc["hint"]
    assert dmarc["detail"]["policy"] == "none"


def test_malformed_dmarc_record(isolated: Isolated) -> None:
    code, _, phases = probe_json(isolated, zone(dmarc="v=DMARC1; p=always"))
    assert code == 65 and phases["dmarc"]["status"] == "failed"
    assert "p=always: one of none, quarantine, reject" in phases["dmarc"]["error"]
    assert phases["dmarc"]["hint"].startswith("fix the record at _dmarc.example.test")


def test_spf_fail_still_checks_dkim_and_dmarc(isolated: Isolated, tmp_path: Path) -> None:
    """The first failure (spf) sets the exit code and hint; the others still report."""
    code, output = probe(
        isolated,
        zone(spf="v=spf1 ip4:192.0.2.1 -all", dkim=txt_for(KEY), dmarc="v=DMARC1; p=reject"),
        key_dir=tmp_path,
    )
    assert code == 65
    assert "✘ spf" in output and "✔ dkim" in output and "✔ dmarc" in output
    assert "SPF fail; DKIM pass, aligned (relaxed) — DMARC pass" in output
    assert "hint: the SPF record of example.test" in output


@pytest.mark.parametrize(
    ("adkim", "code", "result"),
    [
        pytest.param("s", 65, "fail", id="strict-misaligned"),
        pytest.param("r", 0, "pass", id="relaxed"),
    ],
)
def test_parent_domain_key_alignment(
    isolated: Isolated, tmp_path: Path, adkim: str, code: int, result: str
) -> None:
    """Mail from news.example.test is signed with example.test's key (d=example.test);
    SPF only softfails, so DMARC rests on DKIM alignment under adkim."""
    records = {
        "news.example.test": {"TXT": [SPF_SOFT]},
        "s1._domainkey.example.test": {"TXT": [txt_for(KEY)]},
        "_dmarc.example.test": {"TXT": [f"v=DMARC1; p=quarantine; adkim={adkim}"]},
    }
    exit_code, _, phases = probe_json(
        isolated, records, sender="me@news.example.test", key_dir=tmp_path
    )
    assert exit_code == code
    assert phases["dkim"]["status"] == "ok" and phases["dkim"]["detail"]["domain"] == "example.test"
    dmarc = phases["dmarc"]
    assert dmarc["detail"]["result"] == result
    assert dmarc["detail"]["queried"] == ["_dmarc.news.example.test", "_dmarc.example.test"]
    assert dmarc["detail"]["dkim"] == {
        "domain": "example.test", "result": "pass", "pass": True, "aligned": adkim == "r"
    }  # fmt: skip
    if result == "fail":
        assert dmarc["status"] == "failed"
        assert (
            "DKIM — d=example.test is not aligned with news.example.test (adkim=s): add a key for "
            "news.example.test itself" in dmarc["hint"]
        )
        assert "or relax to adkim=r" in dmarc["hint"]
        assert "receivers put it in the spam folder" in dmarc["hint"]


def test_every_failed_check_carries_its_hint_in_json(isolated: Isolated, tmp_path: Path) -> None:
    """SPF fails first (its hint and exit code lead); DKIM's own failure keeps its hint."""
    records = zone(spf="v=spf1 ip4:192.0.2.1 -all", dmarc="v=DMARC1; p=none")
    code, report, phases = probe_json(isolated, records, key_dir=tmp_path)
    assert code == 65
    assert phases["spf"]["status"] == "failed" and phases["dkim"]["status"] == "failed"
    assert report["hint"] == phases["spf"]["hint"] and "ip4:127.0.0.1" in report["hint"]
    assert phases["dkim"]["hint"].startswith("publish this TXT record at s1._domainkey")
    assert report["error"].startswith("SPF fail for 127.0.0.1 from example.test")


def test_user_flow_dkim_add_publish_then_test(isolated: Isolated) -> None:
    """`cxsmtp dkim add --generate`, publish the value `dkim show` gives (served as
    255-byte strings, as DNS holds it), then `cxsmtp test --from` passes."""
    with dns_server({}) as dns, smtp_server() as server:
        configure(isolated, server.host)
        added = runner.invoke(app, ["dkim", "add", "example.test", "-s", "s1", "--generate"])
        assert added.exit_code == 0, added.output
        shown = runner.invoke(app, ["dkim", "show", "example.test", "--json"])
        value = json.loads(shown.output)["value"]
        assert len(value) > 255  # served as two strings; the check joins them
        dns.records.update(zone(dkim=value, dmarc="v=DMARC1; p=reject; adkim=s; aspf=s"))
        result = runner.invoke(
            app,
            ["test", "local", "--from", "me@example.test", "--timeout", "2"],
            env={"CXSMTP_NAMESERVER": dns.nameserver},
        )
    assert result.exit_code == 0, result.output
    assert "✔ dkim" in result.output
    assert "the key at s1._domainkey.example.test matches" in result.output
    assert "SPF pass, aligned (strict); DKIM pass, aligned (strict) — DMARC pass" in result.output
    assert result.output.rstrip().endswith("PASSED")
