"""Make ``Candidate`` documents: from the built-in library or from any structure file (CIF/POSCAR/extxyz)."""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from mlip.errors import InputError
from screening.candidates.candidate import Candidate
from screening.candidates.identity import structure_hash
from screening.candidates.library import CandidateKind, LibraryEntry, build_parent, get_entry, insertion_positions
from screening.candidates.limits import (
    MAX_BOND_VALENCE_SITES,
    check_input_structure,
    check_ordered_distances,
    wrapped_into_cell,
)
from screening.candidates.ordering import (
    HARD_CORE_FRACTION,
    VACANCY,
    OrderingRecord,
    _supercell_matrix,
    assign_counts,
    find_sublattices,
    order_structure,
)
from screening.candidates.oxidation import (
    COMMON_RESIDUAL_SHARE,
    OxidationSource,
    assign_automatically,
    assign_from_table,
    check_neutral,
    element_symbol,
    ion_charge,
)
from screening.cells import MAX_SIMULATION_ATOMS
from screening.structio import read_structure

DEFAULT_SEED = 0
MAX_AUTO_SUPERCELL_ATOMS = 256


def target_composition(entry: LibraryEntry, parent, ordering_cell, supercell) -> dict[str, int]:
    """Integer composition of the ordered cell: the entry's stated one, else formula × formula units."""
    from pymatgen.core import Composition

    n_det = int(round(abs(np.linalg.det(np.diag(supercell) if np.ndim(supercell) == 1 else np.array(supercell)))))
    if entry.ordered_composition:
        return {el: n * n_det for el, n in entry.ordered_composition.items()}
    n_fu = entry.z * len(ordering_cell) / len(parent) * n_det
    if abs(n_fu - round(n_fu)) > 1e-6:
        raise InputError(f"{entry.name}: ordering cell holds {n_fu:g} formula units; state ordered_composition")
    out = {}
    for el, amount in Composition(entry.formula).items():
        value = amount * round(n_fu)
        if abs(value - round(value)) > 1e-6:
            raise InputError(f"{entry.name}: {el} count {value:g} is not an integer; state ordered_composition")
        out[el.symbol] = int(round(value))
    return out


#: Parameters of ``order_structure`` used for library entries (part of the on-disk cache key).
LIBRARY_ORDERING_PARAMS: dict[str, Any] = {
    "max_enumeration": 200,
    "n_restarts": 4,
    "sweeps": 60,
    "hard_core_fraction": HARD_CORE_FRACTION,
}


def _ordering_cell(entry: LibraryEntry):
    """(parent, cell to order, supercell multipliers, target composition) of a buildable entry."""
    parent = build_parent(entry)
    cell = parent
    if entry.ordering.cell == "primitive":
        cell = parent.get_primitive_structure()
    supercell = list(entry.ordering.supercell)
    return parent, cell, supercell, target_composition(entry, parent, cell, supercell)


def ordered_atom_count(name: str) -> int:
    """Atoms in the entry's ordered cell, from its target composition (no ordering is run); remembered in the
    on-disk cache index under the same key as the ordered cell, so a later call does not even build the parent."""
    from screening.candidates import cache

    entry = get_entry(name)
    if not entry.buildable:
        raise InputError(f"library entry {entry.name} cannot be built ({entry.status.value})")
    key = cache.cache_key(entry, 0, LIBRARY_ORDERING_PARAMS)  # the count does not depend on the seed
    count = cache.load_atom_count(key)
    if count is None:
        _, _, _, target = _ordering_cell(entry)
        count = int(sum(target.values()))
        cache.store_atom_count(key, count)
    return count


@lru_cache(maxsize=64)
def _ordered_entry(name: str, seed: int) -> tuple[Any, OrderingRecord, list[list[float]]]:
    """The ordered cell of a library entry: from the on-disk cache when the same entry, seed, parameters and code
    were ordered before, else ordered now (and cached)."""
    from screening.candidates import cache

    entry = get_entry(name)
    key = None
    if entry.buildable:
        key = cache.cache_key(entry, seed, LIBRARY_ORDERING_PARAMS)
        hit = cache.load(key)
        if hit is not None:
            return hit
    parent, cell, supercell, target = _ordering_cell(entry)
    ordered, record = order_structure(
        cell,
        supercell=supercell,
        target_composition=target,
        seed=seed,
        parent_cell=entry.ordering.cell,
        **LIBRARY_ORDERING_PARAMS,
    )
    check_neutral(ordered, f"ordered {entry.name}")
    sites: list[list[float]] = []
    if entry.insertion_sites:
        if entry.ordering.cell == "primitive":
            raise InputError(f"{entry.name}: insertion sites are only supported on the conventional cell")
        sites = _sites_in_supercell(insertion_positions(entry), np.diag(supercell))
    cache.store(key, entry.name, ordered, record, sites)
    return ordered, record, sites


def build_candidate(name: str, ion: str | None = None, n_ions: int | None = None, seed: int = DEFAULT_SEED) -> Candidate:
    """A library entry as a ``Candidate``.

    Electrolytes: the ordered cell (``ion`` may only repeat the entry's working ion; use
    ``variants.substitute_working_ion`` for another). Cathode hosts: the empty framework with ``n_ions``
    (default 1, the dilute limit; 0 = empty host) of ``ion`` (default: the entry's) inserted.
    """
    entry = get_entry(name)
    ordered, record, sites = _ordered_entry(entry.name, seed)
    ordered = ordered.copy()
    if entry.kind is CandidateKind.electrolyte:
        if ion is not None and element_symbol(ion) != entry.working_ion:
            raise InputError(
                f"{entry.name} conducts {entry.working_ion}; to screen it with {ion} make a substituted variant "
                "(screening.candidates.variants.substitute_working_ion)"
            )
        if n_ions is not None:
            raise InputError("n_ions applies to cathode hosts only")
        return _make(entry.name, ordered, entry.working_ion, entry, record, [])
    ion = element_symbol(ion or entry.working_ion)
    ion_charge(ion)  # unknown ions are an error before anything is built
    host = _make(entry.name, ordered, ion, entry, record, sites)
    n = 1 if n_ions is None else int(n_ions)
    if n == 0:
        return host
    from screening.candidates.variants import insert_ions

    return insert_ions(host, ion, n, seed=seed, redox=entry.redox)


def _make(name, structure, ion, entry: LibraryEntry | None, record, sites) -> Candidate:
    return Candidate(
        name=name,
        formula=structure.composition.reduced_formula,
        working_ion=ion,
        working_ion_charge=ion_charge(ion),
        kind=entry.kind if entry else CandidateKind.electrolyte,
        structure=structure,
        source=entry.source if entry else None,
        ordering=record,
        structure_hash=structure_hash(structure),
        spacegroup=f"{entry.spacegroup} (#{entry.spacegroup_number})" if entry else None,
        insertion_sites_frac=sites,
    )


def auto_supercell(structure, max_atoms: int = MAX_AUTO_SUPERCELL_ATOMS, *, balance_with: str | None = None,
                   max_shift_share: float = COMMON_RESIDUAL_SHARE) -> tuple[list[int], dict[str, int] | None]:
    """Smallest diagonal supercell in which the rounded occupancies give a charge-neutral cell: (repeats, None).

    With ``balance_with`` (the working ion), a cell whose rounded occupancies leave a residual charge may still be
    used if changing that ion's count by at most ``max_shift_share`` of the cell's positive charge makes it
    neutral (occupancy noise of real CIFs): (repeats, target composition with the shifted count)."""
    from pymatgen.core import Species

    if structure.is_ordered:
        return [1, 1, 1], None
    smallest: tuple[float, list[int]] | None = None  # (residual charge, repeats) of the best cell seen
    for n1, n2, n3 in sorted(
        ((a, b, c) for a in range(1, 5) for b in range(1, 5) for c in range(1, 5)),
        key=lambda t: (t[0] * t[1] * t[2], sorted(t, reverse=True), t),
    ):
        if len(structure) * n1 * n2 * n3 > max_atoms * 2:
            continue
        sc = structure.copy()
        sc.make_supercell([n1, n2, n3])
        subs = find_sublattices(sc)
        try:
            assign_counts(sc, subs, None)
        except InputError:
            continue
        counts: dict[str, int] = {}
        charge = positive = 0.0
        placed = [(site.specie, 1) for site in sc if site.is_ordered]
        placed += [(Species.from_str(sp), n) for sub in subs for sp, n in sub.counts.items() if sp != VACANCY]
        for species, n in placed:  # per species: an element may carry several oxidation states
            counts[species.symbol] = counts.get(species.symbol, 0) + n
            charge += float(species.oxi_state) * n
            positive += max(float(species.oxi_state), 0.0) * n
        if abs(charge) < 1e-6:
            return [n1, n2, n3], None
        if smallest is None or abs(charge) < abs(smallest[0]):
            smallest = (charge, [n1, n2, n3])
        if balance_with is None or balance_with not in counts:
            continue
        shift = -charge / ion_charge(balance_with)
        if abs(shift - round(shift)) > 1e-6 or abs(charge) > max_shift_share * positive:
            continue
        target = dict(counts)
        target[balance_with] += int(round(shift))
        try:
            assign_counts(sc, find_sublattices(sc), target)
        except InputError:
            continue
        return [n1, n2, n3], target
    partial = sorted({sub.label for sub in find_sublattices(structure)})  # species:occupancy of each kind of site
    raise InputError(
        f"no diagonal supercell up to {max_atoms} atoms makes the rounded occupancies charge neutral"
        + (f", even with the {balance_with} count shifted by up to {max_shift_share:.0%} of the positive charge"
           if balance_with else "")
        + (f" (closest: {smallest[0]:+.3f} e in the {'x'.join(map(str, smallest[1]))} cell)" if smallest else "")
        + f"; the partially occupied sites: {'; '.join(partial) or 'none'}"
        + ". Give --supercell explicitly, the oxidation states, or fix the occupancies"
    )


def candidate_from_structure(
    structure,
    *,
    name: str,
    working_ion: str,
    kind: CandidateKind | str = CandidateKind.electrolyte,
    oxidation_states: dict[str, float] | None = None,
    supercell: Any = None,
    seed: int = DEFAULT_SEED,
    insertion_sites_frac: list[list[float]] | None = None,
    source: str | None = None,
    prechecked: bool = False,
) -> Candidate:
    """Import: assign oxidation states (table, or bond valence with the working ion's stated charge), order
    partial occupancies (auto supercell when not given), check neutrality, hash.

    The bounds of :mod:`screening.candidates.limits` are checked first (sites, cell, overlapping atoms, the
    size of the ordering cell), and the ordered cell is checked for overlapping atoms again. ``source`` (e.g.
    the file) names the structure in their messages; default: ``name``. ``prechecked``: the structure comes from
    :func:`screening.structio.read_structure`, which checked it already.
    """
    if not prechecked:
        check_input_structure(structure, source or name)
    kind = CandidateKind(kind)
    ion = element_symbol(working_ion)
    ion_charge(ion)
    source = source or name
    structure = wrapped_into_cell(structure)
    if supercell is not None:
        try:
            matrix = np.array(_supercell_matrix(supercell), dtype=float)
        except InputError:
            raise
        except (TypeError, ValueError, OverflowError) as err:
            raise InputError(f"{source}: supercell {supercell!r} is not 3 integers or a 3x3 integer matrix") from err
        n_cell = len(structure) * abs(round(float(np.linalg.det(matrix))))
        if n_cell > MAX_SIMULATION_ATOMS:
            raise InputError(f"{source}: the ordering supercell {supercell!r} of {len(structure)} sites holds {n_cell:,} "
                             f"sites, more than {MAX_SIMULATION_ATOMS:,} (MAX_SIMULATION_ATOMS); use a smaller supercell")
    elements = {el.symbol for el in structure.composition.elements}
    if ion not in elements and not insertion_sites_frac:
        raise InputError(
            f"{name}: the structure has no {ion} sites and no insertion sites were given; "
            f"a framework needs stated insertion sites (fractional coordinates) for the working ion {ion}"
        )
    if oxidation_states:
        table = dict(oxidation_states)
        table.setdefault(ion, ion_charge(ion))
        if float(table[ion]) != float(ion_charge(ion)):
            raise InputError(f"{ion} is given oxidation state {table[ion]} but the working ion {ion} is {ion_charge(ion)}+")
        decorated, how, oxidation_notes = assign_from_table(structure, table), OxidationSource.GIVEN, []
    elif len(structure) > MAX_BOND_VALENCE_SITES:
        raise InputError(f"{source} has {len(structure):,} sites, more than the {MAX_BOND_VALENCE_SITES} that bond-valence "
                         "analysis handles in reasonable time (MAX_BOND_VALENCE_SITES); give the oxidation states "
                         "explicitly (e.g. --oxidation Li=1,P=5,S=-2, or oxidation: in a job file)")
    else:
        decorated, how, oxidation_notes = assign_automatically(structure, working_ion=ion if ion in elements else None)
    if how in (OxidationSource.GIVEN, OxidationSource.BOND_VALENCE):
        check_neutral(decorated, name)  # a guess may leave occupancy noise; the ordered cell must be neutral
    target = None
    if supercell is None:
        guessed = how in (OxidationSource.COMPOSITION_GUESS, OxidationSource.COMMON_STATES)
        supercell, target = auto_supercell(decorated, balance_with=ion if guessed and ion in elements else None)
    ordered, record = order_structure(decorated, supercell=supercell, seed=seed, parent_cell="input",
                                      target_composition=target)
    record.notes.extend(oxidation_notes)
    if target is not None:
        record.notes.append(f"occupancies rounded to a neutral cell by setting {ion} to {target[ion]} in the "
                            "ordering cell (the cited occupancies do not balance the guessed oxidation states)")
    check_neutral(ordered, f"ordered {name}")
    check_ordered_distances(ordered, f"{source} (ordered)")
    sites = [list(map(float, s)) for s in (insertion_sites_frac or [])]
    if sites and record.supercell != [[1, 0, 0], [0, 1, 0], [0, 0, 1]]:
        m = np.array(record.supercell)
        sites = _sites_in_supercell(sites, m)
    return Candidate(
        name=name,
        formula=ordered.composition.reduced_formula,
        working_ion=ion,
        working_ion_charge=ion_charge(ion),
        kind=kind,
        structure=ordered,
        ordering=record,
        structure_hash=structure_hash(ordered),
        insertion_sites_frac=sites,
    )


def _sites_in_supercell(sites: list[list[float]], matrix: np.ndarray) -> list[list[float]]:
    inv = np.linalg.inv(matrix)
    out = []
    n = int(round(abs(np.linalg.det(matrix))))
    span = int(math.ceil(np.abs(matrix).sum(axis=0).max()))
    for f in sites:
        for shift in np.ndindex(span, span, span):
            g = (np.array(f) + np.array(shift)) @ inv
            if np.all(g > -1e-8) and np.all(g < 1 - 1e-8):
                out.append([float(x) for x in g])
    unique = []
    for g in out:
        if not any(np.allclose(g, u, atol=1e-6) for u in unique):
            unique.append(g)
    if len(unique) != n * len(sites):
        raise InputError("could not map the insertion sites into the supercell")
    return unique


def import_file(path: str | Path, **options) -> Candidate:
    """Read CIF/POSCAR/extxyz within the bounds of :mod:`screening.candidates.limits` and import it (see
    :func:`candidate_from_structure`; the reader has already checked the structure)."""
    path = Path(path)
    options.setdefault("name", path.stem)
    options.setdefault("source", str(path))
    return candidate_from_structure(read_structure(path), **options, prechecked=True)
