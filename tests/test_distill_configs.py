"""The configurations a teacher labels first when a student is distilled: each variant does what it says, every
configuration records its origin, and the same seed gives the same configurations."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from ase import Atoms
from ase.io import write
from ase.spacegroup import crystal

from training.demo.make_configs import min_distance
from training.distill.configs import MIN_CONTACT_A, Host, barrier_hosts, close_contact, make_configs, variants


def li2s() -> Atoms:
    return crystal(["S", "Li"], basis=[(0, 0, 0), (0.25, 0.25, 0.25)], spacegroup=225,
                   cellpar=[5.70, 5.70, 5.70, 90, 90, 90])


def test_each_variant_does_what_its_name_says():
    host = Host("library", "Li2S", li2s(), "Li")
    made = dict(variants(host, seed=5))
    assert set(made) == {"as-built", "rattle-0.04", "rattle-0.10", "strain-4%", "shear-3%", "vacancy", "close-contact"}
    assert np.allclose(made["as-built"].positions, host.atoms.positions)
    for kind, sigma in (("rattle-0.04", 0.04), ("rattle-0.10", 0.10)):
        moved = made[kind].positions - host.atoms.positions
        moved -= host.atoms.cell.cartesian_positions(np.round(host.atoms.cell.scaled_positions(moved)))
        assert 0.5 * sigma < moved.std() < 1.5 * sigma
    assert abs(made["strain-4%"].get_volume() / host.atoms.get_volume() - 1) > 1e-3
    cell = made["shear-3%"].cell.cellpar()
    assert any(abs(angle - 90) > 0.01 for angle in cell[3:])
    assert made["vacancy"].get_chemical_symbols().count("Li") == 7 and len(made["vacancy"]) == 11
    assert MIN_CONTACT_A <= min_distance(made["close-contact"]) < 0.9 * min_distance(host.atoms)
    again = dict(variants(host, seed=5))
    assert all(np.array_equal(again[k].positions, made[k].positions) for k in made)  # seeded


def test_a_close_contact_never_goes_below_the_floor():
    dimer = Atoms("Li2", positions=[[0, 0, 0], [1.4, 0, 0]], cell=[8.0] * 3, pbc=True)  # 0.8 × 1.4 < floor
    assert close_contact(dimer, np.random.default_rng(0)).get_distance(0, 1, mic=True) == pytest.approx(MIN_CONTACT_A)
    assert close_contact(Atoms("Li2", positions=[[0, 0, 0], [1.1, 0, 0]], cell=[8.0] * 3, pbc=True),
                         np.random.default_rng(0)) is None  # already closer than the floor: nothing to make


def test_barrier_hops_give_both_endpoints_and_the_midpoint_across_the_boundary(tmp_path):
    initial = li2s()
    initial.info.update({"jid": 7, "sys_name": "Li2S", "ion": "Li", "endpoint": "initial", "barrier_eV": 0.3})
    final = initial.copy()
    final.info["endpoint"] = "final"
    initial.positions[0] = [0.2, 0.2, 0.2]
    final.positions[0] = [5.5, 0.2, 0.2]  # 0.4 Å away through the periodic boundary
    path = tmp_path / "endpoints.extxyz.gz"
    with gzip.open(path, "wt") as fh:
        write(fh, [initial, final], format="extxyz")
    hosts = list(barrier_hosts(path, []))
    assert [h.name for h in hosts] == ["Li2S#7:initial", "Li2S#7:final", "Li2S#7:midpoint"]
    midpoint = hosts[2].atoms
    assert midpoint.get_distance(0, 0) == 0 and hosts[2].ion == "Li"
    to_initial = midpoint.positions[0] - initial.positions[0]
    assert np.linalg.norm(to_initial) == pytest.approx(0.2, abs=1e-9)  # the short way round, not 2.65 Å


def test_make_configs_records_every_frames_origin(tmp_path):
    initial = li2s()
    initial.info.update({"jid": 1, "sys_name": "Li2S", "ion": "Li"})
    final = initial.copy()
    final.positions[0] += [0.5, 0.5, 0.0]
    (tmp_path / "migration-barriers").mkdir()
    with gzip.open(tmp_path / "migration-barriers" / "train_endpoints.extxyz.gz", "wt") as fh:
        write(fh, [initial, final], format="extxyz")
    configs, skipped = make_configs(("barriers",), seed=3, reference_dir=tmp_path)
    assert not skipped and len(configs) == 3 * 7
    for atoms in configs:
        info = atoms.info
        assert info["source"] == "barriers" and info["config_type"] == f"barriers:{info['kind']}"
        assert info["working_ion"] == "Li" and min_distance(atoms) >= MIN_CONTACT_A - 1e-6
    assert len({atoms.info["seed"] for atoms in configs}) == 3  # one seed per host
    small, skipped = make_configs(("barriers",), seed=3, reference_dir=tmp_path, max_atoms=10)
    assert not small and [s.reason for s in skipped] == ["12 atoms > 10"] * 3
    # --hop-frames: three frames per hop, all under the hop's name
    from training.distill.configs import hop_frames

    three = hop_frames(configs)
    assert [(a.info["endpoint"], a.info["kind"]) for a in three] == [
        ("initial", "as-built"), ("final", "as-built"), ("midpoint", "rattle-0.04")]
    assert {a.info["host"] for a in three} == {"Li2S#1"}


def test_a_dataset_split_by_host_keeps_every_variant_of_a_structure_together(tmp_path):
    from mlip.errors import InputError
    from training.data import SplitSpec, import_files, load_dataset

    frames = []
    for h in range(12):
        base = li2s()
        base.rattle(0.02, seed=100 + h)  # twelve distinct structures
        host = Host("library", f"host{h}", base, "Li")
        for kind, atoms in variants(host, seed=h):
            rng = np.random.default_rng(len(frames))
            atoms.info.update({"host": host.name, "kind": kind, "REF_energy": -100.0 + rng.normal(0, 0.01),
                               "REF_stress": rng.normal(0, 1e-3, 6)})
            atoms.arrays["REF_forces"] = rng.normal(0, 0.3, (len(atoms), 3))
            frames.append(atoms)
    write(tmp_path / "frames.xyz", frames, format="extxyz")
    split = SplitSpec(seed=1, train=0.5, valid=0.25, test=0.25, group_by="host")
    report = import_files([tmp_path / "frames.xyz"], tmp_path / "ds", split=split)
    assert report.n_accepted == len(frames)
    by_host: dict[str, set] = {}
    for atoms in load_dataset(tmp_path / "ds").frames:
        by_host.setdefault(atoms.info["host"], set()).add(atoms.info["split"])
    assert all(len(splits) == 1 for splits in by_host.values())  # no structure on both sides of the split
    assert len(set().union(*by_host.values())) == 3  # and every split is used
    for atoms in frames:
        del atoms.info["host"]
    write(tmp_path / "no-host.xyz", frames[:2], format="extxyz")
    with pytest.raises(InputError, match="no 'host' in its info"):
        import_files([tmp_path / "no-host.xyz"], tmp_path / "ds2", split=split)


def test_obelix_hosts_in_the_transport_cell_and_filtered_by_name(tmp_path):
    """``--min-length-A`` repeats a host until every cell height reaches it (the cell a transport run simulates);
    ``--hosts`` keeps the hosts whose name matches; an OBELiX host is named id:formula, which extxyz keeps a string
    (a bare id such as 1e9 would come back as a number)."""
    from ase.io import read

    from screening.cells import cell_heights_A

    cifs = tmp_path / "obelix" / "cifs"
    cifs.mkdir(parents=True)
    write(cifs / "1e9.cif", li2s(), format="cif")  # 5.70 Å
    own, _ = make_configs(("obelix",), seed=3, reference_dir=tmp_path)
    wide, skipped = make_configs(("obelix",), seed=3, reference_dir=tmp_path, min_length_A=8.0, hosts="^1e9:")
    assert not skipped and len(wide) == len(own) > 0
    host = wide[0].info["host"]
    assert host.startswith("1e9:") and {a.info["host"] for a in wide} == {host}
    as_built = next(a for a in wide if a.info["kind"] == "as-built")
    assert min(cell_heights_A(as_built.cell.array)) >= 8.0 > min(cell_heights_A(own[0].cell.array))
    assert len(as_built) == 8 * len(own[0])
    write(tmp_path / "configs.xyz", wide, format="extxyz")
    assert read(tmp_path / "configs.xyz", 0).info["host"] == host
    none, _ = make_configs(("obelix",), seed=3, reference_dir=tmp_path, hosts="^1e90:")
    assert none == []
    small, skipped = make_configs(("obelix",), seed=3, reference_dir=tmp_path, min_length_A=8.0, max_atoms=20)
    assert not small and [s.reason for s in skipped] == [f"{len(as_built)} atoms > 20"]
