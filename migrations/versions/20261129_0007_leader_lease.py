"""leader lease: the one row that says which `run` replica leads, under which fencing epoch,
until when (the database's clock)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 23:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import worker.db

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    lease = op.create_table('leader_lease',
    sa.Column('name', sa.String(length=32), nullable=False),
    sa.Column('holder', sa.String(length=200), nullable=True),
    sa.Column('epoch', sa.Integer(), nullable=False),
    sa.Column('since', worker.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('expires_at', worker.db.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_leader_lease'))
    )
    # Never taken: the first `run` takes epoch 1 with a conditional UPDATE of this row.
    op.bulk_insert(lease, [{'name': 'leader', 'holder': None, 'epoch': 0, 'since': None, 'expires_at': None}])


def downgrade() -> None:
    op.drop_table('leader_lease')
