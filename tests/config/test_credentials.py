"""The credentials file: private (0600, owner, no symlink), written atomically."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from carerix_smtp.config import credentials as creds
from carerix_smtp.errors import SecretError

FILE = "credentials.toml"


def test_path_is_beside_the_config(tmp_path: Path) -> None:
    assert creds.credentials_path(tmp_path / "c" / "config.toml") == tmp_path / "c" / FILE


def test_write_read_delete(tmp_path: Path) -> None:
    path = tmp_path / "conf" / FILE
    assert creds.read_password(path, "a") is None
    creds.write_password(path, "a", 'quote " and \\ back')
    creds.write_password(path, "b.c", "two")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert creds.read_password(path, "a") == 'quote " and \\ back'
    assert creds.delete_password(path, "a") is True
    assert creds.delete_password(path, "a") is False
    assert creds.read_password(path, "b.c") == "two"
    assert creds.delete_password(path, "b.c") is True
    assert not path.exists()  # nothing left: no file
    assert [p.name for p in path.parent.iterdir()] == []  # no temp file left behind


def test_wider_mode_is_refused(tmp_path: Path) -> None:
    path = tmp_path / FILE
    creds.write_password(path, "a", "pw")
    path.chmod(0o640)
    with pytest.raises(SecretError, match=r"mode 0640 is wider than 0600.*chmod 600"):
        creds.read_password(path, "a")
    with pytest.raises(SecretError, match="wider than 0600"):
        creds.write_password(path, "a", "new")
    assert "pw" in path.read_text()


def test_symlink_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real.toml"
    creds.write_password(real, "a", "pw")
    link = tmp_path / FILE
    link.symlink_to(real)
    with pytest.raises(SecretError, match="symlink"):
        creds.read_password(link, "a")


def test_other_owner_is_refused(tmp_path: Path) -> None:
    path = tmp_path / FILE
    creds.write_password(path, "a", "pw")
    if os.getuid() != 0:
        pytest.skip("chown to another user needs root")
    os.chown(path, 65534, -1)
    with pytest.raises(SecretError, match="owned by uid 65534, not by you"):
        creds.read_password(path, "a")


def test_damaged_file_says_what_is_expected(tmp_path: Path) -> None:
    path = tmp_path / FILE
    path.write_text("[passwords\n")
    path.chmod(0o600)
    with pytest.raises(SecretError, match=r'expected \[passwords\] with NAME = "PASSWORD"'):
        creds.read_password(path, "a")
