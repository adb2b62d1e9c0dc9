"""The job store and candidate database, one repository per aggregate over one connection pool.

``Store.open()`` upgrades the schema and returns a :class:`Store`; its repositories are ``store.jobs``,
``store.candidates``, ``store.tasks``, ``store.results``, ``store.summaries`` (the candidate table) and
``store.tokens`` (REST API tokens). Every method is one short transaction (see :mod:`workflows.db.database`) and
returns snapshots (pydantic records), not ORM objects.
"""

from __future__ import annotations

from workflows.db.candidates import CandidateRepository, candidate_row
from workflows.db.database import (
    DEFAULT_BUSY_TIMEOUT_S,
    Backend,
    Database,
    InvalidTransition,
    NotFoundError,
    SchemaVersionError,
    create_db_engine,
)
from workflows.db.jobs import JOB_TRANSITIONS, JobRepository
from workflows.db.results import ResultRepository
from workflows.db.summaries import SummaryRepository
from workflows.db.tasks import TASK_TRANSITIONS, TaskRepository
from workflows.db.tokens import TokenRepository


class Store(Database):
    """The ionscreen database: ``jobs``, ``candidates``, ``tasks``, ``results``, ``summaries``, ``tokens``.

    The URL comes from the settings (``IONSCREEN_DB_URL``, default ``sqlite:///$IONSCREEN_HOME/ionscreen.db``).
    A Store holds a connection pool: open one per process (it is not meant to be pickled to Ray workers).
    """

    def __init__(self, db_url: str, *, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S):
        super().__init__(db_url, busy_timeout_s=busy_timeout_s)
        self.jobs = JobRepository(self)
        self.candidates = CandidateRepository(self)
        self.tasks = TaskRepository(self)
        self.results = ResultRepository(self)
        self.summaries = SummaryRepository(self)
        self.tokens = TokenRepository(self)


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
