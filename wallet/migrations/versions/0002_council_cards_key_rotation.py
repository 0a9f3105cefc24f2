"""The co-wallet's second schema: the AI council's votes (append-only), the AgentCards (cards,
their reviews and authorizations, acquirers, the card lookup key), API key rotation (the
previous key and its grace), review expiry, and webhook secrets sealed at rest (with removed
endpoints kept for their delivery log).

Webhook secrets cannot be sealed by a migration (the sealing key is not in the database): the
upgrade refuses a database that has endpoints; remove them, upgrade, add them again.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from wallet.migrations.triggers import refuse_update_and_delete

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.execute(sa.text("SELECT count(*) FROM webhook_endpoints")).scalar_one():
        # A clear-text secret cannot be sealed here: the sealing key is not the database's.
        raise RuntimeError("webhook_endpoints has rows: remove them, migrate, then add them again (secrets are sealed now)")
    op.create_table('wallet_acquirers',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('api_key_id', sa.String(length=16), nullable=False),
    sa.Column('api_key_digest', sa.String(length=64), nullable=False),
    sa.Column('api_key_prefix', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.String(length=32), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('api_key_id')
    )
    op.create_table('wallet_card_keys',
    sa.Column('name', sa.String(length=40), nullable=False),
    sa.Column('sealed', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.String(length=32), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('wallet_council_votes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('review_id', sa.String(length=40), nullable=False),
    sa.Column('at', sa.String(length=32), nullable=False),
    sa.Column('judge', sa.String(length=40), nullable=False),
    sa.Column('backend', sa.String(length=40), nullable=False),
    sa.Column('model', sa.String(length=100), nullable=True),
    sa.Column('vote', sa.String(length=8), nullable=True),
    sa.Column('rationale', sa.Text(), nullable=True),
    sa.Column('risk_score', sa.Integer(), nullable=True),
    sa.Column('confidence', sa.Float(), nullable=True),
    sa.Column('input_tokens', sa.Integer(), nullable=True),
    sa.Column('output_tokens', sa.Integer(), nullable=True),
    sa.Column('latency_ms', sa.Float(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('quorum', sa.Integer(), nullable=False),
    sa.CheckConstraint("vote IN ('approve', 'deny') OR (vote IS NULL AND error IS NOT NULL)", name='wallet_council_votes_vote'),
    sa.CheckConstraint('confidence BETWEEN 0 AND 1', name='wallet_council_votes_confidence'),
    sa.CheckConstraint('risk_score BETWEEN 0 AND 100', name='wallet_council_votes_risk'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('review_id', 'judge', name='wallet_council_votes_one_per_judge')
    )
    op.create_table('wallet_cards',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('agent_id', sa.String(length=40), nullable=False),
    sa.Column('intent_id', sa.String(length=40), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('captured', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('payee', sa.String(length=42), nullable=False),
    sa.Column('merchant_id', sa.String(length=200), nullable=True),
    sa.Column('mcc', sa.String(length=4), nullable=True),
    sa.Column('last4', sa.String(length=4), nullable=False),
    sa.Column('exp_month', sa.Integer(), nullable=False),
    sa.Column('exp_year', sa.Integer(), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.Column('at', sa.Float(), nullable=False),
    sa.Column('authorized_at', sa.Float(), nullable=True),
    sa.Column('number_hash', sa.String(length=64), nullable=False),
    sa.Column('sealed', sa.LargeBinary(), nullable=False),
    sa.Column('revealed_at', sa.String(length=32), nullable=True),
    sa.Column('decision_id', sa.Integer(), nullable=False),
    sa.Column('review_id', sa.String(length=40), nullable=True),
    sa.Column('idempotency_key', sa.String(length=200), nullable=True),
    sa.Column('request_digest', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.String(length=32), nullable=False),
    sa.Column('updated_at', sa.String(length=32), nullable=False),
    sa.CheckConstraint("status IN ('active', 'authorized', 'used', 'expired', 'cancelled')", name='wallet_cards_status'),
    sa.CheckConstraint('amount > 0 AND captured >= 0 AND captured <= amount', name='wallet_cards_amounts'),
    sa.ForeignKeyConstraint(['agent_id'], ['wallet_agents.id'], ),
    sa.ForeignKeyConstraint(['decision_id'], ['wallet_decisions.id'], ),
    sa.ForeignKeyConstraint(['intent_id'], ['wallet_intents.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('agent_id', 'idempotency_key', name='wallet_cards_idempotency'),
    sa.UniqueConstraint('number_hash')
    )
    with op.batch_alter_table('wallet_cards', schema=None) as batch_op:
        batch_op.create_index('wallet_cards_by_agent', ['agent_id'], unique=False)
        batch_op.create_index('wallet_cards_by_status', ['status', 'expires_at'], unique=False)
        batch_op.create_index('wallet_cards_by_time', ['at'], unique=False)

    op.create_table('wallet_card_authorizations',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('card_id', sa.String(length=40), nullable=True),
    sa.Column('acquirer_id', sa.String(length=40), nullable=False),
    sa.Column('approved', sa.Boolean(), nullable=False),
    sa.Column('decline_reason', sa.String(length=20), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('merchant_id', sa.String(length=200), nullable=False),
    sa.Column('mcc', sa.String(length=4), nullable=False),
    sa.Column('captured', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('refunded', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('created_at', sa.String(length=32), nullable=False),
    sa.Column('updated_at', sa.String(length=32), nullable=False),
    sa.CheckConstraint("status IN ('pending', 'captured', 'reversed', 'declined')", name='wallet_card_authorizations_status'),
    sa.CheckConstraint('refunded <= captured AND captured <= amount', name='wallet_card_authorizations_amounts'),
    sa.ForeignKeyConstraint(['acquirer_id'], ['wallet_acquirers.id'], ),
    sa.ForeignKeyConstraint(['card_id'], ['wallet_cards.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('wallet_card_authorizations', schema=None) as batch_op:
        batch_op.create_index('wallet_card_authorizations_by_card', ['card_id'], unique=False)

    op.create_table('wallet_card_reviews',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('agent_id', sa.String(length=40), nullable=False),
    sa.Column('intent_id', sa.String(length=40), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('rule', sa.String(length=40), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('merchant_id', sa.String(length=200), nullable=True),
    sa.Column('mcc', sa.String(length=4), nullable=True),
    sa.Column('ttl_seconds', sa.BigInteger(), nullable=False),
    sa.Column('decision_id', sa.Integer(), nullable=False),
    sa.Column('card_id', sa.String(length=40), nullable=True),
    sa.Column('idempotency_key', sa.String(length=200), nullable=True),
    sa.Column('request_digest', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.String(length=32), nullable=False),
    sa.Column('decided_at', sa.String(length=32), nullable=True),
    sa.Column('decided_by', sa.String(length=200), nullable=True),
    sa.CheckConstraint("status IN ('pending', 'approved', 'denied')", name='wallet_card_reviews_status'),
    sa.ForeignKeyConstraint(['agent_id'], ['wallet_agents.id'], ),
    sa.ForeignKeyConstraint(['card_id'], ['wallet_cards.id'], ),
    sa.ForeignKeyConstraint(['decision_id'], ['wallet_decisions.id'], ),
    sa.ForeignKeyConstraint(['intent_id'], ['wallet_intents.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('agent_id', 'idempotency_key', name='wallet_card_reviews_idempotency')
    )
    with op.batch_alter_table('wallet_agents', schema=None) as batch_op:
        batch_op.add_column(sa.Column('previous_key_id', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('previous_key_digest', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('previous_key_prefix', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('previous_key_valid_until', sa.Float(), nullable=True))
        batch_op.create_unique_constraint("wallet_agents_previous_key_id", ["previous_key_id"])

    with op.batch_alter_table('wallet_reviews', schema=None) as batch_op:
        batch_op.add_column(sa.Column('expires_at', sa.Float(), nullable=True))
        batch_op.drop_constraint("wallet_reviews_status", type_="check")
        batch_op.create_check_constraint("wallet_reviews_status", "status IN ('pending', 'approved', 'denied', 'expired')")

    with op.batch_alter_table('webhook_endpoints', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sealed_secret', sa.LargeBinary(), nullable=False))
        batch_op.add_column(sa.Column('removed_at', sa.String(length=32), nullable=True))
        batch_op.drop_column('secret')

    refuse_update_and_delete("wallet_council_votes")


def downgrade() -> None:
    if op.get_bind().execute(sa.text("SELECT count(*) FROM webhook_endpoints")).scalar_one():
        raise RuntimeError("webhook_endpoints has rows: their sealed secrets cannot be unsealed here")
    with op.batch_alter_table('webhook_endpoints', schema=None) as batch_op:
        batch_op.add_column(sa.Column('secret', sa.VARCHAR(length=100), nullable=False))
        batch_op.drop_column('removed_at')
        batch_op.drop_column('sealed_secret')

    with op.batch_alter_table('wallet_reviews', schema=None) as batch_op:
        batch_op.drop_constraint("wallet_reviews_status", type_="check")
        batch_op.create_check_constraint("wallet_reviews_status", "status IN ('pending', 'approved', 'denied')")
        batch_op.drop_column('expires_at')

    with op.batch_alter_table('wallet_agents', schema=None) as batch_op:
        batch_op.drop_constraint("wallet_agents_previous_key_id", type_="unique")
        batch_op.drop_column('previous_key_valid_until')
        batch_op.drop_column('previous_key_prefix')
        batch_op.drop_column('previous_key_digest')
        batch_op.drop_column('previous_key_id')

    op.drop_table('wallet_card_reviews')
    with op.batch_alter_table('wallet_card_authorizations', schema=None) as batch_op:
        batch_op.drop_index('wallet_card_authorizations_by_card')

    op.drop_table('wallet_card_authorizations')
    with op.batch_alter_table('wallet_cards', schema=None) as batch_op:
        batch_op.drop_index('wallet_cards_by_time')
        batch_op.drop_index('wallet_cards_by_status')
        batch_op.drop_index('wallet_cards_by_agent')

    op.drop_table('wallet_cards')
    op.drop_table('wallet_council_votes')
    op.drop_table('wallet_card_keys')
    op.drop_table('wallet_acquirers')
