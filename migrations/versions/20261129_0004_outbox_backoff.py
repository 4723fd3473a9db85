"""outbox: claimer, backoff and drops

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 20:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import worker.db

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('claimed_by', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('next_try_at', worker.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('dropped_at', worker.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_outbox_dropped_at'), ['dropped_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_outbox_dropped_at'))
        batch_op.drop_column('dropped_at')
        batch_op.drop_column('next_try_at')
        batch_op.drop_column('claimed_by')
