"""config/ledger_url.py: which ledger, the URL's checks, and masking (issue 16)."""

from __future__ import annotations

import pytest

from carerix_smtp.config.file import Config, ServerEntry, load_config, save_config
from carerix_smtp.config.ledger_url import (
    LEDGER_ENV,
    check_ledger_url,
    choose_ledger,
    ledger_host,
    mask_url,
)
from carerix_smtp.errors import ConfigError


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        pytest.param("sqlite", "sqlite", id="sqlite"),
        pytest.param(" SQLite ", "sqlite", id="sqlite-any-case"),
        pytest.param("postgresql://cx@db/cxsmtp", "postgresql://cx@db/cxsmtp", id="postgresql"),
        pytest.param("postgres://cx@db:5433/c", "postgres://cx@db:5433/c", id="postgres-alias"),
        pytest.param("postgresql://cx@[::1]/c", "postgresql://cx@[::1]/c", id="ipv6"),
    ],
)
def test_accepted(given: str, expected: str) -> None:
    assert check_ledger_url(given) == expected


@pytest.mark.parametrize(
    ("given", "says"),
    [
        pytest.param("", "is not a ledger", id="empty"),
        pytest.param("db.example", "is not a ledger", id="bare-host"),
        pytest.param("mysql://cx@db/c", "is not a ledger", id="other-scheme"),
        pytest.param("postgresql:///c", "is not a ledger", id="no-host"),
        pytest.param("postgresql://cx@db:port/c", "is not a ledger", id="bad-port"),
        pytest.param("postgresql://cx:pw@db/c", "holds a password", id="password"),
    ],
)
def test_refused(given: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_ledger_url(given, "ledger")
    assert says in str(caught.value) and "pw@" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        pytest.param("postgresql://cx:pw@db/c", "postgresql://cx:***@db/c", id="password"),
        pytest.param("postgresql://cx:p%40w@db:5/c", "postgresql://cx:***@db:5/c", id="quoted"),
        pytest.param("postgresql://:pw@db/c", "postgresql://:***@db/c", id="no-user"),
        pytest.param("postgresql://cx@db/c", "postgresql://cx@db/c", id="none"),
        pytest.param("sqlite", "sqlite", id="sqlite"),
    ],
)
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_ledger_host() -> None:
    assert ledger_host("postgresql://cx@db.example/c") == "db.example:5432"
    assert ledger_host("postgresql://cx@[::1]:5433/c") == "[::1]:5433"


def test_env_wins_and_may_hold_a_password() -> None:
    url = "postgresql://cx:pw@db/c"
    choice = choose_ledger("postgresql://other@db2/c", {LEDGER_ENV: url})
    assert (choice.url, choice.source, choice.shown) == (url, LEDGER_ENV, mask_url(url))
    assert choose_ledger("postgresql://other@db2/c", {}).source == "settings"
    assert choose_ledger("sqlite", {}) == choose_ledger("sqlite", {LEDGER_ENV: " "})
    assert choose_ledger("postgresql://o@db2/c", {LEDGER_ENV: "sqlite"}).url is None


def test_config_file_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = Config(path=tmp_path / "c.toml", servers={"a": ServerEntry("a", "[h]:587")})
    save_config(config)
    assert "ledger" not in config.path.read_text(), "the default is not written"
    assert load_config(config.path).servers["a"].ledger_key == "a"
    config.settings.ledger = "postgresql://cx@db/c"
    config.settings.ledger_password_command = "pass show db"
    config.servers["a"].account = "acme"
    save_config(config)
    loaded = load_config(config.path)
    assert (loaded.settings.ledger, loaded.settings.ledger_password_command) == (
        "postgresql://cx@db/c",
        "pass show db",
    )
    assert loaded.servers["a"].ledger_key == "acme"
    config.path.write_text('[settings]\nledger = "postgresql://cx:pw@db/c"\n')
    with pytest.raises(ConfigError, match=r"holds a password") as caught:
        load_config(config.path)
    assert ":pw@" not in str(caught.value)
