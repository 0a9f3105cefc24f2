"""The co-wallet's third schema: where each booked payment is on its way to the chain
(``wallet_settlements``: accepted, in batch, settled on chain or failed, with the batch, its
transaction, block, proving seconds and gas; ``wallet.settlements``), and the origin of each
paid URL (``wallet_payments.origin``), where the payee's gateway answers for its receipts.
Payments signed before this revision have no origin and are not followed.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('wallet_settlements',
    sa.Column('payment_id', sa.String(length=66), nullable=False),
    sa.Column('stage', sa.String(length=20), nullable=False),
    sa.Column('batch_id', sa.BigInteger(), nullable=True),
    sa.Column('batch_status', sa.String(length=16), nullable=True),
    sa.Column('tx_hash', sa.String(length=66), nullable=True),
    sa.Column('block', sa.BigInteger(), nullable=True),
    sa.Column('prove_seconds', sa.Float(), nullable=True),
    sa.Column('gas_used', sa.BigInteger(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('updated_at', sa.String(length=32), nullable=False),
    sa.CheckConstraint("stage <> 'in_batch' OR batch_id IS NOT NULL", name='wallet_settlements_batch'),
    sa.CheckConstraint("stage IN ('accepted', 'in_batch', 'settled_on_chain', 'failed')", name='wallet_settlements_stage'),
    sa.CheckConstraint('block >= 0 AND gas_used >= 0 AND prove_seconds >= 0', name='wallet_settlements_figures'),
    sa.ForeignKeyConstraint(['payment_id'], ['wallet_payments.payment_id'], ),
    sa.PrimaryKeyConstraint('payment_id')
    )
    with op.batch_alter_table('wallet_settlements', schema=None) as batch_op:
        batch_op.create_index('wallet_settlements_by_stage', ['stage'], unique=False)

    with op.batch_alter_table('wallet_payments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('origin', sa.String(length=300), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('wallet_payments', schema=None) as batch_op:
        batch_op.drop_column('origin')

    with op.batch_alter_table('wallet_settlements', schema=None) as batch_op:
        batch_op.drop_index('wallet_settlements_by_stage')

    op.drop_table('wallet_settlements')
