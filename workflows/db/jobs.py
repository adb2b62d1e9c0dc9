"""Jobs: a screening job's spec, model, status (``JOB_TRANSITIONS``) and MLflow run."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Iterator, Mapping
from itertools import islice
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.orm import Session

from mlip.errors import InputError
from mlip.util import canonical_json
from screening.stages import Stage
from workflows.db.candidates import candidate_row, link_many_in, upsert_many_in
from workflows.db.database import _JOB_ID, InvalidTransition, Repository, _parse_enum, find_job
from workflows.db.models import Job, JobStatus, Task, TaskState, utc_now
from workflows.db.records import JobRecord, check_sha256
from workflows.db.tasks import add_many_in

# Allowed job status changes (setting the current status again only updates the other fields).
# A finished, failed or cancelled job may run again: resume continues it without recomputing what is done.
JOB_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.pending: frozenset({JobStatus.running, JobStatus.failed, JobStatus.cancelled}),
    JobStatus.running: frozenset({JobStatus.done, JobStatus.failed, JobStatus.cancelled}),
    JobStatus.done: frozenset({JobStatus.running}),
    JobStatus.failed: frozenset({JobStatus.running}),
    JobStatus.cancelled: frozenset({JobStatus.running}),
}


MAX_SUBMITTER_CHARS = 320  # a token name (64) or user@host (a login name and a DNS name)

# Rows a job's creation stores per statement: a chunk of candidates holds their CIF texts (up to ~150 kB each at the
# 2,000-site limit), so memory stays bounded whatever the number of candidates; tasks are a few fields each.
CANDIDATE_CHUNK = 100
TASK_CHUNK = 1000


class PlannedTask(NamedTuple):
    """A task to store with its job: ``candidate`` indexes the job's candidates."""

    candidate: int
    stage: Stage | str
    task_key: str
    workdir: str | None = None


def _plain_json(data: Mapping[str, Any], what: str) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(dict(data), sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise InputError(f"{what} is not plain JSON data: {err}") from err


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


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
        canonical = canonical_json(data)
    except (TypeError, ValueError) as err:
        raise InputError(f"the job spec is not plain JSON data: {err}") from err
    if spec_hash is None:
        spec_hash = hashlib.sha256(canonical.encode()).hexdigest()
    name, model = data.get("name"), data.get("model")
    for key, value in (("name", name), ("model", model)):
        if not isinstance(value, str) or not value:
            raise InputError(f"the job spec needs a non-empty string {key!r}, got {value!r}")
    return json.loads(canonical), check_sha256(spec_hash, "spec_hash"), name, model



class JobRepository(Repository):
    """``store.jobs``: create, look up, list, change status, cancel."""

    def create(
        self,
        spec: Any,
        *,
        model_sha256: str | None = None,
        job_id: str | None = None,
        plan: Mapping[str, Any] | None = None,
        candidates: Iterable[Any] = (),
        tasks: Iterable[PlannedTask] = (),
        error: str | None = None,
        submitted_by: str | None = None,
    ) -> str:
        """Store a new job (status pending) for ``spec`` (a JobSpec or mapping); returns its id (uuid4 hex).

        With ``plan``, ``candidates`` (Candidates or CandidateRows) and ``tasks`` the job is stored together with
        everything it runs, in one transaction: all of it, or (on any error) nothing — no orphan job. ``submitted_by``
        names who submitted it (an API token's name, or ``user@host``).

        ``candidates`` and ``tasks`` are read in chunks (``CANDIDATE_CHUNK``, ``TASK_CHUNK``) as they are stored, so
        they may be streams that never hold all their items (``plan_job`` of 10,000 candidates); they must be
        iterable again (a list, or an object whose ``__iter__`` starts over, not a generator): a transaction retried
        after a lock conflict reads them again."""
        for what, given in (("candidates", candidates), ("tasks", tasks)):
            if isinstance(given, Iterator):
                raise TypeError(f"store.jobs.create: {what} must be iterable more than once (a list, or an object "
                                f"whose __iter__ starts over), not a {type(given).__name__}: a transaction retried "
                                "after a lock conflict reads them again")
        spec_json, spec_hash, name, model_ref = _spec_fields(spec)
        if submitted_by is not None and (not isinstance(submitted_by, str) or not submitted_by.strip()
                                         or len(submitted_by) > MAX_SUBMITTER_CHARS or "\x00" in submitted_by):
            raise InputError(f"submitted_by is a name of 1-{MAX_SUBMITTER_CHARS} characters, got {submitted_by!r}")
        if model_sha256 is not None:
            try:
                check_sha256(model_sha256, "model_sha256")
            except ValueError as err:
                raise InputError(str(err)) from None
        if job_id is None:
            job_id = uuid.uuid4().hex
        elif not isinstance(job_id, str) or not _JOB_ID.match(job_id):
            raise InputError(f"a job id is 32 lower-case hex digits (uuid4().hex), got {job_id!r}")
        plan_json = None if plan is None else _plain_json(plan, "the job plan")

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
                    plan_json=plan_json,
                    model_ref=model_ref,
                    model_sha256=model_sha256,
                    status=JobStatus.pending,
                    error=error,
                    submitted_by=submitted_by,
                    created_utc=now,
                    updated_utc=now,
                )
            )
            try:
                session.flush()
            except exc.IntegrityError as err:  # another process created it between our check and insert
                raise InputError(f"job {job_id} already exists") from err
            ids: list[int] = []  # candidate id by position in ``candidates``
            linked: set[int] = set()
            for chunk in _chunks(candidates, CANDIDATE_CHUNK):
                chunk_ids = upsert_many_in(session, self._insert, [candidate_row(c) for c in chunk])
                link_many_in(session, self._insert, job_id, [i for i in chunk_ids if i not in linked])
                linked.update(chunk_ids)
                ids.extend(chunk_ids)
            for chunk in _chunks(tasks, TASK_CHUNK):
                for t in chunk:
                    if not 0 <= t.candidate < len(ids):
                        raise InputError(f"a planned task names candidate {t.candidate}, but {len(ids)} candidates "
                                         "are given")
                add_many_in(session, self._insert, job_id,
                            [(ids[t.candidate], t.stage, t.task_key, t.workdir) for t in chunk])
            return job_id

        return self._run(work, write=True)

    def save_plan(self, job_id: str, plan: Mapping[str, Any]) -> None:
        """Store the plan of a job that has none (jobs planned before plans lived in the database)."""
        plan_json = _plain_json(plan, "the job plan")

        def work(session: Session) -> None:
            job = find_job(session, job_id)
            if job.plan_json is not None:
                raise InputError(f"job {job.id} already has a plan; a plan never changes once stored")
            job.plan_json = plan_json

        self._run(work, write=True)

    def get(self, job_id: str) -> JobRecord:
        """The job with this id (or unique id prefix of at least 4 digits)."""
        return self._run(lambda s: JobRecord.model_validate(find_job(s, job_id)), write=False)

    def list(self, status: JobStatus | str | None = None, limit: int | None = None) -> list[JobRecord]:
        """Jobs, newest first, optionally only those with ``status``."""
        query = sa.select(Job).order_by(Job.created_utc.desc(), Job.id)
        if status is not None:
            query = query.where(Job.status == _parse_enum(JobStatus, status, "job status"))
        if limit is not None:
            query = query.limit(limit)
        return self._run(lambda s: [JobRecord.model_validate(j) for j in s.scalars(query)], write=False)

    def set_status(
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
            job = find_job(session, job_id)
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

    def cancel(self, job_id: str) -> int:
        """Cancel a job and its pending tasks (running ones are left to their worker); returns tasks cancelled."""

        def work(session: Session) -> int:
            job = find_job(session, job_id)
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
