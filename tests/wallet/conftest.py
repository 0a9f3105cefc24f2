"""Wallet fixtures: a fresh, created ``Database`` per test (or per call of ``make_wallet_db``).

The backend is a fixture parameter, so every test here runs on both: ``sqlite`` (a file under
the test's tmp dir) and ``postgresql`` (a fresh database per call on the session's throwaway
server, ``tests/postgres_fixtures.py``, dropped after the test). A created database starts as a
copy of one the migrations brought to head once per session.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import shutil
import socket
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import pytest
import uvicorn

from postgres_fixtures import PostgresServer
from wallet.db import Database
from wallet.keys import RedactingFilter

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(autouse=True)
def no_redaction_left_behind() -> Iterator[None]:
    """Take off the ``RedactingFilter``s a test's ``create_app`` put on the process's log
    handlers: they redact records in place, so a later test's ``caplog`` would see hashes
    masked by a filter it never installed."""
    yield
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in getattr(logger, "handlers", ()):
            for found in [f for f in handler.filters if isinstance(f, RedactingFilter)]:
                handler.removeFilter(found)


@pytest.fixture(params=BACKENDS)
def wallet_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def _migrate(url: str) -> None:
    async with Database(url) as db:
        await db.create()


@pytest.fixture(scope="session")
def wallet_head_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file the migrations brought to head, once per session, for copies."""
    path = tmp_path_factory.mktemp("wallet-head") / "head.sqlite"
    asyncio.run(_migrate(f"sqlite+aiosqlite:///{path}"))  # closed: no WAL file left beside it
    return path


@pytest.fixture(scope="session")
def wallet_head_postgresql(postgresql_server: PostgresServer) -> str:
    """A PostgreSQL database the migrations brought to head, once per session, for copies."""
    name = postgresql_server.create_database()
    asyncio.run(_migrate(postgresql_server.url(name)))  # and disconnected, so it can be copied
    return name


@pytest.fixture
def wallet_db_url(wallet_backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., str]]:
    """``wallet_db_url()``: the URL of a new, empty database on the backend.

    ``wallet_db_url(head=True)``: of a new database already at the migrations' head, a copy of
    the session's ``wallet_head_*``. Copying takes a third of the time of migrating, and tests
    make hundreds of databases; ``test_wallet_db.py`` runs the migrations on empty ones.
    """
    # set up now, outside the test's event loop: the copies are made while it runs
    template = request.getfixturevalue(f"wallet_head_{wallet_backend}")
    if wallet_backend == "sqlite":
        counter = itertools.count()

        def make_file(*, head: bool = False) -> str:
            path = tmp_path / f"wallet-{next(counter)}.sqlite"
            if head:
                shutil.copyfile(template, path)
            return f"sqlite+aiosqlite:///{path}"

        yield make_file
        return
    server: PostgresServer = request.getfixturevalue("postgresql_server")
    created: list[str] = []

    def make_database(*, head: bool = False) -> str:
        created.append(server.create_database(template=template if head else "template1"))
        return server.url(created[-1])

    yield make_database
    for name in created:  # hundreds of 7 MB databases otherwise
        server.drop_database(name)


@pytest.fixture
async def make_wallet_db(wallet_db_url: Callable[..., str]) -> AsyncIterator[Callable[[], Awaitable[Database]]]:
    """``await make_wallet_db()``: a new created ``Database``; all are closed after the test."""
    opened: list[Database] = []

    async def make() -> Database:
        db = Database(wallet_db_url(head=True))
        opened.append(db)
        await db.create()  # at head already: checks the revision and changes nothing
        return db

    yield make
    for db in opened:
        await db.aclose()


@pytest.fixture
async def wallet_db(make_wallet_db: Callable[[], Awaitable[Database]]) -> Database:
    """A fresh, created ``Database``."""
    return await make_wallet_db()


@pytest.fixture
async def served_here() -> AsyncIterator[Any]:
    """``await serve(app)``: ``app`` on uvicorn on loopback, on the test's own event loop (so
    the wallet's database pool is used on one loop); returns its URL."""
    running: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def serve(app: Any) -> str:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        running.append((server, task))
        return f"http://127.0.0.1:{port}"

    yield serve
    for server, task in running:
        server.should_exit = True
        await task
