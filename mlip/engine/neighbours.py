"""Skin neighbour lists and the graph tensors of a batch: several systems as one disjoint-union graph, whose
edges are the candidate pairs within ``r_max + skin`` filtered to ``r < r_max`` at every evaluation.

Candidate pairs are built on the CPU with matscipy, in a canonical order, and kept until some atom of that
system has moved more than half the skin; the model therefore sees exactly the edges a fresh list would
give, in an order that does not depend on when the list was built (results equal rebuilding every step,
and a resumed run continues bit for bit). Whether a list is stale is learnt without a transfer of its
own: the edge count the host needs anyway for the filter carries it (see :meth:`GraphBatch.edges`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from mlip.errors import InputError

if TYPE_CHECKING:
    import torch

    from mlip.engine.mace_model import LeanMACE

DEFAULT_SKIN_A = 1.0


def _candidate_pairs(positions: np.ndarray, cell: np.ndarray, pbc, cutoff: float):
    """Pairs within ``cutoff`` as (i, j, S) in canonical order (i, j, S lexicographic), no self pair."""
    from matscipy.neighbours import neighbour_list

    i, j, shift = neighbour_list("ijS", positions=positions, cell=cell, pbc=np.asarray(pbc), cutoff=cutoff)
    keep = ~((i == j) & np.all(shift == 0, axis=1))
    i, j, shift = i[keep], j[keep], shift[keep]
    order = np.lexsort((shift[:, 2], shift[:, 1], shift[:, 0], j, i))
    return i[order].astype(np.int64), j[order].astype(np.int64), shift[order].astype(np.int64)


class GraphBatch:
    """Positions, species and skin neighbour lists of several systems as one disjoint-union graph.

    ``positions`` (N, 3, float64, on the device) are the positions the graph is evaluated at; the model
    gets a copy in its dtype. In an MD batch they are the state's positions (:mod:`mlip.engine.state`).
    """

    def __init__(self, model: LeanMACE, numbers: Sequence, cells: Sequence, positions: Sequence,
                 *, skin_A: float = DEFAULT_SKIN_A, pbc: Sequence | None = None):
        import torch

        self.model = model
        self.skin_A = float(skin_A)
        if self.skin_A < 0:
            raise InputError(f"neighbour-list skin must be ≥ 0 Å, got {skin_A}")
        dev, f64 = model.device, torch.float64
        self.n_systems = len(numbers)
        self.counts = np.array([len(z) for z in numbers], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])
        self.n_atoms = int(self.offsets[-1])
        self.numbers = [np.asarray(z, dtype=np.int64) for z in numbers]
        self.cells_np = [np.asarray(c, dtype=np.float64).reshape(3, 3) for c in cells]
        self.pbc = list(pbc) if pbc is not None else [(True, True, True)] * self.n_systems
        species = np.concatenate([model.species_index(z) for z in self.numbers])
        attrs = np.zeros((self.n_atoms, len(model.atomic_numbers)))
        attrs[np.arange(self.n_atoms), species] = 1.0
        self.node_attrs = torch.tensor(attrs, dtype=model.torch_dtype, device=dev)
        self.system_idx = torch.tensor(np.repeat(np.arange(self.n_systems), self.counts), device=dev)
        self.batch = self.system_idx
        self.ptr = torch.tensor(self.offsets, device=dev)
        self.head = torch.full((self.n_systems,), model.head_index, dtype=torch.long, device=dev)
        self.cell = torch.tensor(np.concatenate(self.cells_np), dtype=model.torch_dtype, device=dev)
        self.cells64 = torch.tensor(np.stack(self.cells_np), dtype=f64, device=dev)
        self.positions = torch.tensor(np.concatenate([np.asarray(p, dtype=np.float64) for p in positions]),
                                      dtype=f64, device=dev)
        self._model_positions = torch.empty((self.n_atoms, 3), dtype=model.torch_dtype, device=dev)
        self._lists: list = [None] * self.n_systems  # per system: (i, j, shift64, ref positions) on the device
        self._joined = None
        self.n_rebuilds = 0
        self.rebuild_every_step = False
        self.last_edges = None

    # -- neighbour lists ----------------------------------------------------------------------------
    def _build(self, systems: Sequence[int]) -> None:
        """New candidate lists for ``systems`` (one device-to-host copy of their positions)."""
        import torch

        if not len(systems):
            return
        dev = self.model.device
        slices = [slice(int(self.offsets[b]), int(self.offsets[b + 1])) for b in systems]
        host = torch.cat([self.positions[sl] for sl in slices]).cpu().numpy()
        start = 0
        for b, sl in zip(systems, slices):
            pos_np = host[start:start + sl.stop - sl.start]
            start += sl.stop - sl.start
            i, j, s = _candidate_pairs(pos_np, self.cells_np[b], self.pbc[b], self.model.r_max_A + self.skin_A)
            shift = torch.tensor(s.astype(np.float64) @ self.cells_np[b], dtype=torch.float64, device=dev)
            self._lists[b] = (torch.tensor(i + sl.start, device=dev), torch.tensor(j + sl.start, device=dev), shift,
                              self.positions[sl].clone())
            self.n_rebuilds += 1
        self._joined = None

    def _stale_systems(self) -> list[int]:
        """Systems where some atom moved more than half the skin since their list was built (one transfer)."""
        import torch

        *_, refs = self._candidates()
        moved2 = ((self.positions - refs) ** 2).sum(dim=1)
        worst = torch.zeros(self.n_systems, dtype=moved2.dtype, device=moved2.device)
        worst.scatter_reduce_(0, self.system_idx, moved2, reduce="amax")
        return np.flatnonzero(worst.cpu().numpy() > (0.5 * self.skin_A) ** 2).tolist()

    def refresh_neighbours(self) -> None:
        """Rebuild the lists of systems where some atom moved more than half the skin since their build."""
        missing = [b for b in range(self.n_systems) if self._lists[b] is None]
        if self.rebuild_every_step:
            missing = list(range(self.n_systems))
        self._build(missing)
        if not self.rebuild_every_step:
            self._build(self._stale_systems())

    def _candidates(self):
        """The candidate pairs of all systems (i, j, shift) and the positions they were built at, joined."""
        import torch

        if self._joined is None:
            self._joined = tuple(torch.cat([lst[k] for lst in self._lists]) for k in range(4))
        return self._joined

    def edges(self):
        """(edge_index, shifts in model dtype) of the pairs with r < r_max (the last edges' lengths² kept)."""
        import torch

        self._build([b for b in range(self.n_systems) if self.rebuild_every_step or self._lists[b] is None])
        keep = None
        if not self.rebuild_every_step:
            # The filter's edge count reaches the host anyway (nonzero's size). If any list is stale, the mask
            # becomes all-true plus one element, a count no filter can give, so staleness costs no extra sync.
            ci, cj, cshift, refs = self._candidates()
            d2 = self._lengths2(ci, cj, cshift)
            stale = (((self.positions - refs) ** 2).sum(dim=1) > (0.5 * self.skin_A) ** 2).any()
            keep = torch.nonzero(torch.cat([(d2 < self.model.r_max_A ** 2) | stale, stale.view(1)])).squeeze(1)
            if keep.shape[0] > ci.shape[0]:
                self._build(self._stale_systems())
                keep = None
        if keep is None:
            ci, cj, cshift, _ = self._candidates()
            d2 = self._lengths2(ci, cj, cshift)
            keep = torch.nonzero(d2 < self.model.r_max_A ** 2).squeeze(1)
        edge_index = torch.stack((ci[keep], cj[keep]))
        shifts = cshift[keep].to(self.model.torch_dtype)
        self.last_edges = (edge_index, d2[keep])
        return edge_index, shifts

    def _lengths2(self, ci, cj, cshift):
        vec = self.positions[cj] - self.positions[ci] + cshift
        return (vec * vec).sum(dim=1)

    def model_positions(self):
        import torch

        with torch.no_grad():
            self._model_positions.copy_(self.positions)
        return self._model_positions

    def compute(self):
        """Energies (B,) and forces (N, 3) in float64 at the current positions (one model call)."""
        edge_index, shifts = self.edges()
        return self.model.forward(self, edge_index, shifts)

    def min_distances(self, numbers_radii, cutoff_A: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
        """Per system: shortest distance among the last edges (capped at ``cutoff_A``) and the shortest
        distance relative to the covalent-radius sum (pairs under ``cutoff_A`` only), as ``md.min_distance``."""
        import torch

        if self.last_edges is None or cutoff_A > self.model.r_max_A:
            raise InputError(f"minimum distances need the edges of the last step within {cutoff_A} Å "
                             f"(model cutoff {self.model.r_max_A} Å); call compute() first")
        edge_index, d2 = self.last_edges
        d = torch.sqrt(d2)
        inside = d < cutoff_A
        i, j, d = edge_index[0][inside], edge_index[1][inside], d[inside]
        rel = d / (numbers_radii[i] + numbers_radii[j])
        sys = self.system_idx[i]
        dmin = torch.full((self.n_systems,), cutoff_A, dtype=torch.float64, device=d.device)
        rmin = torch.full((self.n_systems,), cutoff_A, dtype=torch.float64, device=d.device)
        dmin.scatter_reduce_(0, sys, d, reduce="amin")
        rmin.scatter_reduce_(0, sys, rel, reduce="amin")
        return dmin.cpu().numpy(), rmin.cpu().numpy()

    def select(self, keep: Sequence[int], rows: torch.Tensor) -> GraphBatch:
        """The graph of systems ``keep`` (in that order), whose atoms are ``rows``; lists carried over."""
        import torch

        new = GraphBatch.__new__(GraphBatch)
        new.model, new.skin_A = self.model, self.skin_A
        new.n_systems = len(keep)
        new.counts = self.counts[keep]
        new.offsets = np.concatenate([[0], np.cumsum(new.counts)])
        new.n_atoms = int(new.offsets[-1])
        new.numbers = [self.numbers[b] for b in keep]
        new.cells_np = [self.cells_np[b] for b in keep]
        new.pbc = [self.pbc[b] for b in keep]
        new.node_attrs = self.node_attrs[rows]
        new.system_idx = torch.tensor(np.repeat(np.arange(new.n_systems), new.counts), device=rows.device)
        new.batch = new.system_idx
        new.ptr = torch.tensor(new.offsets, device=rows.device)
        new.head = self.head[: new.n_systems].clone()
        new.cell = torch.cat([self.cell[3 * b:3 * b + 3] for b in keep])
        new.cells64 = self.cells64[keep]
        new.positions = self.positions[rows].clone()
        new._model_positions = torch.empty_like(self._model_positions[: new.n_atoms])
        new._lists = []
        for k, b in enumerate(keep):
            lst = self._lists[b]
            if lst is None:
                new._lists.append(None)
                continue
            shift_by = int(new.offsets[k] - self.offsets[b])
            new._lists.append((lst[0] + shift_by, lst[1] + shift_by, lst[2], lst[3]))
        new._joined = None
        new.n_rebuilds = self.n_rebuilds
        new.rebuild_every_step = self.rebuild_every_step
        new.last_edges = None
        if self.last_edges is not None:  # renumbered, so min_distances() works before the next step
            old_to_new = torch.full((self.n_atoms,), -1, dtype=torch.long, device=rows.device)
            old_to_new[rows] = torch.arange(new.n_atoms, device=rows.device)
            edge_index, d2 = self.last_edges
            mapped = old_to_new[edge_index]
            inside = mapped[0] >= 0
            new.last_edges = (mapped[:, inside], d2[inside])
        return new


__all__ = ["DEFAULT_SKIN_A", "GraphBatch"]
