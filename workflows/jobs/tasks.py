"""One screening task = one (candidate, stage): the plain function a worker runs, and its result row.

Workers call :func:`run_task` with a :class:`workflows.jobs.plan.TaskSpec` and the loaded model (refused unless it is
the one the job pinned); it runs the science (``screening.transport`` or
``screening.neb``) in the task's own work directory — so a retried task resumes from its MD
checkpoints — and returns a small row of numbers (with intervals, flags and provenance) for the
driver to store: the result document's typed summary as columns, plus provenance. Big things (trajectories,
profiles, plots) stay in files referenced by the row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from mlip.version import code_version
from screening.stages import Stage
from workflows.jobs.plan import TaskSpec, workdir_for


def neb_structure(candidate):
    """Structure and insertion sites for NEB: a cathode host is treated in the dilute limit.

    For a host with insertion sites, the inserted ions are removed and their sites join the empty ones,
    so one ion hops through the empty framework (the usual single-ion barrier for intercalation hosts).
    Electrolytes hop by the vacancy mechanism among their own ions.
    """
    if not candidate.insertion_sites_frac:
        return candidate.structure, None
    host = candidate.structure.copy()
    occupied = [list(site.frac_coords) for site in host if site.specie.symbol == candidate.working_ion]
    host.remove_species([sp for sp in host.composition if sp.symbol == candidate.working_ion])
    return host, occupied + [list(x) for x in candidate.insertion_sites_frac]


def run_task(
    spec: TaskSpec,
    loaded,
    *,
    home: Path,
    device: str = "auto",
    progress: Callable[[str, dict], None] | None = None,
    engines: dict | None = None,
) -> dict:
    """Run one task with ``loaded``, which must be the model the task was planned with (``spec.model``).

    Returns the result row (numbers, flags, provenance, document path relative to ``home``). Exceptions
    propagate: the driver decides whether they are permanent (bad input, wrong model) or retryable.
    ``engines``: a dict the caller keeps between tasks (a worker does), so the model's MD engines are built once
    per worker instead of once per task.
    """
    spec.model.check(loaded.sha256)  # before any work: nothing may be computed, let alone stored, with another model
    progress = progress or (lambda stage, info: None)
    candidate = spec.candidate
    workdir = workdir_for(home, spec.task_key)
    workdir.mkdir(parents=True, exist_ok=True)
    loaded.check_elements([el.symbol for el in candidate.structure.composition.elements]
                          + [candidate.working_ion], what=f"candidate {candidate.name}")

    if spec.stage is Stage.TRANSPORT:
        from screening.transport.run import calculator_factory_for, run_transport

        factory = calculator_factory_for(loaded, device)
        if engines is not None:
            factory = engines.setdefault((loaded.sha256, device), factory)
        result = run_transport(
            candidate.structure, factory, spec.transport, workdir, candidate.working_ion,
            charge=candidate.working_ion_charge, model_ref=loaded.ref, model_sha256=loaded.sha256,
            progress=lambda s, info: progress(s, info), home=home,
        )
        row = {**result.summary().columns(), "seed": result.provenance.seed}
        document = workdir / "result.json"
    else:
        from screening.neb import neb_for_structure
        from screening.neb.driver import neb_engine_for

        settings = spec.neb
        engine = neb_engine_for(loaded, device)  # the family's batched evaluator, else its ASE calculator
        structure, sites = neb_structure(candidate)
        result = neb_for_structure(
            structure, candidate.working_ion, engine, settings.parameters(),
            insertion_sites_frac=sites, **settings.driver_options(), out_dir=workdir, home=home,
            progress=lambda i, n, hop: progress("hop", {"done": i + 1, "total": n}),
        )
        row = result.summary().columns()
        document = workdir / "neb_summary.json"
    row.update(
        task_key=spec.task_key,
        stage=str(spec.stage),
        structure_hash=candidate.structure_hash,
        protocol_json=spec.protocol,
        protocol_hash=spec.protocol_hash(spec.stage),
        model_ref=loaded.ref,
        model_sha256=loaded.sha256,
        code_version=code_version(),
        document_path=str(document.relative_to(home)),
    )
    return row
