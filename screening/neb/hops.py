"""Symmetry-distinct hops of a working ion and the periodic hop network they form.

Uses pymatgen-analysis-diffusion: ``DistinctPathFinder`` for the default hop-length cutoff (the
shortest cutoff at which the ion sites connect into a network with junctions) and
``MigrationGraph.with_distance`` for every hop in the periodic graph, labelled by symmetry class.
For an empty host, the stated insertion sites are expanded by the host's symmetry and used as the
ion sites.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Sequence

import numpy as np

from mlip.errors import InputError


class Mechanism(enum.StrEnum):
    """How the other working ions are treated in the NEB supercell."""

    VACANCY = "vacancy"  # every other ion site stays occupied; the end site is the vacancy
    INTERSTITIAL = "interstitial"  # only the moving ion is present (empty host / dilute limit)


@dataclasses.dataclass(frozen=True)
class Hop:
    """One symmetry-distinct hop, represented by one of its members."""

    label: int  # symmetry class of the hop (MigrationGraph hop_label)
    ion: str
    start_frac: tuple[float, float, float]  # unit-cell fractional coordinates of the start site
    end_frac: tuple[float, float, float]  # end site, unwrapped: start_frac + hop vector (fractional)
    length_A: float
    start_site: int  # index of the start site among the ion sites (graph node)
    end_site: int
    end_image: tuple[int, int, int]  # periodic image of the end site
    multiplicity: int  # number of hops of this class per unit cell

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class HopEdge:
    """A hop in the periodic graph: site ``u`` (cell 0) to site ``v`` in cell ``image``."""

    u: int
    v: int
    image: tuple[int, int, int]
    label: int


@dataclasses.dataclass
class HopNetwork:
    """All hops of the ion in a structure: the distinct ones and the full periodic graph."""

    structure: object  # pymatgen Structure holding the host and the ion sites
    ion: str
    mechanism: Mechanism
    max_hop_length_A: float
    n_sites: int
    distinct: list[Hop]
    edges: list[HopEdge]
    insertion_sites_frac: list[tuple[float, float, float]] | None = None

    def labels(self) -> list[int]:
        return [hop.label for hop in self.distinct]


def _ion_symbol(ion: str) -> str:
    from pymatgen.core import Element

    try:
        return Element(ion.strip()).symbol
    except (ValueError, KeyError) as err:
        raise InputError(f"working ion {ion!r} is not a chemical element (e.g. Li, Na, Mg)") from err


def _has_ion(structure, ion: str) -> bool:
    return any(el.symbol == ion for el in structure.composition.elements)


def expand_insertion_sites(host, sites_frac: Sequence[Sequence[float]], *, symprec: float = 0.1,
                           tol: float = 1e-3) -> list[tuple[float, float, float]]:
    """Every site symmetry-equivalent (under the host's space group) to the stated insertion sites."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    ops = SpacegroupAnalyzer(host, symprec=symprec).get_symmetry_operations(cartesian=False)
    unique: list[np.ndarray] = []
    for site in sites_frac:
        site = np.asarray(site, dtype=float)
        if site.shape != (3,) or not np.all(np.isfinite(site)):
            raise InputError(f"insertion site {site!r} is not three fractional coordinates")
        for op in ops:
            new = np.mod(op.operate(site), 1.0)
            new[np.isclose(new, 1.0, atol=tol)] = 0.0
            if not any(np.all(np.abs((new - old + 0.5) % 1.0 - 0.5) < tol) for old in unique):
                unique.append(new)
    return [tuple(float(x) for x in site) for site in unique]


def find_hops(
    structure,
    ion: str,
    *,
    insertion_sites_frac: Sequence[Sequence[float]] | None = None,
    max_hop_length_A: float | None = None,
    symprec: float = 0.1,
    mechanism: Mechanism | str | None = None,
) -> HopNetwork:
    """Symmetry-distinct hops of ``ion`` and the periodic hop graph.

    ``structure`` is a pymatgen Structure (ordered). If it holds no ``ion`` sites, give the
    insertion sites (fractional coordinates; symmetry-equivalent ones are added). ``mechanism``
    defaults to vacancy when the structure holds the ion, interstitial for an empty host.
    ``max_hop_length_A`` defaults to DistinctPathFinder's percolation-based cutoff.
    """
    from pymatgen.analysis.diffusion.neb.full_path_mapper import MigrationGraph
    from pymatgen.analysis.diffusion.neb.pathfinder import DistinctPathFinder
    from pymatgen.core import Structure

    if not isinstance(structure, Structure):
        raise InputError(f"expected a pymatgen Structure, got {type(structure).__name__}")
    if not structure.is_ordered:
        raise InputError("the structure has partially occupied sites; order it first (one species per site)")
    ion = _ion_symbol(ion)
    # pymatgen-analysis-diffusion matches sites by element: oxidation-decorated species (Li+) would match none
    structure = structure.copy()
    structure.remove_oxidation_states()
    expanded = None
    if insertion_sites_frac:
        if _has_ion(structure, ion):
            raise InputError(
                f"the structure already contains {ion}; give insertion sites only for an empty host "
                f"(or remove the {ion} sites first)"
            )
        expanded = expand_insertion_sites(structure, insertion_sites_frac, symprec=symprec)
        work = structure.copy()
        for site in expanded:
            work.append(ion, site, coords_are_cartesian=False)
        default_mechanism = Mechanism.INTERSTITIAL
    else:
        if not _has_ion(structure, ion):
            raise InputError(
                f"the structure ({structure.composition.reduced_formula}) has no {ion} sites and no "
                f"insertion site was stated; give insertion sites (fractional coordinates) for an empty host"
            )
        work = structure
        default_mechanism = Mechanism.VACANCY
    mechanism = Mechanism(mechanism) if mechanism is not None else default_mechanism

    n_sites = sum(1 for site in work if site.specie.symbol == ion)
    if n_sites < 1:
        raise InputError(f"no {ion} sites to hop between")
    if max_hop_length_A is None:
        try:
            max_hop_length_A = float(DistinctPathFinder(work, ion, symprec=symprec).max_path_length)
        except Exception as err:  # symmetry analysis fails on badly distorted inputs
            raise InputError(f"could not analyse the {ion} sites of the structure: {err}") from err
    if max_hop_length_A <= 0:
        raise InputError(f"max_hop_length_A must be positive, got {max_hop_length_A}")

    graph = MigrationGraph.with_distance(work, ion, max_distance=float(max_hop_length_A), symprec=symprec)
    edges: list[HopEdge] = []
    representative: dict[int, tuple] = {}
    counts: dict[int, int] = {}
    for u, v, data in graph.m_graph.graph.edges(data=True):
        label = int(data["hop_label"])
        image = tuple(int(x) for x in data["to_jimage"])
        edges.append(HopEdge(int(u), int(v), image, label))
        counts[label] = counts.get(label, 0) + 1
        representative.setdefault(label, (int(u), int(v), image, data))
    if not edges:
        raise InputError(
            f"no {ion}-{ion} hop is shorter than {max_hop_length_A:.2f} Å; raise max_hop_length_A"
        )
    only_sites = graph.only_sites
    distinct = []
    for label, (u, v, image, data) in sorted(representative.items()):
        start = np.asarray(only_sites[u].frac_coords, dtype=float)
        end = np.asarray(only_sites[v].frac_coords, dtype=float) + np.asarray(image, dtype=float)
        length = float(np.linalg.norm(only_sites.lattice.get_cartesian_coords(end - start)))
        distinct.append(Hop(
            label=label, ion=ion,
            start_frac=tuple(float(x) for x in start), end_frac=tuple(float(x) for x in end),
            length_A=length, start_site=u, end_site=v, end_image=image, multiplicity=counts[label],
        ))
    distinct.sort(key=lambda hop: (hop.length_A, hop.label))
    return HopNetwork(structure=work, ion=ion, mechanism=mechanism, max_hop_length_A=float(max_hop_length_A),
                      n_sites=n_sites, distinct=distinct, edges=edges, insertion_sites_frac=expanded)
