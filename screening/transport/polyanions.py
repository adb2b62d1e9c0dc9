"""Isolated polyanions in a framework, and how far their ligands can move by rotation alone.

A ligand bonded to one centre and to nothing else in the framework (S of PS4, O of PO4 or SiO4, Cl of an
isolated YCl6) can travel over a sphere about its centre without leaving the solid: its mean-square
displacement from the start is bounded by 2r² (r the bond length, the average over a uniformly reoriented
bond) plus what the centre itself moves. A framework species whose MSD stays under that bound while its
centres stay put rotates (paddle-wheel, a plastic-crystal phase); past it, or with the centres moving, the
framework diffuses. ``framework_motion`` in ``analysis`` applies this.

Bonds are distances under ``BOND_FACTOR`` times the sum of the covalent radii (ASE's table). A centre has
3–6 such neighbours, all of other species, each bonded to it and to no other framework atom; bridged units
(P2S7, corner-sharing octahedra) and ligands that also bond to another framework cation (O of a garnet) do
not qualify, so their species keep the growth criterion alone.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, covalent_radii
from ase.neighborlist import neighbor_list

BOND_FACTOR = 1.15
MIN_LIGANDS, MAX_LIGANDS = 3, 6


def polyanion_rotors(symbols, positions_A: np.ndarray, cell_A: np.ndarray) -> dict[str, dict]:
    """Per framework species with ligands of isolated polyanions: ``centres`` (species), ``rotor_fraction``
    (share of the species' atoms that are such ligands) and ``rotation_msd_A2`` (2⟨r²⟩ over those atoms).

    ``symbols``/``positions_A`` are the framework atoms only; ``cell_A`` the periodic cell (3×3, Å)."""
    symbols = [str(s) for s in symbols]
    if len(symbols) < MIN_LIGANDS + 1:
        return {}
    atoms = Atoms(symbols=symbols, positions=np.asarray(positions_A, dtype=float), cell=np.asarray(cell_A, dtype=float),
                  pbc=True)
    cutoffs = [BOND_FACTOR * covalent_radii[atomic_numbers[s]] for s in symbols]
    i, j, d = neighbor_list("ijd", atoms, cutoffs)
    n = len(symbols)
    neighbours: list[list[tuple[int, float]]] = [[] for _ in range(n)]
    for a, b, dist in zip(i.tolist(), j.tolist(), d.tolist()):
        neighbours[a].append((b, dist))
    ligand_of: dict[int, tuple[int, float]] = {}
    for a in range(n):
        nb = neighbours[a]
        if not MIN_LIGANDS <= len(nb) <= MAX_LIGANDS:
            continue
        if any(symbols[b] == symbols[a] for b, _ in nb):
            continue
        if len({b for b, _ in nb}) != len(nb):  # the same atom twice: a cell too small to tell units apart
            continue
        if all(len(neighbours[b]) == 1 for b, _ in nb):
            for b, dist in nb:
                ligand_of[b] = (a, dist)
    out: dict[str, dict] = {}
    for s in sorted(set(symbols)):
        members = [k for k in range(n) if symbols[k] == s]
        rotors = [k for k in members if k in ligand_of]
        if not rotors:
            continue
        r2 = np.array([ligand_of[k][1] ** 2 for k in rotors])
        out[s] = {
            "centres": sorted({symbols[ligand_of[k][0]] for k in rotors}),
            "rotor_fraction": len(rotors) / len(members),
            "rotation_msd_A2": float(2.0 * r2.mean()),
        }
    return out
