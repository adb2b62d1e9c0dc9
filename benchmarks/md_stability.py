"""Is a model's MD stable? Every built-in candidate the model covers, hot and long, in one lean-engine batch.

The issue-16 target: no ``unstable_md`` for 20 ps at 1,200 K on every built-in electrolyte and every cathode host
with its inserted ions that the model covers. Each library structure the model's elements cover (``--structures``
to choose; ``HOST+ION`` for a host with one ion inserted, the default for every host and each of Li, Na, Mg, Zn,
Ca and Al) is built as the screening builds it,
repeated to the transport protocol's minimum cell height (``--preset``), given Maxwell–Boltzmann velocities and
run in Bussi NVT at ``--temperature-K`` with 2 fs steps in the lean engine (float32, the screening MD setting),
all systems in one batch. Every ``--check-every`` steps a system fails if its potential energy per atom moves more
than 1.5 eV from the start or two atoms come closer than 1.0 Å (the active-learning sampler's runaway criteria,
``training.distill.sample_md``); a failed system stops, the others go on.

    OMP_NUM_THREADS=2 python benchmarks/md_stability.py bundled:lipscl-student --temperature-K 1200 --ps 20

Prints one row per structure (steps completed, mean temperature of the last half, failure) and writes ``--json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def build_named(name: str):
    """A library structure by name; ``HOST+ION`` is a cathode host with one ``ION`` inserted (the dilute limit)."""
    from screening.candidates import build_candidate

    host, _, ion = name.partition("+")
    return build_candidate(host, ion=ion or None).structure


def library_cells(names: list[str] | None, elements: set[str]) -> dict[str, object]:
    """The named library structures, or every buildable one whose elements ``elements`` cover, each built once:
    electrolytes as ordered, cathode hosts with each inserted ion the distillation covers (``HOST+ION``)."""
    from screening.candidates import entry_names, get_entry
    from screening.candidates.library import CandidateKind
    from training.distill.configs import INSERTED_IONS

    if names:
        return {name: build_named(name) for name in names}
    built = {}
    for name in entry_names(buildable_only=True):
        if get_entry(name).kind is CandidateKind.cathode_host:
            for ion in INSERTED_IONS:
                built[f"{name}+{ion}"] = build_named(f"{name}+{ion}")
        else:
            built[name] = build_named(name)
    return {name: s for name, s in built.items()
            if {el.symbol for el in s.composition.element_composition.elements} <= elements}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--structures", nargs="*", help="library names (default: every one the model covers)")
    parser.add_argument("--temperature-K", type=float, default=1200.0)
    parser.add_argument("--ps", type=float, default=20.0)
    parser.add_argument("--timestep-fs", type=float, default=2.0)
    parser.add_argument("--preset", default="standard", help="transport preset whose supercell size is used")
    parser.add_argument("--check-every", type=int, default=25, help="steps between checks")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from ase.units import kB

    from mlip.engine import LeanMACE, MDBatch, SystemSpec
    from mlip.loader import load_model
    from screening.cells import make_supercell
    from screening.transport.protocol import preset
    from screening.transport.run import to_atoms
    from training.distill.sample_md import CLOSE_CONTACT_A, ENERGY_JUMP_EV_PER_ATOM

    loaded = load_model(args.model, device=args.device)
    if loaded.family != "mace":
        raise SystemExit(f"{args.model}: the lean engine runs MACE models only (this one is {loaded.family})")
    structures = library_cells(args.structures, set(loaded.elements))
    names = list(structures)
    if not names:
        raise SystemExit(f"no built-in structure is covered by {args.model}'s elements {sorted(loaded.elements)}")
    min_length = preset(args.preset).supercell_min_length_A
    model = LeanMACE.from_loaded(loaded, device=args.device, dtype="float32")
    specs = []
    for k, (name, structure) in enumerate(structures.items()):
        atoms, _ = make_supercell(to_atoms(structure), min_length, name=name)
        rng = np.random.default_rng(args.seed + k)
        MaxwellBoltzmannDistribution(atoms, temperature_K=args.temperature_K, rng=rng)
        Stationary(atoms)
        specs.append(SystemSpec.from_atoms(atoms, integrator="bussi", temperature_K=args.temperature_K,
                                           timestep_fs=args.timestep_fs, time_constant_fs=100.0, rng=rng))
    steps = int(round(args.ps * 1000 / args.timestep_fs))
    n_atoms = np.array([len(s.numbers) for s in specs])
    batch = MDBatch(model, specs)
    e0 = batch.potential_energies() / n_atoms
    rows = {name: {"n_atoms": int(n), "steps_completed": 0, "failure": None, "temperatures_K": []}
            for name, n in zip(names, n_atoms)}
    alive = list(range(len(names)))  # batch index -> names index
    began = time.perf_counter()
    for step in range(1, steps + 1):
        batch.step()
        if step % args.check_every and step != steps:
            continue
        energies = batch.potential_energies() / n_atoms[alive]
        dmin, _ = batch.min_distances()
        kinetic = batch.kinetic_energies().detach().cpu().numpy()
        keep = []
        for b, k in enumerate(alive):
            row = rows[names[k]]
            if not np.isfinite(energies[b]) or abs(energies[b] - e0[k]) > ENERGY_JUMP_EV_PER_ATOM:
                row["failure"] = f"step {step}: energy per atom moved {energies[b] - e0[k]:+.2f} eV"
            elif dmin[b] < CLOSE_CONTACT_A:
                row["failure"] = f"step {step}: atoms {dmin[b]:.2f} Å apart"
            else:
                row["steps_completed"] = step
                if step > steps // 2:
                    row["temperatures_K"].append(float(2 * kinetic[b] / (3 * (n_atoms[k] - 1) * kB)))
                keep.append(b)
        if len(keep) < len(alive):
            if not keep:
                break
            batch.select(keep)
            alive = [alive[b] for b in keep]
        if step % (args.check_every * 40) == 0:
            print(f"  {step * args.timestep_fs / 1000:.1f} ps: {len(alive)} of {len(names)} running, "
                  f"{time.perf_counter() - began:.0f} s", flush=True)
    wall = time.perf_counter() - began
    print(f"\n{args.model} ({loaded.sha256[:12]}), {args.temperature_K:.0f} K, {args.ps:g} ps at {args.timestep_fs:g} fs, "
          f"{wall:.0f} s")
    print(f"{'structure':22s} {'atoms':>6s} {'ps done':>8s} {'<T> K':>7s}  failure")
    stable = 0
    for name, row in rows.items():
        t_mean = float(np.mean(row["temperatures_K"])) if row["temperatures_K"] else float("nan")
        row["mean_temperature_K_second_half"] = t_mean
        row["ps_completed"] = row["steps_completed"] * args.timestep_fs / 1000
        del row["temperatures_K"]
        stable += row["failure"] is None
        print(f"{name:22s} {row['n_atoms']:6d} {row['ps_completed']:8.2f} {t_mean:7.0f}  {row['failure'] or '-'}")
    print(f"{stable} of {len(rows)} stable")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "model_sha256": loaded.sha256,
                                         "temperature_K": args.temperature_K, "ps": args.ps,
                                         "timestep_fs": args.timestep_fs, "preset": args.preset, "wall_s": wall,
                                         "structures": rows}, indent=1) + "\n")
    return 0 if stable == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
