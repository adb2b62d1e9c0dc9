"""Variants keep charge balance explicitly; import/export round-trips; bad input gives InputError; CLI."""

from __future__ import annotations

import warnings

import pytest
from pymatgen.core import Lattice, Structure
from typer.testing import CliRunner

from mlip.errors import InputError
from screening.candidates import (
    Candidate,
    build_candidate,
    candidate_from_structure,
    dope,
    import_file,
    ion_charge,
    structure_hash,
    substitute_working_ion,
)
from screening.candidates.oxidation import total_charge
from workflows.cli.candidates import app

warnings.filterwarnings("ignore", message=".*fractional coordinates.*")


def _count(structure, element):
    return sum(1 for site in structure if site.specie.symbol == element)


@pytest.mark.parametrize("ion, charge", [("Li", 1), ("Na", 1), ("Mg", 2), ("Zn", 2), ("Ca", 2), ("Al", 3), ("Mg2+", 2)])
def test_ion_charge_is_stated(ion, charge):
    assert ion_charge(ion) == charge


def test_ion_charge_unknown_is_an_error():
    with pytest.raises(InputError):
        ion_charge("Xe")


@pytest.mark.parametrize("new_ion", ["Na", "Mg", "Zn", "Ca", "Al"])
def test_substitution_balances_charge_with_vacancies(new_ion):
    base = build_candidate("Li6PS5Cl")
    n_li = _count(base.structure, "Li")
    var = substitute_working_ion(base, new_ion, seed=1)
    q = ion_charge(new_ion)
    n_new = _count(var.structure, new_ion)
    multiplier = round(var.structure.volume / base.structure.volume)
    assert _count(var.structure, "Li") == 0
    assert n_new * q == n_li * multiplier
    assert abs(total_charge(var.structure)) < 1e-6
    assert var.working_ion == new_ion and var.variant_of == base.structure_hash
    assert var.history[-1]["op"] == "substitute"
    again = substitute_working_ion(base, new_ion, seed=1)
    assert again.structure_hash == var.structure_hash


def test_substitution_enlarges_the_cell_when_needed():
    base = build_candidate("Li3N")  # 3 Li -> 1.5 Mg: needs a doubled cell
    var = substitute_working_ion(base, "Mg")
    assert round(var.structure.volume / base.structure.volume) == 2
    assert _count(var.structure, "Mg") == 3 and abs(total_charge(var.structure)) < 1e-6


def test_aliovalent_doping_zr_to_ta_removes_one_li_per_ta():
    base = build_candidate("LLZO-cubic")
    n_zr, n_li = _count(base.structure, "Zr"), _count(base.structure, "Li")
    var = dope(base, "Zr", "Ta", 0.25, dopant_oxidation=5, seed=0)
    n_ta = _count(var.structure, "Ta")
    assert n_ta == round(0.25 * n_zr) and _count(var.structure, "Zr") == n_zr - n_ta
    assert _count(var.structure, "Li") == n_li - n_ta
    assert abs(total_charge(var.structure)) < 1e-6
    assert var.history[-1]["fraction_realised"] == pytest.approx(0.25)
    assert dope(base, "Zr", "Ta", 0.25, dopant_oxidation=5, seed=0).structure_hash == var.structure_hash


def test_isovalent_doping_and_lower_valent_refused():
    base = build_candidate("Li10GeP2S12")
    var = dope(base, "Ge", "Sn", 0.5, dopant_oxidation=4)
    assert _count(var.structure, "Sn") == 1 and _count(var.structure, "Li") == _count(base.structure, "Li")
    with pytest.raises(InputError, match="interstitial"):
        dope(build_candidate("LATP"), "Ti", "Al", 0.1, dopant_oxidation=3)


def test_insertion_reduces_the_host_explicitly():
    cand = build_candidate("lambda-MnO2", ion="Al", n_ions=2)
    mn = [site.specie.oxi_state for site in cand.structure if site.specie.symbol == "Mn"]
    assert sorted(mn).count(3) == 6 and sorted(mn).count(4) == 10  # 2 Al3+ = 6 electrons on 16 Mn
    assert abs(total_charge(cand.structure)) < 1e-6
    chevrel = build_candidate("Mo6S8", ion="Mg", n_ions=3)  # Mg1Mo6S8: Mo6 clusters take 2 e each
    mo = {round(site.specie.oxi_state, 6) for site in chevrel.structure if site.specie.symbol == "Mo"}
    assert mo == {round(8 / 3 - 6 / 18, 6)}
    with pytest.raises(InputError, match="cannot take"):
        build_candidate("TiS2", ion="Al", n_ions=4)  # 12 electrons on 4 Ti4+ would need Ti1+


def test_cif_round_trip_keeps_metadata_and_hash(tmp_path):
    cand = build_candidate("Li3InCl6")
    path = cand.to_cif(tmp_path / "c.cif")
    back = Candidate.from_cif(path)
    assert back.structure_hash == cand.structure_hash == structure_hash(back.structure)
    assert back.ordering.method == cand.ordering.method and back.name == cand.name
    assert cand.to_poscar(tmp_path / "POSCAR").read_text().strip()
    import ase.io

    atoms = ase.io.read(cand.to_extxyz(tmp_path / "c.extxyz"))
    assert len(atoms) == cand.n_atoms and abs(atoms.get_initial_charges().sum()) < 1e-6


def test_import_of_a_disordered_cif_orders_it_reproducibly(tmp_path):
    from pymatgen.core import Species

    disordered = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.7), [{Species("S", -2): 1.0}, {Species("Li", 1): 0.75, Species("Na", 1): 0.25}],
        [[0, 0, 0], [0.25, 0.25, 0.25]],
    )
    path = tmp_path / "LiNaS.cif"
    disordered.to(filename=str(path))
    a = import_file(path, working_ion="Li", oxidation_states={"Na": 1, "S": -2}, seed=2)
    b = import_file(path, working_ion="Li", oxidation_states={"Na": 1, "S": -2}, seed=2)
    assert a.structure_hash == b.structure_hash and a.structure.is_ordered
    assert _count(a.structure, "Li") == 3 * _count(a.structure, "Na")
    assert a.ordering.seed in (2, None)


def test_bond_valence_import_of_an_ordered_poscar(tmp_path):
    li2s = build_candidate("Li2S").structure.copy()
    li2s.remove_oxidation_states()
    path = tmp_path / "POSCAR"
    li2s.to(filename=str(path), fmt="poscar")
    cand = import_file(path, working_ion="Li")
    assert {site.specie.oxi_state for site in cand.structure if site.specie.symbol == "Li"} == {1}
    assert cand.structure_hash == build_candidate("Li2S").structure_hash


def test_bad_inputs_raise_input_error(tmp_path):
    bad = tmp_path / "broken.cif"
    bad.write_text("data_broken\n_cell_length_a oops\nloop_\n_atom_site_label\n")
    with pytest.raises(InputError):
        import_file(bad, working_ion="Li")
    framework = build_candidate("TiS2", n_ions=0).structure.copy()
    with pytest.raises(InputError, match="no Mg sites and no insertion sites"):
        candidate_from_structure(framework, name="TiS2-host", working_ion="Mg", oxidation_states={"Ti": 4, "S": -2})
    ok = candidate_from_structure(
        framework, name="TiS2-host", working_ion="Mg", oxidation_states={"Ti": 4, "S": -2},
        insertion_sites_frac=[[0.0, 0.0, 0.5]],
    )
    assert ok.insertion_sites_frac
    with pytest.raises(InputError, match="oxidation state"):
        candidate_from_structure(framework, name="x", working_ion="Mg", oxidation_states={"Ti": 4},
                                 insertion_sites_frac=[[0, 0, 0.5]])
    with pytest.raises(InputError, match="conducts Li"):
        build_candidate("Li6PS5Cl", ion="Mg")


def test_cli_list_show_export(tmp_path, unbuildable_library_entry):
    runner = CliRunner()
    listed = runner.invoke(app, ["list"])
    assert listed.exit_code == 0, listed.output
    assert "Li10GeP2S12" in listed.output and "lambda-MnO2" in listed.output and "missing_coordinates" in listed.output
    assert unbuildable_library_entry in listed.output
    shown = runner.invoke(app, ["show", "LATP"])
    assert shown.exit_code == 0 and "hash" in shown.output and "ordering" in shown.output
    out = tmp_path / "mn.cif"
    exported = runner.invoke(app, ["export", "lambda-MnO2", "--format", "cif", "-o", str(out), "--ion", "Zn"])
    assert exported.exit_code == 0, exported.output
    assert Candidate.from_cif(out).working_ion == "Zn"
    bad = runner.invoke(app, ["export", "nonexistent", "-o", str(tmp_path / "x.cif")])
    assert bad.exit_code == 2 and "no built-in candidate" in bad.output
