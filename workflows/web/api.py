"""The REST API under ``/api``: candidates (ranked, filtered, paged; CSV), candidate details and structure files,
jobs (submit, list, status and progress, cancel, ranked results). Writes need a token; reads are open unless the
server closes them (``api_reads_require_token``)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from workflows.db.records import JobRecord
from workflows.db.summaries import MAX_PER_PAGE, SortKey, SortOrder, SummaryRecord
from workflows.db.tokens import TokenRecord
from workflows.web.auth import require_read, require_write
from workflows.web.params import CandidateId, JobId
from workflows.web.structures import download_format, file_text, media_type, safe_stem
from workflows.web.submit import CONTENT_TYPES, SubmitError, submit
from workflows.web.views import QueryError, browse_query, csv_text

router = APIRouter(prefix="/api", dependencies=[Depends(require_read)])


# ---------------------------------------------------------------------------------------------- response models
class CandidateRow(SummaryRecord):
    url: str = Field(description="The candidate's page (this model's results).")


class CandidatePage(BaseModel):
    total: int = Field(description="Rows matching the filters (all pages).")
    page: int
    per_page: int
    pages: int
    rows: list[CandidateRow]


class JobSummary(BaseModel):
    id: str
    name: str
    status: str
    model_ref: str
    model_sha256: str | None
    submitted_by: str | None = Field(description="Who submitted the job: the API token's name, or user@host for "
                                                 "the command line (None for jobs stored before submitters were).")
    created_utc: datetime
    updated_utc: datetime
    mlflow_run_id: str | None
    error: str | None
    counts: dict[str, dict[str, int]] = Field(description="Tasks per stage and state.")
    progress: dict[str, float] = Field(description="Per stage: fraction of tasks finished (done, failed or cancelled).")


class JobStatusOut(JobSummary):
    running_tasks: list[dict[str, Any]] = Field(description="Running tasks with their latest progress report.")
    spec: dict[str, Any]


class Submitted(BaseModel):
    job_id: str
    name: str
    status: str = "pending"
    n_candidates: int
    n_tasks: int
    candidate_failures: list[str]
    driver_pid: int | None
    status_url: str


class Problem(BaseModel):
    detail: Any


TABLE_DOC = {
    "q": "Name or formula contains this text (case-insensitive).",
    "ion": "Working ion, e.g. Li, Na, Mg.",
    "kind": "electrolyte or cathode_host.",
    "has": "Elements that must be present (repeat, or separate with spaces/commas).",
    "lacks": "Elements that must be absent.",
    "min_sigma": "Minimum σ(300 K) estimate, mS/cm.",
    "max_ea": "Maximum activation energy estimate, eV.",
    "max_barrier": "Maximum percolation barrier, eV.",
    "clean": "Only candidates without quality flags.",
    "job": "Only this job's candidates (id or ≥4-digit prefix), with its model.",
}


def _store(request: Request):
    return request.app.state.store


def _job_summary(store, job: JobRecord) -> dict[str, Any]:
    counts = store.tasks.counts(job.id)
    progress = {}
    for stage, states in counts.items():
        total = sum(states.values())
        finished = states.get("done", 0) + states.get("failed", 0) + states.get("cancelled", 0)
        progress[stage] = round(finished / total, 4) if total else 0.0
    return {
        "id": job.id, "name": job.name, "status": str(job.status), "model_ref": job.model_ref,
        "model_sha256": job.model_sha256, "submitted_by": job.submitted_by, "created_utc": job.created_utc,
        "updated_utc": job.updated_utc,
        "mlflow_run_id": job.mlflow_run_id, "error": job.error, "counts": counts, "progress": progress,
    }


def table_query(request: Request):
    try:
        return browse_query(request.query_params)
    except QueryError as err:
        raise HTTPException(422, err.errors) from None


TableQuery = Annotated[Any, Depends(table_query)]


# ---------------------------------------------------------------------------------------------- candidates
@router.get("/candidates", response_model=CandidatePage, tags=["candidates"],
            summary="Ranked candidates (filter, sort, page)")
def list_candidates(
    request: Request,
    query: TableQuery,
    q: Annotated[str | None, Query(description=TABLE_DOC["q"], max_length=200)] = None,
    ion: Annotated[str | None, Query(description=TABLE_DOC["ion"])] = None,
    kind: Annotated[str | None, Query(description=TABLE_DOC["kind"])] = None,
    has: Annotated[list[str], Query(description=TABLE_DOC["has"])] = [],  # noqa: B006 - FastAPI copies defaults
    lacks: Annotated[list[str], Query(description=TABLE_DOC["lacks"])] = [],  # noqa: B006
    min_sigma: Annotated[float | None, Query(description=TABLE_DOC["min_sigma"], ge=0)] = None,
    max_ea: Annotated[float | None, Query(description=TABLE_DOC["max_ea"])] = None,
    max_barrier: Annotated[float | None, Query(description=TABLE_DOC["max_barrier"])] = None,
    clean: Annotated[bool, Query(description=TABLE_DOC["clean"])] = False,
    job: Annotated[str | None, Query(description=TABLE_DOC["job"])] = None,
    sort: Annotated[SortKey, Query(description="Sort key; default: ranking score, best first.")] = SortKey.score,
    order: Annotated[SortOrder | None, Query(description="asc or desc (default: best first).")] = None,
    page: Annotated[int, Query(ge=1)] = 1,
    per_page: Annotated[int, Query(ge=1, le=MAX_PER_PAGE)] = 50,
):
    """One page of the candidate table: one row per (candidate, model), with σ(300 K) and Ea and their 95 %
    intervals, the percolation barrier, flags and the ranking score (default weights, comparable across jobs)."""
    result = _store(request).summaries.browse(query)
    rows = [CandidateRow(**r.model_dump(), url=f"/candidates/{r.candidate_id}?model={r.model_sha256}")
            for r in result.rows]
    return CandidatePage(total=result.total, page=query.page, per_page=query.per_page, pages=result.pages, rows=rows)


@router.get("/candidates.csv", tags=["candidates"], summary="The filtered table as CSV",
            response_class=Response, responses={200: {"content": {"text/csv": {}}}})
def export_csv(request: Request, query: TableQuery):
    """Every row matching the same filters as ``/api/candidates`` (all pages, up to 100,000 rows), in its order."""
    limit = 100_000
    rows = _store(request).summaries.browse_all(query, limit=limit)
    headers = {"Content-Disposition": 'attachment; filename="ionscreen-candidates.csv"'}
    if len(rows) == limit:
        headers["X-Ionscreen-Truncated"] = str(limit)
    return Response(csv_text(rows), media_type="text/csv; charset=utf-8", headers=headers)


@router.get("/candidates/{candidate_id}", tags=["candidates"], summary="A candidate with all its results")
def get_candidate(request: Request, candidate_id: CandidateId):
    store = _store(request)
    record = store.candidates.get(candidate_id)
    stem = safe_stem(record.name)
    return {
        "candidate": record.model_dump(mode="json", exclude={"cif"}),
        "summaries": [s.model_dump(mode="json") for s in store.summaries.for_candidate(candidate_id)],
        "results": json.loads(json.dumps(store.results.for_candidate(candidate_id), default=str)),
        "downloads": {
            "cif": f"/api/candidates/{candidate_id}/download/{stem}.cif",
            "poscar": f"/api/candidates/{candidate_id}/download/POSCAR",
        },
    }


@router.get("/candidates/{candidate_id}/download/{filename}", tags=["candidates"],
            summary="The structure as CIF or POSCAR", response_class=Response,
            responses={200: {"content": {"chemical/x-cif": {}, "text/plain": {}}}, 422: {"model": Problem}})
def download(request: Request, candidate_id: CandidateId, filename: str):
    """``NAME.cif`` (the stored CIF, whose first line holds ionscreen's metadata), or ``POSCAR`` / ``NAME.vasp``."""
    fmt = download_format(filename)
    record = _store(request).candidates.get(candidate_id)
    return Response(file_text(record, fmt), media_type=media_type(fmt),
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


# ---------------------------------------------------------------------------------------------- jobs
@router.post("/jobs", status_code=202, response_model=Submitted, tags=["jobs"], summary="Submit a screening job",
             responses={401: {"model": Problem}, 403: {"model": Problem}, 413: {"model": Problem},
                        415: {"model": Problem}, 422: {"model": Problem}},
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": {"type": "object", "description": "The job file as JSON"}},
                 "application/yaml": {"schema": {"type": "string", "description": "The job file as YAML"}},
             }}})
async def submit_job(request: Request, token: TokenRecord = Depends(require_write)):
    """Validate the job (the schema of the YAML job file), store it with its candidates and tasks, and start its
    driver in the background (``python -m workflows.cli jobs resume JOB``). The job records the token's name as
    its submitter. Answers 202 with the job id at once;
    follow it with ``GET /api/jobs/{id}``. Structure and model files may only be named relative to the server's
    ``submissions/`` directory."""
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    fmt = CONTENT_TYPES.get(content_type)
    if fmt is None:
        raise HTTPException(415, f"send the job as {' or '.join(sorted(CONTENT_TYPES))}, not {content_type!r}")
    body = await request.body()
    state = request.app.state
    try:
        done = await run_in_threadpool(submit, body, fmt, settings=state.settings, store=state.store,
                                       launcher=state.launcher, submitted_by=token.name)
    except SubmitError as err:
        return JSONResponse({"detail": err.errors}, status_code=err.status_code)
    return Submitted(job_id=done.job_id, name=done.name, n_candidates=done.n_candidates, n_tasks=done.n_tasks,
                     candidate_failures=done.candidate_failures, driver_pid=done.driver_pid,
                     status_url=f"/api/jobs/{done.job_id}")


@router.get("/jobs", response_model=list[JobSummary], tags=["jobs"], summary="Jobs, newest first")
def list_jobs(request: Request, status: Annotated[str | None, Query(description="Only jobs in this status.")] = None,
              limit: Annotated[int, Query(ge=1, le=1000)] = 100):
    store = _store(request)
    return [_job_summary(store, j) for j in store.jobs.list(status=status, limit=limit)]


@router.get("/jobs/{job_id}", response_model=JobStatusOut, tags=["jobs"], summary="A job's status and progress")
def job_status(request: Request, job_id: JobId):
    store = _store(request)
    job = store.jobs.get(job_id)
    running = [
        {"task_id": t.id, "candidate_id": t.candidate_id, "stage": str(t.stage), "attempts": t.attempts,
         "started_utc": t.started_utc, "progress": t.progress_json}
        for t in store.tasks.list(job.id, state="running")
    ]
    return {**_job_summary(store, job), "running_tasks": running, "spec": job.spec_json}


@router.post("/jobs/{job_id}/cancel", tags=["jobs"], summary="Cancel a job",
             responses={401: {"model": Problem}, 403: {"model": Problem}})
def cancel_job(request: Request, job_id: JobId, token: TokenRecord = Depends(require_write)):
    """Pending tasks are cancelled at once; a running driver sees the status within seconds and stops its workers."""
    store = _store(request)
    job = store.jobs.get(job_id)
    n = store.jobs.cancel(job.id)
    return {"job_id": job.id, "status": "cancelled", "tasks_cancelled": n}


@router.get("/jobs/{job_id}/results", tags=["jobs"], summary="A job's ranked results")
def job_results(request: Request, job_id: JobId):
    """The job's candidates ranked with the job's own weights (as ``ionscreen results JOB --format json``)."""
    from workflows.jobs.plan import load_plan
    from workflows.jobs.run import ranked

    store = _store(request)
    job = store.jobs.get(job_id)
    plan = load_plan(store, job.id, request.app.state.settings, required=False)
    rows, others = ranked(store, job.id, plan)
    document = {"job_id": job.id, "status": str(job.status), "ranked": [r.model_dump(mode="json") for r in rows],
                "not_ranked": others}
    if plan is not None and plan.agreement_model is not None:  # each row's `agreement` compares with this model
        document["agreement_model"] = plan.agreement_model.model_dump(mode="json")
    return document


@router.get("/health", tags=["server"], summary="Liveness and schema revision")
def health(request: Request):
    return {"status": "ok", "schema_revision": _store(request).current_revision()}


__all__ = ["router"]
