"""A real multi-host Ray cluster on this machine: a head, a login host for the driver and worker hosts, each in its
own network namespace (tests/netcluster.py), with the job store on PostgreSQL and the GCS backed by the running Redis.

One job of 200 short tasks loses a worker node three times (its raylet SIGKILLed), its driver once and its head once;
every task must finish exactly once, MD must continue from its checkpoints, and ``jobs status`` must tell where each
task ran and why it ran again. A node that does not see the shared IONSCREEN_HOME stops a job at start-up with an
error naming the node.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from protocols import short_protocol

# one xdist worker runs the cluster tests one after the other: each starts daemons and several Ray nodes
pytestmark = [pytest.mark.cluster, pytest.mark.xdist_group("cluster")]

N_TASKS = 200
# very short MD (orchestration is under test here); checkpoints every 10 steps so a killed task has one to resume
PROTOCOL = short_protocol(equilibration_ps=0.01, production_ps=0.06, checkpoint_interval_ps=0.02,
                          supercell_min_length_A=5.0, relax_max_steps=5)
BIG_EVERY = 25  # every 25th candidate is a 64-atom cell whose MD lasts long enough to kill its node in the middle


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from netcluster import NetCluster, netns_available

    why = netns_available()
    if why:
        pytest.skip(f"no network namespaces here: {why}")
    work = tmp_path_factory.mktemp("cluster")
    with NetCluster(["head", "login", "w1", "w2", "w3"], work_dir=work) as c:
        c.redis = c.forward(6379)
        c.postgres = c.forward(5432)
        c.start_head("head", redis=c.redis)  # GCS fault tolerance: its state lives in the machine's Redis
        c.start_worker("login", cpus=0)  # the driver's host: on the cluster, runs no workers
        c.wait_for_nodes(2)
        yield c


def _cluster_env(cluster, home: Path, db_url: str) -> dict:
    """What every process on the cluster gets: the shared data directory and the job store through the network."""
    from sqlalchemy import make_url

    url = make_url(db_url)
    host, port = cluster.postgres.split(":")
    return {"IONSCREEN_HOME": str(home), "IONSCREEN_DB_URL": url.set(host=host, port=int(port)).render_as_string(False),
            "XDG_CACHE_HOME": os.environ["XDG_CACHE_HOME"], "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _write_job(directory: Path, model: Path, n: int, name: str, max_attempts: int = 3) -> Path:
    """``n`` distinct candidates: rock-salt LiCl cells strained differently (8 atoms; the lattice parameters step by
    more than the structure hash rounds), and every ``BIG_EVERY``-th a rattled 2x2x2 supercell (64 atoms)."""
    import numpy as np
    from ase.io import write
    from ase.spacegroup import crystal

    candidates = []
    for i in range(n):
        atoms = crystal(["Li", "Cl"], [(0, 0, 0), (0.5, 0.5, 0.5)], spacegroup=225, cellpar=[5.0] * 3 + [90] * 3)
        a, c = 5.0 + 0.05 * (i % 15), 5.0 + 0.05 * (i // 15)
        atoms.set_cell([a, a, c], scale_atoms=True)
        if i % BIG_EVERY == BIG_EVERY - 1:
            atoms = atoms.repeat(2)
            atoms.positions += np.random.default_rng(i).normal(0, 0.03, atoms.positions.shape)
        path = directory / f"LiCl-{i:04d}.cif"
        write(path, atoms)
        candidates.append({"file": path.name, "oxidation": {"Li": 1, "Cl": -1}})
    job = {"name": name, "model": str(model), "working_ion": "Li", "candidates": candidates,
           "transport": {"overrides": PROTOCOL},
           "resources": {"workers": 2, "threads_per_worker": 1, "max_in_flight": 4, "max_attempts": max_attempts}}
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "workflows.cli", *args]


@pytest.fixture
def model(tmp_path, soft_model_file, settings):
    from mlip.loader import trust

    path = tmp_path / "soft.model"
    path.write_bytes(soft_model_file.read_bytes())
    trust(str(path), settings)
    return path


def test_a_node_without_the_shared_home_stops_the_job_at_start_up(cluster, tmp_path, model, settings, postgres_url):
    from workflows.db import Store

    elsewhere = tmp_path / "not-shared"
    elsewhere.mkdir()
    w3 = cluster.hosts["w3"]
    w3.private = {str(settings.home): str(elsewhere)}  # w3 sees an empty directory where the others see the home
    cluster.start_worker("w3", cpus=1)
    try:
        cluster.wait_for_nodes(3)
        job = _write_job(tmp_path, model, 1, "no-shared-home")
        done = cluster.run("login", _cli("screen", str(job), "--address", cluster.address),
                           env=_cluster_env(cluster, settings.home, postgres_url), timeout=300)
    finally:
        cluster.stop_host("w3")
        w3.private = {}
    assert done.returncode == 2, done.stderr[-2000:]
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith("error: ") and w3.ip in message and str(settings.home) in message
    assert "shared file system" in message and "Traceback" not in done.stderr
    store = Store.open(postgres_url)
    (record,) = store.jobs.list()
    assert record.status == "failed" and "does not see the driver's data directory" in record.error
    assert all(t.state == "pending" for t in store.tasks.list(record.id))  # nothing ran: resumable once fixed


def _checkpoint_step(workdir: Path) -> int:
    """The MD step of the task's newest checkpoint (-1: none yet)."""
    import numpy as np

    steps = [-1]
    for path in workdir.glob("T*/checkpoint.npz"):
        try:
            with np.load(path) as data:
                steps.append(json.loads(str(data["state"]))["step"])
        except (OSError, ValueError, KeyError):
            continue
    return max(steps)


def _wait(predicate, timeout: float, what: str, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the driver exited ({proc.returncode}) while waiting for {what}")
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_job_survives_lost_nodes_driver_and_head(cluster, tmp_path, model, settings, postgres_url):
    from netcluster import kill_tree
    from workflows.db import Store
    from workflows.jobs.plan import workdir_for

    store = Store.open(postgres_url)
    env = _cluster_env(cluster, settings.home, postgres_url)
    job_file = _write_job(tmp_path, model, N_TASKS, "cluster-failures", max_attempts=6)
    cluster.start_worker("w1", cpus=1)
    cluster.start_worker("w2", cpus=1)
    cluster.wait_for_nodes(4)
    ips = {cluster.hosts[h].ip: h for h in ("w1", "w2")}

    log = open(tmp_path / "driver-1.log", "w")
    driver = cluster.popen("login", _cli("screen", str(job_file), "--address", cluster.address), env=env,
                           stdout=log, stderr=subprocess.STDOUT)
    job_id = _wait(lambda: (store.jobs.list() or [None])[0], 300, "the job to be planned", driver).id

    def done() -> int:
        return sum(c.get("done", 0) for c in store.tasks.counts(job_id).values())

    assert len(store.tasks.list(job_id)) == N_TASKS  # all distinct
    big = {c.id for c in store.candidates.for_job(job_id) if c.n_atoms == 64}
    assert len(big) == N_TASKS // BIG_EVERY

    def kill_node_mid_md() -> str:
        """SIGKILL the raylet of the host where a 64-atom task is in MD with a checkpoint written, then bring the
        host back (a new Ray node at the same address). Returns the host."""
        def in_md():
            for t in store.tasks.list(job_id, state="running"):
                if t.candidate_id in big and t.node and _checkpoint_step(workdir_for(settings.home, t.task_key)) >= 10:
                    return ips[t.node.split()[0]]
            return None
        host = _wait(in_md, 300, "a 64-atom task in MD", driver)
        cluster.kill_raylet(host)
        cluster.start_worker(host, cpus=1)
        return host

    killed = []
    for after in (30, 60, 90):
        _wait(lambda: done() >= after - 20, 300, f"{after - 20} tasks done", driver)
        killed.append(kill_node_mid_md())
        _wait(lambda: done() >= after, 300, f"{after} tasks done", driver)
    kill_tree(driver)  # the driver dies: its workers go with it
    log.close()
    assert store.jobs.get(job_id).status == "running"

    log = open(tmp_path / "driver-2.log", "w")
    resumed = cluster.popen("login", _cli("jobs", "resume", job_id, "--address", cluster.address), env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    before = done()
    _wait(lambda: done() >= before + 15, 300, "the resumed driver to make progress", resumed)
    cluster.stop_host("head")  # the head dies; with GCS fault tolerance a new one takes over its state from Redis
    cluster.start_head("head", redis=cluster.redis, namespace=cluster.redis_namespace)
    assert resumed.wait(timeout=600) == 0, (tmp_path / "driver-2.log").read_text()[-3000:]
    log.close()

    # every task finished exactly once: one result per task, no task failed, nothing lost
    job = store.jobs.get(job_id)
    tasks = store.tasks.list(job_id)
    assert job.status == "done" and len(tasks) == N_TASKS
    assert {t.state for t in tasks} == {"done"}
    rows = store.results.for_job(job_id)
    assert len(rows) == N_TASKS and len({r["task_key"] for r in rows}) == N_TASKS
    assert {r["task_key"] for r in rows} == {t.task_key for t in tasks}
    import sqlalchemy as sa

    engine = sa.create_engine(postgres_url)
    with engine.connect() as conn:
        dupes = conn.exec_driver_sql("SELECT task_key FROM results GROUP BY task_key HAVING count(*) > 1").all()
    engine.dispose()
    assert dupes == []
    # the story: nodes lost under running tasks, the driver lost, attempts on both worker hosts
    outcomes = [a["outcome"] for t in tasks for a in t.attempts_json or []]
    assert outcomes.count("requeued") >= 3 and outcomes.count("driver lost") >= 1
    nodes = {a["node"].split()[0] for t in tasks for a in t.attempts_json or []}
    assert set(ips) <= nodes, nodes
    retried = [t for t in tasks if t.attempts > 1]
    assert retried and all(len(t.attempts_json) == t.attempts for t in tasks)
    # MD continued from the checkpoints of killed tasks instead of starting again
    resumed_md = []
    for t in retried:
        document = json.loads((workdir_for(settings.home, t.task_key) / "result.json").read_text())
        resumed_md += [x["md_resumed_from_step"] for x in document["temperatures"] if x.get("md_resumed_from_step")]
    assert resumed_md, "no retried task continued its MD from a checkpoint"
    print(f"\nfailure test: {len(tasks)} tasks done, {len(rows)} results, {len(dupes)} duplicated; "
          f"attempts {sum(t.attempts for t in tasks)} ({len(retried)} tasks retried); outcomes "
          f"{ {o: outcomes.count(o) for o in sorted(set(outcomes))} }; raylets killed on {killed}; "
          f"MD resumed from steps {sorted(resumed_md)}")
    # progress per host while it ran, and the status command's account afterwards
    progress = (tmp_path / "driver-1.log").read_text()
    nodes_lines = [line for line in progress.splitlines() if line.startswith("[progress] nodes")]
    assert nodes_lines and all(ip in nodes_lines[-1] for ip in ips), progress[-2000:]
    status = subprocess.run(_cli("jobs", "status", job_id), env={**os.environ, **env, "IONSCREEN_DB_URL": postgres_url},
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    assert re.search(r"attempts [2-6]", status.stdout) and "requeued" in status.stdout and "driver lost" in status.stdout
    assert all(ip in status.stdout for ip in ips)
