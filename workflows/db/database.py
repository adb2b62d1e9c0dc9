"""The database connection behind the repositories: engine set-up for several writing processes, one transaction
per call with retries of lock conflicts, schema migrations, and the row lookups every repository shares.

Every call is one short transaction that stays correct when several processes write at once. SQLite runs in
WAL mode with a busy timeout and takes the write lock when a write transaction begins (``BEGIN IMMEDIATE``), so
two writers queue instead of failing half-way; a write that still meets "database is locked" is retried.
PostgreSQL relies on row locks. Idempotence lives in unique keys (structure hash, (job, task key), result task
key) and ``INSERT ... ON CONFLICT DO NOTHING``, not in the callers.
"""

from __future__ import annotations

import enum
import random
import re
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from mlip.config import mask_password
from mlip.errors import ConfigError, InputError
from workflows.db import migrations
from workflows.db.models import Candidate, Job, Task

T = TypeVar("T")

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
_JOB_ID_PREFIX = re.compile(r"^[0-9a-f]{4,32}$")


class NotFoundError(InputError):
    """A job, task or candidate id that the database does not hold."""


class InvalidTransition(InputError):
    """A state change the job or task state machine does not allow."""


class SchemaVersionError(ConfigError):
    """The database was migrated by a newer ionscreen than this one."""


class Backend(enum.StrEnum):
    """Database servers the store supports."""

    sqlite = "sqlite"
    postgresql = "postgresql"


# Dialect-specific INSERT constructs (both offer ON CONFLICT DO NOTHING).
_INSERT: dict[Backend, Callable[..., Any]] = {Backend.sqlite: sqlite.insert, Backend.postgresql: postgresql.insert}

_WRITE_OPTION = "ionscreen_write"
_MIGRATION_LOCK_KEY = zlib.crc32(b"ionscreen-migrate")  # pg advisory lock id, fixed for all versions
_PG_RETRY_SQLSTATES = {"40001", "40P01"}  # serialization failure, deadlock detected

DEFAULT_BUSY_TIMEOUT_S = 30.0
MAX_WRITE_ATTEMPTS = 8


def _parse_enum(enum_cls: type[enum.Enum], value: Any, what: str):
    try:
        return enum_cls(value)
    except ValueError:
        known = ", ".join(m.value for m in enum_cls)
        raise InputError(f"unknown {what} {value!r}; known: {known}") from None


def _masked(url: sa.URL) -> str:
    return url.render_as_string(hide_password=True)


def create_db_engine(db_url: str, *, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S) -> Engine:
    """An engine for ``db_url`` set up for several concurrent processes (see the module docstring)."""
    try:
        url = make_url(db_url)
    except exc.ArgumentError as err:
        raise ConfigError(f"database URL {mask_password(db_url)!r} is not a valid SQLAlchemy URL: {err}") from err
    try:
        backend = Backend(url.get_backend_name())
    except ValueError:
        raise ConfigError(
            f"database URL {_masked(url)} uses {url.get_backend_name()!r}; ionscreen supports "
            "sqlite:///path/file.db and postgresql+psycopg://user@host:port/database"
        ) from None
    if backend is Backend.postgresql:
        if url.drivername == "postgresql":  # SQLAlchemy's default driver is psycopg2; ionscreen ships psycopg 3
            url = url.set(drivername="postgresql+psycopg")
        # Fail in seconds, not minutes, when the server is unreachable (a URL's own connect_timeout wins).
        connect_args = {} if "connect_timeout" in url.query else {"connect_timeout": 10}
        return sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args)

    in_memory = url.database in (None, "", ":memory:")
    if in_memory:
        engine = sa.create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": busy_timeout_s})

    @event.listens_for(engine, "connect")
    def _sqlite_connect(dbapi_connection, _record):
        # Let SQLAlchemy's "begin" event below emit BEGIN instead of the sqlite3 module's implicit one, which
        # would start write transactions lazily (lock upgrade → "database is locked" without waiting).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        cursor.execute("PRAGMA foreign_keys = ON")
        if not in_memory:
            mode = cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ConfigError(f"could not switch SQLite database {url.database} to WAL mode (got {mode!r})")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(connection):
        write = connection.get_execution_options().get(_WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _is_transient(err: exc.DBAPIError, backend: Backend) -> bool:
    if backend is Backend.sqlite:
        text = str(err.orig).lower()
        return "database is locked" in text or "database table is locked" in text or "busy" in text
    return getattr(err.orig, "sqlstate", None) in _PG_RETRY_SQLSTATES


class Database:
    """A connection pool to the ionscreen database: one transaction per call (``_run``), migrations, counts."""

    def __init__(self, db_url: str, *, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S):
        self.db_url = db_url
        self._engine = create_db_engine(db_url, busy_timeout_s=busy_timeout_s)
        self.backend = Backend(self._engine.dialect.name)
        # On SQLite, transactions begun through this engine take the write lock at BEGIN.
        self._write_engine = self._engine.execution_options(**{_WRITE_OPTION: True})
        self._insert = _INSERT[self.backend]

    @classmethod
    def open(cls, db_url: str | None = None, *, settings=None, migrate: bool = True) :
        """Open the database at ``db_url`` (default: from the settings) and upgrade its schema to the head revision."""
        if db_url is None:
            if settings is None:
                from mlip.config import load_settings

                settings = load_settings()
            db_url = settings.db_url
        store = cls(db_url)
        try:
            if migrate:
                store.upgrade()
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({_masked(self._engine.url)!r})"

    def current_revision(self) -> str | None:
        """The Alembic revision the database is at."""
        return self._run(migrations.current_revision, write=False, connection=True)

    def upgrade(self) -> None:
        """Apply the migrations the database lacks; concurrent openers wait for each other (one migrates)."""
        head = migrations.head_revision()
        current = self.current_revision()
        if current == head:
            return
        if current is not None and current not in migrations.known_revisions():
            raise SchemaVersionError(
                f"the database {_masked(self._engine.url)} is at schema revision {current}, which this ionscreen "
                f"does not know (its newest is {head}); upgrade ionscreen or use another IONSCREEN_DB_URL"
            )

        def migrate(connection: sa.Connection) -> None:
            if self.backend is Backend.postgresql:
                connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
            migrations.upgrade(connection)  # re-reads the revision under the lock: a no-op if another did it

        self._run(migrate, write=True, connection=True)

    def _run(self, work: Callable[[Any], T], *, write: bool, connection: bool = False) -> T:
        """Run ``work(session)`` (or ``work(connection)``) in one transaction, retrying lock conflicts."""
        engine = self._write_engine if write else self._engine
        delay_s = 0.05
        for attempt in range(1, MAX_WRITE_ATTEMPTS + 1):
            try:
                if connection:
                    with engine.begin() as conn:
                        return work(conn)
                with Session(engine, expire_on_commit=False) as session, session.begin():
                    return work(session)
            except exc.DBAPIError as err:
                if _is_transient(err, self.backend) and attempt < MAX_WRITE_ATTEMPTS:
                    time.sleep(delay_s * random.uniform(0.5, 1.5))
                    delay_s = min(2 * delay_s, 1.0)
                    continue
                if isinstance(err, exc.OperationalError) and not _is_transient(err, self.backend):
                    reason = " ".join(str(err.orig).split()).rstrip(".")
                    raise ConfigError(
                        f"cannot use the ionscreen database at {_masked(self._engine.url)}: {reason}. "
                        "Check IONSCREEN_DB_URL (or db_url in the config file) and that the server is running"
                    ) from err
                raise
        raise AssertionError("unreachable")

    def table_counts(self) -> dict[str, int]:
        """Rows per table (every table of the schema)."""
        from workflows.db.models import Base

        def work(session: Session) -> dict[str, int]:
            return {
                t.name: session.scalar(sa.select(sa.func.count()).select_from(t)) for t in Base.metadata.sorted_tables
            }

        return self._run(work, write=False)



class Repository:
    """One aggregate's queries over a :class:`Database` (``store.jobs``, ``store.tasks``, ...)."""

    def __init__(self, db: Database):
        self._db = db

    def _run(self, work: Callable[[Any], T], *, write: bool) -> T:
        return self._db._run(work, write=write)

    @property
    def _insert(self):
        return self._db._insert


def find_job(session: Session, job_id: str) -> Job:
    """The job with this id, or with this unique id prefix of at least 4 digits."""
    if not isinstance(job_id, str):
        raise InputError(f"a job id is a string, got {type(job_id).__name__}")
    job = session.get(Job, job_id)
    if job is not None:
        return job
    if _JOB_ID_PREFIX.match(job_id) and len(job_id) < 32:
        matches = session.scalars(sa.select(Job).where(Job.id.startswith(job_id)).limit(2)).all()
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InputError(f"job id prefix {job_id!r} matches several jobs; give more digits")
    url = _masked(session.get_bind().url)
    raise NotFoundError(f"no job {job_id!r} in {url}; `ionscreen jobs list` shows the jobs")


def find_candidate(session: Session, candidate: int | str) -> Candidate:
    """A candidate by id (int) or structure hash (str)."""
    if isinstance(candidate, str):
        found = session.scalar(sa.select(Candidate).where(Candidate.structure_hash == candidate))
    elif isinstance(candidate, int) and not isinstance(candidate, bool):
        found = session.get(Candidate, candidate)
    else:
        raise InputError(f"a candidate is named by its id (int) or structure hash (str), got {candidate!r}")
    if found is None:
        raise NotFoundError(f"no candidate {candidate!r} in the database")
    return found


def find_task(session: Session, task_id: int) -> Task:
    task = session.get(Task, task_id) if isinstance(task_id, int) and not isinstance(task_id, bool) else None
    if task is None:
        raise NotFoundError(f"no task {task_id!r} in the database")
    return task
