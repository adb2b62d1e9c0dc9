"""Explicit oxidation states: from a table (library entries, user input) or bond valence for imports.

The working ion's charge is always the stated one (``ion_charge``), never a guess; bond-valence analysis
is used only for the other species of an imported structure, and a failure is an ``InputError``.
"""

from __future__ import annotations

from typing import Any

from mlip.errors import InputError
from screening.ions import WORKING_ION_CHARGE
from screening.ions import ion_charge as _ion_charge_by_symbol

NEUTRALITY_TOL = 1e-6


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
