"""Generate the configurations labelled with CP2K for the bundled demo model (Li–P–S–Cl space).

Round 1 ("lattice"): Li2S, β-Li3PS4, an ordered Li6PS5Cl approximant and LiCl, each pristine, rattled
at several amplitudes, strained, with a hot Li sublattice, and with Frenkel/Schottky/antisite defects.
Later rounds ("md"): frames sub-sampled from MD trajectories run with a model trained on earlier rounds.
Every configuration records how it was made (info: config_type, base, kind, round, seed, parameters).

    python -m training.demo.make_configs lattice --out round1.xyz
    python -m training.demo.make_configs md TRAJ.xyz [TRAJ2.xyz ...] --every 20 --round 2 --out round2.xyz
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.geometry import get_distances

MIN_DISTANCE_A = 1.55  # closer contacts than this are unphysical for Li-P-S-Cl and make CP2K struggle
PS_BOND_A = 2.05  # P-S bond in thiophosphate PS4 tetrahedra


# ---------------------------------------------------------------------------------------------------
# Parent structures (sources: /work/shared/reference/crystal-structures.md)


def li2s_conventional(reps: tuple[int, int, int]) -> Atoms:
    """Anti-fluorite Li2S (Fm-3m, a = 5.70 Å: S on 4a, Li on 8c), conventional cell repeated;
    2x1x1 = Li16S8, 24 atoms, 11.4 x 5.7 x 5.7 Å."""
    from ase.build import bulk

    # ASE's fluorite prototype puts the first symbol on 4a (the cation site of CaF2); here that is S.
    return bulk("SLi2", "fluorite", a=5.70, cubic=True).repeat(reps)


def licl_conventional(reps: tuple[int, int, int]) -> Atoms:
    """Rocksalt LiCl (a = 5.13 Å) conventional cell repeated; 2x2x2 = 64 atoms, 10.26 Å cube."""
    from ase.build import bulk

    return bulk("LiCl", "rocksalt", a=5.13, cubic=True).repeat(reps)


def beta_li3ps4() -> Atoms:
    """β-Li3PS4 (Pnma, Li12P4S16, 32 atoms), ordered: Li on 8d (full) and 4b (full), 4c empty.

    Source coordinates (ICSD 180319 via OBELiX) carry ±0.01 fractional noise, so the PS4 tetrahedra are
    regularised to P-S = 2.05 Å along the given bond directions. The 4b/4c Li split (0.7/0.3) is ordered
    onto 4b because 4c as given sits 1.5 Å from an S.
    """
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    s = Structure.from_spacegroup(
        "Pnma", Lattice.orthorhombic(12.819, 8.2195, 6.1236),
        ["Li", "Li", "P", "S", "S", "S"],
        [[0.1517, 0.5136, 0.9357], [0, 0, 0.5], [0.0944, 0.25, 0.1616],
         [0.1509, 0.0544, 0.2813], [0.0741, 0.75, 0.7367], [0.1042, 0.25, 0.8383]],
    )
    atoms = AseAtomsAdaptor.get_atoms(s)
    return _regularise_ps4(atoms)


def _regularise_ps4(atoms: Atoms) -> Atoms:
    atoms = atoms.copy()
    sym = np.array(atoms.get_chemical_symbols())
    p_idx, s_idx = np.where(sym == "P")[0], np.where(sym == "S")[0]
    vec, dist = get_distances(atoms.positions[p_idx], atoms.positions[s_idx], cell=atoms.cell, pbc=True)
    for ip, p in enumerate(p_idx):
        for js in np.argsort(dist[ip])[:4]:
            atoms.positions[s_idx[js]] = atoms.positions[p] + vec[ip, js] / dist[ip, js] * PS_BOND_A
    atoms.wrap()
    return atoms


def li6ps5cl_ordered() -> Atoms:
    """Ordered Li6PS5Cl approximant from the F-43m argyrodite (a = 9.86 Å): Li24P4S20Cl4, 52 atoms.

    Disorder resolved deterministically: S on 4a and Cl on 4d (the majority occupations); Li 48h is half
    occupied in close pairs (1.8 Å apart), so one site of each pair is kept, chosen by descending a
    point-charge energy (1/r summed over Li pairs) with single pair flips from a fixed start.
    """
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    s = Structure.from_spacegroup(
        "F-43m", Lattice.cubic(9.86), ["Li", "P", "S", "S", "Cl"],
        [[0.0204, 0.1851, 0.8149], [0, 0, 0.5], [0.1178, 0.3822, 0.1178], [0, 0, 0], [0.25, 0.25, 0.75]],
    )
    atoms = AseAtomsAdaptor.get_atoms(s)
    li = np.where(atoms.numbers == 3)[0]
    _, d = get_distances(atoms.positions[li], cell=atoms.cell, pbc=True)
    np.fill_diagonal(d, np.inf)
    pairs: list[tuple[int, int]] = []
    used: set[int] = set()
    for i in range(len(li)):
        if i in used:
            continue
        j = int(np.argmin(d[i]))
        pairs.append((i, j))
        used.update((i, j))
    if len(pairs) != len(li) // 2:
        raise RuntimeError("48h sites did not pair up")
    inv = 1.0 / d
    choice = np.zeros(len(pairs), dtype=int)

    def energy(ch: np.ndarray) -> float:
        kept = [p[c] for p, c in zip(pairs, ch)]
        return float(inv[np.ix_(kept, kept)].sum())

    best = energy(choice)
    improved = True
    while improved:
        improved = False
        for k in range(len(pairs)):
            trial = choice.copy()
            trial[k] ^= 1
            e = energy(trial)
            if e < best - 1e-12:
                choice, best, improved = trial, e, True
    drop = [li[p[1 - c]] for p, c in zip(pairs, choice)]
    keep = [i for i in range(len(atoms)) if i not in set(drop)]
    return atoms[keep]


# Every parent cell is orthorhombic (CP2K's fast grids). Short edges are sampled with k-points by the
# labeller (kpoint_min_length_A = 9 Å: Li2S_24 and beta-Li3PS4_32 get 1x2x2, the ~10 Å cubes Gamma only),
# because Gamma-only Li2S labels were 1.4 eV/atom off at 5.7 Å, 0.25 at 8.1 Å and 0.05 at 11.4 Å.
@dataclass(frozen=True)
class Parent:
    name: str
    build: Callable[[], Atoms]
    schottky: tuple[str, ...] | None  # a neutral, closed-shell fragment removed for a Schottky defect
    weight: float  # share of the variants this parent gets


PARENTS: dict[str, Parent] = {
    p.name: p
    for p in (
        Parent("Li6PS5Cl_52", li6ps5cl_ordered, ("Li", "Cl"), 1.6),
        Parent("beta-Li3PS4_32", beta_li3ps4, None, 1.5),
        Parent("Li2S_24", lambda: li2s_conventional((2, 1, 1)), ("Li", "Li", "S"), 1.1),
        Parent("LiCl_64", lambda: licl_conventional((2, 2, 2)), ("Li", "Cl"), 0.8),
    )
}


# ---------------------------------------------------------------------------------------------------
# Variants


def _mic_distances(points: np.ndarray, atoms: Atoms) -> np.ndarray:
    """Distances (len(points), len(atoms)) under the minimum image convention; a fast path for the
    orthorhombic cells used here (wrapping fractional differences is exact there)."""
    if not np.allclose(atoms.cell.angles(), 90.0):
        return get_distances(points, atoms.positions, cell=atoms.cell, pbc=True)[1]
    lengths = atoms.cell.lengths()
    diff = points[:, None, :] - atoms.positions[None, :, :]
    diff -= np.round(diff / lengths) * lengths
    return np.sqrt((diff**2).sum(axis=-1))


def min_distance(atoms: Atoms) -> float:
    d = _mic_distances(atoms.positions, atoms)
    np.fill_diagonal(d, np.inf)
    return float(d.min())


def rattle(atoms: Atoms, rng: np.random.Generator, sigma_A: float, only: str | None = None) -> Atoms:
    atoms = atoms.copy()
    mask = np.ones(len(atoms), bool) if only is None else np.array(atoms.get_chemical_symbols()) == only
    atoms.positions[mask] += rng.normal(0.0, sigma_A, size=(int(mask.sum()), 3))
    atoms.wrap()
    return atoms


def strain(atoms: Atoms, rng: np.random.Generator, max_strain: float, shear: bool = False) -> tuple[Atoms, np.ndarray]:
    """Random strain with components up to ``max_strain``; normal components only unless ``shear``.

    Normal strain keeps orthorhombic cells orthorhombic, which CP2K evaluates several times faster
    than general cells (a sheared 24-atom cell took ~8x longer per SCF step here), so round 1 has none.
    """
    eps = np.zeros((3, 3))
    if shear:
        off = rng.uniform(-max_strain, max_strain, size=(3, 3))
        eps = 0.5 * (off + off.T)
    eps[np.diag_indices(3)] = rng.uniform(-max_strain, max_strain, size=3)
    atoms = atoms.copy()
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
    return atoms, eps


def largest_void(atoms: Atoms, spacing_A: float = 0.4) -> np.ndarray:
    """Cartesian position of the grid point farthest from every atom."""
    n = np.maximum(2, np.ceil(atoms.cell.lengths() / spacing_A).astype(int))
    frac = np.stack(np.meshgrid(*[np.arange(k) / k for k in n], indexing="ij"), -1).reshape(-1, 3)
    pts = frac @ atoms.cell.array
    d = np.round(_mic_distances(pts, atoms).min(axis=1), 4)  # equivalent voids tie exactly: first wins
    return pts[int(np.argmax(d))]


def frenkel(atoms: Atoms, rng: np.random.Generator) -> Atoms:
    atoms = atoms.copy()
    li = np.where(atoms.numbers == 3)[0]
    victim = int(rng.choice(li))
    del atoms[victim]
    atoms += Atoms("Li", positions=[largest_void(atoms)])
    return atoms


def schottky(atoms: Atoms, rng: np.random.Generator, fragment: tuple[str, ...]) -> Atoms:
    """Remove a neutral fragment (e.g. Li+Cl) made of mutually close atoms, keeping the electron count even."""
    atoms = atoms.copy()
    sym = np.array(atoms.get_chemical_symbols())
    anion = [s for s in fragment if s != "Li"][0]
    a_idx = int(rng.choice(np.where(sym == anion)[0]))
    li = np.where(sym == "Li")[0]
    _, d = get_distances(atoms.positions[[a_idx]], atoms.positions[li], cell=atoms.cell, pbc=True)
    n_li = fragment.count("Li")
    remove = [a_idx] + [int(li[k]) for k in np.argsort(d[0])[:n_li]]
    del atoms[sorted(remove)]
    return atoms


def antisite(atoms: Atoms, rng: np.random.Generator) -> Atoms:
    """Swap one free S (not bonded to P) with one Cl: the S/Cl site disorder of the argyrodite."""
    atoms = atoms.copy()
    sym = np.array(atoms.get_chemical_symbols())
    s_idx, cl_idx, p_idx = (np.where(sym == e)[0] for e in ("S", "Cl", "P"))
    _, d = get_distances(atoms.positions[s_idx], atoms.positions[p_idx], cell=atoms.cell, pbc=True)
    free_s = s_idx[d.min(axis=1) > 2.6]
    i, j = int(rng.choice(free_s)), int(rng.choice(cl_idx))
    numbers = atoms.numbers.copy()
    numbers[i], numbers[j] = numbers[j], numbers[i]
    atoms.numbers = numbers
    return atoms


@dataclass(frozen=True)
class Recipe:
    kind: str
    count: int  # per unit weight of a parent
    make: Callable[[Atoms, np.random.Generator, Parent], tuple[Atoms, dict]]
    only: tuple[str, ...] | None = None  # parents this recipe applies to


def _rattle_recipe(sigma: float) -> Callable:
    return lambda a, rng, p: (rattle(a, rng, sigma), {"rattle_sigma_A": sigma})


def _strain_recipe(max_strain: float, shear: bool = False) -> Callable:
    def make(a, rng, p):
        s, eps = strain(a, rng, max_strain, shear)
        return rattle(s, rng, 0.05), {"max_strain": max_strain, "volume_ratio": float(np.linalg.det(np.eye(3) + eps)),
                                      "rattle_sigma_A": 0.05}
    return make


LATTICE_RECIPES: tuple[Recipe, ...] = (
    Recipe("pristine", 1, lambda a, rng, p: (a.copy(), {})),
    Recipe("rattle_0.03", 5, _rattle_recipe(0.03)),
    Recipe("rattle_0.06", 6, _rattle_recipe(0.06)),
    Recipe("rattle_0.12", 5, _rattle_recipe(0.12)),
    Recipe("strain_0.02", 3, _strain_recipe(0.02)),
    Recipe("strain_0.05", 4, _strain_recipe(0.05)),
    Recipe("hot_li", 3, lambda a, rng, p: (rattle(rattle(a, rng, 0.20, only="Li"), rng, 0.04),
                                            {"li_sigma_A": 0.20, "rattle_sigma_A": 0.04})),
    Recipe("frenkel", 2, lambda a, rng, p: (rattle(frenkel(a, rng), rng, 0.05), {"rattle_sigma_A": 0.05})),
    Recipe("schottky", 2, lambda a, rng, p: (rattle(schottky(a, rng, p.schottky), rng, 0.05),
                                             {"removed": "".join(p.schottky), "rattle_sigma_A": 0.05})),
    Recipe("antisite", 3, lambda a, rng, p: (rattle(antisite(a, rng), rng, 0.05), {"rattle_sigma_A": 0.05}),
           only=("Li6PS5Cl_52",)),
)


def lattice_round(seed: int = 20260601, scale: float = 1.3) -> list[Atoms]:
    """Round 1: pristine, rattled, strained, hot-Li and defect variants of every parent.

    The output is interleaved (variant k of every parent and recipe before variant k+1), so a labelling
    run stopped early still covers every parent and kind.
    """
    out: list[tuple[int, int, int, Atoms]] = []
    for p_i, parent in enumerate(PARENTS.values()):
        base = parent.build()
        for r_i, recipe in enumerate(LATTICE_RECIPES):
            if recipe.only is not None and parent.name not in recipe.only:
                continue
            if recipe.kind == "schottky" and parent.schottky is None:
                continue  # no neutral fragment that leaves sensible chemistry (e.g. removing S breaks a PS4)
            n = 1 if recipe.kind == "pristine" else max(1, int(round(recipe.count * parent.weight * scale)))
            for k in range(n):
                for attempt in itertools.count():
                    sub_seed = [seed, p_i, r_i, k, attempt]
                    rng = np.random.default_rng(sub_seed)
                    atoms, params = recipe.make(base, rng, parent)
                    if min_distance(atoms) >= MIN_DISTANCE_A:
                        break
                    if attempt > 50:
                        raise RuntimeError(f"cannot make {recipe.kind} of {parent.name} without close contacts")
                atoms.info.update({
                    "config_type": f"{parent.name.split('_')[0]}:{recipe.kind.split('_')[0]}",
                    "base": parent.name, "kind": recipe.kind, "round": 1,
                    "seed": "-".join(map(str, sub_seed)), **params,
                })
                out.append((k, r_i, p_i, atoms))
    out.sort(key=lambda t: t[:3])
    return [t[3] for t in out]


def md_round(trajectories: list[Path], every: int, round_no: int, max_frames: int | None, seed: int) -> list[Atoms]:
    """Later rounds: every ``every``-th frame of MD trajectories (run with a model trained on earlier rounds)."""
    from ase.io import read

    out: list[Atoms] = []
    for path in trajectories:
        frames = read(str(path), index=f"::{every}")
        for k, atoms in enumerate(frames):
            clean = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=True)
            temp = atoms.info.get("temperature_K")
            clean.info.update({
                "config_type": f"{atoms.info.get('base', path.stem).split('_')[0]}:md",
                "base": str(atoms.info.get("base", path.stem)), "kind": "md", "round": round_no,
                "source_traj": path.name, "traj_frame": k * every, "seed": str(seed),
            })
            if temp is not None:
                clean.info["temperature_K"] = float(temp)
            out.append(clean)
    if max_frames is not None and len(out) > max_frames:
        pick = np.sort(np.random.default_rng(seed).choice(len(out), size=max_frames, replace=False))
        out = [out[i] for i in pick]
    return out


# Ground-state spin multiplicity of the free atoms (Hund's rule), for the isolated-atom reference energies.
ATOM_MULTIPLICITY = {"Li": 2, "P": 4, "S": 3, "Cl": 2}


def isolated_atoms(box_A: float = 12.0) -> list[Atoms]:
    """One atom per element in a cubic box: config_type 'IsolatedAtom', which mace-torch reads as E0s.

    Labelled separately (OT, unrestricted, multiplicity from info) because smearing needs more orbitals
    than a minimal basis gives a single atom.
    """
    out = []
    for symbol, mult in ATOM_MULTIPLICITY.items():
        a = Atoms(symbol, positions=[[box_A / 2] * 3], cell=[box_A] * 3, pbc=True)
        a.info.update({"config_type": "IsolatedAtom", "base": f"{symbol}_atom", "kind": "isolated_atom",
                       "round": 0, "multiplicity": mult, "box_A": box_A})
        out.append(a)
    return out


def describe(frames: list[Atoms]) -> str:
    by = Counter((f.info["base"], f.info["kind"]) for f in frames)
    lines = [f"{len(frames)} configurations"]
    for base in dict.fromkeys(f.info["base"] for f in frames):
        kinds = {k: n for (b, k), n in by.items() if b == base}
        natoms = sorted({len(f) for f in frames if f.info["base"] == base})
        lines.append(f"  {base:16s} atoms {natoms}  " + ", ".join(f"{k}:{n}" for k, n in kinds.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from ase.io import write

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="round", required=True)
    lat = sub.add_parser("lattice", help="round 1: rattled/strained/defect variants of the parents")
    lat.add_argument("--seed", type=int, default=20260601)
    lat.add_argument("--scale", type=float, default=1.3, help="multiply the number of variants")
    lat.add_argument("--out", type=Path, required=True)
    iso = sub.add_parser("isolated", help="one atom per element in a box (IsolatedAtom, for E0s)")
    iso.add_argument("--box-A", type=float, default=12.0)
    iso.add_argument("--out", type=Path, required=True)
    md = sub.add_parser("md", help="later rounds: frames from MD trajectories")
    md.add_argument("trajectories", type=Path, nargs="+")
    md.add_argument("--every", type=int, default=20)
    md.add_argument("--round", dest="round_no", type=int, required=True)
    md.add_argument("--max-frames", type=int, default=None)
    md.add_argument("--seed", type=int, default=0)
    md.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.round == "lattice":
        frames = lattice_round(args.seed, args.scale)
    elif args.round == "isolated":
        frames = isolated_atoms(args.box_A)
    else:
        frames = md_round(args.trajectories, args.every, args.round_no, args.max_frames, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write(str(args.out), frames, format="extxyz")
    print(describe(frames))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
