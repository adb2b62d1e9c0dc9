"""Turn partially occupied sites into one ordered supercell, deterministically, by lowest Ewald energy.

Small problems go to pymatgen's ``OrderDisorderedStructureTransformation`` (complete Ewald ranking);
when the number of configurations exceeds ``max_enumeration`` (LGPS, argyrodite, LLZO, ... have 10^6
to 10^30), we minimise the same Ewald energy with a seeded swap Monte Carlo quench written here, because
pymatgen's minimiser cannot finish such problems in seconds on two cores. Both add a hard-core rule: two
occupied sites closer than ``hard_core_fraction`` × (sum of covalent radii) are forbidden (split sites).
Every choice is recorded in an :class:`OrderingRecord`.
"""

from __future__ import annotations

import enum
import functools
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from mlip.errors import InputError

#: A vacancy in a sublattice; charge 0.
VACANCY = "vac"
HARD_CORE_FRACTION = 0.7
_PENALTY_EV = 1.0e3


class OrderingMethod(str, enum.Enum):
    """How an ordered structure was obtained."""

    already_ordered = "already_ordered"
    pymatgen_enumeration = "pymatgen_enumeration"  # OrderDisorderedStructureTransformation, complete ranking
    ewald_monte_carlo = "ewald_monte_carlo"  # seeded swap Monte Carlo quench on the Ewald matrix (this module)


class SublatticeRecord(BaseModel):
    """What was placed on one group of equivalent partially occupied sites."""

    label: str = Field(description="site label (or species/occupancy key) of the sublattice")
    n_sites: int = Field(description="sites of this sublattice in the ordering cell")
    cited_occupancy: dict[str, float] = Field(description="element -> occupancy as given")
    counts: dict[str, int] = Field(description="species -> atoms placed ('vac' = vacancies)")


class OrderingRecord(BaseModel):
    """Provenance of an ordered cell: how, with what seed, in which supercell, at what Ewald energy."""

    method: OrderingMethod
    seed: int | None = Field(None, description="random seed of the Monte Carlo (None for complete enumeration)")
    supercell: list[list[int]] = Field(description="integer matrix applied to the parent cell")
    parent_cell: str = Field("conventional", description="conventional, primitive, or input")
    ewald_energy_eV: float | None = Field(None, description="total Ewald energy of the ordered cell (eV)")
    ewald_energy_per_atom_eV: float | None = None
    rank: int = Field(0, description="rank of the chosen structure by Ewald energy among those examined (0 = lowest)")
    n_configurations: float = Field(description="number of ways to fill the sublattices (exact count, may be huge)")
    n_examined: int = Field(description="configurations ranked (enumeration) or Monte Carlo restarts x sweeps")
    n_restarts: int | None = None
    hard_core_fraction: float = HARD_CORE_FRACTION
    min_distance_A: float = Field(description="shortest interatomic distance in the ordered cell (Å)")
    sublattices: list[SublatticeRecord] = Field(default_factory=list)
    runtime_s: float = 0.0
    notes: list[str] = Field(default_factory=list)


@dataclass
class Sublattice:
    """Equivalent partially occupied sites and how many of each species go on them."""

    label: str
    indices: list[int]
    cited_occupancy: dict[str, float]
    counts: dict[str, int] = field(default_factory=dict)  # species string (with oxi) or VACANCY -> count


def covalent_radius(symbol: str) -> float:
    from ase.data import atomic_numbers, covalent_radii

    return float(covalent_radii[atomic_numbers[symbol]])


def min_distance(structure) -> float:
    if len(structure) < 2:
        return float("inf")
    d = structure.distance_matrix + np.eye(len(structure)) * 1e9
    return float(d.min())


def close_contacts(structure, fraction: float = HARD_CORE_FRACTION) -> list[tuple[int, int, float, float]]:
    """Pairs closer than ``fraction`` × sum of covalent radii: (i, j, distance, limit)."""
    radii = np.array([covalent_radius(site.specie.symbol) for site in structure])
    d = structure.distance_matrix
    limit = fraction * (radii[:, None] + radii[None, :])
    i, j = np.where(np.triu(d < limit, k=1))
    return [(int(a), int(b), float(d[a, b]), float(limit[a, b])) for a, b in zip(i, j)]


def _oxi(specie) -> float:
    oxi = getattr(specie, "oxi_state", None)
    if oxi is None:
        raise InputError(f"species {specie} has no oxidation state; assign oxidation states before ordering")
    return float(oxi)


def find_sublattices(structure) -> list[Sublattice]:
    """Group disordered sites by (label, species-occupancy): the sets that are ordered together."""
    groups: dict[tuple, Sublattice] = {}
    for index, site in enumerate(structure):
        if site.is_ordered:
            continue
        occ = {str(sp): round(float(v), 6) for sp, v in site.species.items()}
        key = (site.properties.get("label"), tuple(sorted(occ.items())))
        if key not in groups:
            label = site.properties.get("label") or "+".join(f"{k}:{v:g}" for k, v in sorted(occ.items()))
            groups[key] = Sublattice(label=str(label), indices=[], cited_occupancy=occ)
        groups[key].indices.append(index)
    return list(groups.values())


def _largest_remainder(ideal: dict[str, float], total: int) -> dict[str, int]:
    """Integers summing to ``total`` that are closest to ``ideal`` (Hamilton's method, ties by key)."""
    s = sum(ideal.values())
    scaled = {k: (v * total / s if s > 0 else 0.0) for k, v in ideal.items()}
    out = {k: int(math.floor(v + 1e-9)) for k, v in scaled.items()}
    rest = total - sum(out.values())
    for k in sorted(scaled, key=lambda k: (-(scaled[k] - out[k]), k))[: max(rest, 0)]:
        out[k] += 1
    return out


def assign_counts(structure, sublattices: list[Sublattice], target: dict[str, int] | None) -> None:
    """Decide how many atoms of each species each sublattice gets (fills ``Sublattice.counts``).

    With a ``target`` composition (element -> count in the ordering cell), each element's atoms that are
    not on ordered sites are distributed over the sublattices carrying it by largest remainder; without
    one, each sublattice is rounded on its own. Vacancies fill the rest.
    """
    per_element: dict[str, dict[int, float]] = {}
    species_of: dict[tuple[int, str], str] = {}
    for k, sub in enumerate(sublattices):
        for sp, occ in sub.cited_occupancy.items():
            element = _element_of(sp)
            per_element.setdefault(element, {})[k] = occ * len(sub.indices)
            species_of[(k, element)] = sp
    counts: list[dict[str, int]] = [{} for _ in sublattices]
    if target is None:
        for k, sub in enumerate(sublattices):
            ideal = {sp: occ * len(sub.indices) for sp, occ in sub.cited_occupancy.items()}
            n_occupied = int(round(sum(ideal.values())))
            counts[k] = _largest_remainder(ideal, n_occupied) if n_occupied else {}
    else:
        ordered = {}
        for site in structure:
            if site.is_ordered:
                ordered[site.specie.symbol] = ordered.get(site.specie.symbol, 0) + 1
        for element, ideal in per_element.items():
            remaining = int(target.get(element, 0)) - ordered.get(element, 0)
            if remaining < 0:
                raise InputError(f"target composition has fewer {element} than the ordered sites already hold")
            split = _largest_remainder({str(k): v for k, v in ideal.items()}, remaining)
            for k_str, n in split.items():
                k = int(k_str)
                counts[k][species_of[(k, element)]] = n
        missing = {el for el in target if el not in per_element and target[el] != ordered.get(el, 0)}
        if missing:
            raise InputError(f"target composition {target} cannot be reached: {sorted(missing)} are not on any sublattice")
    for k, sub in enumerate(sublattices):
        n_atoms = sum(counts[k].values())
        if n_atoms > len(sub.indices):
            raise InputError(
                f"sublattice {sub.label} has {len(sub.indices)} sites but {n_atoms} atoms were assigned to it; "
                "use a larger supercell or check the occupancies"
            )
        sub.counts = {sp: n for sp, n in counts[k].items() if n > 0}
        if n_atoms < len(sub.indices):
            sub.counts[VACANCY] = len(sub.indices) - n_atoms


def _element_of(species: str) -> str:
    return "".join(ch for ch in species if ch.isalpha())


def pool_sublattices(sublattices: list[Sublattice]) -> list[Sublattice]:
    """Merge the vacancy-bearing sublattices of one element (e.g. Li 16h + Li 8f) into one pool.

    Atoms may then move between those sublattices during ordering: the cited occupancies are the start,
    the final split (recorded per sublattice) is the lowest Ewald energy without hard-core contacts. Split
    sites closer than the hard-core distance otherwise force short contacts (LGPS 16h, LLZO 24d/96h).
    Mixed-species sublattices (Ge/P, S/Cl) are never pooled.
    """
    pools: dict[str, Sublattice] = {}
    out: list[Sublattice] = []
    for sub in sublattices:
        species = [sp for sp in sub.counts if sp != VACANCY]
        if len(species) == 1 and VACANCY in sub.counts:
            key = species[0]
            if key not in pools:
                pools[key] = Sublattice(label=sub.label, indices=[], cited_occupancy={}, counts={})
                out.append(pools[key])
            pool = pools[key]
            if pool.indices:
                pool.label = f"{pool.label}+{sub.label}"
            pool.indices.extend(sub.indices)
            for sp, n in sub.counts.items():
                pool.counts[sp] = pool.counts.get(sp, 0) + n
        else:
            out.append(sub)
    return out


def n_configurations(sublattices: list[Sublattice]) -> float:
    """Multinomial count of fillings (float: can exceed 1e300 → inf)."""
    total = 0.0
    for sub in sublattices:
        total += math.lgamma(len(sub.indices) + 1) - sum(math.lgamma(n + 1) for n in sub.counts.values())
    return math.exp(total) if total < 700 else float("inf")


def _unit_ewald_matrix(structure) -> np.ndarray:
    """Ewald interaction matrix for unit charges on every site position (energy = qᵀ M q, eV)."""
    from pymatgen.analysis.ewald import EwaldSummation
    from pymatgen.core import Species, Structure

    unit = Structure(structure.lattice, [Species("Li", 1)] * len(structure), structure.frac_coords)
    return np.asarray(EwaldSummation(unit).total_energy_matrix)


def _hard_core_matrix(structure, sublattices: list[Sublattice], fraction: float) -> np.ndarray:
    """1 where two site positions would be too close if both occupied (by their heaviest possible species)."""
    radius = np.zeros(len(structure))
    for index, site in enumerate(structure):
        radius[index] = max(covalent_radius(sp.symbol) for sp in site.species)
    limit = fraction * (radius[:, None] + radius[None, :])
    close = (structure.distance_matrix < limit).astype(float)
    np.fill_diagonal(close, 0.0)
    return close


@dataclass
class _Problem:
    ewald: np.ndarray
    close: np.ndarray
    base_charge: np.ndarray  # charges of ordered sites, 0 on sublattice sites
    sublattices: list[Sublattice]
    charge_of: dict[str, float]


def _energy(problem: _Problem, q: np.ndarray, occ: np.ndarray) -> float:
    return float(q @ problem.ewald @ q + 0.5 * _PENALTY_EV * occ @ problem.close @ occ)


def _monte_carlo(problem: _Problem, seed: int, n_restarts: int, sweeps: int) -> tuple[dict[int, str], float, int]:
    """Seeded swap Monte Carlo with a linear temperature ramp to zero, then a greedy quench; best of restarts."""
    rng = np.random.default_rng(seed)
    M, C = problem.ewald, problem.close
    best: tuple[dict[int, str], float] | None = None
    examined = 0
    for _ in range(n_restarts):
        q = problem.base_charge.copy()
        occ = (np.abs(q) > 0).astype(float)
        assignment: dict[int, str] = {}
        for sub in problem.sublattices:
            labels = [sp for sp, n in sorted(sub.counts.items()) for _ in range(n)]
            order = rng.permutation(len(sub.indices))
            for pos, lab in zip(order, labels):
                index = sub.indices[pos]
                assignment[index] = lab
                q[index] = problem.charge_of[lab]
                occ[index] = 0.0 if lab == VACANCY else 1.0
        field_q = M @ q
        field_o = C @ occ
        energy = _energy(problem, q, occ)
        movable = [sub for sub in problem.sublattices if len([n for n in sub.counts.values() if n > 0]) > 1]
        if not movable:
            return assignment, energy, 1
        n_sites = sum(len(s.indices) for s in movable)
        n_steps = max(1, sweeps * n_sites)
        t0 = 0.05 * float(np.abs(np.diag(M)).mean())  # eV; ~ a tenth of a nearest-neighbour interaction
        weights = np.array([len(s.indices) for s in movable], dtype=float)
        weights /= weights.sum()
        for step in range(n_steps + 3 * n_sites):
            temperature = t0 * max(0.0, 1.0 - step / n_steps)
            sub = movable[rng.choice(len(movable), p=weights)]
            a, b = rng.choice(sub.indices, size=2, replace=False)
            la, lb = assignment[a], assignment[b]
            if la == lb:
                continue
            da = problem.charge_of[lb] - problem.charge_of[la]
            db = -da
            oa = (0.0 if lb == VACANCY else 1.0) - occ[a]
            ob = (0.0 if la == VACANCY else 1.0) - occ[b]
            delta = (
                2 * da * field_q[a] + 2 * db * field_q[b] + da * da * M[a, a] + db * db * M[b, b] + 2 * da * db * M[a, b]
            ) + _PENALTY_EV * (oa * field_o[a] + ob * field_o[b] + oa * ob * C[a, b])
            if delta <= 0 or (temperature > 0 and rng.random() < math.exp(-delta / temperature)):
                assignment[a], assignment[b] = lb, la
                q[a] += da
                q[b] += db
                occ[a] += oa
                occ[b] += ob
                field_q += da * M[:, a] + db * M[:, b]
                field_o += oa * C[:, a] + ob * C[:, b]
                energy += delta
        energy = _greedy_quench(problem, assignment, q, occ, movable)
        examined += 1
        if best is None or energy < best[1] - 1e-9:
            best = (dict(assignment), energy)
    assert best is not None
    return best[0], best[1], examined


def _greedy_quench(problem: _Problem, assignment: dict[int, str], q, occ, movable) -> float:
    """Apply the best improving swap until none is left (deterministic given the start)."""
    M, C = problem.ewald, problem.close
    for _ in range(10000):
        field_q = M @ q
        field_o = C @ occ
        best_move = None
        for sub in movable:
            idx = np.array(sub.indices)
            labs = [assignment[i] for i in sub.indices]
            qa = np.array([problem.charge_of[l] for l in labs])
            oa = np.array([0.0 if l == VACANCY else 1.0 for l in labs])
            dq = qa[None, :] - qa[:, None]  # swapping a<->b: q_a becomes q_b
            do = oa[None, :] - oa[:, None]
            fa = field_q[idx]
            ga = field_o[idx]
            dM = np.diag(M)[idx]
            delta = (
                2 * dq * fa[:, None] - 2 * dq * fa[None, :] + dq**2 * (dM[:, None] + dM[None, :]) - 2 * dq**2 * M[np.ix_(idx, idx)]
            ) + _PENALTY_EV * (do * ga[:, None] - do * ga[None, :] - do**2 * C[np.ix_(idx, idx)])
            k = np.unravel_index(np.argmin(delta), delta.shape)
            if delta[k] < -1e-9 and (best_move is None or delta[k] < best_move[0]):
                best_move = (float(delta[k]), int(idx[k[0]]), int(idx[k[1]]))
        if best_move is None:
            break
        _, a, b = best_move
        la, lb = assignment[a], assignment[b]
        assignment[a], assignment[b] = lb, la
        q[a], q[b] = problem.charge_of[lb], problem.charge_of[la]
        occ[a], occ[b] = (0.0 if lb == VACANCY else 1.0), (0.0 if la == VACANCY else 1.0)
    return _energy(problem, q, occ)


def _apply(structure, assignment: dict[int, str]):
    from pymatgen.core import Structure

    species, coords, labels = [], [], []
    for index, site in enumerate(structure):
        lab = assignment.get(index)
        if site.is_ordered:
            sp = site.specie
        elif lab is None or lab == VACANCY:
            continue
        else:
            sp = _species_from_string(lab)
        species.append(sp)
        coords.append(site.frac_coords)
        labels.append(site.properties.get("label"))
    props = {"label": labels} if any(l is not None for l in labels) else None
    return Structure(structure.lattice, species, coords, site_properties=props).get_sorted_structure()


def _species_from_string(text: str):
    from pymatgen.core import DummySpecies, Species

    try:
        return Species.from_str(text)
    except ValueError:
        return DummySpecies.from_str(text)


def order_structure(
    structure,
    *,
    supercell: Any = (1, 1, 1),
    target_composition: dict[str, int] | None = None,
    seed: int = 0,
    max_enumeration: int = 200,
    n_restarts: int = 4,
    sweeps: int = 60,
    hard_core_fraction: float = HARD_CORE_FRACTION,
    parent_cell: str = "input",
) -> tuple[Any, OrderingRecord]:
    """Order ``structure`` (oxidation-state decorated, possibly disordered) in ``supercell``.

    Returns the ordered structure (sorted sites, oxidation states kept, ``label`` site property) and the
    record of the choice. Deterministic: the same input and seed give the same structure. The cited
    occupancies are kept per sublattice; only if that leaves hard-core contacts are the vacancy-bearing
    sublattices of one element pooled (see :func:`pool_sublattices`), which the record says.
    """
    attempt = functools.partial(
        _order_once, structure, supercell=supercell, target_composition=target_composition, seed=seed,
        max_enumeration=max_enumeration, n_restarts=n_restarts, sweeps=sweeps,
        hard_core_fraction=hard_core_fraction, parent_cell=parent_cell,
    )
    ordered, record = attempt()
    if close_contacts(ordered, hard_core_fraction):
        pooled, pooled_record = attempt(pool_element_sublattices=True)
        if not close_contacts(pooled, hard_core_fraction):
            pooled_record.runtime_s += record.runtime_s
            return pooled, pooled_record
    return ordered, record


def _order_once(
    structure, *, supercell, target_composition: dict[str, int] | None, seed: int, max_enumeration: int,
    n_restarts: int, sweeps: int, hard_core_fraction: float, parent_cell: str, pool_element_sublattices: bool = False,
) -> tuple[Any, OrderingRecord]:
    """One ordering attempt; see :func:`order_structure`."""
    start = time.perf_counter()
    matrix = _supercell_matrix(supercell)
    sc = structure.copy()
    sc.make_supercell(matrix)
    for site in sc:
        for sp in site.species:
            _oxi(sp)
    if sc.is_ordered:
        record = OrderingRecord(
            method=OrderingMethod.already_ordered,
            supercell=matrix,
            parent_cell=parent_cell,
            n_configurations=1,
            n_examined=1,
            min_distance_A=min_distance(sc),
            ewald_energy_eV=_ewald(sc),
            hard_core_fraction=hard_core_fraction,
            runtime_s=time.perf_counter() - start,
        )
        record.ewald_energy_per_atom_eV = record.ewald_energy_eV / len(sc)
        return sc.get_sorted_structure(), record
    sublattices = find_sublattices(sc)
    assign_counts(sc, sublattices, target_composition)
    charge_of = {VACANCY: 0.0}
    for sub in sublattices:
        for sp in sub.counts:
            if sp != VACANCY:
                charge_of[sp] = _oxi(_species_from_string(sp))
    pools = pool_sublattices(sublattices) if pool_element_sublattices else sublattices
    n_conf = n_configurations(pools)
    notes: list[str] = []
    if n_conf <= max_enumeration and len(pools) == len(sublattices):
        ordered, rank, examined, note = _enumerate_with_pymatgen(sc, sublattices, hard_core_fraction)
        method, seed_used, restarts = OrderingMethod.pymatgen_enumeration, None, None
        notes.append(note)
    else:
        base = np.zeros(len(sc))
        for index, site in enumerate(sc):
            if site.is_ordered:
                base[index] = _oxi(site.specie)
        problem = _Problem(
            ewald=_unit_ewald_matrix(sc),
            close=_hard_core_matrix(sc, sublattices, hard_core_fraction),
            base_charge=base,
            sublattices=pools,
            charge_of=charge_of,
        )
        assignment, _, examined = _monte_carlo(problem, seed, n_restarts, sweeps)
        ordered = _apply(sc, assignment)
        for sub in sublattices:
            counts: dict[str, int] = {}
            for index in sub.indices:
                counts[assignment[index]] = counts.get(assignment[index], 0) + 1
            sub.counts = counts
        if len(pools) != len(sublattices):
            notes.append("vacancy-bearing sublattices of one element were ordered as one pool (see sublattices for the final split)")
        method, seed_used, rank, restarts = OrderingMethod.ewald_monte_carlo, seed, 0, n_restarts
        reason = (
            f"{n_conf:.3g} configurations > max_enumeration={max_enumeration}"
            if n_conf > max_enumeration
            else "pooled sublattices are not supported by pymatgen's enumeration"
        )
        notes.append(
            f"{reason}: seeded swap Monte Carlo "
            f"({n_restarts} restarts x {sweeps} sweeps, annealed then greedy quench), lowest Ewald energy kept"
        )
    contacts = close_contacts(ordered, hard_core_fraction)
    if contacts:
        i, j, d, limit = contacts[0]
        notes.append(
            f"{len(contacts)} pairs closer than {hard_core_fraction} x covalent radii remain "
            f"(e.g. {ordered[i].specie}-{ordered[j].specie} {d:.2f} Å < {limit:.2f} Å): the occupancy cannot be "
            "realised without short contacts in this cell"
        )
    energy = _ewald(ordered)
    record = OrderingRecord(
        method=method,
        seed=seed_used,
        supercell=matrix,
        parent_cell=parent_cell,
        ewald_energy_eV=energy,
        ewald_energy_per_atom_eV=energy / len(ordered),
        rank=rank,
        n_configurations=n_conf,
        n_examined=examined,
        n_restarts=restarts,
        hard_core_fraction=hard_core_fraction,
        min_distance_A=min_distance(ordered),
        sublattices=[
            SublatticeRecord(
                label=s.label, n_sites=len(s.indices), cited_occupancy=s.cited_occupancy, counts=dict(sorted(s.counts.items()))
            )
            for s in sublattices
        ],
        runtime_s=time.perf_counter() - start,
        notes=notes,
    )
    return ordered, record


def _ewald(structure) -> float | None:
    from pymatgen.analysis.ewald import EwaldSummation

    try:
        return float(EwaldSummation(structure).total_energy)
    except Exception:  # noqa: BLE001 - dummy species or no oxidation states: no Ewald energy to report
        return None


def _supercell_matrix(supercell: Any) -> list[list[int]]:
    m = np.array(supercell, dtype=int)
    if m.shape == (3,):
        m = np.diag(m)
    if m.shape != (3, 3) or round(abs(np.linalg.det(m))) < 1:
        raise InputError(f"supercell must be 3 integers or a 3x3 integer matrix with det >= 1, got {supercell!r}")
    return m.tolist()


def _enumerate_with_pymatgen(sc, sublattices: list[Sublattice], hard_core_fraction: float):
    """Complete Ewald ranking with pymatgen; the lowest-energy structure without hard-core contacts wins."""
    from pymatgen.transformations.standard_transformations import (
        OrderDisorderedStructureTransformation,
    )

    exact = sc.copy()
    empty = []
    for sub in sublattices:
        n = len(sub.indices)
        occ = {_species_from_string(sp): c / n for sp, c in sub.counts.items() if sp != VACANCY}
        if not occ:  # every site of the sublattice is vacant (e.g. one site of occupancy 0.25)
            empty.extend(sub.indices)
            continue
        for index in sub.indices:
            exact.replace(index, occ, properties=exact[index].properties)
    exact.remove_sites(empty)
    if exact.is_ordered:  # the rounded counts fill every sublattice completely or not at all: one configuration
        return exact.get_sorted_structure(), 0, 1, "the rounded occupancies leave a single configuration"
    n_conf = n_configurations(sublattices)
    transformation = OrderDisorderedStructureTransformation(algo=OrderDisorderedStructureTransformation.ALGO_BEST_FIRST)
    ranked = transformation.apply_transformation(exact, return_ranked_list=max(1, min(int(n_conf), 100)))
    ranked = sorted(ranked, key=lambda r: (round(r["energy"], 8),))
    for rank, item in enumerate(ranked):
        candidate = _relabel(item["structure"], sc)
        if not close_contacts(candidate, hard_core_fraction):
            return candidate.get_sorted_structure(), rank, len(ranked), (
                f"complete ranking of {len(ranked)} orderings (pymatgen EwaldMinimizer, best-first); rank {rank} is the "
                "lowest Ewald energy without hard-core contacts"
            )
    best = _relabel(ranked[0]["structure"], sc)
    return best.get_sorted_structure(), 0, len(ranked), "every enumerated ordering has hard-core contacts; lowest Ewald kept"


def _relabel(ordered, template):
    """Carry the ``label`` site property over from the supercell (pymatgen drops it)."""
    from pymatgen.core import Structure

    labels = []
    for site in ordered:
        idx = template.lattice.get_points_in_sphere(template.frac_coords, site.coords, 1e-3, zip_results=False)
        found = None
        if idx is not None and len(idx) >= 3 and len(idx[2]):
            found = template[int(idx[2][0])].properties.get("label")
        labels.append(found)
    out = Structure.from_sites(ordered)
    if any(l is not None for l in labels):
        out.add_site_property("label", labels)
    return out
