"""DKIM-signing a spool message on the bytes that go on the wire.

What is signed is the message as transmitted (``Message.transmitted_head`` and the
body: Bcc, Return-Path and an mbox From line gone), with the CRLF line endings
the transport gives it, before dot-stuffing; the ``DKIM-Signature`` field goes in
front of that header block.  A big message's body is hashed streaming from its
file (smtp/dkim_sign.py) and streamed again when sent: never held whole.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, BinaryIO

from carerix_smtp.config.dkim import key_for
from carerix_smtp.smtp.dkim_sign import CRLF, KeyCache, RelaxedBodyHash, signature_field
from carerix_smtp.smtp.wire import bdat_chunks

if TYPE_CHECKING:
    from carerix_smtp.config.dkim import DkimKey
    from carerix_smtp.config.file import Config
    from carerix_smtp.spool.message import Message

BLOCK = 1 << 20  # bytes read at a time when hashing a body from its file


def message_body_hash(message: Message) -> bytes:
    """The relaxed body hash of ``message`` as transmitted, streamed from its file."""
    hasher = RelaxedBodyHash()
    handle: BinaryIO | None = None
    if message.raw is not None:
        chunks = bdat_chunks(memoryview(message.raw)[message.body_start :], BLOCK)
    else:
        assert message.path is not None
        handle = open(message.path, "rb")  # noqa: SIM115 - closed below
        handle.seek(message.body_start)
        chunks = bdat_chunks(handle, BLOCK)
    try:
        first = True
        for block, _last in chunks:
            if first:  # the empty line that ends the header block is not body
                block = block[2:] if block.startswith(CRLF) else block
                first = False
            hasher.update(block)
    finally:
        if handle is not None:
            handle.close()
    return hasher.digest()


class Signer:
    """Signs messages for one run: the keys of ``config``, each loaded once."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.cache = KeyCache()

    def key(self, message: Message) -> DkimKey | None:
        """The key for ``message``'s From domain (or a parent), if one is configured."""
        if not self.config.dkim or not message.from_address:
            return None
        return key_for(self.config, message.from_address.rpartition("@")[2].strip("<> "))

    def data(self, message: Message) -> bytes | BinaryIO:
        """What to send for ``message``: signed when its From domain has a key; bytes
        for a message in memory, else a stream from its file.  Raises DkimSignError
        (the message is deferred, never sent unsigned)."""
        key = self.key(message)
        if key is None:
            return message.transmitted() if message.raw is not None else message.open_data()
        private = self.cache.private(key)
        head = b"".join(chunk for chunk, _ in bdat_chunks(message.transmitted_head()))
        field = signature_field(key, private, head, message_body_hash(message))
        if message.raw is not None:
            return b"".join((field, head, memoryview(message.raw)[message.body_start :]))
        signed = replace(message, head=field + head, fields=(), header_start=0)
        return signed.open_data()
