"""MD sampling for the next labelling round: run NVT MD of the demo parents with the current model.

Each (parent, temperature) run writes an extxyz trajectory (``temperature_K`` in every frame's info) that
``python -m training.demo.make_configs md`` turns into the next round's configurations. Seeded; the
command line and model hash are recorded in every trajectory.

    python -m training.demo.sample_md --model models:/lipscl-demo@production \\
        --temperatures-K 500 800 1100 --ps 1.5 --out training/datasets/lipscl-cp2k/md-round2

``--library Li6PS5Cl beta-Li3PS4`` samples the built-in library's candidates instead, built as a
screening job builds them (ordered, in the ``quick`` protocol's supercell of every width ≥ 8 Å), so the
next round covers the structures the demo actually simulates. ``--configs FILE --hosts REGEX`` samples
the as-built frames of a distillation configuration file (for example the cathode hosts with each inserted
ion, ``--hosts '[+:]'``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from ase import units
from ase.io import write
from ase.md.bussi import Bussi
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

from mlip.config import load_settings
from mlip.loader import load_model
from training.demo.make_configs import PARENTS, min_distance


def library_parents(names: list[str], min_length_A: float = 8.0) -> dict:
    """Parents from the candidate library, in the supercell a transport run would use."""
    from types import SimpleNamespace

    from screening.candidates import build_candidate
    from screening.cells import make_supercell
    from screening.transport.run import to_atoms

    parents = {}
    for name in names:
        atoms, _ = make_supercell(to_atoms(build_candidate(name).structure), min_length_A)
        label = f"{name}_{len(atoms)}"
        parents[label] = SimpleNamespace(name=f"library:{label}", build=atoms.copy)
    return parents


def config_parents(path: Path, pattern: str = "") -> dict:
    """Parents from a distillation configuration file (``python -m training.distill.configs``): its as-built
    frames (``training.distill.sample_md.hosts_from_configs``: the hosts with their inserted ions) whose ``host``
    matches the regular expression."""
    import re
    from types import SimpleNamespace

    from training.distill.sample_md import hosts_from_configs

    parents = {}
    for atoms in hosts_from_configs(path):
        host = str(atoms.info.get("host", ""))
        if re.search(pattern, host):
            parents[host] = SimpleNamespace(name=f"library:{host}", build=atoms.copy)
    if not parents:
        raise SystemExit(f"{path}: no 'as-built' frame whose host matches {pattern!r}")
    return parents


def sample(model_ref: str, temperatures_K: list[float], ps: float, out: Path, *, timestep_fs: float = 1.0,
           write_every_fs: float = 50.0, seed: int = 0, parents: dict | None = None) -> list[Path]:
    loaded = load_model(model_ref, load_settings())
    calc = loaded.calculator(task="md")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    n_steps = int(round(ps * 1000 / timestep_fs))
    every = int(round(write_every_fs / timestep_fs))
    for p_i, parent in enumerate((parents or PARENTS).values()):
        for t_i, temperature in enumerate(temperatures_K):
            atoms = parent.build()
            atoms.calc = calc
            rng = np.random.default_rng([seed, p_i, t_i])
            MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
            Stationary(atoms)
            dyn = Bussi(atoms, timestep_fs * units.fs, temperature_K=temperature, taut=50 * units.fs, rng=rng)
            frames = []
            for step in range(n_steps + 1):
                if step % every == 0:
                    frame = atoms.copy()
                    frame.calc = None
                    frame.info.update({"temperature_K": temperature, "time_fs": step * timestep_fs, "base": parent.name,
                                       "model_sha256": loaded.sha256, "model_ref": loaded.ref})
                    frames.append(frame)
                    if not np.isfinite(atoms.get_potential_energy()) or min_distance(atoms) < 1.0:
                        print(f"{parent.name} at {temperature:g} K: unstable at step {step}; keeping {len(frames) - 1} frames")
                        frames.pop()
                        break
                if step < n_steps:
                    dyn.step()
            path = out / f"{parent.name.replace('library:', 'library-').replace(':', '-')}_{temperature:g}K.extxyz"
            write(path, frames)
            paths.append(path)
            print(f"{path.name}: {len(frames)} frames")
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--temperatures-K", type=float, nargs="+", default=[500.0, 800.0, 1100.0])
    ap.add_argument("--ps", type=float, default=1.5)
    ap.add_argument("--timestep-fs", type=float, default=1.0)
    ap.add_argument("--write-every-fs", type=float, default=50.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--library", nargs="+", default=None, help="sample these library candidates instead of the parents")
    ap.add_argument("--configs", type=Path, default=None,
                    help="sample the as-built hosts of this distillation configuration file instead")
    ap.add_argument("--hosts", default="", help="with --configs: only hosts matching this regular expression")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.configs and args.library:
        ap.error("--configs and --library are alternatives")
    sample(args.model, args.temperatures_K, args.ps, args.out, timestep_fs=args.timestep_fs,
           write_every_fs=args.write_every_fs, seed=args.seed,
           parents=(library_parents(args.library) if args.library
                    else config_parents(args.configs, args.hosts) if args.configs else None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
