"""The default spool (config/spool_path.py) and the settings spool, sendmail_mode,
retain_sent (config/file.py, config/servers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from carerix_smtp.config.file import Config, Settings, load_config, save_config
from carerix_smtp.config.servers import describe_settings, parse_duration, set_setting
from carerix_smtp.config.spool_path import resolve_spool
from carerix_smtp.errors import ConfigError, ExitCode, NoSpoolError, UsageError


def test_resolve_order(tmp_path: Path) -> None:
    config = Config(path=tmp_path / "c.toml", settings=Settings(spool="/srv/setting"))
    env = {"CXSMTP_SPOOL": "/srv/env"}
    assert resolve_spool(Path("/srv/arg"), config, env) == Path("/srv/arg")
    assert resolve_spool(None, config, env) == Path("/srv/env")
    assert resolve_spool(None, config, {"CXSMTP_SPOOL": " "}) == Path("/srv/setting")


def test_no_spool_is_exit_78_with_the_hint(tmp_path: Path) -> None:
    with pytest.raises(NoSpoolError) as info:
        resolve_spool(None, Config(path=tmp_path / "c.toml"), {})
    assert info.value.exit_code == ExitCode.CONFIG
    assert isinstance(info.value, ConfigError)
    assert "cxsmtp settings set spool /var/spool/cxsmtp (or CXSMTP_SPOOL)" in str(info.value)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30d", 2_592_000.0),
        ("12h", 43_200.0),
        ("90m", 5400.0),
        ("45s", 45.0),
        ("600", 600.0),
        ("0", 0.0),
        ("1.5h", 5400.0),
        (" 2D ", 172_800.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text, "retain-sent") == seconds


@pytest.mark.parametrize("text", ["", "d", "-1d", "3w", "ten", "nan", "inf"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(UsageError, match="retain-sent must be a duration like 30d") as info:
        parse_duration(text, "retain-sent")
    assert "\n" not in str(info.value)


def test_defaults(tmp_path: Path) -> None:
    settings = load_config(tmp_path / "missing.toml").settings
    assert (settings.spool, settings.sendmail_mode, settings.retain_sent) == (
        None,
        "queue",
        30 * 86_400.0,
    )


def test_set_save_load_show(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    set_setting(Config(path=path), "spool", str(tmp_path / "spool"))
    set_setting(load_config(path), "sendmail-mode", "send")
    set_setting(load_config(path), "retain-sent", "7d")
    config = load_config(path)
    assert config.settings.spool == str(tmp_path / "spool")
    assert config.settings.sendmail_mode == "send"
    assert config.settings.retain_sent == 604_800.0
    shown = describe_settings(config)
    assert shown["spool"] == str(tmp_path / "spool")
    assert shown["sendmail_mode"] == "send" and shown["retain_sent"] == 604_800.0
    assert path.stat().st_mode & 0o777 == 0o600
    set_setting(config, "retain-sent", "0")
    assert load_config(path).settings.retain_sent == 0.0


def test_set_refuses(tmp_path: Path) -> None:
    config = Config(path=tmp_path / "c.toml")
    with pytest.raises(UsageError, match="sendmail-mode must be queue or send, not 'later'"):
        set_setting(config, "sendmail-mode", "later")
    with pytest.raises(UsageError, match="retain-sent"):
        set_setting(config, "retain-sent", "soon")
    assert not config.path.exists()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('sendmail_mode = "now"', "sendmail_mode must be queue or send"),
        ("retain_sent = -1", "retain_sent must be at least 0.0"),
        ('retain_sent = "30d"', "retain_sent must be a number of seconds"),
        ('spool = ""', "spool must be a non-empty string"),
    ],
)
def test_file_validation(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f"[settings]\n{line}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_unchanged_defaults_are_not_written(tmp_path: Path) -> None:
    config = Config(path=tmp_path / "c.toml")
    save_config(config)
    text = config.path.read_text()
    assert "spool" not in text and "sendmail_mode" not in text and "retain_sent" not in text
