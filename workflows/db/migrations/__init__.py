"""Alembic migrations of the ionscreen database, configured in code (no alembic.ini needed at run time).

``Store.open()`` upgrades to the head revision. To add a revision after changing ``workflows/db/models.py``:
``python -c "from workflows.db.migrations import new_revision; new_revision('add x', 'sqlite:////tmp/x.db')"``
(the URL must point at a database at the current head; review the generated file before committing it).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

MIGRATIONS_DIR = Path(__file__).resolve().parent


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """An Alembic config pointing at this package's scripts; ``connection`` is used as is (caller commits)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    head = script_directory().get_current_head()
    assert head is not None, "workflows/db/migrations/versions has no revision"
    return head


def known_revisions() -> set[str]:
    return {script.revision for script in script_directory().walk_revisions()}


def current_revision(connection: Connection) -> str | None:
    """The revision a database is at (None for an empty database)."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(connection: Connection, revision: str = "head") -> None:
    """Run the migrations on ``connection`` inside the caller's transaction."""
    command.upgrade(alembic_config(connection), revision)


def new_revision(message: str, url: str) -> None:
    """Autogenerate a revision file from the difference between ``models.py`` and the database at ``url``."""
    command.revision(alembic_config(url=url), message=message, autogenerate=True)


__all__ = [
    "MIGRATIONS_DIR",
    "alembic_config",
    "current_revision",
    "head_revision",
    "known_revisions",
    "new_revision",
    "script_directory",
    "upgrade",
]
