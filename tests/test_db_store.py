"""The Store repository API on real SQLite and real PostgreSQL: jobs, candidates, the task state machine,
idempotent results, joins, counts, and bad input that is refused without changing the database."""

from __future__ import annotations

import hashlib
import itertools
import json

import pytest
import sqlalchemy as sa

from mlip.errors import InputError
from workflows.db import (
    TASK_TRANSITIONS,
    InvalidTransition,
    JobStatus,
    NotFoundError,
    Store,
    TaskState,
)
from workflows.db.models import Base


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def candidate(i: int, **over) -> dict:
    return {
        "structure_hash": sha(f"structure-{i}"),
        "name": f"cand-{i}",
        "formula": "Li6PS5Cl",
        "working_ion": "Li",
        "working_ion_charge": 1,
        "kind": "electrolyte",
        "n_atoms": 52,
        "metadata_json": {"i": i},
    } | over


def result_row(key: str, cand_id: int, cand_i: int, **over) -> dict:
    return {
        "task_key": key,
        "candidate_id": cand_id,
        "stage": "transport",
        "structure_hash": sha(f"structure-{cand_i}"),
        "protocol_json": {"preset": "quick"},
        "protocol_hash": sha("quick"),
        "model_ref": "bundled:lipscl-demo",
        "model_sha256": sha("model"),
        "code_version": "0.1.0+test",
        "seed": 7,
        "document_path": f"jobs/x/{key[:8]}/result.json",
        "flags": ["few_hops"],
        "conductivity_300K_mS_cm": 1.5,
        "conductivity_300K_ci95_lo_mS_cm": 0.5,
        "conductivity_300K_ci95_hi_mS_cm": 4.0,
        "activation_energy_eV": 0.3,
        "activation_energy_ci95_lo_eV": 0.25,
        "activation_energy_ci95_hi_eV": 0.35,
    } | over


SPEC = {"name": "demo", "model": "bundled:lipscl-demo", "candidates": [{"library": "Li6PS5Cl"}], "transport": {}}


@pytest.fixture
def store(db_url):
    with Store.open(db_url) as s:
        yield s


def snapshot(store: Store) -> dict[str, list[tuple]]:
    """Every row of every table, for 'nothing changed' checks."""
    engine = sa.create_engine(store.db_url)
    try:
        with engine.connect() as conn:
            return {
                table.name: sorted(map(tuple, conn.execute(sa.select(table))), key=repr)
                for table in Base.metadata.sorted_tables
            }
    finally:
        engine.dispose()


def new_task(store: Store, job_id: str, cand_id: int, n: int, stage: str = "transport") -> int:
    return store.tasks.add(job_id, cand_id, stage, sha(f"task-{job_id}-{n}"), workdir=f"w/{n}")


# --------------------------------------------------------------------------------------------------- jobs
def test_job_lifecycle(store):
    job_id = store.jobs.create(SPEC, model_sha256=sha("model"))
    job = store.jobs.get(job_id)
    assert (job.name, job.model_ref, job.status, job.spec_json) == ("demo", SPEC["model"], JobStatus.pending, SPEC)
    assert len(job.id) == 32 and job.created_utc.tzinfo is not None
    assert store.jobs.get(job_id[:8]).id == job_id  # unique prefix, as the CLI accepts

    running = store.jobs.set_status(job_id, "running", driver_pid=1234, driver_host="node1", mlflow_run_id="abc")
    assert running.status is JobStatus.running and running.updated_utc >= job.updated_utc
    assert (running.driver_pid, running.driver_host, running.mlflow_run_id) == (1234, "node1", "abc")
    # the resumed driver sets running again: allowed, only the driver fields change
    assert store.jobs.set_status(job_id, "running", driver_pid=99).driver_pid == 99
    failed = store.jobs.set_status(job_id, JobStatus.failed, error="worker pool lost")
    assert failed.error == "worker pool lost" and failed.mlflow_run_id == "abc"
    assert store.jobs.set_status(job_id, "running").error is None  # resume clears the error
    store.jobs.set_status(job_id, "done")
    with pytest.raises(InvalidTransition, match="done; it cannot become pending"):
        store.jobs.set_status(job_id, "pending")

    other = store.jobs.create(SPEC | {"name": "second"})
    assert [j.id for j in store.jobs.list()] == [other, job_id]  # newest first
    assert [j.id for j in store.jobs.list(status="done")] == [job_id]
    assert [j.id for j in store.jobs.list(limit=1)] == [other]
    assert store.jobs.get(other).spec_hash != store.jobs.get(job_id).spec_hash


def test_cancel_job_cancels_pending_tasks_only(store):
    job_id = store.jobs.create(SPEC)
    cid = store.candidates.upsert(candidate(1))
    tasks = [new_task(store, job_id, cid, n) for n in range(3)]
    store.jobs.set_status(job_id, "running")
    store.tasks.claim(tasks[0], "w0")
    assert store.jobs.cancel(job_id) == 2
    assert store.jobs.get(job_id).status is JobStatus.cancelled
    assert [t.state for t in store.tasks.list(job_id)] == [TaskState.running, TaskState.cancelled, TaskState.cancelled]


# --------------------------------------------------------------------------------------------------- candidates
def test_candidate_upsert_by_hash(store):
    first = store.candidates.upsert(candidate(1))
    again = store.candidates.upsert(candidate(1, name="renamed"))  # same structure hash → same row, kept as stored
    other = store.candidates.upsert(candidate(2))
    assert first == again != other
    assert store.candidates.get(first).name == "cand-1"
    assert store.candidates.get(sha("structure-1")).id == first
    job_id = store.jobs.create(SPEC)
    for cid in (other, first, first):
        store.candidates.link(job_id, cid)
    assert [c.id for c in store.candidates.for_job(job_id)] == sorted({first, other})


def test_a_duplicate_structure_keeps_every_name_it_was_given(store):
    """A later job that names a stored structure differently: the stored name stays, the new one is recorded."""
    first = store.candidates.upsert(candidate(1))
    for name in ("renamed", "cand-1", "renamed", "third name"):
        assert store.candidates.upsert(candidate(1, name=name)) == first
    stored = store.candidates.get(first)
    assert stored.name == "cand-1"
    assert stored.metadata_json["other_names"] == ["renamed", "third name"]


def test_real_candidate_round_trips_through_the_cif_column(store, tmp_path):
    from screening.candidates import build_candidate
    from screening.candidates.candidate import Candidate

    cand = build_candidate("Li2S")
    cid = store.candidates.upsert(cand)
    stored = store.candidates.get(cid)
    assert (stored.structure_hash, stored.n_atoms, stored.kind) == (cand.structure_hash, cand.n_atoms, "electrolyte")
    assert stored.metadata_json["structure_hash"] == cand.structure_hash
    path = tmp_path / "back.cif"
    path.write_text(stored.cif)
    assert Candidate.from_cif(path).structure_hash == cand.structure_hash


# --------------------------------------------------------------------------------------------------- tasks
def _task_in(store: Store, job_id: str, cid: int, n: int, state: TaskState) -> int:
    """A task driven to ``state`` through allowed transitions only."""
    tid = new_task(store, job_id, cid, n)
    if state is TaskState.pending:
        return tid
    if state is TaskState.cancelled:
        store.tasks.finish(tid, "cancelled")
        return tid
    store.tasks.claim(tid, "w")
    if state is not TaskState.running:
        store.tasks.finish(tid, state, error="boom" if state is TaskState.failed else None)
    return tid


def test_task_state_machine_every_pair(store):
    job_id = store.jobs.create(SPEC)
    cid = store.candidates.upsert(candidate(1))
    counter = itertools.count()
    for source, target in itertools.product(TaskState, TaskState):
        tid = _task_in(store, job_id, cid, next(counter), source)
        before = store.tasks.get(tid)
        assert before.state is source
        move = (lambda: store.tasks.claim(tid, "w2")) if target is TaskState.running else (
            lambda: store.tasks.finish(tid, target)
        )
        if target in TASK_TRANSITIONS[source]:
            assert move().state is target
        else:
            with pytest.raises(InvalidTransition):
                move()
            assert store.tasks.get(tid) == before, f"{source}->{target} refused but changed the task"


def test_claim_finish_retry_and_attempts(store):
    job_id = store.jobs.create(SPEC)
    cid = store.candidates.upsert(candidate(1))
    tid = new_task(store, job_id, cid, 0)
    assert new_task(store, job_id, cid, 0) == tid  # tasks.add is idempotent per (job, task_key)

    claimed = store.tasks.claim(tid, "worker-a")
    assert (claimed.state, claimed.attempts, claimed.worker) == (TaskState.running, 1, "worker-a")
    assert claimed.started_utc is not None and claimed.finished_utc is None
    with pytest.raises(InvalidTransition, match="task .* is running"):
        store.tasks.claim(tid, "worker-b")  # lost race: the second claimant is told

    store.tasks.set_progress(tid, {"temperature_K": 800, "step": 120})
    assert store.tasks.get(tid).progress_json == {"temperature_K": 800, "step": 120}
    retried = store.tasks.requeue(tid, error="worker died (SIGKILL)")
    assert (retried.state, retried.worker, retried.error) == (TaskState.pending, None, "worker died (SIGKILL)")
    again = store.tasks.claim(tid, "worker-b")
    assert (again.attempts, again.worker) == (2, "worker-b")
    done = store.tasks.finish(tid, "done")
    assert done.state is TaskState.done and done.finished_utc is not None and done.error is None
    with pytest.raises(InvalidTransition, match="final state"):
        store.tasks.finish(tid, "failed", error="late")
    with pytest.raises(InvalidTransition, match="only a running task"):
        store.tasks.set_progress(tid, {"step": 1})


def test_requeue_running_for_resume(store):
    job_a, job_b = store.jobs.create(SPEC), store.jobs.create(SPEC)
    cid = store.candidates.upsert(candidate(1))
    a = [_task_in(store, job_a, cid, n, s) for n, s in enumerate(
        [TaskState.running, TaskState.running, TaskState.done, TaskState.pending, TaskState.failed]
    )]
    b_running = _task_in(store, job_b, cid, 0, TaskState.running)
    assert store.tasks.requeue_running(job_a) == 2
    assert [t.state for t in store.tasks.list(job_a)] == [
        TaskState.pending, TaskState.pending, TaskState.done, TaskState.pending, TaskState.failed
    ]
    assert store.tasks.get(a[0]).attempts == 1  # the attempt that died still counts
    assert store.tasks.get(b_running).state is TaskState.running  # other jobs untouched
    assert store.tasks.requeue_running(job_a) == 0
    assert [t.id for t in store.tasks.list(job_a, state="pending")] == [a[0], a[1], a[3]]


def test_counts_per_stage_and_state(store):
    job_id = store.jobs.create(SPEC)
    cid = store.candidates.upsert(candidate(1))
    zero = {s.value: 0 for s in TaskState}
    assert store.tasks.counts(job_id) == {}
    plan = [("transport", TaskState.done)] * 3 + [("transport", TaskState.running), ("transport", TaskState.pending)]
    plan += [("neb", TaskState.failed), ("neb", TaskState.pending), ("neb", TaskState.pending)]
    for n, (stage, state) in enumerate(plan):
        tid = store.tasks.add(job_id, cid, stage, sha(f"count-{n}"))
        if state is not TaskState.pending:
            store.tasks.claim(tid, "w")
            if state is not TaskState.running:
                store.tasks.finish(tid, state)
    assert store.tasks.counts(job_id) == {
        "transport": zero | {"done": 3, "running": 1, "pending": 1},
        "neb": zero | {"failed": 1, "pending": 2},
    }
    assert len(store.tasks.list(job_id, stage="neb")) == 3


# --------------------------------------------------------------------------------------------------- results
def test_record_result_idempotent_and_joined_with_candidates(store):
    job_id = store.jobs.create(SPEC)
    c1, c2 = store.candidates.upsert(candidate(1)), store.candidates.upsert(candidate(2, name="second", working_ion="Na"))
    k1, k2, k_other = sha("k1"), sha("k2"), sha("k-other-job")
    t1 = store.tasks.add(job_id, c1, "transport", k1)
    store.tasks.add(job_id, c2, "neb", k2)
    assert store.results.record(result_row(k1, c1, 1)) is True
    assert store.results.record(result_row(k1, c1, 1, conductivity_300K_mS_cm=2.0)) is False  # never a duplicate
    neb = result_row(
        k2, c2, 2, stage="neb", flags=[], conductivity_300K_mS_cm=None, conductivity_300K_ci95_lo_mS_cm=None,
        conductivity_300K_ci95_hi_mS_cm=None, activation_energy_eV=None, activation_energy_ci95_lo_eV=None,
        activation_energy_ci95_hi_eV=None, migration_barrier_eV=0.41, percolation_3d_eV=0.55,
        n_hops_converged=2, n_hops_total=3,
    )
    assert store.results.record(neb) is True
    # a result of another job's task; the protocol may come as JSON text
    assert store.results.record(result_row(k_other, c1, 1, protocol_json=json.dumps({"preset": "standard"}))) is True
    assert store.results.for_key(k_other)["protocol_json"] == {"preset": "standard"}

    stored = store.results.for_key(k1)
    assert stored["conductivity_300K_mS_cm"] == 1.5 and stored["flags"] == ["few_hops"]  # the first write won
    assert stored["protocol_json"] == {"preset": "quick"} and stored["created_utc"].tzinfo is not None
    assert store.results.for_key(sha("missing")) is None

    rows = store.results.for_job(job_id)
    assert [r["task_key"] for r in rows] == [k1, k2]  # only this job's tasks, in task order
    assert (rows[0]["name"], rows[0]["working_ion"], rows[0]["stage"]) == ("cand-1", "Li", "transport")
    assert (rows[1]["name"], rows[1]["working_ion"], rows[1]["kind"]) == ("second", "Na", "electrolyte")
    assert rows[1]["migration_barrier_eV"] == 0.41 and rows[1]["percolation_2d_eV"] is None
    assert rows[1]["activation_energy_eV"] is None and rows[1]["flags"] == []

    # a second job with the same task key reuses the stored result instead of recomputing
    job2 = store.jobs.create(SPEC)
    t2 = store.tasks.add(job2, c1, "transport", k1)
    assert t2 != t1
    reused = store.tasks.reuse_result(t2)
    assert reused.state is TaskState.done and reused.reused_result and reused.attempts == 0
    assert [r["id"] for r in store.results.for_job(job2)] == [rows[0]["id"]]
    t3 = store.tasks.add(job2, c2, "transport", sha("never computed"))
    with pytest.raises(InvalidTransition, match="no stored result"):
        store.tasks.reuse_result(t3)


# --------------------------------------------------------------------------------------------------- bad input
def test_bad_input_is_refused_and_changes_nothing(store):
    job_id = store.jobs.create(SPEC, job_id="ab" * 16)
    cid = store.candidates.upsert(candidate(1))
    tid = new_task(store, job_id, cid, 0)
    store.results.record(result_row(sha("ok"), cid, 1))
    before = snapshot(store)

    bad = [
        (lambda: store.jobs.create(SPEC, job_id="ab" * 16), "already exists"),
        (lambda: store.jobs.create(SPEC, job_id="not-a-uuid"), "32 lower-case hex"),
        (lambda: store.jobs.create({"model": "x"}), "'name'"),
        (lambda: store.jobs.create(SPEC, model_sha256="abc"), "model_sha256"),
        (lambda: store.jobs.set_status(job_id, "paused"), "unknown job status 'paused'; known: pending"),
        (lambda: store.jobs.set_status("f" * 32, "running"), "no job"),
        (lambda: store.tasks.list(job_id, state="sleeping"), "unknown task state 'sleeping'"),
        (lambda: store.tasks.finish(tid, "exploded"), "unknown task state"),
        (lambda: store.tasks.finish(tid, "running"), "use tasks.claim"),
        (lambda: store.tasks.finish(9999, "done"), "no task 9999"),
        (lambda: store.tasks.add(job_id, cid, "md", sha("t")), "unknown stage 'md'"),
        (lambda: store.tasks.add(job_id, cid, "transport", "xyz"), "task_key"),
        (lambda: store.tasks.add(job_id, 9999, "transport", sha("t")), "no candidate 9999"),
        (lambda: store.tasks.add(job_id, cid, "neb", sha(f"task-{job_id}-0")), "already has task_key"),
        (lambda: store.candidates.link(job_id, 9999), "no candidate"),
        (lambda: store.candidates.upsert(candidate(3, n_atoms=0)), "n_atoms"),
        (lambda: store.candidates.upsert(candidate(3, colour="red")), "colour: unknown field"),
        (lambda: store.candidates.upsert({"name": "x"}), "structure_hash"),
        (lambda: store.results.record(result_row(sha("r"), cid, 1, sigma=1.0)), "sigma: unknown field"),
        (lambda: store.results.record(result_row(sha("r"), cid, 1, stage="dft")), "stage"),
        (lambda: store.results.record(result_row(sha("r"), cid, 1, activation_energy_eV=float("nan"))), "None"),
        (
            lambda: store.results.record(result_row(sha("r"), cid, 1, conductivity_300K_ci95_lo_mS_cm=9.0)),
            "conductivity_300K_ci95_lo_mS_cm .* is above",
        ),
        (lambda: store.results.record(result_row(sha("r"), cid, 1, document_path="/abs/r.json")), "relative"),
        (lambda: store.results.record(result_row(sha("r"), cid, 1, model_sha256="x")), "model_sha256"),
        (lambda: store.results.record(result_row(sha("r"), 9999, 1)), "no candidate 9999"),
        (lambda: store.results.record(result_row(sha("r"), cid, 2)), "is not that of candidate"),
        (lambda: store.results.record(result_row(sha("r"), cid, 1, n_hops_converged=3, n_hops_total=2)), "exceeds"),
        (lambda: store.results.record(result_row(sha("r"), cid, 1, protocol_json="{oops")), "protocol_json"),
        (lambda: store.tasks.set_progress(tid, {"x": float("inf")}), "plain JSON"),
        (lambda: store.tasks.requeue(tid), "pending; it cannot become pending"),
    ]
    for call, message in bad:
        with pytest.raises(InputError, match=message):
            call()
    assert snapshot(store) == before
    assert issubclass(NotFoundError, InputError) and issubclass(InvalidTransition, InputError)
