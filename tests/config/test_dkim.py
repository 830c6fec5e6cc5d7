"""config/dkim.py: the [dkim.DOMAIN] tables, loading a private key, the TXT record."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from carerix_smtp.config.dkim import (
    DEFAULT_HEADERS,
    DkimKey,
    DkimKeyError,
    dkim_keys,
    key_for,
    load_private_key,
    public_txt,
    txt_strings,
    zone_line,
)
from carerix_smtp.config.file import Config, config_from_dict, load_config, save_config
from carerix_smtp.errors import ConfigError, ExitCode

RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED = ed25519.Ed25519PrivateKey.generate()


def pem_of(private: object, fmt: str = "pkcs8", password: bytes | None = None) -> bytes:
    form = {
        "pkcs8": serialization.PrivateFormat.PKCS8,
        "pkcs1": serialization.PrivateFormat.TraditionalOpenSSL,
    }[fmt]
    crypt = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return private.private_bytes(serialization.Encoding.PEM, form, crypt)  # type: ignore[attr-defined]


def key_at(
    tmp_path: Path, data: bytes, mode: int = 0o600, algorithm: str = "rsa-sha256"
) -> DkimKey:
    path = tmp_path / "k.pem"
    path.write_bytes(data)
    path.chmod(mode)
    return DkimKey("example.test", "s1", path, algorithm)  # type: ignore[arg-type]


# --- the [dkim] section -----------------------------------------------------------


def test_round_trip_relative_key_file_and_defaults_left_out(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    config = config_from_dict(
        path,
        {
            "dkim": {
                "Example.TEST": {"selector": "s1", "key_file": "dkim/a.pem"},
                "ed.test": {
                    "selector": "2024.b",
                    "key_file": "/keys/ed.pem",
                    "algorithm": "ed25519-sha256",
                    "headers": ["From", "Subject"],
                },
            }
        },
    )
    keys = dkim_keys(config)
    assert keys["example.test"] == DkimKey("example.test", "s1", tmp_path / "dkim/a.pem")
    assert keys["example.test"].headers == DEFAULT_HEADERS
    assert keys["ed.test"].headers == ("from", "subject")
    assert keys["ed.test"].record_name == "2024.b._domainkey.ed.test"
    save_config(config)
    assert os.stat(path).st_mode & 0o777 == 0o600
    text = path.read_text()
    assert 'key_file = "dkim/a.pem"' in text and 'key_file = "/keys/ed.pem"' in text
    assert text.count("algorithm") == 1 and text.count("headers") == 1
    assert dkim_keys(load_config(path)) == keys


@pytest.mark.parametrize(
    ("table", "message"),
    [
        pytest.param({"key_file": "k.pem"}, "selector is missing", id="no-selector"),
        pytest.param({"selector": "s1"}, "key_file is missing", id="no-key-file"),
        pytest.param(
            {"selector": "s1", "key_file": "k", "colour": 1}, "unknown key 'colour'", id="unknown"
        ),
        pytest.param(
            {"selector": "s 1", "key_file": "k"}, "selector 's 1' must be", id="bad-selector"
        ),
        pytest.param(
            {"selector": "s1", "key_file": "k", "algorithm": "rsa-sha1"},
            "algorithm must be one of rsa-sha256, ed25519-sha256",
            id="sha1",
        ),
        pytest.param(
            {"selector": "s1", "key_file": "k", "headers": ["subject"]},
            "must include from",
            id="no-from",
        ),
        pytest.param(
            {"selector": "s1", "key_file": "k", "headers": ["from", "Bcc"]},
            "bcc must not be signed",
            id="bcc",
        ),
    ],
)
def test_bad_tables_are_config_errors(tmp_path: Path, table: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        config_from_dict(tmp_path / "c.toml", {"dkim": {"example.test": table}})
    assert info.value.exit_code == ExitCode.CONFIG
    assert '[dkim."example.test"]' in str(info.value) and "\n" not in str(info.value)


def test_bad_domain(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'localhost' is not a domain name"):
        config_from_dict(
            tmp_path / "c.toml", {"dkim": {"localhost": {"selector": "s", "key_file": "k"}}}
        )


def test_key_for_the_domain_or_a_configured_parent(tmp_path: Path) -> None:
    parent = DkimKey("example.test", "s1", tmp_path / "a.pem")
    child = DkimKey("shop.example.test", "s2", tmp_path / "b.pem")
    config = Config(
        path=tmp_path / "c.toml", dkim={"example.test": parent, "shop.example.test": child}
    )
    assert key_for(config, "example.test") is parent
    assert key_for(config, "News.Example.TEST.") is parent
    assert key_for(config, "eu.shop.example.test") is child
    assert key_for(config, "badexample.test") is None
    assert key_for(config, "other.test") is None
    assert key_for(Config(path=tmp_path / "c.toml"), "example.test") is None


# --- the private key ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("private", "fmt", "algorithm"),
    [(RSA, "pkcs8", "rsa-sha256"), (RSA, "pkcs1", "rsa-sha256"), (ED, "pkcs8", "ed25519-sha256")],
    ids=["rsa-pkcs8", "rsa-pkcs1", "ed25519"],
)
def test_load_private_key(tmp_path: Path, private: object, fmt: str, algorithm: str) -> None:
    data = pem_of(private, fmt)
    assert load_private_key(key_at(tmp_path, data, algorithm=algorithm)) == data


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644], ids=oct)
def test_key_wider_than_0600_is_refused(tmp_path: Path, mode: int) -> None:
    key = key_at(tmp_path, pem_of(RSA), mode)
    with pytest.raises(
        DkimKeyError, match=f"{key.key_file} has mode {mode:04o}; only 0600"
    ) as info:
        load_private_key(key)
    assert info.value.exit_code == ExitCode.CONFIG


@pytest.mark.parametrize(
    ("data", "algorithm", "message"),
    [
        pytest.param(b"not a key", "rsa-sha256", "is not a PEM private key", id="junk"),
        pytest.param(pem_of(ED), "rsa-sha256", "is not an RSA key", id="ed-as-rsa"),
        pytest.param(pem_of(RSA), "ed25519-sha256", "is not an Ed25519 key", id="rsa-as-ed"),
        pytest.param(pem_of(RSA, password=b"pw"), "rsa-sha256", "is encrypted", id="encrypted"),
    ],
)
def test_not_a_usable_key(tmp_path: Path, data: bytes, algorithm: str, message: str) -> None:
    key = key_at(tmp_path, data, algorithm=algorithm)
    with pytest.raises(DkimKeyError, match=message) as info:
        load_private_key(key)
    assert str(key.key_file) in str(info.value)


def test_missing_key_file(tmp_path: Path) -> None:
    key = DkimKey("example.test", "s1", tmp_path / "nope.pem")
    with pytest.raises(DkimKeyError, match=f"{key.key_file}: cannot read: No such file"):
        load_private_key(key)


def test_symlinked_key_file_is_refused(tmp_path: Path) -> None:
    real = key_at(tmp_path, pem_of(RSA))
    link = tmp_path / "link.pem"
    link.symlink_to(real.key_file)
    with pytest.raises(DkimKeyError, match="cannot read"):
        load_private_key(DkimKey("example.test", "s1", link))


# --- the TXT record ------------------------------------------------------------------


def test_public_txt_rsa_and_ed25519(tmp_path: Path) -> None:
    spki = RSA.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert (
        public_txt(key_at(tmp_path, pem_of(RSA)))
        == "v=DKIM1; k=rsa; p=" + base64.b64encode(spki).decode()
    )
    raw = ED.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    ed = key_at(tmp_path, pem_of(ED), algorithm="ed25519-sha256")
    assert public_txt(ed) == "v=DKIM1; k=ed25519; p=" + base64.b64encode(raw).decode()


@pytest.mark.parametrize("size", [0, 1, 254, 255, 256, 510, 511, 800])
def test_txt_strings_are_at_most_255_bytes_and_join_back(size: int) -> None:
    value = ("v=DKIM1; p=" + "A" * 1000)[:size]
    parts = txt_strings(value)
    assert "".join(parts) == value
    assert all(len(p.encode()) <= 255 for p in parts)
    assert len(parts) == max(1, -(-size // 255))


def test_zone_line(tmp_path: Path) -> None:
    key = key_at(tmp_path, pem_of(RSA))
    line = zone_line(key, "x" * 300)
    assert line == f's1._domainkey.example.test. IN TXT ( "{"x" * 255}" "{"x" * 45}" )'
