"""Labelling with an MLIP teacher (distillation data): the same resumable journal as CP2K, the teacher's
identity on every frame, a run directory that belongs to one labeller, and datasets that refuse to mix levels
of theory unless asked."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from ase import Atoms
from ase.io import read, write
from ase.spacegroup import crystal

from killing import kill_label_run_after
from mlip.backends.chgnet import WEIGHTS
from mlip.errors import InputError
from training.label import CP2KSettings, TeacherLabeller, label_key, run_labelling

TEACHER = "chgnet:0.3.0"


def li2s_frames(n: int, repeat: int = 1, first_seed: int = 0) -> list[Atoms]:
    """Rattled conventional Li2S cells (12 atoms × repeat³), each a distinct structure."""
    base = crystal(["S", "Li"], basis=[(0, 0, 0), (0.25, 0.25, 0.25)], spacegroup=225,
                   cellpar=[5.70, 5.70, 5.70, 90, 90, 90]).repeat(repeat)
    frames = []
    for k in range(first_seed, first_seed + n):
        atoms = base.copy()
        atoms.rattle(0.06, seed=k)
        atoms.info["config_type"] = f"Li2S:rattle{k % 3}"
        frames.append(atoms)
    return frames


@pytest.fixture(scope="module")
def teacher():
    return TeacherLabeller(TEACHER)


def test_teacher_labels_are_the_teachers_own_numbers_with_its_identity(teacher, tmp_path):
    frames = li2s_frames(3)
    summary = run_labelling(frames, tmp_path / "out", teacher)
    assert summary.n_labelled_now == 3 and summary.labeller == "teacher"
    assert summary.settings_hash == WEIGHTS["0.3.0"].sha256 and TEACHER in summary.level_of_theory
    collected = read(tmp_path / "out" / "labelled.xyz", index=":")
    assert [f.info["structure_hash"] for f in collected] == [label_key(a) for a in frames]
    for frame, atoms in zip(collected, frames):
        direct = atoms.copy()
        direct.calc = teacher.model.calculator(task="single_point")
        assert frame.info["REF_energy"] == pytest.approx(direct.get_potential_energy(), abs=1e-4)
        np.testing.assert_allclose(frame.arrays["REF_forces"], direct.get_forces(), atol=1e-4)
        np.testing.assert_allclose(frame.info["REF_stress"], direct.get_stress(), atol=1e-6)
        assert frame.info["labeller"] == "teacher" and frame.info["teacher_family"] == "chgnet"
        assert frame.info["teacher_model_sha256"] == WEIGHTS["0.3.0"].sha256
        assert frame.info["level_of_theory"] == teacher.level_of_theory
        assert "dft_basis" not in frame.info and frame.info["config_type"] == atoms.info["config_type"]
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["labeller"] == "teacher" and record["model_sha256"] == WEIGHTS["0.3.0"].sha256


def test_a_teacher_run_directory_refuses_another_labeller(teacher, tmp_path):
    run_labelling(li2s_frames(1), tmp_path / "out", teacher)
    with pytest.raises(InputError, match="Mixing levels of theory") as info:
        run_labelling(li2s_frames(1), tmp_path / "out", CP2KSettings())
    assert TEACHER in str(info.value)
    with pytest.raises(InputError, match="chgnet:r2scan"):
        run_labelling(li2s_frames(1), tmp_path / "out", TeacherLabeller("chgnet:r2scan"))


def test_an_element_the_teacher_lacks_is_a_recorded_failure(teacher, tmp_path):
    polonium = Atoms("Po2", positions=[[0, 0, 0], [2.5, 0, 0]], cell=[5.0] * 3, pbc=True)
    summary = run_labelling([polonium, *li2s_frames(1)], tmp_path / "out", teacher)
    assert summary.n_failed_now == 1 and summary.n_labelled_now == 1
    (failed,) = (tmp_path / "out" / "failed").glob("*.json")
    assert "does not cover element(s) Po" in json.loads(failed.read_text())["error"]


def test_a_killed_teacher_run_resumes_without_relabelling(tmp_path):
    src = tmp_path / "structures.xyz"
    write(src, li2s_frames(30))
    structures = read(src, index=":")  # the labeller hashes what it reads
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "workflows.cli", "label", str(src), "--out", str(out), "--teacher", TEACHER]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    frames_dir = out / "frames"
    before = kill_label_run_after(cmd, frames_dir, 3, poll_s=0.02)
    assert 3 <= len(before) < 30, "the kill should land mid-way"

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in frames_dir.glob("*.extxyz")}
    assert sorted(after) == sorted(f"{label_key(a)}.extxyz" for a in structures)
    for name, stamp in before.items():
        assert after[name] == stamp, f"{name} was labelled again"
    assert f"{len(before)} already labelled" in done.stdout and f"labelled now {30 - len(before)}" in done.stdout
    assert not list(frames_dir.glob(".*.tmp")), "half-written files of the killed run are removed"


def test_label_command_refuses_cp2k_options_with_a_teacher(tmp_path):
    from typer.testing import CliRunner

    from workflows.cli import app

    write(tmp_path / "s.xyz", li2s_frames(1))
    result = CliRunner().invoke(app, ["label", str(tmp_path / "s.xyz"), "--out", str(tmp_path / "out"),
                                      "--teacher", TEACHER, "--basis", "SZV", "--cutoff-Ry", "300"])
    assert result.exit_code == 1
    assert "--basis, --cutoff-Ry set CP2K labelling and cannot go with --teacher" in result.output
    assert not (tmp_path / "out").exists()
    # what was given decides, not whether it differs from the default
    same = CliRunner().invoke(app, ["label", str(tmp_path / "s.xyz"), "--out", str(tmp_path / "out"),
                                    "--teacher", TEACHER, "--cutoff-Ry", "400"])
    assert same.exit_code == 1 and "--cutoff-Ry set CP2K labelling" in same.output
    assert not (tmp_path / "out").exists()


def _cp2k_style_frames(path, n: int) -> None:
    """Frames as `ionscreen label` wrote CP2K labels before labellers were recorded (dft_* keys only)."""
    frames = []
    for k, atoms in enumerate(li2s_frames(n, first_seed=100)):  # other structures than the teacher's
        atoms = atoms.copy()
        rng = np.random.default_rng(k)
        atoms.info.update({"REF_energy": -2000.0 - k * 0.01, "REF_stress": rng.normal(0, 1e-3, 6),
                           "dft_code": "CP2K", "dft_xc": "PBE", "dft_pseudopotential": "GTH-PBE",
                           "dft_basis": "DZVP-MOLOPT-SR-GTH", "dft_cutoff_Ry": 400.0, "dft_rel_cutoff_Ry": 50.0,
                           "dft_settings_hash": "0123456789abcdef"})
        atoms.arrays["REF_forces"] = rng.normal(0, 0.3, (len(atoms), 3))
        frames.append(atoms)
    write(path, frames, format="extxyz")


def test_datasets_refuse_to_mix_labellers_unless_asked(teacher, tmp_path):
    from training.data import import_files, load_dataset

    run_labelling(li2s_frames(4), tmp_path / "teacher", teacher)
    _cp2k_style_frames(tmp_path / "cp2k.xyz", 5)
    first = import_files([tmp_path / "cp2k.xyz"], tmp_path / "ds")
    level = "CP2K PBE/GTH-PBE/DZVP-MOLOPT-SR-GTH, cutoff 400/50 Ry"
    assert first.manifest.level_of_theory_counts == {level: 5}
    manifest_before = (tmp_path / "ds" / "manifest.json").read_bytes()
    with pytest.raises(InputError, match="would mix levels of theory") as info:
        import_files([tmp_path / "teacher"], tmp_path / "ds")
    assert f"{level}: 5 stored, 0 in this import" in str(info.value)
    assert f"{teacher.level_of_theory}: 0 stored, 4 in this import" in str(info.value)
    assert (tmp_path / "ds" / "manifest.json").read_bytes() == manifest_before  # nothing imported
    with pytest.raises(InputError, match="mix levels"):  # in one import, too
        import_files([tmp_path / "teacher", tmp_path / "cp2k.xyz"], tmp_path / "ds2")
    assert not (tmp_path / "ds2" / "manifest.json").exists()

    mixed = import_files([tmp_path / "teacher"], tmp_path / "ds", allow_mixed_levels=True)
    assert mixed.manifest.level_of_theory_counts == {level: 5, teacher.level_of_theory: 4}
    stored = load_dataset(tmp_path / "ds").frames
    assert {f.info["level_of_theory"] for f in stored} == {level, teacher.level_of_theory}
