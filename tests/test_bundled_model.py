"""The bundled demo model: it loads by name, is what its manifest says, and is good enough for the demo.

Checks that would catch a broken or swapped bundle: hash and metadata agree with the file, elements are
exactly Li, P, S, Cl, errors on the dataset's held-out test split stay near the figures its card reports,
and a short hot MD run of the demo's first candidate neither explodes nor loses its framework.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
BUNDLED = REPO / "mlip" / "bundled"
DATASET = REPO / "training" / "datasets" / "lipscl"


@pytest.fixture(scope="module")
def entry():
    manifest = json.loads((BUNDLED / "manifest.json").read_text())
    assert "lipscl-demo" in manifest["models"], "the demo job needs bundled:lipscl-demo"
    return manifest["models"]["lipscl-demo"]


@pytest.fixture(scope="module")
def loaded(entry):
    from mlip.loader import load_model

    return load_model("bundled:lipscl-demo")


def test_manifest_matches_file(entry):
    data = (BUNDLED / entry["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert (BUNDLED / entry["card"]).exists()
    assert entry["metadata"]["elements"] == ["Li", "P", "S", "Cl"]
    assert entry["metadata"]["dataset_hash"] == json.loads((DATASET / "manifest.json").read_text())["dataset_hash"]


def test_loads_by_name_with_its_facts(loaded, entry):
    assert loaded.sha256 == entry["sha256"]
    assert loaded.trusted_by == "bundled manifest"
    assert set(loaded.elements) == {"Li", "P", "S", "Cl"}
    assert loaded.n_params == entry["metadata"]["n_params"]
    assert loaded.r_max_A == pytest.approx(entry["metadata"]["r_max_A"])


def test_test_split_errors_near_reported(loaded, entry):
    """Re-evaluate the held-out test split: the errors the card reports, within 10 %, and finite stresses."""
    from training.data import load_dataset
    from training.evaluate import is_isolated_atom, predict

    reported = entry["metadata"]["test_errors"]
    frames = [a for a in load_dataset(DATASET).split("test") if not is_isolated_atom(a)]
    assert len(frames) >= 5
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

    frames = load_dataset(DATASET).frames
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


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="known defect of the shipped bundled:lipscl-demo (issue 6): both candidates "
                   "collapse (atoms < 1 A apart) within ~1 ps at 1100 K; strict, so a model that fixes it turns this red "
                   "until the marker goes")
@pytest.mark.parametrize("name", ["Li6PS5Cl", "beta-Li3PS4"])
def test_demo_candidates_stay_stable_at_the_quick_protocols_top_temperature(name, tmp_path, settings):
    """What the demo runs, at its hottest: the library structure relaxed, 1100 K, 2 fs steps, lean engine.

    The shipped model collapses both within 0.6–1.6 ps (atoms 0.2–0.9 Å apart), which is why the demo
    shows them flagged ``unstable_md``; a retrained model (with ZBL core, 191 frames) was worse: Li–Li
    collapse within 100 fs at 600 K. 1.5 ps must run to the end without an instability verdict.
    """
    from screening.candidates import build_candidate
    from screening.transport.protocol import preset
    from screening.transport.run import calculator_factory_for, run_transport

    from mlip.loader import load_model

    loaded = load_model("bundled:lipscl-demo", settings)
    protocol = preset("quick", temperatures_K=(1100.0,), equilibration_ps=0.3, production_ps=1.2)
    candidate = build_candidate(name)
    result = run_transport(candidate.structure, calculator_factory_for(loaded, "cpu"), protocol, tmp_path / name, "Li",
                           model_ref=loaded.ref, model_sha256=loaded.sha256)
    t = result.temperatures[0]
    assert t.md_status == "completed", t.md_reason
    assert "unstable_md" not in t.flags, t.flags
    assert abs(t.mean_temperature_K - 1100.0) < 0.1 * 1100.0
