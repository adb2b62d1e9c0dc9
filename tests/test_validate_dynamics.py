"""The ``dynamics`` validation set: a model's D* at a reference trajectory's state point against the reference's own.

The reference here is made by the model itself (ASE's EMT on a hot Cu–Al liquid, Al as the mobile ion), so an
honest copy must come out consistent with a ratio of 1; a copy that states half the temperature it was run at must
not, because the set runs the model at the stated temperature."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from mlip.errors import InputError
from screening.validation.dynamics import DynamicsSet, compare

RUN_K = 4000.0


def _side(value=None, ci=None, bound=None):
    return {"diffusivity_cm2_s": value, "diffusivity_ci95_cm2_s": ci, "diffusivity_upper_bound_cm2_s": bound}


def test_the_ratio_interval_adds_both_log_half_widths_and_bounds_stay_bounds():
    both = compare(_side(2e-6, [1e-6, 4e-6]), _side(1e-6, [5e-7, 2e-6]))
    half = math.hypot(math.log10(2), math.log10(2))
    assert both["log10_ratio"] == pytest.approx(math.log10(2))
    assert both["log10_ratio_ci95"] == pytest.approx([math.log10(2) - half, math.log10(2) + half])
    assert both["consistent"] is True and both["log10_ratio_bound"] is None
    # asymmetric: the model's upper half-width pairs with the reference's lower one
    skew = compare(_side(1e-5, [9e-6, 1e-4]), _side(1e-6, [9e-7, 1.1e-6]))
    assert skew["log10_ratio_ci95"][1] - 1.0 == pytest.approx(math.hypot(1.0, 1 - math.log10(9)))
    assert skew["consistent"] is False
    # a model with only a bound bounds the ratio from above, against the reference's lower end
    capped = compare(_side(None, [0.0, 1e-7], 1e-7), _side(1e-6, [5e-7, 2e-6]))
    assert capped["log10_ratio"] is None and capped["log10_ratio_bound"] == {"upper": pytest.approx(math.log10(0.2))}
    assert capped["consistent"] is False
    assert compare(_side(None, [0.0, 1e-5], 1e-5), _side(1e-6, [5e-7, 2e-6]))["consistent"] is True
    # a reference with only a bound bounds it from below
    low = compare(_side(1e-5, [5e-6, 2e-5]), _side(None, [0.0, 1e-6], 1e-6))
    assert low["log10_ratio_bound"] == {"lower": pytest.approx(math.log10(5))} and low["consistent"] is False
    assert compare(_side(None, None, 1e-6), _side(None, None, 1e-6))["consistent"] is None


@pytest.fixture(scope="module")
def emt_reference(tmp_path_factory):
    """2 ps of a 32-atom Cu16Al16 liquid under EMT at 4000 K, frames 20 fs apart, as an AIMD code would write it;
    and the same frames stating 2000 K."""
    import ase.io
    from ase import units
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    rng = np.random.default_rng(0)
    atoms = bulk("Cu", "fcc", a=3.85, cubic=True).repeat((2, 2, 2))
    for i in rng.choice(len(atoms), 16, replace=False):
        atoms[i].symbol = "Al"
    atoms.calc = EMT()
    MaxwellBoltzmannDistribution(atoms, temperature_K=RUN_K, rng=rng)
    dyn = Langevin(atoms, 2 * units.fs, temperature_K=RUN_K, friction=0.02, rng=rng)
    dyn.run(150)
    frames = []
    for k in range(100):
        dyn.run(10)
        frame = atoms.copy()
        frame.info = {"time_fs": 20.0 * k, "temperature_K": RUN_K}
        frames.append(frame)
    d = tmp_path_factory.mktemp("aimd")
    honest, wrong = d / "cual_4000K.extxyz", d / "cual_says_2000K.extxyz"
    ase.io.write(honest, frames)
    for f in frames:
        f.info["temperature_K"] = RUN_K / 2
    ase.io.write(wrong, frames)
    return honest, wrong


def test_the_model_runs_at_the_references_state_point_and_a_wrong_temperature_shows(tmp_path, emt_reference):
    from workflows.validate import run_validation

    honest, wrong = emt_reference
    vset = DynamicsSet(trajectories=[honest, wrong], ion="Al")
    keys = [e.key for e in vset.entries()]
    assert keys[0] == "aimd:lgps-600K" and keys[1].startswith("file:cual_4000K-") and len(keys) == 3
    result = run_validation(["ase:emt"], ["dynamics"], out_dir=tmp_path, mlflow=False, device="cpu",
                            set_options={"dynamics": {"trajectories": [honest, wrong], "ion": "Al"}}, workers=2)
    run = result.models[0].sets["dynamics"]
    by_key = {r["key"]: r for r in run.records}
    assert by_key["aimd:lgps-600K"]["status"] == "uncovered"  # EMT has no Li, P, S or Ge
    good, bad = by_key[keys[1]], by_key[keys[2]]
    assert good["status"] == bad["status"] == "ok"
    # the state point: the reference's cell (not repeated), its temperature and its length
    for rec, target, frames in ((good, RUN_K, 100), (bad, RUN_K / 2, 100)):
        assert rec["model"]["volume_A3"] == pytest.approx(rec["reference"]["volume_A3"], rel=1e-9)
        assert rec["model"]["mean_temperature_K"] == pytest.approx(target, rel=0.1)
        assert rec["model_production_ps"] == pytest.approx((frames - 1) * 0.02)
        assert rec["model"]["n_frames"] == rec["reference"]["n_frames"] == frames
    # the same energy surface at the same state point: D* agrees within its interval
    assert good["reference"]["diffusivity_cm2_s"] and good["model"]["diffusivity_cm2_s"]
    assert good["consistent"] is True and abs(good["log10_ratio"]) < 0.3
    # run at the stated 2000 K, the model is slower than the 4000 K trajectory, beyond the interval
    assert bad["consistent"] is False
    ratio_hi = bad["log10_ratio_ci95"][1] if bad["log10_ratio"] is not None else bad["log10_ratio_bound"]["upper"]
    assert ratio_hi < 0
    assert run.summary["n_compared"] == 2 and run.summary["n_consistent"] == 1
    assert (tmp_path / "report.md").read_text().count("cual") >= 2
    assert list(tmp_path.glob("models/*/dynamics/*/plots/dynamics_parity.png"))


def test_bad_references_are_refused_before_anything_runs(tmp_path, emt_reference):
    import ase.io

    honest, _ = emt_reference
    with pytest.raises(InputError, match="does not exist"):
        DynamicsSet(trajectories=[tmp_path / "missing.extxyz"])
    with pytest.raises(InputError, match=r"several working ions \(Al, Cu\); name the mobile one with --ion"):
        DynamicsSet(trajectories=[honest])
    with pytest.raises(InputError, match="has no Li atoms"):
        DynamicsSet(trajectories=[honest], ion="Li")
    with pytest.raises(InputError, match="'Xx' is not a working ion"):
        DynamicsSet(trajectories=[honest], ion="Xx")
    with pytest.raises(InputError, match="given twice"):
        DynamicsSet(trajectories=[honest, honest], ion="Al")
    frames = ase.io.read(honest, index=":3")
    for f in frames:
        del f.info["temperature_K"]
    bare = tmp_path / "no_temperature.extxyz"
    ase.io.write(bare, frames)
    with pytest.raises(InputError, match=r"no_temperature.extxyz: frames 0 and 1 must state temperature_K \(in K\)"):
        DynamicsSet(trajectories=[bare], ion="Al")
    garbage = tmp_path / "garbage.extxyz"
    garbage.write_text("not a trajectory\n")
    with pytest.raises(InputError, match="could not read a trajectory from .*garbage.extxyz"):
        DynamicsSet(trajectories=[garbage], ion="Al")
    from typer.testing import CliRunner

    from workflows.cli import app

    for args, message in ((["--set", "conductivity", "--trajectory", str(honest)], "add --set dynamics"),
                          (["--set", "dynamics", "--ion", "Al"], "--ion names the mobile ion of --trajectory files")):
        result = CliRunner().invoke(app, ["validate", "ase:emt", *args, "--out", str(tmp_path), "--no-mlflow"])
        assert isinstance(result.exception, InputError) and message in str(result.exception)
    assert not list(Path(tmp_path).glob("models/*"))
