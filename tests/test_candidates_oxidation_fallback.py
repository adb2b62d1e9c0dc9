"""Real CIFs import without hand-given oxidation states: when bond valence fails, the composition guess (then each
element's most common state) is used and recorded, occupancy noise is rounded to a neutral cell through the
working ion, and a structure nothing balances gets an error naming the elements, states and residual charge.
The CIFs are OBELiX training entries (tests/data/obelix/README.md, CC BY 4.0)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlip.errors import InputError
from screening.candidates import import_file
from screening.candidates.oxidation import (
    OxidationSource,
    assign_automatically,
    check_neutral,
    guess_oxidation_states,
    oxidation_summary,
)

DATA = Path(__file__).parent / "data" / "obelix"


def test_the_composition_guess_balances_what_bond_valence_cannot():
    candidate = import_file(DATA / "1dm.cif", working_ion="Li")  # Li1.6Al0.6Ge1.4(PO4)3
    notes = candidate.ordering.notes
    assert any(n.startswith("bond valence failed") for n in notes)
    assert "oxidation states by composition guess: Al+3, Ge+4, Li+1, O-2, P+5" in notes
    assert candidate.structure.is_ordered
    check_neutral(candidate.structure, "ordered 1dm")
    assert oxidation_summary(candidate.structure) == {"Al": [3.0], "Ge": [4.0], "Li": [1.0], "O": [-2.0], "P": [5.0]}


def test_occupancy_noise_is_rounded_to_a_neutral_cell_through_the_working_ion():
    candidate = import_file(DATA / "ix1.cif", working_ion="Li")  # Li0.91Hf2.022(PO4)3: Hf over-occupied
    notes = candidate.ordering.notes
    assert any("setting Li to" in n for n in notes), notes
    check_neutral(candidate.structure, "ordered ix1")
    composition = candidate.structure.composition.element_composition
    assert composition["Hf"] * 4 + composition["Li"] + composition["P"] * 5 == composition["O"] * 2


@pytest.mark.parametrize("cif, blocked", [
    ("hx7", ["Li+1, Br-1, O-2", "-0.999 e", "Li: +1; Br: -1; O: -2"]),  # Li2(OH)Br without its H
    ("lrh", ["V: +5, +4, +3", "-2.000 e"]),  # Li2.5V2(PO4)3: mixed-valence V
])
def test_a_structure_nothing_balances_names_what_blocked_it(cif, blocked):
    with pytest.raises(InputError, match="no oxidation states balance") as info:
        import_file(DATA / f"{cif}.cif", working_ion="Li")
    message = str(info.value)
    for part in [*blocked, "bond valence failed", "composition guess failed", "common oxidation states failed",
                 "--oxidation"]:
        assert part in message
    # given states still override every guess
    if cif == "lrh":
        with pytest.raises(InputError, match="not charge neutral"):
            import_file(DATA / "lrh.cif", working_ion="Li", oxidation_states={"Li": 1, "V": 3, "P": 5, "O": -2})


def test_guesses_prefer_the_frequent_states_and_keep_the_working_ion_fixed():
    states, why = guess_oxidation_states({"Li": 6, "P": 1, "S": 5, "Cl": 1}, "Li", min_share=0.05,
                                         max_residual_share=0.01)
    assert states == {"Li": 1, "P": 5, "S": -2, "Cl": -1} and why == ""
    states, why = guess_oxidation_states({"Mg": 1, "Mn": 2, "O": 4}, "Mg", min_share=0.05, max_residual_share=0.01)
    assert states["Mg"] == 2 and states["O"] == -2 and states["Mn"] == 3
    states, why = guess_oxidation_states({"Li": 2, "O": 1, "Br": 1}, "Li", min_share=0.05, max_residual_share=0.01)
    assert states is None and "leaves -1.000 e" in why


def test_bond_valence_stays_first_when_it_works():
    from pymatgen.core import Lattice, Structure

    li2s = Structure.from_spacegroup(225, Lattice.cubic(5.70), ["S", "Li"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    decorated, how, notes = assign_automatically(li2s, "Li")
    assert how is OxidationSource.BOND_VALENCE and notes == []
    assert oxidation_summary(decorated) == {"Li": [1.0], "S": [-2.0]}


def test_occupancies_that_never_round_to_a_neutral_cell_are_named():
    with pytest.raises(InputError, match="no diagonal supercell up to 256 atoms") as info:
        import_file(DATA / "7e5.cif", working_ion="Li")  # La0.65Li0.05(Mg0.5W0.5)O3
    message = str(info.value)
    assert "closest: +1.000 e in the 1x1x1 cell" in message
    assert "the partially occupied sites: " in message and "Li+:0.1" in message and "La3+:0.965" in message
