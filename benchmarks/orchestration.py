"""Orchestration at scale: 1,000 candidates with a tiny model and very short MD on a real multi-host Ray cluster.

What is measured is the machinery, not the physics: tasks per second; scheduling overhead per task (per worker, the
time between the end of one task's compute and the start of the next: dispatch, result transfer, and whatever the
driver makes a worker wait for), and the worker time not spent computing, over tasks (wall × workers − Σ compute,
over tasks: start-up included); the driver's database writes per task (result row + task state) p50/p99; the
driver's peak memory; and planning time. For 1, 2 and 3 worker hosts, each a network namespace with its own address
and one worker (tests/netcluster.py), a head and a login host for the driver; the job store is SQLite in the shared
IONSCREEN_HOME (``--db-url`` for PostgreSQL, reached through the cluster network).

    python benchmarks/orchestration.py                    # 1,000 tasks on 1, 2 and 3 hosts; needs root (ip netns)
    python benchmarks/orchestration.py --tasks 200 --hosts 2

The hosts share this machine's cores (2 here): more hosts add workers, not compute, so tasks/s stops growing at the
core count; the overhead figures are what the comparison is for.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

PROTOCOL = {"temperatures_K": [600.0], "timestep_fs": 2.0, "equilibration_ps": 0.01, "production_ps": 0.04,
            "sample_interval_fs": 10.0, "checkpoint_interval_ps": 0.02, "supercell_min_length_A": 5.0,
            "relax_max_steps": 3, "analysis": {"n_blocks": 4, "fit_min_start_fs": 10.0, "min_hops": 1}}


def write_job(directory: Path, model: Path, n: int) -> Path:
    """``n`` distinct 8-atom LiCl cells: the rock-salt cell strained along three axes in steps the structure hash
    tells apart."""
    import yaml
    from ase.io import write
    from ase.spacegroup import crystal

    side = round(n ** (1 / 3) + 0.5)
    candidates = []
    for i in range(n):
        atoms = crystal(["Li", "Cl"], [(0, 0, 0), (0.5, 0.5, 0.5)], spacegroup=225, cellpar=[5.0] * 3 + [90] * 3)
        a = 4.9 + 0.05 * (i % side)
        b = a + 0.05 * side + 0.05 * ((i // side) % side)
        c = b + 0.05 * side + 0.05 * (i // side // side)
        atoms.set_cell([a, b, c], scale_atoms=True)
        path = directory / f"c{i:05d}.cif"
        write(path, atoms)
        candidates.append({"file": path.name, "oxidation": {"Li": 1, "Cl": -1}})
    job = {"name": f"orchestration-{n}", "model": str(model), "working_ion": "Li", "candidates": candidates,
           "transport": {"overrides": PROTOCOL}}
    path = directory / "job.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def drive(args) -> None:
    """On the login host: plan the job, run it on the cluster, write the figures (JSON)."""
    from mlip.config import load_settings
    from workflows.jobs.plan import plan_job
    from workflows.jobs.run import run_job
    from workflows.jobs.spec import load_job_spec

    settings = load_settings()
    t0 = time.perf_counter()
    planned = plan_job(load_job_spec(Path(args.job)), settings)
    plan_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    summary = run_job(planned.job_id, settings, address=args.address, live=False, workers=args.workers,
                      threads_per_worker=1, max_in_flight=2 * args.workers, progress_stream=open(os.devnull, "w"))
    run_s = time.perf_counter() - t0
    by_worker: dict[int, list[tuple[float, float]]] = {}
    for w, start, end in summary.task_times:
        by_worker.setdefault(w, []).append((start, end))
    gaps, busy = [], 0.0
    for times in by_worker.values():
        times.sort()
        gaps += [b[0] - a[1] for a, b in zip(times, times[1:])]
        busy += sum(end - start for start, end in times)
    compute = [end - start for _, start, end in summary.task_times]
    n = max(summary.done, 1)
    out = {
        "hosts": args.workers, "workers": args.workers, "tasks_planned": planned.n_tasks, "tasks_done": summary.done,
        "tasks_failed": summary.failed, "plan_s": plan_s, "run_wall_s": run_s, "tasks_per_s": summary.done / run_s,
        "compute_median_s": statistics.median(compute) if compute else None,
        "gap_median_ms": 1000 * statistics.median(gaps) if gaps else None,
        "gap_p95_ms": 1000 * percentile(gaps, 0.95) if gaps else None,
        "idle_per_task_ms": 1000 * (run_s * args.workers - busy) / n,
        "db_write_p50_ms": 1000 * percentile(summary.db_write_s, 0.5),
        "db_write_p99_ms": 1000 * percentile(summary.db_write_s, 0.99),
        "driver_peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "db": settings.db_url.split(":")[0],
    }
    Path(args.out).write_text(json.dumps(out, indent=1))


def run_hosts(n_hosts: int, n_tasks: int, model_file: Path, db_url: str | None) -> dict:
    from mlip.loader import trust
    from netcluster import NetCluster

    work = Path(tempfile.mkdtemp(prefix=f"orch{n_hosts}-"))
    home = work / "home"
    env = {"IONSCREEN_HOME": str(home), "XDG_CACHE_HOME": str(work / "cache"), "OMP_NUM_THREADS": "1"}
    os.environ.update(env)
    from mlip.config import load_settings

    model = home / "tiny.model"
    home.mkdir(parents=True)
    model.write_bytes(model_file.read_bytes())
    trust(str(model), load_settings())
    job = write_job(work, model, n_tasks)
    workers = [f"w{i + 1}" for i in range(n_hosts)]
    with NetCluster(["head", "login", *workers], work_dir=work) as cluster:
        if db_url:
            from sqlalchemy import make_url

            host, port = cluster.forward(make_url(db_url).port or 5432).split(":")
            env["IONSCREEN_DB_URL"] = make_url(db_url).set(host=host, port=int(port)).render_as_string(False)
        cluster.start_head("head")
        cluster.start_worker("login", cpus=0)
        for w in workers:
            cluster.start_worker(w, cpus=1)
        cluster.wait_for_nodes(2 + n_hosts)
        out = work / "figures.json"
        done = cluster.run("login", [sys.executable, __file__, "--driver", "--job", str(job), "--address",
                                     cluster.address, "--workers", str(n_hosts), "--out", str(out)],
                           env=env, timeout=7200)
        if done.returncode != 0:
            raise SystemExit(f"driver failed on {n_hosts} hosts:\n{done.stderr[-3000:]}")
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--hosts", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--db-url", help="PostgreSQL job store (default: SQLite in the shared IONSCREEN_HOME)")
    parser.add_argument("--json", help="write every figure here too")
    parser.add_argument("--driver", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.driver:
        drive(args)
        return
    from netcluster import netns_available

    if (why := netns_available()) is not None:
        raise SystemExit(f"this benchmark needs network namespaces: {why}")
    from mlip.testing import build_mace, save_model

    model_file = save_model(build_mace([3, 15, 16, 17], seed=1, pair_repulsion=True, interaction_scale=0.02),
                            Path(tempfile.mkdtemp()) / "tiny.model")
    rows = []
    for n_hosts in args.hosts:
        started = time.perf_counter()
        rows.append(run_hosts(n_hosts, args.tasks, model_file, args.db_url))
        print(f"# {n_hosts} host(s): {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    header = ("hosts", "tasks", "plan s", "run s", "tasks/s", "compute p50 s", "gap p50 ms", "gap p95 ms",
              "idle/task ms", "db write p50 ms", "db write p99 ms", "driver peak MB")
    print(f"# {args.tasks} candidates, tiny MACE, {PROTOCOL['equilibration_ps'] + PROTOCOL['production_ps']} ps MD "
          f"each; {os.cpu_count()} cores shared by every host; job store: {rows[0]['db']}")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print(f"| {r['hosts']} | {r['tasks_done']}/{r['tasks_planned']} | {r['plan_s']:.1f} | {r['run_wall_s']:.1f} | "
              f"{r['tasks_per_s']:.2f} | {r['compute_median_s']:.3f} | {r['gap_median_ms']:.1f} | {r['gap_p95_ms']:.1f} | "
              f"{r['idle_per_task_ms']:.0f} | {r['db_write_p50_ms']:.1f} | {r['db_write_p99_ms']:.1f} | "
              f"{r['driver_peak_rss_MB']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
