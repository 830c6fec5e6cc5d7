"""DKIM keys in the configuration: ``[dkim.DOMAIN]`` tables, loading a private key,
and the TXT record that publishes its public half.

::

    [dkim."example.com"]
    selector = "s1"
    key_file = "dkim/example.com.s1.pem"   # relative to the config file's directory
    algorithm = "rsa-sha256"               # or "ed25519-sha256"
    headers = ["from", "to", ...]           # optional; default DEFAULT_HEADERS

A key signs mail whose From domain is DOMAIN or a subdomain of it (``key_for``).
Key files are unencrypted PEM (PKCS#8 or PKCS#1), mode 0600 or narrower.
"""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from carerix_smtp.errors import ConfigError, DkimKeyError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

__all__ = [
    "ALGORITHMS",
    "DEFAULT_HEADERS",
    "DkimKey",
    "DkimKeyError",
    "dkim_keys",
    "key_for",
    "load_private_key",
    "public_txt",
    "txt_strings",
]

Algorithm = Literal["rsa-sha256", "ed25519-sha256"]
ALGORITHMS: tuple[Algorithm, ...] = ("rsa-sha256", "ed25519-sha256")
# RFC 6376 §5.4.1 recommended set, plus RFC 8058's List-Unsubscribe-Post; only the
# fields a message has are signed, From once more than it occurs (oversigned).
DEFAULT_HEADERS: tuple[str, ...] = (
    "from",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "reply-to",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "in-reply-to",
    "references",
)
# RFC 6376 §5.4: these must not be signed (they change in transit or are removed).
NEVER_SIGNED = frozenset(
    {"return-path", "received", "bcc", "resent-bcc", "dkim-signature", "x-cxsmtp-envelope-to"}
)
MIN_RSA_BITS = 1024  # RFC 8301 §3.2
_TABLE_KEYS = ("selector", "key_file", "algorithm", "headers")


@dataclass(frozen=True)
class DkimKey:
    """One signing key: ``d=domain``, ``s=selector``."""

    domain: str
    selector: str
    key_file: Path
    algorithm: Algorithm = "rsa-sha256"
    headers: tuple[str, ...] = DEFAULT_HEADERS

    @property
    def record_name(self) -> str:
        """Where the public key is published."""
        return f"{self.selector}._domainkey.{self.domain}"


class HasDkim(Protocol):
    """What these functions read of a Config (config/file.py imports this module)."""

    @property
    def dkim(self) -> dict[str, DkimKey]: ...


def dkim_keys(config: HasDkim) -> dict[str, DkimKey]:
    """The configured keys by domain."""
    return dict(config.dkim)


def key_for(config: HasDkim, from_domain: str) -> DkimKey | None:
    """The key for mail from ``from_domain``: its own, else the nearest configured
    parent domain's (news.example.com is signed with example.com's key)."""
    domain = from_domain.strip().rstrip(".").lower()
    keys = config.dkim
    while domain:
        if domain in keys:
            return keys[domain]
        domain = domain.partition(".")[2]
    return None


# --- the private key ---------------------------------------------------------------


def load_private_key(key: DkimKey) -> bytes:
    """The key file's PEM bytes, checked: readable, 0600 or narrower, a key of the
    configured algorithm.  Raises DkimKeyError naming the file."""
    read_key_object(key)  # checks
    return _read_pem(key.key_file)


def read_key_object(key: DkimKey) -> RSAPrivateKey | Ed25519PrivateKey:
    """The key file as a ``cryptography`` private key, checked as load_private_key."""
    return key_from_pem(_read_pem(key.key_file), key.key_file, key.algorithm)


def key_from_pem(pem: bytes, path: Path, algorithm: str) -> RSAPrivateKey | Ed25519PrivateKey:
    """``pem`` (from ``path``, for messages) as a private key for ``algorithm``."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    try:
        private = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise DkimKeyError(
            f"DKIM key file {path} is encrypted; cxsmtp needs an unencrypted PEM key"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise DkimKeyError(
            f"DKIM key file {path} is not a PEM private key (RSA or Ed25519, PKCS#8 or PKCS#1)"
        ) from None
    if algorithm == "rsa-sha256":
        if not isinstance(private, rsa.RSAPrivateKey):
            raise DkimKeyError(f"DKIM key file {path} is not an RSA key (algorithm rsa-sha256)")
        if private.key_size < MIN_RSA_BITS:
            raise DkimKeyError(
                f"DKIM key file {path} is a {private.key_size}-bit RSA key; "
                f"at least {MIN_RSA_BITS} bits are accepted (2048 recommended)"
            )
        return private
    if not isinstance(private, ed25519.Ed25519PrivateKey):
        raise DkimKeyError(f"DKIM key file {path} is not an Ed25519 key (algorithm ed25519-sha256)")
    return private


def _read_pem(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise DkimKeyError(f"DKIM key file {path}: cannot read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise DkimKeyError(f"DKIM key file {path} is not a regular file")
        check_mode(path, info.st_mode)
        return handle.read(1 << 20)


def check_mode(path: Path, mode: int) -> None:
    """Refuse a key file that others than its owner may read."""
    if mode & 0o077:
        raise DkimKeyError(
            f"DKIM key file {path} has mode {stat.S_IMODE(mode):04o}; "
            f"only 0600 or narrower is accepted (chmod 600 {path})"
        )


# --- the public key in DNS --------------------------------------------------------


def public_txt(key: DkimKey) -> str:
    """The TXT record value to publish at ``key.record_name``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = read_key_object(key)
    public = private.public_key()
    if isinstance(private, rsa.RSAPrivateKey):
        der = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode("ascii")
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "v=DKIM1; k=ed25519; p=" + base64.b64encode(raw).decode("ascii")


def txt_strings(value: str, size: int = 255) -> list[str]:
    """``value`` cut into strings of at most ``size`` bytes (a DNS TXT record is a
    list of such strings; receivers join them without a separator, RFC 6376 §3.6.2.2)."""
    data = value.encode("ascii")
    return [data[i : i + size].decode("ascii") for i in range(0, len(data), size)] or [""]


def zone_line(key: DkimKey, value: str) -> str:
    """The record in zone-file form, each string quoted."""
    quoted = " ".join(f'"{part}"' for part in txt_strings(value))
    return f"{key.record_name}. IN TXT ( {quoted} )"


# --- the [dkim] section -----------------------------------------------------------


def check_domain(domain: str, where: str = "DKIM domain") -> str:
    """A lower-cased domain name with at least one dot."""
    name = domain.strip().rstrip(".").lower()
    labels = name.split(".")
    if len(labels) < 2 or not all(_label_ok(label) for label in labels):
        raise ConfigError(f"{where}: {domain!r} is not a domain name such as example.com")
    return name


def check_selector(selector: str, where: str = "DKIM selector") -> str:
    """RFC 6376 §3.1: a selector is one or more dot-separated labels."""
    if not isinstance(selector, str) or not all(_label_ok(p) for p in selector.split(".")):
        raise ConfigError(
            f"{where}: selector {selector!r} must be letters, digits and '-' (dots between labels)"
        )
    return selector


def _label_ok(label: str) -> bool:
    return (
        0 < len(label) <= 63
        and label.isascii()
        and all(ch.isalnum() or ch in "-_" for ch in label)
        and not label.startswith("-")
        and not label.endswith("-")
    )


def dkim_from_dict(path: Path, data: Any) -> dict[str, DkimKey]:
    """Validate the ``[dkim]`` section of the file at ``path``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: [dkim] must be a table")
    keys: dict[str, DkimKey] = {}
    for domain, table in data.items():
        where = f'{path}: [dkim."{domain}"]'
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table")
        keys[check_domain(domain, where)] = _key_from_table(path, domain, table, where)
    return keys


def _key_from_table(path: Path, domain: str, table: Mapping[str, Any], where: str) -> DkimKey:
    unknown = sorted(set(table) - set(_TABLE_KEYS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(_TABLE_KEYS)}"
        )
    for name in ("selector", "key_file"):
        if not isinstance(table.get(name), str) or not table[name].strip():
            raise ConfigError(f"{where}: {name} is missing or not a string")
    algorithm = table.get("algorithm", "rsa-sha256")
    if algorithm not in ALGORITHMS:
        raise ConfigError(
            f"{where}: algorithm must be one of {', '.join(ALGORITHMS)}, not {algorithm!r}"
        )
    headers = table.get("headers", list(DEFAULT_HEADERS))
    if not isinstance(headers, list) or not all(isinstance(h, str) and h for h in headers):
        raise ConfigError(f"{where}: headers must be a list of header field names")
    lowered = tuple(dict.fromkeys(h.strip().lower() for h in headers))
    if "from" not in lowered:
        raise ConfigError(f"{where}: headers must include from (RFC 6376 §5.4)")
    never = sorted(NEVER_SIGNED & set(lowered))
    if never:
        raise ConfigError(f"{where}: headers: {never[0]} must not be signed (RFC 6376 §5.4)")
    key_file = Path(table["key_file"]).expanduser()
    if not key_file.is_absolute():
        key_file = path.parent / key_file
    return DkimKey(
        check_domain(domain, where),
        check_selector(table["selector"], where),
        key_file,
        algorithm,
        lowered,
    )


def dkim_to_dict(config_path: Path, keys: Mapping[str, DkimKey]) -> dict[str, Any]:
    """The ``[dkim]`` section to write; a key file inside the config directory is
    written relative to it; default headers and algorithm are left out."""
    out: dict[str, Any] = {}
    for domain, key in sorted(keys.items()):
        try:
            shown = str(key.key_file.relative_to(config_path.parent))
        except ValueError:
            shown = str(key.key_file)
        table: dict[str, Any] = {"selector": key.selector, "key_file": shown}
        if key.algorithm != "rsa-sha256":
            table["algorithm"] = key.algorithm
        if key.headers != DEFAULT_HEADERS:
            table["headers"] = list(key.headers)
        out[domain] = table
    return out
