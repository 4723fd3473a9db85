"""accounts and keys: every row names its account ("default" for the data of a database that
watched one account), alert states are per (account, rule, key), and API keys have their
current state and their history.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 21:31:16.685988
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import worker.db

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('api_keys',
    sa.Column('account', sa.String(length=64), nullable=False),
    sa.Column('key_id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('label', sa.String(length=100), nullable=False),
    sa.Column('limit', sa.Double(), nullable=True),
    sa.Column('limit_remaining', sa.Double(), nullable=True),
    sa.Column('limit_reset', sa.String(length=32), nullable=True),
    sa.Column('usage', sa.Double(), nullable=False),
    sa.Column('usage_daily', sa.Double(), nullable=False),
    sa.Column('usage_weekly', sa.Double(), nullable=False),
    sa.Column('usage_monthly', sa.Double(), nullable=False),
    sa.Column('seen_at', worker.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('account', 'key_id', name=op.f('pk_api_keys'))
    )
    op.create_table('key_readings',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('account', sa.String(length=64), nullable=False),
    sa.Column('key_id', sa.String(length=32), nullable=False),
    sa.Column('fetched_at', worker.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('limit', sa.Double(), nullable=True),
    sa.Column('limit_remaining', sa.Double(), nullable=True),
    sa.Column('usage', sa.Double(), nullable=False),
    sa.Column('usage_daily', sa.Double(), nullable=False),
    sa.Column('usage_weekly', sa.Double(), nullable=False),
    sa.Column('usage_monthly', sa.Double(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_key_readings'))
    )
    with op.batch_alter_table('key_readings', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_key_readings_fetched_at'), ['fetched_at'], unique=False)

    # The existing alerts become the "default" account's, each for the whole account (key "").
    with op.batch_alter_table('alert_states', schema=None) as batch_op:
        batch_op.add_column(sa.Column('account', sa.String(length=64), server_default='default',
                                      nullable=False))
        batch_op.add_column(sa.Column('key', sa.String(length=32), server_default='', nullable=False))
        batch_op.add_column(sa.Column('key_name', sa.String(length=300), server_default='', nullable=False))
        batch_op.drop_constraint('pk_alert_states', type_='primary')
        batch_op.create_primary_key('pk_alert_states', ['account', 'rule', 'key'])

    with op.batch_alter_table('fetch_attempts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('account', sa.String(length=64), server_default='default',
                                      nullable=False))

    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('account', sa.String(length=64), server_default='default',
                                      nullable=False))

    with op.batch_alter_table('readings', schema=None) as batch_op:
        batch_op.add_column(sa.Column('account', sa.String(length=64), server_default='default',
                                      nullable=False))

    with op.batch_alter_table('rollups', schema=None) as batch_op:
        batch_op.add_column(sa.Column('account', sa.String(length=64), server_default='default',
                                      nullable=False))
        batch_op.drop_constraint('pk_rollups', type_='primary')
        batch_op.create_primary_key('pk_rollups', ['account', 'hour'])


def downgrade() -> None:
    # Going back keeps the "default" account's data only (the old schema has one account).
    for table in ('readings', 'fetch_attempts', 'outbox', 'rollups', 'alert_states'):
        op.execute(sa.text(f"DELETE FROM {table} WHERE account <> 'default'"))
    op.execute(sa.text("DELETE FROM alert_states WHERE key <> ''"))
    with op.batch_alter_table('rollups', schema=None) as batch_op:
        batch_op.drop_constraint('pk_rollups', type_='primary')
        batch_op.create_primary_key('pk_rollups', ['hour'])
        batch_op.drop_column('account')

    with op.batch_alter_table('readings', schema=None) as batch_op:
        batch_op.drop_column('account')

    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_column('account')

    with op.batch_alter_table('fetch_attempts', schema=None) as batch_op:
        batch_op.drop_column('account')

    with op.batch_alter_table('alert_states', schema=None) as batch_op:
        batch_op.drop_constraint('pk_alert_states', type_='primary')
        batch_op.create_primary_key('pk_alert_states', ['rule'])
        batch_op.drop_column('key_name')
        batch_op.drop_column('key')
        batch_op.drop_column('account')

    with op.batch_alter_table('key_readings', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_key_readings_fetched_at'))

    op.drop_table('key_readings')
    op.drop_table('api_keys')
