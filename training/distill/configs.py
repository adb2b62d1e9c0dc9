"""The first configurations a teacher labels when a student is distilled: every host the student must cover,
perturbed the way an active-learning run starts (before any MD with the student exists).

Hosts: the built-in library (electrolytes as ordered; cathode hosts empty and with one working ion of each of
Li, Na, Mg, Zn, Ca, Al inserted), the migration-barrier training hops (both endpoints and the midpoint of the
straight path, a crude NEB image that puts the moving ion where barriers are decided) and the OBELiX training
structures that import and order. Each host gives: the structure as built, two rattles, a normal and a shear
strain, a working-ion vacancy and a close contact. Every configuration says where it came from in its info
(``config_type`` = source:kind, for errors per kind; ``source``, ``host``, ``kind``, ``seed``), so the data card can
list every frame's origin and the dataset can be split by structure (``data import --split-by host``).

    python -m training.distill.configs --out configs.xyz [--sources library,barriers,obelix] [--max-atoms 200] \
        [--elements Li,Mg,O,...] [--hop-frames] [--min-length-A 8] [--hosts REGEX]
    ionscreen label configs.xyz --out labels/ --teacher chgnet:0.3.0
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms

from mlip.errors import IonscreenError
from training.demo.make_configs import largest_void, min_distance, rattle, strain

REFERENCE_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "reference"
INSERTED_IONS = ("Li", "Na", "Mg", "Zn", "Ca", "Al")
SOURCES = ("library", "barriers", "obelix")
MIN_CONTACT_A = 1.2  # closest approach a close-contact configuration creates (teachers are trained on nothing closer)


@dataclass
class Host:
    source: str  # library, barriers, obelix
    name: str  # unique within its source
    atoms: Atoms
    ion: str  # the working ion (vacancies are made of it)


@dataclass
class Skipped:
    source: str
    name: str
    reason: str


def _ase(structure) -> Atoms:
    from pymatgen.io.ase import AseAtomsAdaptor

    bare = structure.copy()
    bare.remove_oxidation_states()
    return _bare(AseAtomsAdaptor.get_atoms(bare))


def library_hosts(skipped: list[Skipped]) -> Iterator[Host]:
    from screening.candidates.builder import build_candidate
    from screening.candidates.library import CandidateKind, load_library

    for entry in load_library().entries:
        if not entry.buildable:
            skipped.append(Skipped("library", entry.name, f"not buildable ({entry.status.value})"))
            continue
        if entry.kind is CandidateKind.electrolyte:
            plan = [(entry.name, None, None)]
        else:
            plan = [(f"{entry.name}:empty", entry.working_ion, 0)] + [(f"{entry.name}+{ion}", ion, 1) for ion in INSERTED_IONS]
        for name, ion, n_ions in plan:
            try:
                candidate = build_candidate(entry.name, ion=ion, n_ions=n_ions)
            except IonscreenError as err:
                skipped.append(Skipped("library", name, str(err).splitlines()[0]))
                continue
            yield Host("library", name, _ase(candidate.structure), ion or entry.working_ion)


def barrier_hosts(path: Path, skipped: list[Skipped]) -> Iterator[Host]:
    """Both endpoints of every hop and the midpoint between them (the moving ion is atom 0 in both)."""
    from screening.validation.barriers import read_endpoint_frames

    frames = read_endpoint_frames(path)
    for k in range(0, len(frames) - 1, 2):
        initial, final = frames[k], frames[k + 1]
        name = f"{initial.info.get('sys_name')}#{initial.info.get('jid')}"
        if len(initial) != len(final) or (initial.numbers != final.numbers).any():
            skipped.append(Skipped("barriers", name, "endpoints hold different atoms"))
            continue
        ion = str(initial.info.get("ion") or initial.get_chemical_symbols()[0])
        for label, atoms in (("initial", initial), ("final", final)):
            yield Host("barriers", f"{name}:{label}", _bare(atoms), ion)
        mid = _bare(initial)
        step = final.positions - initial.positions
        step -= mid.cell.cartesian_positions(np.round(mid.cell.scaled_positions(step)))  # shortest image
        mid.positions += 0.5 * step
        yield Host("barriers", f"{name}:midpoint", mid, ion)


def obelix_hosts(cif_dir: Path, skipped: list[Skipped]) -> Iterator[Host]:
    from screening.candidates import import_file

    for cif in sorted(cif_dir.glob("*.cif")):
        try:
            candidate = import_file(cif, working_ion="Li")
        except IonscreenError as err:
            skipped.append(Skipped("obelix", cif.stem, str(err).splitlines()[0]))
            continue
        # "<id>:<formula>": a bare id such as 1e9 would come back from extxyz as a number
        yield Host("obelix", f"{cif.stem}:{candidate.formula}", _ase(candidate.structure), "Li")


def _bare(atoms: Atoms) -> Atoms:
    return Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=True)


def close_contact(atoms: Atoms, rng: np.random.Generator) -> Atoms | None:
    """One random atom moved along the line to its nearest neighbour until they are 80% as far apart (not
    closer than ``MIN_CONTACT_A``): the repulsive wall a student needs to see."""
    atoms = atoms.copy()
    i = int(rng.integers(len(atoms)))
    vectors = atoms.positions - atoms.positions[i]
    vectors -= atoms.cell.cartesian_positions(np.round(atoms.cell.scaled_positions(vectors)))
    d = np.linalg.norm(vectors, axis=1)
    d[i] = np.inf
    j = int(np.argmin(d))
    target = max(0.8 * d[j], MIN_CONTACT_A)
    if target >= d[j]:
        return None
    atoms.positions[i] += vectors[j] / d[j] * (d[j] - target)
    atoms.wrap()
    return atoms


def vacancy(atoms: Atoms, ion: str, rng: np.random.Generator) -> Atoms | None:
    sites = [k for k, s in enumerate(atoms.get_chemical_symbols()) if s == ion]
    if len(sites) < 2:  # removing the only ion leaves the empty host, which is made separately
        return None
    atoms = atoms.copy()
    del atoms[int(rng.choice(sites))]
    return atoms


def interstitial(atoms: Atoms, ion: str) -> Atoms:
    atoms = atoms.copy()
    atoms += Atoms(ion, positions=[largest_void(atoms)])
    return atoms


def variants(host: Host, seed: int) -> Iterator[tuple[str, Atoms]]:
    rng = np.random.default_rng(seed)
    yield "as-built", host.atoms.copy()
    yield "rattle-0.04", rattle(host.atoms, rng, 0.04)
    yield "rattle-0.10", rattle(host.atoms, rng, 0.10)
    yield "strain-4%", strain(rattle(host.atoms, rng, 0.03), rng, 0.04)[0]
    yield "shear-3%", strain(rattle(host.atoms, rng, 0.03), rng, 0.03, shear=True)[0]
    made = vacancy(rattle(host.atoms, rng, 0.03), host.ion, rng)
    if made is not None:
        yield "vacancy", made
    made = close_contact(rattle(host.atoms, rng, 0.02), rng)
    if made is not None:
        yield "close-contact", made


def make_configs(sources: tuple[str, ...] = SOURCES, *, seed: int = 20261202, max_atoms: int = 200,
                 reference_dir: Path = REFERENCE_DIR, min_length_A: float | None = None,
                 hosts: str | None = None) -> tuple[list[Atoms], list[Skipped]]:
    """Every variant of every host of ``sources``, with its origin in ``info``; hosts over ``max_atoms`` skipped.

    ``min_length_A`` repeats each host until every cell height is at least that (the cells a transport run
    simulates, for hosts whose own cell is smaller than the model's reach); ``hosts`` keeps only hosts whose name
    matches that regular expression. Seeds depend on a host's position in its source, not on the filter."""
    from screening.cells import make_supercell

    skipped: list[Skipped] = []
    makers = {
        "library": lambda: library_hosts(skipped),
        "barriers": lambda: barrier_hosts(reference_dir / "migration-barriers" / "train_endpoints.extxyz.gz", skipped),
        "obelix": lambda: obelix_hosts(reference_dir / "obelix" / "cifs", skipped),
    }
    configs: list[Atoms] = []
    for source in sources:
        for h, host in enumerate(makers[source]()):
            if hosts is not None and not re.search(hosts, host.name):
                continue
            if min_length_A is not None:
                try:
                    host.atoms = make_supercell(host.atoms, min_length_A, name=f"{source}:{host.name}")[0]
                except IonscreenError as err:
                    skipped.append(Skipped(source, host.name, str(err).splitlines()[0]))
                    continue
            if len(host.atoms) > max_atoms:
                skipped.append(Skipped(source, host.name, f"{len(host.atoms)} atoms > {max_atoms}"))
                continue
            host_seed = seed + 7919 * h + 104729 * SOURCES.index(source)
            for kind, atoms in variants(host, host_seed):
                if min_distance(atoms) < MIN_CONTACT_A - 1e-6:
                    continue  # a variant closer than any teacher has seen would only teach noise
                atoms.info.update({"config_type": f"{source}:{kind}", "source": source,
                                   "host": host.name, "kind": kind, "seed": host_seed, "working_ion": host.ion})
                configs.append(atoms)
    return configs, skipped


def hop_frames(configs: list[Atoms]) -> list[Atoms]:
    """Three frames per migration-barrier hop instead of 21: both endpoints as built and the midpoint rattled by
    0.04 Å, with ``host`` = the hop (``SYS#jid``; the point goes to ``endpoint``), so that a dataset split by
    host keeps a hop's three frames in one split. Other sources pass unchanged."""
    kept = []
    for atoms in configs:
        if atoms.info["source"] != "barriers":
            kept.append(atoms)
            continue
        hop, _, point = str(atoms.info["host"]).rpartition(":")
        if atoms.info["kind"] == ("rattle-0.04" if point == "midpoint" else "as-built"):
            atoms.info.update({"host": hop, "endpoint": point})
            kept.append(atoms)
    return kept


def main(argv: list[str] | None = None) -> int:
    from ase.io import write

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sources", default=",".join(SOURCES))
    parser.add_argument("--seed", type=int, default=20261202)
    parser.add_argument("--max-atoms", type=int, default=200)
    parser.add_argument("--reference-dir", type=Path, default=REFERENCE_DIR)
    parser.add_argument("--elements", default=None,
                        help="comma-separated: keep only configurations whose elements all lie in this set")
    parser.add_argument("--min-length-A", type=float, default=None,
                        help="repeat each host until every cell height is at least this (a transport run's cell)")
    parser.add_argument("--hosts", default=None, help="only hosts whose name matches this regular expression")
    parser.add_argument("--hop-frames", action="store_true",
                        help="barriers: both endpoints as built and the midpoint rattled, grouped by hop (3 per hop)")
    args = parser.parse_args(argv)
    sources = tuple(s.strip() for s in args.sources.split(",") if s.strip())
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown:
        parser.error(f"unknown source(s) {', '.join(unknown)}; known: {', '.join(SOURCES)}")
    if args.hosts is not None:
        try:
            re.compile(args.hosts)
        except re.error as err:
            parser.error(f"--hosts {args.hosts!r} is not a regular expression: {err}")
    configs, skipped = make_configs(sources, seed=args.seed, max_atoms=args.max_atoms,
                                    reference_dir=args.reference_dir, min_length_A=args.min_length_A,
                                    hosts=args.hosts)
    if args.elements:
        allowed = {e.strip() for e in args.elements.split(",") if e.strip()}
        configs = [a for a in configs if set(a.get_chemical_symbols()) <= allowed]
    if args.hop_frames:
        configs = hop_frames(configs)
    write(args.out, configs, format="extxyz")
    per_source = Counter(a.info["source"] for a in configs)
    elements = sorted({s for a in configs for s in a.get_chemical_symbols()})
    print(f"{len(configs)} configurations ({', '.join(f'{k}: {v}' for k, v in per_source.items())}), "
          f"{sum(len(a) for a in configs)} atoms, {len(elements)} elements: {' '.join(elements)}")
    for s in skipped:
        print(f"skipped {s.source}:{s.name}: {s.reason}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
