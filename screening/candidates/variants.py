"""Variants of a candidate: insert working ions into a host, substitute the working ion, dope aliovalently.

Every variant keeps the cell neutral with explicit oxidation states (vacancies or host reduction, never a
guessed valence) and chooses which sites change with the seeded lowest-Ewald ordering of
``screening.candidates.ordering`` (recorded on the new candidate).
"""

from __future__ import annotations

import math

import numpy as np

from mlip.errors import InputError
from screening.candidates.candidate import Candidate
from screening.candidates.identity import structure_hash
from screening.candidates.library import Redox, RedoxMode
from screening.candidates.ordering import order_structure
from screening.candidates.oxidation import check_neutral, element_symbol, ion_charge


def _species(element: str, oxidation: float):
    from pymatgen.core import Species

    return Species(element, oxidation)


def _with_label(structure, label: str):
    structure = structure.copy()
    if "label" not in structure.site_properties:
        structure.add_site_property("label", [None] * len(structure))
    labels = list(structure.site_properties["label"])
    return structure, labels


def _finish(parent: Candidate, ordered, record, ion: str, kind=None, history_item=None, sites=None) -> Candidate:
    check_neutral(ordered, f"variant of {parent.name}")
    return Candidate(
        name=parent.name,
        formula=ordered.composition.reduced_formula,
        working_ion=ion,
        working_ion_charge=ion_charge(ion),
        kind=kind or parent.kind,
        structure=ordered,
        source=parent.source,
        ordering=record,
        structure_hash=structure_hash(ordered),
        spacegroup=parent.spacegroup,
        insertion_sites_frac=parent.insertion_sites_frac if sites is None else sites,
        variant_of=parent.structure_hash,
        history=[*parent.history, history_item] if history_item else list(parent.history),
    )


def reduction_species(redox: Redox, start_oxidation: float, n_atoms: int, electrons: float) -> dict[float, int]:
    """Valence -> number of host atoms after taking ``electrons`` (localized) or the shared valence (delocalized)."""
    if electrons == 0:
        return {start_oxidation: n_atoms}
    if redox.mode is RedoxMode.delocalized:
        valence = start_oxidation - electrons / n_atoms
        if valence < redox.lowest_oxidation_state - 1e-9:
            raise InputError(
                f"the host cannot take {electrons:g} electrons: {redox.element} would reach {valence:.3f} "
                f"< {redox.lowest_oxidation_state:g}"
            )
        return {valence: n_atoms}
    if abs(electrons - round(electrons)) > 1e-9:
        raise InputError("localized reduction needs an integer number of electrons")
    steps, extra = divmod(int(round(electrons)), n_atoms)
    lowest = start_oxidation - steps - (1 if extra else 0)
    if lowest < redox.lowest_oxidation_state - 1e-9:
        raise InputError(
            f"the host cannot take {electrons:g} electrons: {redox.element} would reach {lowest:g}+ "
            f"< {redox.lowest_oxidation_state:g}+ (fewer ions, or another host)"
        )
    out = {start_oxidation - steps: n_atoms - extra}
    if extra:
        out[start_oxidation - steps - 1] = extra
    return {k: v for k, v in out.items() if v}


def insert_ions(host: Candidate, ion: str, n_ions: int, *, redox: Redox, seed: int = 0) -> Candidate:
    """Put ``n_ions`` of ``ion`` (stated charge) on the host's insertion sites and reduce the host to stay neutral.

    Which sites get ions and which host atoms are reduced are chosen together by the lowest Ewald energy.
    """
    ion = element_symbol(ion)
    charge = ion_charge(ion)
    sites = host.insertion_sites_frac
    if not sites:
        raise InputError(f"{host.name} has no insertion sites; state them to insert {ion}")
    if not 0 < n_ions <= len(sites):
        raise InputError(f"n_ions must be between 1 and {len(sites)} (insertion sites in this cell), got {n_ions}")
    structure, labels = _with_label(host.structure, "label")
    redox_idx = [i for i, site in enumerate(structure) if site.specie.symbol == redox.element]
    if not redox_idx:
        raise InputError(f"host {host.name} has no {redox.element} to reduce")
    start = float(structure[redox_idx[0]].specie.oxi_state)
    valences = reduction_species(redox, start, len(redox_idx), n_ions * charge)
    mixed = {_species(redox.element, v): n / len(redox_idx) for v, n in valences.items()}
    for i in redox_idx:
        structure.replace(i, mixed, properties={"label": labels[i] or redox.element})
    occupancy = n_ions / len(sites)
    for frac in sites:
        structure.append({_species(ion, charge): occupancy}, frac, properties={"label": f"ins:{ion}"})
    ordered, record = order_structure(structure, seed=seed, parent_cell="host+insertion sites")
    item = {"op": "insert", "ion": ion, "charge": charge, "n_ions": n_ions, "redox": redox.model_dump(mode="json"),
            "host_valences": {f"{k:g}": v for k, v in valences.items()}, "seed": seed}
    free = [list(map(float, f)) for f in sites
            if not any(s.specie.symbol == ion and np.allclose(_wrap(s.frac_coords - f), 0, atol=1e-4) for s in ordered)]
    return _finish(host, ordered, record, ion, history_item=item, sites=free)


def _wrap(d):
    return d - np.round(d)


def _grow_for(structure, multiplier: int):
    """Diagonal supercell multiplying the shortest lattice vector."""
    axis = int(np.argmin(structure.lattice.abc))
    scale = [1, 1, 1]
    scale[axis] = multiplier
    out = structure.copy()
    out.make_supercell(scale)
    return out, scale


def substitute_working_ion(candidate: Candidate, new_ion: str, *, seed: int = 0) -> Candidate:
    """Replace the working ion by ``new_ion``; charge balance by vacancies on the old ion's sites.

    n_new = n_old × q_old / q_new must be an integer; if it is not, the cell is doubled (or more) along its
    shortest axis first. Which sites keep an ion is the lowest-Ewald, seeded ordering.
    """
    old = candidate.working_ion
    new = element_symbol(new_ion)
    q_old, q_new = ion_charge(old), ion_charge(new)
    structure = candidate.structure
    n_old = sum(1 for s in structure if s.specie.symbol == old)
    if n_old == 0:
        raise InputError(f"{candidate.name} has no {old} sites to substitute")
    multiplier = 1
    while (multiplier * n_old * q_old) % q_new:
        multiplier += 1
    scale = [1, 1, 1]
    if multiplier > 1:
        structure, scale = _grow_for(structure, multiplier)
    structure, labels = _with_label(structure, "label")
    idx = [i for i, s in enumerate(structure) if s.specie.symbol == old]
    n_new = len(idx) * q_old // q_new
    occupancy = n_new / len(idx)
    for i in idx:
        structure.replace(i, {_species(new, q_new): occupancy}, properties={"label": f"sub:{old}"})
    ordered, record = order_structure(structure, seed=seed, parent_cell=f"{candidate.name} x {scale}")
    item = {"op": "substitute", "from": old, "to": new, "charges": [q_old, q_new], "n_from": len(idx), "n_to": n_new,
            "supercell": scale, "seed": seed}
    return _finish(candidate, ordered, record, new, history_item=item, sites=[] if multiplier > 1 else None)


def dope(
    candidate: Candidate,
    host_element: str,
    dopant: str,
    fraction: float,
    *,
    dopant_oxidation: float,
    compensate_with: str | None = None,
    seed: int = 0,
    max_multiplier: int = 8,
) -> Candidate:
    """Replace ``fraction`` of ``host_element`` by ``dopant`` (stated valence); extra charge is compensated by
    vacancies of ``compensate_with`` (default: the working ion). Lower-valent dopants would need
    interstitials and are refused. The cell is enlarged along its shortest axis until the fraction and the
    compensation are integral (at most ``max_multiplier``)."""
    host_element = element_symbol(host_element)
    dopant = element_symbol(dopant)
    comp = element_symbol(compensate_with or candidate.working_ion)
    base = candidate.structure
    host_idx = [i for i, s in enumerate(base) if s.specie.symbol == host_element]
    if not host_idx:
        raise InputError(f"{candidate.name} has no {host_element} to dope")
    if not 0 < fraction <= 1:
        raise InputError(f"doping fraction must be in (0, 1], got {fraction}")
    q_host = float(base[host_idx[0]].specie.oxi_state)
    comp_sites = [s for s in base if s.specie.symbol == comp]
    q_comp = float(comp_sites[0].specie.oxi_state) if comp_sites else ion_charge(comp)
    delta = float(dopant_oxidation) - q_host
    if delta < 0:
        raise InputError(
            f"{dopant}{dopant_oxidation:+g} on {host_element}{q_host:+g} lowers the charge; compensation by "
            "interstitials is not supported (choose a higher-valent dopant or compensate by hand)"
        )
    for multiplier in range(1, max_multiplier + 1):
        n_host = len(host_idx) * multiplier
        n_dop = fraction * n_host
        n_removed = round(n_dop) * delta / q_comp if q_comp else 0
        if abs(n_dop - round(n_dop)) < 1e-6 and abs(n_removed - round(n_removed)) < 1e-6:
            break
    else:
        raise InputError(
            f"fraction {fraction} of {len(host_idx)} {host_element} cannot be realised with integral dopants and "
            f"vacancies in up to {max_multiplier}x cells; choose a fraction that is a multiple of 1/{len(host_idx)}"
        )
    n_dop, n_removed = int(round(n_dop)), int(round(n_removed))
    structure, scale = (_grow_for(base, multiplier) if multiplier > 1 else (base.copy(), [1, 1, 1]))
    structure, labels = _with_label(structure, "label")
    host_idx = [i for i, s in enumerate(structure) if s.specie.symbol == host_element]
    comp_idx = [i for i, s in enumerate(structure) if s.specie.symbol == comp]
    if n_removed > len(comp_idx):
        raise InputError(f"compensation needs {n_removed} {comp} vacancies but the cell has only {len(comp_idx)} {comp}")
    mixed = {_species(host_element, q_host): 1 - n_dop / len(host_idx), _species(dopant, dopant_oxidation): n_dop / len(host_idx)}
    for i in host_idx:
        structure.replace(i, {k: v for k, v in mixed.items() if v > 0}, properties={"label": f"dop:{host_element}"})
    if n_removed:
        keep = 1 - n_removed / len(comp_idx)
        for i in comp_idx:
            structure.replace(i, {_species(comp, q_comp): keep}, properties={"label": f"vac:{comp}"})
    ordered, record = order_structure(structure, seed=seed, parent_cell=f"{candidate.name} x {scale}")
    item = {"op": "dope", "host": host_element, "dopant": dopant, "dopant_oxidation": dopant_oxidation,
            "fraction_requested": fraction, "fraction_realised": n_dop / len(host_idx), "n_dopants": n_dop,
            "compensation": {comp: -n_removed}, "supercell": scale, "seed": seed}
    return _finish(candidate, ordered, record, candidate.working_ion, history_item=item,
                   sites=[] if multiplier > 1 else None)


def realised_fraction(candidate: Candidate, element: str, dopant: str) -> float:
    counts = candidate.structure.composition
    total = counts[element] + counts[dopant]
    return float(counts[dopant] / total) if total else math.nan
