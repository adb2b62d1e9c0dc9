"""The job store and candidate database behind one repository API, ``Store``, on SQLite or PostgreSQL.

Every method is one short transaction that stays correct when several processes write at once. SQLite runs in
WAL mode with a busy timeout and takes the write lock when a write transaction begins (``BEGIN IMMEDIATE``), so
two writers queue instead of failing half-way; a write that still meets "database is locked" is retried.
PostgreSQL relies on row locks. Idempotence lives in unique keys (structure hash, (job, task key), result task
key) and ``INSERT ... ON CONFLICT DO NOTHING``, not in the callers.
"""

from __future__ import annotations

import enum
import hashlib
import json
import random
import re
import tempfile
import time
import uuid
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy import event, exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from mlip.errors import ConfigError, InputError
from workflows.db import migrations
from workflows.db.models import Candidate, Job, JobCandidate, JobStatus, Result, Stage, Task, TaskState, utc_now
from workflows.db.records import (
    CandidateRecord,
    CandidateRow,
    JobRecord,
    ResultRow,
    TaskRecord,
    check_sha256,
    validation_error,
)

T = TypeVar("T")


class NotFoundError(InputError):
    """A job, task or candidate id that the database does not hold."""


class InvalidTransition(InputError):
    """A state change the job or task state machine does not allow."""


class SchemaVersionError(ConfigError):
    """The database was migrated by a newer ionscreen than this one."""


# Allowed task state changes. running → pending is a retry (worker died) or a resume (driver died).
TASK_TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    TaskState.pending: frozenset({TaskState.running, TaskState.cancelled}),
    TaskState.running: frozenset({TaskState.done, TaskState.failed, TaskState.cancelled, TaskState.pending}),
    TaskState.done: frozenset(),
    TaskState.failed: frozenset(),
    TaskState.cancelled: frozenset(),
}

# Allowed job status changes (setting the current status again only updates the other fields).
# A finished, failed or cancelled job may run again: resume continues it without recomputing what is done.
JOB_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.pending: frozenset({JobStatus.running, JobStatus.failed, JobStatus.cancelled}),
    JobStatus.running: frozenset({JobStatus.done, JobStatus.failed, JobStatus.cancelled}),
    JobStatus.done: frozenset({JobStatus.running}),
    JobStatus.failed: frozenset({JobStatus.running}),
    JobStatus.cancelled: frozenset({JobStatus.running}),
}


class Backend(enum.StrEnum):
    """Database servers the store supports."""

    sqlite = "sqlite"
    postgresql = "postgresql"


# Dialect-specific INSERT constructs (both offer ON CONFLICT DO NOTHING).
_INSERT: dict[Backend, Callable[..., Any]] = {Backend.sqlite: sqlite.insert, Backend.postgresql: postgresql.insert}

_WRITE_OPTION = "ionscreen_write"
_MIGRATION_LOCK_KEY = zlib.crc32(b"ionscreen-migrate")  # pg advisory lock id, fixed for all versions
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
_JOB_ID_PREFIX = re.compile(r"^[0-9a-f]{4,32}$")
_PG_RETRY_SQLSTATES = {"40001", "40P01"}  # serialization failure, deadlock detected
_CANDIDATE_COLUMNS = ("name", "formula", "working_ion", "working_ion_charge", "kind", "n_atoms")

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
        raise ConfigError(f"database URL {db_url!r} is not a valid SQLAlchemy URL: {err}") from err
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


def _spec_fields(spec: Any) -> tuple[dict[str, Any], str, str, str]:
    """(spec as data, spec hash, job name, model reference) from a JobSpec or a mapping."""
    if hasattr(spec, "model_dump"):
        data = spec.model_dump(mode="json")
        spec_hash = getattr(spec, "spec_hash", None)
        spec_hash = spec_hash() if callable(spec_hash) else spec_hash
    elif isinstance(spec, Mapping):
        data, spec_hash = dict(spec), None
    else:
        raise InputError(f"a job spec must be a JobSpec or a mapping, got {type(spec).__name__}")
    try:
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise InputError(f"the job spec is not plain JSON data: {err}") from err
    if spec_hash is None:
        spec_hash = hashlib.sha256(canonical.encode()).hexdigest()
    name, model = data.get("name"), data.get("model")
    for key, value in (("name", name), ("model", model)):
        if not isinstance(value, str) or not value:
            raise InputError(f"the job spec needs a non-empty string {key!r}, got {value!r}")
    return json.loads(canonical), check_sha256(spec_hash, "spec_hash"), name, model


def candidate_row(candidate: Any) -> CandidateRow:
    """A ``CandidateRow`` from a ``screening.candidates.Candidate`` or a mapping of the row's fields."""
    if isinstance(candidate, CandidateRow):
        return candidate
    if isinstance(candidate, Mapping):
        try:
            return CandidateRow.model_validate(dict(candidate))
        except ValidationError as err:
            raise validation_error("candidate", err) from err
    if not hasattr(candidate, "structure_hash") or not hasattr(candidate, "to_cif"):
        raise InputError(f"upsert_candidate needs a Candidate or a mapping, got {type(candidate).__name__}")
    with tempfile.TemporaryDirectory() as tmp:
        # Candidate.to_cif writes the metadata line that Candidate.from_cif reads back.
        cif = candidate.to_cif(Path(tmp) / "candidate.cif").read_text()
    try:
        return CandidateRow(
            structure_hash=candidate.structure_hash,
            name=candidate.name,
            formula=candidate.formula,
            working_ion=candidate.working_ion,
            working_ion_charge=candidate.working_ion_charge,
            kind=str(getattr(candidate.kind, "value", candidate.kind)),
            n_atoms=candidate.n_atoms,
            cif=cif,
            metadata_json=candidate.metadata(),
        )
    except ValidationError as err:
        raise validation_error("candidate", err) from err


def _result_dict(result: Result, candidate: Candidate | None = None) -> dict[str, Any]:
    row = {column.key: getattr(result, column.key) for column in sa.inspect(Result).column_attrs}
    row["stage"] = result.stage.value
    if candidate is not None:
        row.update({key: getattr(candidate, key) for key in _CANDIDATE_COLUMNS})
    return row


class Store:
    """Repository API over the ionscreen database. Use ``Store.open()``; methods return snapshots, not ORM objects.

    The URL comes from the settings (``IONSCREEN_DB_URL``, default ``sqlite:///$IONSCREEN_HOME/ionscreen.db``).
    A Store holds a connection pool: open one per process (it is not meant to be pickled to Ray workers).
    """

    def __init__(self, db_url: str, *, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S):
        self.db_url = db_url
        self._engine = create_db_engine(db_url, busy_timeout_s=busy_timeout_s)
        self.backend = Backend(self._engine.dialect.name)
        # On SQLite, transactions begun through this engine take the write lock at BEGIN.
        self._write_engine = self._engine.execution_options(**{_WRITE_OPTION: True})
        self._insert = _INSERT[self.backend]

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def open(cls, db_url: str | None = None, *, settings=None, migrate: bool = True) -> "Store":
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

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({_masked(self._engine.url)!r})"

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

    # ------------------------------------------------------------------ transactions
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

    # ------------------------------------------------------------------ jobs
    def create_job(
        self,
        spec: Any,
        *,
        model_sha256: str | None = None,
        job_id: str | None = None,
    ) -> str:
        """Store a new job (status pending) for ``spec`` (a JobSpec or mapping); returns its id (uuid4 hex)."""
        spec_json, spec_hash, name, model_ref = _spec_fields(spec)
        if model_sha256 is not None:
            try:
                check_sha256(model_sha256, "model_sha256")
            except ValueError as err:
                raise InputError(str(err)) from None
        if job_id is None:
            job_id = uuid.uuid4().hex
        elif not isinstance(job_id, str) or not _JOB_ID.match(job_id):
            raise InputError(f"a job id is 32 lower-case hex digits (uuid4().hex), got {job_id!r}")

        def work(session: Session) -> str:
            if session.get(Job, job_id) is not None:
                raise InputError(f"job {job_id} already exists; continue it with `ionscreen jobs resume {job_id}`")
            now = utc_now()
            session.add(
                Job(
                    id=job_id,
                    name=name,
                    spec_json=spec_json,
                    spec_hash=spec_hash,
                    model_ref=model_ref,
                    model_sha256=model_sha256,
                    status=JobStatus.pending,
                    created_utc=now,
                    updated_utc=now,
                )
            )
            try:
                session.flush()
            except exc.IntegrityError as err:  # another process created it between our check and insert
                raise InputError(f"job {job_id} already exists") from err
            return job_id

        return self._run(work, write=True)

    def _job(self, session: Session, job_id: str) -> Job:
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
        raise NotFoundError(f"no job {job_id!r} in {_masked(self._engine.url)}; `ionscreen jobs list` shows the jobs")

    def get_job(self, job_id: str) -> JobRecord:
        """The job with this id (or unique id prefix of at least 4 digits)."""
        return self._run(lambda s: JobRecord.model_validate(self._job(s, job_id)), write=False)

    def list_jobs(self, status: JobStatus | str | None = None, limit: int | None = None) -> list[JobRecord]:
        """Jobs, newest first, optionally only those with ``status``."""
        query = sa.select(Job).order_by(Job.created_utc.desc(), Job.id)
        if status is not None:
            query = query.where(Job.status == _parse_enum(JobStatus, status, "job status"))
        if limit is not None:
            query = query.limit(limit)
        return self._run(lambda s: [JobRecord.model_validate(j) for j in s.scalars(query)], write=False)

    def set_job_status(
        self,
        job_id: str,
        status: JobStatus | str,
        *,
        error: str | None = None,
        mlflow_run_id: str | None = None,
        driver_pid: int | None = None,
        driver_host: str | None = None,
    ) -> JobRecord:
        """Move a job to ``status`` (checked against ``JOB_TRANSITIONS``); ``error`` replaces the stored error,
        the other fields are changed only when given."""
        status = _parse_enum(JobStatus, status, "job status")

        def work(session: Session) -> JobRecord:
            job = self._job(session, job_id)
            if status != job.status and status not in JOB_TRANSITIONS[job.status]:
                raise InvalidTransition(f"job {job.id} is {job.status.value}; it cannot become {status.value}")
            job.status, job.error, job.updated_utc = status, error, utc_now()
            given = {"mlflow_run_id": mlflow_run_id, "driver_pid": driver_pid, "driver_host": driver_host}
            for key, value in given.items():
                if value is not None:
                    setattr(job, key, value)
            session.flush()
            return JobRecord.model_validate(job)

        return self._run(work, write=True)

    def cancel_job(self, job_id: str) -> int:
        """Cancel a job and its pending tasks (running ones are left to their worker); returns tasks cancelled."""

        def work(session: Session) -> int:
            job = self._job(session, job_id)
            if job.status is not JobStatus.cancelled and JobStatus.cancelled not in JOB_TRANSITIONS[job.status]:
                raise InvalidTransition(f"job {job.id} is {job.status.value}; it cannot be cancelled")
            now = utc_now()
            job.status, job.updated_utc = JobStatus.cancelled, now
            result = session.execute(
                sa.update(Task)
                .where(Task.job_id == job.id, Task.state == TaskState.pending)
                .values(state=TaskState.cancelled, finished_utc=now)
            )
            return result.rowcount

        return self._run(work, write=True)

    # ------------------------------------------------------------------ candidates
    def upsert_candidate(self, candidate: Any) -> int:
        """Store a candidate once per structure hash; returns its id (the stored row is kept if it exists)."""
        row = candidate_row(candidate)

        def work(session: Session) -> int:
            values = row.model_dump() | {"created_utc": utc_now()}
            insert = self._insert(Candidate).values(**values)
            session.execute(insert.on_conflict_do_nothing(index_elements=["structure_hash"]))
            return session.scalar(sa.select(Candidate.id).where(Candidate.structure_hash == row.structure_hash))

        return self._run(work, write=True)

    def _candidate(self, session: Session, candidate: int | str) -> Candidate:
        if isinstance(candidate, str):
            found = session.scalar(sa.select(Candidate).where(Candidate.structure_hash == candidate))
        elif isinstance(candidate, int) and not isinstance(candidate, bool):
            found = session.get(Candidate, candidate)
        else:
            raise InputError(f"a candidate is named by its id (int) or structure hash (str), got {candidate!r}")
        if found is None:
            raise NotFoundError(f"no candidate {candidate!r} in the database")
        return found

    def get_candidate(self, candidate: int | str) -> CandidateRecord:
        """A candidate by id or structure hash."""
        return self._run(lambda s: CandidateRecord.model_validate(self._candidate(s, candidate)), write=False)

    def link_candidate(self, job_id: str, candidate_id: int) -> None:
        """Record that a job screens a candidate (idempotent)."""

        def work(session: Session) -> None:
            job = self._job(session, job_id)
            self._candidate(session, candidate_id)
            session.execute(
                self._insert(JobCandidate)
                .values(job_id=job.id, candidate_id=candidate_id)
                .on_conflict_do_nothing(index_elements=["job_id", "candidate_id"])
            )

        self._run(work, write=True)

    def candidates_for_job(self, job_id: str) -> list[CandidateRecord]:
        """The candidates linked to a job, in the order they were first stored."""

        def work(session: Session) -> list[CandidateRecord]:
            job = self._job(session, job_id)
            query = (
                sa.select(Candidate)
                .join(JobCandidate, JobCandidate.candidate_id == Candidate.id)
                .where(JobCandidate.job_id == job.id)
                .order_by(Candidate.id)
            )
            return [CandidateRecord.model_validate(c) for c in session.scalars(query)]

        return self._run(work, write=False)

    # ------------------------------------------------------------------ tasks
    def add_task(
        self, job_id: str, candidate_id: int, stage: Stage | str, task_key: str, workdir: str | None = None
    ) -> int:
        """Add a pending task to a job, or return the id of the job's task with this ``task_key``."""
        stage = _parse_enum(Stage, stage, "stage")
        try:
            check_sha256(task_key, "task_key")
        except ValueError as err:
            raise InputError(str(err)) from None

        def work(session: Session) -> int:
            job = self._job(session, job_id)
            self._candidate(session, candidate_id)
            session.execute(
                self._insert(Task)
                .values(
                    job_id=job.id,
                    candidate_id=candidate_id,
                    stage=stage,
                    task_key=task_key,
                    state=TaskState.pending,
                    attempts=0,
                    workdir=workdir,
                    reused_result=False,
                )
                .on_conflict_do_nothing(index_elements=["job_id", "task_key"])
            )
            task = session.scalar(sa.select(Task).where(Task.job_id == job.id, Task.task_key == task_key))
            if (task.candidate_id, task.stage) != (candidate_id, stage):
                raise InputError(
                    f"job {job.id} already has task_key {task_key[:12]}… for candidate {task.candidate_id} "
                    f"stage {task.stage.value}, not candidate {candidate_id} stage {stage.value}"
                )
            return task.id

        return self._run(work, write=True)

    def _task(self, session: Session, task_id: int) -> Task:
        task = session.get(Task, task_id) if isinstance(task_id, int) and not isinstance(task_id, bool) else None
        if task is None:
            raise NotFoundError(f"no task {task_id!r} in the database")
        return task

    def get_task(self, task_id: int) -> TaskRecord:
        return self._run(lambda s: TaskRecord.model_validate(self._task(s, task_id)), write=False)

    def tasks(
        self, job_id: str, state: TaskState | str | None = None, stage: Stage | str | None = None
    ) -> list[TaskRecord]:
        """A job's tasks in the order they were added, optionally filtered by state and stage."""
        state = None if state is None else _parse_enum(TaskState, state, "task state")
        stage = None if stage is None else _parse_enum(Stage, stage, "stage")

        def work(session: Session) -> list[TaskRecord]:
            query = sa.select(Task).where(Task.job_id == self._job(session, job_id).id).order_by(Task.id)
            if state is not None:
                query = query.where(Task.state == state)
            if stage is not None:
                query = query.where(Task.stage == stage)
            return [TaskRecord.model_validate(t) for t in session.scalars(query)]

        return self._run(work, write=False)

    def _transition(self, task_id: int, target: TaskState, values: dict[str, Any]) -> TaskRecord:
        """Move one task to ``target`` atomically: the UPDATE only matches a task in an allowed source state."""
        sources = [state for state, targets in TASK_TRANSITIONS.items() if target in targets]

        def work(session: Session) -> TaskRecord:
            changed = session.execute(
                sa.update(Task)
                .where(Task.id == task_id, Task.state.in_(sources))
                .values(state=target, **values)
                .execution_options(synchronize_session=False)
            ).rowcount
            task = self._task(session, task_id)
            if changed != 1:
                allowed = ", ".join(sorted(s.value for s in TASK_TRANSITIONS[task.state])) or "none (final state)"
                raise InvalidTransition(
                    f"task {task_id} is {task.state.value}; it cannot become {target.value} (allowed: {allowed})"
                )
            session.refresh(task)
            return TaskRecord.model_validate(task)

        return self._run(work, write=True)

    def claim_task(self, task_id: int, worker: str) -> TaskRecord:
        """pending → running for ``worker``; attempts += 1. Raises InvalidTransition if someone else claimed it."""
        return self._transition(
            task_id,
            TaskState.running,
            {"attempts": Task.attempts + 1, "worker": worker, "started_utc": utc_now(), "finished_utc": None},
        )

    def finish_task(self, task_id: int, state: TaskState | str, error: str | None = None) -> TaskRecord:
        """End a running task: done, failed (with ``error``), cancelled, or pending (retry, see ``requeue_task``).
        A pending task may also be cancelled."""
        state = _parse_enum(TaskState, state, "task state")
        if state is TaskState.running:
            raise InvalidTransition("finish_task cannot set a task running; use claim_task")
        values: dict[str, Any] = {"error": error}
        values["finished_utc"] = None if state is TaskState.pending else utc_now()
        if state is TaskState.pending:
            values["worker"] = None
        return self._transition(task_id, state, values)

    def requeue_task(self, task_id: int, error: str | None = None) -> TaskRecord:
        """running → pending: retry a task whose worker died (``error`` says why); its attempt still counts."""
        return self.finish_task(task_id, TaskState.pending, error=error)

    def set_task_progress(self, task_id: int, progress: Mapping[str, Any]) -> None:
        """Replace the progress document of a running task (e.g. {"temperature_K": 800, "step": 1200})."""
        try:
            progress = json.loads(json.dumps(dict(progress), allow_nan=False))
        except (TypeError, ValueError) as err:
            raise InputError(f"task progress must be plain JSON data: {err}") from err

        def work(session: Session) -> None:
            task = self._task(session, task_id)
            if task.state is not TaskState.running:
                raise InvalidTransition(f"task {task_id} is {task.state.value}; only a running task reports progress")
            task.progress_json = progress

        self._run(work, write=True)

    def reuse_result(self, task_id: int) -> TaskRecord:
        """pending → done without running, because a result with the task's ``task_key`` is already stored."""

        def work(session: Session) -> TaskRecord:
            task = self._task(session, task_id)
            if task.state is not TaskState.pending:
                raise InvalidTransition(f"task {task_id} is {task.state.value}; only a pending task can reuse a result")
            if session.scalar(sa.select(Result.id).where(Result.task_key == task.task_key)) is None:
                raise InvalidTransition(f"task {task_id}: no stored result has its task_key {task.task_key[:12]}…")
            task.state, task.reused_result, task.finished_utc = TaskState.done, True, utc_now()
            session.flush()
            return TaskRecord.model_validate(task)

        return self._run(work, write=True)

    def requeue_running(self, job_id: str) -> int:
        """running → pending for every running task of a job (resume after the driver died); returns how many."""

        def work(session: Session) -> int:
            job = self._job(session, job_id)
            return session.execute(
                sa.update(Task)
                .where(Task.job_id == job.id, Task.state == TaskState.running)
                .values(state=TaskState.pending, worker=None)
                .execution_options(synchronize_session=False)
            ).rowcount

        return self._run(work, write=True)

    def counts(self, job_id: str) -> dict[str, dict[str, int]]:
        """Tasks per stage and state, e.g. {"transport": {"pending": 2, "running": 1, "done": 5, ...}}."""

        def work(session: Session) -> dict[str, dict[str, int]]:
            job = self._job(session, job_id)
            rows = session.execute(
                sa.select(Task.stage, Task.state, sa.func.count())
                .where(Task.job_id == job.id)
                .group_by(Task.stage, Task.state)
            )
            out: dict[str, dict[str, int]] = {}
            for stage, state, n in rows:
                out.setdefault(stage.value, {s.value: 0 for s in TaskState})[state.value] = n
            return out

        return self._run(work, write=False)

    # ------------------------------------------------------------------ results
    def record_result(self, row: Mapping[str, Any] | ResultRow) -> bool:
        """Insert a result; False (and nothing written) if one with the same ``task_key`` is already stored."""
        if not isinstance(row, ResultRow):
            if not isinstance(row, Mapping):
                raise InputError(f"a result row is a mapping or ResultRow, got {type(row).__name__}")
            try:
                row = ResultRow.model_validate(dict(row))
            except ValidationError as err:
                raise validation_error("result row", err) from err

        def work(session: Session) -> bool:
            candidate = session.get(Candidate, row.candidate_id)
            if candidate is None:
                raise NotFoundError(f"result for task_key {row.task_key[:12]}…: no candidate {row.candidate_id}")
            if candidate.structure_hash != row.structure_hash:
                raise InputError(
                    f"result for task_key {row.task_key[:12]}…: structure_hash {row.structure_hash[:12]}… is not "
                    f"that of candidate {row.candidate_id} ({candidate.structure_hash[:12]}…)"
                )
            values = row.model_dump() | {"created_utc": utc_now()}
            inserted = session.execute(
                self._insert(Result)
                .values(**values)
                .on_conflict_do_nothing(index_elements=["task_key"])
                .returning(Result.id)
            ).first()
            return inserted is not None

        return self._run(work, write=True)

    def result_for_key(self, task_key: str) -> dict[str, Any] | None:
        """The stored result with this ``task_key`` (a dict of its columns), or None."""

        def work(session: Session) -> dict[str, Any] | None:
            result = session.scalar(sa.select(Result).where(Result.task_key == task_key))
            return None if result is None else _result_dict(result)

        return self._run(work, write=False)

    def results_for_job(self, job_id: str) -> list[dict[str, Any]]:
        """A job's results (one dict per result: its columns plus the candidate's name, formula, working_ion,
        working_ion_charge, kind and n_atoms), in the order the tasks were added."""

        def work(session: Session) -> list[dict[str, Any]]:
            job = self._job(session, job_id)
            query = (
                sa.select(Result, Candidate)
                .join(Task, Task.task_key == Result.task_key)
                .join(Candidate, Candidate.id == Result.candidate_id)
                .where(Task.job_id == job.id)
                .order_by(Task.id)
            )
            return [_result_dict(result, candidate) for result, candidate in session.execute(query)]

        return self._run(work, write=False)

    # ------------------------------------------------------------------ web: candidate table, candidate page
    def refresh_summaries(self, *, force: bool = False):
        """Update the candidate table (``candidate_summaries``) from new results; cheap when nothing changed.

        Reads and ranks without a write lock, then writes the changed rows in one short transaction. The first call
        of a Store (or ``force``) always rebuilds; later calls are skipped while no result was added.
        """
        from workflows.db import summaries

        mark = self._run(summaries.watermark, write=False)
        if not force and mark == getattr(self, "_summary_watermark", None):
            return summaries.RefreshReport(False, skipped=True)
        plan = self._run(summaries.plan_refresh, write=False)
        report = self._run(lambda s: summaries.apply_refresh(s, self._insert, plan), write=True)
        self._summary_watermark = mark
        return report

    def browse(self, query=None, **filters):
        """One page of the candidate table (a ``summaries.BrowseQuery``, or its fields as keywords)."""
        from workflows.db import summaries

        query = _browse_query(query, filters)
        return self._run(lambda s: summaries.browse(s, query, self._job), write=False)

    def browse_all(self, query=None, *, limit: int = 100_000, **filters):
        """Every row of the candidate table that matches the filters (at most ``limit``), in order (exports)."""
        from workflows.db import summaries

        query = _browse_query(query, filters)
        return self._run(lambda s: summaries.browse_all(s, query, self._job, limit), write=False)

    def summary_facets(self) -> dict[str, list[str]]:
        """Distinct working ions and kinds in the candidate table."""
        from workflows.db import summaries

        return self._run(summaries.facets, write=False)

    def summaries_for_candidate(self, candidate_id: int):
        """The candidate's table rows (one per model), best score first."""
        from workflows.db.models import CandidateSummary
        from workflows.db.summaries import SummaryRecord

        def work(session: Session):
            self._candidate(session, candidate_id)
            query = (
                sa.select(CandidateSummary)
                .where(CandidateSummary.candidate_id == candidate_id)
                .order_by(CandidateSummary.score.desc().nulls_last(), CandidateSummary.id)
            )
            return [SummaryRecord.model_validate(r) for r in session.scalars(query)]

        return self._run(work, write=False)

    def results_for_candidate(self, candidate_id: int) -> list[dict[str, Any]]:
        """Every stored result of a candidate (all models and protocols), newest first."""

        def work(session: Session) -> list[dict[str, Any]]:
            candidate = self._candidate(session, candidate_id)
            query = sa.select(Result).where(Result.candidate_id == candidate.id).order_by(Result.id.desc())
            return [_result_dict(r, candidate) for r in session.scalars(query)]

        return self._run(work, write=False)

    def get_result(self, result_id: int) -> dict[str, Any]:
        """One result row by id (its columns plus the candidate's identity columns)."""

        def work(session: Session) -> dict[str, Any]:
            result = session.get(Result, result_id) if isinstance(result_id, int) else None
            if result is None:
                raise NotFoundError(f"no result {result_id!r} in the database")
            return _result_dict(result, session.get(Candidate, result.candidate_id))

        return self._run(work, write=False)

    def table_counts(self) -> dict[str, int]:
        """Rows per table (every table of the schema)."""
        from workflows.db.models import Base

        def work(session: Session) -> dict[str, int]:
            return {
                t.name: session.scalar(sa.select(sa.func.count()).select_from(t)) for t in Base.metadata.sorted_tables
            }

        return self._run(work, write=False)

    # ------------------------------------------------------------------ web: API tokens
    def create_token(self, name: str):
        """Store a new API token for ``name``; returns (TokenRecord, token). The token is not stored, only its hash."""
        from workflows.db.models import ApiToken
        from workflows.db.tokens import NAME_PATTERN, TokenRecord, new_token, token_sha256

        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise InputError(f"a token name is 1-64 characters of letters, digits, space, '.', '_', '@', '-' "
                             f"starting with a letter or digit, got {name!r}")
        token_id, token = new_token()

        def work(session: Session):
            row = ApiToken(token_id=token_id, name=name, token_sha256=token_sha256(token), created_utc=utc_now())
            session.add(row)
            session.flush()
            return TokenRecord.model_validate(row)

        return self._run(work, write=True), token

    def list_tokens(self, *, include_revoked: bool = True):
        """Stored tokens (never the tokens themselves), oldest first."""
        from workflows.db.models import ApiToken
        from workflows.db.tokens import TokenRecord

        query = sa.select(ApiToken).order_by(ApiToken.created_utc, ApiToken.id)
        if not include_revoked:
            query = query.where(ApiToken.revoked_utc.is_(None))
        return self._run(lambda s: [TokenRecord.model_validate(t) for t in s.scalars(query)], write=False)

    def revoke_token(self, token_id_or_name: str):
        """Revoke a token by its id (8 hex digits) or by its name when one active token has it; returns it."""
        from workflows.db.models import ApiToken
        from workflows.db.tokens import TokenRecord

        def work(session: Session):
            found = session.scalar(sa.select(ApiToken).where(ApiToken.token_id == token_id_or_name))
            if found is None:
                named = session.scalars(
                    sa.select(ApiToken).where(ApiToken.name == token_id_or_name, ApiToken.revoked_utc.is_(None))
                ).all()
                if len(named) > 1:
                    ids = ", ".join(t.token_id for t in named)
                    raise InputError(f"{len(named)} active tokens are named {token_id_or_name!r} ({ids}); "
                                     "revoke one by its id")
                found = named[0] if named else None
            if found is None:
                raise NotFoundError(f"no token with id or active name {token_id_or_name!r}; "
                                    "`ionscreen tokens list` shows them")
            if found.revoked_utc is None:
                found.revoked_utc = utc_now()
            session.flush()
            return TokenRecord.model_validate(found)

        return self._run(work, write=True)

    def verify_token(self, token: str, *, touch_after_s: float = 60.0):
        """The active TokenRecord whose hash matches ``token``, or None. Records the use (at most once a minute)."""
        from workflows.db.models import ApiToken
        from workflows.db.tokens import TokenRecord, looks_like_token, token_sha256

        if not looks_like_token(token):
            return None
        digest = token_sha256(token)

        def find(session: Session):
            found = session.scalar(
                sa.select(ApiToken).where(ApiToken.token_sha256 == digest, ApiToken.revoked_utc.is_(None))
            )
            return None if found is None else TokenRecord.model_validate(found)

        def touch(session: Session) -> None:
            session.execute(sa.update(ApiToken).where(ApiToken.token_sha256 == digest).values(last_used_utc=now))

        record = self._run(find, write=False)  # a read first: most requests need no write lock
        if record is None:
            return None
        now = utc_now()
        if record.last_used_utc is None or (now - record.last_used_utc).total_seconds() > touch_after_s:
            self._run(touch, write=True)
            record = record.model_copy(update={"last_used_utc": now})
        return record


def _browse_query(query, filters: dict[str, Any]):
    from workflows.db.summaries import BrowseQuery

    if query is None:
        try:
            return BrowseQuery(**filters)
        except ValidationError as err:
            raise validation_error("candidate table query", err) from err
    if filters:
        raise InputError("give a BrowseQuery or filter keywords, not both")
    return query


__all__ = [
    "Backend",
    "InvalidTransition",
    "JOB_TRANSITIONS",
    "NotFoundError",
    "SchemaVersionError",
    "Store",
    "TASK_TRANSITIONS",
    "candidate_row",
    "create_db_engine",
]
