"""Diffusion estimators side by side: ionscreen, kinisi and pymatgen on the same caged-hopping trajectories with a
known long-time D (tests/synthetic.py: CAGED_REGIMES) and on the LGPS AIMD of pymatgen-analysis-diffusion's tests.

Per regime and tool: 95% coverage of the true D*, geometric-mean bias (over runs that gave a value), runs that
gave a value (ionscreen may give an upper bound instead; its interval is then (0, bound)), and the median wall
time per trajectory. On LGPS: each tool's D* and interval, and wall time.

- ionscreen: ``analyze_diffusion`` (window chosen from the data, jackknife over ions).
- kinisi 2.1.0 (``pip install kinisi==2.1.0``, a benchmark-only dependency; it installs beside the project's
  pins): ``DiffusionAnalyzer.from_ase`` + ``diffusion(start_dt=2 ps)`` (10% of the run, as for LGPS in the
  issue), the median and 2.5/97.5 percentiles of its posterior of D*.
- pymatgen-analysis-diffusion: ``DiffusionAnalyzer`` with its defaults (``smoothed="max"``, ``min_obs=30``) and
  its ``diffusivity_std_dev`` as a normal 95% interval.

Usage::

    python benchmarks/diffusion_estimators.py [--runs 40] [--tools ionscreen,kinisi,pymatgen] [--regimes ...]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from synthetic import CAGED_REGIMES, REGIME_FRAME_DT_FS, REGIME_FRAMES, REGIME_IONS  # noqa: E402

LGPS = ROOT / "screening" / "validation" / "data" / "aimd" / "lgps_600K.extxyz.gz"
A2_FS_TO_CM2_S = 0.1
BOX_A = 60.0  # synthetic ions live in a large cubic box so that no tool's unwrapping matters


def ionscreen(mobile, times_fs, centroid, temperature_K):
    from screening.transport.diffusion import analyze_diffusion

    a = analyze_diffusion(mobile, times_fs, framework_centroid_A=centroid)
    return a.tracer.value, a.tracer.ci95


def _atoms_frames(mobile, centroid):
    from ase import Atoms

    n_ions = mobile.shape[1]
    frames = []
    for k in range(mobile.shape[0]):
        positions = np.concatenate([mobile[k], centroid[k][None]], axis=0) + BOX_A / 2
        frames.append(Atoms(["Li"] * n_ions + ["S"], positions=positions, cell=[BOX_A] * 3, pbc=True))
    return frames


def kinisi(mobile, times_fs, centroid, temperature_K, frames=None):
    import scipp as sc
    from kinisi.analyze import DiffusionAnalyzer

    dt_ps = float(times_fs[1] - times_fs[0]) / 1000.0
    frames = frames if frames is not None else _atoms_frames(mobile, centroid)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analyzer = DiffusionAnalyzer.from_ase(frames, specie="Li", time_step=sc.scalar(dt_ps, unit="ps"),
                                              step_skip=sc.scalar(1), progress=False)
        analyzer.diffusion(start_dt=sc.scalar(2.0, unit="ps"), progress=False,
                           random_state=np.random.RandomState(0))
    samples = np.asarray(analyzer.D.to(unit="cm^2/s").values)
    lo, mid, hi = np.percentile(samples, [2.5, 50, 97.5])
    return float(mid), (float(lo), float(hi))


def pymatgen(mobile, times_fs, centroid, temperature_K):
    from pymatgen.analysis.diffusion.analyzer import DiffusionAnalyzer
    from pymatgen.core import Lattice, Species, Structure

    positions = np.concatenate([mobile, centroid[:, None, :]], axis=1)
    n_ions = mobile.shape[1]
    structure = Structure(Lattice.cubic(BOX_A), [Species("Li", 1)] * n_ions + [Species("S", -2)],
                          positions[0] + BOX_A / 2, coords_are_cartesian=True)
    dt = float(times_fs[1] - times_fs[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analyzer = DiffusionAnalyzer(structure, np.transpose(positions - positions[0], (1, 0, 2)), "Li",
                                     temperature_K, dt, 1, smoothed="max", min_obs=30)
    d, sd = analyzer.diffusivity, analyzer.diffusivity_std_dev
    return float(d), (float(d - 1.96 * sd), float(d + 1.96 * sd))


TOOLS = {"ionscreen": ionscreen, "kinisi": kinisi, "pymatgen": pymatgen}


def regime_table(names, tools, runs):
    print(f"Synthetic caged hopping: {REGIME_IONS} ions, {REGIME_FRAMES} frames {REGIME_FRAME_DT_FS:g} fs apart, "
          f"{runs} runs per regime; coverage of the true D*, geometric-mean bias, runs with a value, median s/run")
    print(f"{'regime':<10} {'hops/ion':>8} {'tool':<10} {'coverage':>9} {'gm bias':>8} {'values':>7} {'s/run':>7}")
    for name in names:
        model = CAGED_REGIMES[name]
        truth = model.tracer_d_A2_fs(REGIME_IONS) * A2_FS_TO_CM2_S
        stats = {t: {"cover": 0, "ratios": [], "wall": []} for t in tools}
        for seed in range(runs):
            mobile, times, drift = model.trajectory(n_ions=REGIME_IONS, n_frames=REGIME_FRAMES,
                                                    frame_dt_fs=REGIME_FRAME_DT_FS, seed=seed)
            for tool in tools:  # the same trajectory for every tool, one after another
                start = time.perf_counter()
                value, (lo, hi) = TOOLS[tool](mobile, times, drift, 600.0)
                stats[tool]["wall"].append(time.perf_counter() - start)
                stats[tool]["cover"] += lo <= truth <= hi
                if value is not None and value > 0:
                    stats[tool]["ratios"].append(value / truth)
        hops = model.hops_per_ion(REGIME_FRAMES * REGIME_FRAME_DT_FS)
        for tool in tools:
            s = stats[tool]
            bias = np.exp(np.mean(np.log(s["ratios"]))) - 1 if s["ratios"] else float("nan")
            print(f"{name:<10} {hops:>8.2f} {tool:<10} {s['cover'] / runs:>9.2f} {bias:>+8.1%} "
                  f"{len(s['ratios']):>3}/{runs:<3} {np.median(s['wall']):>7.3f}", flush=True)


def lgps_table(tools):
    from ase.io import read

    from screening.transport.trajread import load_trajectory

    loaded = load_trajectory(LGPS, "Li")
    f = loaded.frames
    frames = read(str(LGPS), index=":")
    print(f"\nLGPS AIMD, 600 K, {f.n_frames} frames {loaded.frame_dt_fs:g} fs apart (pymatgen's test asserts 1.16e-6; "
          "kinisi 2.1.0 with start_dt 2 ps: 1.10e-6 [3.8e-7, 1.85e-6])")
    print(f"{'tool':<10} {'D* (cm²/s)':>11}  {'95% interval':<24} {'s':>7}")
    for tool in tools:
        start = time.perf_counter()
        if tool == "kinisi":
            value, (lo, hi) = kinisi(None, f.times_fs, None, 600.0, frames=frames)
        elif tool == "pymatgen":
            from pymatgen.analysis.diffusion.analyzer import DiffusionAnalyzer
            from pymatgen.core import Lattice, Structure

            unwrapped_all = _unwrapped(frames)
            structure = Structure(Lattice(frames[0].cell.array), f.meta["symbols"], frames[0].get_scaled_positions())
            analyzer = DiffusionAnalyzer(structure, np.transpose(unwrapped_all - unwrapped_all[0], (1, 0, 2)), "Li",
                                         600, loaded.frame_dt_fs, 1, smoothed="max", min_obs=30)
            d, sd = analyzer.diffusivity, analyzer.diffusivity_std_dev
            value, (lo, hi) = d, (d - 1.96 * sd, d + 1.96 * sd)
        else:
            from screening.transport.diffusion import analyze_diffusion

            a = analyze_diffusion(f.mobile_A, f.times_fs, framework_centroid_A=f.framework_centroid_A)
            value, (lo, hi) = a.tracer.value, a.tracer.ci95
        wall = time.perf_counter() - start
        shown = "bound" if value is None else f"{value:.3g}"
        print(f"{tool:<10} {shown:>11}  [{lo:.3g}, {hi:.3g}]{'':<6} {wall:>7.3f}")


def _unwrapped(frames):
    from screening.transport.diffusion import unwrap_fractional

    frac = np.array([a.get_scaled_positions(wrap=False) for a in frames])
    return unwrap_fractional(frac, np.array([a.cell.array for a in frames]))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--tools", default="ionscreen,kinisi,pymatgen")
    parser.add_argument("--regimes", default=",".join(CAGED_REGIMES))
    args = parser.parse_args(argv)
    tools = [t for t in args.tools.split(",") if t]
    for tool in tools:
        if tool not in TOOLS:
            parser.error(f"unknown tool {tool!r}; tools: {', '.join(TOOLS)}")
    lgps_table(tools)
    print()
    regime_table([r for r in args.regimes.split(",") if r], tools, args.runs)


if __name__ == "__main__":
    main()
