"""The FastAPI application of ``ionscreen serve``: state (settings, store, job launcher, browser sessions), error
mapping, the outer ASGI layers (security headers, server paths kept out of responses, the body size limit), offline
API docs, and the background thread that keeps the candidate table in step with new results."""

from __future__ import annotations

import functools
import logging
import threading
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from mlip.config import Settings, load_settings
from mlip.errors import InputError, IonscreenError
from workflows.db import NotFoundError, Store
from workflows.web.auth import LoginRequired
from workflows.web.headers import SecurityHeaders
from workflows.web.launcher import JobLauncher, SubprocessLauncher
from workflows.web.limits import DEFAULT_MAX_BODY_BYTES, BodySizeLimit, BodyTooLarge
from workflows.web.redact import PathRedactor, RedactPaths
from workflows.web.sessions import SESSION_COOKIE, SessionStore

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent
DEFAULT_REFRESH_INTERVAL_S = 5.0


class SummaryRefresher:
    """Refreshes the candidate table every ``interval_s`` in a daemon thread (a no-op when no result is new)."""

    def __init__(self, store: Store, interval_s: float):
        self.store, self.interval_s = store, interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> None:
        try:
            self.store.summaries.refresh()
        except Exception:  # noqa: BLE001 - keep serving the last table; the next round tries again
            log.exception("refreshing the candidate table failed")

    def start(self) -> None:
        if self.interval_s <= 0:
            return
        self._thread = threading.Thread(target=self._loop, name="ionscreen-table-refresh", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.refresh()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


class IonscreenApp(FastAPI):
    """FastAPI inside three plain ASGI layers, outermost first: security headers, path redaction, body-size limit.
    The first two see every response (FastAPI's own 500 and the limit's 413 too); the limit sits outside FastAPI's
    error middleware, so that never sees an oversized body."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    redactor: PathRedactor | None = None

    async def __call__(self, scope, receive, send):
        app = BodySizeLimit(functools.partial(FastAPI.__call__, self), self.max_body_bytes)
        if self.redactor is not None:
            app = RedactPaths(app, self.redactor)
        await SecurityHeaders(app)(scope, receive, send)


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith(("/api/", "/openapi")) or "text/html" not in request.headers.get("accept", "")


def _templates() -> Jinja2Templates:
    from workflows.web import views

    templates = Jinja2Templates(directory=str(WEB_DIR / "templates"))
    env = templates.env
    env.filters.update(num=views.num, interval=views.interval, formula=views.formula_html, model=views.short_model)
    env.globals.update(FLAG_HELP=views.FLAG_HELP, SEVERE_FLAGS=views.SEVERE_FLAGS, SESSION_COOKIE=SESSION_COOKIE)
    return templates


def create_app(
    settings: Settings | None = None,
    *,
    store: Store | None = None,
    launcher: JobLauncher | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    refresh_interval_s: float = DEFAULT_REFRESH_INTERVAL_S,
    reads_require_token: bool | None = None,
) -> FastAPI:
    """The application. ``settings`` default to ``load_settings()``; ``store`` to ``Store.open(settings.db_url)``
    (closed with the app); ``launcher`` to a :class:`SubprocessLauncher`; ``reads_require_token`` to the
    ``api_reads_require_token`` setting."""
    settings = settings or load_settings()
    owns_store = store is None
    store = store or Store.open(settings.db_url)
    refresher = SummaryRefresher(store, refresh_interval_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        refresher.refresh()  # the table is current when the first request arrives
        refresher.start()
        try:
            yield
        finally:
            refresher.stop()
            if owns_store:
                store.close()

    from mlip.version import code_version

    app = IonscreenApp(
        title="ionscreen",
        version=code_version(),
        description=(
            "Ranked battery-material candidates screened with MACE potentials, and screening jobs.\n\n"
            "Reads are open unless the server sets `api_reads_require_token`. Every write needs an API token "
            "(`ionscreen tokens create NAME`) sent as `Authorization: Bearer <token>`."
        ),
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.max_body_bytes = int(max_body_bytes)
    app.redactor = PathRedactor.for_server(settings.home, [settings.db_url, store.db_url],
                                           [settings.mlflow_tracking_uri])
    app.state.settings = settings
    app.state.store = store
    app.state.launcher = launcher or SubprocessLauncher(settings)
    app.state.reads_require_token = (settings.api_reads_require_token if reads_require_token is None
                                     else bool(reads_require_token))
    app.state.templates = _templates()
    app.state.refresher = refresher
    app.state.sessions = SessionStore()

    from workflows.web import api, optimade, pages

    app.include_router(api.router)
    app.include_router(pages.router)
    app.include_router(pages.pages)
    app.include_router(optimade.router)
    app.mount("/static", StaticFiles(directory=str(WEB_DIR / "static")), name="static")

    @app.get("/docs", include_in_schema=False, response_class=HTMLResponse)
    def docs(request: Request) -> HTMLResponse:
        # Swagger UI from the vendored copy in static/ (FastAPI's default page loads it from a CDN and starts it
        # with an inline script, which the Content-Security-Policy forbids; static/docs.js starts it instead)
        return app.state.templates.TemplateResponse(request, "docs.html", {"openapi_url": app.openapi_url})

    def problem(request: Request, status: int, detail, headers=None):
        if _wants_json(request):
            return JSONResponse({"detail": detail}, status_code=status, headers=headers)
        return app.state.templates.TemplateResponse(
            request, "error.html", {"status": status, "detail": detail}, status_code=status, headers=headers)

    @app.exception_handler(NotFoundError)
    async def not_found(request: Request, err: NotFoundError):
        return problem(request, 404, str(err))

    @app.exception_handler(InputError)
    async def bad_input(request: Request, err: InputError):
        return problem(request, 422, str(err))

    @app.exception_handler(IonscreenError)
    async def ionscreen_error(request: Request, err: IonscreenError):
        return problem(request, 500, f"{type(err).__name__}: {err}")

    @app.exception_handler(BodyTooLarge)
    async def too_large(request: Request, err: BodyTooLarge):
        return JSONResponse({"detail": str(err)}, status_code=413, headers={"Connection": "close"})

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, err: LoginRequired):
        return app.state.templates.TemplateResponse(
            request, "login.html", {"next": request.url.path, "error": err.detail}, status_code=err.status_code)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        return problem(request, err.status_code, err.detail, getattr(err, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError):
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in err.errors()]
        return problem(request, 422, errors)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception):
        # the last resort (Starlette still logs the traceback): no exception text, which may name server internals
        return problem(request, 500, "internal server error; the server's log has the details")

    return app


__all__ = ["IonscreenApp", "SummaryRefresher", "create_app"]
