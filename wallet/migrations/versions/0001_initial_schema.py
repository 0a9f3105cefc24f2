"""The initial schema: the ledger, the audit log, the service's tables, the webhook outbox.

The tables as ``Database.create()`` built them with ``create_all`` before migrations existed
(``wallet.migrations.BASELINE``), plus the append-only triggers on ``transactions``, ``entries``
and ``audit_log``. These refuse UPDATE and DELETE (and TRUNCATE on PostgreSQL), which stops
mistakes and the application's own SQL; the audit chain's ``verify`` is what detects someone
with direct access to the database. On PostgreSQL also revoke UPDATE, DELETE and TRUNCATE on
them from the application's role.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from wallet.migrations.triggers import refuse_update_and_delete

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

#: Ledger row ids: BIGINT, except SQLite's INTEGER PRIMARY KEY (the 64-bit rowid).
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

APPEND_ONLY = ("transactions", "entries", "audit_log")


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", ID, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("ref", sa.String(length=200), nullable=False),
        sa.Column("parent_id", ID, nullable=True),
        sa.CheckConstraint("ref <> ''", name="accounts_ref_nonempty"),
        sa.ForeignKeyConstraint(["parent_id"], ["accounts.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("kind", "ref", name="accounts_kind_ref"),
    )
    op.create_index("accounts_by_parent", "accounts", ["parent_id"])

    op.create_table(
        "audit_log",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("at", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=200), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("hash"),
        sa.UniqueConstraint("prev_hash"),
    )

    op.create_table(
        "transactions",
        sa.Column("id", ID, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("payment_id", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.Column("memo", sa.Text(), server_default="", nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("request_digest", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("idempotency_key"),
        sa.UniqueConstraint("kind", "payment_id", name="transactions_one_per_payment"),
    )

    op.create_table(
        "wallet_agents",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("api_key_id", sa.String(length=16), nullable=False),
        sa.Column("api_key_digest", sa.String(length=64), nullable=False),
        sa.Column("api_key_prefix", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.CheckConstraint("name <> ''", name="wallet_agents_name_nonempty"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("api_key_id"),
    )

    op.create_table(
        "wallet_decisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.String(length=32), nullable=False),
        sa.Column("agent_id", sa.String(length=40), nullable=False),
        sa.Column("intent_id", sa.String(length=40), nullable=True),
        sa.Column("outcome", sa.String(length=10), nullable=False),
        sa.Column("rule", sa.String(length=40), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("payment_id", sa.String(length=66), nullable=True),
        sa.Column("review_id", sa.String(length=40), nullable=True),
        sa.Column("record", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("wallet_decisions_by_agent", "wallet_decisions", ["agent_id", "id"])

    op.create_table(
        "wallet_kill_switch",
        sa.Column("scope", sa.String(length=40), nullable=False),
        sa.Column("engaged", sa.Boolean(), nullable=False),
        sa.Column("changed_at", sa.String(length=32), nullable=False),
        sa.Column("changed_by", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("scope"),
    )

    op.create_table(
        "wallet_rules",
        sa.Column("scope", sa.String(length=40), nullable=False),
        sa.Column("rules", sa.Text(), nullable=False),
        sa.Column("changed_at", sa.String(length=32), nullable=False),
        sa.Column("changed_by", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("scope"),
    )

    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("secret", sa.String(length=100), nullable=False),
        sa.Column("event_types", sa.Text(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.CheckConstraint("url <> ''", name="webhook_endpoints_url_nonempty"),
        sa.PrimaryKeyConstraint("id"),
    )

    op.create_table(
        "entries",
        sa.Column("id", ID, nullable=False),
        sa.Column("transaction_id", ID, nullable=False),
        sa.Column("debit_account", ID, nullable=False),
        sa.Column("credit_account", ID, nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("amount > 0", name="entries_amount_positive"),
        sa.CheckConstraint("debit_account <> credit_account", name="entries_two_accounts"),
        sa.ForeignKeyConstraint(["credit_account"], ["accounts.id"]),
        sa.ForeignKeyConstraint(["debit_account"], ["accounts.id"]),
        sa.ForeignKeyConstraint(["transaction_id"], ["transactions.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("entries_by_credit", "entries", ["credit_account"])
    op.create_index("entries_by_debit", "entries", ["debit_account"])
    op.create_index("entries_by_transaction", "entries", ["transaction_id"])

    op.create_table(
        "wallet_intents",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("agent_id", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("purpose", sa.Text(), nullable=False),
        sa.Column("budget", sa.BigInteger(), nullable=False),
        sa.Column("per_payment_cap", sa.BigInteger(), nullable=False),
        sa.Column("duration_seconds", sa.BigInteger(), nullable=False),
        sa.Column("payees", sa.Text(), nullable=False),
        sa.Column("hosts", sa.Text(), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.Column("decided_at", sa.String(length=32), nullable=True),
        sa.Column("decided_by", sa.String(length=200), nullable=True),
        sa.Column("chain_intent_id", sa.String(length=66), nullable=True),
        sa.Column("signed_intent", sa.Text(), nullable=True),
        sa.Column("sealed_session_key", sa.LargeBinary(), nullable=True),
        sa.Column("valid_after", sa.BigInteger(), nullable=True),
        sa.Column("valid_before", sa.BigInteger(), nullable=True),
        sa.Column("next_nonce", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("registered_at", sa.String(length=32), nullable=True),
        sa.Column("revoked_at", sa.String(length=32), nullable=True),
        sa.Column("chain_revoked_at", sa.String(length=32), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending_approval', 'active', 'denied', 'revoked', 'expired')",
            name="wallet_intents_status",
        ),
        sa.CheckConstraint("budget > 0 AND per_payment_cap > 0", name="wallet_intents_amounts"),
        sa.ForeignKeyConstraint(["agent_id"], ["wallet_agents.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("chain_intent_id"),
    )
    op.create_index("wallet_intents_by_agent", "wallet_intents", ["agent_id", "status"])

    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("endpoint_id", sa.String(length=40), nullable=False),
        sa.Column("event_type", sa.String(length=40), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.String(length=32), nullable=False),
        sa.Column("claim_token", sa.String(length=32), nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.Column("updated_at", sa.String(length=32), nullable=False),
        sa.CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="webhook_deliveries_status"),
        sa.CheckConstraint("attempts >= 0", name="webhook_deliveries_attempts"),
        sa.ForeignKeyConstraint(["endpoint_id"], ["webhook_endpoints.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("webhook_deliveries_by_endpoint", "webhook_deliveries", ["endpoint_id"])
    op.create_index("webhook_deliveries_due", "webhook_deliveries", ["status", "next_attempt_at"])

    op.create_table(
        "wallet_payments",
        sa.Column("payment_id", sa.String(length=66), nullable=False),
        sa.Column("agent_id", sa.String(length=40), nullable=False),
        sa.Column("intent_id", sa.String(length=40), nullable=False),
        sa.Column("nonce", sa.BigInteger(), nullable=False),
        sa.Column("payee", sa.String(length=42), nullable=False),
        sa.Column("host", sa.String(length=253), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("header", sa.Text(), nullable=False),
        sa.Column("decision_id", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("request_digest", sa.String(length=64), nullable=False),
        sa.Column("receipt", sa.Text(), nullable=True),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.Column("updated_at", sa.String(length=32), nullable=False),
        sa.CheckConstraint("status IN ('authorized', 'settled', 'released')", name="wallet_payments_status"),
        sa.ForeignKeyConstraint(["agent_id"], ["wallet_agents.id"]),
        sa.ForeignKeyConstraint(["decision_id"], ["wallet_decisions.id"]),
        sa.ForeignKeyConstraint(["intent_id"], ["wallet_intents.id"]),
        sa.PrimaryKeyConstraint("payment_id"),
        sa.UniqueConstraint("agent_id", "idempotency_key", name="wallet_payments_idempotency"),
        sa.UniqueConstraint("intent_id", "nonce", name="wallet_payments_one_per_nonce"),
    )
    op.create_index("wallet_payments_by_payee", "wallet_payments", ["payee"])
    op.create_index("wallet_payments_by_time", "wallet_payments", ["at"])

    op.create_table(
        "wallet_reviews",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("agent_id", sa.String(length=40), nullable=False),
        sa.Column("intent_id", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("rule", sa.String(length=40), nullable=False),
        sa.Column("requirement", sa.Text(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("method", sa.String(length=16), nullable=False),
        sa.Column("request_hash", sa.String(length=80), nullable=False),
        sa.Column("decision_id", sa.Integer(), nullable=False),
        sa.Column("payment_id", sa.String(length=66), nullable=True),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("request_digest", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.Column("decided_at", sa.String(length=32), nullable=True),
        sa.Column("decided_by", sa.String(length=200), nullable=True),
        sa.CheckConstraint("status IN ('pending', 'approved', 'denied')", name="wallet_reviews_status"),
        sa.ForeignKeyConstraint(["agent_id"], ["wallet_agents.id"]),
        sa.ForeignKeyConstraint(["decision_id"], ["wallet_decisions.id"]),
        sa.ForeignKeyConstraint(["intent_id"], ["wallet_intents.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("agent_id", "idempotency_key", name="wallet_reviews_idempotency"),
    )

    op.create_table(
        "webhook_attempts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("delivery_id", sa.String(length=40), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at", sa.String(length=32), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["delivery_id"], ["webhook_deliveries.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("delivery_id", "attempt", name="webhook_attempts_one_per_number"),
    )

    for table in APPEND_ONLY:
        refuse_update_and_delete(table)


def downgrade() -> None:
    for table in (
        "webhook_attempts",
        "wallet_reviews",
        "wallet_payments",
        "webhook_deliveries",
        "wallet_intents",
        "entries",
        "webhook_endpoints",
        "wallet_rules",
        "wallet_kill_switch",
        "wallet_decisions",
        "wallet_agents",
        "transactions",
        "audit_log",
        "accounts",
    ):
        op.drop_table(table)  # its indexes and triggers go with it
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP FUNCTION wallet_append_only()")
