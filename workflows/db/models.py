"""SQLAlchemy 2 ORM tables of the job store and candidate database (jobs, candidates, tasks, results).

Units are part of the column names, 95 % intervals are ``*_ci95_lo_*`` / ``*_ci95_hi_*`` column pairs,
quality flags are a JSON list. Large arrays never live here; rows point at files (``document_path``).
The schema is created and upgraded by the Alembic migrations in ``workflows/db/migrations``.
"""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from screening.stages import Stage
from screening.summaries import SUMMARIES, NebSummary, TransportSummary

# Stable constraint names on every backend, so that migrations can name what they alter.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SHA256_HEX_LENGTH = 64


class JobStatus(enum.StrEnum):
    """Where a screening job stands."""

    pending = "pending"
    running = "running"
    done = "done"
    failed = "failed"
    cancelled = "cancelled"


class TaskState(enum.StrEnum):
    """Where one (candidate, stage) task stands; see ``workflows.db.store.TASK_TRANSITIONS``."""

    pending = "pending"
    running = "running"
    done = "done"
    failed = "failed"
    cancelled = "cancelled"


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC timestamp on every backend (SQLite stores naive text, PostgreSQL timestamptz)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("timestamps stored in the ionscreen database must be timezone-aware")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _enum(enum_cls: type[enum.Enum], name: str) -> sa.Enum:
    # VARCHAR + CHECK instead of a native PostgreSQL ENUM: same on both backends, simple to migrate.
    return sa.Enum(
        enum_cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    # none_as_null: a Python None is SQL NULL, not the JSON literal null (so IS NULL finds it).
    type_annotation_map = {
        dict[str, Any]: sa.JSON(none_as_null=True),
        list[str]: sa.JSON(none_as_null=True),
        datetime: UTCDateTime,
    }


Hash = sa.String(SHA256_HEX_LENGTH)


class Job(Base):
    """One screening job: its spec (as data, with its hash), the model it runs and its status."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True, doc="uuid4 hex")
    name: Mapped[str] = mapped_column(sa.Text)
    spec_json: Mapped[dict[str, Any]]
    spec_hash: Mapped[str] = mapped_column(Hash)
    plan_json: Mapped[dict[str, Any] | None] = mapped_column(doc="the typed plan (workflows.jobs.plan.JobPlan)")
    model_ref: Mapped[str] = mapped_column(sa.Text)
    model_sha256: Mapped[str | None] = mapped_column(Hash)
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus, "job_status"), index=True)
    created_utc: Mapped[datetime]
    updated_utc: Mapped[datetime]
    mlflow_run_id: Mapped[str | None] = mapped_column(sa.String(64))
    error: Mapped[str | None] = mapped_column(sa.Text)
    driver_pid: Mapped[int | None]
    driver_host: Mapped[str | None] = mapped_column(sa.Text)
    submitted_by: Mapped[str | None] = mapped_column(sa.Text, doc="API token name, or user@host for the CLI")


class Candidate(Base):
    """A structure to screen, identified by its structure hash (the same structure is stored once)."""

    __tablename__ = "candidates"

    id: Mapped[int] = mapped_column(primary_key=True)
    structure_hash: Mapped[str] = mapped_column(Hash, unique=True)
    name: Mapped[str] = mapped_column(sa.Text)
    formula: Mapped[str] = mapped_column(sa.Text)
    working_ion: Mapped[str] = mapped_column(sa.String(3))
    working_ion_charge: Mapped[int]
    kind: Mapped[str] = mapped_column(sa.String(32))
    n_atoms: Mapped[int]
    cif: Mapped[str | None] = mapped_column(sa.Text, doc="CIF text of the ordered cell (small; no trajectories)")
    metadata_json: Mapped[dict[str, Any]]
    created_utc: Mapped[datetime]


class JobCandidate(Base):
    """Which candidates a job screens."""

    __tablename__ = "job_candidates"

    job_id: Mapped[str] = mapped_column(sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    candidate_id: Mapped[int] = mapped_column(sa.ForeignKey("candidates.id"), primary_key=True, index=True)


class Task(Base):
    """One (candidate, stage) unit of work of a job; ``task_key`` names its inputs, so equal work shares a key."""

    __tablename__ = "tasks"
    __table_args__ = (
        sa.UniqueConstraint("job_id", "task_key"),
        sa.Index("ix_tasks_job_id_state", "job_id", "state"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(sa.ForeignKey("jobs.id", ondelete="CASCADE"))
    candidate_id: Mapped[int] = mapped_column(sa.ForeignKey("candidates.id"), index=True)
    stage: Mapped[Stage] = mapped_column(_enum(Stage, "stage"))
    task_key: Mapped[str] = mapped_column(Hash, index=True)
    state: Mapped[TaskState] = mapped_column(_enum(TaskState, "task_state"))
    attempts: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(sa.Text)
    workdir: Mapped[str | None] = mapped_column(sa.Text)
    progress_json: Mapped[dict[str, Any] | None]
    started_utc: Mapped[datetime | None]
    finished_utc: Mapped[datetime | None]
    worker: Mapped[str | None] = mapped_column(sa.Text)
    reused_result: Mapped[bool] = mapped_column(default=False)
    node: Mapped[str | None] = mapped_column(sa.Text, doc="the Ray node (host, address) of the latest attempt")
    attempts_json: Mapped[list[dict[str, Any]] | None] = mapped_column(
        sa.JSON(none_as_null=True), doc="every attempt: node, worker, started_utc, ended_utc, outcome, error")


class Result(Base):
    """The numbers of one finished task, with intervals, flags and full provenance; one row per ``task_key``."""

    __tablename__ = "results"

    id: Mapped[int] = mapped_column(primary_key=True)
    task_key: Mapped[str] = mapped_column(Hash, unique=True)
    candidate_id: Mapped[int] = mapped_column(sa.ForeignKey("candidates.id"), index=True)
    stage: Mapped[Stage] = mapped_column(_enum(Stage, "stage"))
    structure_hash: Mapped[str] = mapped_column(Hash, index=True)
    protocol_json: Mapped[dict[str, Any] | None]
    protocol_hash: Mapped[str] = mapped_column(Hash)
    model_ref: Mapped[str] = mapped_column(sa.Text)
    model_sha256: Mapped[str] = mapped_column(Hash)
    code_version: Mapped[str] = mapped_column(sa.Text)
    seed: Mapped[int | None] = mapped_column(sa.BigInteger)
    mlflow_run_id: Mapped[str | None] = mapped_column(sa.String(64))
    document_path: Mapped[str | None] = mapped_column(sa.Text, doc="result document, relative to IONSCREEN_HOME")
    created_utc: Mapped[datetime]
    flags: Mapped[list[str]]

    # The summary columns (σ, D*, Ea at 300 K with intervals; NEB barriers and percolation thresholds with intervals)
    # are added below from the fields of screening.summaries.TransportSummary and NebSummary.


#: Result columns derived from the result summaries (name → float or int); a new summary field needs a migration.
SUMMARY_COLUMNS: dict[str, type] = {name: kind for summary in SUMMARIES.values()
                                    for name, kind in summary.column_types().items()}
for _name, _type in SUMMARY_COLUMNS.items():
    setattr(Result, _name, mapped_column(_name, sa.Double if _type is float else sa.Integer, nullable=True))


class CandidateSummary(Base):
    """One browsable row per (candidate, model): the newest transport and NEB results merged, with the ranking score.

    Derived from ``results`` (``Store.refresh_summaries``), never written by the workers: it exists so the web table
    filters, sorts and pages 10,000s of candidates in SQL with indexes instead of merging rows in Python per request.
    ``elements`` is ``,El1,El2,`` (sorted symbols between commas) so "contains Cl" is ``LIKE '%,Cl,%'``.
    """

    __tablename__ = "candidate_summaries"
    __table_args__ = (sa.UniqueConstraint("candidate_id", "model_sha256"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    candidate_id: Mapped[int] = mapped_column(sa.ForeignKey("candidates.id", ondelete="CASCADE"), index=True)
    model_sha256: Mapped[str] = mapped_column(Hash)
    model_ref: Mapped[str] = mapped_column(sa.Text)
    name: Mapped[str] = mapped_column(sa.Text)
    formula: Mapped[str] = mapped_column(sa.Text, index=True)
    working_ion: Mapped[str] = mapped_column(sa.String(3), index=True)
    kind: Mapped[str] = mapped_column(sa.String(32))
    elements: Mapped[str] = mapped_column(sa.Text, doc="',Cl,Li,P,S,': sorted element symbols between commas")
    transport_result_id: Mapped[int | None] = mapped_column(sa.ForeignKey("results.id"))
    neb_result_id: Mapped[int | None] = mapped_column(sa.ForeignKey("results.id"))
    latest_result_id: Mapped[int] = mapped_column(index=True, doc="newest result id merged here (refresh watermark)")
    conductivity_300K_mS_cm: Mapped[float | None] = mapped_column(sa.Double, index=True)
    conductivity_300K_ci95_lo_mS_cm: Mapped[float | None] = mapped_column(sa.Double)
    conductivity_300K_ci95_hi_mS_cm: Mapped[float | None] = mapped_column(sa.Double)
    activation_energy_eV: Mapped[float | None] = mapped_column(sa.Double, index=True)
    activation_energy_ci95_lo_eV: Mapped[float | None] = mapped_column(sa.Double)
    activation_energy_ci95_hi_eV: Mapped[float | None] = mapped_column(sa.Double)
    migration_barrier_eV: Mapped[float | None] = mapped_column(sa.Double, doc="lowest converged NEB hop barrier, eV")
    percolation_barrier_eV: Mapped[float | None] = mapped_column(
        sa.Double, index=True, doc="percolation threshold of the dimensionality the ranking uses, eV")
    percolation_dimension: Mapped[int | None] = mapped_column(doc="1, 2 or 3: which network percolation_barrier_eV is")
    flags: Mapped[list[str]]
    n_flags: Mapped[int] = mapped_column(index=True)
    score: Mapped[float | None] = mapped_column(sa.Double, index=True, doc="screening.ranking score (default weights)")
    rank: Mapped[int | None] = mapped_column(doc="1 = best score over every summary row")
    updated_utc: Mapped[datetime]


class ApiToken(Base):
    """A token for the REST API: only its SHA-256 is stored; the token itself is shown once when it is created."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_id: Mapped[str] = mapped_column(sa.String(16), unique=True, doc="public id, also the token's prefix")
    name: Mapped[str] = mapped_column(sa.Text)
    token_sha256: Mapped[str] = mapped_column(Hash, unique=True)
    created_utc: Mapped[datetime]
    last_used_utc: Mapped[datetime | None]
    revoked_utc: Mapped[datetime | None]


# (estimate, lower, upper) column triples; the store checks lower <= upper.
INTERVAL_COLUMNS: tuple[tuple[str, str, str], ...] = tuple(
    t for summary in (TransportSummary, NebSummary) for t in summary.interval_columns())

__all__ = [
    "ApiToken",
    "Base",
    "Candidate",
    "CandidateSummary",
    "INTERVAL_COLUMNS",
    "SUMMARY_COLUMNS",
    "Job",
    "JobCandidate",
    "JobStatus",
    "Result",
    "Stage",
    "Task",
    "TaskState",
    "UTCDateTime",
    "utc_now",
]
