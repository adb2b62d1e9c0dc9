"""The lean engine samples the same physics as the ASE path (float32, the default for MD).

Exactness in float64 is shown in test_engine.py / test_engine_batch.py; here both paths run in float32,
where trajectories part within a few hundred steps, and their statistics are compared: the
temperature distribution (mean, and the canonical width sqrt(2/(3N))) and the tracer diffusivity with
its 95% interval, from the same analysis code. Both paths use the same seeds (common random numbers:
the Bussi thermostat then keeps the two runs' statistics close, so the comparison is sharp); across
seeds, 1 ps means of T spread by ~7% on this 24-atom system, hence the looser bounds against theory.
The soft test model makes a hot, fluid Li–S system, so D is well defined within 1 ps.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np

from engine_batch_worker import unit_cell
from md_worker import SEGMENT
from mlip.engine import LeanMACE
from screening.transport.analysis import analyze_frames
from screening.transport.batch_md import MDJob, run_md_batch
from screening.transport.framelog import FrameLog
from screening.transport.md import MDStatus, run_md
from screening.transport.protocol import AnalysisSettings

TEMPERATURE_K = 1000.0
PHYSICS = replace(SEGMENT, temperature_K=TEMPERATURE_K, equilibration_steps=50, production_steps=500,
                  sample_every_steps=5, checkpoint_every_steps=500, thermostat_time_constant_fs=50.0)
ANALYSIS = AnalysisSettings(n_blocks=4, fit_min_start_fs=50.0, min_hops=1)


def _statistics(workdir):
    data = FrameLog(workdir / "frames").read()
    result, _ = analyze_frames(data, temperature_K=TEMPERATURE_K, ion_charge=1, settings=ANALYSIS)
    assert result.diffusivity_cm2_s is not None, result.flags
    return data.temperature_K, result


def test_engine_and_ase_sample_the_same_temperatures_and_diffusivity(tmp_path):
    from mlip._mace import import_mace
    from mlip.testing import build_mace

    import_mace()
    from mace.calculators import MACECalculator

    module = build_mace([3, 15, 16, 17], seed=1, pair_repulsion=True, interaction_scale=0.02, num_interactions=1, max_ell=1)
    n_atoms, seeds = 24, (0, 1)
    engine_dirs = [tmp_path / f"engine{s}" for s in seeds]
    outcomes = run_md_batch([MDJob(unit_cell() * (2, 1, 1), replace(PHYSICS, seed=s), d) for s, d in zip(seeds, engine_dirs)],
                            LeanMACE(module, dtype="float32"))
    assert all(o.status is MDStatus.COMPLETED for o in outcomes)
    canonical_width = np.sqrt(2.0 / (3 * n_atoms))
    pooled = {"engine": [], "ase": []}
    for s, engine_dir in zip(seeds, engine_dirs):
        atoms = unit_cell() * (2, 1, 1)
        atoms.calc = MACECalculator(models=copy.deepcopy(module), device="cpu", default_dtype="float32")
        assert run_md(atoms, replace(PHYSICS, seed=s), tmp_path / f"ase{s}").status is MDStatus.COMPLETED
        (t_engine, r_engine), (t_ase, r_ase) = _statistics(engine_dir), _statistics(tmp_path / f"ase{s}")
        assert not np.array_equal(t_engine, t_ase)  # float32: the two trajectories really are different
        pooled["engine"].append(t_engine)
        pooled["ase"].append(t_ase)
        assert abs(t_engine.mean() - t_ase.mean()) < 0.02 * TEMPERATURE_K
        # each path's D lies in the other's 95% interval, and the intervals are narrow enough to mean something
        for a, b in ((r_engine, r_ase), (r_ase, r_engine)):
            lo, hi = b.diffusivity_ci95_cm2_s
            assert lo <= a.diffusivity_cm2_s <= hi, (r_engine.diffusivity_ci95_cm2_s, r_ase.diffusivity_ci95_cm2_s)
            assert (hi - lo) / (hi + lo) < 0.5
    for temps in pooled.values():
        temps = np.concatenate(temps)
        assert abs(temps.mean() - TEMPERATURE_K) < 0.10 * TEMPERATURE_K
        assert abs(temps.std() / temps.mean() - canonical_width) < 0.15 * canonical_width
