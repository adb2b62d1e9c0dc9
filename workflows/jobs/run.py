"""Screening jobs end to end: plan (validate, build candidates, create tasks), run on Ray, resume, rank.

``plan_job`` does everything that can fail on bad input *before* Ray starts: the job file, the model
reference, every candidate, element coverage. ``run_job`` executes the pending tasks (reusing any result
already computed for the same candidate, protocol and model), records results through one writer, ranks,
and logs the job as an MLflow run. ``resume`` is ``run_job`` on an existing job: tasks a dead driver left
``running`` go back to ``pending`` and continue from their checkpoints.
"""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlip.config import Settings
from mlip.errors import InputError
from workflows.jobs.execute import ExecutionOptions, RunSummary, execute, init_ray
from workflows.jobs.layout import Layout, resolve_layout
from workflows.jobs.tasks import Stage, task_key, workdir_for

SCREENING_EXPERIMENT = "ionscreen-screening"


@dataclass
class JobPlan:
    job_id: str
    n_candidates: int
    n_tasks: int
    failures: list[str] = field(default_factory=list)


def _plan_path(settings: Settings, job_id: str) -> Path:
    return settings.home / "jobs" / job_id / "plan.json"


def plan_job(spec_path: str | Path, settings: Settings, *, store=None) -> JobPlan:
    """Validate the job and store it with its candidates and tasks (status pending). No Ray work."""
    from mlip.loader import load_model
    from workflows.db import Store
    from workflows.jobs.spec import build_candidates, load_job_spec

    spec = load_job_spec(spec_path)
    loaded = load_model(spec.model, settings)  # resolves and checks trust now, not on a worker
    built = build_candidates(spec, allowed_elements=set(loaded.elements))
    failures = [f"{f.item} ({f.label}): {f.error_type}: {f.error}" for f in built.failures]
    if not built.candidates:
        raise InputError("no candidate of the job can be screened:\n  " + "\n  ".join(failures))
    store = store or Store.open(settings.db_url)
    job_id = store.jobs.create(spec, model_sha256=loaded.sha256)
    plan = {
        "model_ref": spec.model,
        "model_sha256": loaded.sha256,
        "stages": {str(s): spec.protocol_dict(s) for s in spec.stages},
        "protocol_hashes": {str(s): spec.protocol_hash(s) for s in spec.stages},
        "resources": spec.resources.model_dump(mode="json"),
        "ranking": spec.ranking.model_dump(mode="json") if spec.ranking is not None else None,
        "candidate_failures": failures,
    }
    path = _plan_path(settings, job_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plan, indent=1))
    n_tasks = 0
    for cand in built.candidates:
        cid = store.candidates.upsert(cand)
        store.candidates.link(job_id, cid)
        for stage in spec.stages:
            key = task_key(cand.structure_hash, stage, plan["protocol_hashes"][str(stage)], loaded.sha256)
            store.tasks.add(job_id, cid, str(stage), key, workdir=str(workdir_for(Path("."), key)))
            n_tasks += 1
    if failures:
        store.jobs.set_status(job_id, "pending", error="candidates that could not be built:\n" + "\n".join(failures))
    return JobPlan(job_id, len(built.candidates), n_tasks, failures)


def _candidate_from_record(record):
    from screening.candidates import Candidate

    with tempfile.NamedTemporaryFile("w", suffix=".cif", delete=False) as fh:
        fh.write(record.cif)
        name = fh.name
    try:
        return Candidate.from_cif(name)
    finally:
        os.unlink(name)


_NO_WORK = Layout(1, 1, "nothing left to run")


def _layout(plan: dict, payloads: dict[int, dict], address: str | None, overrides: dict, settings: Settings):
    """Workers × threads: as configured, else filled in or measured (:mod:`workflows.jobs.layout`).

    A measurement that fails (it spawns processes) must not strand the job: one worker per core, said so."""
    r = plan["resources"]
    workers = overrides.get("workers") or r.get("workers")
    threads = overrides.get("threads_per_worker") or r.get("threads_per_worker")
    cluster = bool(address or os.environ.get("RAY_ADDRESS"))
    if cluster and (workers is None or threads is None):
        init_ray(ExecutionOptions(address=address))
    try:
        return resolve_layout(workers, threads, device=str(r.get("device", "auto")), cluster=cluster,
                              model_ref=plan["model_ref"], model_sha256=plan.get("model_sha256"),
                              structures=_layout_structures(payloads), home=settings.home)
    except Exception as err:  # noqa: BLE001 - any failure of the measurement falls back, loudly
        cores = os.cpu_count() or 1
        return Layout(workers or cores, threads or 1, f"measurement failed ({type(err).__name__}: {err}); default")


def _layout_structures(payloads: dict[int, dict]):
    """One system like the tasks' (the first transport candidate's MD supercell, else the first candidate)."""
    from screening.candidates import Candidate
    from screening.cells import make_supercell
    from screening.transport.run import to_atoms

    transport = [p for p in payloads.values() if p["stage"] == str(Stage.TRANSPORT)]
    payload = (transport or list(payloads.values()))[0]
    atoms = to_atoms(Candidate.model_validate(payload["candidate"]).structure)
    if transport:
        atoms = make_supercell(atoms, float(payload["protocol"]["supercell_min_length_A"]))[0]
    return [atoms]


def _options(plan: dict, address: str | None, overrides: dict, layout) -> ExecutionOptions:
    r = plan["resources"]
    values = dict(
        address=address,
        gpus_per_worker=r.get("gpus_per_worker", 0.0) or 0.0,
        max_in_flight=r.get("max_in_flight") or 2 * layout.workers,
        max_attempts=r.get("max_attempts", 3),
        device=str(r.get("device", "auto")),
    )
    values.update({k: v for k, v in overrides.items() if v is not None})
    values.update(workers=layout.workers, threads_per_worker=layout.threads_per_worker)
    return ExecutionOptions(**values)


def _worker_env(settings: Settings, options: ExecutionOptions) -> dict[str, str]:
    env = {
        "IONSCREEN_HOME": str(settings.home),
        "IONSCREEN_MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "IONSCREEN_MLFLOW_ARTIFACT_LOCATION": settings.mlflow_artifact_location,
        "IONSCREEN_TRUST_REGISTRY": "true" if settings.trust_registry else "false",
        "OMP_NUM_THREADS": str(options.threads_per_worker),
    }
    for key in ("XDG_CACHE_HOME", "IONSCREEN_CONFIG"):
        if key in os.environ:
            env[key] = os.environ[key]
    return env


def run_job(
    job_id: str,
    settings: Settings,
    *,
    address: str | None = None,
    progress_stream=None,
    live: bool | None = None,
    **overrides,
) -> RunSummary:
    """Execute (or continue) a stored job until every task is done, failed or cancelled."""
    from workflows.db import Store
    from workflows.jobs.progress import JobProgress

    store = Store.open(settings.db_url)
    job = store.jobs.get(job_id)
    job_id = job.id
    if job.status == "cancelled":
        raise InputError(f"job {job_id} was cancelled; submit it again to rerun it")
    plan = json.loads(_plan_path(settings, job_id).read_text())
    requeued = store.tasks.requeue_running(job_id)  # a dead driver's tasks continue from their checkpoints
    store.jobs.set_status(job_id, "running", driver_pid=os.getpid(), driver_host=socket.gethostname())
    mlflow_run_id = _ensure_mlflow_run(store, job_id, plan, settings)

    candidates = {c.id: c for c in store.candidates.for_job(job_id)}
    tasks = store.tasks.list(job_id)
    stage_of = {t.id: str(t.stage) for t in tasks}
    units = {}
    for t in tasks:
        if str(t.stage) == Stage.TRANSPORT:
            units[t.id] = len(plan["stages"][Stage.TRANSPORT]["temperatures_K"])
        else:
            units[t.id] = 1
    display = JobProgress(stage_of, units, stream=progress_stream, live=live)
    payloads: dict[int, dict] = {}
    for t in tasks:
        if t.state in ("done", "failed", "cancelled"):
            display.mark(t.id, "reused" if t.state == "done" else t.state)
            continue
        if store.results.for_key(t.task_key) is not None:  # computed before, by this or another job
            store.tasks.reuse_result(t.id)
            display.mark(t.id, "reused")
            continue
        cand = _candidate_from_record(candidates[t.candidate_id])
        payloads[t.id] = {
            "stage": str(t.stage),
            "candidate": cand.model_dump(mode="json"),
            "candidate_id": t.candidate_id,
            "protocol": plan["stages"][str(t.stage)],
            "task_key": t.task_key,
            "mlflow_run_id": mlflow_run_id,
        }

    layout = _layout(plan, payloads, address, overrides, settings) if payloads else None
    options = _options(plan, address, overrides, layout or _NO_WORK)
    if layout is not None:
        print(f"workers: {layout.describe()}", file=progress_stream or sys.stderr, flush=True)
        if mlflow_run_id:
            from mlip import registry as mlip_registry

            mlip_registry.client(settings).set_tag(mlflow_run_id, "ionscreen.layout", layout.describe())

    def on_event(kind: str, info: dict) -> None:
        task_id = info.get("task_id")
        if kind == "submitted":
            display.mark(task_id, "running")
        elif kind in ("done", "failed"):
            display.mark(task_id, kind)
        elif kind == "retry":
            display.mark(task_id, "retry")
        elif kind == "progress":
            display.progress(task_id, info)
            store.tasks.set_progress(task_id, {k: v for k, v in info.items() if k != "task_id"})

    last_check = [0.0, False]

    def should_stop() -> bool:
        now = time.monotonic()
        if now - last_check[0] > 2.0:
            last_check[0] = now
            last_check[1] = store.jobs.get(job_id).status == "cancelled"
        return last_check[1]

    try:
        summary = execute(store, job_id, plan["model_ref"], payloads, options,
                          env=_worker_env(settings, options), on_event=on_event, should_stop=should_stop)
    except BaseException as err:
        if not isinstance(err, KeyboardInterrupt) and store.jobs.get(job_id).status == "running":
            store.jobs.set_status(job_id, "failed", error=f"driver error: {type(err).__name__}: {err}")
        raise
    finally:
        display.close()
    summary.retried += requeued
    counts = store.tasks.counts(job_id)
    if store.jobs.get(job_id).status != "cancelled":
        n_done = sum(c.get("done", 0) for c in counts.values())
        status = "done" if n_done else "failed"
        store.jobs.set_status(job_id, status)
    _finish_mlflow_run(store, job_id, plan, settings, summary)
    return summary


def ranked(store, job_id: str, plan: dict | None = None):
    """The job's candidates ranked (best first) and the candidates without results (failed or pending)."""
    from screening.ranking import RankingWeights, rank

    rows = store.results.for_job(job_id)
    weights = RankingWeights(**plan["ranking"]) if plan and plan.get("ranking") else None
    components = None
    ranked_rows = rank(rows, weights=weights, components=components) if rows else []
    with_results = {r["structure_hash"] for r in rows}
    others = []
    for t in store.tasks.list(job_id):
        cand = store.candidates.get(t.candidate_id)
        if cand.structure_hash not in with_results:
            others.append({"name": cand.name, "formula": cand.formula, "stage": str(t.stage), "state": str(t.state),
                           "error": t.error, "structure_hash": cand.structure_hash})
    return ranked_rows, others


def ranked_csv(ranked_rows) -> str:
    buffer = io.StringIO()
    table = [r.table_row() for r in ranked_rows]
    if table:
        writer = csv.DictWriter(buffer, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    return buffer.getvalue()


def _ensure_mlflow_run(store, job_id: str, plan: dict, settings: Settings) -> str | None:
    from mlip import registry as mlip_registry
    from training.registry import ensure_experiment

    job = store.jobs.get(job_id)
    client = mlip_registry.client(settings)
    if job.mlflow_run_id:
        return job.mlflow_run_id
    exp = ensure_experiment(client, SCREENING_EXPERIMENT, settings)
    run = client.create_run(exp, run_name=f"{job.name}-{job_id[:8]}", tags={
        "ionscreen.job_id": job_id,
        "ionscreen.model_ref": plan["model_ref"],
        "ionscreen.model_sha256": plan["model_sha256"],
    })
    run_id = run.info.run_id
    params = {"job_name": job.name, "spec_hash": job.spec_hash, "model_ref": plan["model_ref"],
              "model_sha256": plan["model_sha256"]}
    for stage, h in plan["protocol_hashes"].items():
        params[f"{stage}_protocol_hash"] = h
    for stage, proto in plan["stages"].items():
        for key, value in proto.items():
            params[f"{stage}.{key}"] = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    client.log_batch(run_id, params=[__import__("mlflow").entities.Param(k, v[:500]) for k, v in params.items()])
    if plan["model_ref"].startswith("models:/"):
        try:
            from mlip.refs import parse_ref

            version = mlip_registry.get_version(parse_ref(plan["model_ref"]), settings)
            client.set_tag(run_id, "ionscreen.model_version", f"{version.name}/{version.version}")
            client.set_tag(run_id, "ionscreen.model_training_run", version.run_id or "")
        except Exception:  # the link is informative; the run is still valid without it
            pass
    store.jobs.set_status(job_id, store.jobs.get(job_id).status, mlflow_run_id=run_id)
    return run_id


def _finish_mlflow_run(store, job_id: str, plan: dict, settings: Settings, summary: RunSummary) -> None:
    import mlflow
    from mlip import registry as mlip_registry

    job = store.jobs.get(job_id)
    if not job.mlflow_run_id:
        return
    client = mlip_registry.client(settings)
    ranked_rows, others = ranked(store, job_id, plan)
    counts = store.tasks.counts(job_id)
    metrics = {
        "tasks_done": sum(c.get("done", 0) for c in counts.values()),
        "tasks_failed": sum(c.get("failed", 0) for c in counts.values()),
        "tasks_reused_this_run": summary.reused,
        "task_retries": summary.retried,
        "wall_s": summary.wall_s,
        "n_ranked": len(ranked_rows),
    }
    if ranked_rows:
        metrics["best_score"] = ranked_rows[0].score
        lo = ranked_rows[0].values.get("conductivity_300K_ci95_lo_mS_cm")
        if lo is not None:
            metrics["best_conductivity_300K_ci95_lo_mS_cm"] = lo
    now = int(time.time() * 1000)
    client.log_batch(job.mlflow_run_id, metrics=[mlflow.entities.Metric(k, float(v), now, 0) for k, v in metrics.items()])
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "ranked.csv").write_text(ranked_csv(ranked_rows))
        (Path(tmp) / "unranked.json").write_text(json.dumps(others, indent=1))
        (Path(tmp) / "plan.json").write_text(json.dumps(plan, indent=1))
        client.log_artifacts(job.mlflow_run_id, tmp, artifact_path="results")
    status = {"done": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}.get(str(job.status))
    if status:
        client.set_terminated(job.mlflow_run_id, status=status)
