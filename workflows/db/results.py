"""Results: the numbers of finished tasks with provenance, stored once per task key (a re-run never duplicates)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.orm import Session

from mlip.errors import InputError
from screening.stages import Stage
from screening.summaries import SUMMARIES, Screened
from workflows.db.database import NotFoundError, Repository, find_candidate, find_job
from workflows.db.models import Candidate, Result, Task, utc_now
from workflows.db.records import ResultRow, validation_error

_CANDIDATE_COLUMNS = ("name", "formula", "working_ion", "working_ion_charge", "kind", "n_atoms")
_IDENTITY = ("name", "formula", "kind", "working_ion")


def _result_dict(result: Result, candidate: Candidate | None = None) -> dict[str, Any]:
    row = {column.key: getattr(result, column.key) for column in sa.inspect(Result).column_attrs}
    row["stage"] = result.stage.value
    if candidate is not None:
        row.update({key: getattr(candidate, key) for key in _CANDIDATE_COLUMNS})
    return row



def screened(rows: Iterable[Mapping[str, Any]]) -> list[Screened]:
    """Result rows (one per candidate and stage, as ``for_job`` returns them) → one ``Screened`` per candidate, typed
    summaries rebuilt from the columns, in first-seen order. Two rows of one stage for a candidate are an error."""
    entries: dict[str, dict[str, Any]] = {}
    for i, row in enumerate(rows):
        key = row.get("structure_hash")
        if not key:
            raise InputError(f"result row {i} has no structure_hash; rows must identify their candidate")
        stage = Stage(row["stage"])
        entry = entries.setdefault(key, {"structure_hash": key})
        for column in _IDENTITY:
            if entry.get(column) is None and row.get(column) is not None:
                entry[column] = str(getattr(row[column], "value", row[column]))
        if stage.value in entry:
            raise InputError(f"two {stage} rows for candidate {key[:12]}; rank the results of one job at a time")
        entry[stage.value] = SUMMARIES[stage].from_columns(row)
    return [Screened(**entry) for entry in entries.values()]


class ResultRepository(Repository):
    """``store.results``: record (idempotent), by task key, a job's, a candidate's, one by id."""

    def record(self, row: Mapping[str, Any] | ResultRow) -> bool:
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

    def for_key(self, task_key: str) -> dict[str, Any] | None:
        """The stored result with this ``task_key`` (a dict of its columns), or None."""

        def work(session: Session) -> dict[str, Any] | None:
            result = session.scalar(sa.select(Result).where(Result.task_key == task_key))
            return None if result is None else _result_dict(result)

        return self._run(work, write=False)

    def for_job(self, job_id: str) -> list[dict[str, Any]]:
        """A job's results (one dict per result: its columns plus the candidate's name, formula, working_ion,
        working_ion_charge, kind and n_atoms), in the order the tasks were added."""

        def work(session: Session) -> list[dict[str, Any]]:
            job = find_job(session, job_id)
            query = (
                sa.select(Result, Candidate)
                .join(Task, Task.task_key == Result.task_key)
                .join(Candidate, Candidate.id == Result.candidate_id)
                .where(Task.job_id == job.id)
                .order_by(Task.id)
            )
            return [_result_dict(result, candidate) for result, candidate in session.execute(query)]

        return self._run(work, write=False)

    def for_candidate(self, candidate_id: int) -> list[dict[str, Any]]:
        """Every stored result of a candidate (all models and protocols), newest first."""

        def work(session: Session) -> list[dict[str, Any]]:
            candidate = find_candidate(session, candidate_id)
            query = sa.select(Result).where(Result.candidate_id == candidate.id).order_by(Result.id.desc())
            return [_result_dict(r, candidate) for r in session.scalars(query)]

        return self._run(work, write=False)

    def model_refs(self, model_sha256: str) -> list[str]:
        """The references under which results of the model with this SHA-256 were computed (sorted, distinct)."""

        def work(session: Session) -> list[str]:
            query = sa.select(Result.model_ref).where(Result.model_sha256 == model_sha256).distinct()
            return sorted(session.scalars(query))

        return self._run(work, write=False)

    def get(self, result_id: int) -> dict[str, Any]:
        """One result row by id (its columns plus the candidate's identity columns)."""

        def work(session: Session) -> dict[str, Any]:
            result = session.get(Result, result_id) if isinstance(result_id, int) else None
            if result is None:
                raise NotFoundError(f"no result {result_id!r} in the database")
            return _result_dict(result, session.get(Candidate, result.candidate_id))

        return self._run(work, write=False)
