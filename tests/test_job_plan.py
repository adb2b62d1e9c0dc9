"""The typed job plan: stored in the database with the job, planned atomically, and its model pinned by SHA-256 so that
a registry alias moved between planning and running cannot put results under the wrong model."""

from __future__ import annotations

import pytest
import yaml

from mlip.errors import InputError, ModelMismatchError

TINY_TRANSPORT = {"overrides": {"temperatures_K": [600], "timestep_fs": 2.0, "equilibration_ps": 0.05,
                                "production_ps": 0.3, "sample_interval_fs": 10.0, "checkpoint_interval_ps": 0.1,
                                "supercell_min_length_A": 5.0, "relax": False}}


@pytest.fixture
def registered(settings, tmp_path):
    """``models:/plan-tiny@production`` → model A; returns (A's sha, a function that moves the alias to model B)."""
    from mlip.loader import trust
    from mlip.testing import build_mace, save_model
    from training.registry import promote, register_model

    a = save_model(build_mace([3, 15, 16, 17], seed=1), tmp_path / "a.model")
    b = save_model(build_mace([3, 15, 16, 17], seed=2), tmp_path / "b.model")
    trust(str(a), settings)
    trust(str(b), settings)
    version_a = register_model(a, "plan-tiny", settings, alias="production")

    def move_alias():
        version_b = register_model(b, "plan-tiny", settings)
        promote("plan-tiny", version_b.version, "production", settings)
        return version_b.sha256

    return version_a.sha256, move_alias


def _spec(tmp_path, model: str):
    from workflows.jobs.spec import load_job_spec

    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"name": "plan-test", "model": model, "candidates": [{"library": "Li2S"}],
                                    "transport": TINY_TRANSPORT, "resources": {"workers": 1, "threads_per_worker": 1}}))
    return load_job_spec(path)


def test_the_plan_lives_in_the_database_typed(tmp_path, settings, registered):
    from workflows.db import Store
    from workflows.jobs.plan import JobPlan, load_plan, plan_job, task_specs

    sha_a, _ = registered
    store = Store.open(settings.db_url)
    planned = plan_job(_spec(tmp_path, "models:/plan-tiny@production"), settings, store=store)
    job = store.jobs.get(planned.job_id)
    assert job.plan_json is not None and not (settings.home / "jobs" / job.id / "plan.json").exists()
    plan = load_plan(store, job.id, settings)
    assert isinstance(plan, JobPlan) and plan == planned.plan
    assert plan.model.ref == "models:/plan-tiny@production" and plan.model.sha256 == sha_a
    specs = task_specs(store, job.id, plan, store.tasks.list(job.id))
    (spec,) = specs.values()
    assert spec.candidate.name == "Li2S" and spec.transport == plan.transport and spec.neb is None
    assert spec.model == plan.model and spec.protocol_hash(spec.stage) == plan.transport.hash


def test_planning_is_atomic(tmp_path, settings):
    """A failure part-way through storing a job (here a malformed task key) leaves no job, candidate or task."""
    from screening.candidates import build_candidate
    from workflows.db import Store
    from workflows.db.jobs import PlannedTask

    store = Store.open(settings.db_url)
    li2s = build_candidate("Li2S")
    with pytest.raises(InputError, match="task_key"):
        store.jobs.create({"name": "half", "model": "bundled:lipscl-demo"}, plan={"x": 1}, candidates=[li2s],
                          tasks=[PlannedTask(0, "transport", "a" * 64), PlannedTask(0, "neb", "not-a-hash")])
    assert store.jobs.list() == [] and store.table_counts()["candidates"] == 0 and store.table_counts()["tasks"] == 0


def test_a_moved_alias_is_refused_with_both_hashes_and_stores_nothing(tmp_path, settings, registered):
    """Planned with A; the alias then points at B. Resuming fails every task with an error naming both SHA-256s
    (before any worker starts), and no result row exists, for either model."""
    from workflows.db import Store
    from workflows.jobs.plan import plan_job
    from workflows.jobs.run import run_job

    sha_a, move_alias = registered
    store = Store.open(settings.db_url)
    planned = plan_job(_spec(tmp_path, "models:/plan-tiny@production"), settings, store=store)
    sha_b = move_alias()
    assert sha_b != sha_a
    summary = run_job(planned.job_id, settings)
    tasks = store.tasks.list(planned.job_id)
    assert [t.state for t in tasks] == ["failed"] and summary.failed == 1 and summary.done == 0
    assert "ModelMismatchError" in tasks[0].error and sha_a in tasks[0].error and sha_b in tasks[0].error
    assert store.results.for_job(planned.job_id) == [] and store.table_counts()["results"] == 0
    assert store.jobs.get(planned.job_id).status == "failed"


def test_a_worker_refuses_a_task_planned_for_another_model(tmp_path, settings, registered):
    """The same check on the worker side, before any work (a worker may load the reference after it moved)."""
    from mlip.loader import load_model
    from workflows.db import Store
    from workflows.jobs.plan import load_plan, plan_job, task_specs, workdir_for
    from workflows.jobs.tasks import run_task

    sha_a, move_alias = registered
    store = Store.open(settings.db_url)
    planned = plan_job(_spec(tmp_path, "models:/plan-tiny@production"), settings, store=store)
    move_alias()
    (spec,) = task_specs(store, planned.job_id, load_plan(store, planned.job_id), store.tasks.list(planned.job_id)).values()
    moved = load_model("models:/plan-tiny@production", settings)
    with pytest.raises(ModelMismatchError, match=sha_a):
        run_task(spec, moved, home=settings.home, device="cpu")
    assert not workdir_for(settings.home, spec.task_key).exists()
