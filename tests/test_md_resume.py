"""The MD driver: kill-and-resume reproduces an uninterrupted run exactly; bad input fails before MD."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms

from mlip.errors import InputError
from mlip.loader import load_model, trust
from screening.transport.framelog import FrameLog
from screening.transport.md import MDStatus, check_structure, run_md
from screening.transport.protocol import make_protocol

WORKER = Path(__file__).with_name("md_worker.py")


@pytest.fixture(scope="session")
def soft_model_file(tmp_path_factory) -> Path:
    """A tiny MACE with MACE's ZBL core and weak random many-body terms: stable MD, fake physics."""
    from mlip.testing import build_mace, save_model

    model = build_mace([3, 15, 16, 17], seed=1, pair_repulsion=True, interaction_scale=0.02)
    return save_model(model, tmp_path_factory.mktemp("soft") / "soft.model")


@pytest.fixture
def soft_model(soft_model_file, settings, tmp_path):
    copy = tmp_path / "soft.model"
    copy.write_bytes(soft_model_file.read_bytes())
    trust(str(copy), settings)
    return copy


def _worker(model: Path, workdir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, str(WORKER), str(model), str(workdir)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _frames_on_disk(workdir: Path) -> int:
    return FrameLog(workdir / "frames").n_frames if FrameLog.exists(workdir / "frames") else 0


def test_killed_md_resumes_to_an_identical_trajectory(soft_model, tmp_path):
    from md_worker import SEGMENT

    reference = tmp_path / "uninterrupted"
    proc = _worker(soft_model, reference)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    n_expected = SEGMENT.production_steps // SEGMENT.sample_every_steps + 1
    assert out.split()[:3] == ["completed", str(SEGMENT.equilibration_steps + SEGMENT.production_steps), str(n_expected)]

    killed = tmp_path / "killed"
    proc = _worker(soft_model, killed)
    deadline = time.time() + 600
    while _frames_on_disk(killed) < n_expected // 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = _frames_on_disk(killed)
    assert 0 < partial < n_expected

    proc = _worker(soft_model, killed)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    status, steps, frames, resumed_from = out.split()
    assert status == "completed" and int(frames) == n_expected and int(resumed_from) > 0

    for name in ("frames.f64", "mobile.f32"):
        assert (killed / "frames" / name).read_bytes() == (reference / "frames" / name).read_bytes(), name
    data = FrameLog(killed / "frames").read()
    assert data.n_frames == n_expected
    np.testing.assert_allclose(np.diff(data.times_fs), SEGMENT.sample_every_steps * SEGMENT.timestep_fs)

    # re-running a finished segment adds nothing
    proc = _worker(soft_model, killed)
    out, _ = proc.communicate(timeout=600)
    assert out.split()[2] == str(n_expected)
    assert (killed / "frames" / "mobile.f32").read_bytes() == (reference / "frames" / "mobile.f32").read_bytes()


def test_same_seed_same_trajectory_and_extension_continues(soft_model, tmp_path):
    from dataclasses import replace

    from md_worker import SEGMENT, li2s_cell

    short = replace(SEGMENT, production_steps=200, checkpoint_every_steps=40)
    calc = load_model(str(soft_model)).calculator(task="md")
    runs = []
    for name in ("a", "b"):
        atoms = li2s_cell()
        atoms.calc = calc
        assert run_md(atoms, short, tmp_path / name).status is MDStatus.COMPLETED
        runs.append((tmp_path / name / "frames" / "mobile.f32").read_bytes())
    assert runs[0] == runs[1]
    # extending production continues the same trajectory: equal to a run made long from the start
    longer = replace(short, production_steps=400)
    atoms = li2s_cell()
    atoms.calc = calc
    outcome = run_md(atoms, longer, tmp_path / "a")
    assert outcome.resumed_from_step == short.equilibration_steps + short.production_steps
    atoms = li2s_cell()
    atoms.calc = calc
    run_md(atoms, longer, tmp_path / "c")
    assert (tmp_path / "a" / "frames" / "mobile.f32").read_bytes() == (tmp_path / "c" / "frames" / "mobile.f32").read_bytes()
    # a checkpoint of other settings is refused rather than silently mixed
    atoms = li2s_cell()
    atoms.calc = calc
    with pytest.raises(InputError, match="different MD settings"):
        run_md(atoms, replace(longer, temperature_K=900.0), tmp_path / "a")


def test_collapsing_model_is_flagged_unstable(tiny_model_copy, settings, tmp_path):
    """A random MACE without a repulsive core pulls atoms together: the run stops with a reason."""
    from dataclasses import replace

    from md_worker import SEGMENT, li2s_cell

    loaded = trust(str(tiny_model_copy), settings)
    atoms = li2s_cell()
    atoms.calc = loaded.calculator(task="md")
    outcome = run_md(atoms, replace(SEGMENT, temperature_K=1500.0, production_steps=2000), tmp_path / "md")
    assert outcome.status is MDStatus.UNSTABLE
    assert "apart" in outcome.reason or "energy" in outcome.reason or "temperature" in outcome.reason


def _li2s():
    from md_worker import li2s_cell

    return li2s_cell()


def test_bad_structures_are_refused_before_md(tmp_path):
    atoms = _li2s()
    overlapping = atoms.copy()
    overlapping.positions[1] = overlapping.positions[0] + [0.3, 0, 0]
    with pytest.raises(InputError, match="overlapping"):
        check_structure(overlapping, "Li")
    molecule = Atoms("LiS", positions=[[0, 0, 0], [2.4, 0, 0]])
    with pytest.raises(InputError, match="not periodic"):
        check_structure(molecule, "Li")
    with pytest.raises(InputError, match="no Na"):
        check_structure(atoms, "Na")


@pytest.mark.parametrize("field, value, match", [
    ("temperatures_K", (0.0, 600.0), "temperatures_K"),
    ("temperatures_K", (-300.0,), "temperatures_K"),
    ("timestep_fs", -1.0, "timestep_fs"),
    ("timestep_fs", 0.0, "timestep_fs"),
])
def test_bad_protocol_values_are_refused(field, value, match):
    values = dict(temperatures_K=(600.0,), timestep_fs=2.0, equilibration_ps=0.1, production_ps=1.0,
                  sample_interval_fs=10.0, supercell_min_length_A=8.0)
    values[field] = value
    with pytest.raises(InputError, match=match):
        make_protocol(**values)


def test_bad_segment_values_are_refused_before_md(soft_model, tmp_path):
    from dataclasses import replace

    from md_worker import SEGMENT

    atoms = _li2s()
    atoms.calc = load_model(str(soft_model)).calculator(task="md")
    for bad in (replace(SEGMENT, temperature_K=0.0), replace(SEGMENT, timestep_fs=-2.0)):
        with pytest.raises(InputError):
            run_md(atoms, bad, tmp_path / "bad")
        assert not (tmp_path / "bad" / "checkpoint.npz").exists()


def test_a_frame_log_is_readable_from_the_moment_its_meta_json_exists(tmp_path, monkeypatch):
    """Progress readers (the job monitor, the tests' waits) take meta.json as the sign that a frame log exists and
    count its frames at once; the data files must already be there when it appears (a CI run once read the log
    between the two and failed on a missing frames.f64)."""
    import screening.transport.framelog as framelog

    seen = []
    real = framelog.atomic_write_text

    def watching(path, text):
        if Path(path).name == "meta.json":
            seen.append(sorted(p.name for p in Path(path).parent.iterdir()))
        return real(path, text)

    monkeypatch.setattr(framelog, "atomic_write_text", watching)
    log = FrameLog.create(tmp_path / "frames", {"mobile_indices": [0, 1], "framework_species": ["S"]})
    assert seen and {"frames.f64", "mobile.f32"} <= set(seen[0])
    assert FrameLog(tmp_path / "frames").n_frames == 0 == log.n_frames
