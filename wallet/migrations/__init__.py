"""The wallet schema's Alembic migrations: ``versions/`` holds one file per schema change.

``Database.create()`` runs them (``upgrade``); nothing else creates the wallet's tables. The
append-only triggers live here too, per dialect, since SQLAlchemy's metadata cannot describe
them.

A schema change: edit the tables (``wallet.db``, ``wallet.service``, ``wallet.webhooks``), then
from the repository root, against a scratch database brought to the current head::

    export AEP2_WALLET_DB=sqlite+aiosqlite:///scratch.sqlite
    alembic -c wallet/migrations/alembic.ini upgrade head
    alembic -c wallet/migrations/alembic.ini revision --autogenerate -m "what changed"

and read the new file: autogenerate sees neither CHECK constraints nor triggers, and a file
must run on SQLite and PostgreSQL alike (``op.batch_alter_table`` for SQLite's ALTERs).
``tests/wallet/test_wallet_db.py`` fails until the migrations build exactly the tables the
metadata describes.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect

__all__ = ["BASELINE", "config", "head", "upgrade"]

#: The first revision: the schema ``Database.create()`` built with ``create_all`` before
#: migrations existed, so a database made then is adopted at this revision.
BASELINE = "0001"

_HERE = Path(__file__).parent


def config(connection: Connection | None = None) -> Config:
    """An Alembic ``Config`` for these migrations; ``env.py`` runs on ``connection`` when given."""
    cfg = Config()
    cfg.set_main_option("script_location", str(_HERE))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    """The newest revision id."""
    revision = ScriptDirectory.from_config(config()).get_current_head()
    assert revision is not None
    return revision


def upgrade(connection: Connection) -> None:
    """Bring the database behind ``connection`` to the newest revision, in its open transaction.

    A database that has the wallet's tables but no ``alembic_version`` (created before
    migrations existed) is first stamped at ``BASELINE``. Raises what the failing DDL raised;
    the caller's transaction then rolls everything back (PostgreSQL and SQLite both have
    transactional DDL).
    """
    cfg = config(connection)
    tables = inspect(connection).get_table_names()
    if "alembic_version" not in tables and "audit_log" in tables:
        command.stamp(cfg, BASELINE)
    command.upgrade(cfg, "head")
