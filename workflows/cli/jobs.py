"""``ionscreen screen``, ``jobs list|status|cancel|resume``, ``results`` and ``demo``: thin over workflows.jobs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from mlip.errors import InputError
from workflows.cli.options import AddressOpt, WorkersOpt

jobs_app = typer.Typer(help="Screening jobs: list, status, cancel, resume.", no_args_is_help=True)



def _settings():
    from mlip.config import load_settings

    return load_settings()


def _store(settings):
    from workflows.db import Store

    return Store.open(settings.db_url)


def ray_address(given: str | None, settings) -> str | None:
    """The Ray cluster to run on: ``--address``, else ``$RAY_ADDRESS``, else ``ray_address`` in the config; None
    starts Ray in this process."""
    import os

    return given or os.environ.get("RAY_ADDRESS") or settings.ray_address


def submitter() -> str:
    """Who submits a job from the command line: ``user@host``."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (e.g. a bare container uid)
        import os

        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def _fmt(value, spec=".3g"):
    return "—" if value is None else format(value, spec)


def print_ranked(store, job_id: str, settings, fmt: str = "table") -> None:
    from workflows.jobs.plan import load_plan
    from workflows.jobs.run import ranked, ranked_csv

    plan = load_plan(store, job_id, settings, required=False)
    rows, others = ranked(store, job_id, plan)
    second = plan.agreement_model if plan is not None else None
    if fmt == "csv":
        typer.echo(ranked_csv(rows), nl=False)
        return
    if fmt == "json":
        document = {"ranked": [r.model_dump(mode="json") for r in rows], "not_ranked": others}
        if second is not None:
            document["agreement_model"] = second.model_dump(mode="json")
        typer.echo(json.dumps(document, indent=2))
        return
    job = store.jobs.get(job_id)
    typer.echo(f"job {job.id} ({job.name}): {job.status}, model {job.model_ref}"
               + (f", agreement model {second.ref}" if second is not None else ""))
    agreement_header = f" {'Δmodels log10σ/eV':<18}" if second is not None else ""
    typer.echo(f"{'#':>3} {'candidate':<22} {'formula':<14} {'ion':<3} {'σ300K (mS/cm) [95% CI]':<30} "
               f"{'Ea (eV) [95% CI]':<24} {'barrier 1D/2D/3D (eV)':<20}{agreement_header} {'score':>7}  flags")
    for r in rows:
        v = r.values
        sigma = f"{_fmt(v.get('conductivity_300K_mS_cm'))} [{_fmt(v.get('conductivity_300K_ci95_lo_mS_cm'))}, {_fmt(v.get('conductivity_300K_ci95_hi_mS_cm'))}]"
        ea = f"{_fmt(v.get('activation_energy_eV'))} [{_fmt(v.get('activation_energy_ci95_lo_eV'))}, {_fmt(v.get('activation_energy_ci95_hi_eV'))}]"
        barrier = "/".join(_fmt(v.get(f"percolation_{d}d_eV"), ".2f") for d in (1, 2, 3))
        flags = ",".join(r.flags) or "-"
        if r.missing:
            flags += f" (missing: {','.join(r.missing)})"
        agreement = f" {r.agreement.figures_text():<18}" if r.agreement is not None else ""
        typer.echo(f"{r.rank:>3} {str(r.name)[:22]:<22} {str(r.formula)[:14]:<14} {str(r.working_ion):<3} {sigma:<30} {ea:<24} "
                   f"{barrier:<20}{agreement} {r.score:>7.2f}  {flags}")
    for o in others:
        model = f" ({o['model_ref']})" if "model_ref" in o else ""
        typer.echo(f"  - {o['name']:<22} {o['formula']:<14} {o['stage']}{model}: {o['state']}"
                   + (f" — {o['error']}" if o["error"] else ""))
    for failure in plan.candidate_failures if plan else []:
        typer.echo(f"  - not screened: {failure}")
    if job.error:
        typer.echo(f"notes: {job.error}")


def screen(
    job_file: Annotated[Path, typer.Argument(help="Job file (YAML): candidates, model, protocols, ranking, resources.")],
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    fmt: Annotated[str, typer.Option("--format", help="Ranked table as table, csv or json.")] = "table",
) -> None:
    """Validate and run a screening job on Ray; print the ranked candidates."""
    from workflows.jobs.plan import plan_job
    from workflows.jobs.run import run_job
    from workflows.jobs.spec import load_job_spec

    settings = _settings()
    store = _store(settings)
    plan = plan_job(load_job_spec(job_file), settings, store=store, submitted_by=submitter())
    typer.echo(f"job {plan.job_id}: {plan.n_candidates} candidates, {plan.n_tasks} tasks"
               + (f", {len(plan.failures)} candidates failed to build" if plan.failures else ""), err=True)
    for failure in plan.failures:
        typer.echo(f"  failed: {failure}", err=True)
    summary = run_job(plan.job_id, settings, address=ray_address(address, settings), workers=workers)
    typer.echo(f"done: {summary.done} computed, {summary.failed} failed, {summary.retried} retried, "
               f"{summary.wall_s:.0f} s", err=True)
    print_ranked(store, plan.job_id, settings, fmt)


def results(
    job: Annotated[str, typer.Argument(help="Job id (or a unique prefix of ≥ 4 characters).")],
    fmt: Annotated[str, typer.Option("--format", help="table, csv, json, or optimade (the job's OPTIMADE structures "
                                                      "documents, as /optimade/v1/structures serves them).")] = "table",
    cif: Annotated[Optional[str], typer.Option("--cif", help="Export this candidate (name or structure-hash prefix) as CIF.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Where to write the CIF (or the OPTIMADE file).")] = None,
) -> None:
    """Ranked candidates of a job (uncertainty-aware score), or one candidate's CIF."""
    if fmt not in ("table", "csv", "json", "optimade"):
        raise InputError(f"--format must be table, csv, json or optimade, got {fmt!r}")
    settings = _settings()
    store = _store(settings)
    record = store.jobs.get(job)
    if fmt == "optimade" and cif is None:
        from workflows.web.optimade.entries import job_documents

        text = json.dumps(job_documents(store, record.id), indent=1)
        if out is None:
            typer.echo(text)
        else:
            out.write_text(text + "\n")
            typer.echo(f"wrote {out}", err=True)
        return
    if cif is not None:
        matches = [c for c in store.candidates.for_job(record.id) if c.name == cif or c.structure_hash.startswith(cif)]
        if len(matches) != 1:
            names = ", ".join(c.name for c in store.candidates.for_job(record.id))
            raise InputError(f"{'no' if not matches else 'more than one'} candidate matches {cif!r}; candidates: {names}")
        path = out or Path(f"{matches[0].name}.cif".replace("/", "_"))
        path.write_text(matches[0].cif)
        typer.echo(f"wrote {path}")
        return
    print_ranked(store, record.id, settings, fmt)


@jobs_app.command("list")
def jobs_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """All jobs, newest first, with task counts."""
    settings = _settings()
    store = _store(settings)
    jobs = store.jobs.list()
    if as_json:
        typer.echo(json.dumps([{"id": j.id, "name": j.name, "status": str(j.status), "model_ref": j.model_ref,
                                "submitted_by": j.submitted_by, "created_utc": j.created_utc.isoformat(),
                                "counts": store.tasks.counts(j.id)} for j in jobs], indent=2))
        return
    for j in jobs:
        counts = store.tasks.counts(j.id)
        summary = "; ".join(f"{stage}: " + ", ".join(f"{n} {state}" for state, n in c.items() if n) for stage, c in counts.items())
        typer.echo(f"{j.id[:12]}  {j.created_utc:%Y-%m-%d %H:%M}  {str(j.status):<9}  {j.name:<20}  "
                   f"{j.submitted_by or '—':<20}  {summary}")


@jobs_app.command("status")
def jobs_status(job: Annotated[str, typer.Argument(help="Job id or prefix.")],
                as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """A job's state, task counts per stage, and its tasks (with errors and progress)."""
    settings = _settings()
    store = _store(settings)
    j = store.jobs.get(job)
    tasks = store.tasks.list(j.id)
    if as_json:
        typer.echo(json.dumps({"id": j.id, "name": j.name, "status": str(j.status), "error": j.error,
                               "submitted_by": j.submitted_by, "mlflow_run_id": j.mlflow_run_id, "counts": store.tasks.counts(j.id),
                               "tasks": [t.model_dump(mode="json") for t in tasks]}, indent=2, default=str))
        return
    from workflows.jobs.plan import load_plan, task_models

    plan = load_plan(store, j.id, settings, required=False)
    second = plan.agreement_model if plan is not None else None
    models = task_models(store, j.id, plan, tasks) if second is not None else {}
    typer.echo(f"job {j.id} ({j.name}): {j.status}; model {j.model_ref}"
               + (f"; agreement model {second.ref}" if second is not None else "")
               + f"; submitted by {j.submitted_by or '—'}; MLflow run {j.mlflow_run_id or '—'}")
    for stage, c in store.tasks.counts(j.id).items():
        typer.echo(f"  {stage}: " + ", ".join(f"{n} {state}" for state, n in c.items()))
    per_node = _tasks_per_node(tasks)
    if len(per_node) > 1 or any(t.attempts > 1 for t in tasks):
        for node, c in per_node.items():
            typer.echo(f"  node {node}: " + ", ".join(f"{n} {what}" for what, n in c.items() if n))
    for t in tasks:
        cand = store.candidates.get(t.candidate_id)
        extra = f" — {t.error}" if t.error else (f" — {t.progress_json}" if t.state == "running" and t.progress_json else "")
        which = " [agreement model]" if models.get(t.id) == second and second is not None else ""
        where = f" on {t.node}" if t.node else ""
        typer.echo(f"  task {t.id:>4} {str(t.stage):<9} {cand.name:<22} {str(t.state):<9} attempts {t.attempts}"
                   + (" (reused)" if t.reused_result else "") + where + which + extra)
        if t.attempts > 1:  # the story of a task that ran more than once
            for a in t.attempts_json or []:
                typer.echo(f"         attempt {a.get('attempt')}: {a.get('node') or '?'} {a.get('worker') or ''}, "
                           f"{a.get('started_utc', '')[:19]} → {(a.get('ended_utc') or '')[:19] or 'running'}: "
                           f"{a.get('outcome') or 'running'}" + (f" ({a['error'][:120]})" if a.get("error") else ""))
    if j.error:
        typer.echo(f"notes: {j.error}")


def _tasks_per_node(tasks) -> dict[str, dict[str, int]]:
    """Attempts per node: how many ended done, failed, requeued (the node or worker was lost) or are running."""
    out: dict[str, dict[str, int]] = {}
    for t in tasks:
        for a in t.attempts_json or []:
            c = out.setdefault(a.get("node") or "?", {"running": 0, "done": 0, "failed": 0, "requeued": 0,
                                                       "driver lost": 0, "cancelled": 0})
            outcome = a.get("outcome") or "running"
            c[outcome] = c.get(outcome, 0) + 1
    return dict(sorted(out.items()))


@jobs_app.command("cancel")
def jobs_cancel(job: Annotated[str, typer.Argument(help="Job id or prefix.")]) -> None:
    """Cancel a job: pending tasks are cancelled; a running driver stops its workers."""
    store = _store(_settings())
    j = store.jobs.get(job)
    n = store.jobs.cancel(j.id)
    typer.echo(f"cancelled job {j.id} ({n} pending tasks cancelled)")


@jobs_app.command("resume")
def jobs_resume(
    job: Annotated[str, typer.Argument(help="Job id or prefix.")],
    address: AddressOpt = None,
    workers: WorkersOpt = None,
) -> None:
    """Continue a job whose driver stopped: finished work is kept, running tasks restart from their checkpoints."""
    from workflows.jobs.run import run_job

    settings = _settings()
    store = _store(settings)
    j = store.jobs.get(job)
    summary = run_job(j.id, settings, address=ray_address(address, settings), workers=workers)
    typer.echo(f"done: {summary.done} computed, {summary.failed} failed, {summary.retried} retried", err=True)
    print_ranked(store, j.id, settings)


def demo(
    model: Annotated[Optional[str], typer.Option("--model", help="Model reference (default: the bundled demo model).")] = None,
    workers: WorkersOpt = None,
    address: AddressOpt = None,
) -> None:
    """Run a small real screen end to end (three Li-P-S-Cl electrolytes, quick temperatures) and print the ranking."""
    from importlib import resources

    import yaml

    from workflows.jobs.plan import plan_job
    from workflows.jobs.run import run_job
    from workflows.jobs.spec import parse_job_spec

    text = resources.files("workflows.jobs.demo").joinpath("demo-job.yaml").read_text()
    if model is not None:
        text = yaml.safe_dump({**yaml.safe_load(text), "model": model}, sort_keys=False)
    spec = parse_job_spec(text, source="demo-job.yaml")
    settings = _settings()
    store = _store(settings)
    plan = plan_job(spec, settings, store=store, submitted_by=submitter())
    protocol = plan.plan.transport
    at = (f", MD at {'/'.join(f'{t:g}' for t in protocol.temperatures_K)} K, {protocol.production_ps:g} ps each"
          if protocol else "")
    typer.echo(f"demo job {plan.job_id}: {plan.n_candidates} candidates with {spec.model}{at} "
               f"(results in {settings.home})", err=True)
    summary = run_job(plan.job_id, settings, address=ray_address(address, settings), workers=workers)
    typer.echo(f"done in {summary.wall_s / 60:.1f} min: {summary.done} computed, {summary.failed} failed", err=True)
    print_ranked(store, plan.job_id, settings)
