"""The plan of a screening job, typed: what runs, under which protocols, with which model pinned by its SHA-256.

``plan_job(spec)`` does everything that can fail on bad input *before* Ray starts — the model reference (resolved,
trust-checked, hashed), every candidate, element coverage — and stores the job with its plan, candidates and tasks
in one transaction (:meth:`workflows.db.jobs.JobRepository.create`): a failure part-way leaves nothing behind.
At run time :func:`task_specs` turns the stored rows back into :class:`TaskSpec`s, the typed payloads workers get:
the candidate, the stage's protocol or NEB settings, and the pinned model a worker must have loaded.

A job with an ``agreement_model`` pins a second model the same way and plans every stage of every candidate once
more with it. Its tasks and results are ordinary ones keyed by (candidate, stage, protocol, model): the task key
hashes the model's SHA-256, so it also says which of the plan's models a task runs (:func:`task_models`), and a
second-model result computed before (by any job) is reused like any other.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mlip.config import Settings
from mlip.errors import InputError, ModelMismatchError
from mlip.util import canonical_sha256
from screening.candidates import Candidate
from screening.ranking import RankingWeights
from screening.stages import Stage
from screening.transport.protocol import TransportProtocol
from workflows.jobs.spec import JobSpec, NebSpec, ResourcesSpec

_SHA256 = r"^[0-9a-f]{64}$"


class PinnedModel(BaseModel):
    """A model reference and the SHA-256 of the file it resolved to when the job was planned."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ref: str = Field(min_length=1)
    sha256: str = Field(pattern=_SHA256)

    def check(self, loaded_sha256: str) -> None:
        """Refuse a loaded model whose bytes are not the planned ones (e.g. a registry alias moved since)."""
        if loaded_sha256 != self.sha256:
            raise ModelMismatchError(
                f"{self.ref} now resolves to a model with SHA-256 {loaded_sha256}, but the job was planned with "
                f"SHA-256 {self.sha256}; results would be stored under the wrong model. Point the reference back at "
                f"the planned model, or submit the job again to screen with the new one")


def task_key(structure_hash: str, stage: Stage | str, protocol_hash: str, model_sha256: str) -> str:
    """Identity of a computation: the same (candidate, stage, protocol, model) is computed once.

    (Plain ``json.dumps`` of the list, as since the first stored results, so their keys still match.)"""
    return hashlib.sha256(json.dumps([structure_hash, str(stage), protocol_hash, model_sha256]).encode()).hexdigest()


class _StageSettings(BaseModel):
    """The transport protocol and/or NEB settings, with one hash per stage (part of every task key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    transport: TransportProtocol | None = None
    neb: NebSpec | None = None

    def protocol_data(self, stage: Stage | str) -> dict:
        """What decides a stage's numbers, as data (stored with each result)."""
        stage = Stage(stage)
        if stage is Stage.TRANSPORT and self.transport is not None:
            return self.transport.physics_dict()
        if stage is Stage.NEB and self.neb is not None:
            return self.neb.model_dump(mode="json")
        raise InputError(f"this job has no {stage} stage")

    def protocol_hash(self, stage: Stage | str) -> str:
        if Stage(stage) is Stage.TRANSPORT and self.transport is not None:
            return self.transport.hash
        return canonical_sha256(self.protocol_data(stage))


class JobPlan(_StageSettings):
    """Everything a job's run needs besides its stored candidates and tasks (``jobs.plan_json``)."""

    model: PinnedModel
    agreement_model: PinnedModel | None = Field(None, description="The second model every stage also runs with.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    ranking: RankingWeights = Field(default_factory=RankingWeights)
    candidate_failures: list[str] = Field(default_factory=list, description="Candidates of the job file not built.")

    @property
    def stages(self) -> list[Stage]:
        return [s for s, part in ((Stage.TRANSPORT, self.transport), (Stage.NEB, self.neb)) if part is not None]

    @property
    def models(self) -> list[PinnedModel]:
        """The primary model, then the agreement model if any."""
        return [self.model] + ([self.agreement_model] if self.agreement_model is not None else [])

    def units(self, stage: Stage | str) -> int:
        """Progress units of one task of ``stage`` (temperatures for transport)."""
        return len(self.transport.temperatures_K) if Stage(stage) is Stage.TRANSPORT and self.transport else 1


class TaskSpec(_StageSettings):
    """One task as a worker gets it: a candidate, one stage's settings and the pinned model."""

    task_id: int
    task_key: str = Field(pattern=_SHA256)
    stage: Stage
    candidate_id: int
    candidate: Candidate
    model: PinnedModel
    mlflow_run_id: str | None = None

    @model_validator(mode="after")
    def _one_stage(self):
        if (self.transport is None) == (self.neb is None) or (self.stage is Stage.TRANSPORT) != (self.transport is not None):
            raise ValueError(f"a {self.stage} task carries exactly its own stage's settings")
        return self

    @property
    def protocol(self) -> dict:
        return self.protocol_data(self.stage)


@dataclass
class PlannedJob:
    job_id: str
    plan: JobPlan
    n_candidates: int
    n_tasks: int
    failures: list[str] = field(default_factory=list)


def workdir_for(home: Path, key: str) -> Path:
    return home / "work" / key[:2] / key


def plan_job(spec: JobSpec, settings: Settings, *, store=None, submitted_by: str | None = None) -> PlannedJob:
    """Validate the job and store it with its plan, candidates and tasks (status pending), atomically. No Ray work.
    ``submitted_by`` is recorded with the job: the API token's name, or ``user@host`` from the command line."""
    from mlip.loader import load_model
    from workflows.db import Store
    from workflows.db.jobs import PlannedTask
    from workflows.jobs.spec import build_candidates

    store = store or Store.open(settings.db_url)
    loaded = load_model(spec.model, settings)  # resolves and checks trust now, not on a worker
    second = None
    if spec.agreement_model is not None:
        second = load_model(spec.agreement_model, settings)
        if second.sha256 == loaded.sha256:
            raise InputError(f"agreement_model {spec.agreement_model} is the same model as model {spec.model} "
                             f"(SHA-256 {loaded.sha256}); a model agrees with itself, so name a different one")
    built = build_candidates(spec, allowed_elements=set(loaded.elements),
                             agreement_elements=set(second.elements) if second is not None else None)
    failures = [f"{f.item} ({f.label}): {f.error_type}: {f.error}" for f in built.failures]
    if not built.candidates:
        raise InputError("no candidate of the job can be screened:\n  " + "\n  ".join(failures))
    plan = JobPlan(model=PinnedModel(ref=spec.model, sha256=loaded.sha256),
                   agreement_model=PinnedModel(ref=spec.agreement_model, sha256=second.sha256) if second else None,
                   transport=spec.transport_protocol(), neb=spec.neb, resources=spec.resources, ranking=spec.ranking,
                   candidate_failures=failures)
    tasks = []
    for model in plan.models:  # the primary model's tasks first: they run first
        for i, cand in enumerate(built.candidates):
            for stage in plan.stages:
                key = task_key(cand.structure_hash, stage, plan.protocol_hash(stage), model.sha256)
                tasks.append(PlannedTask(i, stage, key, str(workdir_for(Path("."), key))))
    error = "candidates that could not be built:\n" + "\n".join(failures) if failures else None
    job_id = store.jobs.create(spec, model_sha256=loaded.sha256, plan=plan.model_dump(mode="json"),
                               candidates=built.candidates, tasks=tasks, error=error, submitted_by=submitted_by)
    return PlannedJob(job_id, plan, len(built.candidates), len(tasks), failures)


def load_plan(store, job_id: str, settings: Settings | None = None, *, required: bool = True) -> JobPlan | None:
    """The job's stored plan; a job planned before plans lived in the database has its side file read once and
    stored (``$IONSCREEN_HOME/jobs/<id>/plan.json``). A job stored without a plan (``store.jobs.create`` alone):
    an InputError, or None when not ``required``."""
    job = store.jobs.get(job_id)
    if job.plan_json is not None:
        return JobPlan.model_validate(job.plan_json)
    legacy = (settings.home if settings else Path(".")) / "jobs" / job.id / "plan.json"
    if not legacy.is_file():
        if not required:
            return None
        raise InputError(f"job {job.id} has no stored plan (planned by an older ionscreen whose {legacy} is gone); "
                         "submit the job again")
    old = json.loads(legacy.read_text())
    stages = old.get("stages", {})
    plan = JobPlan(model=PinnedModel(ref=old["model_ref"], sha256=old["model_sha256"]),
                   transport=TransportProtocol.model_validate(stages["transport"]) if "transport" in stages else None,
                   neb=NebSpec.model_validate(stages["neb"]) if "neb" in stages else None,
                   resources=ResourcesSpec.model_validate(old.get("resources") or {}),
                   ranking=RankingWeights.model_validate(old.get("ranking") or {}),
                   candidate_failures=old.get("candidate_failures", []))
    store.jobs.save_plan(job.id, plan.model_dump(mode="json"))
    return plan


def task_models(store, job_id: str, plan: JobPlan, tasks) -> dict[int, PinnedModel]:
    """Which of the plan's models each of ``tasks`` runs, by task id. The task key hashes the model's SHA-256, so the
    key says it; a task whose key fits none of the plan's models is refused (InputError)."""
    if plan.agreement_model is None:
        return {t.id: plan.model for t in tasks}
    hashes = {c.id: c.structure_hash for c in store.candidates.for_job(job_id)}
    out = {}
    for t in tasks:
        stage = Stage(t.stage)
        model = next((m for m in plan.models
                      if task_key(hashes[t.candidate_id], stage, plan.protocol_hash(stage), m.sha256) == t.task_key), None)
        if model is None:
            raise InputError(f"task {t.id} of job {job_id} has a key that fits neither of its plan's models; the job's "
                             "tasks do not match its plan (submit the job again)")
        out[t.id] = model
    return out


def task_specs(store, job_id: str, plan: JobPlan, tasks, *, mlflow_run_id: str | None = None) -> dict[int, TaskSpec]:
    """The typed payloads of ``tasks`` (TaskRecords of the job), by task id, each with the model it runs."""
    records = {c.id: c for c in store.candidates.for_job(job_id)}
    models = task_models(store, job_id, plan, tasks)
    candidates: dict[int, Candidate] = {}
    out = {}
    for t in tasks:
        if t.candidate_id not in candidates:
            candidates[t.candidate_id] = Candidate.from_cif_text(records[t.candidate_id].cif)
        stage = Stage(t.stage)
        out[t.id] = TaskSpec(task_id=t.id, task_key=t.task_key, stage=stage, candidate_id=t.candidate_id,
                             candidate=candidates[t.candidate_id], model=models[t.id],
                             transport=plan.transport if stage is Stage.TRANSPORT else None,
                             neb=plan.neb if stage is Stage.NEB else None, mlflow_run_id=mlflow_run_id)
    return out
