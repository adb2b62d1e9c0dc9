"""Screening jobs on real Ray (local, 2 CPUs) with SQLite and PostgreSQL: results, ranking, kills, resume, bad input."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from mlip.errors import InputError
from mlip.loader import trust
from protocols import short_protocol

# small on purpose: these tests are about orchestration, not physics
JOB_TRANSPORT = {"overrides": short_protocol(equilibration_ps=0.1, production_ps=0.6, supercell_min_length_A=5.0,
                                             relax_max_steps=10)}


@pytest.fixture(scope="module")
def ray_session():
    import ray

    yield
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def job_dir(tmp_path, soft_model_file, settings):
    model = tmp_path / "soft.model"
    model.write_bytes(soft_model_file.read_bytes())
    trust(str(model), settings)
    from ase.io import write
    from ase.spacegroup import crystal

    write(tmp_path / "LiCl.cif", crystal(["Li", "Cl"], [(0, 0, 0), (0.5, 0.5, 0.5)], spacegroup=225,
                                         cellpar=[5.13] * 3 + [90] * 3))
    return tmp_path


def write_job(directory: Path, *, candidates=None, transport=None, name="ray-test", workers=2, extra=None) -> Path:
    job = {
        "name": name,
        "model": "soft.model",
        "working_ion": "Li",
        "candidates": candidates or [{"library": "Li2S"}, {"library": "Li3N"},
                                     {"file": "LiCl.cif", "oxidation": {"Li": 1, "Cl": -1}}],
        "transport": transport or JOB_TRANSPORT,
        "resources": {"workers": workers, "max_attempts": 3},
        **(extra or {}),
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def _cli(*args, env=None, timeout=900):
    return subprocess.run([sys.executable, "-m", "workflows.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_job_runs_ranks_and_is_idempotent(backend, job_dir, ray_session, monkeypatch, request):
    from mlip.config import load_settings
    from workflows.db import Store
    from workflows.jobs.plan import plan_job
    from workflows.jobs.run import run_job
    from workflows.jobs.spec import load_job_spec

    if backend == "postgresql":
        monkeypatch.setenv("IONSCREEN_DB_URL", request.getfixturevalue("postgres_url"))
    settings = load_settings()
    neb = {"neb": {"max_hops": 1, "n_images": 3, "min_length_A": 5.0, "max_steps": 30, "endpoint_max_steps": 30}}
    plan = plan_job(load_job_spec(write_job(job_dir, extra=neb)), settings)
    assert plan.n_candidates == 2 and plan.n_tasks == 4  # transport and NEB for each
    assert len(plan.failures) == 1 and "Li3N" in plan.failures[0] and "N" in plan.failures[0]  # one bad candidate
    summary = run_job(plan.job_id, settings, live=False)
    assert summary.done == 4 and summary.failed == 0
    store = Store.open(settings.db_url)
    job = store.jobs.get(plan.job_id)
    assert job.status == "done" and job.mlflow_run_id
    rows = store.results.for_job(plan.job_id)
    assert len(rows) == 4 and {r["name"] for r in rows} == {"Li2S", "LiCl"}
    assert {r["stage"] for r in rows} == {"transport", "neb"}
    assert all(r["n_hops_total"] >= 1 for r in rows if r["stage"] == "neb")
    for r in rows:
        assert r["model_sha256"] == job.model_sha256 and r["protocol_hash"] and r["code_version"]
        assert (settings.home / r["document_path"]).is_file()  # the full document lives in a file
    # the same job again: every task is reused, nothing recomputed, no duplicate rows
    again = plan_job(load_job_spec(write_job(job_dir, name="ray-test-again", extra=neb)), settings)
    summary2 = run_job(again.job_id, settings, live=False)
    assert summary2.done == 0 and summary2.failed == 0
    assert all(t.reused_result for t in store.tasks.list(again.job_id))
    assert len(store.results.for_job(again.job_id)) == 4
    # MLflow holds the job as a run with the ranked table
    from mlip import registry

    client = registry.client(settings)
    run = client.get_run(job.mlflow_run_id)
    assert run.data.params["model_sha256"] == job.model_sha256 and run.data.metrics["tasks_done"] == 4
    artifacts = {a.path for a in client.list_artifacts(job.mlflow_run_id, "results")}
    assert "results/ranked.csv" in artifacts


def test_results_command_formats_and_cif_export(job_dir, ray_session):
    screened = _cli("screen", str(write_job(job_dir)))
    assert screened.returncode == 0, screened.stderr
    assert "Li2S" in screened.stdout and "LiCl" in screened.stdout and "failed" in screened.stderr
    job_id = screened.stderr.split("job ", 1)[1].split(":", 1)[0]
    table = _cli("results", job_id[:8])
    assert table.returncode == 0 and "σ300K" in table.stdout and "Li3N" in table.stdout  # the failed one is noted
    rows = list(csv.DictReader(io.StringIO(_cli("results", job_id, "--format", "csv").stdout)))
    assert [int(r["rank"]) for r in rows] == [1, 2] and {"conductivity_300K_ci95_lo_mS_cm", "flags"} <= set(rows[0])
    data = json.loads(_cli("results", job_id, "--format", "json").stdout)
    assert len(data["ranked"]) == 2
    out = job_dir / "exported.cif"
    assert _cli("results", job_id, "--cif", "LiCl", "-o", str(out)).returncode == 0
    from pymatgen.core import Structure

    assert Structure.from_file(out).composition.reduced_formula == "LiCl"
    status = _cli("jobs", "status", job_id[:8])
    assert "done" in status.stdout and "attempts 1" in status.stdout
    assert job_id[:12] in _cli("jobs", "list").stdout


def _wait_for(predicate, timeout=600, every=0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out waiting")


def _frames(workdir: Path) -> int:
    from screening.transport.framelog import FrameLog

    total = 0
    for d in workdir.glob("T*K/frames"):
        if FrameLog.exists(d):  # the directory is made a moment before its meta.json
            total += FrameLog(d).n_frames
    return total


def _cmdline(process) -> list[str]:
    import psutil

    try:
        return process.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return []


def test_worker_killed_mid_task_is_retried_from_its_checkpoint(job_dir, ray_session, settings):
    import psutil

    from workflows.db import Store
    from workflows.jobs.plan import plan_job
    from workflows.jobs.run import run_job
    from workflows.jobs.spec import load_job_spec

    transport = json.loads(json.dumps(JOB_TRANSPORT))
    transport["overrides"]["production_ps"] = 1.0
    plan = plan_job(load_job_spec(write_job(job_dir, candidates=[{"library": "Li2S"}], transport=transport, workers=1)), settings)
    store = Store.open(settings.db_url)
    task = store.tasks.list(plan.job_id)[0]
    workdir = settings.home / task.workdir
    result = {}
    runner = threading.Thread(target=lambda: result.update(summary=run_job(plan.job_id, settings, live=False)))
    runner.start()
    _wait_for(lambda: _frames(workdir) > 20)
    # this test's Ray runs under this process (the suite's other process may be running a Ray of its own)
    victims = [p for p in psutil.Process().children(recursive=True) if "ray::ModelWorker" in " ".join(_cmdline(p))]
    assert len(victims) == 1
    frames_at_kill = _frames(workdir)
    victims[0].send_signal(signal.SIGKILL)
    runner.join(900)
    summary = result["summary"]
    assert summary.done == 1 and summary.retried == 1
    task = store.tasks.get(task.id)
    assert task.state == "done" and task.attempts == 2
    assert len(store.results.for_job(plan.job_id)) == 1
    # resumed, not restarted: exactly the production frames, none duplicated
    assert _frames(workdir) == 100 + 1 and frames_at_kill < 101


def test_driver_killed_then_resumed_completes_without_duplicates(job_dir, ray_session, settings):
    from workflows.db import Store

    transport = json.loads(json.dumps(JOB_TRANSPORT))
    transport["overrides"]["production_ps"] = 1.0
    job = write_job(job_dir, transport=transport)
    driver = subprocess.Popen([sys.executable, "-m", "workflows.cli", "screen", str(job)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    store = Store.open(settings.db_url)
    job_id = _wait_for(lambda: (store.jobs.list() or [None])[0] and store.jobs.list()[0].id)
    _wait_for(lambda: any(_frames(settings.home / t.workdir) > 20 for t in store.tasks.list(job_id)))
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray processes it started
    driver.wait()
    assert store.jobs.get(job_id).status == "running"  # left behind by the dead driver
    resumed = _cli("jobs", "resume", job_id[:8])
    assert resumed.returncode == 0, resumed.stderr
    assert store.jobs.get(job_id).status == "done"
    rows = store.results.for_job(job_id)
    assert sorted(r["name"] for r in rows) == ["Li2S", "LiCl"]  # none lost, none twice
    for t in store.tasks.list(job_id):
        assert t.state == "done"
        assert _frames(settings.home / t.workdir) == 101


def test_bad_jobs_fail_before_any_ray_work(job_dir, settings):
    from workflows.db import Store
    from workflows.jobs.plan import plan_job
    from workflows.jobs.spec import load_job_spec

    def job(**kw):
        return write_job(job_dir, **kw)

    bad_key = job(name="bad-key", extra={"resourcez": {}})
    with pytest.raises(InputError, match=r"resourcez.*|.*resourcez"):
        plan_job(load_job_spec(bad_key), settings)
    missing = job(name="missing-file", candidates=[{"file": "nope.cif"}])
    with pytest.raises(InputError, match="nope.cif"):
        plan_job(load_job_spec(missing), settings)
    path = job_dir / "bad-model.yaml"
    data = yaml.safe_load(job().read_text())
    data["model"] = "models:/does-not-exist@production"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(InputError, match="does-not-exist"):
        plan_job(load_job_spec(path), settings)
    outside = job(name="outside", candidates=[{"library": "Li3N"}])
    with pytest.raises(InputError, match="N"):
        plan_job(load_job_spec(outside), settings)
    assert Store.open(settings.db_url).jobs.list() == []
    proc = _cli("screen", str(bad_key))
    assert proc.returncode == 2 and "resourcez" in proc.stderr and "bad-key.yaml:" in proc.stderr
    assert "Ray" not in proc.stderr  # refused before Ray was started


def test_cancel_stops_a_running_job(job_dir, ray_session, settings):
    from workflows.db import Store
    from workflows.jobs.plan import plan_job
    from workflows.jobs.run import run_job
    from workflows.jobs.spec import load_job_spec

    transport = json.loads(json.dumps(JOB_TRANSPORT))
    transport["overrides"]["production_ps"] = 20.0
    plan = plan_job(load_job_spec(write_job(job_dir, transport=transport, workers=1)), settings)
    store = Store.open(settings.db_url)
    result = {}
    runner = threading.Thread(target=lambda: result.update(summary=run_job(plan.job_id, settings, live=False)))
    runner.start()
    _wait_for(lambda: any(t.state == "running" for t in store.tasks.list(plan.job_id)))
    assert _cli("jobs", "cancel", plan.job_id[:8]).returncode == 0
    runner.join(300)
    assert not runner.is_alive()
    assert store.jobs.get(plan.job_id).status == "cancelled"
    assert {t.state for t in store.tasks.list(plan.job_id)} == {"cancelled"}
    assert result["summary"].cancelled == 2
