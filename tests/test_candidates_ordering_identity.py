"""Ordering is deterministic and recorded; the structure hash is invariant to site order, origin and cell."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
from pymatgen.core import Lattice, Species, Structure

from screening.candidates import build_candidate, order_structure, structure_hash
from screening.candidates.builder import _ordered_entry
from screening.candidates.library import build_parent, get_entry
from screening.candidates.ordering import OrderingMethod, close_contacts

warnings.filterwarnings("ignore", message=".*fractional coordinates.*")


def _lgps_parent():
    return build_parent(get_entry("Li10GeP2S12"))


def test_same_seed_same_structure_and_hash_other_seed_recorded():
    target = {"Li": 20, "Ge": 2, "P": 4, "S": 24}
    a, rec_a = order_structure(_lgps_parent(), target_composition=target, seed=7)
    b, rec_b = order_structure(_lgps_parent(), target_composition=target, seed=7)
    assert structure_hash(a) == structure_hash(b)
    assert np.allclose(a.frac_coords, b.frac_coords) and [str(s) for s in a.species] == [str(s) for s in b.species]
    assert rec_a.method is OrderingMethod.ewald_monte_carlo and rec_a.seed == 7
    assert rec_a.ewald_energy_eV == pytest.approx(rec_b.ewald_energy_eV)
    assert rec_a.supercell == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert {el.symbol: int(n) for el, n in a.composition.element_composition.items()} == target
    assert close_contacts(a, 0.7) == []


def test_monte_carlo_finds_the_enumerated_minimum_on_a_small_problem():
    """On a problem small enough to enumerate, the Monte Carlo reaches pymatgen's lowest Ewald energy."""
    parent = build_parent(get_entry("Li3InCl6"))
    target = {"Li": 12, "In": 4, "Cl": 24}
    enumerated, rec_enum = order_structure(parent, supercell=(1, 1, 2), target_composition=target, max_enumeration=10**6)
    mc, rec_mc = order_structure(parent, supercell=(1, 1, 2), target_composition=target, max_enumeration=0, seed=3)
    assert rec_enum.method is OrderingMethod.pymatgen_enumeration
    assert rec_mc.method is OrderingMethod.ewald_monte_carlo
    assert rec_mc.ewald_energy_eV <= rec_enum.ewald_energy_eV + 1e-6


def test_record_counts_match_the_structure():
    ordered, record, _ = _ordered_entry("Li6PS5Cl", 0)
    placed = {}
    for sub in record.sublattices:
        for sp, n in sub.counts.items():
            if sp != "vac":
                placed[sp] = placed.get(sp, 0) + n
    assert placed["Li+"] == 24 and placed["Cl-"] + placed.get("S2-", 0) == 8
    assert record.ewald_energy_per_atom_eV == pytest.approx(record.ewald_energy_eV / len(ordered))


def _rocksalt_like():
    """A small ordered test crystal with low symmetry (distorted, three elements)."""
    lattice = Lattice.from_parameters(4.1, 4.6, 5.3, 88.0, 93.0, 101.0)
    return Structure(
        lattice,
        [Species("Li", 1), Species("Li", 1), Species("Mg", 2), Species("O", -2), Species("O", -2)],
        [[0.0, 0.0, 0.0], [0.5, 0.1, 0.5], [0.2, 0.6, 0.3], [0.55, 0.45, 0.05], [0.1, 0.7, 0.8]],
    )


@pytest.mark.parametrize("make", [_rocksalt_like, lambda: build_candidate("LLZO-cubic").structure,
                                  lambda: build_candidate("Li3YCl6").structure])
def test_hash_invariances(make):
    s = make()
    h = structure_hash(s)
    shuffled_idx = list(range(len(s)))
    random.Random(0).shuffle(shuffled_idx)
    shuffled = Structure.from_sites([s[i] for i in shuffled_idx])
    translated = s.copy()
    translated.translate_sites(list(range(len(s))), [0.31, -0.17, 0.42])
    supercell = s.copy()
    supercell.make_supercell([[2, 1, 0], [0, 1, 0], [0, 0, 1]])
    no_oxi = s.copy()
    no_oxi.remove_oxidation_states()
    assert structure_hash(shuffled) == h
    assert structure_hash(translated) == h
    assert structure_hash(supercell) == h
    assert structure_hash(no_oxi) == h


def test_different_structures_have_different_hashes():
    s = _rocksalt_like()
    moved = s.copy()
    moved.translate_sites([2], [0.05, 0.0, 0.0])
    swapped = s.copy()
    swapped.replace(0, Species("Na", 1))
    strained = s.copy()
    strained.scale_lattice(s.volume * 1.05)
    hashes = {structure_hash(x) for x in (s, moved, swapped, strained)}
    assert len(hashes) == 4
    assert structure_hash(build_candidate("Na3PS4-cubic").structure) != structure_hash(
        build_candidate("Na3PS4-tetragonal").structure
    )
