"""Supercells large enough that a particle never meets its own periodic image within a length, and the bounds on
every cell we build or simulate (atoms, lengths)."""

from __future__ import annotations

import math

import numpy as np
from ase import Atoms

from mlip.errors import InputError

#: Atoms of any cell we build or simulate: the ordering cell, the transport MD supercell, the NEB supercell.
MAX_SIMULATION_ATOMS = 5000
#: Longest minimum length of a supercell (transport: every cell height; NEB: every lattice vector), Å;
#: 100 Å already means >10^5 atoms of a dense solid.
MAX_SUPERCELL_LENGTH_A = 100.0


def cell_heights_A(cell) -> np.ndarray:
    """Perpendicular widths of a cell (distance between opposite faces), Å; an InputError for a cell that is not
    finite or has no volume."""
    c = np.asarray(cell, dtype=float)
    volume = abs(float(np.linalg.det(c)))
    if not math.isfinite(volume):
        raise InputError("the cell is not finite")
    if volume < 1e-6:
        raise InputError("the cell has no volume; a crystal needs three independent lattice vectors")
    return np.array([volume / np.linalg.norm(np.cross(c[(i + 1) % 3], c[(i + 2) % 3])) for i in range(3)])


def check_supercell_atoms(n_atoms: int, repeats, *, what: str, max_atoms: int | None = None) -> int:
    """Atoms of ``repeats`` copies of a cell of ``n_atoms``; an InputError naming ``what``, the repeats, the count
    and the limit when they are more than ``max_atoms`` (default, and at most, ``MAX_SIMULATION_ATOMS``)."""
    limit = MAX_SIMULATION_ATOMS if max_atoms is None else min(max_atoms, MAX_SIMULATION_ATOMS)
    total = n_atoms * math.prod(repeats)
    if total > limit:
        bound = "MAX_SIMULATION_ATOMS" if limit == MAX_SIMULATION_ATOMS else f"max_atoms = {max_atoms:,}"
        a, b, c = repeats
        raise InputError(f"{what} is {a}x{b}x{c} cells of {n_atoms} atoms = {total:,} atoms, more than the {limit:,} "
                         f"a simulation may have ({bound}); lower the minimum length or simulate a smaller cell")
    return total


def repeats_for_min_height(cell, min_height_A: float, n_atoms: int, *, what: str | None = None) -> tuple[int, int, int]:
    """Smallest diagonal repeats so every face-to-face width (hence every lattice vector) ≥ ``min_height_A``;
    refused when the supercell of a cell of ``n_atoms`` would be too large (``what`` names it in the message)."""
    heights = cell_heights_A(cell)
    reps = tuple(int(max(1, np.ceil(min_height_A / h - 1e-9))) for h in heights)
    check_supercell_atoms(n_atoms, reps, what=what or f"the supercell with every cell height ≥ {min_height_A:g} Å")
    return reps


def make_supercell(atoms: Atoms, min_height_A: float, *, name: str | None = None) -> tuple[Atoms, tuple[int, int, int]]:
    """``atoms`` repeated so every cell height is at least ``min_height_A``; ``name`` (default: the formula) names the
    structure when the supercell would hold more than ``MAX_SIMULATION_ATOMS`` atoms."""
    what = f"the {name or atoms.get_chemical_formula()} supercell with every cell height ≥ {min_height_A:g} Å"
    reps = repeats_for_min_height(atoms.cell.array, min_height_A, len(atoms), what=what)
    return atoms.repeat(reps), reps
