"""Fuzz the web server in process, longer than the test does: schemathesis over the REST API's OpenAPI schema (valid
and invalid data, existing and made-up ids, a valid write token) and hypothesis over the HTML pages, on a fresh
sample database. Prints the number of requests, the statuses, and every 5xx (exit status 1 if there is one).

Usage:

    python benchmarks/web_fuzz.py [--examples 100] [--page-examples 1500] [--seed 0] [--db-url URL]

``--db-url`` fuzzes against another database (e.g. an empty PostgreSQL schema); the default is SQLite in a
temporary ``IONSCREEN_HOME``. Needs the ``dev`` extra (schemathesis); the fuzzing itself is ``tests/webfuzz.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from webfuzz import build_app, fuzz_app, fuzz_pages  # noqa: E402


def sample_app(home: Path, db_url: str | None):
    """(app, write token, existing ids) over a sample database seeded under ``home``."""
    from mlip.config import load_settings
    from workflows.db import Store
    from workflows.web.sample import build_candidate_rows, seed_sample

    os.environ["IONSCREEN_HOME"] = str(home)
    if db_url:
        os.environ["IONSCREEN_DB_URL"] = db_url
    settings = load_settings()
    store = Store.open(settings.db_url)
    sample = seed_sample(store, home, build_candidate_rows(("Li6PS5Cl", "beta-Li3PS4", "TiS2")))
    return build_app(settings, store, sample)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=100, help="per API operation and generation mode")
    parser.add_argument("--page-examples", type=int, default=1500, help="page requests in all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--db-url", default=None, help="database to fuzz against (default: SQLite, temporary)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="ionscreen-fuzz-") as tmp:
        t0 = time.perf_counter()
        app, token, known = sample_app(Path(tmp) / "home", args.db_url)
        print(f"sample database ready in {time.perf_counter() - t0:.1f} s", flush=True)
        report = fuzz_app(app, token=token, examples=args.examples, seed=args.seed, known_ids=known)
        print(f"API:   {report.summary()}", flush=True)
        api = (report.requests, len(report.server_errors))
        fuzz_pages(app, examples=args.page_examples, seed=args.seed, known_ids=known, report=report)
        print(f"pages: {report.requests - api[0]} requests, {len(report.server_errors) - api[1]} server errors")
        print(f"total: {report.summary()}")
        for operation, n in sorted(report.by_operation.items()):
            print(f"  {n:6d}  {operation}")
        for error in report.server_errors:
            print(f"5xx: {error}")
    return 1 if report.server_errors else 0


if __name__ == "__main__":
    sys.exit(main())
