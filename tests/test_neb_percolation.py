"""Percolation barriers on hop networks with known answers, and invariances of the algorithm."""

from __future__ import annotations

import numpy as np
import pytest

from screening.neb import (
    NebHopResult,
    WeightedEdge,
    percolation_barriers,
    percolation_from_hops,
    periodic_dimensionality,
)


def cubic(bx=0.1, by=0.5, bz=0.9):
    return [WeightedEdge(0, 0, (1, 0, 0), bx, 0), WeightedEdge(0, 0, (0, 1, 0), by, 1),
            WeightedEdge(0, 0, (0, 0, 1), bz, 2)]


def test_simple_cubic_cheap_x_expensive_y_z():
    result = percolation_barriers(1, cubic())
    assert (result.barrier_1d_eV, result.barrier_2d_eV, result.barrier_3d_eV) == (0.1, 0.5, 0.9)
    assert result.labels_1d == (0,) and result.labels_2d == (0, 1) and result.labels_3d == (0, 1, 2)
    # equal y and z barriers: 2D and 3D are reached at the same barrier
    tied = percolation_barriers(1, cubic(0.2, 0.7, 0.7))
    assert (tied.barrier_1d_eV, tied.barrier_2d_eV, tied.barrier_3d_eV) == (0.2, 0.7, 0.7)


def test_chain_needs_both_hops_and_cluster_never_percolates():
    # two sites per cell, A-B inside the cell (0.2 eV) and B-A' across the cell boundary (0.4 eV):
    # a 1D chain exists only once both hops are open
    chain = [WeightedEdge(0, 1, (0, 0, 0), 0.2, 0), WeightedEdge(1, 0, (1, 0, 0), 0.4, 1)]
    result = percolation_barriers(2, chain)
    assert (result.barrier_1d_eV, result.barrier_2d_eV, result.barrier_3d_eV) == (0.4, None, None)
    # a closed cluster inside the cell (triangle) is 0D however cheap
    cluster = [WeightedEdge(0, 1, (0, 0, 0), 0.1), WeightedEdge(1, 2, (0, 0, 0), 0.1), WeightedEdge(2, 0, (0, 0, 0), 0.1)]
    assert percolation_barriers(3, cluster).barrier_1d_eV is None
    assert periodic_dimensionality(3, cluster) == 0


def test_translations_not_along_axes_and_redundant_ones():
    diagonal = [WeightedEdge(0, 0, (1, 1, 0), 0.3), WeightedEdge(0, 0, (1, -1, 0), 0.6)]
    result = percolation_barriers(1, diagonal)
    assert (result.barrier_1d_eV, result.barrier_2d_eV, result.barrier_3d_eV) == (0.3, 0.6, None)
    # (2,0,0) adds no new direction to (1,0,0): still 1D; (1,1,1) then makes it 2D, never 3D
    parallel = [WeightedEdge(0, 0, (1, 0, 0), 0.1), WeightedEdge(0, 0, (2, 0, 0), 0.2),
                WeightedEdge(0, 0, (1, 1, 1), 0.3)]
    result = percolation_barriers(1, parallel)
    assert (result.barrier_1d_eV, result.barrier_2d_eV, result.barrier_3d_eV) == (0.1, 0.3, None)


def test_two_disjoint_sublattices_do_not_add_up():
    # sites 0 and 1 never connect: 0 percolates along x, 1 along y -> each component is 1D only
    edges = [WeightedEdge(0, 0, (1, 0, 0), 0.1), WeightedEdge(1, 1, (0, 1, 0), 0.1)]
    assert percolation_barriers(2, edges).barrier_2d_eV is None
    # once a hop joins them the joint network is 2D
    joined = edges + [WeightedEdge(0, 1, (0, 0, 0), 0.5)]
    result = percolation_barriers(2, joined)
    assert (result.barrier_1d_eV, result.barrier_2d_eV) == (0.1, 0.5)


def _bfs_dimensionality(n_sites, edges):
    """Independent reference: BFS spanning forest with offsets, rank of non-tree cycle vectors."""
    adjacency = {i: [] for i in range(n_sites)}
    for e in edges:
        adjacency[e.u].append((e.v, np.array(e.image)))
        adjacency[e.v].append((e.u, -np.array(e.image)))
    offset, best = {}, 0
    for root in range(n_sites):
        if root in offset:
            continue
        offset[root] = np.zeros(3, int)
        queue, cycles = [root], []
        while queue:
            x = queue.pop()
            for y, t in adjacency[x]:
                if y not in offset:
                    offset[y] = offset[x] + t
                    queue.append(y)
                else:
                    cycles.append(offset[x] + t - offset[y])
        if cycles:
            best = max(best, int(np.linalg.matrix_rank(np.array(cycles, float))))
    return best


def test_union_find_agrees_with_bfs_and_is_invariant_to_relabelling():
    rng = np.random.default_rng(7)
    for trial in range(40):
        n = int(rng.integers(1, 5))
        m = int(rng.integers(1, 7))
        edges = [WeightedEdge(int(rng.integers(n)), int(rng.integers(n)),
                              tuple(int(x) for x in rng.integers(-1, 2, 3)), float(rng.integers(1, 5)) / 10)
                 for _ in range(m)]
        assert periodic_dimensionality(n, edges) == _bfs_dimensionality(n, edges)
        reference = percolation_barriers(n, edges)
        # reversing every edge, permuting sites or shuffling the order changes nothing
        perm = rng.permutation(n)
        moved = [WeightedEdge(int(perm[e.v]), int(perm[e.u]), tuple(-x for x in e.image), e.barrier_eV)
                 for e in edges]
        rng.shuffle(moved)
        other = percolation_barriers(n, moved)
        assert (other.barrier_1d_eV, other.barrier_2d_eV, other.barrier_3d_eV) == (
            reference.barrier_1d_eV, reference.barrier_2d_eV, reference.barrier_3d_eV)


def test_percolation_from_hop_results_uses_larger_direction_and_flags_gaps():
    from types import SimpleNamespace

    from screening.neb.hops import HopEdge

    network = SimpleNamespace(
        n_sites=1,
        distinct=[SimpleNamespace(label=0), SimpleNamespace(label=1), SimpleNamespace(label=2)],
        edges=[HopEdge(0, 0, (1, 0, 0), 0), HopEdge(0, 0, (0, 1, 0), 1), HopEdge(0, 0, (0, 0, 1), 2)],
    )

    def hop(label, fwd, bwd, spread=0.0, flags=()):
        known = fwd is not None
        return NebHopResult(name=f"hop{label}", hop_label=label, barrier_forward_eV=fwd, barrier_backward_eV=bwd,
                            barrier_forward_interval_eV=(fwd - spread, fwd + spread) if known else None,
                            barrier_backward_interval_eV=(bwd - spread, bwd + spread) if known else None,
                            converged=known, fmax_eV_A=0.05, n_images=5, flags=list(flags))

    result = percolation_from_hops(network, [hop(0, 0.2, 0.3), hop(1, 0.6, 0.5, spread=0.05), hop(2, 0.9, 0.9)])
    assert (result.barrier_1d_eV, result.barrier_2d_eV, result.barrier_3d_eV) == (0.3, 0.6, 0.9)
    assert result.barrier_1d_interval_eV == (0.3, 0.3)
    assert result.barrier_2d_interval_eV == pytest.approx((0.55, 0.65))
    assert result.flags == []
    flagged = percolation_from_hops(network, [hop(0, 0.2, 0.3, flags=["endpoint_drifted"]), hop(1, 0.6, 0.5),
                                              hop(2, 0.9, 0.9)])
    assert "uses_flagged_hops" in flagged.flags
    partial = percolation_from_hops(network, [hop(0, 0.2, 0.3), hop(1, None, None), hop(2, 0.9, 0.9)])
    assert (partial.barrier_1d_eV, partial.barrier_2d_eV, partial.barrier_3d_eV) == (0.3, 0.9, None)
    assert "incomplete_hops" in partial.flags
