"""Wallet fixtures: a fresh, created ``Database`` per test (or per call of ``make_wallet_db``).

The backend is a fixture parameter, so every test here runs on both: ``sqlite`` (a file under
the test's tmp dir) and ``postgresql`` (a fresh database per call on the session's throwaway
server, ``tests/postgres_fixtures.py``, dropped after the test).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from wallet.db import Database

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def wallet_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def wallet_db_url(wallet_backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[[], str]]:
    """``wallet_db_url()``: the URL of a new, empty database on the backend."""
    if wallet_backend == "sqlite":
        counter = itertools.count()
        yield lambda: f"sqlite+aiosqlite:///{tmp_path / f'wallet-{next(counter)}.sqlite'}"
        return
    server = request.getfixturevalue("postgresql_server")  # started only when a test needs it
    created: list[str] = []

    def make() -> str:
        created.append(server.create_database())
        return str(server.url(created[-1]))

    yield make
    for name in created:  # hundreds of 7 MB copies of template1 otherwise
        server.drop_database(name)


@pytest.fixture
async def make_wallet_db(wallet_db_url: Callable[[], str]) -> AsyncIterator[Callable[[], Awaitable[Database]]]:
    """``await make_wallet_db()``: a new created ``Database``; all are closed after the test."""
    opened: list[Database] = []

    async def make() -> Database:
        db = Database(wallet_db_url())
        opened.append(db)
        await db.create()
        return db

    yield make
    for db in opened:
        await db.aclose()


@pytest.fixture
async def wallet_db(make_wallet_db: Callable[[], Awaitable[Database]]) -> Database:
    """A fresh, created ``Database``."""
    return await make_wallet_db()
