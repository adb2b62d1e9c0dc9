"""NEB image throughput: one image per model call vs batched calls, side by side on the same bands.

For each model (a tiny 32x0e MACE and a 64x0e+64x1o MACE, random weights from
mlip.testing.build_mace) the same IDPP bands are evaluated four ways:
  single        one image per call through mlip.batched.BatchedMACE (same pipeline as batched)
  band          one call per band (all images of a band)
  all           one call for all images of all bands
  single/calc   one image at a time through mace-torch's MACECalculator (the plain ASE route;
                it also computes the stress, which NEB does not need)
and images/s plus ratios to `single` are printed. Modes are interleaved round by round (best
round kept) so that load on a shared machine hits them alike. Usage:

    python benchmarks/neb_throughput.py [--device cpu|cuda] [--bands 2] [--images 3] [--time-budget-s 100]
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np

from mlip.util import synchronize
from report import device_label, finish


def make_bands(n_bands: int, n_images: int, min_length_A: float):
    """IDPP bands of distinct vacancy hops in an antifluorite Li2S supercell (Li, S)."""
    from ase.mep import NEB
    from pymatgen.core import Lattice, Structure

    from screening.neb import build_endpoints, find_hops

    structure = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.71), ["S", "Li"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    network = find_hops(structure, "Li")
    hop = network.distinct[0]
    endpoints = build_endpoints(network.structure, hop, min_length_A=min_length_A)
    bands = []
    rng = np.random.default_rng(0)
    for b in range(n_bands):
        initial, final = endpoints.initial.copy(), endpoints.final.copy()
        # distinct bands: small seeded distortions of the host (the moving ion keeps its path)
        noise = rng.normal(0.0, 0.03, initial.positions.shape)
        noise[endpoints.moving_index] = 0.0
        initial.positions += noise
        final.positions += noise
        images = [initial] + [initial.copy() for _ in range(n_images)] + [final]
        NEB(images, method="improvedtangent").interpolate(method="idpp", mic=True)
        bands.append(images[1:-1])
    return bands, len(endpoints.initial)


def bench_model(label: str, hidden_irreps: str, bands, device: str, repeats: int, deadline: float) -> dict:
    """Images/s per mode, modes interleaved round by round (best round kept) so load drift hits all alike."""

    from mlip._mace import import_mace
    from mlip.batched import BatchedMACE
    from mlip.testing import build_mace

    import_mace()
    from mace.calculators import MACECalculator

    module = build_mace([3, 16], hidden_irreps=hidden_irreps, r_max=5.0, seed=0, dtype="float64")
    engine = BatchedMACE(module, device=device, dtype="float64")
    calc = MACECalculator(models=copy.deepcopy(module), device=device, default_dtype="float64")
    flat = [atoms for band in bands for atoms in band]
    copies = [atoms.copy() for atoms in flat]

    def one_at_a_time_calculator():
        for atoms in copies:
            atoms.calc = calc
            calc.reset()
            atoms.get_forces()

    modes = {
        "single": lambda: engine.evaluate_in_batches(flat, 1),
        "band": lambda: [engine.evaluate(band) for band in bands],
        "all": lambda: engine.evaluate(flat),
        "single/calc": one_at_a_time_calculator,
    }
    for fn in modes.values():  # warm-up every shape once
        fn()
    best = {mode: float("inf") for mode in modes}
    rounds = 0
    while rounds < repeats and (rounds == 0 or time.perf_counter() < deadline):
        for mode, fn in modes.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            best[mode] = min(best[mode], time.perf_counter() - start)
        rounds += 1
    rates = {mode: len(flat) / seconds for mode, seconds in best.items()}

    single = engine.evaluate_in_batches(flat, 1)
    batched = engine.evaluate(flat)
    max_de = max(abs(a.energy_eV - b.energy_eV) for a, b in zip(single, batched))
    max_df = max(float(np.abs(a.forces_eV_A - b.forces_eV_A).max()) for a, b in zip(single, batched))
    return {
        "model": label,
        "hidden_irreps": hidden_irreps,
        "rounds": rounds,
        "images_per_s": rates,
        "ratio_to_single": {k: v / rates["single"] for k, v in rates.items()},
        "faster_for_a_band": "batched" if rates["band"] > rates["single"] else "one image at a time",
        "max_abs_dE_eV": max_de,
        "max_abs_dF_eV_A": max_df,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument("--bands", type=int, default=2)
    parser.add_argument("--images", type=int, default=3, help="moving images per band")
    parser.add_argument("--min-length-A", type=float, default=10.0, help="supercell size (default: 96 atoms)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds (fewer if the time budget runs out)")
    parser.add_argument("--time-budget-s", type=float, default=100.0,
                        help="rounds stop (after one) when their share of this is spent; a model is skipped when none is left")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from mlip.calculators import resolve_device

    device = resolve_device(args.device)
    began = time.perf_counter()
    deadline = began + args.time_budget_s
    bands, n_atoms = make_bands(args.bands, args.images, args.min_length_A)
    header = {
        "device": device_label(device),
        "torch_threads": torch.get_num_threads(),
        "bands": args.bands,
        "images_per_band": args.images,
        "atoms_per_image": n_atoms,
    }
    results = []
    models = (("tiny", "32x0e"), ("L=1", "64x0e+64x1o"))
    for i, (label, irreps) in enumerate(models):
        now = time.perf_counter()
        if now > deadline and results:
            results.append({"model": label, "hidden_irreps": irreps, "skipped": "time budget spent"})
            continue
        share = now + (deadline - now) / (len(models) - i)  # rounds stop here; the warm-up and one round always run
        results.append(bench_model(label, irreps, bands, device, args.repeats, share))
    setup = f": {args.bands} bands x {args.images} images x {n_atoms} atoms, float64, best round of up to {args.repeats}"
    if finish(header, results, began, args.json, setup):
        return
    print(f"{'model':<6} {'irreps':<13} {'mode':<12} {'images/s':>9} {'x single':>9}")
    for res in results:
        if "skipped" in res:
            print(f"{res['model']:<6} {res['hidden_irreps']:<13} skipped ({res['skipped']})")
            continue
        for mode, rate in res["images_per_s"].items():
            print(f"{res['model']:<6} {res['hidden_irreps']:<13} {mode:<12} {rate:9.2f} {res['ratio_to_single'][mode]:9.2f}")
        print(f"{'':<6} faster for one band: {res['faster_for_a_band']} ({res['rounds']} round(s))")
        print(f"{'':<6} batched vs single: max |dE| {res['max_abs_dE_eV']:.1e} eV, max |dF| {res['max_abs_dF_eV_A']:.1e} eV/Å")
    print(f"wall time {header['wall_s']} s")


if __name__ == "__main__":
    main()
