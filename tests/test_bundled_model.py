"""The bundled models: each loads by name, is what its manifest says, and reproduces its published test errors;
the demo job's model is good enough for the demo.

Checks that would catch a broken or swapped bundle: hash and metadata agree with the file, elements are
exactly those of the model's training dataset (the demo's model: Li, P, S, Cl), errors on each model's held-out
test split (its training dataset, found by hash) stay near the figures its manifest and card report, and the
demo's model runs the demo's MD at the demo's top temperature on both demo electrolytes without an instability.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
BUNDLED = REPO / "mlip" / "bundled"
MANIFEST = json.loads((BUNDLED / "manifest.json").read_text())
NAMES = sorted(MANIFEST["models"])


def _demo_model_name() -> str:
    from workflows.jobs.spec import load_job_spec

    ref = load_job_spec(REPO / "workflows" / "jobs" / "demo" / "demo-job.yaml").model
    assert ref.startswith("bundled:"), f"the demo job must run a bundled model (no download), not {ref}"
    return ref.removeprefix("bundled:")


def _dataset_dir(entry) -> Path:
    """The shipped dataset a bundled model was trained on, found by the dataset hash in its manifest entry."""
    for manifest in sorted((REPO / "training" / "datasets").glob("**/manifest.json")):  # lipscl-dzvp/dataset nests
        if json.loads(manifest.read_text()).get("dataset_hash") == entry["metadata"]["dataset_hash"]:
            return manifest.parent
    raise AssertionError(f"no dataset under training/datasets has hash {entry['metadata']['dataset_hash'][:12]}")


@pytest.fixture(scope="module")
def entry():
    name = _demo_model_name()
    assert name in MANIFEST["models"], f"the demo job needs bundled:{name}"
    return MANIFEST["models"][name]


@pytest.fixture(scope="module")
def loaded(entry):
    from mlip.loader import load_model

    return load_model(f"bundled:{_demo_model_name()}")


@pytest.mark.parametrize("name", NAMES)
def test_manifest_matches_file(name):
    entry = MANIFEST["models"][name]
    data = (BUNDLED / entry["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert (BUNDLED / entry["card"]).exists()
    # the elements the manifest publishes are those the model's training data hold, no more and no fewer
    dataset = json.loads((_dataset_dir(entry) / "manifest.json").read_text())
    assert set(entry["metadata"]["elements"]) == set(dataset["element_atom_counts"])


def test_loads_by_name_with_its_facts(loaded, entry):
    assert loaded.sha256 == entry["sha256"]
    assert loaded.trusted_by == "bundled manifest"
    assert set(loaded.elements) == {"Li", "P", "S", "Cl"}
    assert loaded.n_params == entry["metadata"]["n_params"]
    assert loaded.r_max_A == pytest.approx(entry["metadata"]["r_max_A"])


@pytest.mark.parametrize("name", NAMES)
def test_test_split_errors_near_reported(name):
    """Re-evaluate each bundled model on its dataset's held-out test split: the errors its manifest and card
    publish, within 10 %, and the force error within what the model is for."""
    from mlip.loader import load_model
    from training.data import load_dataset
    from training.evaluate import is_isolated_atom, predict

    entry = MANIFEST["models"][name]
    loaded = load_model(f"bundled:{name}")
    reported = entry["metadata"]["test_errors"]
    frames = [a for a in load_dataset(_dataset_dir(entry)).split("test") if not is_isolated_atom(a)]
    assert len(frames) == reported["n_test_frames"] and len(frames) >= 5
    pred = predict(loaded.module, frames, dtype="float64")
    e_err, f_err = [], []
    for k, atoms in enumerate(frames):
        e_err.append(abs(pred.energies_eV[k] - atoms.info["REF_energy"]) / len(atoms))
        f_err.append(np.abs(pred.forces_eV_A[k] - atoms.arrays["REF_forces"]).ravel())
    e_mae_meV = 1000 * float(np.mean(e_err))
    f_mae_meV = 1000 * float(np.mean(np.concatenate(f_err)))
    assert e_mae_meV == pytest.approx(reported["energy_mae_meV_per_atom"], rel=0.1, abs=0.2)
    assert f_mae_meV == pytest.approx(reported["force_mae_meV_per_A"], rel=0.1)
    assert f_mae_meV < 150.0


def test_short_hot_md_stays_intact(loaded):
    """600 K for 300 fs on Li6PS5Cl (float32, the MD setting): no atom pair closer than 1.5 Å, PS4 intact."""
    from ase import units
    from ase.md.bussi import Bussi
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.neighborlist import neighbor_list

    from training.data import load_dataset

    frames = load_dataset(REPO / "training" / "datasets" / "lipscl").frames
    atoms = next(a for a in frames if a.info.get("config_type") == "Li6PS5Cl:pristine").copy()
    atoms.calc = None
    atoms.calc = loaded.calculator(task="md", device="cpu", dtype="float32")
    MaxwellBoltzmannDistribution(atoms, temperature_K=600, rng=np.random.default_rng(3))
    dyn = Bussi(atoms, 1.0 * units.fs, temperature_K=600, taut=50 * units.fs, rng=np.random.default_rng(4))
    dmin = []

    def record():
        d = neighbor_list("d", atoms, 2.0)
        dmin.append(float(d.min()) if len(d) else 2.0)

    dyn.attach(record, interval=10)
    dyn.run(300)
    assert min(dmin) > 1.5
    i, j, d = neighbor_list("ijd", atoms, 2.6)
    symbols = np.array(atoms.get_chemical_symbols())
    ps = (symbols[i] == "P") & (symbols[j] == "S")
    per_p = np.bincount(i[ps], minlength=len(atoms))[symbols == "P"]
    assert (per_p == 4).all(), f"P-S coordination after MD: {per_p.tolist()}"
    assert atoms.get_temperature() < 1500


def _demo_protocol(**overrides):
    """The transport protocol of the `ionscreen demo` job (workflows/jobs/demo/demo-job.yaml), as the job runs it."""
    from workflows.jobs.spec import load_job_spec

    spec = load_job_spec(REPO / "workflows" / "jobs" / "demo" / "demo-job.yaml")
    protocol = spec.transport.protocol()
    return protocol.model_copy(update=overrides) if overrides else protocol


def _run_hot(name: str, protocol, workdir, loaded):
    from screening.candidates import build_candidate
    from screening.transport.run import calculator_factory_for, run_transport

    result = run_transport(build_candidate(name).structure, calculator_factory_for(loaded, "cpu"), protocol,
                           workdir / name, "Li", model_ref=loaded.ref, model_sha256=loaded.sha256)
    assert len(result.temperatures) == 1
    return result.temperatures[0]


# The demo's model at the demo's top temperature (the quick preset's 1100 K): bundled:lipscl-demo ran away there
# within 1-1.5 ps on Li6PS5Cl and beta-Li3PS4 (its card says so), which is why it was replaced as the demo's model.
@pytest.mark.slow
@pytest.mark.parametrize("name", ["Li6PS5Cl", "beta-Li3PS4"])
def test_demo_candidates_stay_stable_at_the_demo_jobs_top_temperature(name, tmp_path, loaded):
    """What the demo runs, at its hottest: the library structure relaxed, then the demo job's whole MD
    (equilibration and production, 2 fs steps, lean engine, float32) at its top temperature, to the end."""
    protocol = _demo_protocol()
    top = max(protocol.temperatures_K)
    t = _run_hot(name, protocol.model_copy(update={"temperatures_K": (top,)}), tmp_path, loaded)
    assert t.md_status == "completed", t.md_reason
    assert "unstable_md" not in t.flags, t.flags
    assert abs(t.mean_temperature_K - top) < 0.1 * top
    # a number, or the upper bound the analysis gives when 4 ps cannot show the diffusive regime; both with an interval
    assert t.diffusivity_ci95_cm2_s is not None
    assert t.diffusivity_cm2_s is not None or t.diffusivity_upper_bound_cm2_s is not None
