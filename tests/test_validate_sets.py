"""The conductivity and frames validation sets: the CPU subset follows its stated rule, an OBELiX entry runs through
import → relax → MD → σ(300 K) with a tiny model, bounds stay bounds in the figures, and the frames set reproduces
training.evaluate's errors through the model's ASE calculator."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mlip.errors import InputError
from screening.validation.base import EntryStatus, RunContext
from screening.validation.conductivity import (
    CPU_PROTOCOL,
    MAX_SUBSET_MD_ATOMS,
    ConductivitySet,
    md_cell_atoms,
    parse_conductivity,
    read_obelix,
    select_cpu_subset,
)
from screening.validation.stats import Bound
from protocols import short_protocol

ROOT = Path(__file__).resolve().parents[1]


def test_obelix_data_is_shipped_with_its_licence():
    rows = read_obelix()
    assert len(rows) == 478 and sum(r.cif is not None for r in rows) == 254
    readme = (ROOT / "screening/validation/data/obelix/README.md").read_text()
    assert "CC BY 4.0" in readme and "Therrien" in readme
    assert parse_conductivity("<1E-10") == (1e-10, Bound.UPPER)
    assert parse_conductivity(" 2.5e-3 ") == (2.5e-3, None)
    assert parse_conductivity("") is None
    with pytest.raises(InputError):
        parse_conductivity("n/a")


def test_cpu_subset_follows_its_rule(tmp_path):
    vset = ConductivitySet()
    entries = vset.entries()
    assert [e.key for e in entries] == [e.key for e in ConductivitySet().entries()]  # deterministic
    rows = {r.id: r for r in read_obelix()}
    chosen = [rows[e.data["id"]] for e in entries]
    assert len(chosen) >= 12
    sigmas = [r.sigma_S_cm for r in chosen]
    assert math.log10(max(sigmas) / min(sigmas)) >= 4  # at least four decades
    assert len({r.anion_class for r in chosen}) >= 4  # spread over families
    assert all(r.cif is not None and r.sigma_bound is None for r in chosen)
    assert all(md_cell_atoms(r, CPU_PROTOCOL["supercell_min_length_A"]) <= MAX_SUBSET_MD_ATOMS for r in chosen)
    compounds = [(r.formula, r.space_group) for r in chosen]
    assert len(set(compounds)) == len(compounds)
    # the bundled model's chemistry (Li, P, S, Cl) comes first, so --limit keeps the entries it covers
    assert all(set(e.elements) <= {"Li", "P", "S", "Cl"} for e in entries[:5])
    assert [e.key for e in vset.entries(limit=3)] == [e.key for e in entries[:3]]
    assert len(vset.entries(full=True)) == 254
    with pytest.raises(InputError):
        vset.entries(limit=0)
    assert ConductivitySet(protocol="validation-cpu").fingerprint() == vset.fingerprint()
    assert ConductivitySet(protocol="standard").fingerprint() != vset.fingerprint()
    with pytest.raises(InputError, match="unknown protocol preset"):
        ConductivitySet(protocol="fastest")
    longer = tmp_path / "longer.yaml"
    longer.write_text(json.dumps({**CPU_PROTOCOL, "production_ps": 2 * CPU_PROTOCOL["production_ps"]}))  # JSON is YAML
    assert ConductivitySet(protocol=str(longer)).protocol.production_ps == 2 * CPU_PROTOCOL["production_ps"]
    assert ConductivitySet(protocol=str(longer)).fingerprint() != vset.fingerprint()


def test_subset_rule_on_a_hand_made_table():
    """Even spacing over σ within a class (extremes included), one representative per compound (its median
    measurement), cells over the atom limit and fractional compositions left out."""
    from dataclasses import replace

    template = read_obelix()[0]
    lattice = (5.0, 5.0, 5.0, 90.0, 90.0, 90.0)  # 2x2x2 repeats at 8 Å
    rows = [replace(template, id=f"o{i}", formula=f"Li{i}O", composition=f"Li{2 * i}O2", sigma_S_cm=10.0 ** -k,
                    sigma_bound=None, space_group="P1", lattice=lattice) for i, k in enumerate([12, 10, 8, 6, 4], 1)]
    rows += [replace(rows[2], id=f"dup{j}", sigma_S_cm=10.0 ** -k) for j, k in enumerate([3, 9])]  # Li3O thrice
    rows += [replace(rows[0], id="big", formula="Li99O", composition="Li99O2", sigma_S_cm=1e-2),
             replace(rows[0], id="frac", formula="Li0.5O", composition="Li0.5O2", sigma_S_cm=1e-1)]
    picked = select_cpu_subset(rows, quota={"oxide": 3}, max_md_atoms=150)
    assert [r.id for r in picked] == ["o1", "o3", "o5"]  # 1e-12, the median of Li3O's three (1e-8), 1e-4
    assert [r.id for r in select_cpu_subset(rows, quota={"oxide": 1})] == ["o1"]


def _records(entries, predictions):
    out = []
    for e, (value, bound) in zip(entries, predictions):
        rec = {"status": "ok", **e.data, "key": e.key, "label": e.label, "flags": [] if bound is None else
               ["not_diffusive", "upper_bound"], "wall_s": 1.0}
        if bound is None:
            rec.update(predicted_S_cm=value, predicted_ci95_S_cm=[value / 2, value * 2],
                       predicted_upper_bound_S_cm=None)
        else:
            rec.update(predicted_S_cm=None, predicted_ci95_S_cm=[0.0, value], predicted_upper_bound_S_cm=value)
        out.append(rec)
    return out


def test_summary_ranks_bounds_as_bounds_and_counts_them(tmp_path):
    vset = ConductivitySet()
    entries = vset.entries()
    measured = [e.data["measured_S_cm"] for e in entries]
    # a perfect model for the measured order, except that the 4 slowest only gave a (high) bound
    order = sorted(range(len(entries)), key=lambda i: measured[i])
    slow = order[:4]
    # bounds below the fifth-slowest value, in the reverse of the measured order: as numbers they would mis-rank
    bound_of = {i: measured[order[4]] / (3 * 2 ** rank) for rank, i in enumerate(slow)}
    preds = [(bound_of[i], Bound.UPPER) if i in bound_of else (measured[i] * 1.5, None) for i in range(len(entries))]
    records = _records(entries, preds)
    records[0] = {"status": "uncovered", "key": entries[0].key, "label": "x", "missing_elements": ["P"]}
    summary = vset.summarise(records)
    assert summary["n_bounds"] == 4 - (0 in bound_of) and summary["n_uncovered"] == 1
    assert summary["n_flagged"] == summary["n_bounds"]
    assert summary["spearman_rho"]["n_bounds_y"] == summary["n_bounds"]
    # bounds tie at the bottom with the measured order intact elsewhere: ρ < 1 only through the tie, and the
    # values-only ρ is exactly 1
    assert 0.95 < summary["spearman_rho"]["value"] < 1.0
    assert summary["spearman_rho_values_only"]["value"] == pytest.approx(1.0)
    assert summary["mae_log10_S_cm"] == pytest.approx(math.log10(1.5))
    assert summary["bounds_checked"] == summary["n_bounds"]
    assert summary["bounds_consistent"] == sum(measured[i] <= bound_of[i] for i in slow if i != 0)
    # the same model ranked with its bounds as numbers would claim a perfect ρ it did not measure
    from screening.validation.stats import spearman

    keys = [r for r in records if r["status"] == "ok"]
    as_numbers = spearman([r["measured_S_cm"] for r in keys],
                          [r["predicted_S_cm"] or r["predicted_upper_bound_S_cm"] for r in keys])
    assert as_numbers < summary["spearman_rho"]["value"]
    paths = vset.plot(records, tmp_path, title="test")
    assert [p.name for p in paths] == ["conductivity_parity.png", "conductivity_rank.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)


@pytest.fixture
def soft(soft_model_file, settings, tmp_path):
    from mlip.loader import trust

    copy = tmp_path / "soft.model"
    copy.write_bytes(soft_model_file.read_bytes())
    return trust(str(copy), settings)


def _li2s_obelix(tmp_path) -> Path:
    """An OBELiX-format data directory with one entry: antifluorite Li2S (the soft test model keeps its framework
    intact, as it does not for Li6PS5Cl)."""
    import csv

    import ase.io
    from md_worker import li2s_cell

    data = tmp_path / "obelix"
    (data / "cifs").mkdir(parents=True)
    ase.io.write(data / "cifs" / "li2s.cif", li2s_cell())
    columns = ["ID", "Reduced Composition", "True Composition", "Ionic conductivity (S cm-1)", "Space group", "a", "b",
               "c", "alpha", "beta", "gamma", "Family", "DOI"]
    with (data / "train.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerow(["li2s", "Li2S", "Li32.0S16.0", "1e-10", "Fm-3m", 11.42, 11.42, 5.71, 90, 90, 90, "sulfides", "x"])
        writer.writerow(["nocif", "Li2O", "Li8.0O4.0", "<1E-10", "Fm-3m", 4.6, 4.6, 4.6, 90, 90, 90, "oxides", "y"])
    return data


def test_an_obelix_entry_runs_import_relax_md_and_gives_sigma_or_a_bound(soft, tmp_path):
    from screening.transport.protocol import make_protocol

    # the soft toy potential lets S wander (framework_melted in every transport test); its limit is raised here,
    # where the test is about the path from a CIF to σ(300 K), not about the toy's physics
    protocol = make_protocol(**short_protocol(
        temperatures_K=[500.0, 700.0], production_ps=0.6, supercell_min_length_A=5.5, relax_max_steps=5,
        analysis={"n_blocks": 4, "fit_min_start_fs": 50.0, "min_hops": 1, "framework_msd_limit_A2": 50.0}))
    vset = ConductivitySet(data_dir=_li2s_obelix(tmp_path), protocol=protocol)
    entries = vset.entries(full=True)
    assert [e.key for e in entries] == ["obelix:li2s"]  # the entry without a CIF is not listed
    context = RunContext(model_ref=soft.ref, model_sha256=soft.sha256, loaded=soft,
                         calculator=lambda **kw: soft.calculator(device="cpu", **kw), device="cpu",
                         workdir=tmp_path / "entry")
    record = vset.run_entry(entries[0], context)
    assert record["status"] == EntryStatus.OK.value, record.get("error")
    assert record["import"]["formula"] == "Li2S" and record["md_atoms"] == 48
    assert record["protocol_hash"] == protocol.hash and record["measured_S_cm"] == pytest.approx(1e-10)
    assert [t["temperature_K"] for t in record["temperatures"]] == [500.0, 700.0]
    # the soft model's Li diffuses at both temperatures: σ(300 K) is a number inside its interval
    lo, hi = record["predicted_ci95_S_cm"]
    assert record["predicted_upper_bound_S_cm"] is None and 0 < lo <= record["predicted_S_cm"] <= hi
    assert (tmp_path / "entry" / "transport" / "result.json").exists()
    assert vset.fingerprint() != ConductivitySet().fingerprint()  # protocol and data are part of what was computed


def test_frames_set_reproduces_training_evaluate(tiny_model_copy, settings, tmp_path):
    from mlip.loader import trust
    from training.evaluate import evaluate_frames
    from training.validation_frames import FramesSet

    loaded = trust(str(tiny_model_copy), settings)
    vset = FramesSet(ROOT / "training" / "datasets" / "lipscl", split="test")
    entries = vset.entries(limit=6)
    context = RunContext(model_ref=loaded.ref, model_sha256=loaded.sha256, loaded=loaded,
                         calculator=lambda **kw: loaded.calculator(device="cpu", **kw), device="cpu",
                         workdir=tmp_path)
    records = [{**vset.run_entry(e, context), "key": e.key} for e in entries]
    assert all(r["status"] == "ok" for r in records)
    summary = vset.summarise(records)
    report, _ = evaluate_frames(loaded, vset.frames[:6], dtype="float64")
    assert summary["n_ok"] == 6
    assert summary["energy_mae_meV_atom"]["value"] == pytest.approx(report.overall.energy_mae_meV_atom.value, rel=1e-6)
    assert summary["force_mae_meV_A"]["value"] == pytest.approx(report.overall.force_mae_meV_A.value, rel=1e-6)
    assert summary["stress_mae_meV_A3"]["value"] == pytest.approx(report.overall.stress_mae_meV_A3.value, rel=1e-6)
    assert [p.name for p in vset.plot(records, tmp_path / "plots", title="t")][:2] == ["parity_energy.png",
                                                                                       "parity_forces.png"]
    with pytest.raises(InputError, match="unknown split"):
        FramesSet(ROOT / "training" / "datasets" / "lipscl", split="holdout")


def test_frames_set_with_workers_gives_the_figures_of_one_process(tiny_model_copy, settings, tmp_path):
    """A real set through ``run_validation(workers=2)``: each spawned worker rebuilds the set from its options (the
    dataset), loads the model by its reference with these settings (trust store) and the figures equal one
    process's."""
    from mlip.loader import trust
    from workflows.validate import run_validation

    trust(str(tiny_model_copy), settings)
    options = {"frames": {"dataset": ROOT / "training" / "datasets" / "lipscl", "split": "test"}}
    kwargs = dict(set_options=options, limit=6, device="cpu", mlflow=False, settings=settings)
    one = run_validation([str(tiny_model_copy)], ["frames"], out_dir=tmp_path / "one", **kwargs)
    two = run_validation([str(tiny_model_copy)], ["frames"], out_dir=tmp_path / "two", workers=2, **kwargs)
    a, b = one.models[0].sets["frames"], two.models[0].sets["frames"]
    assert [r["key"] for r in b.records] == [r["key"] for r in a.records] and b.n_run_now == 6
    assert all(r["status"] == "ok" for r in b.records)
    for figure in ("energy_mae_meV_atom", "force_mae_meV_A"):
        assert b.summary[figure]["value"] == pytest.approx(a.summary[figure]["value"], rel=1e-9)
