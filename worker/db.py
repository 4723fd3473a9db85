"""Engine creation, the ORM base with a UTC datetime type, and migrations in code."""

from __future__ import annotations

import math
import os
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

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
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

from worker import dbguard

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
# SQLite only aliases rowid for INTEGER PRIMARY KEY; BIGINT elsewhere.
BigId = BigInteger().with_variant(Integer(), "sqlite")
# database.timeout's default: the client-side bound on every database call.
DEFAULT_TIMEOUT = 10.0


def inner_bound_ms(timeout: float) -> int:
    """The server's statement/lock timeouts and SQLite's busy_timeout, in ms: a little inside
    the client-side bound, so that their own clearer errors come first when they can fire."""
    return int(max(timeout - 1.0, timeout / 2) * 1000)


SQLITE_BUSY_MS = inner_bound_ms(DEFAULT_TIMEOUT)
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


# A migration may rewrite whole tables, and replicas starting together wait for the one
# that migrates: a longer bound than a tick's database calls.
MIGRATION_TIMEOUT = 300.0


def make_engine(url: str, timeout: float = DEFAULT_TIMEOUT, create: bool = True) -> Engine:
    """An engine that never logs bound values and bounds every database call by `timeout`
    seconds on the client side; WAL and BEGIN IMMEDIATE on SQLite. With `create=False`
    a missing SQLite file is an error; a SQLite file once seen is never created anew."""
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"hide_parameters": True, "pool_pre_ping": True}
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() == "psycopg":
        kwargs["connect_args"] = pg_connect_args(timeout, parsed.query.get("options"))
    engine = create_engine(parsed, **kwargs)
    if engine.dialect.name == "sqlite":
        _sqlite_pragmas(engine, inner_bound_ms(timeout))
        _guard_sqlite_file(engine, create)
    dbguard.bound_engine(engine, timeout)
    return engine


def pg_connect_args(timeout: float, options: str | tuple[str, ...] | None = None) -> dict[str, Any]:
    """libpq's own bounds for a `timeout`: connecting, a dead peer, unacknowledged data,
    and the server's statement and lock timeouts (`options` from the URL are kept)."""
    # None of these fire when the server is frozen but its kernel still ACKs:
    # dbguard's watchdog is the bound that always holds; these are the first line.
    inner = inner_bound_ms(timeout)
    server = f"-c statement_timeout={inner} -c lock_timeout={inner}"
    extra = " ".join(options) if isinstance(options, tuple) else options
    return {
        "connect_timeout": max(2, math.ceil(timeout)),  # libpq's minimum is 2 s
        "keepalives": 1,
        # A silent peer is given up after idle + count * interval, about `timeout`.
        "keepalives_idle": max(1, round(timeout / 2)),
        "keepalives_interval": max(1, round(timeout / 6)),
        "keepalives_count": 3,
        "tcp_user_timeout": int(timeout * 1000),  # data sent and never acknowledged
        "options": f"{server} {extra}" if extra else server,
    }


def _sqlite_pragmas(engine: Engine, busy_ms: int) -> None:
    # pysqlite's own transaction handling begins lazily and DEFERRED, so a
    # read-then-write transaction can hit SQLITE_BUSY despite busy_timeout.
    # SQLAlchemy's documented recipe: take over BEGIN and make it IMMEDIATE.
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        # A tick touches a few dozen pages; the default 2 MB cache per pooled
        # connection only grows the service's memory as the file grows.
        cursor.execute("PRAGMA cache_size = -512")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


class DatabaseFileGone(Exception):
    """The SQLite file is missing, or was deleted or replaced under the engine (mixed into
    sqlite3.OperationalError, so SQLAlchemy wraps it as an OperationalError)."""


@dataclass
class _SqliteFile:
    """The file an SQLite engine works on, and which file it was when first seen."""

    path: str
    create: bool
    error: type[Exception]
    identity: tuple[int, int] | None = None

    def remember(self) -> None:
        if self.identity is None:
            try:
                st = os.stat(self.path)
            except OSError:
                return
            self.identity = (st.st_dev, st.st_ino)

    def problem(self) -> str | None:
        """Why the file must not be used now, or None."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self.identity is not None:
                return (f"the SQLite file {self.path} was deleted while creditwatch was running; "
                        "restore it and restart creditwatch, or restart to start a new history")
            return None if self.create else f"no SQLite database at {self.path}"
        except OSError:
            return None  # unreadable folder and the like: SQLite's own error says it better
        if self.identity is not None and (st.st_dev, st.st_ino) != self.identity:
            return (f"the SQLite file {self.path} was replaced by another file while creditwatch "
                    "was running; restart creditwatch to use it")
        return None


_SQLITE_FILES: weakref.WeakKeyDictionary[Engine, _SqliteFile] = weakref.WeakKeyDictionary()


def _guard_sqlite_file(engine: Engine, create: bool) -> None:
    # An open handle keeps writing into a deleted file's inode, unnoticed, and a new
    # connection would create an empty database in its place: history gone in silence.
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:") \
            or engine.url.query.get("uri"):
        return  # in memory, or the caller's own SQLite URI: nothing to watch
    dialect: Any = engine.dialect
    error = type("DatabaseFileGone", (DatabaseFileGone, dialect.loaded_dbapi.OperationalError),
                 {"__module__": __name__})
    file = _SqliteFile(os.path.abspath(database), create, error)
    file.remember()
    connect = dialect.connect

    def connect_existing(*cargs: Any, **cparams: Any) -> Any:
        if problem := file.problem():
            raise error(problem)
        if file.identity is not None or not file.create:
            # SQLite's URI mode=rw opens an existing file and never creates one.
            cargs = (f"{Path(file.path).as_uri()}?mode=rw", *cargs[1:])
            cparams = {**cparams, "uri": True}
        try:
            conn = connect(*cargs, **cparams)
        except dialect.loaded_dbapi.OperationalError as err:
            if problem := file.problem():
                raise error(problem) from err
            raise
        file.remember()
        return conn

    # The dialect is this engine's own; see dbguard._wrap_dialect for why not an event.
    setattr(dialect, "connect", connect_existing)  # noqa: B010

    @event.listens_for(engine, "checkout")
    def _checkout(_dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        # One stat per checkout (a few µs): a pooled handle would use the ghost inode.
        if problem := file.problem():
            raise error(problem)

    _SQLITE_FILES[engine] = file


def check_sqlite_file(engine: Engine) -> None:
    """Raise sqlalchemy.exc.OperationalError if the engine's SQLite file was deleted or
    replaced since the engine first saw it; nothing for other databases.

    Every checkout already checks this; call it where no connection is taken.
    """
    file = _SQLITE_FILES.get(engine)
    if file is not None and (problem := file.problem()):
        raise OperationalError(None, None, file.error(problem))


def first_line(err: BaseException) -> str:
    """The driver's own message, first line only: SQLAlchemy appends the statement and a link."""
    orig = getattr(err, "orig", None)
    text = str(orig if orig is not None else err).strip().splitlines()
    return text[0] if text else type(err).__name__


# A query parameter whose name holds one of these is a secret (password, sslpassword, token...).
SECRET_QUERY_WORDS = ("pass", "secret", "token", "key")
MASK = "***"
_UNPARSEABLE = "<unparseable database URL>"


def _secret_key(key: str) -> bool:
    name = unquote_plus(key).lower()
    return any(word in name for word in SECRET_QUERY_WORDS)


def redacted_url(url: str) -> str:
    """The database URL as written, with the password masked in the userinfo and in
    every secret-looking query parameter, for output and logs."""
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - an unparseable URL is shown as a placeholder
        return _UNPARSEABLE
    scheme, sep, rest = url.partition("://")
    if not sep:
        return _UNPARSEABLE
    head, qmark, query = rest.partition("?")
    # The userinfo ends at the last "@" before the query: a raw "@" may be in the password.
    at = head.rfind("@")
    if at >= 0:
        user, colon, _ = head[:at].partition(":")
        head = f"{user}{colon}{MASK if colon else ''}{head[at:]}"
    if qmark:
        pairs = [pair.partition("=") for pair in query.split("&")]
        query = "&".join(f"{k}{eq}{MASK if v and _secret_key(k) else v}" for k, eq, v in pairs)
    shown = f"{scheme}{sep}{head}{qmark}{query}"
    # What the parser (and so the driver) takes for secrets, should the layout above miss
    # one (a raw "?" in a password). Short values would mask ordinary text: left alone.
    secrets = [parsed.password] if parsed.password else []
    for key, value in parsed.query.items():
        if _secret_key(key):
            secrets += [value] if isinstance(value, str) else list(value)
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 4:
            shown = shown.replace(secret, MASK)
    return shown


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
HEAD = "0008"


def revision(engine: Engine) -> str | None:
    """The database's migration revision; None for a database without creditwatch's tables."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        revisions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    return ",".join(revisions) or None


def at_head(engine: Engine) -> bool:
    """Whether the database is already migrated to HEAD (two cheap queries)."""
    return revision(engine) == HEAD


def upgrade(engine: Engine) -> None:
    """Apply every migration up to head (safe to run from several replicas at once)."""
    if at_head(engine):
        return
    from alembic import command  # lazy, see alembic_config

    command.upgrade(alembic_config(engine), "head")


def now_utc() -> datetime:
    """The wall clock, read only by the shell."""
    return datetime.now(UTC)
