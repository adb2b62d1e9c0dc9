"""The OPTIMADE API of ``ionscreen serve``: ``/optimade/v1/`` (and the unversioned ``/optimade/``) with ``info``,
``info/structures``, ``links``, ``structures`` and ``structures/{id}``, plus ``/optimade/versions``. Read-only; every
endpoint follows the server's read-token setting like ``/api``.

Responses are built and checked with the ``optimade`` package's models; every refusal is an OPTIMADE error document
(JSON:API ``errors`` with the status, a title and a detail that names the parameter and the limit), never a 500 for
bad input. The package's own server app is not used: it serves MongoDB or Elasticsearch collections, and ionscreen's
data live in SQL (see ``filters.py``). The routes stay out of ``/openapi.json``: OPTIMADE publishes its own schema
(``meta.schema``), and 501 (an optional feature not implemented) is an answer OPTIMADE requires.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials
from optimade import __api_version__
from optimade.exceptions import (
    BadRequest,
    Forbidden,
    InternalServerError,
    NotFound,
    NotImplementedResponse,
    OptimadeHTTPException,
    VersionNotSupported,
)
from optimade.models import (
    BaseInfoAttributes,
    BaseInfoResource,
    EntryInfoProperty,
    EntryInfoResource,
    ErrorResponse,
    Implementation,
    InfoResponse,
    LinksResponse,
    OptimadeError,
    Provider,
    ResponseMeta,
    ResponseMetaQuery,
    StructureResourceAttributes,
    Warnings,
)

from workflows.db.summaries import MAX_PER_PAGE
from workflows.web.auth import require_read
from workflows.web.optimade.entries import (
    PROVIDER,
    SCHEMA_URL,
    distinct_formulas,
    document,
    find_page,
)
from workflows.web.optimade.filters import where_clause
from workflows.web.optimade.properties import (
    DEFAULT_ORDER,
    ID_SQL,
    PREFIX,
    PROPERTIES,
    S,
    count_source,
    entry_source,
)
from workflows.web.params import ID_LIMIT

log = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)

ROOT = "/optimade"
VERSIONED = f"{ROOT}/v1"
MEDIA_TYPE = "application/vnd.api+json"
DEFAULT_PAGE_LIMIT = 20
MAX_PAGE_LIMIT = MAX_PER_PAGE
MAX_RESPONSE_FIELDS = 100
MAX_SORT_KEYS = 5
ENTRY_ID = re.compile(r"^[0-9]{1,10}-[0-9a-f]{12}$")
IDENTIFIER = re.compile(r"^[a-z_][a-z_0-9]*$")
LISTING_PARAMS = {"filter", "page_limit", "page_offset", "page_number", "page_above", "page_below", "page_cursor",
                  "response_format", "response_fields", "sort", "include", "email_address", "api_hint"}
SINGLE_PARAMS = {"response_format", "response_fields", "include", "email_address", "api_hint"}
#: standard structures attributes (served or not): asked for in response_fields, those not served are null
STANDARD_ATTRIBUTES = set(StructureResourceAttributes.model_fields)


class Unauthorized(OptimadeHTTPException):
    status_code = 401
    title = "Unauthorized"


# ---------------------------------------------------------------------------------------------- response pieces
def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def _meta(request: Request, base: str, *, returned: int | None = None, available: int | None = None,
          more: bool = False, warnings: list[str] = ()) -> dict[str, Any]:
    path = request.url.path
    at = path.find(base)
    representation = path[at + len(base):] if at >= 0 else path
    if request.url.query:
        representation += f"?{request.url.query}"
    meta = ResponseMeta(
        query=ResponseMetaQuery(representation=representation or "/"),
        api_version=__api_version__,
        more_data_available=more,
        schema=SCHEMA_URL,
        time_stamp=_now(),
        data_returned=returned,
        data_available=available,
        provider=Provider(**PROVIDER),
        implementation=Implementation(name="ionscreen", version=request.app.version),
        warnings=[Warnings(detail=w) for w in dict.fromkeys(warnings)] or None,
    )
    return meta.model_dump(mode="json", exclude_none=True, by_alias=True)


def _json(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    # OPTIMADE asks for cross-origin reads; no credentials are honoured cross-origin with "*"
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE,
                        headers={"Access-Control-Allow-Origin": "*", **(headers or {})})


def _error(request: Request, base: str, err: OptimadeHTTPException) -> JSONResponse:
    body = ErrorResponse(
        meta=_meta(request, base),
        errors=[OptimadeError(status=str(err.status_code), title=err.title, detail=err.detail or err.title)],
    )
    return _json(body.model_dump(mode="json", exclude_none=True, by_alias=True), err.status_code, err.headers)


def _serve(request: Request, base: str, build: Callable[[], JSONResponse]) -> JSONResponse:
    """Authorise the read, build the answer; an OPTIMADE error document for every refusal or failure."""
    try:
        _authorize(request)
        return build()
    except OptimadeHTTPException as err:
        return _error(request, base, err)
    except Exception:  # noqa: BLE001 - the last resort: logged, answered without internals
        log.exception("OPTIMADE request %s failed", request.url.path)
        return _error(request, base, InternalServerError(detail="internal server error; the server's log has the "
                                                                "details"))


def _authorize(request: Request) -> None:
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else None
    credentials = HTTPAuthorizationCredentials(scheme="Bearer", credentials=token) if token else None
    try:
        require_read(request, credentials)
    except HTTPException as err:
        problem = Unauthorized if err.status_code == 401 else Forbidden
        raise problem(detail=str(err.detail), headers=getattr(err, "headers", None)) from None


def _store(request: Request):
    return request.app.state.store


# ---------------------------------------------------------------------------------------------- query parameters
def _single(params, name: str) -> str | None:
    values = params.getlist(name)
    if len(values) > 1:
        raise BadRequest(detail=f"{name}: given {len(values)} times; give it once")
    return values[0] if values else None


def _integer(params, name: str, *, lo: int, hi: int, default: int | None, over=BadRequest) -> int | None:
    text = _single(params, name)
    if text is None or text == "":
        return default
    if not re.fullmatch(r"[+-]?[0-9]{1,20}", text.strip()):
        raise BadRequest(detail=f"{name}: {text[:40]!r} is not an integer")
    value = int(text)
    if value < lo:
        raise BadRequest(detail=f"{name}: {value} is below the minimum of {lo}")
    if value > hi:
        raise over(detail=f"{name}: {value} is above the maximum of {hi}")
    return value


def _common_params(params, allowed: set[str]) -> list[str]:
    """Checks shared by every entry endpoint; the warnings for parameters this endpoint ignores."""
    warnings = [f"query parameter {name!r} is not used by this endpoint" for name in dict.fromkeys(params.keys())
                if name not in allowed and not name.startswith("_")]
    response_format = _single(params, "response_format")
    if response_format not in (None, "", "json"):
        raise BadRequest(detail=f"response_format: {response_format[:40]!r} is not served; use json")
    include = _single(params, "include")
    if include:
        unknown = [t for t in include.split(",") if t not in ("", "references")]
        if unknown:
            raise BadRequest(detail=f"include: {unknown[0][:40]!r} is not a relationship of structures "
                                    "(structures here have none)")
    return warnings


def _response_fields(params, warnings: list[str]) -> set[str] | None:
    text = _single(params, "response_fields")
    if text is None:
        return None
    fields = {f.strip() for f in text.split(",") if f.strip()}
    if len(fields) > MAX_RESPONSE_FIELDS:
        raise BadRequest(detail=f"response_fields: {len(fields)} fields; the limit is {MAX_RESPONSE_FIELDS}")
    for name in sorted(fields):
        if not IDENTIFIER.match(name):
            raise BadRequest(detail=f"response_fields: {name[:40]!r} is not a property name (lowercase identifier)")
        if name in PROPERTIES or name in STANDARD_ATTRIBUTES or name in ("id", "type"):
            continue
        if name.startswith(f"_{PREFIX}_"):
            warnings.append(f"response_fields: {name!r} is not an ionscreen property; it is returned as null")
        elif not name.startswith("_"):
            raise BadRequest(detail=f"response_fields: {name!r} is not a property of structures "
                                    "(/info/structures lists them)")
    return fields


def _order(params, warnings: list[str]) -> list[Any]:
    text = _single(params, "sort")
    if not text:
        return list(DEFAULT_ORDER)
    keys = [k.strip() for k in text.split(",") if k.strip()]
    if len(keys) > MAX_SORT_KEYS:
        raise BadRequest(detail=f"sort: {len(keys)} keys; the limit is {MAX_SORT_KEYS}")
    order = []
    for key in keys:
        name = key[1:] if key.startswith("-") else key
        prop = PROPERTIES.get(name)
        if prop is None and name.startswith("_") and not name.startswith(f"_{PREFIX}_"):
            warnings.append(f"sort: {name!r} belongs to another provider; not sorted by it")
            continue
        if prop is None or not prop.sortable:
            sortable = ", ".join(n for n, p in PROPERTIES.items() if p.sortable)
            raise BadRequest(detail=f"sort: {name[:60]!r} is not sortable; sortable properties: {sortable}")
        column = prop.sql.desc() if key.startswith("-") else prop.sql.asc()
        order.append(column.nulls_last())
    return [*order, S.id]


def _prune(doc: dict[str, Any], fields: set[str] | None) -> dict[str, Any]:
    if fields is None:
        return doc
    attributes = {name: doc["attributes"].get(name) for name in sorted(fields) if name not in ("id", "type")}
    return {**doc, "attributes": attributes}


# ---------------------------------------------------------------------------------------------- endpoints
def _info(request: Request, base: str) -> JSONResponse:
    versioned = str(request.base_url).rstrip("/") + VERSIONED
    attributes = BaseInfoAttributes(
        api_version=__api_version__,
        available_api_versions=[{"url": versioned, "version": __api_version__}],
        formats=["json"],
        available_endpoints=["info", "links", "structures"],
        entry_types_by_format={"json": ["structures"]},
        is_index=False,
    )
    body = InfoResponse(data=BaseInfoResource(attributes=attributes), meta=_meta(request, base, returned=1,
                                                                                  available=1))
    return _json(body.model_dump(mode="json", exclude_none=True, by_alias=True))


def entry_info() -> EntryInfoResource:
    properties = {
        name: EntryInfoProperty(description=p.description, unit=p.unit, sortable=p.sortable, type=p.type)
        for name, p in PROPERTIES.items()
    }
    return EntryInfoResource(
        id="structures", type="info", formats=["json"],
        description="A screened candidate under one potential: its stored (ordered) cell and composition, with "
                    "ionscreen's transport numbers, their 95 % intervals, quality flags and provenance in the "
                    f"_{PREFIX}_ fields.",
        properties=properties, output_fields_by_format={"json": list(properties)},
    )


def _entry_info(request: Request, base: str, entry: str) -> JSONResponse:
    if entry != "structures":
        raise NotFound(detail=f"info/{entry[:40]}: no such entry type; this server serves structures")
    body = {"data": entry_info().model_dump(mode="json", exclude_none=True),
            "meta": _meta(request, base, returned=1, available=1)}
    return _json(body)


def _links(request: Request, base: str) -> JSONResponse:
    # no index meta-database and no child databases: nothing to link to
    body = LinksResponse(data=[], meta=_meta(request, base, returned=0, available=0))
    return _json(body.model_dump(mode="json", exclude_none=True, by_alias=True))


def _structures(request: Request, base: str) -> JSONResponse:
    params = request.query_params
    warnings = _common_params(params, LISTING_PARAMS)
    for name in ("page_above", "page_below", "page_cursor"):
        if _single(params, name) is not None:
            raise NotImplementedResponse(detail=f"{name}: not supported; page with page_offset or page_number")
    limit = _integer(params, "page_limit", lo=1, hi=MAX_PAGE_LIMIT, default=DEFAULT_PAGE_LIMIT, over=Forbidden)
    offset = _integer(params, "page_offset", lo=0, hi=ID_LIMIT - 1, default=None)
    number = _integer(params, "page_number", lo=1, hi=(ID_LIMIT - 1) // limit, default=None)
    if offset is not None and number is not None:
        warnings.append("page_offset and page_number both given: page_offset was used")
    start = offset if offset is not None else ((number or 1) - 1) * limit
    fields = _response_fields(params, warnings)
    order = _order(params, warnings)
    store = _store(request)
    where, filter_warnings = where_clause(_single(params, "filter"),
                                          lambda: store._run(distinct_formulas, write=False))
    warnings += filter_warnings
    page = store._run(lambda session: find_page(session, where, order, limit, start), write=False)
    data = [_prune(document(row, str(request.base_url)), fields) for row in page.rows]
    more = start + len(data) < page.data_returned
    links: dict[str, Any] = {"next": None}
    if more:
        if offset is None and number is not None:
            links["next"] = str(request.url.include_query_params(page_number=number + 1))
        else:
            links["next"] = str(request.url.include_query_params(page_offset=start + len(data)))
    body = {"data": data, "links": links,
            "meta": _meta(request, base, returned=page.data_returned, available=page.data_available, more=more,
                          warnings=warnings)}
    return _json(body)


def _structure(request: Request, base: str, entry_id: str) -> JSONResponse:
    params = request.query_params
    warnings = _common_params(params, SINGLE_PARAMS)
    fields = _response_fields(params, warnings)
    if not ENTRY_ID.match(entry_id):
        raise NotFound(detail=f"structures/{entry_id[:40]}: no such entry (ids look like 12-0123456789ab)")
    candidate_id = int(entry_id.split("-")[0])
    if candidate_id >= ID_LIMIT:
        raise NotFound(detail=f"structures/{entry_id}: no such entry")
    where = (S.candidate_id == candidate_id) & (ID_SQL == entry_id)

    def work(session):
        row = session.execute(entry_source().where(where).order_by(S.id).limit(1)).mappings().first()
        return row, session.scalar(count_source())

    row, available = _store(request)._run(work, write=False)
    if row is None:
        raise NotFound(detail=f"structures/{entry_id}: no such entry")
    body = {"data": _prune(document(row, str(request.base_url)), fields), "links": {"next": None},
            "meta": _meta(request, base, returned=1, available=available, warnings=warnings)}
    return _json(body)


def _add_routes(base: str) -> None:
    @router.get(f"{base}/info")
    def info(request: Request):
        return _serve(request, base, lambda: _info(request, base))

    @router.get(f"{base}/info/{{entry}}")
    def info_entry(request: Request, entry: str):
        return _serve(request, base, lambda: _entry_info(request, base, entry))

    @router.get(f"{base}/links")
    def links(request: Request):
        return _serve(request, base, lambda: _links(request, base))

    @router.get(f"{base}/structures")
    def structures(request: Request):
        return _serve(request, base, lambda: _structures(request, base))

    @router.get(f"{base}/structures/{{entry_id}}")
    def structure(request: Request, entry_id: str):
        return _serve(request, base, lambda: _structure(request, base, entry_id))


_add_routes(VERSIONED)
_add_routes(ROOT)


@router.get(f"{ROOT}/versions")
def versions(request: Request):
    def build():
        return PlainTextResponse("version\n1\n", media_type="text/csv; header=present",
                                 headers={"Access-Control-Allow-Origin": "*"})

    return _serve(request, ROOT, build)


@router.get(f"{ROOT}/{{rest:path}}")
def elsewhere(request: Request, rest: str):
    """Anything else under /optimade: another API version (553) or no such endpoint (404)."""
    version = re.match(r"(v[0-9]+(?:\.[0-9]+){0,2})(?:/|$)", rest)

    def build():
        if version and version.group(1) != "v1":
            raise VersionNotSupported(detail=f"OPTIMADE {version.group(1)} is not served; this server serves v1 at "
                                             f"{VERSIONED}/")
        raise NotFound(detail=f"{ROOT}/{rest[:60]}: no such OPTIMADE endpoint (info, links, structures)")

    return _serve(request, ROOT, build)


__all__ = ["DEFAULT_PAGE_LIMIT", "MAX_PAGE_LIMIT", "entry_info", "router"]
