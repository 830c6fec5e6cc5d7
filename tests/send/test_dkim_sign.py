"""DKIM signing in `send` (send/signing.py, smtp/dkim_sign.py): messages sent through
aiosmtpd and verified with dkimpy's verifier against the loopback DNS server; the
streamed relaxed body hash against dkimpy's; unusable keys defer, never send unsigned."""

from __future__ import annotations

import base64
import hashlib
import os
import re
from pathlib import Path
from typing import Any

import dkim
import dns.resolver
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from dkim.canonicalization import Relaxed
from dns_server import dns_server
from hypothesis import given, settings
from hypothesis import strategies as st
from servers import config_for, entry_for, names, record, smtp_server

from carerix_smtp.config.dkim import DkimKey, public_txt
from carerix_smtp.config.file import Config
from carerix_smtp.errors import DkimSignError
from carerix_smtp.send.report import SendOptions
from carerix_smtp.send.run import run_send
from carerix_smtp.send.signing import Signer, message_body_hash
from carerix_smtp.smtp.dkim_sign import RelaxedBodyHash, sign_bytes
from carerix_smtp.smtp.resolve import make_resolver
from carerix_smtp.spool.message import SMALL_FILE, parse_message, read_message

RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED = ed25519.Ed25519PrivateKey.generate()
DOMAIN = "example.test"


def write_key(directory: Path, private: Any, name: str = "dkim.pem") -> Path:
    path = directory / name
    path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def make_key(directory: Path, private: Any = RSA, selector: str = "s1") -> DkimKey:
    algorithm = "ed25519-sha256" if isinstance(private, ed25519.Ed25519PrivateKey) else "rsa-sha256"
    return DkimKey(DOMAIN, selector, write_key(directory, private, f"{selector}.pem"), algorithm)  # type: ignore[arg-type]


def dnsfunc(nameserver: str) -> Any:
    """dkimpy's DNS hook, asking the loopback DNS server with dnspython."""
    resolver = make_resolver([nameserver])

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode().rstrip("."), "TXT")  # type: ignore[union-attr]
        except dns.resolver.NXDOMAIN:
            return None
        return b"".join(b"".join(r.strings) for r in answer)

    return lookup


# The four awkward messages the issue names, plus Bcc (stripped before signing).
MESSAGES = {
    "utf8-subject": (
        "From: Zoë <news@example.test>\r\nTo: a@y.test\r\nSubject: Grüße aus Köln\r\n"
        "Date: Wed, 01 May 2024 12:00:00 +0000\r\nMessage-ID: <1@example.test>\r\n"
        "\r\nhello\r\n"
    ).encode(),
    "folded-header": (
        b"From: news@example.test\r\nTo: a@y.test,\r\n  b@y.test,\r\n\tc@y.test\r\n"
        b"Subject: a long subject\r\n   folded   twice\r\n   and again\r\n"
        b"Date: Wed, 01 May 2024 12:00:00 +0000\r\nMessage-ID: <2@example.test>\r\n"
        b"\r\nbody\r\n"
    ),
    "8bit-body": (
        "From: news@sub.example.test\nTo: a@y.test\nSubject: 8bit\n"
        "MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: 8bit\nMessage-ID: <3@example.test>\n"
        "Date: Wed, 01 May 2024 12:00:00 +0000\n\nÅngström — naïve café  \t\n\n\n"
    ).encode(),
    "lone-dot": (
        b"From: news@example.test\r\nTo: a@y.test\r\nBcc: hidden@z.test\r\n"
        b"Subject: dots\r\nMessage-ID: <4@example.test>\r\n"
        b"Date: Wed, 01 May 2024 12:00:00 +0000\r\n\r\n.\r\n..\r\n.leading\r\nend\r\n"
    ),
}


@pytest.fixture(scope="module")
def dns_zone():
    with dns_server({}) as server:
        yield server


def publish(dns_zone: Any, key: DkimKey) -> Any:
    dns_zone.records.clear()
    dns_zone.records[key.record_name] = {"TXT": [public_txt(key)]}
    return dnsfunc(dns_zone.nameserver)


@pytest.mark.parametrize("private", [RSA, ED], ids=["rsa", "ed25519"])
def test_sent_messages_verify_and_a_changed_body_fails(
    tmp_path: Path, dns_zone: Any, private: Any
) -> None:
    key = make_key(tmp_path, private)
    lookup = publish(dns_zone, key)
    spool = tmp_path / "spool"
    spool.mkdir()
    for name, raw in MESSAGES.items():
        (spool / f"{name}.eml").write_bytes(raw)
    with smtp_server() as server:
        config = config_for(tmp_path, entry_for(server.port))
        config.dkim = {DOMAIN: key}
        summary = run_send(spool, config, SendOptions(), password_source=lambda e: None)
        received = list(server.handler.messages)
    assert (summary.sent, summary.deferred, summary.failed) == (4, 0, 0)
    assert len(received) == 4
    for copy in received:
        data = copy.content
        assert data.startswith(b"DKIM-Signature: v=1; a=" + key.algorithm.encode())
        assert dkim.verify(data, dnsfunc=lookup), data[:300]
        assert b"hidden@z.test" not in data  # Bcc: stripped before signing, not signed
        head, _, body = data.partition(b"\r\n\r\n")
        changed = head + b"\r\n\r\n" + body + b"a line added on the way\r\n"
        assert not dkim.verify(changed, dnsfunc=lookup)
    sig = tags(received[0].content)
    assert sig[b"c"] == b"relaxed/relaxed" and sig[b"d"] == DOMAIN.encode()
    assert sig[b"h"].split(b":").count(b"from") == 2  # From oversigned
    assert [n for n, _ in dns_zone.queries if n == key.record_name]


def test_signed_header_set_is_what_the_message_has(tmp_path: Path, dns_zone: Any) -> None:
    key = make_key(tmp_path)
    raw = (
        b"From: a@example.test\r\nTo: b@y.test\r\nCc: c@y.test\r\nReply-To: r@example.test\r\n"
        b"List-Unsubscribe: <mailto:u@example.test>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        b"X-Other: not signed\r\nReceived: from x\r\nSubject: s\r\n\r\nbody\r\n"
    )
    signed = sign_bytes(key, raw)
    assert tags(signed)[b"h"].split(b":") == [
        b"from", b"to", b"cc", b"reply-to", b"list-unsubscribe", b"list-unsubscribe-post",
        b"subject", b"from",
    ]  # fmt: skip
    assert dkim.verify(signed, dnsfunc=publish(dns_zone, key))


def test_big_message_is_signed_streaming_from_its_file(tmp_path: Path, dns_zone: Any) -> None:
    """Bigger than SMALL_FILE: the body is hashed and sent from the file in blocks."""
    key = make_key(tmp_path)
    line = b"a line with  trailing space \t \r\n" + b"x" * 70 + b"\n"
    body = line * (3 * SMALL_FILE // len(line)) + b"\r\n\r\n  \r\n"
    path = tmp_path / "big.eml"
    path.write_bytes(b"From: a@example.test\nTo: b@y.test\nSubject: big\n\n" + body)
    message = read_message(path)
    assert message.raw is None  # streamed, not in memory
    with Signer(Config(path=tmp_path / "c.toml", dkim={DOMAIN: key})).data(message) as stream:  # type: ignore[union-attr]
        signed = stream.read()
    assert signed.startswith(b"DKIM-Signature:")
    assert dkim.verify(
        signed.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"), dnsfunc=publish(dns_zone, key)
    )


def expected_bh(body: bytes) -> bytes:
    """dkimpy's relaxed body hash of ``body`` as transmitted: an unfinished last line
    gets the CRLF the transport adds."""
    if body and not body.endswith(b"\n"):
        body += b"\r\n"
    return hashlib.sha256(Relaxed.canonicalize_body(body)).digest()


def tags(signed: bytes) -> dict[bytes, bytes]:
    """The DKIM-Signature tags of ``signed`` (its first field), whitespace removed."""
    field = re.match(rb"DKIM-Signature:((?:.|\r\n[ \t])*)\r\n", signed)
    assert field is not None
    parsed = dkim.util.parse_tag_value(field.group(1))  # type: ignore[attr-defined]
    return {k: re.sub(rb"\s+", b"", v) for k, v in parsed.items()}


LINES = st.lists(
    st.tuples(
        st.text(alphabet=" \tab.é", max_size=12).map(lambda s: s.encode()),
        st.sampled_from([b"\r\n", b"\r\n", b""]),
    ),
    max_size=14,
)


@settings(max_examples=300, deadline=None)
@given(parts=LINES, cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8))
def test_streamed_body_hash_equals_dkimpy_at_any_chunk_boundary(
    parts: list[tuple[bytes, bytes]], cuts: list[int]
) -> None:
    """Whitespace runs, trailing whitespace and trailing empty lines cut anywhere."""
    body = b"".join(text + end for text, end in parts)
    hasher = RelaxedBodyHash()
    start = 0
    for cut in [*sorted(c % (len(body) + 1) for c in cuts), len(body)]:
        hasher.update(body[start:cut])
        start = max(start, cut)
    assert hasher.digest() == expected_bh(body)


@pytest.mark.parametrize(
    "body",
    [b"", b"\r\n", b"\r\n\r\n", b" \r\n\t\r\n", b"a", b"a  \t", b"a\r\n\r\n \r\nb\r\n\r\n"],
)
def test_body_hash_edge_cases(body: bytes) -> None:
    message = parse_message(
        b"From: a@example.test\r\nTo: b@y.test\r\n" + (b"\r\n" + body if body else b"")
    )
    assert message_body_hash(message) == expected_bh(body)


def test_bh_is_the_one_dkimpy_computes(tmp_path: Path) -> None:
    key = make_key(tmp_path)
    raw = MESSAGES["8bit-body"].replace(b"\n", b"\r\n")
    ours = sign_bytes(key, raw)
    theirs = dkim.sign(
        raw,
        b"s1",
        DOMAIN.encode(),
        key.key_file.read_bytes(),
        canonicalize=(b"relaxed", b"relaxed"),
    )
    body = raw.split(b"\r\n\r\n", 1)[1]
    assert tags(ours)[b"bh"] == tags(theirs)[b"bh"] == base64.b64encode(expected_bh(body))


# --- keys that cannot be used ----------------------------------------------------------


def test_unreadable_key_defers_with_the_reason(tmp_path: Path) -> None:
    key = make_key(tmp_path)
    os.chmod(key.key_file, 0o644)  # wider than 0600: refused
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "m.eml").write_bytes(MESSAGES["lone-dot"])
    (spool / "other.eml").write_bytes(
        MESSAGES["lone-dot"].replace(b"news@example.test", b"x@other.test")
    )
    with smtp_server() as server:
        config = config_for(tmp_path, entry_for(server.port))
        config.dkim = {DOMAIN: key}
        summary = run_send(spool, config, SendOptions(), password_source=lambda e: None)
        received = list(server.handler.messages)
    assert (summary.sent, summary.deferred) == (1, 1)
    assert [m.mail_from for m in received] == ["x@other.test"]  # unsigned: no key for it
    assert not received[0].content.startswith(b"DKIM-Signature")
    assert names(spool / "deferred") == ["m.eml"]
    text = record(spool, "deferred/m.eml")["recipients"]["pending"]["a@y.test"]["text"]
    assert "cannot DKIM-sign for example.test" in text and str(key.key_file) in text
    assert "0644" in text


def test_signing_deferrals_do_not_stop_the_server(tmp_path: Path) -> None:
    """More unsignable messages in a row than stop_after_deferrals: the server is not
    to blame, so mail from other domains still goes in the same run."""
    key = make_key(tmp_path)
    key.key_file.unlink()
    spool = tmp_path / "spool"
    spool.mkdir()
    for n in range(4):
        (spool / f"a{n}.eml").write_bytes(MESSAGES["lone-dot"])
    (spool / "z.eml").write_bytes(MESSAGES["lone-dot"].replace(b"news@example.test", b"x@o.test"))
    with smtp_server() as server:
        config = config_for(tmp_path, entry_for(server.port))
        config.dkim = {DOMAIN: key}
        options = SendOptions(stop_after_deferrals=2)
        summary = run_send(spool, config, options, password_source=lambda e: None)
        received = list(server.handler.messages)
    assert (summary.sent, summary.deferred) == (1, 4)
    assert [m.mail_from for m in received] == ["x@o.test"]
    assert summary.server_failures == []


def test_missing_key_file_raises_naming_it(tmp_path: Path) -> None:
    key = make_key(tmp_path)
    key.key_file.unlink()
    signer = Signer(Config(path=tmp_path / "c.toml", dkim={DOMAIN: key}))
    with pytest.raises(DkimSignError, match=f"cannot read.*|{key.key_file}"):
        signer.data(parse_message(MESSAGES["lone-dot"]))


def test_malformed_header_the_signer_rejects(tmp_path: Path) -> None:
    key = make_key(tmp_path)
    with pytest.raises(DkimSignError, match="malformed header block"):
        sign_bytes(key, b"From: a@example.test\r\nno colon here\r\n\r\nbody\r\n")


def test_key_is_loaded_once_per_run(tmp_path: Path) -> None:
    key = make_key(tmp_path)
    signer = Signer(Config(path=tmp_path / "c.toml", dkim={DOMAIN: key}))
    message = parse_message(MESSAGES["lone-dot"])
    signer.data(message)
    key.key_file.unlink()  # gone now: the loaded key is still used
    assert bytes(signer.data(message)).startswith(b"DKIM-Signature:")  # type: ignore[arg-type]


def test_signed_from_a_pool_of_connections(tmp_path: Path, dns_zone: Any) -> None:
    """connections = 2: every worker's connection signs (one key cache per run)."""
    key = make_key(tmp_path, ED)
    lookup = publish(dns_zone, key)
    spool = tmp_path / "spool"
    spool.mkdir()
    for n in range(6):
        raw = MESSAGES["folded-header"].replace(b"<2@", b"<2-%d@" % n)
        (spool / f"m{n}.eml").write_bytes(raw)
    with smtp_server() as server:
        config = config_for(tmp_path, entry_for(server.port, connections=2))
        config.dkim = {DOMAIN: key}
        summary = run_send(spool, config, SendOptions(), password_source=lambda e: None)
        received = list(server.handler.messages)
    assert summary.sent == 6 and len(received) == 6
    assert all(dkim.verify(m.content, dnsfunc=lookup) for m in received)
