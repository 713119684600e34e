"""Alembic's entry point: migrations run on the connection :func:`upgrade` hands over (inside
its locked transaction), or, from the ``alembic`` command line, on ``-x url=...``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from xraytriage.serving.db import Base

config = context.config


def run(connection) -> None:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("xraytriage migrations run online only (they read the data they convert)")
given = config.attributes.get("connection")
if given is not None:
    run(given)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("give the database: alembic -x url=sqlite:///path/to/xraytriage.db ...")
    with create_engine(url).connect() as connection:
        from xraytriage.serving.migrations import lock

        lock(connection)
        run(connection)
        connection.commit()
