"""A stable structure hash: the same crystal gives the same hash whatever its site order, origin or cell.

Canonical form: primitive cell (pymatgen) → Niggli-reduced basis → for every lattice automorphism of that
basis (integer matrices with entries in {-1, 0, 1} that keep the metric) and every atom of the rarest
element moved to the origin, the sorted list of (element, rounded fractional coordinates); the
lexicographically smallest list, with the reduced formula and rounded Niggli metric, is hashed (SHA-256).
Elements only: oxidation states and site properties do not change the identity. Coordinates are compared
on a 1/``GRID`` grid, lengths at 0.01 Å, angles at 0.1°, so numerically noisy copies of one
structure agree unless a value straddles a rounding boundary (pymatgen's StructureMatcher is the fuzzy
alternative; the hash is the fast exact key used for deduplication).
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np

from mlip.util import canonical_sha256

#: Fractional coordinates are compared on a 1/1024 grid (~0.001). A power of two, not of ten: literature
#: coordinates have 3-5 decimals, so their differences never fall exactly on a rounding boundary.
GRID = 1024
PRIMITIVE_TOLERANCE = 0.05  # Å, for finding the primitive cell


@lru_cache(maxsize=1)
def _unimodular_candidates() -> np.ndarray:
    mats = np.array(list(itertools.product((-1, 0, 1), repeat=9)), dtype=int).reshape(-1, 3, 3)
    det = np.round(np.linalg.det(mats)).astype(int)
    return mats[np.abs(det) == 1]


def lattice_automorphisms(matrix: np.ndarray, tol: float = 1e-3) -> list[np.ndarray]:
    """Integer matrices T (rows combine basis vectors) with T G Tᵀ = G for the metric G of ``matrix``."""
    metric = matrix @ matrix.T
    cands = _unimodular_candidates()
    transformed = np.einsum("nij,jk,nlk->nil", cands, metric, cands)
    scale = max(1.0, float(np.abs(metric).max()))
    ok = np.all(np.abs(transformed - metric) < tol * scale, axis=(1, 2))
    return list(cands[ok])


def canonical_form(structure) -> dict:
    """The canonical description the hash is computed from (see module docstring)."""
    s = structure.copy()
    s.remove_oxidation_states()
    prim = s.get_primitive_structure(tolerance=PRIMITIVE_TOLERANCE)
    prim = prim.get_reduced_structure(reduction_algo="niggli")
    lattice = prim.lattice.matrix
    symbols = [site.species_string for site in prim]
    counts = {sym: symbols.count(sym) for sym in set(symbols)}
    rare = min(counts, key=lambda sym: (counts[sym], sym))
    anchors = [i for i, sym in enumerate(symbols) if sym == rare]
    frac = prim.frac_coords
    best: list | None = None
    for t in lattice_automorphisms(lattice):
        # new basis rows = T @ old basis; fractional coordinates transform with inv(T)ᵀ
        new_frac = frac @ np.linalg.inv(t)
        for a in anchors:
            shifted = new_frac - new_frac[a]
            grid = np.mod(np.floor(shifted * GRID + 0.5).astype(np.int64), GRID)
            rows = sorted((sym, *map(int, xyz)) for sym, xyz in zip(symbols, grid))
            if best is None or rows < best:
                best = rows
    abc = [round(float(x), 2) for x in prim.lattice.abc]
    angles = [round(float(x), 1) for x in prim.lattice.angles]
    return {
        "formula": prim.composition.reduced_formula,
        "n_sites": len(prim),
        "abc": abc,
        "angles": angles,
        "grid": GRID,
        "sites": [list(r) for r in (best or [])],
    }


def structure_hash(structure) -> str:
    """SHA-256 (hex) of the canonical form: equal for equal crystals, different otherwise."""
    return canonical_sha256(canonical_form(structure))
