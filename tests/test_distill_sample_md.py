"""The active-learning round of the student: MD in the lean engine, failures kept, diverse snapshots picked."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from training.distill.sample_md import descriptor, farthest_points, run_round


def _li2s() -> Atoms:
    atoms = bulk("Li2S", "fluorite", a=5.70)  # 3 atoms; repeated to 24
    atoms = atoms.repeat((2, 2, 2))
    atoms.info.update({"host": "Li2S", "kind": "as-built", "working_ion": "Li"})
    return atoms


def test_farthest_points_takes_the_extremes_first():
    points = np.array([[0.0], [1.0], [2.0], [10.0], [9.5], [5.0]])
    assert farthest_points(points, 3) == [0, 3, 5]
    assert farthest_points(points, 0) == []
    assert sorted(farthest_points(points, 99)) == list(range(6))  # never more than there are
    assert farthest_points(np.zeros((4, 2)), 3) == [0]  # identical points: one is enough


def test_descriptor_is_invariant_to_translation_and_order_but_sees_compression():
    atoms = _li2s()
    pairs = {(a, b): k for k, (a, b) in enumerate([(3, 3), (3, 16), (16, 16)])}
    ref = descriptor(atoms, pairs)
    moved = atoms.copy()
    moved.positions += [0.7, -1.3, 2.1]
    shuffled = atoms[np.random.default_rng(0).permutation(len(atoms))]
    np.testing.assert_allclose(descriptor(moved, pairs), ref, atol=1e-12)
    np.testing.assert_allclose(descriptor(shuffled, pairs), ref, atol=1e-12)
    squeezed = atoms.copy()
    squeezed.set_cell(atoms.cell * 0.95, scale_atoms=True)
    assert np.linalg.norm(descriptor(squeezed, pairs) - ref) > 0.1 * np.linalg.norm(ref)


def _trusted(path, settings) -> str:
    from mlip.loader import trust

    trust(str(path), settings)
    return str(path)


def test_a_runaway_run_gives_its_last_sane_frame_as_a_failure(soft_model_file, tmp_path, settings):
    """A 20 fs step makes the soft model's 900 K run collapse: the round keeps the frame before, and stops it."""
    model = tmp_path / "soft.model"
    model.write_bytes(soft_model_file.read_bytes())
    picked, report = run_round(_trusted(model, settings), [_li2s()], round_index=1, steps=60, every=5,
                               warmup=5, timestep_fs=20.0, temperatures_per_host=2, per_host=2, seed=3)
    assert report["failed_systems"] >= 1
    failures = [a for a in picked if a.info["kind"] == "md-failure"]
    assert len(failures) == report["failed_systems"]
    for atoms in failures:
        assert atoms.info["md_failure"] and atoms.info["source"] == "md-round1"
        assert atoms.get_all_distances(mic=True)[np.triu_indices(len(atoms), 1)].min() > 1.0


def test_a_stable_student_gives_diverse_snapshots_with_their_origin(soft_model_file, tmp_path, settings):
    model = tmp_path / "soft.model"
    model.write_bytes(soft_model_file.read_bytes())
    picked, report = run_round(_trusted(model, settings), [_li2s()], round_index=2, steps=60, every=10, warmup=20,
                               timestep_fs=1.0, temperatures_per_host=2, per_host=3, seed=5)
    assert report["failed_systems"] == 0 and report["systems"] == 2
    assert len(picked) == 3
    assert {a.info["temperature_K"] for a in picked} <= {300.0, 900.0}
    for atoms in picked:
        assert atoms.info["host"] == "Li2S" and atoms.info["md_step"] > 20
        assert atoms.info["student_sha256"] == report["student_sha256"]
        assert len(atoms) == 24
    positions = [a.positions for a in picked]
    assert not any(np.allclose(positions[i], positions[j]) for i in range(3) for j in range(i + 1, 3))


def test_a_host_file_without_as_built_configurations_is_refused(tmp_path):
    from ase.io import write

    from training.distill.sample_md import hosts_from_configs

    path = tmp_path / "c.xyz"
    atoms = _li2s()
    atoms.info["kind"] = "rattle-0.04"
    write(path, atoms, format="extxyz")
    with pytest.raises(SystemExit, match="no as-built"):
        hosts_from_configs(path)


def test_teacher_md_parents_come_from_the_as_built_hosts_a_pattern_selects(tmp_path):
    """``training.demo.sample_md --configs FILE --hosts REGEX``: one parent per matching as-built host."""
    from ase.io import write

    from training.demo.sample_md import config_parents

    frames = []
    for host, kind in [("TiS2+Mg", "as-built"), ("TiS2+Mg", "rattle-0.04"), ("TiS2:empty", "as-built"),
                       ("Li2S", "as-built")]:
        atoms = _li2s()
        atoms.info.update({"host": host, "kind": kind})
        frames.append(atoms)
    path = tmp_path / "c.xyz"
    write(path, frames, format="extxyz")
    parents = config_parents(path, "[+:]")
    assert sorted(parents) == ["TiS2+Mg", "TiS2:empty"]
    built = parents["TiS2+Mg"].build()
    assert built.info["kind"] == "as-built" and parents["TiS2+Mg"].name == "library:TiS2+Mg"
    built.positions += 1.0  # each build is a fresh copy
    assert not np.allclose(parents["TiS2+Mg"].build().positions, built.positions)
    with pytest.raises(SystemExit, match="no 'as-built' frame"):
        config_parents(path, "NaCl")


def test_picked_teacher_md_frames_carry_their_own_origin(tmp_path):
    """A picked snapshot's config_type and host name the teacher trajectory, not the configuration it started
    from (a parent read from a configuration file brings ``config_type`` = ``library:as-built``)."""
    from ase.io import write

    from training.distill.pick import pick

    frames = []
    for k in range(6):
        atoms = _li2s()
        atoms.rattle(0.05 * (k + 1), seed=k)
        atoms.info.update({"config_type": "library:as-built", "temperature_K": 700.0, "time_fs": 40.0 * k,
                           "base": "library:TiS2+Mg"})
        frames.append(atoms)
    path = tmp_path / "library-TiS2+Mg_700K.extxyz"
    write(path, frames, format="extxyz")
    picked = pick([path], per_file=3, skip_fs=50.0)
    assert len(picked) == 3
    for atoms in picked:
        assert atoms.info["config_type"] == "teacher-md" and atoms.info["source"] == "teacher-md"
        assert atoms.info["host"] == "TiS2+Mg@700K" and atoms.info["parent"] == "TiS2+Mg"
        assert float(atoms.info["time_fs"]) >= 50.0
