"""Running a planned screening job on Ray, resuming it, ranking its results, and its MLflow run.

``run_job`` executes the pending tasks of a job stored by :func:`workflows.jobs.plan.plan_job` (reusing any result
already computed for the same candidate, protocol and model), records results through one writer, ranks, and logs
the job as an MLflow run. It is also ``resume``: tasks a dead driver left ``running`` go back to ``pending`` and
continue from their checkpoints. The pinned model is checked before any worker starts: if its reference now
resolves to other bytes (a moved alias), every pending task fails with both SHA-256s and nothing is stored.

A job with an ``agreement_model`` runs the primary model's tasks first and then the second model's, on the same
workers (:mod:`workflows.jobs.execute`); its ranking carries each candidate's model disagreement.
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
from pathlib import Path

from mlip.config import Settings
from mlip.errors import InputError, ModelMismatchError
from screening.stages import Stage
from workflows.db.database import InvalidTransition
from workflows.jobs.execute import ExecutionOptions, RunSummary, execute, init_ray
from workflows.jobs.layout import Layout, resolve_layout
from workflows.jobs.plan import JobPlan, PinnedModel, TaskPayloads, load_plan, task_models, task_specs

SCREENING_EXPERIMENT = "ionscreen-screening"


_NO_WORK = Layout(1, 1, "nothing left to run")


def _layout(plan: JobPlan, payloads: TaskPayloads, address: str | None, overrides: dict, settings: Settings):
    """Workers × threads: as configured, else filled in or measured (:mod:`workflows.jobs.layout`).

    A measurement that fails (it spawns processes) must not strand the job: one worker per core, said so."""
    r = plan.resources
    workers = overrides.get("workers") or r.workers
    threads = overrides.get("threads_per_worker") or r.threads_per_worker
    cluster = bool(address or os.environ.get("RAY_ADDRESS"))
    if cluster and (workers is None or threads is None):
        init_ray(ExecutionOptions(address=address))
    try:
        return resolve_layout(workers, threads, device=str(r.device), cluster=cluster,
                              model_ref=plan.model.ref, model_sha256=plan.model.sha256,
                              structures=_layout_structures(payloads), home=settings.home)
    except Exception as err:  # noqa: BLE001 - any failure of the measurement falls back, loudly
        cores = os.cpu_count() or 1
        return Layout(workers or cores, threads or 1, f"measurement failed ({type(err).__name__}: {err}); default")


def _layout_structures(payloads: TaskPayloads):
    """One system like the tasks' (the first transport candidate's MD supercell, else the first candidate): the one
    payload built for it."""
    from screening.cells import make_supercell
    from screening.transport.run import to_atoms

    first = next((i for i in payloads if payloads.stage(i) is Stage.TRANSPORT), next(iter(payloads)))
    spec = payloads[first]
    atoms = to_atoms(spec.candidate.structure)
    if spec.stage is Stage.TRANSPORT:
        atoms = make_supercell(atoms, spec.transport.supercell_min_length_A)[0]
    return [atoms]


def _options(plan: JobPlan, address: str | None, overrides: dict, layout) -> ExecutionOptions:
    r = plan.resources
    values = dict(
        address=address,
        gpus_per_worker=r.gpus_per_worker or 0.0,
        max_in_flight=r.max_in_flight or 2 * layout.workers,
        max_attempts=r.max_attempts,
        device=str(r.device),
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
        "IONSCREEN_REGISTRY_SIGNING_KEY_FILE": str(settings.signing_key_path),
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
    plan = load_plan(store, job_id, settings)
    requeued = store.tasks.requeue_running(job_id)  # a dead driver's tasks continue from their checkpoints
    store.jobs.set_status(job_id, "running", driver_pid=os.getpid(), driver_host=socket.gethostname())
    mlflow_run_id = _ensure_mlflow_run(store, job_id, plan, settings)

    tasks = store.tasks.list(job_id)
    models = task_models(store, job_id, plan, tasks)
    display = JobProgress({t.id: _stage_label(plan, t.stage, models[t.id]) for t in tasks},
                          {t.id: plan.units(t.stage) for t in tasks}, stream=progress_stream, live=live)
    pending = []
    for t in tasks:
        if t.state in ("done", "failed", "cancelled"):
            display.mark(t.id, "reused" if t.state == "done" else t.state)
        elif store.results.for_key(t.task_key) is not None:  # computed before, by this or another job
            store.tasks.reuse_result(t.id)
            display.mark(t.id, "reused")
        else:
            pending.append(t)
    mismatches = {m.sha256: err for m in {models[t.id] for t in pending} if (err := _model_mismatch(m, settings))}
    refused: dict[int, str] = {}
    for t in pending:  # nothing runs under the wrong model: its tasks fail, naming both hashes
        mismatch = mismatches.get(models[t.id].sha256)
        if mismatch is not None:
            store.tasks.finish(t.id, "failed", error=f"{type(mismatch).__name__}: {mismatch}")
            display.mark(t.id, "failed")
            refused[t.id] = str(mismatch)
    order = {m: i for i, m in enumerate(plan.models)}  # the primary model's tasks first (stable within a model)
    pending = sorted((t for t in pending if t.id not in refused), key=lambda t: order[models[t.id]])
    payloads = task_specs(store, job_id, plan, pending, mlflow_run_id=mlflow_run_id)  # built when submitted

    layout = _layout(plan, payloads, address, overrides, settings) if payloads else None
    options = _options(plan, address, overrides, layout or _NO_WORK)
    payloads.keep = 2 * max(options.max_in_flight, options.workers)  # still there when its task ends
    if layout is not None:
        print(f"workers: {layout.describe()}", file=progress_stream or sys.stderr, flush=True)
        if mlflow_run_id:
            from mlip import registry as mlip_registry

            mlip_registry.client(settings).set_tag(mlflow_run_id, "ionscreen.layout", layout.describe())

    def on_event(kind: str, info: dict) -> None:
        task_id = info.get("task_id")
        if kind == "submitted":
            display.on_node(task_id, info.get("node"))
            display.mark(task_id, "running")
        elif kind in ("done", "failed"):
            display.mark(task_id, kind)
        elif kind == "retry":
            display.mark(task_id, "retry")
        elif kind == "progress":
            try:
                store.tasks.set_progress(task_id, {k: v for k, v in info.items() if k != "task_id"})
            except InvalidTransition:  # a late event of a task that has finished (or was requeued) since
                return
            display.progress(task_id, info)

    last_check = [0.0, False]

    def should_stop() -> bool:
        now = time.monotonic()
        if now - last_check[0] > 2.0:
            last_check[0] = now
            last_check[1] = store.jobs.get(job_id).status == "cancelled"
        return last_check[1]

    model_refs = list(dict.fromkeys(payloads.model(i).ref for i in payloads))
    try:
        summary = execute(store, job_id, model_refs, payloads, options,
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
    summary.failed += len(refused)
    summary.errors.update(refused)
    _finish_mlflow_run(store, job_id, plan, settings, summary)
    return summary


def _stage_label(plan: JobPlan, stage, model: PinnedModel) -> str:
    """The progress bar a task counts towards: its stage, and the second model's tasks apart."""
    return str(stage) if model == plan.model else f"{stage} (agreement model)"


def _model_mismatch(model: PinnedModel, settings: Settings) -> ModelMismatchError | None:
    """The error to fail a model's tasks with when its pinned reference now resolves to other bytes, else None."""
    from mlip.loader import resolve

    try:
        model.check(resolve(model.ref, settings).sha256)
    except ModelMismatchError as err:
        return err
    return None


def ranked(store, job_id: str, plan: JobPlan | None = None):
    """The job's candidates ranked (best first, with the plan's weights) and the candidates without results.

    With an agreement model, the primary model's results are ranked and each row carries its disagreement with the
    second model's (``RankedRow.agreement``)."""
    from screening.ranking import rank
    from workflows.db.results import screened

    rows = store.results.for_job(job_id)
    weights = plan.ranking if plan is not None else None
    components = None
    second = None
    tasks = store.tasks.list(job_id)
    models = {}
    if plan is not None and plan.agreement_model is not None:
        second_rows = [r for r in rows if r["model_sha256"] == plan.agreement_model.sha256]
        rows = [r for r in rows if r["model_sha256"] == plan.model.sha256]
        second = {c.structure_hash: c for c in screened(second_rows)}
        models = task_models(store, job_id, plan, tasks)
    ranked_rows = rank(screened(rows), weights=weights, components=components, second=second) if rows else []
    with_results = {r["structure_hash"] for r in rows}
    others = []
    for t in tasks:
        cand = store.candidates.get(t.candidate_id)
        if cand.structure_hash not in with_results:
            entry = {"name": cand.name, "formula": cand.formula, "stage": str(t.stage), "state": str(t.state),
                     "error": t.error, "structure_hash": cand.structure_hash}
            if models:  # which of the two models the task ran
                entry["model_ref"] = models[t.id].ref
            others.append(entry)
    return ranked_rows, others


def job_agreements(store, job_id: str, plan: JobPlan | None) -> dict:
    """Each candidate's disagreement between the job's two models (``screening.ranking.ModelAgreement``), by candidate
    id, for candidates with a primary-model result; {} for a job without an agreement model."""
    from screening.ranking import model_agreement
    from workflows.db.results import screened

    if plan is None or plan.agreement_model is None:
        return {}
    rows = store.results.for_job(job_id)
    ids = {r["structure_hash"]: r["candidate_id"] for r in rows}
    second = {c.structure_hash: c for c in screened([r for r in rows if r["model_sha256"] == plan.agreement_model.sha256])}
    return {ids[c.structure_hash]: model_agreement(c, second.get(c.structure_hash), plan.ranking)
            for c in screened([r for r in rows if r["model_sha256"] == plan.model.sha256])}


def ranked_csv(ranked_rows) -> str:
    buffer = io.StringIO()
    table = [r.table_row() for r in ranked_rows]
    if table:
        writer = csv.DictWriter(buffer, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    return buffer.getvalue()


def _ensure_mlflow_run(store, job_id: str, plan: JobPlan, settings: Settings) -> str | None:
    from mlip import registry as mlip_registry
    from training.registry import ensure_experiment

    job = store.jobs.get(job_id)
    client = mlip_registry.client(settings)
    if job.mlflow_run_id:
        return job.mlflow_run_id
    exp = ensure_experiment(client, SCREENING_EXPERIMENT, settings)
    run = client.create_run(exp, run_name=f"{job.name}-{job_id[:8]}", tags={
        "ionscreen.job_id": job_id,
        "ionscreen.model_ref": plan.model.ref,
        "ionscreen.model_sha256": plan.model.sha256,
    })
    run_id = run.info.run_id
    params = {"job_name": job.name, "spec_hash": job.spec_hash, "model_ref": plan.model.ref,
              "model_sha256": plan.model.sha256}
    if plan.agreement_model is not None:
        params |= {"agreement_model_ref": plan.agreement_model.ref,
                   "agreement_model_sha256": plan.agreement_model.sha256}
    for stage in plan.stages:
        params[f"{stage}_protocol_hash"] = plan.protocol_hash(stage)
        for key, value in plan.protocol_data(stage).items():
            params[f"{stage}.{key}"] = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    client.log_batch(run_id, params=[__import__("mlflow").entities.Param(k, v[:500]) for k, v in params.items()])
    if plan.model.ref.startswith("models:/"):
        try:
            from mlip.refs import parse_ref

            version = mlip_registry.get_version(parse_ref(plan.model.ref), settings)
            client.set_tag(run_id, "ionscreen.model_version", f"{version.name}/{version.version}")
            client.set_tag(run_id, "ionscreen.model_training_run", version.run_id or "")
        except Exception:  # the link is informative; the run is still valid without it
            pass
    store.jobs.set_status(job_id, store.jobs.get(job_id).status, mlflow_run_id=run_id)
    return run_id


def _finish_mlflow_run(store, job_id: str, plan: JobPlan, settings: Settings, summary: RunSummary) -> None:
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
        (Path(tmp) / "plan.json").write_text(plan.model_dump_json(indent=1))
        client.log_artifacts(job.mlflow_run_id, tmp, artifact_path="results")
    status = {"done": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}.get(str(job.status))
    if status:
        client.set_terminated(job.mlflow_run_id, status=status)
