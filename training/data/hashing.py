"""Content hashes of structures and datasets: the keys for de-duplication, resumable labelling and splits.

A structure hash depends only on what the structure *is* (atomic numbers, positions modulo lattice
translations, cell, periodicity), not on atom order or on which periodic image an atom was written in.
"""

from __future__ import annotations

import hashlib

import numpy as np
from ase import Atoms

# Resolution of the canonical form. Two frames whose coordinates differ by less than this are one
# structure; frames differing by more are different structures (even a 1e-4 Å rattle is a new frame).
FRAC_RESOLUTION = 1e-6
CELL_RESOLUTION_A = 1e-5
POS_RESOLUTION_A = 1e-5  # used for non-periodic directions


def structure_hash(atoms: Atoms) -> str:
    """SHA-256 (hex) of a canonical form of ``atoms``: order-, wrap- and image-independent."""
    numbers = np.asarray(atoms.numbers, dtype=np.int64)
    pbc = np.asarray(atoms.pbc, dtype=bool)
    cell = np.asarray(atoms.cell.array, dtype=float)
    periodic = pbc & (atoms.cell.rank == 3)
    frac = atoms.cell.scaled_positions(atoms.positions) if periodic.any() else None
    ints = np.empty((len(atoms), 3), dtype=np.int64)
    scale = round(1.0 / FRAC_RESOLUTION)
    for axis in range(3):
        if periodic[axis]:
            ints[:, axis] = np.rint(frac[:, axis] * scale).astype(np.int64) % scale
        else:
            ints[:, axis] = np.rint(atoms.positions[:, axis] / POS_RESOLUTION_A).astype(np.int64)
    order = np.lexsort((ints[:, 2], ints[:, 1], ints[:, 0], numbers))
    h = hashlib.sha256()
    h.update(b"ionscreen-structure-v1")
    h.update(pbc.astype(np.uint8).tobytes())
    h.update(np.rint(cell / CELL_RESOLUTION_A).astype(np.int64).tobytes())
    h.update(numbers[order].tobytes())
    h.update(ints[order].tobytes())
    return h.hexdigest()


def split_fraction(structure_hex: str, seed: int) -> float:
    """A number in [0, 1) fixed by the structure hash and the seed: the frame's place in the splits.

    Because it depends on nothing but the frame and the seed, appending frames never moves an existing
    frame to another split.
    """
    digest = hashlib.sha256(f"{seed}:{structure_hex}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64
