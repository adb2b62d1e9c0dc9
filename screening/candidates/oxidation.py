"""Explicit oxidation states: from a table (library entries, user input) or, for imports, automatically.

The working ion's charge is always the stated one (``ion_charge``), never a guess. For the other species of an
imported structure :func:`assign_automatically` tries, in order: pymatgen's bond-valence analysis; a guess from
the composition (the combination of each element's common oxidation states, by their frequency in the ICSD,
that balances the charge); and each element's most common state alone. Real CIFs (partial occupancies,
noisy coordinates) often defeat bond valence, and their occupancies rarely balance exactly, so the guesses
accept a small residual charge that ordering then removes (the ordered cell must be exactly neutral). Which
method was used is recorded; when none works the error names the elements that blocked it.
"""

from __future__ import annotations

import enum
import functools
import itertools
import math
from typing import Any

from mlip.errors import InputError
from screening.ions import WORKING_ION_CHARGE
from screening.ions import ion_charge as _ion_charge_by_symbol

NEUTRALITY_TOL = 1e-6
#: Residual charge a guessed assignment may leave, as a share of the total positive charge: occupancy noise of
#: real CIFs (e.g. Li50.496 where 50.5 would balance). Ordering rounds the occupancies to a neutral cell.
GUESS_RESIDUAL_SHARE = 0.01
COMMON_RESIDUAL_SHARE = 0.03
MIN_STATE_SHARE = 0.05  # a state counts as common when ≥ 5% of the element's ICSD occurrences have it
MAX_STATES_PER_ELEMENT = 4


class OxidationSource(enum.StrEnum):
    """How an imported structure's oxidation states were found."""

    GIVEN = "given"
    BOND_VALENCE = "bond valence"
    COMPOSITION_GUESS = "composition guess"
    COMMON_STATES = "common oxidation states"


def element_symbol(species: Any) -> str:
    """'Li', 'Li+', Element('Li') or Species('Li', 1) -> 'Li'."""
    symbol = getattr(species, "symbol", None)
    if symbol is None:
        symbol = "".join(ch for ch in str(species) if ch.isalpha())
    return str(symbol)


def ion_charge(species: Any) -> int:
    """Formal charge of a working ion (Li/Na 1, Mg/Zn/Ca 2, Al 3); an unknown ion is an ``InputError``."""
    return _ion_charge_by_symbol(element_symbol(species))


def known_working_ions() -> list[str]:
    return sorted(WORKING_ION_CHARGE)


def total_charge(structure) -> float:
    """Sum of oxidation states × occupancies; error when a species carries no oxidation state."""
    charge = 0.0
    for site in structure:
        for sp, occ in site.species.items():
            oxi = getattr(sp, "oxi_state", None)
            if oxi is None:
                raise InputError(f"site {site.frac_coords} species {sp} has no oxidation state")
            charge += float(oxi) * float(occ)
    return charge


def check_neutral(structure, what: str = "structure") -> None:
    charge = total_charge(structure)
    if abs(charge) > NEUTRALITY_TOL * max(1, len(structure)):
        raise InputError(f"{what} is not charge neutral with its oxidation states (net charge {charge:+.4f} e)")


def assign_from_table(structure, oxidation_states: dict[str, float]):
    """Copy of ``structure`` with every element's oxidation state taken from the table."""
    missing = sorted({el.symbol for el in structure.composition.elements} - set(oxidation_states))
    if missing:
        raise InputError(f"no oxidation state given for {', '.join(missing)}; give them explicitly (e.g. Li=1,P=5,S=-2)")
    out = structure.copy()
    out.remove_oxidation_states()
    out.add_oxidation_state_by_element({k: float(v) for k, v in oxidation_states.items()})
    return out


def assign_by_bond_valence(structure, working_ion: str | None = None):
    """Oxidation states from pymatgen's bond-valence analysis; the working ion gets its stated charge.

    Raises ``InputError`` when the analysis finds no valid assignment or the result is not neutral.
    """
    from pymatgen.analysis.bond_valence import BVAnalyzer

    plain = structure.copy()
    plain.remove_oxidation_states()
    try:
        decorated = BVAnalyzer().get_oxi_state_decorated_structure(plain)
    except Exception as err:  # BVAnalyzer raises ValueError("Valences cannot be assigned!") and others
        raise InputError(
            "bond-valence analysis could not assign oxidation states to this structure "
            f"({err}); give them explicitly, e.g. --oxidation Li=1,P=5,S=-2"
        ) from err
    if working_ion is not None:
        charge = ion_charge(working_ion)
        per_element = _per_element_states(decorated)
        found = per_element.get(working_ion)
        if found is not None and found != {charge}:
            raise InputError(
                f"bond valence gives {working_ion} oxidation states {sorted(found)} but the working ion is "
                f"{working_ion}{charge}+; give the oxidation states explicitly"
            )
    check_neutral(decorated, "bond-valence decorated structure")
    return decorated


def _per_element_states(structure) -> dict[str, set[float]]:
    out: dict[str, set[float]] = {}
    for site in structure:
        for sp in site.species:
            out.setdefault(sp.symbol, set()).add(float(getattr(sp, "oxi_state", 0) or 0))
    return out


def oxidation_summary(structure) -> dict[str, list[float]]:
    """Element -> sorted distinct oxidation states present (for records and display)."""
    return {el: sorted(states) for el, states in sorted(_per_element_states(structure).items())}


def parse_oxidation_states(text: str) -> dict[str, float]:
    """'Li=1,P=5,S=-2' -> {'Li': 1.0, 'P': 5.0, 'S': -2.0}."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise InputError(f"oxidation state {part!r} is not of the form Element=charge (e.g. S=-2)")
        element, value = part.split("=", 1)
        try:
            out[element.strip()] = float(value)
        except ValueError as err:
            raise InputError(f"oxidation state {part!r}: {value!r} is not a number") from err
    return out


@functools.cache
def _icsd_occurrences() -> dict[str, dict[int, int]]:
    """Element -> {oxidation state: occurrences in the ICSD} (pymatgen's table, zero states left out)."""
    import os

    import pymatgen.core.composition as composition
    from monty.serialization import loadfn
    from pymatgen.core import Species

    out: dict[str, dict[int, int]] = {}
    for name, count in loadfn(os.path.join(os.path.dirname(composition.__file__), "icsd_bv.yaml"))["occurrence"].items():
        species = Species.from_str(name)
        if species.oxi_state and float(species.oxi_state).is_integer():
            out.setdefault(species.symbol, {})[int(species.oxi_state)] = int(count)
    return out


def _candidate_states(element: str, min_share: float) -> list[tuple[int, float]]:
    """(state, share of the element's ICSD occurrences), most frequent first; pymatgen's common states when the
    ICSD table does not know the element."""
    counts = _icsd_occurrences().get(element)
    if not counts:
        from pymatgen.core import Element

        common = [int(x) for x in Element(element).common_oxidation_states]
        return [(state, 1.0 / len(common)) for state in common]
    total = sum(counts.values())
    ranked = sorted(((state, n / total) for state, n in counts.items()), key=lambda item: -item[1])
    return [item for item in ranked if item[1] >= min_share][:MAX_STATES_PER_ELEMENT] or ranked[:1]


def guess_oxidation_states(amounts: dict[str, float], working_ion: str | None, *, min_share: float,
                           max_residual_share: float, single: bool = False) -> tuple[dict[str, int] | None, str]:
    """The most frequent combination of candidate states that balances ``amounts`` (element -> atoms, possibly
    fractional) within ``max_residual_share`` of the total positive charge; ``single``: each element's most frequent
    state only. Returns (states, "") or (None, why not)."""
    options: dict[str, list[tuple[int, float]]] = {}
    for element in amounts:
        if working_ion is not None and element == working_ion:
            options[element] = [(ion_charge(element), 1.0)]
        else:
            states = _candidate_states(element, min_share)
            if not states:
                return None, f"{element} has no known oxidation state"
            options[element] = states[:1] if single else states
    elements = list(options)
    best, best_score, closest = None, -math.inf, (math.inf, None)
    for combo in itertools.product(*(options[e] for e in elements)):
        positive = sum(amounts[e] * state for e, (state, _) in zip(elements, combo) if state > 0)
        net = sum(amounts[e] * state for e, (state, _) in zip(elements, combo))
        if positive <= 0:
            continue
        share = abs(net) / positive
        if share < closest[0]:
            closest = (share, {e: state for e, (state, _) in zip(elements, combo)}, net)
        if share > max_residual_share:
            continue
        score = sum(amounts[e] * math.log(p) for e, (_, p) in zip(elements, combo))
        if score > best_score:
            best, best_score = {e: state for e, (state, _) in zip(elements, combo)}, score
    if best is not None:
        return best, ""
    if closest[1] is None:
        return None, "no combination has a positive ion"
    tried = "; ".join(f"{e}: {', '.join(f'{s:+d}' for s, _ in options[e])}" for e in elements)
    return None, (f"the closest, {', '.join(f'{e}{s:+d}' for e, s in closest[1].items())}, leaves {closest[2]:+.3f} e "
                  f"in the cell ({closest[0]:.1%} of the positive charge); states tried: {tried}")


def assign_automatically(structure, working_ion: str | None) -> tuple[Any, OxidationSource, list[str]]:
    """Oxidation states for an imported structure without a table: bond valence, else the composition guess, else
    each element's most common state (see the module docstring). Returns (decorated structure, how, notes); an
    ``InputError`` naming what blocked it when nothing balances."""
    notes: list[str] = []
    try:
        return assign_by_bond_valence(structure, working_ion=working_ion), OxidationSource.BOND_VALENCE, notes
    except InputError as err:
        notes.append(f"bond valence failed: {str(err).splitlines()[0]}")
    amounts = {el.symbol: float(n) for el, n in structure.composition.element_composition.items()}
    for source, min_share, residual, single in (
        (OxidationSource.COMPOSITION_GUESS, MIN_STATE_SHARE, GUESS_RESIDUAL_SHARE, False),
        (OxidationSource.COMMON_STATES, 0.0, COMMON_RESIDUAL_SHARE, True),
    ):
        states, why = guess_oxidation_states(amounts, working_ion, min_share=min_share,
                                             max_residual_share=residual, single=single)
        if states is not None:
            notes.append(f"oxidation states by {source.value}: "
                         + ", ".join(f"{e}{s:+d}" for e, s in sorted(states.items())))
            return assign_from_table(structure, states), source, notes
        notes.append(f"{source.value} failed: {why}")
    raise InputError("no oxidation states balance this structure's charge: " + "; ".join(notes)
                     + ". Give them explicitly, e.g. --oxidation Li=1,P=5,S=-2")
