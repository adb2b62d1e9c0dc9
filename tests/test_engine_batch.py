"""Batches of MD segments on the lean engine: per-system checkpoints and frame logs, exact resumption,
unstable systems leaving without disturbing the others, splitting batches that do not fit, and the same
physics as the ASE path."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from engine_batch_worker import SmallDeviceMACE
from md_worker import SEGMENT, li2s_cell
from mlip.engine import BatchTooLarge, LeanMACE
from mlip.errors import InputError
from mlip.loader import trust
from screening.transport.batch_md import MDJob, chunk_jobs, run_md_batch
from screening.transport.framelog import FrameLog
from screening.transport.md import MDStatus, run_md

WORKER = Path(__file__).with_name("engine_batch_worker.py")
SHORT = replace(SEGMENT, equilibration_steps=20, production_steps=80, checkpoint_every_steps=20)


@pytest.fixture(scope="module")
def soft_module():
    from mlip.testing import build_mace

    return build_mace([3, 15, 16, 17], seed=1, pair_repulsion=True, interaction_scale=0.02)


@pytest.fixture
def soft_model_file(settings, tmp_path):
    """A smaller soft model (one interaction, L ≤ 1) so the subprocess runs are quick."""
    from mlip.testing import build_mace, save_model

    module = build_mace([3, 15, 16, 17], seed=1, pair_repulsion=True, interaction_scale=0.02, num_interactions=1, max_ell=1)
    path = save_model(module, tmp_path / "soft.model")
    trust(str(path), settings)
    return path


def _frames(workdir: Path) -> dict[str, bytes]:
    return {name: (workdir / "frames" / name).read_bytes() for name in ("meta.json", "frames.f64", "mobile.f32")}


def _worker(model: Path, workdir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, str(WORKER), str(model), str(workdir)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


class _Killed(BaseException):
    """Stands for SIGKILL inside the process: nothing after it runs, no handler catches it."""


def test_a_kill_between_one_events_checkpoints_still_resumes_exactly(soft_model_file, tmp_path, monkeypatch):
    """The race a SIGKILL can hit: an event's checkpoints are written one system after another. Stop the run
    right after the first system's checkpoint of a mid-production event: the re-run takes that system back to
    its previous checkpoint, and every system ends bit for bit as the uninterrupted run."""
    from engine_batch_worker import jobs

    from mlip.loader import load_model
    from screening.transport import batch_md
    from screening.transport.md import SegmentRun, batch_stamp

    model = LeanMACE.from_loaded(load_model(str(soft_model_file)), device="cpu")
    reference = tmp_path / "uninterrupted"
    run_md_batch(jobs(reference), model)

    killed = tmp_path / "killed"
    original = SegmentRun.checkpoint
    written = []

    def checkpoint(self, positions, momenta, batch=None):
        original(self, positions, momenta, batch=batch)
        written.append((batch["seq"], self.workdir.name, self.step))
        if batch["seq"] == 4 and len(batch["members"]) == 3:
            raise _Killed()

    monkeypatch.setattr(SegmentRun, "checkpoint", checkpoint)
    with pytest.raises(_Killed):
        run_md_batch(jobs(killed), model)
    monkeypatch.setattr(SegmentRun, "checkpoint", original)
    first = written[-1]
    assert first[0] == 4 and first[2] > 0
    stamps = {k: batch_stamp(killed / f"system{k}")["seq"] for k in range(3)}
    assert sorted(stamps.values()) == [3, 3, 4]  # the half-written event

    resumed = run_md_batch(jobs(killed), model)
    assert all(o.status is MDStatus.COMPLETED for o in resumed)
    for k in range(3):
        assert _frames(killed / f"system{k}") == _frames(reference / f"system{k}"), f"system{k}"
    assert batch_md.align_checkpoints([killed / f"system{k}" for k in range(3)]) == []  # nothing left to undo


def test_killed_batch_resumes_every_system_exactly(soft_model_file, tmp_path):
    from engine_batch_worker import SEGMENTS, jobs

    from mlip.loader import load_model

    expected = [seg.production_steps // seg.sample_every_steps + 1 for seg in SEGMENTS]
    reference = tmp_path / "uninterrupted"  # in this process: same model file, same code, same result
    outcomes = run_md_batch(jobs(reference), LeanMACE.from_loaded(load_model(str(soft_model_file)), device="cpu"))
    assert [(o.status, o.frames) for o in outcomes] == [(MDStatus.COMPLETED, n) for n in expected]

    killed = tmp_path / "killed"
    proc = _worker(soft_model_file, killed)
    deadline = time.time() + 600

    def frames_of_first():
        d = killed / "system0" / "frames"
        return FrameLog(d).n_frames if FrameLog.exists(d) else 0

    while frames_of_first() < expected[0] // 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the batch finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 0 < frames_of_first() < expected[0]

    resumed = run_md_batch(jobs(killed), LeanMACE.from_loaded(load_model(str(soft_model_file)), device="cpu"))
    assert [(o.status, o.frames) for o in resumed] == [(MDStatus.COMPLETED, n) for n in expected]
    assert all(o.resumed_from_step > 0 for o in resumed)  # every system continued from a checkpoint
    for k in range(3):
        assert _frames(killed / f"system{k}") == _frames(reference / f"system{k}"), f"system{k}"


def _exploding_job(workdir: Path) -> MDJob:
    """Passes the input checks, then blows up: far too hot for a time step far too long."""
    return MDJob(li2s_cell(), replace(SHORT, temperature_K=6000.0, timestep_fs=8.0, seed=5), workdir)


def _good_jobs(root: Path) -> list[MDJob]:
    from engine_batch_worker import unit_cell

    rattled = unit_cell() * (2, 1, 1)
    rattled.rattle(0.05, seed=4)
    return [MDJob(unit_cell(), SHORT, root / "a"),
            MDJob(rattled, replace(SHORT, temperature_K=800.0, seed=9, thermostat=SHORT.equilibration_thermostat),
                  root / "c")]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_exploding_system_is_flagged_and_leaves_the_others_unchanged(soft_module, tmp_path, dtype):
    model = LeanMACE(soft_module, dtype=dtype)
    alone = run_md_batch(_good_jobs(tmp_path / "without"), model)
    good = _good_jobs(tmp_path / "with")
    outcomes = run_md_batch([good[0], _exploding_job(tmp_path / "with" / "b"), good[1]], model)
    assert [o.status for o in outcomes] == [MDStatus.COMPLETED, MDStatus.UNSTABLE, MDStatus.COMPLETED]
    assert "apart" in outcomes[1].reason or "temperature" in outcomes[1].reason or "energy" in outcomes[1].reason
    assert outcomes[1].steps_done < SHORT.equilibration_steps + SHORT.production_steps
    status = json.loads((tmp_path / "with" / "b" / "status.json").read_text())
    assert status["status"] == "unstable" and status["reason"] == outcomes[1].reason
    # the analysis reads the unstable system's frames as the ASE path's: flagged unstable_md, no numbers
    from screening.transport.analysis import analyze_frames

    frames_dir = tmp_path / "with" / "b" / "frames"
    data = FrameLog(frames_dir).read() if FrameLog.exists(frames_dir) else None
    if data is not None:
        res, _ = analyze_frames(data, temperature_K=6000.0, ion_charge=1, md_status=status["status"])
        assert "unstable_md" in res.flags and res.diffusivity_cm2_s is None
    for name, got, want in zip("ac", (outcomes[0], outcomes[2]), alone):
        assert (got.status, got.steps_done, got.frames) == (want.status, want.steps_done, want.frames)
        with_b, without_b = (FrameLog(tmp_path / d / name / "frames").read() for d in ("with", "without"))
        # same trajectory; the batch's shape only touches the last bits (BLAS), which chaos may grow a little
        atol = 1e-9 if dtype == "float64" else 2e-4
        np.testing.assert_allclose(with_b.mobile_A, without_b.mobile_A, rtol=0, atol=atol)
        np.testing.assert_allclose(with_b.temperature_K, without_b.temperature_K, rtol=1e-3 if dtype == "float32" else 1e-9)


def test_bad_input_is_refused_before_any_md(soft_module, tmp_path):
    overlapping = li2s_cell()
    overlapping.positions[1] = overlapping.positions[0] + [0.3, 0.0, 0.0]
    jobs = _good_jobs(tmp_path) + [MDJob(overlapping, SHORT, tmp_path / "bad")]
    with pytest.raises(InputError, match="overlapping"):
        run_md_batch(jobs, LeanMACE(soft_module))
    assert not any((tmp_path / name / "checkpoint.npz").exists() for name in ("a", "c", "bad"))
    with pytest.raises(InputError, match="share a work directory"):
        run_md_batch([_good_jobs(tmp_path)[0], _good_jobs(tmp_path)[0]], LeanMACE(soft_module))


def test_a_batch_that_does_not_fit_is_split_with_a_message(soft_module, tmp_path, caplog):
    jobs = _good_jobs(tmp_path / "split")
    reference = run_md_batch(_good_jobs(tmp_path / "whole"), LeanMACE(soft_module, dtype="float64"))
    with caplog.at_level(logging.WARNING, logger="screening.transport.batch_md"):
        outcomes = run_md_batch(jobs, SmallDeviceMACE(soft_module, limit=30, dtype="float64"))
    assert any("does not fit in device memory" in r.getMessage() and "splitting" in r.getMessage() for r in caplog.records)
    assert [o.status for o in outcomes] == [MDStatus.COMPLETED] * 2
    for name, o, ref in zip("ac", outcomes, reference):
        assert o.frames == ref.frames
        np.testing.assert_allclose(FrameLog(tmp_path / "split" / name / "frames").read().mobile_A,
                                   FrameLog(tmp_path / "whole" / name / "frames").read().mobile_A, rtol=0, atol=1e-9)
    tiny = SmallDeviceMACE(soft_module, limit=10, dtype="float64")
    with pytest.raises(BatchTooLarge, match="on its own"):
        run_md_batch(_good_jobs(tmp_path / "never"), tiny)


def test_progress_is_monotonic_across_batches(soft_module, tmp_path):
    """Progress counts finished jobs plus each running system's share of its steps, whatever the batching."""
    reports = []
    outcomes = run_md_batch(_good_jobs(tmp_path), LeanMACE(soft_module), batch_systems=1,
                            progress=lambda units, n_jobs, running: reports.append((units, n_jobs, running)))
    assert [o.status for o in outcomes] == [MDStatus.COMPLETED] * 2
    units = [u for u, _, _ in reports]
    assert len(units) >= 10 and units == sorted(units) and 0 <= units[0] < 0.2 and 1.8 < units[-1] <= 2.0
    assert {n for _, n, _ in reports} == {2} and {r for _, _, r in reports} == {1}


def test_chunking_by_systems_and_atoms():
    assert chunk_jobs([48, 48, 12, 100], max_atoms=100) == [[0, 1], [2], [3]]
    assert chunk_jobs([48, 48, 12]) == [[0, 1, 2]]
    assert chunk_jobs([48, 48, 12, 12, 12], max_systems=2) == [[0, 1], [2, 3], [4]]
    assert chunk_jobs([48, 48, 12, 12], max_systems=3, max_atoms=100) == [[0, 1], [2, 3]]
    assert chunk_jobs([200, 10], max_atoms=100) == [[0], [1]]  # a system larger than the cap still runs, alone
    with pytest.raises(InputError):
        chunk_jobs([10], max_systems=0)


def test_engine_writes_what_the_ase_path_writes(soft_module, tmp_path):
    """float64, same seed: the same checkpoints, frame logs and status as run_md with MACECalculator."""
    from mlip._mace import import_mace

    import_mace()
    from mace.calculators import MACECalculator

    atoms = li2s_cell()
    atoms.calc = MACECalculator(models=soft_module, device="cpu", default_dtype="float64")
    ase_outcome = run_md(atoms, SHORT, tmp_path / "ase")
    engine_outcome, = run_md_batch([MDJob(li2s_cell(), SHORT, tmp_path / "engine")], LeanMACE(soft_module, dtype="float64"))
    assert (engine_outcome.status, engine_outcome.steps_done, engine_outcome.frames) == \
        (ase_outcome.status, ase_outcome.steps_done, ase_outcome.frames)
    a, e = FrameLog(tmp_path / "ase" / "frames"), FrameLog(tmp_path / "engine" / "frames")
    assert a.meta == e.meta
    da, de = a.read(), e.read()
    np.testing.assert_allclose(de.mobile_A, da.mobile_A, rtol=0, atol=1e-6)  # float32 on disk
    for field in ("temperature_K", "epot_eV", "ekin_eV", "min_distance_A", "framework_msd_A2", "framework_centroid_A"):
        np.testing.assert_allclose(getattr(de, field), getattr(da, field), rtol=1e-8, atol=1e-10, err_msg=field)
    with np.load(tmp_path / "ase" / "checkpoint.npz") as ca, np.load(tmp_path / "engine" / "checkpoint.npz") as ce:
        sa, se = json.loads(str(ca["state"])), json.loads(str(ce["state"]))
        # the engine also stamps its batch event (number and members: how a half-written event is undone)
        stamp = se.pop("batch")
        assert stamp["members"] == [str((tmp_path / "engine").resolve())] and stamp["seq"] >= 1
        assert sa == se  # step, frames, target, settings and the random generator's state
        np.testing.assert_allclose(ce["positions"], ca["positions"], rtol=0, atol=1e-9)
    assert json.loads((tmp_path / "ase" / "status.json").read_text()) == \
        json.loads((tmp_path / "engine" / "status.json").read_text())
