"""Schema and migrations: the tables, and the triggers that keep the running totals, on
SQLite and on PostgreSQL.

Both dialects store the same rows under the same names; only types and trigger syntax
differ. ``migrate`` creates what is missing and checks the recorded schema version, in one
transaction (on PostgreSQL under an advisory lock, so replicas starting together create it
once).
"""

from __future__ import annotations

import sqlite3

from .database import Database, Dialect

__all__ = ["SCHEMA_VERSION", "migrate"]

# 2: one-time nonces (no sealed watermark); batches keep their signed transaction.
# 3: batches keep their block, proving seconds and gas used (added to a schema 2 store).
SCHEMA_VERSION = 3

# The tables, written once: ``{blob}``, ``{int}``, ``{real}`` and ``{serial}`` (an
# auto-numbered primary key) become each dialect's types. Amounts are 64-bit integers on
# both (below 2^63 base units per figure).
_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS intents (
    intent_id {blob} PRIMARY KEY,
    payer TEXT NOT NULL,
    asset TEXT NOT NULL,
    body TEXT NOT NULL,
    committed {int} NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS mandates (
    payment_id TEXT PRIMARY KEY,
    intent_id {blob} NOT NULL REFERENCES intents(intent_id),
    nonce {int} NOT NULL,
    payee TEXT NOT NULL,
    amount {int} NOT NULL,
    deadline {int} NOT NULL,
    request_hash TEXT NOT NULL,
    r8x TEXT NOT NULL,
    r8y TEXT NOT NULL,
    s TEXT NOT NULL,
    payer TEXT NOT NULL,
    asset TEXT NOT NULL,
    status TEXT NOT NULL,
    accepted_at {real} NOT NULL,
    batch_id {int},
    tx_hash TEXT,
    settled_block {int},
    reason TEXT,
    UNIQUE (intent_id, nonce)
);
CREATE INDEX IF NOT EXISTS mandates_by_status ON mandates (status, intent_id, nonce);
CREATE INDEX IF NOT EXISTS mandates_by_payer ON mandates (payer, asset, status, settled_block);
CREATE TABLE IF NOT EXISTS payer_outstanding (
    payer TEXT NOT NULL,
    asset TEXT NOT NULL,
    amount {int} NOT NULL DEFAULT 0,
    PRIMARY KEY (payer, asset)
);
CREATE INDEX IF NOT EXISTS mandates_by_batch ON mandates (batch_id);
CREATE TABLE IF NOT EXISTS batches (
    batch_id {serial},
    status TEXT NOT NULL,
    time_ref {int} NOT NULL,
    tx_hash TEXT,
    reason TEXT,
    created_at {real} NOT NULL,
    raw_tx {blob},
    tx_nonce {int},
    settled_block {int},
    prove_seconds {real},
    gas_used {int}
);
CREATE TABLE IF NOT EXISTS payment_identifiers (
    payment_identifier TEXT PRIMARY KEY,
    payload_hash TEXT NOT NULL,
    claimed_at {real} NOT NULL,
    response TEXT
);
CREATE TABLE IF NOT EXISTS exact_payments (
    nonce TEXT PRIMARY KEY,
    payer TEXT NOT NULL,
    payee TEXT NOT NULL,
    asset TEXT NOT NULL,
    amount {int} NOT NULL,
    "authorization" TEXT NOT NULL,
    signature TEXT NOT NULL,
    status TEXT NOT NULL,
    tx_hash TEXT,
    reason TEXT,
    created_at {real} NOT NULL
);
"""

# The running totals. An intent's committed total counts every mandate that is not failed:
# it is what the intent's maximum is checked against. A payer's outstanding total counts
# mandates still to come out of the on-chain escrow ('accepted' or 'batched'), so the escrow
# check is one lookup however long the queue.
_SQLITE_TRIGGERS = """
CREATE TRIGGER IF NOT EXISTS mandate_inserted AFTER INSERT ON mandates BEGIN
    UPDATE intents SET committed = committed + NEW.amount WHERE intent_id = NEW.intent_id;
    INSERT OR IGNORE INTO payer_outstanding (payer, asset) VALUES (NEW.payer, NEW.asset);
    UPDATE payer_outstanding SET amount = amount + NEW.amount WHERE payer = NEW.payer AND asset = NEW.asset;
END;
CREATE TRIGGER IF NOT EXISTS mandate_deleted AFTER DELETE ON mandates BEGIN
    UPDATE intents SET committed = committed - OLD.amount WHERE intent_id = OLD.intent_id;
    UPDATE payer_outstanding SET amount = amount - OLD.amount
    WHERE payer = OLD.payer AND asset = OLD.asset AND OLD.status IN ('accepted', 'batched');
END;
CREATE TRIGGER IF NOT EXISTS mandate_left_queue AFTER UPDATE OF status ON mandates
WHEN OLD.status IN ('accepted', 'batched') AND NEW.status NOT IN ('accepted', 'batched') BEGIN
    UPDATE payer_outstanding SET amount = amount - OLD.amount WHERE payer = OLD.payer AND asset = OLD.asset;
END;
CREATE TRIGGER IF NOT EXISTS mandate_failed AFTER UPDATE OF status ON mandates
WHEN NEW.status = 'failed' AND OLD.status != 'failed' BEGIN
    UPDATE intents SET committed = committed - OLD.amount WHERE intent_id = OLD.intent_id;
END;
"""

# The same totals on PostgreSQL: one trigger function that always locks the intent's row
# before the payer's, the order a reservation locks them in, so the processor and the
# gateways never deadlock.
_POSTGRES_TRIGGERS = """
CREATE OR REPLACE FUNCTION mandate_totals() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    was_failed BOOLEAN := TG_OP <> 'INSERT' AND OLD.status = 'failed';
    is_failed BOOLEAN := TG_OP = 'UPDATE' AND NEW.status = 'failed';
    was_queued BOOLEAN := TG_OP <> 'INSERT' AND OLD.status IN ('accepted', 'batched');
    is_queued BOOLEAN := TG_OP = 'UPDATE' AND NEW.status IN ('accepted', 'batched');
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE intents SET committed = committed + NEW.amount WHERE intent_id = NEW.intent_id;
        INSERT INTO payer_outstanding AS o (payer, asset, amount) VALUES (NEW.payer, NEW.asset, NEW.amount)
        ON CONFLICT (payer, asset) DO UPDATE SET amount = o.amount + EXCLUDED.amount;
        RETURN NULL;
    END IF;
    IF NOT was_failed AND (TG_OP = 'DELETE' OR is_failed) THEN
        UPDATE intents SET committed = committed - OLD.amount WHERE intent_id = OLD.intent_id;
    END IF;
    IF was_queued AND NOT is_queued THEN
        UPDATE payer_outstanding SET amount = amount - OLD.amount WHERE payer = OLD.payer AND asset = OLD.asset;
    END IF;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER mandate_totals AFTER INSERT OR DELETE OR UPDATE OF status ON mandates
FOR EACH ROW EXECUTE FUNCTION mandate_totals();
"""

_TYPES: dict[Dialect, dict[str, str]] = {
    "sqlite": {"blob": "BLOB", "int": "INTEGER", "real": "REAL", "serial": "INTEGER PRIMARY KEY AUTOINCREMENT"},
    "postgresql": {"blob": "BYTEA", "int": "BIGINT", "real": "DOUBLE PRECISION",
                   "serial": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"},
}
_SQLITE = _TABLES.format(**_TYPES["sqlite"]) + _SQLITE_TRIGGERS
_POSTGRES = _TABLES.format(**_TYPES["postgresql"]) + _POSTGRES_TRIGGERS

#: Schema 2 → 3: what a batch records of its proof and its receipt. Plain ``ADD COLUMN``,
#: which both dialects speak; run once, when the recorded version is 2.
_BATCH_FIGURES = {"settled_block": "{int}", "prove_seconds": "{real}", "gas_used": "{int}"}

# Any constant shared by every process that migrates: one advisory lock for the schema.
_MIGRATION_LOCK = 0x41455032


def _statements(dialect: Dialect) -> list[str]:
    if dialect == "postgresql":
        return [_POSTGRES]  # one script: PostgreSQL's simple protocol runs it whole
    statements, current = [], []
    for line in _SQLITE.splitlines():
        if not line.strip():
            continue
        current.append(line)
        joined = "\n".join(current)
        if line.rstrip().endswith(";") and sqlite3.complete_statement(joined):
            statements.append(joined)
            current = []
    return statements


async def _add_batch_figures(tx: Database) -> None:
    for column, kind in _BATCH_FIGURES.items():
        await tx.execute(f"ALTER TABLE batches ADD COLUMN {column} {kind.format(**_TYPES[tx.dialect])}")


async def migrate(db: Database) -> None:
    """Create the schema or check the one there, atomically.

    Every intent gets its payer's outstanding row (a reservation locks it): stores written
    before reservations relied on it gain the rows they lack. A schema 2 store gains the
    batch columns of schema 3 (``settled_block``, ``prove_seconds``, ``gas_used``; NULL for
    the batches it has). Raises ``RuntimeError`` for a schema newer than this code, or for
    schema 1 (ordered nonces, the previous contract): that store is left unchanged.
    """
    async with db.transaction() as tx:
        if tx.dialect == "postgresql":
            await tx.execute(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
        for statement in _statements(tx.dialect):
            await tx.execute(statement)
        row = await tx.fetchrow("SELECT value FROM meta WHERE key = 'schema_version'")
        version = int(row["value"]) if row else 0
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"store schema {version} is newer than this code ({SCHEMA_VERSION})")
        if version == 2:
            await _add_batch_figures(tx)
        elif 0 < version < SCHEMA_VERSION:
            # Schema 1 ordered nonces per intent; its mandates belong to the old contract.
            raise RuntimeError(
                f"store schema {version} predates one-time nonces: settle it with the previous "
                "release, then start a new store"
            )
        await tx.execute(
            "INSERT INTO payer_outstanding (payer, asset) SELECT DISTINCT payer, asset FROM intents WHERE true "
            "ON CONFLICT (payer, asset) DO NOTHING"
        )
        await tx.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', :version) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            {"version": str(SCHEMA_VERSION)},
        )
