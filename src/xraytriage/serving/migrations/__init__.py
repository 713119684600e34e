"""Schema migrations (Alembic), run when the service opens its database.

Every start runs :func:`upgrade` to the newest revision under a database-wide lock, so two
``serve`` instances started at the same moment on one empty database do not both create the
tables: the first migrates, the second waits and then finds nothing to do. The lock is a
PostgreSQL transaction-level advisory lock, or on SQLite the ``BEGIN EXCLUSIVE`` write lock;
the migration runs inside that same transaction (both databases have transactional DDL), so
a failed migration leaves the schema as it was.

A database the last version without Alembic made (no ``alembic_version`` table, possibly
missing columns an older version did not have) is taken up by the first revision, which
creates what is missing and adds the missing columns; the revisions after it then apply.

A new revision (developers): ``python -c "from alembic import command; from
xraytriage.serving.migrations import alembic_config; command.revision(alembic_config(), 'what
changes')"`` writes ``versions/<id>_what_changes.py`` to fill in.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from xraytriage.errors import ConfigError

HERE = Path(__file__).resolve().parent
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # a line per plugin at each start
log = logging.getLogger(__name__)
ADVISORY_LOCK_KEY = 0x7872_7479_7472_6961 & 0x7FFF_FFFF_FFFF_FFFF
"""PostgreSQL advisory lock id of the migrations ("xraytria"): one per database."""


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    return config


def head() -> str:
    """The newest revision this version knows."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head() or ""


def current(connection: Connection) -> str | None:
    """The revision the database is at (None: never migrated)."""
    return MigrationContext.configure(connection).get_current_revision()


def lock(connection: Connection) -> None:
    """Begin the transaction the migrations run in, holding the database's migration lock
    until it ends (other instances wait here; 30 s busy timeout on SQLite, none on PostgreSQL)."""
    dialect = connection.dialect.name
    if dialect == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
    elif dialect == "sqlite":
        connection.exec_driver_sql("BEGIN EXCLUSIVE")
    else:  # no portable lock: start instances one after another on such a database
        connection.begin()


def upgrade(engine: Engine, revision: str = "head", attempts: int = 20) -> None:
    """Bring the database's schema to ``revision`` (default: the newest), under the lock.

    SQLite answers "database is locked" at once, without waiting out its busy timeout, in a few
    documented cases (a journal-mode switch or a lock upgrade racing another connection's
    ``BEGIN EXCLUSIVE`` on a new file); such a start waits a moment and tries again."""
    import time

    from sqlalchemy.exc import OperationalError

    for attempt in range(attempts):
        try:
            return _upgrade_once(engine, revision)
        except OperationalError as exc:
            if "database is locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


def _upgrade_once(engine: Engine, revision: str) -> None:
    config = alembic_config()
    with engine.connect() as connection:
        lock(connection)
        config.attributes["connection"] = connection
        try:
            with _quiet_alembic():
                before = current(connection)
                command.upgrade(config, revision)
        except CommandError as exc:
            raise ConfigError(
                f"{engine.url.render_as_string(hide_password=True)}: cannot migrate the database to "
                f"revision {revision} ({exc}); was it made by a newer version of xraytriage?"
            ) from None
        with _quiet_alembic():
            after = current(connection)
        connection.commit()
    if after != before:
        log.info("database schema migrated from revision %s to %s", before or "(empty)", after)


class _quiet_alembic:
    """Alembic's INFO lines (about ten at every start) only with debug logging: the service
    logs one line of its own when a migration actually changed the schema."""

    def __enter__(self) -> None:
        self.logger = logging.getLogger("alembic")
        self.level = self.logger.level
        if not logging.getLogger().isEnabledFor(logging.DEBUG):
            self.logger.setLevel(logging.WARNING)

    def __exit__(self, *exc: object) -> None:
        self.logger.setLevel(self.level)


def downgrade(engine: Engine, revision: str) -> None:
    """Take the schema back to ``revision`` (tests, and going back to an older version)."""
    config = alembic_config()
    with engine.connect() as connection:
        lock(connection)
        config.attributes["connection"] = connection
        command.downgrade(config, revision)
        connection.commit()


__all__ = ["ADVISORY_LOCK_KEY", "current", "downgrade", "head", "lock", "upgrade"]
