"""Candidates: structures stored once per structure hash (CIF text and metadata, no trajectories), and the jobs
that screen them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.orm import Session

from mlip.errors import InputError
from workflows.db.database import Repository, find_candidate, find_job
from workflows.db.models import Candidate, JobCandidate, utc_now
from workflows.db.records import CandidateRecord, CandidateRow, validation_error


def candidate_row(candidate: Any) -> CandidateRow:
    """A ``CandidateRow`` from a ``screening.candidates.Candidate`` or a mapping of the row's fields."""
    if isinstance(candidate, CandidateRow):
        return candidate
    if isinstance(candidate, Mapping):
        try:
            return CandidateRow.model_validate(dict(candidate))
        except ValidationError as err:
            raise validation_error("candidate", err) from err
    if not hasattr(candidate, "structure_hash") or not hasattr(candidate, "to_cif_text"):
        raise InputError(f"upsert_candidate needs a Candidate or a mapping, got {type(candidate).__name__}")
    cif = candidate.to_cif_text()  # with the metadata line that Candidate.from_cif_text reads back
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



#: Metadata key of the other names a stored structure was given (by later jobs or imports), in order.
OTHER_NAMES = "other_names"


def upsert_in(session: Session, insert, row: CandidateRow) -> int:
    """Store ``row`` once per structure hash inside ``session``; its id. An existing row is kept, and a name it
    did not have yet is added to its metadata's ``other_names`` (a duplicate's name is never dropped silently)."""
    values = row.model_dump() | {"created_utc": utc_now()}
    session.execute(insert(Candidate).values(**values).on_conflict_do_nothing(index_elements=["structure_hash"]))
    stored = session.scalars(sa.select(Candidate).where(Candidate.structure_hash == row.structure_hash)).one()
    metadata = dict(stored.metadata_json or {})
    known = [stored.name, *metadata.get(OTHER_NAMES, [])]
    if row.name and row.name not in known:
        stored.metadata_json = {**metadata, OTHER_NAMES: [*known[1:], row.name]}
        session.flush()
    return stored.id


def link_in(session: Session, insert, job_id: str, candidate_id: int) -> None:
    """Record inside ``session`` that a job screens a candidate (idempotent)."""
    session.execute(
        insert(JobCandidate)
        .values(job_id=job_id, candidate_id=candidate_id)
        .on_conflict_do_nothing(index_elements=["job_id", "candidate_id"])
    )


class CandidateRepository(Repository):
    """``store.candidates``: upsert by structure hash, look up, link to a job, list a job's candidates."""

    def upsert(self, candidate: Any) -> int:
        """Store a candidate once per structure hash; returns its id (the stored row is kept if it exists)."""
        row = candidate_row(candidate)
        return self._run(lambda session: upsert_in(session, self._insert, row), write=True)

    def get(self, candidate: int | str) -> CandidateRecord:
        """A candidate by id or structure hash."""
        return self._run(lambda s: CandidateRecord.model_validate(find_candidate(s, candidate)), write=False)

    def link(self, job_id: str, candidate_id: int) -> None:
        """Record that a job screens a candidate (idempotent)."""

        def work(session: Session) -> None:
            job = find_job(session, job_id)
            find_candidate(session, candidate_id)
            link_in(session, self._insert, job.id, candidate_id)

        self._run(work, write=True)

    def for_job(self, job_id: str) -> list[CandidateRecord]:
        """The candidates linked to a job, in the order they were first stored."""

        def work(session: Session) -> list[CandidateRecord]:
            job = find_job(session, job_id)
            query = (
                sa.select(Candidate)
                .join(JobCandidate, JobCandidate.candidate_id == Candidate.id)
                .where(JobCandidate.job_id == job.id)
                .order_by(Candidate.id)
            )
            return [CandidateRecord.model_validate(c) for c in session.scalars(query)]

        return self._run(work, write=False)
