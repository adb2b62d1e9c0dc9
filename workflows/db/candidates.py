"""Candidates: structures stored once per structure hash (CIF text and metadata, no trajectories), and the jobs
that screen them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


def upsert_many_in(session: Session, insert, rows: Sequence[CandidateRow]) -> list[int]:
    """:func:`upsert_in` for many rows, with one INSERT and one SELECT: their ids, in order, and the same other
    names as one ``upsert_in`` per row (plan_job stores 10,000 candidates a chunk at a time)."""
    if not rows:
        return []
    now = utc_now()
    first: dict[str, CandidateRow] = {}  # the first row of each hash is the one inserted, in order
    for row in rows:
        first.setdefault(row.structure_hash, row)
    session.execute(insert(Candidate.__table__).on_conflict_do_nothing(index_elements=["structure_hash"]),
                    [row.model_dump() | {"created_utc": now} for row in first.values()])
    query = (sa.select(Candidate.structure_hash, Candidate.id, Candidate.name, Candidate.metadata_json)
             .where(Candidate.structure_hash.in_(list(first))))
    stored = {h: (cid, name, dict(metadata or {})) for h, cid, name, metadata in session.execute(query)}
    renamed: set[str] = set()
    for row in rows:
        cid, name, metadata = stored[row.structure_hash]
        known = [name, *metadata.get(OTHER_NAMES, [])]
        if row.name and row.name not in known:
            metadata[OTHER_NAMES] = [*known[1:], row.name]
            renamed.add(row.structure_hash)
    for h in renamed:
        cid, _, metadata = stored[h]
        session.execute(sa.update(Candidate.__table__).where(Candidate.id == cid).values(metadata_json=metadata))
    return [stored[row.structure_hash][0] for row in rows]


def link_many_in(session: Session, insert, job_id: str, candidate_ids: Sequence[int]) -> None:
    """:func:`link_in` for many candidates, with one INSERT."""
    if candidate_ids:
        statement = insert(JobCandidate.__table__).on_conflict_do_nothing(index_elements=["job_id", "candidate_id"])
        session.execute(statement, [{"job_id": job_id, "candidate_id": cid} for cid in dict.fromkeys(candidate_ids)])


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

    def hashes_for_job(self, job_id: str) -> dict[int, str]:
        """The structure hash of each candidate linked to a job, by candidate id (without the CIF texts)."""

        def work(session: Session) -> dict[int, str]:
            job = find_job(session, job_id)
            query = (
                sa.select(Candidate.id, Candidate.structure_hash)
                .join(JobCandidate, JobCandidate.candidate_id == Candidate.id)
                .where(JobCandidate.job_id == job.id)
                .order_by(Candidate.id)
            )
            return {candidate_id: structure_hash for candidate_id, structure_hash in session.execute(query)}

        return self._run(work, write=False)

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
