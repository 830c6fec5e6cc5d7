"""Configuration: load/validate/save, errors naming file and key, atomic writes, 0600."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from carerix_smtp.config import file as config_mod
from carerix_smtp.config.file import (
    Config,
    ServerEntry,
    load_config,
    resolve_config_path,
    resolve_state_dir,
    save_config,
)
from carerix_smtp.config.tls import Security
from carerix_smtp.errors import ConfigError, UnknownServerError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_missing_file_is_empty_config(tmp_path: Path) -> None:
    config = load_config(tmp_path / "nope.toml")
    assert config.servers == {}
    assert config.settings.email_send_limit == 10_000


def test_seed_defaults_are_effective(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.toml",
        '[servers.a]\nhost = "[smtp.a.example]:587"\n'
        '[servers.b]\nhost = "smtp.b.example"\naccepts_large_amounts = true\n',
    )
    config = load_config(path)
    a, b = config.servers["a"], config.servers["b"]
    assert (a.effective_rate_per_hour, b.effective_rate_per_hour) == (1200, 6000)
    assert (a.batch_max_messages, a.batch_max_bytes, a.batch_interval, a.batch_deadline) == (
        500,
        80_000_000,
        300.0,
        60.0,
    )
    assert config.settings.email_send_limit == 10_000


def test_round_trip_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    config = Config(path=path)
    config.servers["x"] = ServerEntry(
        name="x",
        host="[smtp.x.example]:465",
        username="jan",
        security=Security.SSL,
        password_command="pass show x",
        rate_per_hour=900,
        batch_deadline=30.0,
    )
    config.users["Alice@example.com"] = "x"
    config.settings.default_server = "x"
    config.settings.email_send_limit = 500
    save_config(config)
    loaded = load_config(path)
    assert loaded.servers == config.servers
    assert loaded.users == {"Alice@example.com": "x"}
    assert loaded.settings == config.settings


def test_saved_file_is_0600_and_has_no_password_key(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    config = Config(path=path)
    config.servers["x"] = ServerEntry(name="x", host="[smtp.x.example]:587", username="jan")
    save_config(config)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "password" not in path.read_text()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "[servers.a]\nhost = 'smtp.a'\nhots = 1\n",
            "[servers.a]: unknown key 'hots'",
            id="unknown-server-key",
        ),
        pytest.param(
            "[settings]\nemail_send_limt = 5\n",
            "[settings]: unknown key 'email_send_limt'",
            id="unknown-setting",
        ),
        pytest.param(
            "[sevrers.a]\nhost = 'x'\n", "unknown section [sevrers]", id="unknown-section"
        ),
        pytest.param(
            "[servers.a]\nusername = 'jan'\n", "[servers.a]: host is missing", id="no-host"
        ),
        pytest.param(
            "[servers.a]\nhost = '[smtp.a'\n", "[servers.a]: host: invalid host", id="bad-host"
        ),
        pytest.param(
            "[servers.a]\nhost = 'smtp.a'\nrate_per_hour = 'many'\n",
            "rate_per_hour must be a whole number",
            id="bad-int",
        ),
        pytest.param(
            "[servers.a]\nhost = 'smtp.a'\nrate_per_hour = 0\n",
            "rate_per_hour must be at least 1",
            id="zero-rate",
        ),
        pytest.param(
            "[servers.a]\nhost = 'smtp.a'\nsecurity = 'tls'\n",
            "security must be one of",
            id="bad-security",
        ),
        pytest.param(
            "[servers.a]\nhost = 'smtp.a'\naccepts_large_amounts = 'yes'\n",
            "must be true or false",
            id="bad-bool",
        ),
        pytest.param(
            "[servers.a]\nhost = 'smtp.a'\nusername = 'j'\nsecurity = 'none'\n",
            "unencrypted",
            id="plaintext-password",
        ),
        pytest.param(
            "[settings]\ndefault_server = 'zz'\n",
            "default_server 'zz' is not defined",
            id="bad-default",
        ),
        pytest.param(
            "[users.'a@b.c']\nserver = 'zz'\n", "server 'zz' is not defined", id="bad-user-server"
        ),
        pytest.param("[servers.a\n", "not valid TOML", id="bad-toml"),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path / "c.toml", text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_failed_write_leaves_old_file_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "conf" / "c.toml"
    config = Config(path=path)
    config.servers["old"] = ServerEntry(name="old", host="smtp.old.example")
    save_config(config)
    before = path.read_bytes()

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    config.servers["new"] = ServerEntry(name="new", host="smtp.new.example")
    monkeypatch.setattr(config_mod.os, "fsync", broken_fsync)
    with pytest.raises(ConfigError, match="cannot write"):
        save_config(config)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["c.toml"]  # no temp file left behind


def test_server_for_sender_uses_per_user_choice(tmp_path: Path) -> None:
    config = Config(path=tmp_path / "c.toml")
    config.servers["a"] = ServerEntry(name="a", host="smtp.a.example")
    config.servers["b"] = ServerEntry(name="b", host="smtp.b.example")
    config.settings.default_server = "a"
    config.users["alice@example.com"] = "b"
    assert config.server_for_sender("alice@EXAMPLE.com").name == "b"
    assert config.server_for_sender("bob@example.com").name == "a"
    assert config.server_for_sender(None).name == "a"
    with pytest.raises(UnknownServerError, match="known: a, b"):
        config.server("c")


def test_default_needed_when_several_servers(tmp_path: Path) -> None:
    config = Config(path=tmp_path / "c.toml")
    with pytest.raises(ConfigError, match="cxsmtp server add"):
        config.default()
    config.servers["a"] = ServerEntry(name="a", host="smtp.a.example")
    assert config.default().name == "a"
    config.servers["b"] = ServerEntry(name="b", host="smtp.b.example")
    with pytest.raises(ConfigError, match="cxsmtp server use"):
        config.default()


def test_paths_precedence(tmp_path: Path) -> None:
    env = {"CXSMTP_CONFIG": str(tmp_path / "env.toml"), "CXSMTP_STATE_DIR": str(tmp_path / "st")}
    assert resolve_config_path(tmp_path / "x.toml", env) == tmp_path / "x.toml"
    assert resolve_config_path(None, env) == tmp_path / "env.toml"
    assert resolve_config_path(None, {}).name == "config.toml"
    assert resolve_config_path(None, {}).parent.name == "cxsmtp"
    assert resolve_state_dir(None, env) == tmp_path / "st"
    assert "cxsmtp" in str(resolve_state_dir(None, {}))
    assert os.fspath(resolve_state_dir(tmp_path / "s", env)) == os.fspath(tmp_path / "s")


def test_shipped_example_config_loads() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "config.toml"
    config = load_config(example, missing_ok=False)
    assert config.servers["bulk"].effective_rate_per_hour == 6000
    assert config.servers["provider587"].effective_rate_per_hour == 1200
    assert config.server_for_sender("alice@example.com").name == "bulk"
    assert config.server_for_sender("bob@example.com").name == "provider587"


def test_server_library_keeps_a_saved_default(tmp_path: Path) -> None:
    """add/remove as a library: the default is always saved, never silently lost."""
    from carerix_smtp.config.servers import add_server, remove_server

    path = tmp_path / "c.toml"
    config = load_config(path)
    add_server(config, "a", "smtp.a.example")
    add_server(config, "b", "smtp.b.example")
    add_server(config, "c", "smtp.c.example")
    assert load_config(path).settings.default_server == "a"
    with pytest.raises(ConfigError, match="is the default server"):
        remove_server(config, "a", {})
    assert load_config(path).settings.default_server == "a"
    removal = remove_server(config, "b", {})
    assert (removal.new_default, removal.default_cleared) == (None, False)
    removal = remove_server(config, "a", {})
    assert (removal.new_default, removal.default_cleared) == ("c", False)
    assert load_config(path).settings.default_server == "c"


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        pytest.param(["ca-file", "username", "ca_file"], ("ca_file", "username"), id="dedup"),
        pytest.param(["rate_per_hour"], ("rate_per_hour",), id="limit"),
    ],
)
def test_parse_unset(keys: list[str], expected: tuple[str, ...]) -> None:
    from carerix_smtp.config.servers import parse_unset

    assert parse_unset(keys) == expected


def test_unset_restores_the_dataclass_default(tmp_path: Path) -> None:
    from carerix_smtp.config.servers import add_server, edit_server

    config = load_config(tmp_path / "c.toml")
    add_server(config, "a", "smtp.a.example", rate_per_hour=50, connect_timeout=5.0)
    edited = edit_server(config, "a", env={}, unset=["rate_per_hour", "connect_timeout"])
    assert edited.entry == ServerEntry(name="a", host="smtp.a.example")
    assert load_config(tmp_path / "c.toml").servers["a"] == edited.entry
