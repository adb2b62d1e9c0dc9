"""Percolation barriers: the lowest barrier at which hops connect into a 1D, 2D and 3D network.

Hops are added in order of increasing barrier to a union-find over the ion sites of the unit cell
that also tracks, for every site, the lattice translation to its component's root. An edge that
closes a cycle adds the cycle's net translation to its component; the periodic dimensionality of a
component is the rank of those translations (0: isolated cluster, 3: percolates in every direction).
pymatgen-analysis-diffusion finds hops but not this threshold, hence our own implementation.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class WeightedEdge:
    """Site ``u`` in cell 0 connected to site ``v`` in cell ``image``, passable above ``barrier_eV``."""

    u: int
    v: int
    image: tuple[int, int, int]
    barrier_eV: float
    label: int | None = None


class PeriodicUnionFind:
    """Union-find over unit-cell sites with image offsets and the translation lattice per component."""

    def __init__(self, n_sites: int):
        self.parent = list(range(n_sites))
        self.offset = [np.zeros(3, dtype=np.int64) for _ in range(n_sites)]  # site image rel. to parent
        self.size = [1] * n_sites
        self.translations: list[list[np.ndarray]] = [[] for _ in range(n_sites)]  # independent, per root

    def find(self, x: int) -> tuple[int, np.ndarray]:
        """Root of ``x`` and the image of ``x`` relative to the root's copy in the same network."""
        path = []
        while self.parent[x] != x:
            path.append(x)
            x = self.parent[x]
        root = x
        # Path compression: offsets accumulate from the top of the path down.
        total = np.zeros(3, dtype=np.int64)
        for node in reversed(path):
            total = total + self.offset[node]
            self.offset[node] = total.copy()
            self.parent[node] = root
        return root, (self.offset[path[0]].copy() if path else np.zeros(3, dtype=np.int64))

    def _add_translation(self, root: int, vector: np.ndarray) -> None:
        if not np.any(vector):
            return
        basis = self.translations[root]
        if len(basis) >= 3:
            return
        if np.linalg.matrix_rank(np.array(basis + [vector], dtype=float)) > len(basis):
            basis.append(vector.astype(np.int64))

    def union(self, u: int, v: int, image: Sequence[int]) -> None:
        """Connect site ``u`` (cell 0) with site ``v`` in cell ``image``."""
        image = np.asarray(image, dtype=np.int64)
        ru, pu = self.find(u)
        rv, pv = self.find(v)
        # In ru's frame, u sits at pu, so this copy of v sits at pu + image; v's own tree places it at pv.
        delta = pu + image - pv  # where rv's frame lands in ru's frame
        if ru == rv:
            self._add_translation(ru, delta)
            return
        if self.size[ru] < self.size[rv]:
            ru, rv, delta = rv, ru, -delta
        self.parent[rv] = ru
        self.offset[rv] = delta
        self.size[ru] += self.size[rv]
        for vector in self.translations[rv]:
            self._add_translation(ru, vector)
        self.translations[rv] = []

    def dimensionality(self, site: int) -> int:
        root, _ = self.find(site)
        return len(self.translations[root])

    def max_dimensionality(self) -> int:
        return max((len(self.translations[r]) for r in range(len(self.parent)) if self.parent[r] == r), default=0)


def periodic_dimensionality(n_sites: int, edges: Iterable) -> int:
    """Largest periodic dimensionality (0-3) of the network formed by all ``edges``.

    An edge is anything with ``u``, ``v`` and ``image`` attributes, or a ``(u, v, image)`` tuple.
    """
    uf = PeriodicUnionFind(n_sites)
    for edge in edges:
        u, v, image = (edge.u, edge.v, edge.image) if hasattr(edge, "image") else edge[:3]
        uf.union(u, v, image)
    return uf.max_dimensionality()


@dataclasses.dataclass(frozen=True)
class PercolationThresholds:
    """Lowest barrier (eV) at which the network first percolates in 1, 2 and 3 dimensions (None: never)."""

    barrier_1d_eV: float | None
    barrier_2d_eV: float | None
    barrier_3d_eV: float | None
    labels_1d: tuple[int, ...] = ()
    labels_2d: tuple[int, ...] = ()
    labels_3d: tuple[int, ...] = ()


def percolation_barriers(n_sites: int, edges: Iterable[WeightedEdge]) -> PercolationThresholds:
    """Grow the network by increasing barrier; record when it first becomes 1D, 2D and 3D periodic."""
    ordered = sorted(edges, key=lambda e: e.barrier_eV)
    uf = PeriodicUnionFind(n_sites)
    thresholds: dict[int, float] = {}
    labels_at: dict[int, tuple[int, ...]] = {}
    used_labels: set[int] = set()
    i = 0
    while i < len(ordered):
        level = ordered[i].barrier_eV
        while i < len(ordered) and ordered[i].barrier_eV == level:  # all hops passable at this barrier
            edge = ordered[i]
            uf.union(edge.u, edge.v, edge.image)
            if edge.label is not None:
                used_labels.add(edge.label)
            i += 1
        dim = uf.max_dimensionality()
        for d in range(1, dim + 1):
            if d not in thresholds:
                thresholds[d] = level
                labels_at[d] = tuple(sorted(used_labels))
        if dim == 3:
            break
    return PercolationThresholds(
        thresholds.get(1), thresholds.get(2), thresholds.get(3),
        labels_at.get(1, ()), labels_at.get(2, ()), labels_at.get(3, ()),
    )
