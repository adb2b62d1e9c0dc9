"""MD speed of whole models, side by side: each model runs the way screening runs it (the lean engine where its
family has one, ASE's dynamics with its calculator otherwise) on the same systems, repeats alternating between
models; median atom-steps/s per model and its ratio to the first model. For the teacher/student comparison:

    python benchmarks/model_speed.py chgnet:0.3.0 bundled:lipscl-demo [--systems 2] [--steps 10] [--repeats 3]

Systems: Li48P16S64 cells of 128 atoms (Li2S antifluorite ×(2,2,4) with Li → P and Li removed, rattled), the
same as benchmarks/md_throughput.py; every model here must cover Li, P and S. ``--structure NAME`` (``HOST+ION``
for a cathode host with one ion inserted, e.g. ``TiS2+Mg``) times a library structure instead, in the ``quick``
preset's supercell, rattled 0.05 Å per system.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from md_throughput import _with_velocities, make_systems, rattled_copies, time_ase_md
from mlip.util import synchronize
from report import device_label, finish


def library_systems(name: str, n_systems: int, seed: int = 0):
    """``n_systems`` rattled copies of a library structure in the quick preset's transport supercell."""
    from md_stability import build_named
    from screening.cells import make_supercell
    from screening.transport.protocol import preset
    from screening.transport.run import to_atoms

    base, _ = make_supercell(to_atoms(build_named(name)), preset("quick").supercell_min_length_A)
    return rattled_copies(base, n_systems, seed)


def run_ase(loaded, systems, device: str, steps: int, temperature_K: float) -> float:
    return time_ase_md(loaded.calculator(task="md", device=device), systems, device, steps, temperature_K)[0]


def run_lean(engine, systems, device: str, steps: int, temperature_K: float) -> float:
    from mlip.engine import Integrator, MDBatch, SystemSpec

    specs = [SystemSpec.from_atoms(_with_velocities(a, k, temperature_K), integrator=Integrator.BUSSI,
                                   temperature_K=temperature_K, timestep_fs=2.0, time_constant_fs=100.0,
                                   rng=np.random.default_rng(k)) for k, a in enumerate(systems)]
    batch = MDBatch(engine, specs)  # first evaluation outside the clock
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        batch.step()
    synchronize(device)
    return batch.graph.n_atoms * steps / (time.perf_counter() - start)


def main() -> None:
    import torch

    from mlip.loader import load_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+", help="model references; ratios are to the first")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--systems", type=int, default=2, help="systems per model run (128 atoms each unless --structure)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--temperature-K", type=float, default=600.0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--structure", default=None,
                        help="a library structure (HOST+ION for a cathode host) instead of the Li-P-S cells")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    began = time.perf_counter()
    systems = library_systems(args.structure, args.systems) if args.structure else make_systems(args.systems)
    runners = []
    for ref in args.models:
        loaded = load_model(ref, device=args.device)
        engine = loaded.backend.lean_md_engine(loaded, device=args.device)
        if engine is not None:
            runners.append((ref, loaded.family, "lean engine", lambda e=engine: run_lean(e, systems, args.device,
                                                                                           args.steps, args.temperature_K)))
        else:
            runners.append((ref, loaded.family, "ASE + calculator", lambda m=loaded: run_ase(m, systems, args.device,
                                                                                            args.steps, args.temperature_K)))
    rates: dict[str, list[float]] = {ref: [] for ref, *_ in runners}
    for _ in range(args.repeats):  # alternate: the machine's drift hits every model alike
        for ref, _family, _path, run in runners:
            rates[ref].append(run())
    first = statistics.median(rates[runners[0][0]])
    results = [{"model": ref, "family": family, "path": path, "atom_steps_per_s": statistics.median(rates[ref]),
                "atom_steps_per_s_all": rates[ref], "ratio_to_first": statistics.median(rates[ref]) / first}
               for ref, family, path, _ in runners]
    header = {"device": device_label(args.device), "torch_threads": torch.get_num_threads(), "systems": args.systems,
              "structure": args.structure or "Li48P16S64",
              "atoms_per_system": len(systems[0]), "steps": args.steps, "repeats": args.repeats}
    if finish(header, results, began, args.json, f", {args.systems}×{len(systems[0])} atoms, {args.steps} steps, "
                                                 f"median of {args.repeats} alternating repeats"):
        return
    print(f"{'model':28s} {'family':8s} {'path':18s} {'atom-steps/s':>13s} {'ratio':>8s}")
    for r in results:
        print(f"{r['model']:28s} {r['family']:8s} {r['path']:18s} {r['atom_steps_per_s']:13.1f} "
              f"{r['ratio_to_first']:8.2f}")


if __name__ == "__main__":
    main()
