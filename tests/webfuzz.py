"""Property-based fuzzing of the web server in process, counting every request and every 5xx: the REST API from
its own OpenAPI schema (schemathesis), and the HTML pages, which the schema leaves out, from hypothesis strategies.
Used by ``tests/test_web_fuzz.py`` (short run) and ``benchmarks/web_fuzz.py`` (long run), which build the app the
same way (``build_app``); ``NoLaunch`` is the job launcher of the web tests that launch nothing.

Needs the ``dev`` extra (schemathesis, which brings hypothesis). Each API operation is fuzzed three ways: data that
fits the schema, data that does not (negative mode), and schema data with the path parameters pinned to ids that
exist in the database, so the handlers behind a successful lookup (documents, downloads, cancel, ranked results)
run too. Requests carry a valid write token, so authenticated routes are exercised past the token check. Page
requests mix existing ids with huge, negative and non-numeric ones, and arbitrary text in every other parameter.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote


class NoLaunch:
    """A job launcher that starts nothing. By default a launch fails the test (the app answers 500);
    ``NoLaunch(allow=True)`` gives a made-up pid instead, so a fuzzed submission that passes every check is stored
    and never run."""

    def __init__(self, *, allow: bool = False):
        self.allow = allow

    def launch(self, job_id: str) -> int:
        if not self.allow:
            raise AssertionError(f"job {job_id} was launched: no job may be launched here")
        return 4242


def build_app(settings, store, sample, *, candidates: Iterable[str] | None = None):
    """(app, write token, existing ids) for fuzzing ``sample`` (a seeded ``SampleDatabase`` in ``store``); the ids
    of ``candidates`` (names; default all) are pinned. Submissions are stored, never launched."""
    from workflows.web import create_app

    _, token = store.tokens.create("fuzzer")
    names = sorted(sample.candidate_ids) if candidates is None else candidates
    known = {"candidate_id": sorted(sample.candidate_ids[name] for name in names), "job_id": [sample.job_id],
             "result_id": sorted(sample.result_ids.values())}
    return create_app(settings, store=store, launcher=NoLaunch(allow=True), refresh_interval_s=0), token, known


@dataclass(frozen=True)
class ServerError:
    """One request the server answered with a 5xx (or raised on)."""

    operation: str
    mode: str
    method: str
    url: str
    status: int
    body: str


@dataclass
class FuzzReport:
    """What a fuzzing run sent and got: request count, statuses per code, requests per operation, the 5xx."""

    requests: int = 0
    seconds: float = 0.0
    by_status: Counter[int] = field(default_factory=Counter)
    by_operation: Counter[str] = field(default_factory=Counter)
    server_errors: list[ServerError] = field(default_factory=list)

    def summary(self) -> str:
        statuses = ", ".join(f"{status}: {n}" for status, n in sorted(self.by_status.items()))
        return (f"{self.requests} requests over {len(self.by_operation)} operations in {self.seconds:.1f} s; "
                f"{len(self.server_errors)} server errors (5xx); statuses {statuses}")


def _pinned(operation, known_ids: Mapping[str, list[Any]]) -> list[dict[str, Any]]:
    """Path-parameter sets made of existing ids, one per known id of the operation's first id parameter."""
    names = [p.name for p in operation.path_parameters]
    for name in names:
        if name in known_ids:
            return [{name: value} for value in known_ids[name]]
    return []


def _run_strategy(strategy, *, examples: int, seed: int, send: Callable[[Any], None]) -> None:
    """Draw ``examples`` values from ``strategy`` (seeded, no shrinking, no example database) into ``send``."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as fixed_seed

    @fixed_seed(seed)
    @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(drawn=strategy)
    def run(drawn) -> None:
        send(drawn)

    run()


def fuzz_app(app, *, token: str, examples: int = 30, seed: int = 0,
             known_ids: Mapping[str, list[Any]] | None = None,
             operations: Iterable[str] | None = None) -> FuzzReport:
    """Fuzz every operation of ``app``'s OpenAPI schema; ``examples`` per operation and generation mode.

    ``known_ids`` maps path-parameter names to existing values (e.g. ``{"candidate_id": [3]}``) for the pinned pass;
    ``operations`` limits the run to these labels (``"GET /api/jobs"``). Nothing is raised for a 5xx: the report
    lists them."""
    import schemathesis

    schema = schemathesis.openapi.from_asgi("/openapi.json", app)  # starts the app's lifespan, kept until the end
    wanted = set(operations) if operations is not None else None
    headers = {"Authorization": f"Bearer {token}"}
    report = FuzzReport()
    started = time.perf_counter()
    try:
        _fuzz_operations(schema, headers, wanted, examples, seed, known_ids or {}, report)
    finally:
        from schemathesis.python.asgi import shutdown_lifespans

        shutdown_lifespans()
    report.seconds = time.perf_counter() - started
    return report


def _fuzz_operations(schema, headers: dict[str, str], wanted: set[str] | None, examples: int, seed: int,
                     known_ids: Mapping[str, list[Any]], report: FuzzReport) -> None:
    from schemathesis.generation import GenerationMode

    for result in schema.get_all_operations():
        operation = result.ok()
        if wanted is not None and operation.label not in wanted:
            continue
        passes = [(mode.value, operation.as_strategy(generation_mode=mode))
                  for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
        passes += [("pinned", operation.as_strategy(path_parameters=params))
                   for params in _pinned(operation, known_ids)]
        for mode, strategy in passes:
            send = functools.partial(_call, report=report, label=operation.label, mode=mode, headers=headers)
            _run_strategy(strategy, examples=examples, seed=seed, send=send)


def _call(case, *, report: FuzzReport, label: str, mode: str, headers: dict[str, str]) -> None:
    """Send one generated case and record its status; a 5xx (schemathesis' ``not_a_server_error`` check) or an
    exception escaping the application is recorded as a server error."""
    from schemathesis.checks import not_a_server_error
    from schemathesis.core.failures import FailureGroup

    report.requests += 1
    report.by_operation[label] += 1
    try:
        response = case.call(headers=headers)
    except Exception as err:  # noqa: BLE001 - whatever escapes the app is what the fuzzing is looking for
        report.by_status[500] += 1
        report.server_errors.append(ServerError(label, mode, case.method, case.formatted_path, 500,
                                                f"{type(err).__name__}: {err}"[:500]))
        return
    report.by_status[response.status_code] += 1
    try:
        case.validate_response(response, checks=[not_a_server_error])
    except FailureGroup:
        report.server_errors.append(ServerError(label, mode, case.method, response.request.url,
                                                response.status_code, response.text[:500]))


def _page_requests(known_ids: Mapping[str, list[Any]]):
    """A hypothesis strategy of (label, method, url, form body or None) over every page route."""
    from hypothesis import strategies as st

    from workflows.web.views import TABLE_PARAMS

    def ids(name: str):
        made_up = st.one_of(st.integers(-(2**70), 2**70), st.text(max_size=12))
        existing = known_ids.get(name) or []
        return st.one_of(st.sampled_from(existing), made_up) if existing else made_up

    text = st.text(max_size=40)
    segment = text.map(lambda value: quote(str(value), safe="") or "x")
    table_query = st.dictionaries(st.sampled_from(sorted(TABLE_PARAMS)), text, max_size=4)
    pages = {
        "GET /": st.builds(lambda q: ("GET", "/", q, None), table_query),
        "GET /candidates/{candidate_id}": st.builds(
            lambda i, m: ("GET", f"/candidates/{quote(str(i), safe='')}", {"model": m}, None), ids("candidate_id"), text),
        "GET /jobs": st.just(("GET", "/jobs", {}, None)),
        "GET /jobs/{job_id}": st.builds(lambda i: ("GET", f"/jobs/{quote(str(i), safe='')}", {}, None), ids("job_id")),
        "GET /results/{result_id}/arrhenius.png": st.builds(
            lambda i: ("GET", f"/results/{quote(str(i), safe='')}/arrhenius.png", {}, None), ids("result_id")),
        "GET /results/{result_id}/neb/{hop_index}.png": st.builds(
            lambda i, h: ("GET", f"/results/{quote(str(i), safe='')}/neb/{quote(str(h), safe='')}.png", {}, None),
            ids("result_id"), st.one_of(st.integers(-(2**70), 2**70), st.integers(0, 3), text)),
        "GET /results/{result_id}/files/{relative}": st.builds(
            lambda i, f: ("GET", f"/results/{quote(str(i), safe='')}/files/{f}", {}, None), ids("result_id"),
            st.one_of(segment, st.sampled_from(["result.json", "T700K/msd.png", "../../ionscreen.db"]))),
        "GET /login": st.builds(lambda n: ("GET", "/login", {"next": n}, None), text),
        "POST /login": st.builds(lambda t, n: ("POST", "/login", {}, {"token": t, "next": n}), text, text),
        "POST /logout": st.just(("POST", "/logout", {}, None)),
    }
    return st.one_of([st.tuples(st.just(label), request) for label, request in pages.items()])


def fuzz_pages(app, *, examples: int = 200, seed: int = 0, known_ids: Mapping[str, list[Any]] | None = None,
               report: FuzzReport | None = None) -> FuzzReport:
    """Fuzz the HTML page routes (``examples`` requests in all); adds to ``report`` when given."""
    from fastapi.testclient import TestClient

    report = report if report is not None else FuzzReport()
    started = time.perf_counter()
    client = TestClient(app, raise_server_exceptions=False, follow_redirects=False)

    def send(drawn) -> None:
        label, (method, url, params, form) = drawn
        report.requests += 1
        report.by_operation[f"{label} (page)"] += 1
        response = client.request(method, url, params=params, data=form, headers={"accept": "text/html"})
        report.by_status[response.status_code] += 1
        if response.status_code >= 500:
            report.server_errors.append(ServerError(label, "page", method, str(response.request.url),
                                                    response.status_code, response.text[:500]))

    _run_strategy(_page_requests(known_ids or {}), examples=examples, seed=seed, send=send)
    report.seconds += time.perf_counter() - started
    return report


__all__ = ["FuzzReport", "NoLaunch", "ServerError", "build_app", "fuzz_app", "fuzz_pages"]
