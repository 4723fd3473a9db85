"""`python -m worker.migrate`: apply the migrations in a child process.

`run` lives for months; Alembic and Mako would stay in its memory (~13 MB) after
one upgrade at start. A child process takes them away when it exits. The URL comes
in the environment (not argv, which `ps` shows to every user).
"""

from __future__ import annotations

import os
import sys

from sqlalchemy.exc import SQLAlchemyError

from worker.db import MIGRATION_TIMEOUT, first_line, make_engine, upgrade

URL_VARIABLE = "CREDITWATCH_MIGRATE_URL"


def main() -> int:
    """Upgrade the database named by $CREDITWATCH_MIGRATE_URL; one line on failure."""
    engine = make_engine(os.environ[URL_VARIABLE], MIGRATION_TIMEOUT)
    try:
        upgrade(engine)
    except SQLAlchemyError as err:
        sys.stderr.write(f"{first_line(err)}\n")
        return 1
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
