"""The demo configurations (training/demo/make_configs.py): chemistry and geometry invariants, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from training.data import structure_hash
from training.demo.make_configs import MIN_DISTANCE_A, PARENTS, lattice_round, min_distance
from training.label import CP2KSettings, valence_electrons

OXIDATION = {"Li": 1, "P": 5, "S": -2, "Cl": -1}


@pytest.fixture(scope="module")
def small_round():
    return lattice_round(seed=7, scale=0.2)


def test_parents_have_the_intended_composition():
    formulas = {name: p.build().get_chemical_formula() for name, p in PARENTS.items()}
    assert formulas == {
        "Li6PS5Cl_52": "Cl4Li24P4S20",
        "beta-Li3PS4_32": "Li12P4S16",
        "Li2S_24": "Li16S8",
        "LiCl_64": "Cl32Li32",
    }
    for p in PARENTS.values():
        a = p.build()
        assert min_distance(a) > 1.9  # no overlapping sites left by the ordering of partial occupancies
        # every config of a parent gets the parent's k-mesh (strain must not flip a mesh: labels would jump)
        mesh = CP2KSettings(kpoint_min_length_A=9.0).kpoint_mesh(a)
        assert mesh in {(1, 1, 1), (1, 2, 2)}
        ps = a.get_all_distances(mic=True)[np.ix_(a.numbers == 15, a.numbers == 16)]
        if ps.size:
            assert np.allclose(np.sort(ps, axis=1)[:, :4], 2.05, atol=0.1)  # intact PS4 tetrahedra


def test_every_config_is_neutral_closed_shell_orthorhombic_and_not_overlapping(small_round):
    settings = CP2KSettings()
    kinds = {a.info["kind"] for a in small_round}
    assert {"pristine", "frenkel", "schottky", "antisite", "hot_li"} <= kinds
    for a in small_round:
        syms = a.get_chemical_symbols()
        assert sum(OXIDATION[s] for s in syms) == 0, a.info
        assert valence_electrons(syms, settings) % 2 == 0  # closed shell: restricted CP2K, no spin guess
        assert np.allclose(a.cell.angles(), 90.0)  # CP2K's fast path
        assert min_distance(a) >= MIN_DISTANCE_A
        assert 20 <= len(a) <= 64  # "roughly 24-64 atoms"; Schottky defects take a few away
        assert {"config_type", "base", "kind", "round", "seed"} <= set(a.info)


def test_kpoint_mesh_constant_within_each_parent():
    settings = CP2KSettings(kpoint_min_length_A=9.0)
    meshes: dict[str, set] = {}
    for a in lattice_round():
        meshes.setdefault(a.info["base"], set()).add(settings.kpoint_mesh(a))
    assert all(len(m) == 1 for m in meshes.values()), meshes
    assert meshes["Li2S_24"] == {(1, 2, 2)} and meshes["Li6PS5Cl_52"] == {(1, 1, 1)}


def test_configs_are_deterministic_and_distinct(small_round):
    again = lattice_round(seed=7, scale=0.2)
    hashes = [structure_hash(a) for a in small_round]
    assert hashes == [structure_hash(a) for a in again]
    assert len(set(hashes)) == len(hashes)
    other = lattice_round(seed=8, scale=0.2)
    pristine = {structure_hash(a) for a in other if a.info["kind"] == "pristine"}
    assert len(set(map(structure_hash, other)) & set(hashes)) == len(pristine)  # only the pristine ones agree


def test_shipped_round1_structures_are_what_the_script_makes():
    """The structures labelled for the demo model (training/datasets/lipscl-cp2k) come from this script."""
    from pathlib import Path

    from ase.io import read

    shipped = Path(__file__).resolve().parents[1] / "training/datasets/lipscl-cp2k/structures-round1.xyz"
    if not shipped.exists():
        pytest.skip("round-1 structures not in this checkout")
    import io

    from ase.io import write

    buf = io.StringIO()
    write(buf, lattice_round(), format="extxyz")  # hashes are of what is written (8 decimals), as labelled
    buf.seek(0)
    made = read(buf, index=":", format="extxyz")
    assert [structure_hash(a) for a in made] == [structure_hash(a) for a in read(shipped, index=":")]


def test_md_round_subsamples_trajectories_with_provenance(tmp_path):
    from ase.io import write

    from training.demo.make_configs import md_round

    base = PARENTS["LiCl_64"].build()
    traj = []
    for k in range(10):
        a = base.copy()
        a.rattle(0.05, seed=k)
        a.info.update({"base": "LiCl_64", "temperature_K": 900.0})
        traj.append(a)
    write(tmp_path / "md900.xyz", traj)
    frames = md_round([tmp_path / "md900.xyz"], every=3, round_no=2, max_frames=None, seed=0)
    assert [f.info["traj_frame"] for f in frames] == [0, 3, 6, 9]
    assert {f.info["config_type"] for f in frames} == {"LiCl:md"} and {f.info["round"] for f in frames} == {2}
    assert all(f.info["temperature_K"] == 900.0 for f in frames)
    capped = md_round([tmp_path / "md900.xyz"], every=1, round_no=2, max_frames=4, seed=1)
    assert len(capped) == 4 and len({f.info["traj_frame"] for f in capped}) == 4


def test_isolated_atoms_have_valid_spin_states():
    from training.demo.make_configs import isolated_atoms
    from training.label import spin_state

    atoms = isolated_atoms()
    assert [a.get_chemical_symbols()[0] for a in atoms] == ["Li", "P", "S", "Cl"]
    for a in atoms:
        charge, mult, uks = spin_state(a, CP2KSettings())  # raises if the multiplicity is impossible
        assert charge == 0 and uks == (mult > 1) and a.info["config_type"] == "IsolatedAtom"
