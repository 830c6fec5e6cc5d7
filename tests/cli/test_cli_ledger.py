"""``cxsmtp ledger init/show``, the ``ledger`` settings, ``server --account`` and the
doctor's ledger line (issue 16), as real subprocesses: exit codes and output."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Isolated, free_port
from pg_server import PgServer, find_initdb, pg_server

LIBFAKETIME = next(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"), None)


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    if find_initdb() is None and not os.environ.get("CI"):
        pytest.skip("PostgreSQL (initdb) not installed")
    with pg_server() as server:
        yield server


@pytest.fixture
def db(pg: PgServer) -> Iterator[str]:
    url = pg.create_database()
    yield url
    pg.drop_database(url)


@pytest.fixture(autouse=True)
def no_ledger_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CXSMTP_LEDGER_URL", raising=False)


def two_entries(cxsmtp: Any) -> None:
    for name, port in (("web1", 2525), ("web2", 2526)):
        result = cxsmtp("server", "add", name, f"[127.0.0.1]:{port}", "--account", "acme")
        assert result.returncode == 0, result.stderr


def error(result: Any) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("cxsmtp: error: "), result.stderr
    return lines[0]


# --- ledger init ----------------------------------------------------------------------


def test_init_creates_the_schema_and_may_run_again(cxsmtp: Any, db: str) -> None:
    first = cxsmtp("ledger", "init", db)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"ledger ready: {db} (schema version 1)"
    again = cxsmtp("ledger", "init", db)
    assert (again.returncode, again.stdout) == (0, first.stdout)


def test_init_refuses_a_newer_schema(cxsmtp: Any, db: str) -> None:
    import psycopg

    assert cxsmtp("ledger", "init", db).returncode == 0
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("UPDATE cxsmtp_meta SET value = '99' WHERE key = 'schema_version'")
    result = cxsmtp("ledger", "init", db)
    assert result.returncode == 78
    assert "schema version 99" in error(result) and "upgrade cxsmtp" in error(result)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        pytest.param("mysql://u@h/db", "is not a ledger", id="other-scheme"),
        pytest.param("postgresql:///db", "is not a ledger", id="no-host"),
        pytest.param("postgresql://u@h:99999/db", "is not a ledger", id="bad-port"),
        pytest.param("sqlite", "needs no init", id="sqlite"),
    ],
)
def test_init_bad_url_is_a_usage_error(cxsmtp: Any, url: str, says: str) -> None:
    result = cxsmtp("ledger", "init", url)
    assert (result.returncode, result.stdout) == (64, "")
    assert says in error(result) and "postgresql://USER@HOST" in error(result)


def test_a_password_in_a_url_is_refused_and_never_shown(cxsmtp: Any) -> None:
    url = "postgresql://cx:Sup3rSecret@127.0.0.1/cxsmtp"
    for args in (("ledger", "init", url), ("settings", "set", "ledger", url)):
        result = cxsmtp(*args)
        assert result.returncode == 64
        assert "postgresql://cx:***@127.0.0.1/cxsmtp" in error(result)
        assert "Sup3rSecret" not in result.stdout + result.stderr
        assert "PGPASSWORD" in error(result)


def test_unreachable_database_is_exit_75_naming_the_host(cxsmtp: Any) -> None:
    port = free_port()
    result = cxsmtp("ledger", "init", f"postgresql://cx@127.0.0.1:{port}/cxsmtp")
    assert result.returncode == 75
    assert error(result).startswith(f"cxsmtp: error: ledger database 127.0.0.1:{port} unreachable")


# --- settings and server --account ---------------------------------------------------------


def test_settings_ledger_round_trip(cxsmtp: Any, isolated: Isolated) -> None:
    url = "postgresql://cx@db.example:5433/cxsmtp"
    assert cxsmtp("settings", "set", "ledger", url).returncode == 0
    shown = json.loads(cxsmtp("settings", "show", "--json").stdout)
    assert (shown["ledger"], shown["ledger_password_command"]) == (url, None)
    assert f'ledger = "{url}"' in isolated.config.read_text()
    assert oct(isolated.config.stat().st_mode & 0o777) == "0o600"
    assert cxsmtp("settings", "set", "ledger", "sqlite").returncode == 0
    assert "ledger" not in isolated.config.read_text().split("[servers")[0]
    bad = cxsmtp("settings", "set", "ledger", "db.example")
    assert bad.returncode == 64 and "is not a ledger" in error(bad)


def test_server_account_defaults_to_the_name(cxsmtp: Any) -> None:
    assert cxsmtp("server", "add", "a", "[127.0.0.1]:2525").returncode == 0
    assert json.loads(cxsmtp("server", "show", "a", "--json").stdout)["account"] == "a"
    assert cxsmtp("server", "edit", "a", "--account", "acme").returncode == 0
    assert json.loads(cxsmtp("server", "show", "a", "--json").stdout)["account"] == "acme"
    assert cxsmtp("server", "edit", "a", "--unset", "account").returncode == 0
    assert json.loads(cxsmtp("server", "show", "a", "--json").stdout)["account"] == "a"


# --- ledger show ---------------------------------------------------------------------------


def test_show_sqlite_without_a_file_yet(cxsmtp: Any, isolated: Isolated) -> None:
    two_entries(cxsmtp)
    result = cxsmtp("ledger", "show")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "ledger: sqlite (from default)",
        "no ledger file yet: nothing sent",
    ]
    assert not (isolated.state_dir / "ledger.sqlite3").exists(), "show creates no ledger"


def test_show_per_account_from_the_shared_ledger(cxsmtp: Any, db: str) -> None:
    from carerix_smtp.config.file import ServerEntry, Settings
    from carerix_smtp.limits.postgres import PostgresLedger
    from carerix_smtp.limits.rule import Limits

    two_entries(cxsmtp)
    assert cxsmtp("ledger", "init", db).returncode == 0
    with PostgresLedger(db) as ledger:  # another host sent 3 through account acme
        limits = Limits.from_entry(ServerEntry("x", "[127.0.0.1]:1"), Settings())
        grant = ledger.acquire("acme", limits, [10] * 3, sleep=lambda s: None)
        with grant as g:  # type: ignore[union-attr]
            for n in range(3):
                assert g.admit(10)
                g.confirm(f"<{n}@x>", 10)
    result = cxsmtp("ledger", "show", "--json", env={"CXSMTP_LEDGER_URL": db})
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["ledger"], data["from"], data["exists"]) == (db, "CXSMTP_LEDGER_URL", True)
    [acme] = data["accounts"]
    assert (acme["account"], acme["servers"], acme["sent_hour"]) == ("acme", ["web1", "web2"], 3)
    text = cxsmtp("ledger", "show", env={"CXSMTP_LEDGER_URL": db})
    assert text.returncode == 0
    assert text.stdout.splitlines()[1].split() == [
        "account",
        "servers",
        "hour",
        "day",
        "(all)",
        "running",
        "next",
        "batch",
    ]
    assert text.stdout.splitlines()[2].split()[:3] == ["acme", "web1,web2", "3/1200"]


def test_show_without_schema_says_run_init(cxsmtp: Any, db: str) -> None:
    two_entries(cxsmtp)
    result = cxsmtp("ledger", "show", env={"CXSMTP_LEDGER_URL": db})
    assert result.returncode == 78
    assert "run: cxsmtp ledger init URL" in error(result)


# --- doctor and the clock -------------------------------------------------------------------


def test_doctor_checks_the_shared_ledger(cxsmtp: Any, db: str) -> None:
    two_entries(cxsmtp)
    assert cxsmtp("ledger", "init", db).returncode == 0
    good = cxsmtp("doctor", "--json", env={"CXSMTP_LEDGER_URL": db})
    lines = {c["name"]: c for c in json.loads(good.stdout)}
    assert good.returncode == 0, good.stdout
    assert lines["ledger"]["status"] == "ok" and "reachable" in lines["ledger"]["detail"]
    port = free_port()
    down = cxsmtp("doctor", env={"CXSMTP_LEDGER_URL": f"postgresql://cx@127.0.0.1:{port}/x"})
    assert down.returncode == 75
    assert f"fail  ledger: ledger database 127.0.0.1:{port} unreachable" in down.stdout


@pytest.mark.skipif(LIBFAKETIME is None, reason="libfaketime not installed")
def test_a_skewed_host_clock_is_warned_about(cxsmtp: Any, db: str) -> None:
    two_entries(cxsmtp)
    assert cxsmtp("ledger", "init", db).returncode == 0
    env = {"CXSMTP_LEDGER_URL": db, "LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": "+90s"}
    result = cxsmtp("ledger", "show", env=env)
    assert result.returncode == 0, result.stderr
    assert (
        "this host's clock (" in result.stderr
        and "differs from the ledger database's (" in result.stderr
    )
    assert "by +90" in result.stderr or "by +89" in result.stderr or "by +91" in result.stderr
    in_step = cxsmtp("ledger", "show", env={"CXSMTP_LEDGER_URL": db})
    assert "clock" not in in_step.stderr


def test_show_json_unreachable_is_one_error_object(cxsmtp: Any) -> None:
    two_entries(cxsmtp)
    port = free_port()
    env = {"CXSMTP_LEDGER_URL": f"postgresql://cx:pw@127.0.0.1:{port}/x"}
    result = cxsmtp("ledger", "show", "--json", env=env)
    assert result.returncode == 75
    data = json.loads(result.stdout)
    assert data["ok"] is False and data["error"]["code"] == 75
    assert f"127.0.0.1:{port} unreachable" in data["error"]["message"]
    assert ":pw@" not in result.stdout + result.stderr
