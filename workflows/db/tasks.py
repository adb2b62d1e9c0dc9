"""Tasks: one (candidate, stage) of a job each, and their state machine (``TASK_TRANSITIONS``)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mlip.errors import InputError
from screening.stages import Stage
from workflows.db.database import InvalidTransition, Repository, _parse_enum, find_candidate, find_job, find_task
from workflows.db.models import Result, Task, TaskState, utc_now
from workflows.db.records import TaskRecord, check_sha256

# Allowed task state changes. running → pending is a retry (worker died) or a resume (driver died); pending → failed
# is a task refused before it ran (the driver found that its pinned model no longer resolves to the planned bytes).
TASK_TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    TaskState.pending: frozenset({TaskState.running, TaskState.cancelled, TaskState.failed}),
    TaskState.running: frozenset({TaskState.done, TaskState.failed, TaskState.cancelled, TaskState.pending}),
    TaskState.done: frozenset(),
    TaskState.failed: frozenset(),
    TaskState.cancelled: frozenset(),
}


def add_in(session: Session, insert, job_id: str, candidate_id: int, stage: Stage | str, task_key: str,
           workdir: str | None = None) -> int:
    """Inside ``session``: add a pending task, or return the id of the job's task with this ``task_key``."""
    stage = _parse_enum(Stage, stage, "stage")
    try:
        check_sha256(task_key, "task_key")
    except ValueError as err:
        raise InputError(str(err)) from None
    session.execute(
        insert(Task)
        .values(job_id=job_id, candidate_id=candidate_id, stage=stage, task_key=task_key, state=TaskState.pending,
                attempts=0, workdir=workdir, reused_result=False)
        .on_conflict_do_nothing(index_elements=["job_id", "task_key"])
    )
    task = session.scalar(sa.select(Task).where(Task.job_id == job_id, Task.task_key == task_key))
    if (task.candidate_id, task.stage) != (candidate_id, stage):
        raise InputError(
            f"job {job_id} already has task_key {task_key[:12]}… for candidate {task.candidate_id} "
            f"stage {task.stage.value}, not candidate {candidate_id} stage {stage.value}"
        )
    return task.id


def add_many_in(session: Session, insert, job_id: str,
                tasks: Sequence[tuple[int, Stage | str, str, str | None]]) -> None:
    """:func:`add_in` for many (candidate id, stage, task key, workdir), with one INSERT and one SELECT, and the same
    checks: a malformed key, or a key the job already has for another (candidate, stage), is an InputError."""
    values = []
    for candidate_id, stage, task_key, workdir in tasks:
        stage = _parse_enum(Stage, stage, "stage")
        try:
            check_sha256(task_key, "task_key")
        except ValueError as err:
            raise InputError(str(err)) from None
        values.append({"job_id": job_id, "candidate_id": candidate_id, "stage": stage, "task_key": task_key,
                       "state": TaskState.pending, "attempts": 0, "workdir": workdir, "reused_result": False})
    if not values:
        return
    session.execute(insert(Task.__table__).on_conflict_do_nothing(index_elements=["job_id", "task_key"]), values)
    query = (sa.select(Task.task_key, Task.candidate_id, Task.stage)
             .where(Task.job_id == job_id, Task.task_key.in_({v["task_key"] for v in values})))
    stored = {key: (candidate_id, stage) for key, candidate_id, stage in session.execute(query)}
    for v in values:
        candidate_id, stage = stored[v["task_key"]]
        if (candidate_id, stage) != (v["candidate_id"], v["stage"]):
            raise InputError(
                f"job {job_id} already has task_key {v['task_key'][:12]}… for candidate {candidate_id} "
                f"stage {stage.value}, not candidate {v['candidate_id']} stage {v['stage'].value}"
            )


class TaskRepository(Repository):
    """``store.tasks``: add, look up, list, claim, finish, requeue, progress, reuse, counts."""

    def add(
        self, job_id: str, candidate_id: int, stage: Stage | str, task_key: str, workdir: str | None = None
    ) -> int:
        """Add a pending task to a job, or return the id of the job's task with this ``task_key``."""

        def work(session: Session) -> int:
            job = find_job(session, job_id)
            find_candidate(session, candidate_id)
            return add_in(session, self._insert, job.id, candidate_id, stage, task_key, workdir)

        return self._run(work, write=True)

    def get(self, task_id: int) -> TaskRecord:
        return self._run(lambda s: TaskRecord.model_validate(find_task(s, task_id)), write=False)

    def list(
        self, job_id: str, state: TaskState | str | None = None, stage: Stage | str | None = None
    ) -> list[TaskRecord]:
        """A job's tasks in the order they were added, optionally filtered by state and stage."""
        state = None if state is None else _parse_enum(TaskState, state, "task state")
        stage = None if stage is None else _parse_enum(Stage, stage, "stage")

        def work(session: Session) -> list[TaskRecord]:
            query = sa.select(Task).where(Task.job_id == find_job(session, job_id).id).order_by(Task.id)
            if state is not None:
                query = query.where(Task.state == state)
            if stage is not None:
                query = query.where(Task.stage == stage)
            return [TaskRecord.model_validate(t) for t in session.scalars(query)]

        return self._run(work, write=False)

    def _transition(self, task_id: int, target: TaskState, values: dict[str, Any]) -> TaskRecord:
        """Move one task to ``target`` atomically: the UPDATE only matches a task in an allowed source state."""
        return self._run(lambda session: self._transition_in(session, task_id, target, values), write=True)

    @staticmethod
    def _transition_in(session: Session, task_id: int, target: TaskState, values: dict[str, Any]) -> TaskRecord:
        sources = [state for state, targets in TASK_TRANSITIONS.items() if target in targets]
        changed = session.execute(
            sa.update(Task)
            .where(Task.id == task_id, Task.state.in_(sources))
            .values(state=target, **values)
            .execution_options(synchronize_session=False)
        ).rowcount
        task = find_task(session, task_id)
        if changed != 1:
            allowed = ", ".join(sorted(s.value for s in TASK_TRANSITIONS[task.state])) or "none (final state)"
            raise InvalidTransition(
                f"task {task_id} is {task.state.value}; it cannot become {target.value} (allowed: {allowed})"
            )
        session.refresh(task)
        return TaskRecord.model_validate(task)

    def claim(self, task_id: int, worker: str, node: str | None = None) -> TaskRecord:
        """pending → running for ``worker`` (on Ray node ``node``); attempts += 1 and a new entry in the task's
        attempt history. Raises InvalidTransition if someone else claimed it."""
        now = utc_now()

        def work(session: Session) -> TaskRecord:
            task = find_task(session, task_id)
            history = list(task.attempts_json or [])
            history.append({"attempt": task.attempts + 1, "worker": worker, "node": node,
                            "started_utc": now.isoformat(), "ended_utc": None, "outcome": None})
            return self._transition_in(session, task_id, TaskState.running, {
                "attempts": Task.attempts + 1, "worker": worker, "node": node, "started_utc": now,
                "finished_utc": None, "attempts_json": history})

        return self._run(work, write=True)

    def finish(self, task_id: int, state: TaskState | str, error: str | None = None,
               compute_s: float | None = None) -> TaskRecord:
        """End a running task: done, failed (with ``error``), cancelled, or pending (retry, see ``requeue``).
        A pending task may also be cancelled, or failed (refused before it ran). The attempt that ran ends in the
        history with its outcome ("requeued" for a retry) and, when given, ``compute_s``: the task's own compute on
        its worker."""
        state = _parse_enum(TaskState, state, "task state")
        if state is TaskState.running:
            raise InvalidTransition("tasks.finish cannot set a task running; use tasks.claim")
        now = utc_now()

        def work(session: Session) -> TaskRecord:
            task = find_task(session, task_id)
            values: dict[str, Any] = {"error": error, "finished_utc": None if state is TaskState.pending else now}
            if state is TaskState.pending:
                values["worker"] = None
            history = list(task.attempts_json or [])
            if task.state is TaskState.running and history and history[-1].get("ended_utc") is None:
                outcome = "requeued" if state is TaskState.pending else state.value
                history[-1] = {**history[-1], "ended_utc": now.isoformat(), "outcome": outcome,
                               **({"error": error[:500]} if error else {}),
                               **({"compute_s": round(compute_s, 4)} if compute_s is not None else {})}
                values["attempts_json"] = history
            return self._transition_in(session, task_id, state, values)

        return self._run(work, write=True)

    def requeue(self, task_id: int, error: str | None = None) -> TaskRecord:
        """running → pending: retry a task whose worker died (``error`` says why); its attempt still counts."""
        return self.finish(task_id, TaskState.pending, error=error)

    def set_progress(self, task_id: int, progress: Mapping[str, Any]) -> None:
        """Replace the progress document of a running task (e.g. {"temperature_K": 800, "step": 1200})."""
        try:
            progress = json.loads(json.dumps(dict(progress), allow_nan=False))
        except (TypeError, ValueError) as err:
            raise InputError(f"task progress must be plain JSON data: {err}") from err

        def work(session: Session) -> None:
            task = find_task(session, task_id)
            if task.state is not TaskState.running:
                raise InvalidTransition(f"task {task_id} is {task.state.value}; only a running task reports progress")
            task.progress_json = progress

        self._run(work, write=True)

    def reuse_result(self, task_id: int) -> TaskRecord:
        """pending → done without running, because a result with the task's ``task_key`` is already stored."""

        def work(session: Session) -> TaskRecord:
            task = find_task(session, task_id)
            if task.state is not TaskState.pending:
                raise InvalidTransition(f"task {task_id} is {task.state.value}; only a pending task can reuse a result")
            if session.scalar(sa.select(Result.id).where(Result.task_key == task.task_key)) is None:
                raise InvalidTransition(f"task {task_id}: no stored result has its task_key {task.task_key[:12]}…")
            task.state, task.reused_result, task.finished_utc = TaskState.done, True, utc_now()
            session.flush()
            return TaskRecord.model_validate(task)

        return self._run(work, write=True)

    def requeue_running(self, job_id: str) -> int:
        """running → pending for every running task of a job (resume after the driver died); returns how many.
        Their open attempts end in the history as "driver lost"."""
        now = utc_now().isoformat()

        def work(session: Session) -> int:
            job = find_job(session, job_id)
            tasks = session.scalars(sa.select(Task).where(Task.job_id == job.id, Task.state == TaskState.running))
            n = 0
            for task in tasks:
                history = list(task.attempts_json or [])
                if history and history[-1].get("ended_utc") is None:
                    history[-1] = {**history[-1], "ended_utc": now, "outcome": "driver lost"}
                task.state, task.worker, task.attempts_json = TaskState.pending, None, history or None
                n += 1
            session.flush()
            return n

        return self._run(work, write=True)

    def counts(self, job_id: str) -> dict[str, dict[str, int]]:
        """Tasks per stage and state, e.g. {"transport": {"pending": 2, "running": 1, "done": 5, ...}}."""

        def work(session: Session) -> dict[str, dict[str, int]]:
            job = find_job(session, job_id)
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
