"""``ionscreen analyze`` on trajectories in every supported format, with known diffusivities."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from ase import Atoms
from ase.io import write
from typer.testing import CliRunner

from screening.transport.arrhenius import KB_EV_K
from screening.transport.cli_keys import ANALYZE_KEYS, ARRHENIUS_KEYS
from synthetic import random_walk, write_aimd_vasprun
from workflows.cli import app

runner = CliRunner()
CELL = np.diag([12.0, 12.0, 12.0])
EA_EV, D0_A2_FS = 0.30, 5e-3


def d_at(temperature_K: float) -> float:
    return D0_A2_FS * np.exp(-EA_EV / (KB_EV_K * temperature_K))


def _trajectory(temperature_K: float, seed: int, n_frames: int = 1500, ion: str = "Li", n_ions: int = 16):
    mobile, _, drift = random_walk(d_A2_fs=d_at(temperature_K), n_ions=n_ions, n_frames=n_frames,
                                   frame_dt_fs=10.0, seed=seed, drift_A=0.02)
    rng = np.random.default_rng(seed + 1000)
    framework = rng.uniform(0, 12, (1, 8, 3)) + rng.normal(0, 0.08, (n_frames, 8, 3)) + drift[:, None, :]
    positions = np.concatenate([mobile, framework], axis=1)
    symbols = [ion] * n_ions + ["S"] * 8
    return symbols, positions


def _images(symbols, positions, temperature_K=None, with_time=True):
    images = []
    for k, pos in enumerate(positions):
        atoms = Atoms(symbols, positions=pos, cell=CELL, pbc=True)
        atoms.wrap()
        if with_time:
            atoms.info["time_fs"] = 10.0 * k
        if temperature_K is not None:
            atoms.info["temperature_K"] = temperature_K
        images.append(atoms)
    return images


def _close_to_truth(out, temperature_K):
    """Point estimate near the known D (coverage of the interval is tested statistically elsewhere)."""
    lo, hi = out["diffusivity_ci95_cm2_s"]
    truth = d_at(temperature_K) * 0.1  # Å²/fs → cm²/s
    assert lo <= out["diffusivity_cm2_s"] <= hi
    assert abs(out["diffusivity_cm2_s"] / truth - 1) < 0.25


def _invoke(*args):
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def test_single_extxyz_json_has_exactly_the_documented_keys(tmp_path):
    symbols, pos = _trajectory(900.0, seed=1)
    write(tmp_path / "md_900K.extxyz", _images(symbols, pos, 900.0))
    out = json.loads(_invoke("analyze", str(tmp_path / "md_900K.extxyz"), "--ion", "Li", "--json"))
    assert set(out) == set(ANALYZE_KEYS)
    _close_to_truth(out, 900.0)
    assert out["ion_charge"] == 1 and isinstance(out["flags"], list) and out["n_hops"] > 0
    assert out["conductivity_ci95_mS_cm"][0] <= out["conductivity_mS_cm"] <= out["conductivity_ci95_mS_cm"][1]


def test_several_temperatures_add_the_arrhenius_keys_and_recover_ea(tmp_path):
    files = []
    for k, t in enumerate([700.0, 850.0, 1000.0, 1150.0]):
        symbols, pos = _trajectory(t, seed=10 + k)
        files.append(tmp_path / f"md_{t:g}K.extxyz")
        write(files[-1], _images(symbols, pos, t))
    out = json.loads(_invoke("analyze", *map(str, files), "--ion", "Li", "--json", "--plots", str(tmp_path / "plots")))
    assert set(ARRHENIUS_KEYS) <= set(out)
    for per_t in out["per_temperature_K"].values():
        assert set(per_t) == set(ANALYZE_KEYS)
    lo, hi = out["activation_energy_ci95_eV"]
    assert lo <= out["activation_energy_eV"] <= hi and abs(out["activation_energy_eV"] - EA_EV) < 0.05
    assert (tmp_path / "plots" / "arrhenius.png").stat().st_size > 5000
    assert (tmp_path / "plots" / "msd_700K.png").exists()
    text = _invoke("analyze", *map(str, files), "--ion", "Li")
    assert "Ea =" in text and "300 K" in text


def test_xdatcar_needs_timestep_and_temperature(tmp_path):
    symbols, pos = _trajectory(1000.0, seed=3)
    write(tmp_path / "XDATCAR", _images(symbols, pos, with_time=False), format="vasp-xdatcar")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "workflows.cli", "analyze", str(tmp_path / "XDATCAR"), "--ion", "Li"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and "--timestep-fs" in proc.stderr
    out = json.loads(_invoke("analyze", str(tmp_path / "XDATCAR"), "--ion", "Li", "--timestep-fs", "10",
                             "--temperature-K", "1000", "--json"))
    _close_to_truth(out, 1000.0)


def test_vasprun_states_its_timestep_and_temperature(tmp_path):
    symbols, pos = _trajectory(1000.0, seed=4, n_frames=600)
    frac = (pos @ np.linalg.inv(CELL)) % 1.0
    write_aimd_vasprun(tmp_path / "vasprun.xml", symbols, CELL, frac, potim_fs=10.0, tebeg_K=1000.0)
    text = _invoke("analyze", str(tmp_path / "vasprun.xml"), "--ion", "Li")
    assert "Δt = 10 fs (file)" in text and "T = 1000 K (file)" in text
    out = json.loads(_invoke("analyze", str(tmp_path / "vasprun.xml"), "--ion", "Li", "--json"))
    _close_to_truth(out, 1000.0)


def test_ase_traj_temperature_from_momenta(tmp_path):
    from ase.io.trajectory import Trajectory
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    symbols, pos = _trajectory(800.0, seed=5, n_frames=400)
    rng = np.random.default_rng(0)
    with Trajectory(tmp_path / "md.traj", "w") as traj:
        for atoms in _images(symbols, pos, with_time=False):
            MaxwellBoltzmannDistribution(atoms, temperature_K=800.0, rng=rng)
            traj.write(atoms)
    text = _invoke("analyze", str(tmp_path / "md.traj"), "--ion", "Li", "--timestep-fs", "10")
    temp = float(text.split("T = ")[1].split(" K")[0])
    assert 720 < temp < 880 and "(file)" in text.split("T = ")[1].splitlines()[0]


def test_multivalent_ion_uses_its_stated_charge(tmp_path):
    symbols, pos = _trajectory(1000.0, seed=6, ion="Mg", n_ions=8)
    write(tmp_path / "mg.extxyz", _images(symbols, pos, 1000.0))
    mg = json.loads(_invoke("analyze", str(tmp_path / "mg.extxyz"), "--ion", "Mg", "--json"))
    assert mg["ion_charge"] == 2
    as_if_monovalent = json.loads(_invoke("analyze", str(tmp_path / "mg.extxyz"), "--ion", "Mg", "--ion-charge", "1", "--json"))
    assert mg["conductivity_mS_cm"] == pytest.approx(4 * as_if_monovalent["conductivity_mS_cm"])


def test_bad_inputs_exit_cleanly(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "workflows.cli", "analyze", *args],
                              capture_output=True, text=True, env=env, timeout=300)

    missing = run(str(tmp_path / "nope.extxyz"), "--ion", "Li")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    symbols, pos = _trajectory(900.0, seed=7, n_frames=200)
    write(tmp_path / "li.extxyz", _images(symbols, pos, 900.0))
    wrong_ion = run(str(tmp_path / "li.extxyz"), "--ion", "Na")
    assert wrong_ion.returncode == 2 and "no Na" in wrong_ion.stderr
    bad_t = run(str(tmp_path / "li.extxyz"), "--ion", "Li", "--temperature-K", "-5")
    assert bad_t.returncode == 2 and "positive" in bad_t.stderr
    unknown = run(str(tmp_path / "li.extxyz"), "--ion", "Xx")
    assert unknown.returncode == 2 and "Xx" in unknown.stderr
