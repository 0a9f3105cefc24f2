"""Alembic's entry point for the wallet's migrations (see ``wallet/migrations/__init__.py``).

Run by ``wallet.migrations.upgrade`` on the caller's connection (``config.attributes``), or by
the ``alembic`` command on the URL in ``AEP2_WALLET_DB`` (default: ``wallet.db.DEFAULT_URL``).
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

# Importing wallet.db imports the package first, whose __init__ registers the service's and
# the outbox's tables on the metadata autogenerate compares with.
from wallet.db import DEFAULT_URL, metadata


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


async def _run_on_url(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_run)
            await conn.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("the wallet's migrations run online only: drop --sql")
connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    asyncio.run(_run_on_url(os.environ.get("AEP2_WALLET_DB", DEFAULT_URL)))
