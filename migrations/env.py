"""Alembic environment: the URL comes from the caller; batch mode on SQLite;
replicas starting together do not race: a PostgreSQL advisory lock, or on SQLite one
write transaction around the whole upgrade."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Engine, text

import worker.tables  # noqa: F401 - registers the tables on Base.metadata
from worker.db import PG_MIGRATION_LOCK, Base, make_engine

config = context.config


def _engine() -> Engine:
    engine = config.attributes.get("engine")
    if engine is not None:
        return engine
    url = os.environ.get("CREDITWATCH_DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    if not url:
        msg = "set CREDITWATCH_DATABASE_URL (or sqlalchemy.url in alembic.ini) to run alembic"
        raise SystemExit(msg)
    return make_engine(url)


def _migrate(engine: Engine) -> None:
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=sqlite,
            compare_type=True,
            # SQLite runs DDL inside a transaction, but Alembic assumes it does not and
            # commits after each migration, so replicas starting together on one fresh file
            # would interleave (two adding the same column). As one transaction, begun
            # IMMEDIATE (worker.db), the upgrade holds the file's write lock throughout and
            # reads the version inside it: the others wait, then find the file at head.
            transactional_ddl=True if sqlite else None,
        )
        with context.begin_transaction():
            context.run_migrations()


def _migrate_locked(engine: Engine) -> None:
    # Alembic has no lock of its own. The advisory lock lives on its own
    # connection, held across the whole upgrade, released even on failure.
    with engine.connect() as lock:
        lock.execute(text("SELECT pg_advisory_lock(:key)"), {"key": PG_MIGRATION_LOCK})
        lock.commit()
        try:
            _migrate(engine)
        finally:
            lock.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": PG_MIGRATION_LOCK})
            lock.commit()


def run() -> None:
    if context.is_offline_mode():
        msg = "creditwatch migrations run online only"
        raise SystemExit(msg)
    engine = _engine()
    if engine.dialect.name == "postgresql":
        _migrate_locked(engine)
    else:
        _migrate(engine)


run()
