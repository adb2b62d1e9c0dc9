"""The transport protocol end to end with a tiny MACE: documents, flags, plots, adaptive runs, resume, bad input."""

from __future__ import annotations

import json
import time

import pytest
import yaml
from ase import Atoms

from mlip.errors import InputError
from mlip.loader import trust
from screening.transport.protocol import make_protocol, preset
from screening.transport.results import TransportResult
from screening.transport.run import calculator_factory_for, load_result, run_transport
from md_worker import li2s_cell
from protocols import short_protocol

SMALL = short_protocol(temperatures_K=[500.0, 700.0], equilibration_ps=0.1, production_ps=1.2,
                       checkpoint_interval_ps=0.2, supercell_min_length_A=5.5)


@pytest.fixture
def soft(soft_model_file, settings, tmp_path):
    copy = tmp_path / "soft.model"
    copy.write_bytes(soft_model_file.read_bytes())
    return trust(str(copy), settings)


def test_protocol_presets_and_hash():
    quick, standard = preset("quick"), preset("standard")
    assert len(standard.temperatures_K) >= 4 and standard.production_ps >= 100 and standard.supercell_min_length_A >= 10
    assert quick.hash != standard.hash and len(quick.hash) == 64
    assert preset("quick").hash == quick.hash  # deterministic
    renamed = make_protocol(**{**quick.model_dump(), "name": "mine"})
    assert renamed.hash == quick.hash  # the name is not physics
    assert preset("quick", seed=1).hash != quick.hash and preset("quick", seed=1).name == "custom"
    with pytest.raises(InputError, match="unknown protocol preset"):
        preset("fast")
    with pytest.raises(InputError, match="sample_interval_fs"):
        make_protocol(**{**SMALL, "sample_interval_fs": 3.0})  # not a whole number of 2 fs steps
    with pytest.raises(InputError, match="adaptive"):
        make_protocol(**SMALL, target_rel_half_width=0.2)


def test_a_protocol_is_a_preset_or_a_yaml_file_of_its_fields(tmp_path):
    """``ionscreen md --protocol`` and ``validate --protocol`` read the same thing: a preset name, or a YAML file whose
    fields make the protocol (overrides on top); anything else is refused with the name and the file."""
    from screening.transport.protocol import preset_or_file

    assert preset_or_file("quick").hash == preset("quick").hash
    path = tmp_path / "longer.yaml"
    quick = preset("quick").model_dump(mode="json")
    path.write_text(yaml.safe_dump({**quick, "name": "longer", "production_ps": 10.0}))
    longer = preset_or_file(str(path))
    assert longer.name == "longer" and longer.production_ps == 10.0 and longer.hash != preset("quick").hash
    assert preset_or_file(str(path), seed=3).seed == 3
    with pytest.raises(InputError, match="unknown protocol preset 'nowhere.yaml'"):
        preset_or_file("nowhere.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(InputError, match="list.yaml must hold a mapping"):
        preset_or_file(str(tmp_path / "list.yaml"))
    (tmp_path / "bad.yaml").write_text("production_ps: [\n")
    with pytest.raises(InputError, match="bad.yaml is not valid YAML"):
        preset_or_file(str(tmp_path / "bad.yaml"))
    (tmp_path / "wrong.yaml").write_text("production_ps: -1\n")
    with pytest.raises(InputError, match="production_ps"):
        preset_or_file(str(tmp_path / "wrong.yaml"))


def test_run_transport_writes_a_complete_result_and_resumes(soft, tmp_path):
    protocol = make_protocol(**SMALL)
    work = tmp_path / "run"
    stages = []
    result = run_transport(li2s_cell(), calculator_factory_for(soft, "cpu"), protocol, work, "Li",
                           model_ref=soft.ref, model_sha256=soft.sha256, progress=lambda s, i: stages.append(s))
    # the lean engine (default) runs both temperatures in one batch: one "md" stage, fractional progress
    assert stages[0] == "relax" and stages.count("md") == 1 and stages[-1] == "analyse"
    assert stages.count("temperature") >= 10
    assert result.n_atoms == 48 and result.supercell == (1, 1, 1) and result.ion_charge == 1
    prov = result.provenance
    assert prov.model_sha256 == soft.sha256 and prov.protocol_hash == protocol.hash and prov.seed == 0 and prov.code_version
    assert prov.md_engine["md_engine"] == "lean" and prov.md_engine["md_batch_source"] == "measured"
    assert 1 <= prov.md_engine["md_batch_systems"] <= 2
    for t in result.temperatures:
        assert t.md_status == "completed" and t.md_resumed_from_step is None  # ran in one go
        assert t.diffusivity_cm2_s is not None and t.diffusivity_ci95_cm2_s[0] <= t.diffusivity_cm2_s <= t.diffusivity_ci95_cm2_s[1]
        assert t.conductivity_mS_cm > 0 and t.n_frames == 121 and t.production_ps == pytest.approx(1.2)
        assert abs(t.mean_temperature_K - t.temperature_K) < 0.15 * t.temperature_K
        assert "thermostat_off" not in t.flags
        assert (work / t.msd_plot).stat().st_size > 5000 and (work / t.frame_log / "meta.json").exists()
    assert isinstance(result.flags, list)
    saved = load_result(work)
    assert saved == TransportResult.model_validate_json((work / "result.json").read_text())
    assert json.loads((work / "protocol.json").read_text())["hash"] == protocol.hash
    assert (work / "relaxed.extxyz").exists()
    # re-running continues from what is there: no MD is redone, the numbers are the same
    start = time.perf_counter()
    again = run_transport(li2s_cell(), calculator_factory_for(soft, "cpu"), protocol, work, "Li",
                          model_ref=soft.ref, model_sha256=soft.sha256)
    assert time.perf_counter() - start < 0.5 * result.wall_s
    assert [t.diffusivity_cm2_s for t in again.temperatures] == [t.diffusivity_cm2_s for t in result.temperatures]


def test_adaptive_run_extends_until_budget_and_says_so(soft, tmp_path):
    protocol = make_protocol(**{**SMALL, "temperatures_K": (600.0,), "production_ps": 0.9},
                             target_rel_half_width=0.001, extension_ps=0.3, max_production_ps=1.5)
    result = run_transport(li2s_cell(), calculator_factory_for(soft, "cpu"), protocol, tmp_path / "a", "Li")
    t = result.temperatures[0]
    assert t.extensions == 2 and t.production_ps == pytest.approx(1.5) and "target_not_met" in t.flags
    assert t.md_resumed_from_step is None  # planned extensions are not interruptions
    # the extended trajectory is the one an uninterrupted 1.5 ps run gives (same frames)
    plain = make_protocol(**{**SMALL, "temperatures_K": (600.0,), "production_ps": 1.5})
    run_transport(li2s_cell(), calculator_factory_for(soft, "cpu"), plain, tmp_path / "p", "Li")
    assert (tmp_path / "a/T600K/frames/mobile.f32").read_bytes() == (tmp_path / "p/T600K/frames/mobile.f32").read_bytes()
    easy = make_protocol(**{**SMALL, "temperatures_K": (600.0,), "production_ps": 0.9},
                         target_rel_half_width=100.0, extension_ps=0.3, max_production_ps=1.5)
    t = run_transport(li2s_cell(), calculator_factory_for(soft, "cpu"), easy, tmp_path / "b", "Li").temperatures[0]
    assert t.extensions == 0 and t.production_ps == pytest.approx(0.9) and "target_not_met" not in t.flags


def test_unstable_model_gives_flags_not_numbers(tiny_model_copy, settings, tmp_path):
    loaded = trust(str(tiny_model_copy), settings)  # random MACE without a repulsive core: collapses
    for engine in ("lean", "ase"):
        protocol = make_protocol(**{**SMALL, "temperatures_K": (1500.0, 1800.0), "relax": False, "md_engine": engine})
        result = run_transport(li2s_cell(), calculator_factory_for(loaded, "cpu"), protocol, tmp_path / engine, "Li")
        assert result.provenance.md_engine["md_engine"] == engine
        for t in result.temperatures:
            assert "unstable_md" in t.flags and t.diffusivity_cm2_s is None and t.md_reason
    for t in result.temperatures:
        assert "unstable_md" in t.flags and t.diffusivity_cm2_s is None and t.md_reason
    assert result.arrhenius.activation_energy_eV is None and "few_temperatures" in result.arrhenius.flags


def test_bad_structures_fail_before_any_md(soft, tmp_path):
    protocol = make_protocol(**SMALL)
    factory = calculator_factory_for(soft, "cpu")
    no_li = li2s_cell()
    no_li.symbols[no_li.symbols == "Li"] = "Cl"
    overlapping = li2s_cell()
    overlapping.positions[1] = overlapping.positions[0] + [0.2, 0.0, 0.0]
    molecule = Atoms("Li2S", positions=[[0, 0, 0], [2.3, 0, 0], [0, 2.3, 0]])
    for bad, match in [(no_li, "no Li"), (overlapping, "overlapping"), (molecule, "not periodic")]:
        work = tmp_path / match.replace(" ", "_")
        with pytest.raises(InputError, match=match):
            run_transport(bad, factory, protocol, work, "Li")
        assert not list(work.glob("T*K"))


def test_lean_engine_needs_a_mace_model(tmp_path):
    from ase.calculators.emt import EMT

    protocol = make_protocol(**{**SMALL, "relax": False})
    with pytest.raises(InputError, match="md_engine 'lean' runs MACE models only"):
        run_transport(li2s_cell(), lambda task, dtype=None: EMT(), protocol, tmp_path / "emt", "Li")
    with pytest.raises(InputError, match="md_engine"):
        make_protocol(**{**SMALL, "md_engine": "lammps"})


def test_md_frames_agree_with_pymatgen_diffusion_analyzer(soft, tmp_path):
    """Our analysis of a real MD frame log equals pymatgen-analysis-diffusion's on the same frames and window."""
    import numpy as np
    from pymatgen.analysis.diffusion.analyzer import DiffusionAnalyzer
    from pymatgen.core import Lattice, Species, Structure

    from screening.transport.diffusion import analyze_diffusion, nernst_einstein_factor
    from screening.transport.framelog import FrameLog

    protocol = make_protocol(**{**SMALL, "temperatures_K": (700.0,), "production_ps": 4.0, "relax": False})
    run_transport(li2s_cell(), calculator_factory_for(soft, "cpu"), protocol, tmp_path / "r", "Li")
    data = FrameLog(tmp_path / "r/T700K/frames").read()
    assert data.meta["framework_rotors"] == {}  # the MD path records polyanions; Li2S's S2- is none
    n_li = data.mobile_A.shape[1]
    # pymatgen sees the Li ions plus one framework site moving with the framework centroid
    positions = np.concatenate([data.mobile_A, data.framework_centroid_A[:, None, :]], axis=1)
    lattice = Lattice(data.meta["cell_A"])
    structure = Structure(lattice, [Species("Li", 1)] * n_li + [Species("S", -2)], positions[0], coords_are_cartesian=True)
    dt = float(data.times_fs[1] - data.times_fs[0])
    pmg = DiffusionAnalyzer(structure, np.transpose(positions - positions[0], (1, 0, 2)), "Li", 700, int(dt), 1,
                            smoothed="max", min_obs=n_li * 2)  # lags 1-2 ps
    ours = analyze_diffusion(data.mobile_A, data.times_fs, framework_centroid_A=data.framework_centroid_A,
                             lag_indices=np.rint(pmg.dt / dt).astype(int), weighting="inverse_lag")
    factor = nernst_einstein_factor(n_li, lattice.volume, 1, 700)
    assert ours.tracer.value == pytest.approx(pmg.diffusivity, rel=0.01)
    assert ours.charge.value == pytest.approx(pmg.chg_diffusivity, rel=0.01)
    assert ours.tracer.value * factor == pytest.approx(pmg.conductivity, rel=0.01)
    assert ours.haven_ratio == pytest.approx(pmg.haven_ratio, rel=0.01)


def test_md_command_runs_and_resumes(soft, tmp_path):
    import os
    import subprocess
    import sys

    import yaml
    from ase.io import write

    write(tmp_path / "Li2S.cif", li2s_cell())
    (tmp_path / "proto.yaml").write_text(yaml.safe_dump({**SMALL, "temperatures_K": [600.0], "production_ps": 0.9}))
    cmd = [sys.executable, "-m", "workflows.cli", "md", str(tmp_path / "Li2S.cif"), "--model", str(soft.path),
           "--ion", "Li", "--protocol", str(tmp_path / "proto.yaml"), "--out", str(tmp_path / "out"), "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "D* (cm²/s)" in proc.stdout and "result.json" in proc.stdout
    first = json.loads((tmp_path / "out/result.json").read_text())
    proc = subprocess.run(cmd + ["--json"], capture_output=True, text=True, env=os.environ, timeout=600)
    assert proc.returncode == 0, proc.stderr
    again = json.loads(proc.stdout)
    assert again["temperatures"][0]["diffusivity_cm2_s"] == first["temperatures"][0]["diffusivity_cm2_s"]
    assert again["provenance"]["model_sha256"] == soft.sha256
    bad = subprocess.run(cmd[:-2] + ["--out", str(tmp_path / "bad"), "--device", "cpu", "--temperatures-K", "-5"],
                         capture_output=True, text=True, env=os.environ, timeout=600)
    assert bad.returncode == 2 and "temperatures_K" in bad.stderr and not (tmp_path / "bad" / "T-5K").exists()
