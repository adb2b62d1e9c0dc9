"""Load on the web server: the ranked table page and the REST API with 10,000 candidates, on loopback.

Seeds a fresh database (bulk INSERTs: synthetic candidates on library CIFs, transport results for all, NEB for a
third, ~30 % flagged, all linked to one job), builds the candidate table, starts ``uvicorn`` (one process, as
``ionscreen serve`` runs it) in a subprocess, and sends a bounded number of requests from concurrent keep-alive
clients — a mix of table pages (sorts, filters, deep pages, a job's view), API pages, candidate details and job
status. Prints p50/p90/p99 latency per kind of request, requests/s, and the load average of the machine.
Usage:

    python benchmarks/web_load.py [--candidates 10000] [--requests 1200] [--concurrency 8] [--max-seconds 120]
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed(home: Path, n: int) -> tuple[str, float]:
    from workflows.db import Store
    from workflows.web.sample import (
        SAMPLE_MODEL_SHA256,
        build_candidate_rows,
        bulk_seed,
    )

    t0 = time.perf_counter()
    templates = build_candidate_rows(("Li6PS5Cl", "Na3PS4-cubic", "Li3YCl6", "TiS2"))
    with Store.open(f"sqlite:///{home / 'ionscreen.db'}") as store:
        job_id = store.jobs.create({"name": "bench-10k-synthetic", "model": "mace-mp:small"},
                                  model_sha256=SAMPLE_MODEL_SHA256)
        counts = bulk_seed(store.db_url, n, templates=templates, job_id=job_id)
        t1 = time.perf_counter()
        store.summaries.refresh()
        t2 = time.perf_counter()
        print(f"seeded {counts['candidates']} candidates, {counts['results']} results in {t1 - t0:.1f} s "
              f"(incl. building 4 library templates); candidate table built in {t2 - t1:.1f} s", flush=True)
    return job_id, t2 - t1


def request_mix(job_id: str, n: int, n_candidates: int, rng: random.Random) -> list[tuple[str, str]]:
    table = ["/", "/?sort=conductivity", "/?ion=Li&clean=1", "/?page=2",
             "/?has=S&lacks=Ge&min_sigma=0.1&sort=activation_energy", "/?q=Li6&max_ea=0.3", f"/?job={job_id}",
             "/?sort=barrier&order=desc&kind=cathode_host"]
    mix: list[tuple[str, str]] = []
    for i in range(n):
        r = i % 10
        if r < 6:
            url = table[i % len(table)]
            mix.append(("table page", f"/?page={rng.randint(2, 199)}" if url.startswith("/?page=") else url))
        elif r < 8:
            mix.append(("api candidates", rng.choice(["/api/candidates", "/api/candidates?ion=Na&sort=conductivity",
                                                      f"/api/candidates?page={rng.randint(2, 199)}&per_page=50",
                                                      "/api/candidates?has=Cl&clean=true"])))
        elif r < 9:
            mix.append(("api candidate", f"/api/candidates/{rng.randint(1, n_candidates)}"))
        else:
            mix.append(("api job status", f"/api/jobs/{job_id}"))
    rng.shuffle(mix)
    return mix



def run_load(base_port: int, mix, concurrency: int, max_seconds: float):
    results: list[tuple[str, float, int]] = []
    lock = threading.Lock()
    counter = itertools.count()
    deadline = time.monotonic() + max_seconds

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", base_port, timeout=60)
        local = []
        while time.monotonic() < deadline:
            i = next(counter)
            if i >= len(mix):
                break
            kind, url = mix[i]
            t0 = time.perf_counter()
            try:
                conn.request("GET", url, headers={"Accept": "text/html" if kind == "table page" else "application/json"})
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", base_port, timeout=60)
                status = 0
            local.append((kind, time.perf_counter() - t0, status))
        conn.close()
        with lock:
            results.extend(local)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(concurrency):
            pool.submit(worker)
    return results, time.perf_counter() - t0


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=10000)
    parser.add_argument("--requests", type=int, default=1200, help="total requests (bounded)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent keep-alive clients")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="stop sending after this long")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ionscreen-webload-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        job_id, _ = seed(home, args.candidates)
        port = free_port()
        env = {**os.environ, "IONSCREEN_HOME": str(home), "OMP_NUM_THREADS": "1"}
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "workflows.web.app:create_app", "--factory", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "warning", "--no-access-log"],
            env=env, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                    conn.request("GET", "/api/health")
                    if conn.getresponse().status == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start")
                time.sleep(0.2)
            rng = random.Random(args.seed)
            warm = request_mix(job_id, 40, args.candidates, rng)
            run_load(port, warm, 2, 30)  # warm-up: imports, template compilation, SQLite page cache
            mix = request_mix(job_id, args.requests, args.candidates, rng)
            load_before = os.getloadavg()
            results, wall = run_load(port, mix, args.concurrency, args.max_seconds)
            load_after = os.getloadavg()
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)

    errors = [r for r in results if r[2] != 200]
    print(f"\n{len(results)} requests in {wall:.1f} s from {args.concurrency} concurrent clients: "
          f"{len(results) / wall:.1f} requests/s, {len(errors)} not 200")
    print(f"{'request':<16} {'n':>5} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    kinds = ["table page", "api candidates", "api candidate", "api job status"]
    for kind in kinds + ["all"]:
        times = [t * 1000 for k, t, _ in results if kind in ("all", k)]
        if not times:
            continue
        print(f"{kind:<16} {len(times):>5} {statistics.median(times):>8.1f} {percentile(times, 0.9):>8.1f} "
              f"{percentile(times, 0.99):>8.1f} {max(times):>8.1f}")
    print(f"\nload average (1/5/15 min) before {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
          f"after {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}; {os.cpu_count()} CPUs")
    if errors:
        raise SystemExit(f"{len(errors)} requests failed (status {sorted({e[2] for e in errors})})")


if __name__ == "__main__":
    main()
