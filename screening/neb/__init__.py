"""Migration barriers: distinct hops, NEB supercells, climbing-image NEB (any ASE calculator or batched
MACE), per-hop result documents and the percolation barriers of the hop network."""

from screening.neb.band import BandOutcome, Interpolation, NebParameters, OptimizerKind, PathConvention, run_band
from screening.neb.driver import neb_for_endpoints, neb_for_hop, neb_for_structure, percolation_from_hops
from screening.neb.endpoints import EndpointError, EndpointPair, check_endpoint_pair, neb_for_endpoint_pair
from screening.neb.hops import Hop, HopEdge, HopNetwork, Mechanism, expand_insertion_sites, find_hops
from screening.neb.percolation import (
    PercolationThresholds,
    PeriodicUnionFind,
    WeightedEdge,
    percolation_barriers,
    periodic_dimensionality,
)
from screening.neb.results import NebFlag, NebHopResult, NebStructureResult, PercolationResult, Provenance
from screening.neb.supercell import HopTooLongError, NebEndpoints, build_endpoints

__all__ = [
    "BandOutcome",
    "EndpointError",
    "EndpointPair",
    "Hop",
    "HopEdge",
    "HopNetwork",
    "HopTooLongError",
    "Interpolation",
    "Mechanism",
    "NebEndpoints",
    "NebFlag",
    "NebHopResult",
    "NebParameters",
    "NebStructureResult",
    "OptimizerKind",
    "PathConvention",
    "PercolationResult",
    "PercolationThresholds",
    "PeriodicUnionFind",
    "Provenance",
    "WeightedEdge",
    "build_endpoints",
    "check_endpoint_pair",
    "expand_insertion_sites",
    "find_hops",
    "neb_for_endpoint_pair",
    "neb_for_endpoints",
    "neb_for_hop",
    "neb_for_structure",
    "percolation_barriers",
    "percolation_from_hops",
    "periodic_dimensionality",
    "run_band",
]
