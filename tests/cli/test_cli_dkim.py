"""``cxsmtp dkim add/list/show/remove``: exit codes, output, the stored key file, and the
printed TXT record as the loopback DNS server serves it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import Isolated, run_cxsmtp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from dns_server import dns_server
from typer.testing import CliRunner

from carerix_smtp.cli.app import app
from carerix_smtp.config.dkim import public_txt
from carerix_smtp.config.file import load_config
from carerix_smtp.probe.txt import lookup_txt
from carerix_smtp.smtp.resolve import make_resolver

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def fields(output: str) -> dict[str, str]:
    out = {}
    for line in output.splitlines():
        name, _, value = line.partition("  ")
        if name and value and " " not in name:
            out[name] = value.strip()
    return out


def pem_file(tmp_path: Path, private: object, mode: int = 0o600) -> Path:
    path = tmp_path / "given.pem"
    path.write_bytes(
        private.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(mode)
    return path


def test_generate_rsa_stores_0600_and_prints_the_record_dns_serves(isolated: Isolated) -> None:
    result = invoke("dkim", "add", "Example.TEST", "--selector", "s1", "--generate")
    assert result.exit_code == 0, result.output
    stored = isolated.config.parent / "dkim" / "example.test.s1.pem"
    assert f"generated a new rsa-sha256 key for example.test in {stored}" in result.output
    assert os.stat(stored).st_mode & 0o777 == 0o600
    key = load_config(isolated.config).dkim["example.test"]
    assert (key.selector, key.key_file, key.algorithm) == ("s1", stored, "rsa-sha256")
    shown = fields(result.output)
    assert shown["name"] == "s1._domainkey.example.test"
    assert shown["value"] == public_txt(key) and shown["value"].startswith("v=DKIM1; k=rsa; p=")
    strings = json.loads("[" + shown["strings"].replace('" "', '", "') + "]")
    assert len(strings) == 2 and all(len(s) <= 255 for s in strings)  # RSA-2048: 2 strings
    assert shown["zone"].startswith('s1._domainkey.example.test. IN TXT ( "v=DKIM1;')
    # published as printed, the DNS answer joins back to the same record
    with dns_server({shown["name"]: {"TXT": [shown["value"]]}}) as dns:
        found = lookup_txt(shown["name"], make_resolver([dns.nameserver]), 2.0)
    assert found == [shown["value"]]
    assert "BEGIN" not in result.output and "PRIVATE" not in result.output


def test_generate_ed25519(isolated: Isolated) -> None:
    result = invoke("dkim", "add", "ed.test", "-s", "s2", "--generate", "--type", "ed25519")
    assert result.exit_code == 0, result.output
    assert fields(result.output)["value"].startswith("v=DKIM1; k=ed25519; p=")
    assert load_config(isolated.config).dkim["ed.test"].algorithm == "ed25519-sha256"


@pytest.mark.parametrize(
    "private",
    [rsa.generate_private_key(65537, 2048), ed25519.Ed25519PrivateKey.generate()],
    ids=["rsa", "ed25519"],
)
def test_add_given_key_copies_it(isolated: Isolated, tmp_path: Path, private: object) -> None:
    given = pem_file(tmp_path, private)
    result = invoke("dkim", "add", "example.test", "-s", "s1", "--key", str(given))
    assert result.exit_code == 0, result.output
    key = load_config(isolated.config).dkim["example.test"]
    assert key.key_file.read_bytes() == given.read_bytes() and key.key_file != given
    assert os.stat(key.key_file).st_mode & 0o777 == 0o600


def test_given_key_wider_than_0600_is_refused(isolated: Isolated, tmp_path: Path) -> None:
    given = pem_file(tmp_path, ed25519.Ed25519PrivateKey.generate(), 0o644)
    result = run_cxsmtp("dkim", "add", "example.test", "-s", "s1", "--key", str(given))
    assert result.returncode == 78
    assert result.stderr.splitlines() == [
        f"cxsmtp: error: DKIM key file {given} has mode 0644; only 0600 or narrower is "
        f"accepted (chmod 600 {given})"
    ]
    assert not (isolated.config.parent / "dkim").exists() and not isolated.config.exists()


def test_given_file_not_a_key(isolated: Isolated, tmp_path: Path) -> None:
    given = tmp_path / "x.pem"
    given.write_text("hello\n")
    given.chmod(0o600)
    result = invoke("dkim", "add", "example.test", "-s", "s1", "--key", str(given))
    assert result.exit_code == 78
    assert f"DKIM key file {given} is not a PEM private key" in result.output
    assert not (isolated.config.parent / "dkim" / "example.test.s1.pem").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-s", "s1"], "give either --key PEM or --generate"),
        (["-s", "s1", "--generate", "--key", "/x"], "give either --key PEM or --generate"),
        (["-s", "s1", "--generate", "--type", "dsa"], "--type 'dsa': accepted rsa, ed25519"),
        (["-s", "s1", "--generate", "--bits", "512"], "--bits 512: accepted 1024 to 8192"),
        (["-s", "s1", "--generate", "--type", "ed25519", "--bits", "2048"], "--bits is for RSA"),
        (["-s", "bad sel", "--generate"], "selector 'bad sel' must be"),
    ],
)
def test_usage_errors(isolated: Isolated, args: list[str], message: str) -> None:
    result = invoke("dkim", "add", "example.test", *args)
    assert result.exit_code == 64, result.output
    assert message in result.output
    assert not isolated.config.exists()


def test_bad_domain_is_a_usage_error(isolated: Isolated) -> None:
    result = run_cxsmtp("dkim", "add", "localhost", "-s", "s1", "--generate", "--type", "ed25519")
    assert result.returncode == 64
    assert result.stderr.splitlines() == [
        "cxsmtp: error: DKIM domain: 'localhost' is not a domain name such as example.com"
    ]


def test_list_show_replace_remove(isolated: Isolated) -> None:
    assert "no DKIM keys yet" in invoke("dkim", "list").output
    invoke("dkim", "add", "b.test", "-s", "s1", "--generate", "--type", "ed25519")
    invoke("dkim", "add", "a.test", "-s", "s1", "--generate", "--type", "ed25519")
    listed = invoke("dkim", "list", "--json")
    assert listed.exit_code == 0
    assert [row["domain"] for row in json.loads(listed.output)] == ["a.test", "b.test"]
    shown = invoke("dkim", "show", "A.test", "--json")
    data = json.loads(shown.output)
    assert data["name"] == "s1._domainkey.a.test" and data["algorithm"] == "ed25519-sha256"
    old_file = Path(data["key_file"])
    replaced = invoke("dkim", "add", "a.test", "-s", "s2", "--generate", "--type", "ed25519")
    assert replaced.exit_code == 0 and "it replaces selector 's1'" in replaced.output
    assert not old_file.exists()
    assert json.loads(invoke("dkim", "show", "a.test", "--json").output)["selector"] == "s2"
    removed = invoke("dkim", "remove", "a.test")
    assert removed.exit_code == 0
    assert "removed the DKIM key for a.test (selector s2)" in removed.output
    assert list(load_config(isolated.config).dkim) == ["b.test"]
    assert [p.name for p in (isolated.config.parent / "dkim").iterdir()] == ["b.test.s1.pem"]


def test_show_and_remove_unknown_domain(isolated: Isolated) -> None:
    for command in ("show", "remove"):
        result = run_cxsmtp("dkim", command, "nope.test")
        assert result.returncode == 78
        assert result.stderr.splitlines() == [
            f"cxsmtp: error: no DKIM key for 'nope.test' in {isolated.config} "
            "(known: none yet; add one with 'cxsmtp dkim add')"
        ]


def test_show_with_a_key_that_became_unreadable(isolated: Isolated) -> None:
    invoke("dkim", "add", "a.test", "-s", "s1", "--generate", "--type", "ed25519")
    key_file = load_config(isolated.config).dkim["a.test"].key_file
    key_file.chmod(0o640)
    result = run_cxsmtp("dkim", "show", "a.test")
    assert result.returncode == 78
    assert result.stderr.splitlines() == [
        f"cxsmtp: error: DKIM key file {key_file} has mode 0640; only 0600 or narrower is "
        f"accepted (chmod 600 {key_file})"
    ]


def test_help_has_an_example() -> None:
    result = run_cxsmtp("dkim", "add", "--help")
    assert result.returncode == 0 and "Example: cxsmtp dkim add example.com" in result.stdout


# --- `cxsmtp test --to` signs its test message as `send` would ---------------------------


def _test_to(isolated: Isolated, extra_setup: Any = None) -> tuple[Any, list[Any], list[bool]]:
    """``cxsmtp test local --to ... --from news@example.test`` against aiosmtpd and the
    loopback DNS server -> (result, messages received, dkim.verify of each)."""
    import dkim
    from servers import smtp_server

    from carerix_smtp.config.file import ServerEntry, save_config
    from carerix_smtp.config.tls import Security

    invoke("dkim", "add", "example.test", "-s", "s1", "--generate")
    config = load_config(isolated.config)
    key = config.dkim["example.test"]
    records = {
        "example.test": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
        key.record_name: {"TXT": [public_txt(key)]},
        "_dmarc.example.test": {"TXT": ["v=DMARC1; p=reject"]},
    }
    if extra_setup is not None:
        extra_setup(key)
    with dns_server(records) as dns, smtp_server() as server:
        config.servers["local"] = ServerEntry(
            name="local", host=server.host, security=Security.NONE, connect_timeout=5.0
        )
        save_config(config)
        result = invoke_env(
            {"CXSMTP_NAMESERVER": dns.nameserver},
            "test", "local", "--to", "rcpt@y.test", "--from", "news@example.test",
            "--timeout", "2",
        )  # fmt: skip
        received = list(server.handler.messages)
        lookup = _dnsfunc(dns.nameserver)
        verified = [dkim.verify(m.content, dnsfunc=lookup) for m in received]
    return result, received, verified


def invoke_env(env: dict[str, str], *args: str):
    return runner.invoke(app, list(args), env=env)


def _dnsfunc(nameserver: str) -> Any:
    resolver = make_resolver([nameserver])

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        found = lookup_txt(name.decode().rstrip("."), resolver, 2.0)
        return found[0].encode() if found else None

    return lookup


def test_test_to_sends_a_signed_message_that_verifies(isolated: Isolated) -> None:
    result, received, verified = _test_to(isolated)
    assert result.exit_code == 0, result.output
    (message,) = received
    assert message.content.startswith(b"DKIM-Signature: v=1; a=rsa-sha256;")
    assert verified == [True]


def test_test_to_with_an_unusable_key_reports_it_and_sends_nothing(isolated: Isolated) -> None:
    result, received, _ = _test_to(isolated, lambda key: key.key_file.chmod(0o644))
    assert result.exit_code == 78, result.output
    assert received == []
    assert "cannot DKIM-sign for example.test" in result.output and "0644" in result.output
