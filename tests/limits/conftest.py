"""The ledger stores under test: SQLite (a file) and PostgreSQL (a real server, tests/pg_server.py).

``store`` is a factory fixture run once per store kind: ``store(clock=..., owner=...)``
opens a ledger on the test's own backing (one SQLite file, or one fresh PostgreSQL
database with the schema), so a test can open several "processes" or "hosts" on
it; ``store.target`` is the path or URL to hand to a subprocess.

The PostgreSQL server starts once per session (per xdist worker), on first use;
each test gets a new database copied from a template that holds the schema.
Without PostgreSQL's initdb the postgres tests skip, or fail when ``CI`` is set.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pg_server import PgServer, StoreFactory, find_initdb, pg_server

# The test modules here import each other (test_ledger_groups from test_ledger); a
# conftest.py in this directory makes pytest import them by a package-style name, so
# put the directory on the path as tests/conftest.py does for tests/.
sys.path.insert(0, str(Path(__file__).resolve().parent))

STORES = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    """A PostgreSQL server for the session; skips (fails on CI) when it is not installed."""
    if find_initdb() is None:
        message = "PostgreSQL's initdb not found (apt-get install postgresql, or set PG_BIN)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("psycopg not installed (pip install 'carerix-smtp[postgres]')")
        pytest.skip("psycopg not installed (pip install 'carerix-smtp[postgres]')")
    with pg_server() as server:
        yield server


@pytest.fixture(scope="session")
def pg_template(pg: PgServer) -> str:
    """The name of a database holding the ledger schema, copied for each test."""
    from carerix_smtp.limits.postgres import init_schema

    url = pg.create_database()
    init_schema(url)
    return url.rsplit("/", 1)[1]


@pytest.fixture
def pg_url(pg: PgServer, pg_template: str) -> Iterator[str]:
    """A fresh database with the ledger schema; dropped after the test."""
    url = pg.create_database(template=pg_template)
    yield url
    pg.drop_database(url)


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """A ledger factory, once with SQLite and once with PostgreSQL."""
    if request.param == "sqlite":
        factory = StoreFactory("sqlite", str(tmp_path / "state" / "ledger.sqlite3"))
    else:
        factory = StoreFactory("postgres", request.getfixturevalue("pg_url"))
    yield factory
    for ledger in factory.opened:
        ledger._db.close()  # connections only; a test may leave a 'crashed' grant open


@pytest.fixture
def pg_store(pg_url: str) -> Iterator[StoreFactory]:
    """The PostgreSQL factory alone (tests of what only that store has)."""
    factory = StoreFactory("postgres", pg_url)
    yield factory
    for ledger in factory.opened:
        ledger._db.close()
