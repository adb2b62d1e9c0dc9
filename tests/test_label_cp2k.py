"""CP2K labelling: real (tiny) CP2K runs; a run SIGKILLed mid-way and restarted labels each structure once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.io import read, write

from killing import kill_label_run_after
from mlip.errors import InputError
from training.label import (
    Basis,
    CP2KSettings,
    label_key,
    run_labelling,
    spin_state,
    valence_electrons,
)


@pytest.fixture(autouse=True)
def cp2k_installed():
    """Like PostgreSQL and Chromium: a missing CP2K FAILS these tests (with what to install); it is not skipped."""
    missing = [what for what, ok in (("cp2k (cp2k_shell)", shutil.which("cp2k_shell")),
                                     ("cp2k-data (/usr/share/cp2k/GTH_POTENTIALS)",
                                      Path("/usr/share/cp2k/GTH_POTENTIALS").is_file())) if not ok]
    if missing:
        pytest.fail(f"CP2K is not installed: {', '.join(missing)} missing; run .ci/test, which installs it, or "
                    "`apt-get install cp2k cp2k-data`")

# As cheap as CP2K gets: minimal basis, low cutoffs. Physics is poor; bookkeeping is what is tested.
CHEAP = dict(basis=Basis.SZV, cutoff_Ry=100.0, rel_cutoff_Ry=20.0, eps_scf=1e-5)


def _structures(n: int) -> list[Atoms]:
    """2-atom LiCl in a small cubic cell: orthorhombic cells take CP2K's fast grid path."""
    frames = []
    for k in range(n):
        a = Atoms("LiCl", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]], cell=[3.3, 3.3, 3.3], pbc=True)
        a.rattle(0.05, seed=k)
        a.info["config_type"] = f"tiny{k}"
        frames.append(a)
    return frames


def test_valence_and_spin_from_gth_file():
    s = CP2KSettings()
    assert valence_electrons(["Li", "P", "S", "Cl"], s) == 3 + 5 + 6 + 7
    even = _structures(1)[0]  # 10 electrons
    assert spin_state(even, s) == (0, 1, False)
    odd = Atoms("Li", cell=[3, 3, 3], pbc=True)  # 3 electrons: doublet, unrestricted
    assert spin_state(odd, s) == (0, 2, True)
    odd.info["charge"] = 1
    assert spin_state(odd, s) == (1, 1, False)
    odd.info["multiplicity"] = 2
    with pytest.raises(InputError, match="multiplicity 2 is impossible"):
        spin_state(odd, s)


def test_kpoint_mesh_rule_and_input():
    from training.label import _input_template

    a = _structures(1)[0]  # 3.3 Å cube
    assert CP2KSettings().kpoint_mesh(a) == (1, 1, 1)
    assert CP2KSettings(kpoint_min_length_A=9.0).kpoint_mesh(a) == (3, 3, 3)
    assert CP2KSettings(kpoint_min_length_A=6.6).kpoint_mesh(a) == (2, 2, 2)  # exactly 2 x 3.3: no extra point
    assert "MONKHORST-PACK 3 3 3" in _input_template(CP2KSettings(), (3, 3, 3))
    assert "KPOINTS" not in _input_template(CP2KSettings(), (1, 1, 1))
    with pytest.raises(InputError, match="k-points need diagonalisation"):
        _input_template(CP2KSettings(scf="ot"), (2, 2, 2))
    assert CP2KSettings(kpoint_min_length_A=9.0).settings_hash() != CP2KSettings().settings_hash()


def test_scf_failure_recorded_and_skipped(tmp_path):
    settings = CP2KSettings(**{**CHEAP, "max_scf": 2, "eps_scf": 1e-10})
    s = run_labelling(_structures(1), tmp_path / "out", settings)
    assert s.n_failed_now == 1 and s.n_labelled_now == 0
    failed = list((tmp_path / "out" / "failed").glob("*.json"))
    assert len(failed) == 1
    record = json.loads(failed[0].read_text())
    assert "converge" in record["error"].lower() or "CP2K failed" in record["error"]
    again = run_labelling(_structures(1), tmp_path / "out", settings)
    assert again.n_failed_before == 1 and again.n_failed_now == 0 and again.n_labelled_now == 0


def test_other_settings_refused_in_same_dir(tmp_path):
    run_labelling([], tmp_path / "out", CP2KSettings(**CHEAP))
    with pytest.raises(InputError, match="other CP2K settings"):
        run_labelling([], tmp_path / "out", CP2KSettings(**{**CHEAP, "cutoff_Ry": 120.0}))


def test_killed_run_restarts_and_labels_each_structure_once(tmp_path):
    structures = _structures(3)
    structures.append(structures[1].copy())  # a duplicate in the input is labelled once
    src = tmp_path / "structures.xyz"
    write(src, structures)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "workflows.cli", "label", str(src), "--out", str(out),
           "--basis", "SZV", "--cutoff-Ry", "100", "--rel-cutoff-Ry", "20", "--eps-scf", "1e-5"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    frames_dir = out / "frames"
    before = kill_label_run_after(cmd, frames_dir, 1, timeout_s=120)  # the next structure's CP2K is running then
    assert 1 <= len(before) < 3, "the kill should land mid-way"

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in frames_dir.glob("*.extxyz")}
    keys = [label_key(a) for a in structures[:3]]
    assert sorted(after) == sorted(f"{k}.extxyz" for k in keys)
    for name, stamp in before.items():
        assert after[name] == stamp, f"{name} was labelled again"
    assert f"{len(before)} already labelled" in done.stdout
    assert f"labelled now {3 - len(before)}" in done.stdout
    collected = read(out / "labelled.xyz", index=":")
    assert [f.info["structure_hash"] for f in collected] == keys  # input order, each exactly once
    frame = collected[0]
    assert frame.info["config_type"] == "tiny0"
    assert frame.info["dft_basis"] == "SZV-MOLOPT-SR-GTH" and frame.info["dft_cutoff_Ry"] == 100.0
    assert frame.info["dft_version"].startswith("CP2K ") and frame.info["dft_scf_steps"] > 0
    assert frame.arrays["REF_forces"].shape == (2, 3) and np.isfinite(frame.arrays["REF_forces"]).all()
    assert frame.info["REF_stress"].shape == (6,)
    # GTH valence energies: ~ -200 eV for Li (q3) plus ~ -400 eV for Cl (q7), so eV and not Hartree
    assert -1000 < frame.info["REF_energy"] < -300
    assert not list((out / "work").glob("*")), "scratch directories are cleaned up"
    assert not list(frames_dir.glob(".*.tmp")), "half-written files of the killed run are removed"

    # the real CP2K labels import into a dataset (eV, eV/Å, eV/Å³ pass the unit checks), provenance kept
    from training.data import import_files, load_dataset

    report = import_files([out], tmp_path / "ds")
    assert report.n_accepted == 3 and not report.rejected
    assert {a.info["dft_basis"] for a in load_dataset(tmp_path / "ds").frames} == {"SZV-MOLOPT-SR-GTH"}
