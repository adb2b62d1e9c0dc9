"""Small labelled datasets with exactly known energies, forces and stresses, for tests and benchmarks
of training and evaluation (never for science).

Labels come from a per-element-pair Morse potential with shifted forces (smooth at the cutoff) plus a
constant energy per element, so a MACE model can learn them and E0 fits have a known answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.data import atomic_numbers

#: (D_eV, a_per_A, r0_A) per element pair: a rough Li/Cl/S/Na chemistry, only the shape matters.
DEFAULT_PAIRS: dict[tuple[str, str], tuple[float, float, float]] = {
    ("Li", "Li"): (0.05, 1.2, 3.0),
    ("Li", "Cl"): (0.40, 1.3, 2.6),
    ("Cl", "Cl"): (0.10, 1.1, 3.6),
    ("Li", "S"): (0.50, 1.3, 2.5),
    ("S", "S"): (0.15, 1.1, 3.5),
    ("Cl", "S"): (0.10, 1.1, 3.5),
    ("Na", "Na"): (0.05, 1.1, 3.6),
    ("Na", "Cl"): (0.40, 1.2, 2.9),
    ("Li", "Na"): (0.05, 1.1, 3.3),
}
DEFAULT_E0_EV = {"Li": -1.9, "Cl": -0.7, "S": -1.1, "Na": -1.3}


class PairMorse(Calculator):
    """Sum over pairs of a shifted-force Morse potential plus ``e0`` per atom; energy, forces, stress exact."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, pairs: Mapping[tuple[str, str], tuple[float, float, float]] | None = None,
                 e0_eV: Mapping[str, float] | None = None, cutoff_A: float = 5.0, **kwargs):
        super().__init__(**kwargs)
        pairs = pairs or DEFAULT_PAIRS
        self.pairs = {tuple(sorted((atomic_numbers[a], atomic_numbers[b]))): v for (a, b), v in pairs.items()}
        self.e0 = {atomic_numbers[k]: v for k, v in (e0_eV or DEFAULT_E0_EV).items()}
        self.cutoff_A = cutoff_A

    def _phi(self, z1: int, z2: int, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d, a, r0 = self.pairs[tuple(sorted((z1, z2)))]

        def f(x):
            e = np.exp(-a * (x - r0))
            return d * (e * e - 2 * e)

        def df(x):
            e = np.exp(-a * (x - r0))
            return 2 * a * d * (e - e * e)

        rc = self.cutoff_A
        return f(r) - f(rc) - (r - rc) * df(rc), df(r) - df(rc)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        from ase.neighborlist import neighbor_list

        super().calculate(atoms, properties, system_changes)
        at = self.atoms
        i, j, d, vec = neighbor_list("ijdD", at, self.cutoff_A)
        z = at.numbers
        e = np.zeros(len(i))
        de = np.zeros(len(i))
        for z1, z2 in set(zip(z[i].tolist(), z[j].tolist())):
            m = (z[i] == z1) & (z[j] == z2)
            e[m], de[m] = self._phi(z1, z2, d[m])
        energy = 0.5 * e.sum() + sum(self.e0[int(k)] for k in z)
        g = (de / d)[:, None] * vec  # each pair appears as (i, j) and (j, i)
        forces = np.zeros((len(at), 3))
        np.add.at(forces, i, g)
        results = {"energy": energy, "free_energy": energy, "forces": forces}
        if np.all(at.pbc) and at.cell.rank == 3:
            s = 0.5 * np.einsum("p,pa,pb->ab", de / d, vec, vec) / at.get_volume()
            results["stress"] = s[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
        self.results = results


def pair_frames(n_frames: int, *, seed: int = 0, elements: Sequence[str] = ("Li", "Cl"),
                calculator: Calculator | None = None) -> list[Atoms]:
    """Rattled, strained, partly de-lithiated rock-salt cells labelled by :class:`PairMorse`.

    Frames alternate between config types 'rattled' (large displacements) and 'strained' (cell strain,
    small displacements); every third frame misses one atom so that the compositions pin the E0s.
    """
    from ase.build import bulk
    from ase.calculators.singlepoint import SinglePointCalculator

    if len(elements) != 2:
        raise ValueError("pair_frames builds binary rock-salt cells: give two elements")
    calc = calculator or PairMorse()
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n_frames):
        atoms = bulk("".join(elements), "rocksalt", a=5.14 * (1 + rng.uniform(-0.03, 0.03)), cubic=True)
        strained = k % 2 == 1
        if strained:
            eps = rng.uniform(-0.02, 0.02, size=(3, 3))
            atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.5 * (eps + eps.T)), scale_atoms=True)
        if k % 3 == 0:
            del atoms[[int(rng.integers(len(atoms)))]]
        atoms.rattle(0.05 if strained else 0.15, seed=seed * 1000 + k)
        atoms.calc = calc
        e, f, s = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        atoms.calc = SinglePointCalculator(atoms, energy=e, forces=f, stress=s)
        atoms.info["config_type"] = "strained" if strained else "rattled"
        frames.append(atoms)
    return frames


def isolated_atom_frames(elements: Sequence[str], calculator: Calculator | None = None,
                         box_A: float = 12.0) -> list[Atoms]:
    """One atom per element in a periodic box, config_type 'IsolatedAtom' (mace-torch's E0 reference frames)."""
    from ase.calculators.singlepoint import SinglePointCalculator

    calc = calculator or PairMorse()
    out = []
    for el in elements:
        atoms = Atoms(el, positions=[[box_A / 2] * 3], cell=[box_A] * 3, pbc=True)
        atoms.calc = calc
        e, f, s = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        atoms.calc = SinglePointCalculator(atoms, energy=e, forces=f, stress=s)
        atoms.info["config_type"] = "IsolatedAtom"
        out.append(atoms)
    return out


def make_pair_dataset(dataset_dir: str | Path, n_frames: int = 36, *, seed: int = 0,
                      elements: Sequence[str] = ("Li", "Cl"), split=None, isolated_atoms: bool = False):
    """Write :func:`pair_frames` (and, with ``isolated_atoms``, one isolated atom per element, whose
    energy is exactly the potential's E0) to extxyz and import them with :func:`training.data.import_files`."""
    from ase.io import write

    from training.data import SplitSpec, import_files

    dataset_dir = Path(dataset_dir)
    dataset_dir.parent.mkdir(parents=True, exist_ok=True)
    raw = dataset_dir.parent / f"{dataset_dir.name}-raw.xyz"
    frames = pair_frames(n_frames, seed=seed, elements=elements)
    if isolated_atoms:
        frames += isolated_atom_frames(elements)
    write(raw, frames)
    split = split or SplitSpec(train=0.7, valid=0.15, test=0.15, seed=seed)
    return import_files([raw], dataset_dir, split=split)
