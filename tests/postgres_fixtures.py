"""A throwaway PostgreSQL server for the whole test session, and a fresh database per call.

Registered for every test package from ``tests/conftest.py`` (``pytest_plugins``). Request
``postgresql_server`` and call ``create_database()``; the server runs from the first request
to the end of the session, then stops and its directory goes. The server itself is
``aep2.stores.devserver.PostgresServer`` (Debian's ``postgresql`` package, ``make test``
installs it). Missing binaries fail the requesting tests with what to install: they are
never skipped.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from aep2.stores.devserver import PostgresServer, find_bindir

__all__ = ["PostgresServer", "find_bindir", "postgresql_server"]


@pytest.fixture(scope="session")
def postgresql_server() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server, started on first use; fails (never skips) without binaries."""
    try:
        server = PostgresServer()
    except FileNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    try:
        yield server
    finally:
        server.stop()
