"""MD throughput: ASE + MACECalculator (one system at a time) vs the lean engine (batched), side by side.

For each model — (a) a small MACE (32x0e) and (b) 64x0e+64x1o, random weights from
mlip.testing.build_mace with MACE's ZBL core so MD is stable — the same systems (Li3PS4-stoichiometry
antifluorite-derived cells, 128 atoms, each rattled differently) are advanced with a Bussi thermostat:
  ase      ase.md.bussi.Bussi + mace-torch's MACECalculator, one system after another (the ASE path)
  engine   mlip.engine.MDBatch, batches of the size the autotuner (mlip.engine.tuning) measured
and atom-steps/s, their ratio (`ratio: X.XX`, engine / ase), the chosen batch size and the peak
memory are printed. Only the dynamics are timed (no frame logs, no checkpoints); each system's first
force evaluation happens before the clock starts, for both. Usage:

    python benchmarks/md_throughput.py [--device cpu|cuda] [--systems 16] [--steps 20] [--models a,b]
                                       [--ase-systems N] [--repeats 3] [--tune-steps 3] [--workers-threads] [--json]

Step counts are small by default so that a run takes minutes on a CPU; raise --steps on a quiet machine.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from mlip.util import synchronize
from report import device_label, finish

LIPSCL = [3, 15, 16, 17]
MODELS = {"a": ("small", "32x0e"), "b": ("L=1", "64x0e+64x1o")}


def make_systems(n_systems: int, seed: int = 0):
    """Li48P16S64 cells: Li2S antifluorite ×(2,2,4), 16 Li → P, 64 Li removed (seeded), rattled per system."""
    from ase.spacegroup import crystal

    rng = np.random.default_rng(seed)
    base = crystal(["S", "Li"], [(0, 0, 0), (0.25, 0.25, 0.25)], spacegroup=225, cellpar=[5.71] * 3 + [90] * 3)
    base = base * (2, 2, 4)
    li = np.flatnonzero(base.numbers == 3)
    chosen = rng.permutation(li)
    base.numbers[chosen[:16]] = 15
    del base[sorted(chosen[16:80].tolist())]
    return rattled_copies(base, n_systems, seed)


def rattled_copies(base, n_systems: int, seed: int = 0) -> list:
    """``n_systems`` copies of ``base``, each rattled by 0.05 Å with its own seed."""
    systems = []
    for k in range(n_systems):
        atoms = base.copy()
        atoms.rattle(0.05, seed=seed + k)
        systems.append(atoms)
    return systems


def _peak_bytes(device: str) -> int:
    import torch

    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # process high-water mark so far


def _reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        synchronize(device)
        torch.cuda.reset_peak_memory_stats()


def _with_velocities(atoms, k: int, temperature_K: float):
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    atoms = atoms.copy()
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=np.random.default_rng(k))
    return atoms


def bench_ase(module, systems, device: str, dtype: str, steps: int, temperature_K: float) -> dict:
    from ase import units
    from ase.md.bussi import Bussi

    from mlip._mace import import_mace

    import_mace()
    from mace.calculators import MACECalculator

    calc = MACECalculator(models=copy.deepcopy(module), device=device, default_dtype=dtype)
    _reset_peak(device)
    warm = _with_velocities(systems[0], 0, temperature_K)
    warm.calc = calc
    Bussi(warm, 2 * units.fs, temperature_K=temperature_K, taut=100 * units.fs, rng=np.random.default_rng(0)).run(1)
    rate, seconds = time_ase_md(calc, systems, device, steps, temperature_K)
    return {"atom_steps_per_s": rate, "seconds": seconds, "peak_memory_bytes": _peak_bytes(device)}


def time_ase_md(calc, systems, device: str, steps: int, temperature_K: float) -> tuple[float, float]:
    """(atom-steps/s, seconds) of ASE's Bussi dynamics with ``calc``, one system after another; each system's first
    force evaluation is outside the clock, as for the engine."""
    from ase import units
    from ase.md.bussi import Bussi

    seconds, atom_steps = 0.0, 0
    for k, atoms in enumerate(systems):
        atoms = _with_velocities(atoms, k, temperature_K)
        atoms.calc = calc
        dyn = Bussi(atoms, 2 * units.fs, temperature_K=temperature_K, taut=100 * units.fs, rng=np.random.default_rng(k))
        atoms.get_forces()
        synchronize(device)
        start = time.perf_counter()
        dyn.run(steps)
        synchronize(device)
        seconds += time.perf_counter() - start
        atom_steps += len(atoms) * steps
    return atom_steps / seconds, seconds


def bench_engine(module, systems, device: str, dtype: str, steps: int, temperature_K: float, tune_steps: int,
                 home: Path, batch_systems: int | None) -> dict:
    from mlip.engine import Integrator, LeanMACE, MDBatch, SystemSpec
    from mlip.engine.tuning import choose_md_batch

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().numpy().tobytes())
    model = LeanMACE(module, device=device, dtype=dtype, model_sha256=digest.hexdigest())
    tune_start = time.perf_counter()
    choice = choose_md_batch(model, systems, home=home, steps=tune_steps, configured=batch_systems)
    tune_s = time.perf_counter() - tune_start
    size = choice.batch_systems
    _reset_peak(device)
    seconds, atom_steps = 0.0, 0
    specs = [SystemSpec.from_atoms(_with_velocities(a, k, temperature_K), integrator=Integrator.BUSSI,
                                   temperature_K=temperature_K, timestep_fs=2.0, time_constant_fs=100.0,
                                   rng=np.random.default_rng(k)) for k, a in enumerate(systems)]
    rebuilds = 0
    for lo in range(0, len(specs), size):
        batch = MDBatch(model, specs[lo:lo + size])  # first evaluation outside the clock
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            batch.step()
        synchronize(device)
        seconds += time.perf_counter() - start
        atom_steps += batch.graph.n_atoms * steps
        rebuilds += batch.graph.n_rebuilds - batch.n_systems
    return {"atom_steps_per_s": atom_steps / seconds, "seconds": seconds, "peak_memory_bytes": _peak_bytes(device),
            "batch_systems": size, "max_batch_atoms": choice.max_batch_atoms, "batch_source": choice.source,
            "tuning_atom_steps_per_s": choice.atom_steps_per_s, "tuning_s": round(tune_s, 1),
            "fused_kernel": model.accelerated, "neighbour_rebuilds": rebuilds}


def _median_run(runs: list[dict]) -> dict:
    """The run with the median atom-steps/s (its other figures with it); peak memory is the largest seen."""
    ordered = sorted(runs, key=lambda r: r["atom_steps_per_s"])
    median = dict(ordered[(len(ordered) - 1) // 2])
    median["peak_memory_bytes"] = max(r["peak_memory_bytes"] for r in runs)
    median["atom_steps_per_s_all"] = [r["atom_steps_per_s"] for r in runs]
    return median


def bench_workers_threads(module, systems, dtype: str, steps: int, home: Path) -> dict:
    from mlip.engine.tuning import choose_workers_threads
    from mlip.loader import trust
    from mlip.testing import save_model

    path = save_model(module, home / "bench-small.model")
    loaded = trust(str(path))
    layout, rates, source = choose_workers_threads(str(path), loaded.sha256, systems, dtype=dtype, home=home, steps=steps)
    return {"chosen": f"{layout[0]}x{layout[1]}", "source": source,
            "atom_steps_per_s": {f"{w}x{t}": r for (w, t), r in rates.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--systems", type=int, default=16, help="systems of 128 atoms (the GPU case uses 64)")
    parser.add_argument("--steps", type=int, default=20, help="timed MD steps per system")
    parser.add_argument("--ase-systems", type=int, default=None,
                        help="time the ASE baseline on the first N systems only (its rate is per system anyway)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="alternate baseline and engine this many times; the medians are compared")
    parser.add_argument("--tune-steps", type=int, default=3, help="steps per batch size in the autotuner's measurement")
    parser.add_argument("--batch-systems", type=int, default=None, help="skip the autotuner and use this batch size")
    parser.add_argument("--models", default="a,b", help="a = 32x0e, b = 64x0e+64x1o")
    parser.add_argument("--temperature-K", type=float, default=600.0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--workers-threads", action="store_true",
                        help="also measure worker processes × threads layouts on CPU (model a) and print the choice")
    parser.add_argument("--home", default=None,
                        help="IONSCREEN_HOME for the autotuner's cache (default: a fresh temporary one, so it measures)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    home = Path(args.home or tempfile.mkdtemp(prefix="md-throughput-"))
    os.environ["IONSCREEN_HOME"] = str(home)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from mlip.calculators import resolve_device
    from mlip.testing import build_mace

    device = resolve_device(args.device)
    began = time.perf_counter()
    systems = make_systems(args.systems)
    header = {
        "device": device_label(device),
        "torch_threads": torch.get_num_threads(),
        "systems": args.systems,
        "atoms_per_system": len(systems[0]),
        "steps": args.steps,
        "dtype": args.dtype,
        "load_average": os.getloadavg()[0],
    }
    results = []
    for key in args.models.split(","):
        label, irreps = MODELS[key]
        module = build_mace(LIPSCL, hidden_irreps=irreps, r_max=5.0, seed=0, pair_repulsion=True,
                            interaction_scale=0.02, dtype="float64")
        ase_runs, engine_runs = [], []
        for _ in range(args.repeats):  # alternated, so that a machine that speeds up or slows down hits both
            ase_runs.append(bench_ase(module, systems[: args.ase_systems or len(systems)], device, args.dtype,
                                      args.steps, args.temperature_K))
            engine_runs.append(bench_engine(module, systems, device, args.dtype, args.steps, args.temperature_K,
                                            args.tune_steps, home, args.batch_systems))
        ase, engine = _median_run(ase_runs), _median_run(engine_runs)
        res = {"case": key, "model": label, "hidden_irreps": irreps, "ase": ase, "engine": engine,
               "ratio": engine["atom_steps_per_s"] / ase["atom_steps_per_s"],
               "ratios_per_repeat": [e["atom_steps_per_s"] / a["atom_steps_per_s"]
                                     for a, e in zip(ase_runs, engine_runs)]}
        if args.workers_threads and key == "a" and device == "cpu":
            res["workers_threads"] = bench_workers_threads(module, systems[:2], args.dtype, max(2, args.steps // 2), home)
        results.append(res)
    setup = (f", load {header['load_average']:.2f}: {args.systems} systems x {header['atoms_per_system']} atoms, "
             f"{args.steps} Bussi steps each, {args.dtype}")
    if finish(header, results, began, args.json, setup):
        return
    print(f"{'case':<5} {'irreps':<13} {'mode':<7} {'atom-steps/s':>13} {'peak MiB':>9}  notes")
    for res in results:
        for mode in ("ase", "engine"):
            r = res[mode]
            notes = ""
            if mode == "engine":
                notes = (f"batch {r['batch_systems']} systems ({r['batch_source']}; tuning "
                         + ", ".join(f"{k}: {v:.0f}" for k, v in r["tuning_atom_steps_per_s"].items())
                         + f" atom-steps/s in {r['tuning_s']} s); kernels: "
                         + (", ".join(r["fused_kernel"]) or "mace-torch's"))
            print(f"{res['case']:<5} {res['hidden_irreps']:<13} {mode:<7} {r['atom_steps_per_s']:13.1f} "
                  f"{r['peak_memory_bytes'] / 2**20:9.0f}  {notes}")
        print(f"{res['case']:<5} ratio: {res['ratio']:.2f}  (medians of {len(res['ratios_per_repeat'])} alternated "
              f"repeats; per repeat " + ", ".join(f"{r:.2f}" for r in res["ratios_per_repeat"]) + ")")
        if "workers_threads" in res:
            wt = res["workers_threads"]
            print(f"{res['case']:<5} workers x threads: chosen {wt['chosen']} ({wt['source']}; "
                  + ", ".join(f"{k}: {v:.0f}" for k, v in wt["atom_steps_per_s"].items()) + " atom-steps/s)")
    if device == "cpu":
        print("peak MiB on CPU is the process's high-water mark so far (the engine runs after the baseline)")
    print(f"wall time {header['wall_s']} s")


if __name__ == "__main__":
    main()
