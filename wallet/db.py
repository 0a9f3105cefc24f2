"""The wallet's database layer: one schema, SQLite by default, PostgreSQL by URL.

Everything above this module speaks SQLAlchemy Core 2 (async) and portable SQL. What differs
per dialect is kept here, one small function per dialect, and in the migrations:

- **connection set-up** (``_sqlite_connect``): WAL, foreign keys, a busy timeout;
- **append-only tables**: triggers that refuse UPDATE and DELETE, created by the initial
  migration (``wallet/migrations/``) in each dialect's trigger language;
- **writer serialisation** (``transaction`` and ``serialize``), the choice explained below;
- **recoverable constraint failures** (``statement_guard``): a savepoint on PostgreSQL only.

Writers on SQLite. ``transaction()`` opens every write transaction with ``BEGIN IMMEDIATE``
(the ``begin`` event, with the driver's own transaction handling turned off, SQLAlchemy's
documented recipe for pysqlite/aiosqlite): SQLite's write lock is taken at the start, so two
transactions can never both read a balance and then both write, even from two processes (the
CLI next to the server); a second writer waits up to ``busy_timeout``. Inside one process an
``asyncio.Lock`` queues writers before they take a pooled connection, so they wait their turn
instead of polling SQLite's busy handler. ``snapshot()`` begins a plain deferred ``BEGIN``: in
WAL mode readers neither wait for nor block the writer. One limit: create a new SQLite file
from one process (``python -m wallet init``) before others open it. Until the first commit
reaches the main file (a checkpoint), a process opening it finds no WAL header, stays in
rollback-journal mode and takes none of the WAL writer's locks.

Writers on PostgreSQL (asyncpg). Transactions are concurrent at READ COMMITTED, so each lock
below is taken before the rows it protects are read; every later statement then sees what the
previous holder committed. Inside one process at most ``pool_size`` (5) write transactions run
at once; the rest wait their turn before taking a connection, as on SQLite, so the pool's
overflow stays free for readers. The ledger locks the one account it debits with ``SELECT … FOR
UPDATE`` (portable Core, a no-op on SQLite); the audit log and the service's spends take a
transaction-scoped advisory lock (``serialize``). Unique constraints back both, so a lost lock
fails an insert instead of corrupting a chain. ``snapshot()`` is a read-only REPEATABLE READ
transaction. The wallet's test suite runs on both backends, its concurrency tests included.

Schema and upgrades. Alembic migrations (``wallet/migrations/versions``) are the only thing
that creates or changes tables; the ``Table`` objects here, in ``wallet.service`` and in
``wallet.webhooks`` describe the result for queries (a test checks that the two agree on both
backends). ``Database.create()`` brings a database to the newest revision in one transaction.
To upgrade a deployed wallet: stop its servers, back the database up (copy the SQLite file
while nothing writes, or ``pg_dump``), install the new version, and run
``python -m wallet init`` with the same environment (it calls ``create()``, and leaves an
existing owner keystore as it is); or, without the owner's environment,
``AEP2_WALLET_DB=<url> alembic -c wallet/migrations/alembic.ini upgrade head``. A database
created before the migrations existed is adopted at the first revision. On PostgreSQL, run
the migrations as the role that owns the tables, and revoke UPDATE, DELETE and TRUNCATE on
``transactions``, ``entries`` and ``audit_log`` from the role the server runs as.

Keep a write transaction short and free of network calls: on SQLite it holds the only
write lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from datetime import datetime, timezone
from typing import Any, AsyncIterator

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    event,
    text,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from . import migrations

__all__ = [
    "Database",
    "DEFAULT_URL",
    "metadata",
    "accounts",
    "transactions",
    "entries",
    "audit_log",
    "wallet_council_votes",
    "serialize",
    "statement_guard",
    "utc_now",
]

DEFAULT_URL = "sqlite+aiosqlite:///wallet.sqlite"

#: Execution option that makes a SQLite transaction begin deferred (a reader) instead of IMMEDIATE.
_READ_ONLY = "wallet_read_only"

metadata = MetaData()

#: Ledger row ids: BIGINT on PostgreSQL (a busy ledger outgrows 2^31 entries); on SQLite an
#: INTEGER PRIMARY KEY is the 64-bit rowid already, and only that spelling makes it one.
_Id = BigInteger().with_variant(Integer(), "sqlite")

# ---------------------------------------------------------------------------------------------
# Ledger (wallet/ledger.py). One row of ``entries`` moves ``amount`` from one account to
# another, so no transaction can be unbalanced; no balance is stored anywhere.
# ---------------------------------------------------------------------------------------------

accounts = Table(
    "accounts",
    metadata,
    Column("id", _Id, primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("ref", String(200), nullable=False),
    # intent -> its owner; reserved (one per payment) -> its intent. Set once, at creation.
    Column("parent_id", _Id, ForeignKey("accounts.id"), nullable=True),
    UniqueConstraint("kind", "ref", name="accounts_kind_ref"),
    CheckConstraint("ref <> ''", name="accounts_ref_nonempty"),
)
Index("accounts_by_parent", accounts.c.parent_id)

transactions = Table(
    "transactions",
    metadata,
    Column("id", _Id, primary_key=True),
    Column("kind", String(16), nullable=False),
    # the payment a reserve/settle/release belongs to; NULL for the others
    Column("payment_id", String(200), nullable=True),
    Column("created_at", String(32), nullable=False),  # ISO 8601 UTC, see utc_now()
    Column("memo", Text, nullable=False, server_default=""),
    Column("idempotency_key", String(200), nullable=True, unique=True),
    # sha256 of the request a keyed operation was called with: a reused key must match it
    Column("request_digest", String(64), nullable=True),
    # At most one reserve, one settle and one release per payment (NULLs are distinct).
    UniqueConstraint("kind", "payment_id", name="transactions_one_per_payment"),
)

entries = Table(
    "entries",
    metadata,
    Column("id", _Id, primary_key=True),
    Column("transaction_id", _Id, ForeignKey("transactions.id"), nullable=False),
    Column("debit_account", _Id, ForeignKey("accounts.id"), nullable=False),
    Column("credit_account", _Id, ForeignKey("accounts.id"), nullable=False),
    Column("amount", BigInteger, nullable=False),
    CheckConstraint("amount > 0", name="entries_amount_positive"),
    CheckConstraint("debit_account <> credit_account", name="entries_two_accounts"),
)
Index("entries_by_transaction", entries.c.transaction_id)
Index("entries_by_debit", entries.c.debit_account)
Index("entries_by_credit", entries.c.credit_account)

# ---------------------------------------------------------------------------------------------
# Audit trail (wallet/audit.py): a hash chain; seq and prev_hash unique, so it cannot fork.
# ---------------------------------------------------------------------------------------------

audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("at", String(32), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("action", String(200), nullable=False),
    Column("payload", Text, nullable=False),  # canonical JSON text (TEXT, not jsonb: bytes kept)
    Column("prev_hash", String(64), nullable=False, unique=True),
    Column("hash", String(64), nullable=False, unique=True),
)

# ---------------------------------------------------------------------------------------------
# AI review council (wallet/council.py): one row per judge per review, abstentions included
# (``vote`` NULL, ``error`` set). The verdict is not stored: it is a pure function of the
# review's rows and their ``quorum`` (``council.tally``).
# ---------------------------------------------------------------------------------------------

wallet_council_votes = Table(
    "wallet_council_votes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("review_id", String(40), nullable=False),  # wallet_reviews.id (rev_…)
    Column("at", String(32), nullable=False),
    Column("judge", String(40), nullable=False),  # the role's name: cfo, growth, risk…
    Column("backend", String(40), nullable=False),  # anthropic, offline…
    Column("model", String(100), nullable=True),
    Column("vote", String(8), nullable=True),  # approve | deny; NULL: abstained
    Column("rationale", Text, nullable=True),
    Column("risk_score", Integer, nullable=True),  # 0-100
    Column("confidence", Float, nullable=True),  # 0-1
    Column("input_tokens", Integer, nullable=True),
    Column("output_tokens", Integer, nullable=True),
    Column("latency_ms", Float, nullable=False),
    Column("error", Text, nullable=True),  # why the judge abstained
    Column("quorum", Integer, nullable=False),  # approvals the council needed
    UniqueConstraint("review_id", "judge", name="wallet_council_votes_one_per_judge"),
    CheckConstraint("vote IN ('approve', 'deny') OR (vote IS NULL AND error IS NOT NULL)",
                    name="wallet_council_votes_vote"),
    CheckConstraint("risk_score BETWEEN 0 AND 100", name="wallet_council_votes_risk"),
    CheckConstraint("confidence BETWEEN 0 AND 1", name="wallet_council_votes_confidence"),
)


# ---------------------------------------------------------------------------------------------
# Dialect-specific behaviour (the append-only triggers of transactions, entries and audit_log
# are DDL in wallet/migrations/, which create every table)
# ---------------------------------------------------------------------------------------------


def _sqlite_connect(engine: AsyncEngine, busy_timeout: float, synchronous: str) -> None:
    """WAL, foreign keys and a busy timeout on every connection; BEGIN IMMEDIATE for writers."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Turn off the driver's implicit BEGIN: the "begin" event below emits our own.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        read_only = conn.get_execution_options().get(_READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


_ADVISORY_LOCK = text("SELECT pg_advisory_xact_lock(:key)").bindparams(bindparam("key", type_=BigInteger))
#: The resource ``Database.create()`` serializes on: two processes never migrate at once.
_MIGRATE_LOCK = "wallet.migrations"


async def serialize(conn: AsyncConnection, resource: str) -> None:
    """Make other writers of ``resource`` wait until this transaction ends.

    SQLite: nothing to do, a ``Database.transaction()`` already holds the database's only
    write lock. PostgreSQL: a transaction-scoped advisory lock on a 64-bit key derived from
    ``resource``, released by the commit or rollback. Raises ``NotImplementedError`` on any
    other dialect.
    """
    dialect = conn.dialect.name
    if dialect == "sqlite":
        return
    if dialect == "postgresql":
        key = int.from_bytes(hashlib.sha256(resource.encode()).digest()[:8], "big", signed=True)
        await conn.execute(_ADVISORY_LOCK, {"key": key})
        return
    raise NotImplementedError(f"serialize: no writer lock for dialect {dialect!r}")


def statement_guard(conn: AsyncConnection) -> contextlib.AbstractAsyncContextManager[Any]:
    """Wrap a statement that may fail on a unique constraint and be recovered from.

    PostgreSQL aborts the whole transaction on a failed statement, so the statement runs in a
    savepoint; SQLite undoes only the failed statement, so nothing is needed (and the two round
    trips of a savepoint are saved).
    """
    if conn.dialect.name == "sqlite":
        return contextlib.nullcontext()
    return conn.begin_nested()


def utc_now() -> str:
    """The current time as fixed-width ISO 8601 UTC text (sorts as it reads; hashed as is)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------------------------------------
# Database
# ---------------------------------------------------------------------------------------------


class Database:
    """An async engine on ``url`` with the wallet's schema.

    ``url`` is any SQLAlchemy async URL: ``sqlite+aiosqlite:///path.sqlite`` (the default,
    zero configuration) or ``postgresql+asyncpg://user@host/db``. ``synchronous`` is SQLite's
    durability setting: ``NORMAL`` in WAL survives a crash of the process, ``FULL`` also a
    power loss, at one fsync per commit.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        busy_timeout: float = 30.0,
        synchronous: str = "FULL",
        echo: bool = False,
    ) -> None:
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous: expected OFF, NORMAL, FULL or EXTRA, got {synchronous!r}")
        self.url = url
        # hide_parameters: a failed statement's message must not carry its values (secrets).
        self.engine: AsyncEngine = create_async_engine(url, echo=echo, hide_parameters=True)
        self.metadata = metadata
        self.dialect = self.engine.dialect.name
        if self.dialect == "sqlite":
            _sqlite_connect(self.engine, busy_timeout, synchronous.upper())
            self._writer: contextlib.AbstractAsyncContextManager[Any] = asyncio.Lock()
        else:
            # Writers queue on a row or advisory lock while holding a pooled connection. Let at
            # most pool_size of them in at once and queue the rest here, as the SQLite lock
            # does: a burst of spends then neither times out in the pool's queue (30 s) nor
            # leaves the overflow connections to anyone but readers.
            self._writer = asyncio.Semaphore(self.engine.pool.size())  # type: ignore[attr-defined]

    async def create(self) -> None:
        """Bring the schema to the newest migration: a new database gets every table, index and
        trigger, an older one its pending migrations, a current one nothing (idempotent).

        One transaction, serialized against other processes doing the same: a failed
        migration leaves the database as it was.
        """
        async with self.transaction() as conn:
            await serialize(conn, _MIGRATE_LOCK)
            await conn.run_sync(migrations.upgrade)

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction: commits when the block ends, rolls back if it raises.

        Everything a state change writes (ledger postings, its audit record, the service's
        rows) goes through the one connection yielded here, so it commits or vanishes whole.
        """
        async with self._writer:
            async with self.engine.begin() as conn:
                yield conn

    @contextlib.asynccontextmanager
    async def snapshot(self) -> AsyncIterator[AsyncConnection]:
        """A read-only transaction that sees one consistent state and never blocks writers."""
        async with self.engine.connect() as conn:
            if self.dialect == "sqlite":
                await conn.execution_options(**{_READ_ONLY: True})
            elif self.dialect == "postgresql":
                await conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            async with conn.begin():
                yield conn

    def __repr__(self) -> str:
        return f"Database({self.engine.url.render_as_string(hide_password=True)!r})"
