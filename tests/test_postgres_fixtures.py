"""The throwaway PostgreSQL server the tests share (``tests/postgres_fixtures.py``)."""

from __future__ import annotations

import glob

import asyncpg
import postgres_fixtures
import pytest
from postgres_fixtures import PostgresServer


def test_RevertIf_the_server_binaries_are_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine without them fails with what to install, instead of skipping the PostgreSQL tests."""
    monkeypatch.setattr(glob, "glob", lambda _pattern: [])
    with pytest.raises(FileNotFoundError, match="apt-get install -y postgresql"):
        postgres_fixtures.find_bindir()


async def test_each_database_is_new_and_empty_and_dropped_on_request(postgresql_server: PostgresServer) -> None:
    first, second = postgresql_server.create_database(), postgresql_server.create_database()
    assert first != second
    conn = await asyncpg.connect(postgresql_server.dsn(first))
    try:
        await conn.execute("CREATE TABLE t (x int)")
    finally:
        await conn.close()
    conn = await asyncpg.connect(postgresql_server.dsn(second))
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0
    finally:
        await conn.close()
    for name in (first, second):
        postgresql_server.drop_database(name)
    admin = await asyncpg.connect(postgresql_server.dsn("postgres"))
    try:
        assert await admin.fetchval("SELECT count(*) FROM pg_database WHERE datname = ANY($1)", [first, second]) == 0
    finally:
        await admin.close()
