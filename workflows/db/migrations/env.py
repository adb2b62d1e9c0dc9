"""Alembic environment of the ionscreen database.

``Store.open()`` hands over a connection that already holds the migration lock (``config.attributes["connection"]``);
without one (``new_revision`` or offline SQL generation) the URL comes from ``sqlalchemy.url`` or the settings.
"""

from __future__ import annotations

from alembic import context

from workflows.db.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from mlip.config import load_settings

    return load_settings().db_url


def _configure(**kwargs) -> None:
    # Batch mode lets later revisions ALTER tables on SQLite (copy-and-move); it is a no-op on PostgreSQL.
    context.configure(target_metadata=target_metadata, render_as_batch=True, compare_type=True, **kwargs)


def run_offline() -> None:
    _configure(url=_url(), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    from workflows.db.store import create_db_engine

    engine = create_db_engine(_url())
    try:
        with engine.connect() as connection:
            _configure(connection=connection)
            with context.begin_transaction():
                context.run_migrations()
            connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
