"""Server-rendered pages for people with a browser: the ranked candidate table, a candidate's page (3D structure,
Arrhenius, MSD and NEB plots, numbers with intervals, provenance, downloads), jobs, and the plot images."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from mlip.config import mask_password
from mlip.errors import InputError
from workflows.db.summaries import SortKey, SortOrder
from workflows.web import plots
from workflows.web.auth import LEGACY_TOKEN_COOKIE, require_page_read
from workflows.web.documents import (
    UnsafePath,
    load_neb,
    load_transport,
    read_profile,
    result_file,
)
from workflows.web.params import CandidateId, HopIndex, JobId, ModelSha256, ResultId
from workflows.web.sessions import SESSION_COOKIE
from workflows.web.structures import safe_stem, viewer_cif
from workflows.web.views import QueryError, browse_query, mlflow_run_url, query_string

router = APIRouter(include_in_schema=False)
pages = APIRouter(include_in_schema=False, dependencies=[Depends(require_page_read)])


def _render(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    return request.app.state.templates.TemplateResponse(request, name, context, status_code=status_code)


# ---------------------------------------------------------------------------------------------- the table
_COLUMNS = (  # (label, sort key or None, css class)
    ("#", SortKey.score, "num"),
    ("candidate", SortKey.name, ""),
    ("formula", SortKey.formula, ""),
    ("ion", SortKey.working_ion, ""),
    ("framework", SortKey.kind, ""),
    ("σ(300 K) mS/cm [95% CI]", SortKey.conductivity, "num"),
    ("Ea eV [95% CI]", SortKey.activation_energy, "num"),
    ("barrier eV", SortKey.barrier, "num"),
    ("flags", SortKey.flags, ""),
    ("model", None, ""),
    ("score", SortKey.score, "num"),
)


@pages.get("/", response_class=HTMLResponse)
def table(request: Request):
    store = request.app.state.store
    error = None
    try:
        query = browse_query(request.query_params)
    except QueryError as err:
        error = err.errors
        query = browse_query({})
    try:
        result = store.summaries.browse(query) if error is None else None
    except InputError as err:  # e.g. an unknown job id
        error = [{"loc": ["query", "job"], "msg": str(err)}]
        result = None
    agreement_model, agreements = _job_agreements(request, query) if result is not None else (None, {})
    columns = list(_COLUMNS)
    if agreement_model is not None:  # a job screened with a second model: its disagreement, before the model column
        columns.insert(-2, ("Δ models log10σ/eV", None, "num"))
    headers = []
    for label, key, css in columns:
        if key is None:
            headers.append({"label": label, "href": None, "css": css, "active": None})
            continue
        active = query.sort is key and label != "#"
        flip = SortOrder.asc if query.effective_order is SortOrder.desc else SortOrder.desc
        href = "?" + query_string(query, sort=key, order=flip if active else None, page=1)
        arrow = ("▼" if query.effective_order is SortOrder.desc else "▲") if active else ""
        headers.append({"label": label, "href": href, "css": css, "active": arrow})
    context = {
        "query": query,
        "result": result,
        "errors": error,
        "headers": headers,
        "facets": store.summaries.facets(),
        "jobs": store.jobs.list(limit=50),
        "csv_href": "/api/candidates.csv" + ("?" + query_string(query, page=1) if query_string(query, page=1) else ""),
        "page_href": lambda page: "?" + query_string(query, page=page),
        "sort_keys": list(SortKey),
        "agreement_model": agreement_model,
        "agreements": agreements,
    }
    return _render(request, "table.html", context, status_code=422 if error else 200)


def _job_agreements(request: Request, query) -> tuple[Any, dict[int, Any]]:
    """(the job's agreement model, ModelAgreement by candidate id) when the table shows one job screened with a
    second model; (None, {}) otherwise."""
    from workflows.jobs.plan import load_plan
    from workflows.jobs.run import job_agreements

    if query.job is None:
        return None, {}
    store = request.app.state.store
    job = store.jobs.get(query.job)
    plan = load_plan(store, job.id, request.app.state.settings, required=False)
    if plan is None or plan.agreement_model is None:
        return None, {}
    return plan.agreement_model, job_agreements(store, job.id, plan)


# ---------------------------------------------------------------------------------------------- a candidate
@pages.get("/candidates/{candidate_id}", response_class=HTMLResponse)
def candidate_page(request: Request, candidate_id: CandidateId, model: str | None = None):
    state = request.app.state
    store, home = state.store, state.settings.home
    record = store.candidates.get(candidate_id)
    summaries = store.summaries.for_candidate(candidate_id)
    results = store.results.for_candidate(candidate_id)
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        by_model[r["model_sha256"]].append(r)

    summary = next((s for s in summaries if s.model_sha256 == model), None) if model else None
    if summary is None and summaries:
        summary = summaries[0]
    selected_model = summary.model_sha256 if summary else (model if model in by_model else next(iter(by_model), None))
    by_id = {r["id"]: r for r in results}
    transport = neb = None
    if summary is not None:
        transport = by_id.get(summary.transport_result_id)
        neb = by_id.get(summary.neb_result_id)
    elif selected_model is not None:
        transport = next((r for r in by_model[selected_model] if r["stage"] == "transport"), None)
        neb = next((r for r in by_model[selected_model] if r["stage"] == "neb"), None)
    transport_view = load_transport(home, transport["document_path"]) if transport else None
    neb_view = load_neb(home, neb["document_path"]) if neb else None

    stem = safe_stem(record.name)
    provenance = []
    for row in (transport, neb):
        if row is None:
            continue
        provenance.append({
            "row": row,
            "protocol_json": json.dumps(row["protocol_json"], indent=1, sort_keys=True) if row["protocol_json"] else "",
            "mlflow_url": mlflow_run_url(state.settings, row["mlflow_run_id"]),
        })
    context = {
        "c": record,
        "meta": record.metadata_json,
        "summaries": summaries,
        "summary": summary,
        "selected_model": selected_model,
        "results": results,
        "transport": transport,
        "neb": neb,
        "tv": transport_view,
        "nv": neb_view,
        "provenance": provenance,
        "viewer_cif": viewer_cif(record.cif) if record.cif else None,
        "cif_href": f"/api/candidates/{record.id}/download/{quote(stem)}.cif",
        "poscar_href": f"/api/candidates/{record.id}/download/POSCAR",
        "mlflow_tracking_uri": mask_password(state.settings.mlflow_tracking_uri),
    }
    return _render(request, "candidate.html", context)


# ---------------------------------------------------------------------------------------------- jobs
@pages.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request):
    store = request.app.state.store
    jobs = [(j, store.tasks.counts(j.id)) for j in store.jobs.list(limit=200)]
    return _render(request, "jobs.html", {"jobs": jobs})


@pages.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: JobId):
    store = request.app.state.store
    job = store.jobs.get(job_id)
    tasks = store.tasks.list(job.id)
    names = {c.id: c.name for c in store.candidates.for_job(job.id)}
    return _render(request, "job.html", {"job": job, "counts": store.tasks.counts(job.id), "tasks": tasks[:500],
                                         "n_tasks": len(tasks), "names": names,
                                         "table_href": "/?" + urlencode({"job": job.id})})


# ---------------------------------------------------------------------------------------------- models
def _model_validation(request: Request, sha256: str) -> dict | None:
    from workflows.validate import read_model_summary

    return read_model_summary(request.app.state.settings.home / "validation", sha256)


@pages.get("/models/{sha256}", response_class=HTMLResponse)
def model_page(request: Request, sha256: ModelSha256):
    """A model's track record: the figures of every validation set run on this server (``ionscreen validate``
    writes them under ``$IONSCREEN_HOME/validation``), with their plots; linked from every result it computed."""
    validation = _model_validation(request, sha256)
    refs = request.app.state.store.results.model_refs(sha256)
    if validation is None and not refs:
        raise HTTPException(404, f"no results and no validation on record for model {sha256[:16]}…")
    from workflows.validate import format_figure

    sets = []
    for name, entry in sorted((validation or {}).get("sets", {}).items()):
        figures = [(k, format_figure(v)) for k, v in entry.get("figures", {}).items()
                   if not isinstance(v, (dict, list))]
        plots_ = [p for p in entry.get("plots", []) if isinstance(p, str) and p.endswith(".png")]
        sets.append({"name": name, "figures": figures, "plots": plots_, "entry": entry})
    return _render(request, "model.html", {"sha256": sha256, "validation": validation, "sets": sets, "refs": refs})


@pages.get("/models/{sha256}/files/{relative:path}")
def model_plot(request: Request, sha256: ModelSha256, relative: str):
    """A validation plot of the model: only files its validation summary lists."""
    validation = _model_validation(request, sha256)
    listed = {p for entry in (validation or {}).get("sets", {}).values() for p in entry.get("plots", [])}
    if relative not in listed:
        raise HTTPException(404, f"no validation plot {relative!r} for model {sha256[:16]}…")
    path = request.app.state.settings.home / "validation" / "models" / sha256[:16] / relative
    if not path.is_file():
        raise HTTPException(404, f"validation plot {relative!r} is listed but missing")
    return FileResponse(path, media_type="image/png")


# ---------------------------------------------------------------------------------------------- plots and files
def _result(request: Request, result_id: int) -> dict[str, Any]:
    return request.app.state.store.results.get(result_id)


@pages.get("/results/{result_id}/arrhenius.png")
def arrhenius_plot(request: Request, result_id: ResultId):
    """The stored Arrhenius plot, else one drawn from the result document's numbers."""
    home = request.app.state.settings.home
    row = _result(request, result_id)
    view = load_transport(home, row["document_path"]) if row["stage"] == "transport" else None
    if view is None:
        raise HTTPException(404, "no transport result document for this result")
    if view.arrhenius_plot:
        return FileResponse(view.directory / view.arrhenius_plot, media_type="image/png")
    key = ("arrhenius", result_id, row["document_path"])
    return Response(plots.cached_png(key, lambda: plots.arrhenius_png(view.document)), media_type="image/png")


@pages.get("/results/{result_id}/neb/{hop_index}.png")
def neb_plot(request: Request, result_id: ResultId, hop_index: HopIndex):
    """A hop's stored energy-profile plot, else one drawn from its profile JSON."""
    home = request.app.state.settings.home
    row = _result(request, result_id)
    view = load_neb(home, row["document_path"]) if row["stage"] == "neb" else None
    if view is None or not 0 <= hop_index < len(view.document.hops):
        raise HTTPException(404, "no such NEB hop")
    if hop_index in view.hop_plots:
        return FileResponse(view.directory / view.hop_plots[hop_index], media_type="image/png")
    profile = read_profile(view, hop_index)
    if profile is None:
        raise HTTPException(404, "this hop has no energy profile")
    hop = view.document.hops[hop_index]
    key = ("neb", result_id, hop_index, row["document_path"])
    return Response(plots.cached_png(key, lambda: plots.profile_png(profile, title=hop.name)), media_type="image/png")


@pages.get("/results/{result_id}/files/{relative:path}")
def result_files(request: Request, result_id: ResultId, relative: str):
    """A plot or JSON file under the result document's directory (MSD plots, profiles, the document itself)."""
    row = _result(request, result_id)
    try:
        path, media = result_file(request.app.state.settings.home, row["document_path"], relative)
    except UnsafePath as err:
        raise HTTPException(400, f"refused: {err}") from None
    except FileNotFoundError:
        raise HTTPException(404, f"no file {relative!r} for result {result_id}") from None
    return FileResponse(path, media_type=media)


# ---------------------------------------------------------------------------------------------- login (closed reads)
@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = "/"):
    return _render(request, "login.html", {"next": _local(next), "error": None})


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request):
    """Open a browser session for a valid token: the cookie gets a random session id, not the token."""
    from urllib.parse import parse_qs

    _refuse_cross_site(request)
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    token = (form.get("token") or [""])[0].strip()
    target = _local((form.get("next") or ["/"])[0])
    record = request.app.state.store.tokens.verify(token) if token else None
    if record is None:
        return _render(request, "login.html", {"next": target, "error": "That token is not valid."}, status_code=403)
    sessions = request.app.state.sessions
    sessions.close(request.cookies.get(SESSION_COOKIE))  # a new id at each sign-in (no session fixation)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(SESSION_COOKIE, sessions.open(record.token_id), httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", max_age=int(sessions.lifetime_s), path="/")
    response.delete_cookie(LEGACY_TOKEN_COOKIE)
    return response


@router.post("/logout")
def logout(request: Request):
    """End the browser's session on the server and delete its cookie."""
    _refuse_cross_site(request)
    request.app.state.sessions.close(request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse("/login", status_code=303)
    secure = request.url.scheme == "https"
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=secure)
    response.delete_cookie(LEGACY_TOKEN_COOKIE)
    return response


def _refuse_cross_site(request: Request) -> None:
    """Sign-in and sign-out only from this site's own pages: browsers label every request with ``Sec-Fetch-Site``;
    a form posted from another site (login CSRF: signing a victim in as the attacker) is refused. Browsers without
    ``Sec-Fetch-Site`` send ``Origin`` with a form post, which must then be this server's; a request with neither
    (a script, curl) is no browser's and is let through."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:
        cross_site = fetch_site not in ("same-origin", "none")
    else:
        origin = request.headers.get("origin")
        cross_site = origin is not None and not _same_origin(origin, str(request.url))
    if cross_site:
        raise HTTPException(403, "sign-in and sign-out are accepted only from this server's own pages")


def _same_origin(a: str, b: str) -> bool:
    """Whether two URLs have one origin: scheme, host and port (filled in for http and https). An unreadable URL
    and the opaque origin ``null`` have none."""

    def origin(url: str) -> tuple[str, str | None, int | None]:
        parts = urlsplit(url)
        return parts.scheme, parts.hostname, parts.port or {"http": 80, "https": 443}.get(parts.scheme)

    try:
        first, second = origin(a), origin(b)
    except ValueError:  # a port out of range or not a number
        return False
    return first[1] is not None and first == second


def _local(target: str) -> str:
    """Only same-site paths as redirect targets (no open redirect, nothing that breaks the Location header)."""
    safe = (target.startswith("/") and not target.startswith("//") and "\\" not in target
            and target.isprintable() and len(target) <= 2000)
    return target if safe else "/"


__all__ = ["pages", "router"]
