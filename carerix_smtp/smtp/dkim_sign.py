"""DKIM signatures (RFC 6376): the relaxed body hash, streamed, and the
``DKIM-Signature`` field over a header block.

Canonicalisation relaxed/relaxed; rsa-sha256, or ed25519-sha256 (RFC 8463) for an
Ed25519 key; the configured header fields that are present, From once more than
it occurs (oversigned, so no From can be added without breaking the signature).

dkimpy's ``dkim.sign`` wants the whole message in memory.  A 50 MB message is
streamed from its file instead, so the body hash (bh=) is computed here, block by
block, with dkimpy's own relaxed body rules (``dkim.canonicalization``) applied to
whole lines only: an unfinished last line and trailing empty lines are carried
over to the next block (``RelaxedBodyHash``).  The header part uses dkimpy's
parser, header canonicalisation, hashing and folding (``rfc822_parse``,
``hash_headers``, ``fold``), as ``DKIM.sign`` does; the signature itself is made
with ``cryptography`` (OpenSSL; dkimpy's pure-Python RSA is several times slower).
Tests check the result with ``dkim.verify``.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Union

from carerix_smtp.config.dkim import read_key_object
from carerix_smtp.errors import DkimKeyError, DkimSignError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

    from carerix_smtp.config.dkim import DkimKey

PrivateKey = Union["RSAPrivateKey", "Ed25519PrivateKey"]
CRLF = b"\r\n"
NAME = b"DKIM-Signature"


class RelaxedBodyHash:
    """SHA-256 of a body under relaxed canonicalisation (RFC 6376 §3.4.4), fed in
    blocks with CRLF line endings.  The rules work on whole lines, so a block's
    unfinished last line waits for the next; empty lines are held back until a
    non-empty line follows (trailing empty lines are not hashed)."""

    def __init__(self) -> None:
        from dkim.canonicalization import compress_whitespace, strip_trailing_whitespace

        self._strip = strip_trailing_whitespace
        self._compress = compress_whitespace
        self._hash = hashlib.sha256()
        self._carry = b""  # an unfinished line
        self._empty = 0  # empty lines seen but not hashed yet

    def update(self, block: bytes) -> None:
        data = self._carry + block if self._carry else block
        end = data.rfind(b"\n") + 1
        self._carry = data[end:]
        if end:
            self._lines(data[:end])

    def _lines(self, lines: bytes) -> None:
        # dkimpy's two rules, each skipped when it cannot change anything (the same
        # bytes, faster): trailing WSP needs " \r\n" or "\t\r\n", compressing needs
        # a tab or two spaces in a row.
        canon = self._strip(lines) if b" \r\n" in lines or b"\t\r\n" in lines else lines
        if b"\t" in canon or b"  " in canon:
            canon = self._compress(canon)
        text = canon.rstrip(CRLF)
        if not text:
            self._empty += len(canon) // 2
            return
        if self._empty:
            self._hash.update(CRLF * self._empty)
        self._hash.update(text + CRLF)
        self._empty = (len(canon) - len(text)) // 2 - 1

    def digest(self) -> bytes:
        if self._carry:  # no line ending at the end: it gets the one the transport adds
            carry, self._carry = self._carry, b""
            self._lines(carry + CRLF)
        return self._hash.digest()


def body_hash(blocks: Iterable[bytes]) -> bytes:
    """The relaxed body hash of the body in ``blocks`` (CRLF line endings)."""
    hasher = RelaxedBodyHash()
    for block in blocks:
        hasher.update(block)
    return hasher.digest()


def signature_field(
    key: DkimKey, private: PrivateKey, head: bytes, bh: bytes, now: float | None = None
) -> bytes:
    """The ``DKIM-Signature`` field (ending in CRLF) for the header block ``head``
    (CRLF line endings) and a body whose hash is ``bh``.  Raises DkimSignError for
    a header block dkimpy cannot parse."""
    import dkim
    from dkim.canonicalization import CanonicalizationPolicy

    try:
        headers, _ = dkim.rfc822_parse(head + CRLF)
    except (dkim.DKIMException, IndexError) as exc:
        raise DkimSignError(f"cannot DKIM-sign: malformed header block: {exc}") from None
    wanted = {h.encode("ascii") for h in key.headers}
    include = [name.lower() for name, _ in headers if name.lower() in wanted] + [b"from"]
    try:
        fields = [
            (b"v", b"1"),
            (b"a", key.algorithm.encode("ascii")),
            (b"c", b"relaxed/relaxed"),
            (b"d", key.domain.encode("ascii")),
            (b"s", key.selector.encode("ascii")),
            (b"t", str(int(time.time() if now is None else now)).encode("ascii")),
            (b"h", b" : ".join(include)),  # spaces: fold() may break the line there
            (b"bh", base64.b64encode(bh)),
            (b"b", b""),
        ]
    except UnicodeEncodeError:
        raise DkimSignError(f"cannot DKIM-sign: {key.domain!r} is not an ASCII name") from None
    value = dkim.fold(b"; ".join(b"=".join(f) for f in fields), namelen=len(NAME))
    policy = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
    hasher = hashlib.sha256()
    canonical = policy.canonicalize_headers(headers)
    dkim.hash_headers(hasher, policy, canonical, include, (NAME, b" " + value), None)
    fields[-1] = (b"b", base64.b64encode(_sign(private, hasher.digest())))
    value = dkim.fold(b"; ".join(b"=".join(f) for f in fields) + CRLF, namelen=len(NAME))
    return NAME + b": " + bytes(value)


def _sign(private: PrivateKey, digest: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

    if isinstance(private, rsa.RSAPrivateKey):
        return private.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
    return private.sign(digest)  # RFC 8463 §3: Ed25519 over the SHA-256 hash


class KeyCache:
    """Private keys loaded once per run (thread-safe)."""

    def __init__(self) -> None:
        self._keys: dict[DkimKey, PrivateKey] = {}
        self._lock = threading.Lock()

    def private(self, key: DkimKey) -> PrivateKey:
        """``key``'s private key; DkimSignError naming the file when it is unusable."""
        with self._lock:
            private = self._keys.get(key)
            if private is None:
                try:
                    private = read_key_object(key)
                except DkimKeyError as exc:
                    raise DkimSignError(f"cannot DKIM-sign for {key.domain}: {exc}") from None
                self._keys[key] = private
            return private


def split_message(message: bytes) -> tuple[bytes, bytes]:
    """(header block, body) of a whole message with CRLF line endings."""
    head, sep, body = message.partition(CRLF + CRLF)
    if not sep:
        return (message if message.endswith(CRLF) or not message else message + CRLF), b""
    return head + CRLF, body


def sign_bytes(key: DkimKey, message: bytes, cache: KeyCache | None = None) -> bytes:
    """``message`` (CRLF line endings, in memory) with a DKIM-Signature in front."""
    private = (cache or KeyCache()).private(key)
    head, body = split_message(message)
    return signature_field(key, private, head, body_hash([body])) + message
