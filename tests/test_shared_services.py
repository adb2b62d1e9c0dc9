"""Shared services for a team: the job store on PostgreSQL and a real ``mlflow server`` (PostgreSQL backend store,
artifacts served by the server) used by every host; two users submit jobs at once through the REST API with their
own tokens, each job records its submitter, and one user screens by alias the model the other registered. Also:
``ionscreen config`` shows the services with passwords masked, and the Ray address comes from the config."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from mlip.loader import trust
from mlip.trust import sha256_file
from protocols import short_protocol
from webserve import free_port, served

POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MODEL_NAME = "team-soft"
ALIAS = "team"


class MlflowServer:
    def __init__(self, process: subprocess.Popen, url: str, artifacts: Path, log: Path):
        self.process, self.url, self.artifacts, self.log = process, url, artifacts, log

    def ready(self, timeout_s: float = 120) -> str:
        """Wait until the server answers (it migrates its fresh database first); its tracking URI."""
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"mlflow server did not answer /health within {timeout_s} s"
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self.url
            except httpx.HTTPError:
                pass
            time.sleep(0.3)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """``mlflow server`` on a free port: a fresh PostgreSQL database as backend store, artifacts served from a
    directory (``--serve-artifacts``). Started here, waited for by ``ready()`` (a test prepares meanwhile)."""
    import sqlalchemy as sa

    root = tmp_path_factory.mktemp("mlflow-server")
    artifacts = root / "artifacts"
    admin_url = sa.make_url(POSTGRES_ADMIN_URL)
    name = f"ionscreen_mlflow_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    backend = admin_url.set(database=name).render_as_string(hide_password=False)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IONSCREEN_", "MLFLOW_"))}
    log = open(root / "server.log", "wb")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", backend,
         "--artifacts-destination", str(artifacts), "--serve-artifacts", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield MlflowServer(server, f"http://127.0.0.1:{port}", artifacts, root / "server.log")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # the launcher reaps its drivers: an ended one is gone
    except ProcessLookupError:
        return False
    return True


def _job(name: str, model: str, temperature_K: float) -> dict:
    protocol = short_protocol(equilibration_ps=0.02, production_ps=0.1, supercell_min_length_A=5.0, relax_max_steps=5,
                              temperatures_K=[temperature_K])
    return {"name": name, "model": model, "candidates": [{"library": "Li2S"}], "transport": {"overrides": protocol},
            "resources": {"workers": 1, "threads_per_worker": 1}}


def test_two_users_share_the_job_store_the_registry_and_the_tracking_server(
        mlflow_server, postgres_url, soft_model_file, isolated_home, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from mlip.config import load_settings
    from workflows.cli import app
    from workflows.db import Store
    from workflows.web import create_app
    from workflows.web.launcher import SubprocessLauncher, driver_log_path

    tracking_uri, artifacts = mlflow_server.url, mlflow_server.artifacts
    monkeypatch.setenv("IONSCREEN_DB_URL", postgres_url)
    monkeypatch.setenv("IONSCREEN_MLFLOW_TRACKING_URI", tracking_uri)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    runner = CliRunner()

    # Alice, on her own host (her own data directory), creates the team key and registers her model by alias.
    alice_home = tmp_path / "alice-home"
    model = tmp_path / "alice-soft.model"
    shutil.copyfile(soft_model_file, model)
    sha = sha256_file(model)
    def as_alice(*args: str) -> str:
        result = runner.invoke(app, list(args), env={"IONSCREEN_HOME": str(alice_home)})
        assert result.exit_code == 0, (args, result.output, result.exception)
        return result.output

    as_alice("models", "signing-key")
    as_alice("models", "trust", str(model))
    mlflow_server.ready()  # started with the module, it has been migrating its fresh database meanwhile
    registered = as_alice("models", "register", str(model), "--name", MODEL_NAME, "--alias", ALIAS)
    assert f"models:/{MODEL_NAME}@{ALIAS}" in registered
    assert not (alice_home / "mlartifacts").exists() and not (alice_home / "mlflow.db").exists()
    assert [p.name for p in artifacts.rglob("*.model")] == [model.name]  # the file went to the server

    # The web server's host holds a copy of the team key (mode 600), never trusted Alice's file itself.
    settings = load_settings()
    assert settings.mlflow_is_server and settings.mlflow_artifact_location == ""
    settings.ensure_home()
    shutil.copy2(alice_home / "registry-signing.key", settings.signing_key_path)
    assert not settings.trust_store_path.exists()

    store = Store.open(settings.db_url)
    tokens = {user: store.tokens.create(user)[1] for user in ("alice", "bob")}
    assert {store.tokens.verify(t).name for t in tokens.values()} == {"alice", "bob"}  # two tokens, two names
    jobs = {"alice": _job("alice-screen", f"models:/{MODEL_NAME}/1", 700.0),
            "bob": _job("bob-screen", f"models:/{MODEL_NAME}@{ALIAS}", 600.0)}
    app_ = create_app(settings, store=store, launcher=SubprocessLauncher(settings), refresh_interval_s=0)
    answers: dict[str, httpx.Response] = {}
    started = time.monotonic()
    with served(app_) as base:
        barrier = threading.Barrier(len(jobs))

        def submit(user: str) -> None:
            barrier.wait()
            answers[user] = httpx.post(f"{base}/api/jobs", json=jobs[user], timeout=120,
                                       headers={"Authorization": f"Bearer {tokens[user]}"})

        threads = [threading.Thread(target=submit, args=(user,)) for user in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for user, answer in answers.items():
            assert answer.status_code == 202, (user, answer.text)
        ids = {user: answer.json()["job_id"] for user, answer in answers.items()}

        status = {}
        drivers = [answer.json()["driver_pid"] for answer in answers.values()]
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # a driver ends its MLflow run after the job's status: wait for it to exit
            status = {user: httpx.get(f"{base}/api/jobs/{job_id}").json() for user, job_id in ids.items()}
            finished = all(s["status"] in ("done", "failed", "cancelled") for s in status.values())
            if finished and not any(map(_alive, drivers)):
                break
            time.sleep(1)
        logs = {user: driver_log_path(settings, job_id).read_text()[-3000:] for user, job_id in ids.items()}
        for user, s in status.items():
            assert s["status"] == "done" and s["counts"]["transport"].get("done") == 1, (user, s, logs[user])
            assert s["submitted_by"] == user
        assert {j["id"]: j["submitted_by"] for j in httpx.get(f"{base}/api/jobs").json()} == {
            ids["alice"]: "alice", ids["bob"]: "bob"}
        page = httpx.get(f"{base}/jobs/{ids['bob']}", headers={"accept": "text/html"}).text
        assert "submitted by" in page and "bob" in page
        results = httpx.get(f"{base}/api/jobs/{ids['bob']}/results").json()
    print(f"two jobs submitted together and finished in {time.monotonic() - started:.0f} s")

    # Bob screened Alice's model by its alias: his results carry her file's SHA-256.
    assert [r["name"] for r in results["ranked"] + results["not_ranked"]] == ["Li2S"]
    for user, job_id in ids.items():
        job = store.jobs.get(job_id)
        assert job.submitted_by == user and job.model_sha256 == sha
        rows = store.results.for_job(job_id)
        assert [r["model_sha256"] for r in rows] == [sha] and rows[0]["mlflow_run_id"] == job.mlflow_run_id
    assert store.results.for_job(ids["bob"])[0]["model_ref"] == f"models:/{MODEL_NAME}@{ALIAS}"

    # Each job's MLflow run and its artifacts are on the server (under its artifacts destination), none local.
    client = MlflowClient(tracking_uri=tracking_uri)
    for user, job_id in ids.items():
        run = client.get_run(store.jobs.get(job_id).mlflow_run_id)
        assert run.info.status == "FINISHED" and run.data.tags["ionscreen.job_id"] == job_id
        assert run.data.tags["ionscreen.model_sha256"] == sha
        assert run.data.tags["ionscreen.model_version"] == f"{MODEL_NAME}/1"
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
        assert {a.path for a in client.list_artifacts(run.info.run_id, "results")} >= {"results/ranked.csv"}
        assert len(list(artifacts.rglob(f"{run.info.run_id}/artifacts/results/ranked.csv"))) == 1
    assert len({store.jobs.get(i).mlflow_run_id for i in ids.values()}) == 2
    assert not any((settings.home / name).exists() for name in ("mlartifacts", "mlruns", "mlflow.db"))

    # The command line shows who submitted what.
    listed = runner.invoke(app, ["jobs", "list"])
    assert listed.exit_code == 0 and "alice" in listed.output and "bob" in listed.output
    shown = runner.invoke(app, ["jobs", "status", ids["bob"]])
    assert shown.exit_code == 0 and "submitted by bob" in shown.output
    store.close()


def test_config_shows_the_shared_services_with_passwords_masked(isolated_home, monkeypatch):
    import json

    from workflows.cli import app

    monkeypatch.setenv("IONSCREEN_DB_URL", "postgresql+psycopg://alice:pg-secret@db.team:5432/ionscreen")
    monkeypatch.setenv("IONSCREEN_MLFLOW_TRACKING_URI", "http://bob:mlflow-secret@mlflow.team:5000")
    isolated_home.mkdir(parents=True)
    (isolated_home / "config.toml").write_text('ray_address = "ray://head.team:10001"\n')
    for args in (["config"], ["config", "--json"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "pg-secret" not in result.output and "mlflow-secret" not in result.output
        assert "alice:***@db.team" in result.output and "bob:***@mlflow.team:5000" in result.output
        assert "ray://head.team:10001" in result.output
    shown = json.loads(result.output)
    assert shown["mlflow_artifact_location"] == "(the MLflow tracking server's)"  # never a path on this host
    monkeypatch.setenv("IONSCREEN_DB_URL", "postgresql+psycopg://carol@db.team/x?sslmode=require&password=q-secret")
    result = CliRunner().invoke(app, ["config", "--json"])
    assert "q-secret" not in result.output and "password=***" in result.output


def test_cli_jobs_record_user_at_host_and_take_the_ray_address_from_the_config(
        soft_model_file, tmp_path, settings, monkeypatch):
    """``screen`` and ``jobs resume`` pass --address, else RAY_ADDRESS, else ``ray_address`` to the run (Ray itself
    is not started here: the run is recorded)."""
    import yaml

    import workflows.jobs.run as run_module
    from workflows.cli import app
    from workflows.db import Store
    from workflows.jobs.execute import RunSummary

    model = tmp_path / "soft.model"
    shutil.copyfile(soft_model_file, model)
    trust(str(model), settings)
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(_job("cli-screen", str(model), 600.0)))
    addresses = []

    def fake_run_job(job_id, settings, *, address=None, **overrides):
        addresses.append(address)
        return RunSummary(job_id)

    monkeypatch.setattr(run_module, "run_job", fake_run_job)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("IONSCREEN_RAY_ADDRESS", "ray://head.team:10001")
    runner = CliRunner()
    result = runner.invoke(app, ["screen", str(job_file)])
    assert result.exit_code == 0, (result.output, result.exception)
    with Store.open(settings.db_url) as store:
        (job,) = store.jobs.list()
    assert job.submitted_by == f"{getpass.getuser()}@{socket.gethostname()}"
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    assert runner.invoke(app, ["jobs", "resume", job.id]).exit_code == 0
    assert runner.invoke(app, ["jobs", "resume", job.id, "--address", "10.0.0.5:6379"]).exit_code == 0
    assert addresses == ["ray://head.team:10001", "auto", "10.0.0.5:6379"]
    listed = runner.invoke(app, ["jobs", "list", "--json"])
    assert yaml.safe_load(listed.output)[0]["submitted_by"] == job.submitted_by
