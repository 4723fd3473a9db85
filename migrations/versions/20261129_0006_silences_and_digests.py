"""silences and digests: silences of rules (per account or all), alert states that remember a
message held back, the digest periods already queued, and attachments to messages

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 22:05:43.410422
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import worker.db

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('digests',
    sa.Column('period_start', worker.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('queued_at', worker.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('period_start', name=op.f('pk_digests'))
    )
    op.create_table('silences',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('rule', sa.String(length=64), nullable=False),
    sa.Column('account', sa.String(length=64), nullable=True),
    sa.Column('starts_at', worker.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('ends_at', worker.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('comment', sa.String(length=500), nullable=False),
    sa.Column('created_at', worker.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_silences'))
    )
    with op.batch_alter_table('silences', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_silences_ends_at'), ['ends_at'], unique=False)

    with op.batch_alter_table('alert_states', schema=None) as batch_op:
        batch_op.add_column(sa.Column('muted', sa.String(length=16), server_default='', nullable=False))

    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('attachment', sa.LargeBinary(), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_column('attachment')

    with op.batch_alter_table('alert_states', schema=None) as batch_op:
        batch_op.drop_column('muted')

    with op.batch_alter_table('silences', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_silences_ends_at'))

    op.drop_table('silences')
    op.drop_table('digests')
