"""Fuzzing the web server in process on a sample database, on SQLite and on PostgreSQL: schemathesis generates
requests from the app's own OpenAPI schema (valid and invalid data, existing and made-up ids, a valid write token),
hypothesis generates page requests; over a thousand requests per backend, and not one may be answered 5xx.

Seeded, so every run sends the same requests. ``benchmarks/web_fuzz.py`` runs the same with more examples.
"""

from __future__ import annotations

import pytest

from workflows.db import Store

SEED = 20240611
API_EXAMPLES = 30  # per operation and generation mode
PAGE_EXAMPLES = 300


class NoLaunch:
    def launch(self, job_id: str) -> int:
        return 4242  # a fuzzed submission that passes every check is stored, never run


@pytest.fixture(params=["sqlite", "postgresql"])
def fuzz_target(request, web_home, monkeypatch):
    """(app, write token, existing ids) over the sample database on each backend."""
    from mlip.config import load_settings
    from workflows.web import create_app
    from workflows.web.sample import build_candidate_rows, seed_sample

    home, sample = web_home
    if request.param == "postgresql":
        monkeypatch.setenv("IONSCREEN_DB_URL", request.getfixturevalue("postgres_url"))
    settings = load_settings()
    with Store.open(settings.db_url) as store:
        if request.param == "postgresql":
            sample = seed_sample(store, home, build_candidate_rows(("Li6PS5Cl", "TiS2")))
        _, token = store.tokens.create("fuzzer")
        known = {"candidate_id": [sample.candidate_ids["Li6PS5Cl"]], "job_id": [sample.job_id],
                 "result_id": sorted(sample.result_ids.values())}
        yield create_app(settings, store=store, launcher=NoLaunch(), refresh_interval_s=0), token, known


def test_fuzzing_the_api_and_the_pages_finds_no_server_error(fuzz_target):
    from workflows.web.fuzz import fuzz_app, fuzz_pages

    app, token, known = fuzz_target
    report = fuzz_app(app, token=token, examples=API_EXAMPLES, seed=SEED, known_ids=known)
    api_requests = report.requests
    fuzz_pages(app, examples=PAGE_EXAMPLES, seed=SEED, known_ids=known, report=report)
    print(report.summary())
    assert api_requests >= 600 and report.requests >= 1000, report.summary()
    assert len(report.by_operation) >= 18  # every API operation and every page route was reached
    assert {200, 404, 422} <= set(report.by_status)  # successes as well as refusals
    assert report.server_errors == [], "\n".join(map(str, report.server_errors[:10]))
