"""OPTIMADE structure documents from the candidate database: a filtered, sorted, paged query over the candidate table
and one validated ``StructureResource`` per row; the same documents for a job written as a file
(``ionscreen results JOB --format optimade``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from optimade import __api_version__
from optimade.models import StructureResource
from sqlalchemy.orm import Session

from workflows.db.database import find_job
from workflows.db.models import JobCandidate
from workflows.web.optimade.properties import (
    DEFAULT_ORDER,
    PREFIX,
    PROPERTIES,
    Entry,
    S,
    count_source,
    entry_source,
    formula_fields,
    structure_fields,
)

PROVIDER = {
    "name": "ionscreen",
    "description": "Battery-material candidates screened for ionic transport with machine-learned interatomic "
                   "potentials: σ(300 K), Ea and migration barriers with 95 % intervals, quality flags and provenance.",
    "prefix": PREFIX,
}
SCHEMA_URL = f"https://schemas.optimade.org/openapi/v{__api_version__}/optimade.json"


@dataclass(frozen=True)
class Page:
    rows: list[Any]
    data_returned: int
    data_available: int


def find_page(session: Session, where, order_by: Sequence[Any], limit: int, offset: int) -> Page:
    """One page of entries matching ``where`` (an SQL boolean over ``properties.entry_source()``) and the counts."""
    rows = session.execute(entry_source().where(where).order_by(*order_by).limit(limit).offset(offset)).mappings().all()
    returned = session.scalar(count_source().where(where))
    available = session.scalar(count_source())
    return Page(list(rows), int(returned or 0), int(available or 0))


def distinct_formulas(session: Session) -> list[str]:
    return list(session.scalars(sa.select(S.formula).distinct()))


def candidate_path(row) -> str:
    return f"candidates/{row['x_candidate_id']}?model={row['x_model_sha256']}"


def document(row, base_url: str) -> dict[str, Any]:
    """The entry as a JSON-ready OPTIMADE structure resource, validated by the ``optimade`` models.

    ``base_url`` ends with '/': the server's root URL (served) or '/' (an exported file)."""
    composition = formula_fields(row["x_formula"])
    structure = structure_fields(row["x_cif"])
    stored_elements = tuple(e for e in row["x_elements"].split(",") if e)
    if not (composition.elements == stored_elements == structure.elements):
        raise ValueError(f"candidate {row['x_candidate_id']}: the formula {row['x_formula']!r}, the stored elements "
                         f"and the structure's sites disagree")
    entry = Entry(row, composition, structure, base_url + candidate_path(row))
    attributes = {name: prop.value(entry) for name, prop in PROPERTIES.items() if name not in ("id", "type")}
    resource = StructureResource(id=row["id"], type="structures", attributes=attributes)
    return resource.model_dump(mode="json", exclude_unset=True, by_alias=True)


def job_documents(store, job_id: str) -> dict[str, Any]:
    """A job's entries (its candidates under its model, best score first) as one OPTIMADE structures document."""
    from workflows.db.records import JobRecord

    def work(session: Session):
        job = find_job(session, job_id)
        where = S.candidate_id.in_(sa.select(JobCandidate.candidate_id).where(JobCandidate.job_id == job.id))
        if job.model_sha256 is not None:
            where = sa.and_(where, S.model_sha256 == job.model_sha256)
        rows = session.execute(entry_source().where(where).order_by(*DEFAULT_ORDER)).mappings().all()
        available = session.scalar(count_source())
        return JobRecord.model_validate(job), rows, int(available or 0)

    store.summaries.refresh()  # the table holds every result written so far
    job, rows, available = store._run(work, write=False)
    data = [document(row, "/") for row in rows]
    now = datetime.now(timezone.utc).replace(microsecond=0)
    return {
        "data": data,
        "meta": {
            "query": {"representation": "/structures"},
            "api_version": __api_version__,
            "time_stamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "data_returned": len(data),
            "data_available": available,
            "more_data_available": False,
            "schema": SCHEMA_URL,
            "provider": PROVIDER,
            f"_{PREFIX}_job_id": job.id,
            f"_{PREFIX}_job_name": job.name,
            f"_{PREFIX}_model_ref": job.model_ref,
            f"_{PREFIX}_model_sha256": job.model_sha256,
        },
        "links": {"next": None},
    }


__all__ = ["PROVIDER", "Page", "SCHEMA_URL", "candidate_path", "distinct_formulas", "document", "find_page",
           "job_documents"]
