"""Sample data for the web browser's tests, screenshots and load benchmark: real library candidates with result
documents, plots and rows written the way a screening job writes them — but with made-up (plausible) numbers, no MD.

``seed_sample`` builds a small, complete database (documents, MSD and NEB plots, a job with done tasks);
``bulk_seed`` inserts thousands of candidates and results with bulk INSERTs for load tests. Every job and model
reference it creates is named ``sample``/``synthetic`` so nobody mistakes these numbers for computed ones.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

KB_EV_K = 8.617333262e-5

SAMPLE_MODEL_REF = "mace-mp:small"
SAMPLE_MODEL_SHA256 = hashlib.sha256(b"ionscreen synthetic sample model A").hexdigest()
SECOND_MODEL_REF = "models:/lipscl-finetune@production"
SECOND_MODEL_SHA256 = hashlib.sha256(b"ionscreen synthetic sample model B").hexdigest()


@dataclass(frozen=True)
class TransportSample:
    conductivity_300K_mS_cm: float
    activation_energy_eV: float
    log_half_width: float  # 95 % interval of σ(300 K) is σ·exp(∓w)
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class NebSample:
    barriers_eV: tuple[float, ...]  # one per distinct hop, shortest hop first
    percolation_eV: tuple[float | None, float | None, float | None]  # 1D, 2D, 3D thresholds
    flags: tuple[str, ...] = ()


#: Plausible magnitudes (same order as published values), NOT results: for pages, tests and benchmarks only.
TRANSPORT_SAMPLES: dict[str, TransportSample] = {
    "Li10GeP2S12": TransportSample(9.0, 0.22, 0.45),
    "Li6PS5Cl": TransportSample(3.0, 0.26, 0.55),
    "beta-Li3PS4": TransportSample(0.25, 0.36, 0.8, ("non_arrhenius",)),
    "Li3YCl6": TransportSample(0.6, 0.34, 0.7),
    "Li3InCl6": TransportSample(1.2, 0.31, 0.7, ("few_hops",)),
    "Li2S": TransportSample(1e-5, 0.72, 2.0, ("few_hops", "not_diffusive")),
    "Na3PS4-cubic": TransportSample(0.4, 0.28, 0.9),
    "LLZO-cubic": TransportSample(0.5, 0.33, 0.9, ("short_run",)),
}
NEB_SAMPLES: dict[str, NebSample] = {
    "Mo6S8": NebSample((0.28, 0.36, 0.71), (0.28, 0.36, 0.36)),
    "TiS2": NebSample((0.55, 0.93), (0.55, 0.55, 0.93), ("intermediate_minimum",)),
    "FePO4-olivine": NebSample((0.42, 1.4), (0.42, 1.4, 1.4), ("neb_not_converged",)),
    "Li6PS5Cl": NebSample((0.19, 0.31), (0.19, 0.31, 0.31)),
}
DEFAULT_SAMPLE_NAMES = ("Li10GeP2S12", "Li6PS5Cl", "beta-Li3PS4", "Li3YCl6", "Li2S", "Na3PS4-cubic",
                        "Mo6S8", "TiS2", "FePO4-olivine")


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def build_candidate_rows(names=DEFAULT_SAMPLE_NAMES) -> list[dict[str, Any]]:
    """Library candidates as database rows (CandidateRow fields, with the CIF text). About 0.5 s per candidate."""
    from screening.candidates import build_candidate
    from workflows.db import candidate_row

    return [candidate_row(build_candidate(name)).model_dump() for name in names]


# ---------------------------------------------------------------------------------------------- documents
def _transport_document(row: dict, sample: TransportSample, model_ref: str, model_sha: str, rng: random.Random):
    from mlip.version import code_version
    from screening.transport.protocol import preset
    from screening.transport.results import (
        ArrheniusResult,
        Provenance,
        TemperatureResult,
        TransportResult,
    )

    protocol = preset("quick")
    ion_charge = row["working_ion_charge"]
    ea, s300, w = sample.activation_energy_eV, sample.conductivity_300K_mS_cm, sample.log_half_width
    d300 = s300 * 3e-8  # order of magnitude of D*(300 K) in cm²/s for σ in mS/cm at these densities
    temps = []
    for temperature in protocol.temperatures_K:
        factor = math.exp(-ea / KB_EV_K * (1 / temperature - 1 / 300.0)) * rng.uniform(0.85, 1.15)
        d = d300 * factor
        sigma = s300 * factor * 300.0 / temperature
        half = 0.25 if not sample.flags else 0.45
        temps.append(TemperatureResult(
            temperature_K=temperature, mean_temperature_K=temperature * rng.uniform(0.98, 1.02),
            diffusivity_cm2_s=d, diffusivity_ci95_cm2_s=(d * (1 - half), d * (1 + half)),
            diffusivity_std_error_cm2_s=d * half / 2, conductivity_mS_cm=sigma,
            conductivity_ci95_mS_cm=(sigma * (1 - half), sigma * (1 + half)), haven_ratio=rng.uniform(0.3, 0.8),
            ion_charge=ion_charge, n_mobile_ions=24, n_hops=int(40 * factor / (factor + 1e-3)) + 2,
            production_ps=protocol.production_ps, n_frames=200, n_blocks=5, fit_window_fs=(500.0, 4000.0),
            msd_linearity=rng.uniform(0.9, 1.1), framework_max_msd_A2=rng.uniform(0.2, 0.6), volume_A3=1000.0,
            flags=[f for f in sample.flags if f in ("few_hops", "not_diffusive")] if temperature == min(
                protocol.temperatures_K) else [],
            frame_log=f"T{temperature:g}K/frames", msd_plot=f"T{temperature:g}K/msd.png",
        ))
    prefactor = d300 * math.exp(ea / (KB_EV_K * 300.0))
    arrhenius = ArrheniusResult(
        temperatures_K=list(protocol.temperatures_K), activation_energy_eV=ea,
        activation_energy_ci95_eV=(ea - 0.04, ea + 0.04), prefactor_cm2_s=prefactor,
        prefactor_ci95_cm2_s=(prefactor / 3, prefactor * 3), diffusivity_300K_cm2_s=d300,
        diffusivity_300K_ci95_cm2_s=(d300 * math.exp(-w), d300 * math.exp(w)), conductivity_300K_mS_cm=s300,
        conductivity_300K_ci95_mS_cm=(s300 * math.exp(-w), s300 * math.exp(w)), reduced_chi2=rng.uniform(0.5, 2.0),
        flags=[f for f in sample.flags if f not in ("few_hops", "not_diffusive")], plot=None,
    )
    return protocol, TransportResult(
        formula=row["formula"], working_ion=row["working_ion"], ion_charge=ion_charge, n_atoms=row["n_atoms"] * 2,
        supercell=(2, 1, 1), volume_A3=1000.0, protocol=protocol.model_dump(mode="json"),
        provenance=Provenance(model_ref=model_ref, model_sha256=model_sha, protocol_hash=protocol.hash,
                              code_version=code_version(), seed=protocol.seed),
        temperatures=temps, arrhenius=arrhenius, flags=sorted(set(sample.flags)), wall_s=600.0,
        created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def _msd_png(path: Path, temperature_K: float, d_cm2_s: float) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.5), dpi=80)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    lags_ps = [i * 0.1 for i in range(1, 60)]
    slope = 6 * d_cm2_s * 1e4  # Å²/ps
    ax.plot(lags_ps, [slope * t for t in lags_ps], color="k", lw=2, label="tracer (sample)")
    ax.set_xlabel("lag time (ps)")
    ax.set_ylabel("MSD (Å²)")
    ax.set_title(f"MSD at {temperature_K:.0f} K (synthetic sample)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def _neb_document(row: dict, sample: NebSample, model_ref: str, model_sha: str, workdir: Path):
    from mlip.version import code_version
    from screening.neb import NebParameters
    from screening.neb.plots import plot_profile
    from screening.neb.results import (
        NebHopResult,
        NebStructureResult,
        PercolationResult,
        Provenance,
        parameters_hash,
    )

    params = NebParameters()
    parameters = _neb_parameters()
    hops = []
    for i, barrier in enumerate(sample.barriers_eV):
        length = 2.8 + 0.6 * i
        n = params.n_images + 2
        x = [length * k / (n - 1) for k in range(n)]
        y = [barrier * math.sin(math.pi * k / (n - 1)) ** 2 for k in range(n)]
        fx = [length * k / 40 for k in range(41)]
        fy = [barrier * math.sin(math.pi * k / 40) ** 2 for k in range(41)]
        converged = "neb_not_converged" not in sample.flags or i == 0
        profile = {"reaction_coordinate_A": x, "energy_eV": [v - 100.0 for v in y], "energy_relative_eV": y,
                   "fit_reaction_coordinate_A": fx, "fit_energy_relative_eV": fy, "converged": converged,
                   "max_force_eV_A": 0.03 if converged else 0.4}
        name = f"hop{i}"
        profile_file = workdir / f"{name}.profile.json"
        profile_file.write_text(json.dumps(profile))
        plot_file = plot_profile(workdir / f"{name}.png", x, y, fit_reaction_coordinate_A=fx,
                                 fit_energies_rel_eV=fy, title=f"{row['name']} {name} (synthetic sample)",
                                 converged=converged)
        flags = [] if converged else ["neb_not_converged"]
        if "intermediate_minimum" in sample.flags and i == 1:
            flags.append("intermediate_minimum")
        hops.append(NebHopResult(
            name=name, hop_label=i, ion=row["working_ion"], mechanism="interstitial", hop_length_A=length,
            multiplicity=4, barrier_forward_eV=barrier if converged else None,
            barrier_backward_eV=barrier if converged else None,
            barrier_forward_interval_eV=(barrier - 0.01, barrier + 0.02) if converged else None,
            barrier_backward_interval_eV=(barrier - 0.01, barrier + 0.02) if converged else None,
            converged=converged, max_force_eV_A=profile["max_force_eV_A"], fmax_eV_A=params.fmax_eV_A,
            n_images=params.n_images, steps=120, n_atoms=row["n_atoms"] * 4, flags=flags,
            profile_file=str(profile_file), plot_file=str(plot_file),
        ))
    p1, p2, p3 = sample.percolation_eV
    percolation = PercolationResult(
        barrier_1d_eV=p1, barrier_2d_eV=p2, barrier_3d_eV=p3,
        barrier_1d_interval_eV=None if p1 is None else (p1 - 0.01, p1 + 0.02),
        barrier_2d_interval_eV=None if p2 is None else (p2 - 0.01, p2 + 0.02),
        barrier_3d_interval_eV=None if p3 is None else (p3 - 0.01, p3 + 0.02),
        flags=["uses_flagged_hops"] if sample.flags else [],
    )
    provenance = Provenance(model_ref=model_ref, model_sha256=model_sha, calculator="BatchedMACE (synthetic sample)",
                            parameters=parameters, parameters_sha256=parameters_hash(parameters),
                            code_version=code_version())
    document = NebStructureResult(formula=row["formula"], ion=row["working_ion"], mechanism="interstitial",
                                  max_hop_length_A=5.0, n_ion_sites=8, n_distinct_hops=len(hops), hops=hops,
                                  percolation=percolation, provenance=provenance)
    (workdir / "neb_summary.json").write_text(document.model_dump_json(indent=1))
    return document


# ---------------------------------------------------------------------------------------------- the sample database
@dataclass
class SampleDatabase:
    job_id: str
    candidate_ids: dict[str, int]  # candidate name -> id
    result_ids: dict[tuple[str, str], int]  # (candidate name, stage) -> result id (first model)


def seed_sample(store, home: Path, candidate_rows: list[dict[str, Any]], *, seed: int = 0,
                second_model_for: tuple[str, ...] = ("Li6PS5Cl",)) -> SampleDatabase:
    """A sample job over ``candidate_rows`` with done tasks, result rows and their documents under ``home``."""
    from workflows.jobs.plan import task_key, workdir_for

    rng = random.Random(seed)
    job_id = store.jobs.create({"name": "web-sample-synthetic", "model": SAMPLE_MODEL_REF},
                              model_sha256=SAMPLE_MODEL_SHA256)
    ids: dict[str, int] = {}
    result_ids: dict[tuple[str, str], int] = {}
    for row in candidate_rows:
        cid = store.candidates.upsert(row)
        ids[row["name"]] = cid
        store.candidates.link(job_id, cid)
        models = [(SAMPLE_MODEL_REF, SAMPLE_MODEL_SHA256)]
        if row["name"] in second_model_for:
            models.append((SECOND_MODEL_REF, SECOND_MODEL_SHA256))
        for model_index, (model_ref, model_sha) in enumerate(models):
            stages = []
            if row["name"] in TRANSPORT_SAMPLES:
                stages.append("transport")
            if row["name"] in NEB_SAMPLES and model_index == 0:
                stages.append("neb")
            for stage in stages:
                if stage == "transport":
                    sample = TRANSPORT_SAMPLES[row["name"]]
                    if model_index:  # the second model sees the same material a little differently
                        sample = TransportSample(sample.conductivity_300K_mS_cm * 0.6,
                                                 sample.activation_energy_eV + 0.02, sample.log_half_width)
                    protocol, document = _transport_document(row, sample, model_ref, model_sha, rng)
                    protocol_hash, protocol_data = protocol.hash, protocol.physics_dict()
                else:
                    protocol_data = _neb_parameters()
                    protocol_hash = _neb_hash(protocol_data)
                key = task_key(row["structure_hash"], stage, protocol_hash, model_sha)
                workdir = workdir_for(home, key)
                workdir.mkdir(parents=True, exist_ok=True)
                if stage == "transport":
                    for t in document.temperatures:
                        _msd_png(workdir / t.msd_plot, t.temperature_K, t.diffusivity_cm2_s)
                    document_file = workdir / "result.json"
                    document_file.write_text(document.model_dump_json(indent=1))
                    values = {**document.summary().columns(), "seed": document.provenance.seed}
                    code = document.provenance.code_version
                else:
                    neb_document = _neb_document(row, NEB_SAMPLES[row["name"]], model_ref, model_sha, workdir)
                    document_file = workdir / "neb_summary.json"
                    values = neb_document.summary().columns()
                    code = neb_document.provenance.code_version
                if model_index == 0:
                    task_id = store.tasks.add(job_id, cid, stage, key, workdir=str(workdir.relative_to(home)))
                    store.tasks.claim(task_id, "sample-worker")
                values.update(task_key=key, candidate_id=cid, stage=stage, structure_hash=row["structure_hash"],
                              protocol_json=protocol_data, protocol_hash=protocol_hash, model_ref=model_ref,
                              model_sha256=model_sha, code_version=code, mlflow_run_id=None,
                              document_path=str(document_file.relative_to(home)))
                store.results.record(values)
                if model_index == 0:
                    store.tasks.finish(task_id, "done")
                    result_ids[(row["name"], stage)] = store.results.for_key(key)["id"]
    store.jobs.set_status(job_id, "running")
    store.jobs.set_status(job_id, "done")
    store.summaries.refresh()
    return SampleDatabase(job_id, ids, result_ids)


def _neb_parameters() -> dict[str, Any]:
    from screening.neb import NebParameters

    return NebParameters().model_dump(mode="json")


def _neb_hash(parameters: dict[str, Any]) -> str:
    from screening.neb.results import parameters_hash

    return parameters_hash(parameters)


# ---------------------------------------------------------------------------------------------- bulk (benchmarks)
ELECTROLYTE_IONS = ("Li", "Na")
CATHODE_IONS = ("Mg", "Zn", "Ca")
FLAG_POOL = ("few_hops", "not_diffusive", "non_arrhenius", "short_run", "neb_not_converged", "unstable_md")


def bulk_seed(db_url: str, n_candidates: int, *, seed: int = 0, templates: list[dict[str, Any]] | None = None,
              batch: int = 2000, job_id: str | None = None) -> dict[str, int]:
    """Insert ``n_candidates`` synthetic candidates with transport (and for a third, NEB) results in bulk.

    Candidates reuse the CIFs of ``templates`` (library rows) with distinct names and hashes; the numbers are
    random but shaped like real ones (log-normal σ with intervals, Ea, barriers, ~30 % flagged). With ``job_id``
    (an existing job) every candidate is linked to that job. Returns counts.
    """
    import sqlalchemy as sa

    from workflows.db import create_db_engine
    from workflows.db.models import Candidate, JobCandidate, Result, Stage, utc_now

    rng = random.Random(seed)
    templates = templates or [{"name": "Li6PS5Cl", "formula": "Li6PS5Cl", "working_ion": "Li", "working_ion_charge": 1,
                               "kind": "electrolyte", "n_atoms": 52, "cif": None, "metadata_json": {}}]
    engine = create_db_engine(db_url)
    now = utc_now()
    protocol_hash = sha("quick")
    counts = {"candidates": 0, "results": 0}
    # executemany needs the same keys in every row: every number column, None unless set
    from workflows.db.summaries import NEB_COLUMNS, TRANSPORT_COLUMNS

    blank = {c: None for c in (*TRANSPORT_COLUMNS, *NEB_COLUMNS, "diffusivity_300K_cm2_s",
                               "diffusivity_300K_ci95_lo_cm2_s", "diffusivity_300K_ci95_hi_cm2_s", "haven_ratio_mean",
                               "max_temperature_conductivity_mS_cm", "n_hops_converged", "n_hops_total")}
    try:
        with engine.begin() as conn:
            start = conn.scalar(sa.select(sa.func.coalesce(sa.func.max(Candidate.id), 0)))
        for offset in range(0, n_candidates, batch):
            candidates, results = [], []
            for i in range(offset, min(offset + batch, n_candidates)):
                template = templates[i % len(templates)]
                cid = start + i + 1
                structure_hash = sha(f"bulk-{seed}-{i}")
                candidates.append({
                    "id": cid, "structure_hash": structure_hash, "name": f"{template['name']}-v{i:05d}",
                    "formula": template["formula"], "working_ion": template["working_ion"],
                    "working_ion_charge": template["working_ion_charge"], "kind": template["kind"],
                    "n_atoms": template["n_atoms"], "cif": template.get("cif"),
                    "metadata_json": {"synthetic": True, "template": template["name"]}, "created_utc": now,
                })
                common = {**blank, "candidate_id": cid, "structure_hash": structure_hash, "model_ref": SAMPLE_MODEL_REF,
                          "model_sha256": SAMPLE_MODEL_SHA256, "code_version": "synthetic", "seed": i,
                          "mlflow_run_id": None, "document_path": None, "created_utc": now,
                          "protocol_json": None}
                flags = [rng.choice(FLAG_POOL)] if rng.random() < 0.3 else []
                sigma = 10 ** rng.gauss(-1.0, 1.5)
                w = rng.uniform(0.2, 1.5)
                ea = max(0.1, rng.gauss(0.35, 0.1))
                results.append({**common, "task_key": sha(f"bulk-t-{seed}-{i}"), "stage": Stage.TRANSPORT,
                                "protocol_hash": protocol_hash, "flags": flags,
                                "conductivity_300K_mS_cm": sigma, "conductivity_300K_ci95_lo_mS_cm": sigma * math.exp(-w),
                                "conductivity_300K_ci95_hi_mS_cm": sigma * math.exp(w),
                                "activation_energy_eV": ea, "activation_energy_ci95_lo_eV": ea - 0.04,
                                "activation_energy_ci95_hi_eV": ea + 0.04})
                if i % 3 == 0:
                    b = max(0.05, rng.gauss(0.5, 0.2))
                    results.append({**common, "task_key": sha(f"bulk-n-{seed}-{i}"), "stage": Stage.NEB,
                                    "protocol_hash": sha("neb"), "flags": [],
                                    "migration_barrier_eV": b, "percolation_1d_eV": b,
                                    "percolation_2d_eV": b + 0.1, "percolation_3d_eV": b + 0.2,
                                    "n_hops_converged": 3, "n_hops_total": 3})
            with engine.begin() as conn:
                conn.execute(sa.insert(Candidate), candidates)
                conn.execute(sa.insert(Result), results)
                if job_id is not None:
                    conn.execute(sa.insert(JobCandidate), [{"job_id": job_id, "candidate_id": c["id"]}
                                                           for c in candidates])
            counts["candidates"] += len(candidates)
            counts["results"] += len(results)
    finally:
        engine.dispose()
    return counts


__all__ = [
    "DEFAULT_SAMPLE_NAMES",
    "NEB_SAMPLES",
    "SAMPLE_MODEL_REF",
    "SAMPLE_MODEL_SHA256",
    "SampleDatabase",
    "TRANSPORT_SAMPLES",
    "build_candidate_rows",
    "bulk_seed",
    "seed_sample",
]
