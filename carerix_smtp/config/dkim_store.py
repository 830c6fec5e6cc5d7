"""``cxsmtp dkim add/remove``: private keys kept in the config directory.

A key is stored as ``dkim/DOMAIN.SELECTOR.pem`` next to the config file, mode 0600,
written atomically; the ``[dkim.DOMAIN]`` table points at it.  A key given with
``--key`` is copied there (refused when the given file is readable by others);
``--generate`` makes a new one (RSA 2048 bits by default, or Ed25519).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from carerix_smtp.config.dkim import (
    DkimKey,
    check_domain,
    check_mode,
    check_selector,
    key_from_pem,
    public_txt,
)
from carerix_smtp.config.file import atomic_write, save_config
from carerix_smtp.errors import ConfigError, DkimKeyError, UsageError

if TYPE_CHECKING:
    from carerix_smtp.config.file import Config

KEY_DIR = "dkim"
RSA_BITS = (1024, 8192)  # accepted --bits; RFC 8301: at least 1024, 2048 recommended


@dataclass(frozen=True)
class Added:
    key: DkimKey
    txt: str  # the TXT record value to publish at key.record_name
    replaced: DkimKey | None  # the domain's previous key, if any
    generated: bool


def generate_pem(kind: str, bits: int | None) -> bytes:
    """A new unencrypted PKCS#8 PEM private key: ``rsa`` (``bits``, default 2048)
    or ``ed25519``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    if kind == "rsa":
        size = 2048 if bits is None else bits
        if not RSA_BITS[0] <= size <= RSA_BITS[1]:
            raise UsageError(
                f"--bits {size}: accepted {RSA_BITS[0]} to {RSA_BITS[1]} (2048 recommended)"
            )
        private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey = rsa.generate_private_key(
            public_exponent=65537, key_size=size
        )
    elif kind == "ed25519":
        if bits is not None:
            raise UsageError("--bits is for RSA keys only; an Ed25519 key has no size to choose")
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        raise UsageError(f"--type {kind!r}: accepted rsa, ed25519")
    return private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def read_given_key(path: Path) -> bytes:
    """The PEM file a user gave with --key: must be a regular file of 0600 or narrower."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise DkimKeyError(f"DKIM key file {path} is not a regular file")
        check_mode(path, info.st_mode)
        return path.read_bytes()
    except OSError as exc:
        raise DkimKeyError(f"DKIM key file {path}: cannot read: {exc.strerror}") from None


def algorithm_of(pem: bytes) -> str:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    try:
        private = serialization.load_pem_private_key(pem, password=None)
    except (TypeError, ValueError, UnsupportedAlgorithm):
        return "rsa-sha256"  # read_key_object says what is wrong with it
    return "ed25519-sha256" if isinstance(private, ed25519.Ed25519PrivateKey) else "rsa-sha256"


def add_key(
    config: Config, domain: str, selector: str, pem: bytes, *, source: Path | None = None
) -> Added:
    """Store ``pem`` for ``domain`` and save the config; the key is checked first
    (a key that does not load is not stored)."""
    try:
        domain = check_domain(domain)
        check_selector(selector)
    except ConfigError as exc:  # a command-line value here
        raise UsageError(str(exc)) from None
    directory = config.path.parent / KEY_DIR
    path = directory / f"{domain}.{selector}.pem"
    key = DkimKey(domain, selector, path, algorithm_of(pem))  # type: ignore[arg-type]
    key_from_pem(pem, source or path, key.algorithm)  # DkimKeyError: nothing is stored
    previous = config.dkim.get(domain)
    atomic_write(path, pem, mode=0o600)
    txt = public_txt(key)
    config.dkim[domain] = key
    save_config(config)
    if previous is not None and previous.key_file != path:
        _remove_stored(config, previous)
    return Added(key, txt, previous, source is None)


def remove_key(config: Config, domain: str) -> DkimKey:
    """Forget ``domain``'s key; its file goes too when cxsmtp stored it."""
    name = domain.strip().rstrip(".").lower()
    key = config.dkim.pop(name, None)
    if key is None:
        known = ", ".join(sorted(config.dkim)) or "none yet; add one with 'cxsmtp dkim add'"
        raise ConfigError(f"no DKIM key for {name!r} in {config.path} (known: {known})")
    save_config(config)
    _remove_stored(config, key)
    return key


def find_key(config: Config, domain: str) -> DkimKey:
    name = domain.strip().rstrip(".").lower()
    try:
        return config.dkim[name]
    except KeyError:
        known = ", ".join(sorted(config.dkim)) or "none yet; add one with 'cxsmtp dkim add'"
        raise ConfigError(f"no DKIM key for {name!r} in {config.path} (known: {known})") from None


def _remove_stored(config: Config, key: DkimKey) -> None:
    """Delete a key file cxsmtp wrote (in the config's dkim/ directory) and nothing else."""
    if key.key_file.parent == config.path.parent / KEY_DIR:
        try:
            os.unlink(key.key_file)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ConfigError(f"{key.key_file}: cannot remove: {exc.strerror}") from None
