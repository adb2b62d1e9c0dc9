"""Fuzzing the web server in process on a sample database, on SQLite and on PostgreSQL: schemathesis generates
requests from the app's own OpenAPI schema (valid and invalid data, existing and made-up ids, a valid write token),
hypothesis generates page requests; over a thousand requests on SQLite and half as many on PostgreSQL (the same
handlers over another driver), and not one may be answered 5xx.

Seeded, so every run sends the same requests. ``benchmarks/web_fuzz.py`` runs the same with more examples.
"""

from __future__ import annotations

import pytest

from workflows.db import Store
from webfuzz import build_app, fuzz_app, fuzz_pages

SEED = 20240611
# per backend: API examples per operation and generation mode, page examples, and the least API requests and
# requests in all that the run must send
RUNS = {"sqlite": (30, 300, 600, 1000), "postgresql": (15, 150, 300, 500)}


@pytest.fixture(params=sorted(RUNS))
def fuzz_target(request, web_home, monkeypatch):
    """(backend, app, write token, existing ids) over the sample database on each backend."""
    from mlip.config import load_settings
    from workflows.web.sample import build_candidate_rows, seed_sample

    home, sample = web_home
    if request.param == "postgresql":
        monkeypatch.setenv("IONSCREEN_DB_URL", request.getfixturevalue("postgres_url"))
    settings = load_settings()
    with Store.open(settings.db_url) as store:
        if request.param == "postgresql":
            sample = seed_sample(store, home, build_candidate_rows(("Li6PS5Cl", "TiS2")))
        yield (request.param, *build_app(settings, store, sample, candidates=["Li6PS5Cl"]))


def test_fuzzing_the_api_and_the_pages_finds_no_server_error(fuzz_target):
    backend, app, token, known = fuzz_target
    api_examples, page_examples, least_api_requests, least_requests = RUNS[backend]
    report = fuzz_app(app, token=token, examples=api_examples, seed=SEED, known_ids=known)
    api_requests = report.requests
    fuzz_pages(app, examples=page_examples, seed=SEED, known_ids=known, report=report)
    print(report.summary())
    assert api_requests >= least_api_requests and report.requests >= least_requests, report.summary()
    assert len(report.by_operation) >= 18  # every API operation and every page route was reached
    assert {200, 404, 422} <= set(report.by_status)  # successes as well as refusals
    assert report.server_errors == [], "\n".join(map(str, report.server_errors[:10]))
