"""Supercells large enough that a particle never meets its own periodic image within a length."""

from __future__ import annotations

import numpy as np
from ase import Atoms

from mlip.errors import InputError


def cell_heights_A(cell) -> np.ndarray:
    """Perpendicular widths of a cell (distance between opposite faces), Å."""
    c = np.asarray(cell, dtype=float)
    volume = abs(np.linalg.det(c))
    if volume < 1e-6:
        raise InputError("cell has zero volume")
    return np.array([volume / np.linalg.norm(np.cross(c[(i + 1) % 3], c[(i + 2) % 3])) for i in range(3)])


def repeats_for_min_height(cell, min_height_A: float) -> tuple[int, int, int]:
    """Smallest diagonal repeats so every face-to-face width (hence every lattice vector) ≥ ``min_height_A``."""
    heights = cell_heights_A(cell)
    return tuple(int(max(1, np.ceil(min_height_A / h - 1e-9))) for h in heights)


def make_supercell(atoms: Atoms, min_height_A: float) -> tuple[Atoms, tuple[int, int, int]]:
    reps = repeats_for_min_height(atoms.cell.array, min_height_A)
    return atoms.repeat(reps), reps
