"""The browsable candidate table: one ranked row per (candidate, model), rebuilt from ``results``, queried in SQL.

A refresh (``Store.refresh_summaries``) merges the newest transport and the newest NEB result of each candidate
under each model into a ``candidate_summaries`` row and scores every row with ``screening.ranking.rank`` (default
weights, so scores are comparable across jobs; a job's own weights apply to its own ranking,
``workflows.jobs.ranked``). It is skipped when the results' watermark did not move, reads and ranks without a write
lock (about 2 s for 10,000 candidates) and then writes only the rows whose values changed, in one short transaction.

``browse`` turns a validated :class:`BrowseQuery` into one parameterised SELECT with WHERE / ORDER BY / LIMIT /
OFFSET on the indexed columns, plus a COUNT: a page of 50 rows never loads the other 9,950 into Python.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from sqlalchemy.orm import Session

from mlip.errors import InputError
from screening.summaries import TransportSummary
from workflows.db.database import Repository, find_candidate, find_job
from workflows.db.models import (
    SUMMARY_COLUMNS,
    Candidate,
    CandidateSummary,
    JobCandidate,
    Result,
    Stage,
    utc_now,
)
from workflows.db.records import validation_error

_ELEMENT = re.compile(r"[A-Z][a-z]?")

#: Columns of the candidate table copied from the newest transport and NEB results (summary columns shown there).
TRANSPORT_COLUMNS = tuple(c for t in TransportSummary.interval_columns()
                          if t[0] in ("conductivity_300K_mS_cm", "activation_energy_eV") for c in t)
NEB_COLUMNS = ("migration_barrier_eV", "percolation_1d_eV", "percolation_2d_eV", "percolation_3d_eV")

_VALUE_COLUMNS = (
    "model_ref",
    "name",
    "formula",
    "working_ion",
    "kind",
    "elements",
    "transport_result_id",
    "neb_result_id",
    "latest_result_id",
    *TRANSPORT_COLUMNS,
    "migration_barrier_eV",
    "percolation_barrier_eV",
    "percolation_dimension",
    "flags",
    "n_flags",
    "score",
    "rank",
)


def elements_of(formula: str) -> list[str]:
    """Sorted element symbols of a formula such as ``Li10Ge(PS6)2``."""
    return sorted(set(_ELEMENT.findall(formula)))


def valid_element(symbol: str) -> str:
    from pymatgen.core.periodic_table import Element

    text = symbol.strip()
    if not Element.is_valid_symbol(text):
        raise ValueError(f"{symbol!r} is not an element symbol (e.g. Li, Cl, Zr)")
    return text


class SortKey(enum.StrEnum):
    """Sortable columns of the candidate table, each with its natural direction (best first)."""

    score = "score"
    conductivity = "conductivity"
    activation_energy = "activation_energy"
    barrier = "barrier"
    formula = "formula"
    name = "name"
    working_ion = "working_ion"
    kind = "kind"
    flags = "flags"


class SortOrder(enum.StrEnum):
    asc = "asc"
    desc = "desc"


# column and natural order per sort key
_SORT: dict[SortKey, tuple[Any, SortOrder]] = {
    SortKey.score: (CandidateSummary.score, SortOrder.desc),
    SortKey.conductivity: (CandidateSummary.conductivity_300K_mS_cm, SortOrder.desc),
    SortKey.activation_energy: (CandidateSummary.activation_energy_eV, SortOrder.asc),
    SortKey.barrier: (CandidateSummary.percolation_barrier_eV, SortOrder.asc),
    SortKey.formula: (CandidateSummary.formula, SortOrder.asc),
    SortKey.name: (CandidateSummary.name, SortOrder.asc),
    SortKey.working_ion: (CandidateSummary.working_ion, SortOrder.asc),
    SortKey.kind: (CandidateSummary.kind, SortOrder.asc),
    SortKey.flags: (CandidateSummary.n_flags, SortOrder.asc),
}

MAX_PER_PAGE = 500


class BrowseQuery(BaseModel):
    """Filters, order and page of the candidate table. Every value reaches SQL as a bound parameter."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job: str | None = Field(None, max_length=32, description="Only candidates of this job (id or ≥4-digit prefix), "
                                                               "with the job's model.")
    working_ion: str | None = Field(None, max_length=64, description="Working ion symbol, e.g. Li, Na, Mg.")
    kind: str | None = Field(None, max_length=64, description="electrolyte or cathode_host.")
    elements_present: tuple[str, ...] = Field((), max_length=20, description="Every one of these elements is present.")
    elements_absent: tuple[str, ...] = Field((), max_length=20, description="None of these elements is present.")
    min_conductivity_mS_cm: float | None = Field(None, ge=0, description="σ(300 K) estimate at least this, mS/cm.")
    max_activation_energy_eV: float | None = Field(None, description="Ea estimate at most this, eV.")
    max_barrier_eV: float | None = Field(None, description="Percolation barrier at most this, eV.")
    no_flags: bool = Field(False, description="Only rows without any quality flag.")
    text: str | None = Field(None, max_length=200, description="Name or formula contains this (case-insensitive).")
    sort: SortKey = SortKey.score
    order: SortOrder | None = Field(None, description="Default: the sort key's natural order (best first).")
    page: int = Field(1, ge=1, le=1_000_000)
    per_page: int = Field(50, ge=1, le=MAX_PER_PAGE)

    @field_validator("elements_present", "elements_absent", mode="before")
    @classmethod
    def _split(cls, value):
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        out: list[str] = []
        for item in value:
            out.extend(part for part in re.split(r"[\s,]+", str(item)) if part)
        return tuple(out)

    @field_validator("elements_present", "elements_absent")
    @classmethod
    def _symbols(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(valid_element(s) for s in value))

    @field_validator("job", "working_ion", "kind", "text", mode="before")
    @classmethod
    def _blank_is_none(cls, value):
        if isinstance(value, str) and not value.strip():
            return None
        return value.strip() if isinstance(value, str) else value

    @field_validator("elements_absent")
    @classmethod
    def _disjoint(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        both = set(value) & set(info.data.get("elements_present", ()))
        if both:
            raise ValueError(f"elements both required and excluded: {', '.join(sorted(both))}")
        return value

    @property
    def effective_order(self) -> SortOrder:
        return self.order or _SORT[self.sort][1]


class SummaryRecord(BaseModel):
    """A row of the candidate table (a snapshot)."""

    model_config = ConfigDict(from_attributes=True, frozen=True)

    id: int
    candidate_id: int
    model_sha256: str
    model_ref: str
    name: str
    formula: str
    working_ion: str
    kind: str
    elements: str
    transport_result_id: int | None
    neb_result_id: int | None
    latest_result_id: int
    conductivity_300K_mS_cm: float | None = Field(description="σ(300 K), mS/cm")
    conductivity_300K_ci95_lo_mS_cm: float | None
    conductivity_300K_ci95_hi_mS_cm: float | None
    activation_energy_eV: float | None = Field(description="Arrhenius activation energy, eV")
    activation_energy_ci95_lo_eV: float | None
    activation_energy_ci95_hi_eV: float | None
    migration_barrier_eV: float | None = Field(description="lowest converged NEB hop barrier, eV")
    percolation_barrier_eV: float | None = Field(description="percolation threshold used by the ranking, eV")
    percolation_dimension: int | None
    flags: list[str]
    n_flags: int
    score: float | None
    rank: int | None
    updated_utc: datetime

    @property
    def element_list(self) -> list[str]:
        return [e for e in self.elements.split(",") if e]


@dataclass(frozen=True)
class BrowsePage:
    rows: list[SummaryRecord]
    total: int
    query: BrowseQuery

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.query.per_page))


@dataclass(frozen=True)
class RefreshReport:
    changed: bool  # rows were written
    inserted: int = 0
    updated: int = 0
    rows: int = 0  # rows the table should hold (0 when the refresh was skipped)
    skipped: bool = False  # no result was added since the last refresh


# ---------------------------------------------------------------------------------------------- refresh
def _percolation(row: dict[str, Any]) -> tuple[float | None, int | None]:
    """The threshold the ranking's migration-barrier component uses (lowest barrier + dimensional penalty)."""
    from screening.ranking import RankingWeights

    weights = RankingWeights()
    penalty = {3: 0.0, 2: weights.penalty_2d_eV, 1: weights.penalty_1d_eV}
    best: tuple[float, float, int] | None = None
    for dim in (3, 2, 1):
        value = row.get(f"percolation_{dim}d_eV")
        if value is None:
            continue
        effective = value + penalty[dim]
        if best is None or effective < best[0] - 1e-12:
            best = (effective, value, dim)
    return (None, None) if best is None else (best[1], best[2])


def watermark(session: Session) -> tuple[int | None, int]:
    """(newest result id, number of results): changes whenever a result is added.

    The count matters on PostgreSQL, where a transaction holding a smaller id can commit after one holding a larger
    id: the maximum alone would not move, the count does.
    """
    return tuple(session.execute(sa.select(sa.func.max(Result.id), sa.func.count(Result.id))).one())


@dataclass(frozen=True)
class RefreshPlan:
    inserts: list[dict[str, Any]]
    updates: list[dict[str, Any]]
    rows: int


def plan_refresh(session: Session) -> RefreshPlan:
    """Read phase (no write lock): merge the newest results, rank every row, compare with what is stored."""
    from screening.ranking import rank
    from workflows.db.results import screened

    latest_ids = (
        sa.select(sa.func.max(Result.id))
        .group_by(Result.candidate_id, Result.model_sha256, Result.stage)
        .scalar_subquery()
    )
    columns = [getattr(Result, c) for c in SUMMARY_COLUMNS]
    query = (
        sa.select(Result.id, Result.candidate_id, Result.model_sha256, Result.model_ref, Result.stage, Result.flags,
                  *columns, Candidate.name, Candidate.formula, Candidate.working_ion, Candidate.kind)
        .join(Candidate, Candidate.id == Result.candidate_id)
        .where(Result.id.in_(latest_ids))
        .order_by(Result.id)
    )
    merged: dict[tuple[int, str], dict[str, Any]] = {}
    results: list[dict[str, Any]] = []
    for r in session.execute(query).mappings():
        key = (r["candidate_id"], r["model_sha256"])
        row = merged.setdefault(key, {
            "candidate_id": key[0], "model_sha256": key[1], "name": r["name"], "formula": r["formula"],
            "working_ion": r["working_ion"], "kind": r["kind"],
            "elements": "," + ",".join(elements_of(r["formula"])) + ",",
            "flags": [], "transport_result_id": None, "neb_result_id": None, "latest_result_id": 0,
        })
        row["model_ref"] = r["model_ref"]  # the newest reference text for this hash
        row["latest_result_id"] = max(row["latest_result_id"], r["id"])
        row[f"{r['stage'].value}_result_id"] = r["id"]
        for column in TRANSPORT_COLUMNS if r["stage"] is Stage.TRANSPORT else NEB_COLUMNS:
            row[column] = r[column]
        for flag in r["flags"] or []:
            if flag not in row["flags"]:
                row["flags"].append(flag)
        results.append({**r, "structure_hash": f"{key[0]}:{key[1]}"})  # the ranking's key: one row per summary

    for row in merged.values():
        row["percolation_barrier_eV"], row["percolation_dimension"] = _percolation(row)
        row["n_flags"] = len(row["flags"])
    if merged:
        for ranked in rank(screened(results)):
            row = merged[_key(ranked.structure_hash)]
            row["score"], row["rank"] = float(ranked.score), ranked.rank

    stored_columns = [CandidateSummary.id, CandidateSummary.candidate_id, CandidateSummary.model_sha256,
                      *(getattr(CandidateSummary, c) for c in _VALUE_COLUMNS)]
    existing = {(r["candidate_id"], r["model_sha256"]): r for r in session.execute(sa.select(*stored_columns)).mappings()}
    now = utc_now()
    inserts, updates = [], []
    for key, row in merged.items():
        values = {c: row.get(c) for c in _VALUE_COLUMNS}
        stored = existing.get(key)
        if stored is None:
            inserts.append({"candidate_id": key[0], "model_sha256": key[1], **values, "updated_utc": now})
        elif any(stored[c] != v for c, v in values.items()):
            updates.append({"id": stored["id"], **values, "updated_utc": now})
    return RefreshPlan(inserts, updates, len(merged))


def apply_refresh(session: Session, insert: Callable[..., Any], plan: RefreshPlan) -> RefreshReport:
    """Write phase: one short transaction of bulk INSERTs and UPDATEs by primary key."""
    if plan.inserts:
        session.execute(insert(CandidateSummary).on_conflict_do_nothing(
            index_elements=["candidate_id", "model_sha256"]), plan.inserts)
    if plan.updates:
        session.execute(sa.update(CandidateSummary), plan.updates)
    return RefreshReport(bool(plan.inserts or plan.updates), len(plan.inserts), len(plan.updates), plan.rows)


def _key(text: str) -> tuple[int, str]:
    cid, model = text.split(":", 1)
    return int(cid), model


# ---------------------------------------------------------------------------------------------- queries
def _filtered(session: Session, query: BrowseQuery) -> sa.Select:
    s = CandidateSummary
    stmt = sa.select(s)
    if query.job is not None:
        job = find_job(session, query.job)
        stmt = stmt.where(
            s.candidate_id.in_(sa.select(JobCandidate.candidate_id).where(JobCandidate.job_id == job.id)),
        )
        if job.model_sha256 is not None:
            stmt = stmt.where(s.model_sha256 == job.model_sha256)
    if query.working_ion is not None:
        stmt = stmt.where(s.working_ion == query.working_ion)
    if query.kind is not None:
        stmt = stmt.where(s.kind == query.kind)
    for symbol in query.elements_present:
        stmt = stmt.where(s.elements.contains(f",{symbol},", autoescape=True))
    for symbol in query.elements_absent:
        stmt = stmt.where(sa.not_(s.elements.contains(f",{symbol},", autoescape=True)))
    if query.min_conductivity_mS_cm is not None:
        stmt = stmt.where(s.conductivity_300K_mS_cm >= query.min_conductivity_mS_cm)
    if query.max_activation_energy_eV is not None:
        stmt = stmt.where(s.activation_energy_eV <= query.max_activation_energy_eV)
    if query.max_barrier_eV is not None:
        stmt = stmt.where(s.percolation_barrier_eV <= query.max_barrier_eV)
    if query.no_flags:
        stmt = stmt.where(s.n_flags == 0)
    if query.text is not None:
        stmt = stmt.where(sa.or_(s.name.icontains(query.text, autoescape=True),
                                 s.formula.icontains(query.text, autoescape=True)))
    return stmt


def _ordered(stmt: sa.Select, query: BrowseQuery) -> sa.Select:
    column, _ = _SORT[query.sort]
    primary = column.desc() if query.effective_order is SortOrder.desc else column.asc()
    # missing values last in either direction; the id makes the order total (stable pages)
    return stmt.order_by(primary.nulls_last(), CandidateSummary.id)


def browse(session: Session, query: BrowseQuery) -> BrowsePage:
    stmt = _filtered(session, query)
    total = session.scalar(sa.select(sa.func.count()).select_from(stmt.subquery()))
    page = _ordered(stmt, query).limit(query.per_page).offset((query.page - 1) * query.per_page)
    rows = [SummaryRecord.model_validate(r) for r in session.scalars(page)]
    return BrowsePage(rows, int(total or 0), query)


def facets(session: Session) -> dict[str, list[str]]:
    """Distinct working ions and kinds in the table (for the filter form)."""
    s = CandidateSummary
    return {
        "working_ion": list(session.scalars(sa.select(s.working_ion).distinct().order_by(s.working_ion))),
        "kind": list(session.scalars(sa.select(s.kind).distinct().order_by(s.kind))),
    }


def browse_all(session: Session, query: BrowseQuery, limit: int) -> list[SummaryRecord]:
    """Every row matching the filters, in the query's order (at most ``limit``), for exports."""
    stmt = _ordered(_filtered(session, query), query).limit(limit)
    return [SummaryRecord.model_validate(r) for r in session.scalars(stmt)]



class SummaryRepository(Repository):
    """``store.summaries``: the candidate table — refresh from new results, browse, export, facets, one candidate."""

    def __init__(self, db):
        super().__init__(db)
        self._watermark = None

    def refresh(self, *, force: bool = False):
        """Update the candidate table (``candidate_summaries``) from new results; cheap when nothing changed.

        Reads and ranks without a write lock, then writes the changed rows in one short transaction. The first call
        of a Store (or ``force``) always rebuilds; later calls are skipped while no result was added.
        """
        mark = self._run(watermark, write=False)
        if not force and mark == self._watermark:
            return RefreshReport(False, skipped=True)
        plan = self._run(plan_refresh, write=False)
        report = self._run(lambda s: apply_refresh(s, self._insert, plan), write=True)
        self._watermark = mark
        return report

    def browse(self, query=None, **filters):
        """One page of the candidate table (a ``BrowseQuery``, or its fields as keywords)."""
        query = _browse_query(query, filters)
        return self._run(lambda s: browse(s, query), write=False)

    def browse_all(self, query=None, *, limit: int = 100_000, **filters):
        """Every row of the candidate table that matches the filters (at most ``limit``), in order (exports)."""
        query = _browse_query(query, filters)
        return self._run(lambda s: browse_all(s, query, limit), write=False)

    def facets(self) -> dict[str, list[str]]:
        """Distinct working ions and kinds in the candidate table."""
        return self._run(facets, write=False)

    def for_candidate(self, candidate_id: int):
        """The candidate's table rows (one per model), best score first."""
        def work(session: Session):
            find_candidate(session, candidate_id)
            query = (
                sa.select(CandidateSummary)
                .where(CandidateSummary.candidate_id == candidate_id)
                .order_by(CandidateSummary.score.desc().nulls_last(), CandidateSummary.id)
            )
            return [SummaryRecord.model_validate(r) for r in session.scalars(query)]

        return self._run(work, write=False)


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
    "SummaryRepository",
    "BrowsePage",
    "BrowseQuery",
    "MAX_PER_PAGE",
    "RefreshReport",
    "SortKey",
    "SortOrder",
    "SummaryRecord",
    "browse",
    "browse_all",
    "apply_refresh",
    "elements_of",
    "facets",
    "plan_refresh",
    "watermark",
]
