"""The database layer on both backends: migrations that build exactly the described schema,
``create()`` on new, current, concurrent and pre-migration databases, and the writer locks."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect, select, text
from sqlalchemy.exc import IntegrityError

from wallet import migrations
from wallet.db import Database, accounts, metadata, serialize, statement_guard


def _schema_diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


async def _revision(db: Database) -> str | None:
    async with db.snapshot() as conn:
        return (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one_or_none()


async def test_the_migrations_build_exactly_the_tables_the_metadata_describes(wallet_db: Database) -> None:
    async with wallet_db.snapshot() as conn:
        assert await conn.run_sync(_schema_diff) == []
    assert await _revision(wallet_db) == migrations.head()


async def test_create_again_is_a_no_op(wallet_db: Database) -> None:
    async with wallet_db.transaction() as conn:
        await conn.execute(accounts.insert().values(kind="owner", ref="o"))
    await wallet_db.create()
    async with wallet_db.snapshot() as conn:
        assert (await conn.execute(select(accounts.c.ref))).scalars().all() == ["o"]
    assert await _revision(wallet_db) == migrations.head()


async def _made_before_migrations(url: str) -> None:
    """What ``create()`` built before migrations existed (the ``BASELINE`` schema, no version
    table), with one row."""

    def baseline(connection: Connection) -> None:
        command.upgrade(migrations.config(connection), migrations.BASELINE)
        connection.execute(text("DROP TABLE alembic_version"))

    async with Database(url) as db:
        async with db.transaction() as conn:
            await conn.run_sync(baseline)
            await conn.execute(accounts.insert().values(kind="owner", ref="o"))


async def test_a_database_made_before_migrations_existed_is_adopted(wallet_db_url: Callable[[], str]) -> None:
    url = wallet_db_url()
    await _made_before_migrations(url)
    async with Database(url) as db:
        await db.create()
        assert await _revision(db) == migrations.head()
        async with db.snapshot() as conn:
            assert (await conn.execute(select(accounts.c.ref))).scalars().all() == ["o"]
            assert await conn.run_sync(_schema_diff) == []


async def test_two_processes_upgrading_one_database_at_once_both_succeed(wallet_db_url: Callable[[], str]) -> None:
    url = wallet_db_url()
    await _made_before_migrations(url)
    first, second = Database(url), Database(url)  # no lock shared in the process: the database's decides
    try:
        await asyncio.gather(first.create(), second.create())
        async with first.snapshot() as conn:
            assert (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars().all() == [
                migrations.head()
            ]
    finally:
        await first.aclose()
        await second.aclose()


async def test_the_migrations_downgrade_to_nothing_and_upgrade_again(wallet_db: Database) -> None:
    def down(connection: Connection) -> list[str]:
        command.downgrade(migrations.config(connection), "base")
        return inspect(connection).get_table_names()

    async with wallet_db.transaction() as conn:
        assert await conn.run_sync(down) == ["alembic_version"]
    await wallet_db.create()
    async with wallet_db.snapshot() as conn:
        assert await conn.run_sync(_schema_diff) == []


async def test_serialize_makes_a_second_writer_wait_until_the_first_commits(wallet_db: Database) -> None:
    order: list[str] = []
    holding = asyncio.Event()

    async def first() -> None:
        async with wallet_db.transaction() as conn:
            await serialize(conn, "test.resource")
            holding.set()
            await asyncio.sleep(0.2)
            order.append("first commits")

    async def second() -> None:
        await holding.wait()
        async with wallet_db.transaction() as conn:
            await serialize(conn, "test.resource")
            order.append("second holds")

    await asyncio.gather(first(), second())
    assert order == ["first commits", "second holds"]


async def test_a_statement_failed_inside_statement_guard_leaves_the_transaction_usable(wallet_db: Database) -> None:
    async with wallet_db.transaction() as conn:
        await conn.execute(accounts.insert().values(kind="owner", ref="o"))
        with pytest.raises(IntegrityError):
            async with statement_guard(conn):
                await conn.execute(accounts.insert().values(kind="owner", ref="o"))
        await conn.execute(accounts.insert().values(kind="owner", ref="p"))
    async with wallet_db.snapshot() as conn:
        assert sorted((await conn.execute(select(accounts.c.ref))).scalars()) == ["o", "p"]
