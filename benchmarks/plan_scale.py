"""Planning at scale: ``plan_job`` of 10,000 file candidates into a fresh database, then the driver's start on it.

Writes N distinct candidate structures (CIF, Li8S4 with seeded random positions in a slightly different cell each,
oxidation states given) and a job file naming them, with a tiny MACE model for Li, P, S and Cl. Plans the job
(``plan_job``: every candidate built, stored with its tasks in one transaction) and prints the planning wall time,
candidates/s, the process's peak RSS (``ru_maxrss``) and the ``tracemalloc`` peak of planning. Then, in a separate
process as ``ionscreen jobs run`` is, does what the driver does before and while it hands tasks to workers —
``load_plan``, ``store.tasks.list``, the models of the tasks, the progress display's bookkeeping, the reuse check of
every task, and the lazy payload mapping (``task_specs``), each payload built once in order with a bounded number in
flight — and prints that process's peak RSS. Usage:

    python benchmarks/plan_scale.py [--candidates 10000] [--neb] [--db-url postgresql+psycopg://...]
                                    [--no-tracemalloc] [--in-flight 64]

Without ``--db-url`` the database is a fresh SQLite file in a temporary IONSCREEN_HOME; with it, use an empty
database (or a fresh schema). ``tracemalloc`` slows planning ~4x; ``--no-tracemalloc`` times it without.

Measured on 2 shared, busy CPU cores (10,000 candidates, transport only, SQLite): planning 190 s (52 candidates/s,
``--no-tracemalloc``), its one write transaction 1.8 s, the planner's peak RSS 627 MB, all of it imports (torch,
mace) and a 2-candidate warm-up job; with tracemalloc 855 s and a 20.2 MiB peak, 18 MiB of it the job spec's own JSON
(stored with the job). The driver's peak RSS 190 MB (151 MB after its imports). Before streaming, the same job: 813 MB
planner peak (634 MB after the warm-up), a 22 s transaction, and a 378 MB driver. PostgreSQL, 2,000 candidates:
transaction 0.7 s, driver peak 183 MB.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

CIF_HEAD = """data_bench
_symmetry_space_group_name_H-M 'P 1'
_cell_length_a {a:.4f}
_cell_length_b {b:.4f}
_cell_length_c {c:.4f}
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
"""


def peak_rss_MB() -> float:
    """This process's peak RSS: ``ru_maxrss``, or VmHWM where that is smaller (Linux keeps a parent's peak at the fork
    in a child's ``ru_maxrss`` across exec, so the driver's own peak is VmHWM)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    try:
        with open("/proc/self/status") as status:
            hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return peak
    return min(peak, hwm)


def rss_MB() -> float:
    """The resident set now (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def structure_cif(i: int) -> str:
    """Li8S4 in a ~6 Å cell, positions seeded by ``i`` and at least 2 Å apart: a distinct structure for every i."""
    rng = np.random.default_rng(i)
    abc = 6.0 + rng.uniform(0, 0.6, 3)
    frac: list[np.ndarray] = []
    while len(frac) < 12:
        x = rng.random(3)
        if all(np.linalg.norm(((x - y + 0.5) % 1.0 - 0.5) * abc) > 2.0 for y in frac):
            frac.append(x)
    sites = "".join(f"{el}{k} {el} {x:.5f} {y:.5f} {z:.5f}\n"
                    for k, (el, (x, y, z)) in enumerate(zip(["Li"] * 8 + ["S"] * 4, frac)))
    return CIF_HEAD.format(a=abc[0], b=abc[1], c=abc[2]) + sites


def write_inputs(directory: Path, n: int, neb: bool, *, start: int = 0, name: str = "plan-scale") -> Path:
    import yaml

    from mlip.config import load_settings
    from mlip.loader import trust
    from mlip.testing import build_mace, save_model

    structures = directory / "structures"
    structures.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        (structures / f"cand-{i:05d}.cif").write_text(structure_cif(i))
    model = directory / "tiny.model"
    if not model.is_file():
        save_model(build_mace([3, 15, 16, 17], seed=1), model)
        trust(str(model), load_settings())
    job = {"name": name, "model": str(model), "working_ion": "Li",
           "candidates": [{"file": f"structures/cand-{i:05d}.cif", "oxidation": {"Li": 1, "S": -2}}
                          for i in range(start, start + n)],
           "transport": {"preset": "quick", "overrides": {"supercell_min_length_A": 10.0}}}
    if neb:
        job["neb"] = {"max_hops": 1, "min_length_A": 10.0}
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def plan(args) -> None:
    from mlip.config import load_settings
    from workflows.db import Store
    from workflows.jobs.plan import plan_job
    from workflows.jobs.spec import load_job_spec

    home = Path(tempfile.mkdtemp(prefix="plan-scale-"))
    os.environ["IONSCREEN_HOME"] = str(home / "home")
    if args.db_url:
        os.environ["IONSCREEN_DB_URL"] = args.db_url
    settings = load_settings()
    t0 = time.perf_counter()
    job_file = write_inputs(home, args.candidates, args.neb, name=f"plan-scale-{args.candidates}")
    t1 = time.perf_counter()
    spec = load_job_spec(job_file)
    t2 = time.perf_counter()
    print(f"inputs: {args.candidates} CIFs, a {job_file.stat().st_size / 2**20:.2f} MiB job file and the model made in "
          f"{t1 - t0:.1f} s, read in {t2 - t1:.1f} s; database {settings.db_url.split('@')[-1]}", flush=True)
    store = Store.open(settings.db_url)
    # a job of 2 other candidates first: imports (torch, mace, pymatgen's CIF code) stay out of the measurement
    plan_job(load_job_spec(write_inputs(home, 2, args.neb, start=args.candidates, name="warm-up")), settings,
             store=store)
    baseline = peak_rss_MB()
    create, stored_s = store.jobs.create, []

    def timed_create(*a, **kw):  # how long the one write transaction (SQLite's write lock) lasts
        t = time.perf_counter()
        try:
            return create(*a, **kw)
        finally:
            stored_s.append(time.perf_counter() - t)

    store.jobs.create = timed_create
    if not args.no_tracemalloc:
        tracemalloc.start()
    t3 = time.perf_counter()
    planned = plan_job(spec, settings, store=store, submitted_by="bench@plan-scale")
    wall = time.perf_counter() - t3
    traced = tracemalloc.get_traced_memory()[1] if tracemalloc.is_tracing() else None
    tracemalloc.stop()
    counts = {"candidates": len(store.candidates.hashes_for_job(planned.job_id)),
              "tasks": sum(sum(c.values()) for c in store.tasks.counts(planned.job_id).values())}
    print(f"planned {planned.n_candidates} candidates ({len(planned.failures)} failed), {planned.n_tasks} tasks in "
          f"{wall:.1f} s = {planned.n_candidates / wall:.1f} candidates/s"
          + (" (with tracemalloc on)" if traced is not None else ""), flush=True)
    print(f"stored with the job: {counts['candidates']} candidates, {counts['tasks']} tasks, in one transaction of "
          f"{stored_s[0]:.1f} s (after building them all)")
    print(f"planning process: peak RSS {peak_rss_MB():.0f} MB (after imports and a 2-candidate job: {baseline:.0f} MB)"
          + (f", tracemalloc peak of plan_job {traced / 2**20:.1f} MiB" if traced is not None else ""), flush=True)
    store.close()
    out = subprocess.run([sys.executable, __file__, "--driver", planned.job_id, "--in-flight", str(args.in_flight)],
                         env=os.environ.copy(), capture_output=True, text=True)
    sys.stdout.write(out.stdout)
    if out.returncode:
        sys.stderr.write(out.stderr[-4000:])
        raise SystemExit(out.returncode)
    print(json.dumps({"candidates": planned.n_candidates, "tasks": planned.n_tasks, "plan_wall_s": round(wall, 1),
                      "store_transaction_s": round(stored_s[0], 1),
                      "candidates_per_s": round(planned.n_candidates / wall, 1),
                      "plan_peak_rss_MB": round(peak_rss_MB()),
                      "plan_tracemalloc_peak_MiB": round(traced / 2**20, 1) if traced is not None else None,
                      **json.loads(out.stdout.strip().splitlines()[-1])}))


def driver(job_id: str, in_flight: int) -> None:
    """What ``run_job`` holds for a job before and while ``execute`` hands its tasks out (no Ray, no MLflow)."""
    import workflows.jobs.run  # noqa: F401 - the driver's imports, counted in the baseline like the planner's
    from mlip.config import load_settings
    from workflows.db import Store
    from workflows.jobs.plan import load_plan, task_models, task_specs
    from workflows.jobs.progress import JobProgress
    from workflows.jobs.run import _layout_structures, _stage_label

    settings = load_settings()
    store = Store.open(settings.db_url)
    baseline, baseline_now = peak_rss_MB(), rss_MB()
    t0 = time.perf_counter()
    plan = load_plan(store, job_id, settings)
    tasks = store.tasks.list(job_id)
    models = task_models(store, job_id, plan, tasks)
    display = JobProgress({t.id: _stage_label(plan, t.stage, models[t.id]) for t in tasks},
                          {t.id: plan.units(t.stage) for t in tasks}, stream=io.StringIO(), live=False)
    t1 = time.perf_counter()
    pending = [t for t in tasks if t.state == "pending" and store.results.for_key(t.task_key) is None]
    t2 = time.perf_counter()
    payloads = task_specs(store, job_id, plan, pending)
    _layout_structures(payloads)
    payloads.keep = 2 * in_flight  # as run_job
    flying: list[int] = []
    for task_id in payloads:  # as execute: looked up again when a task ends, then the next one built and submitted
        if len(flying) >= in_flight:
            done = flying.pop(0)
            payloads[done].candidate_id
            display.mark(done, "done")
        payloads[task_id]
        display.mark(task_id, "running")
        flying.append(task_id)
    t3 = time.perf_counter()
    print(f"driver: {len(tasks)} tasks loaded with their models and progress bookkeeping in {t1 - t0:.1f} s, "
          f"reuse check {t2 - t1:.1f} s, {payloads.builds} payloads built one at a time ({in_flight} in flight) in "
          f"{t3 - t2:.1f} s ({len(pending) / max(t3 - t2, 1e-9):.0f}/s)")
    print(f"driver process: peak RSS {peak_rss_MB():.0f} MB (after imports: {baseline:.0f} MB); RSS now "
          f"{rss_MB():.0f} MB (after imports: {baseline_now:.0f} MB)")
    print(json.dumps({"driver_peak_rss_MB": round(peak_rss_MB()), "driver_baseline_rss_MB": round(baseline),
                      "driver_rss_growth_MB": round(rss_MB() - baseline_now),
                      "driver_load_s": round(t1 - t0, 1), "driver_reuse_check_s": round(t2 - t1, 1),
                      "payload_builds": payloads.builds, "payloads_per_s": round(len(pending) / max(t3 - t2, 1e-9))}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", type=int, default=10_000)
    parser.add_argument("--neb", action="store_true", help="an NEB task per candidate as well (2 tasks each)")
    parser.add_argument("--db-url", help="database to plan into (default: a fresh SQLite file)")
    parser.add_argument("--no-tracemalloc", action="store_true", help="time planning without tracemalloc")
    parser.add_argument("--in-flight", type=int, default=64, help="tasks in flight (the driver keeps twice as many)")
    parser.add_argument("--driver", metavar="JOB_ID", help=argparse.SUPPRESS)  # the driver half, in its own process
    args = parser.parse_args()
    if args.driver:
        driver(args.driver, args.in_flight)
    else:
        plan(args)


if __name__ == "__main__":
    main()
