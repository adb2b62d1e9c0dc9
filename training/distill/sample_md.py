"""An active-learning round for the student: MD with the current student, then the snapshots worth labelling.

Every host of a distillation configuration file (its ``as-built`` configurations) runs NVT MD (Bussi) with the
student in the lean engine, all hosts in one batch, at temperatures spread over 300-1500 K (each host gets
``--temperatures-per-host`` of them, rotating through the list, so the set as a whole covers every temperature
without running every host at all of them). Snapshots are taken every ``--every`` steps after a warm-up.
The selection keeps, per host:

- the snapshots where the run went wrong (an atom pair closer than ``CLOSE_CONTACT_A`` or a potential energy per
  atom that left the band the host started in by more than ``ENERGY_JUMP_EV_PER_ATOM``): the last frame before
  that, which is exactly where the student is wrong and the teacher must correct it; the run of that system
  stops there;
- then the most diverse of the rest, by farthest-point sampling on a smooth radial-distribution descriptor
  per element pair (model-free, so it does not inherit the student's blind spots).

The picked frames carry their origin (``source`` = ``md-round<N>``, host, temperature, step, seed) for the data
card, and go to ``ionscreen label --teacher`` next.

    python -m training.distill.sample_md --model /path/student.model --configs configs-library.xyz \\
        --round 1 --out configs-md-round1.xyz
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import read, write

TEMPERATURES_K = (300.0, 600.0, 900.0, 1200.0, 1500.0)
CLOSE_CONTACT_A = 1.0  # no bond in these materials is this short: the student let two atoms collapse
ENERGY_JUMP_EV_PER_ATOM = 1.5  # far beyond the thermal energy of 1500 K (0.2 eV/atom): a runaway
DESCRIPTOR_RMAX_A = 5.0
DESCRIPTOR_BINS = 24


def descriptor(atoms: Atoms, pair_index: dict[tuple[int, int], int]) -> np.ndarray:
    """Gaussian-smeared pair-distance histograms per element pair (within ``DESCRIPTOR_RMAX_A``), per atom."""
    from ase.neighborlist import neighbor_list

    i, j, d = neighbor_list("ijd", atoms, DESCRIPTOR_RMAX_A)
    centres = np.linspace(0.8, DESCRIPTOR_RMAX_A, DESCRIPTOR_BINS)
    width = centres[1] - centres[0]
    out = np.zeros((len(pair_index), DESCRIPTOR_BINS))
    z = atoms.numbers
    keys = [pair_index[(min(a, b), max(a, b))] for a, b in zip(z[i], z[j])]
    weights = np.exp(-0.5 * ((d[:, None] - centres[None, :]) / width) ** 2)
    np.add.at(out, keys, weights)
    return (out / len(atoms)).ravel()


def farthest_points(vectors: np.ndarray, n: int, first: int = 0) -> list[int]:
    """Indices of ``n`` rows chosen greedily, each the farthest from those already chosen (starting at ``first``)."""
    if len(vectors) == 0 or n <= 0:
        return []
    chosen = [first]
    dist = np.linalg.norm(vectors - vectors[first], axis=1)
    while len(chosen) < min(n, len(vectors)):
        k = int(np.argmax(dist))
        if dist[k] <= 0:
            break
        chosen.append(k)
        dist = np.minimum(dist, np.linalg.norm(vectors - vectors[k], axis=1))
    return chosen


def hosts_from_configs(path: Path) -> list[Atoms]:
    hosts = [a for a in read(path, index=":") if a.info.get("kind") == "as-built"]
    if not hosts:
        raise SystemExit(f"{path}: no as-built configurations (info kind=as-built) to start MD from")
    return hosts


def run_round(model_ref: str, hosts: list[Atoms], *, round_index: int, steps: int, every: int, warmup: int,
              timestep_fs: float, temperatures_per_host: int, per_host: int, seed: int, device: str = "cpu",
              log=print) -> tuple[list[Atoms], dict]:
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    from mlip.engine import LeanMACE, MDBatch, SystemSpec
    from mlip.loader import load_model

    loaded = load_model(model_ref, device=device)
    model = LeanMACE.from_loaded(loaded, device=device, dtype="float32")
    specs, meta = [], []
    for h, host in enumerate(hosts):
        for t in range(temperatures_per_host):
            temperature = TEMPERATURES_K[(h + t * 2) % len(TEMPERATURES_K)]
            rng = np.random.default_rng(seed + 1000 * h + t)
            atoms = host.copy()
            MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
            Stationary(atoms)
            specs.append(SystemSpec.from_atoms(atoms, integrator="bussi", temperature_K=temperature,
                                               timestep_fs=timestep_fs, time_constant_fs=50.0, rng=rng))
            meta.append({"host": host.info["host"], "temperature_K": temperature, "template": host,
                         "seed": seed + 1000 * h + t})
    batch = MDBatch(model, specs)
    n_atoms = np.array([len(s.numbers) for s in specs])
    e0 = batch.potential_energies() / n_atoms
    alive = np.ones(len(specs), bool)
    snapshots: dict[int, list[tuple[int, np.ndarray]]] = defaultdict(list)
    failures: dict[int, tuple[int, np.ndarray, str]] = {}
    previous = [batch.positions(b) for b in range(len(specs))]
    started = time.perf_counter()
    for step in range(1, steps + 1):
        batch.step()
        if step % every and step != steps:
            continue
        energies = batch.potential_energies() / n_atoms
        dmin, _ = batch.min_distances()
        for b in np.flatnonzero(alive):
            why = None
            if not np.isfinite(energies[b]) or abs(energies[b] - e0[b]) > ENERGY_JUMP_EV_PER_ATOM:
                why = f"energy per atom moved {energies[b] - e0[b]:+.2f} eV"
            elif dmin[b] < CLOSE_CONTACT_A:
                why = f"atoms {dmin[b]:.2f} Å apart"
            if why is not None:
                alive[b] = False
                failures[b] = (step - every, previous[b], why)  # the last sane frame: where it started to go wrong
                continue
            previous[b] = batch.positions(b)
            if step > warmup:
                snapshots[b].append((step, previous[b]))
        if step % (every * 10) == 0:
            log(f"step {step}/{steps}: {alive.sum()} of {len(specs)} systems running, "
                f"{time.perf_counter() - started:.0f} s")
    by_host: dict[str, list[tuple[int, int, np.ndarray, str | None]]] = defaultdict(list)
    for b, m in enumerate(meta):
        for step, pos in snapshots[b]:
            by_host[m["host"]].append((b, step, pos, None))
    picked: list[Atoms] = []
    elements = sorted({int(z) for s in specs for z in s.numbers})
    pair_index = {(a, c): k for k, (a, c) in enumerate((a, c) for a in elements for c in elements if a <= c)}

    def frame(b: int, step: int, pos: np.ndarray, failed: str | None) -> Atoms:
        m = meta[b]
        atoms = Atoms(numbers=specs[b].numbers, positions=pos, cell=specs[b].cell, pbc=True)
        atoms.wrap()
        atoms.info.update({"source": f"md-round{round_index}", "host": m["host"],
                           "kind": "md-failure" if failed else "md",
                           "config_type": f"md-round{round_index}:{'md-failure' if failed else 'md'}",
                           "temperature_K": m["temperature_K"], "md_step": step, "timestep_fs": timestep_fs,
                           "seed": m["seed"], "student": model_ref, "student_sha256": loaded.sha256,
                           "working_ion": m["template"].info.get("working_ion", "")})
        if failed:
            atoms.info["md_failure"] = failed
        return atoms

    for b, (step, pos, why) in failures.items():
        picked.append(frame(b, step, pos, why))
    for host, items in by_host.items():
        vectors = np.array([descriptor(Atoms(numbers=specs[b].numbers, positions=pos, cell=specs[b].cell, pbc=True),
                                       pair_index) for b, _, pos, _ in items])
        for k in farthest_points(vectors, per_host):
            b, step, pos, _ = items[k]
            picked.append(frame(b, step, pos, None))
    report = {"systems": len(specs), "atoms": int(n_atoms.sum()), "steps": steps, "timestep_fs": timestep_fs,
              "failed_systems": len(failures), "picked": len(picked),
              "failures": {f"{meta[b]['host']}@{meta[b]['temperature_K']:.0f}K": why
                           for b, (_, _, why) in failures.items()},
              "seconds": round(time.perf_counter() - started, 1), "student_sha256": loaded.sha256}
    return picked, report


def main(argv: list[str] | None = None) -> int:
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--configs", type=Path, required=True, help="distillation configurations (as-built hosts)")
    parser.add_argument("--round", type=int, required=True, dest="round_index")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--timestep-fs", type=float, default=1.0)
    parser.add_argument("--temperatures-per-host", type=int, default=2)
    parser.add_argument("--per-host", type=int, default=4)
    parser.add_argument("--seed", type=int, default=20261203)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    hosts = hosts_from_configs(args.configs)
    picked, report = run_round(args.model, hosts, round_index=args.round_index, steps=args.steps, every=args.every,
                               warmup=args.warmup, timestep_fs=args.timestep_fs,
                               temperatures_per_host=args.temperatures_per_host, per_host=args.per_host,
                               seed=args.seed, device=args.device)
    write(args.out, picked, format="extxyz")
    report["command"] = " ".join(sys.argv)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "failures"}))
    print(f"{len(report['failures'])} systems failed:", ", ".join(f"{k} ({v})" for k, v in report["failures"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
