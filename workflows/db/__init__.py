"""The job store and candidate database: SQLAlchemy models, Alembic migrations and the ``Store`` repository API.

SQLite (WAL) under ``IONSCREEN_HOME`` by default, PostgreSQL by URL (``IONSCREEN_DB_URL``).
"""

from workflows.db.models import JobStatus, Stage, TaskState
from workflows.db.records import (
    CandidateRecord,
    CandidateRow,
    JobRecord,
    ResultRow,
    TaskRecord,
)
from workflows.db.store import (
    JOB_TRANSITIONS,
    TASK_TRANSITIONS,
    Backend,
    InvalidTransition,
    NotFoundError,
    SchemaVersionError,
    Store,
    candidate_row,
    create_db_engine,
)

__all__ = [
    "JOB_TRANSITIONS",
    "TASK_TRANSITIONS",
    "Backend",
    "CandidateRecord",
    "CandidateRow",
    "InvalidTransition",
    "JobRecord",
    "JobStatus",
    "NotFoundError",
    "ResultRow",
    "SchemaVersionError",
    "Stage",
    "Store",
    "TaskRecord",
    "TaskState",
    "candidate_row",
    "create_db_engine",
]
