"""Engine creation, the ORM base with a UTC datetime type, and migrations in code."""

from __future__ import annotations

from datetime import UTC, datetime
from importlib.resources import files
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Dialect,
    Engine,
    Integer,
    MetaData,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
# SQLite only aliases rowid for INTEGER PRIMARY KEY; BIGINT elsewhere.
BigId = BigInteger().with_variant(Integer(), "sqlite")
SQLITE_BUSY_MS = 5000
# Advisory lock ids: one serialises migrations, the other serialises ticks across replicas.
PG_MIGRATION_LOCK = 0x63726D67
PG_TICK_LOCK = 0x63727469


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out; naive values are refused."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            msg = f"naive datetime {value!r} given to a UTC column"
            raise ValueError(msg)
        utc = value.astimezone(UTC)
        # SQLite stores text; a fixed naive-UTC format keeps range scans lexicographic.
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def make_engine(url: str) -> Engine:
    """An engine that never logs bound values; WAL and BEGIN IMMEDIATE on SQLite."""
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"hide_parameters": True, "pool_pre_ping": True}
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() == "psycopg":
        kwargs["connect_args"] = {"connect_timeout": 5, "options": "-c statement_timeout=30000"}
    engine = create_engine(parsed, **kwargs)
    if engine.dialect.name == "sqlite":
        _sqlite_pragmas(engine)
    return engine


def _sqlite_pragmas(engine: Engine) -> None:
    # pysqlite's own transaction handling begins lazily and DEFERRED, so a
    # read-then-write transaction can hit SQLITE_BUSY despite busy_timeout.
    # SQLAlchemy's documented recipe: take over BEGIN and make it IMMEDIATE.
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        # A tick touches a few dozen pages; the default 2 MB cache per pooled
        # connection only grows the service's memory as the file grows.
        cursor.execute("PRAGMA cache_size = -512")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def first_line(err: BaseException) -> str:
    """The driver's own message, first line only: SQLAlchemy appends the statement and a link."""
    orig = getattr(err, "orig", None)
    text = str(orig if orig is not None else err).strip().splitlines()
    return text[0] if text else type(err).__name__


def redacted_url(url: str) -> str:
    """The database URL with any password masked, for output and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparseable URL is shown as a placeholder
        return "<unparseable database URL>"


def alembic_config(engine: Engine) -> Any:
    """An Alembic Config built in code, pointing at the migrations shipped in the package."""
    # Lazy: Alembic costs ~60 ms of imports and only migrating needs it.
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(files("worker.migrations")))
    cfg.attributes["engine"] = engine
    return cfg


# The newest migration. When the database is already there, `run` and `check` skip
# importing Alembic altogether (~100 ms and ~12 MB); tests/test_migrations.py keeps
# this in step with migrations/versions.
HEAD = "0004"


def at_head(engine: Engine) -> bool:
    """Whether the database is already migrated to HEAD (two cheap queries)."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return False
        revisions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    return list(revisions) == [HEAD]


def upgrade(engine: Engine) -> None:
    """Apply every migration up to head (safe to run from several replicas at once)."""
    if at_head(engine):
        return
    from alembic import command  # lazy, see alembic_config

    command.upgrade(alembic_config(engine), "head")


def now_utc() -> datetime:
    """The wall clock, read only by the shell."""
    return datetime.now(UTC)
