"""Wallet fixtures: a fresh, created ``Database`` per test (or per call of ``make_wallet_db``).

The backend is a fixture parameter. Today only ``sqlite`` (a file under the test's tmp dir);
PostgreSQL joins by adding a ``postgresql`` param whose ``wallet_db_url`` hands out a fresh
database per call on a throwaway server, and every test here runs on both.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

import pytest

from wallet.db import Database

BACKENDS = ["sqlite"]


@pytest.fixture(params=BACKENDS)
def wallet_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def wallet_db_url(wallet_backend: str, tmp_path: Path) -> Callable[[], str]:
    """``wallet_db_url()``: the URL of a new, empty database on the backend."""
    counter = itertools.count()
    if wallet_backend == "sqlite":
        return lambda: f"sqlite+aiosqlite:///{tmp_path / f'wallet-{next(counter)}.sqlite'}"
    raise NotImplementedError(wallet_backend)  # pragma: no cover


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
