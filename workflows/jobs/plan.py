"""The plan of a screening job, typed: what runs, under which protocols, with which model pinned by its SHA-256.

``plan_job(spec)`` does everything that can fail on bad input *before* Ray starts — the model reference (resolved,
trust-checked, hashed), every candidate, element coverage — and stores the job with its plan, candidates and tasks
in one transaction (:meth:`workflows.db.jobs.JobRepository.create`): a failure part-way leaves nothing behind.
Candidates are built one at a time into a temporary file and stored from it in chunks, so planning 10,000 of them
holds one candidate and one chunk of rows, not 10,000 structures. At run time :func:`task_specs` turns the stored
rows back into :class:`TaskSpec`s, the typed payloads workers get (each built when it is submitted): the candidate,
the stage's protocol or NEB settings, and the pinned model a worker must have loaded.

A job with an ``agreement_model`` pins a second model the same way and plans every stage of every candidate once
more with it. Its tasks and results are ordinary ones keyed by (candidate, stage, protocol, model): the task key
hashes the model's SHA-256, so it also says which of the plan's models a task runs (:func:`task_models`), and a
second-model result computed before (by any job) is reused like any other.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import tempfile
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
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


class _SpooledCandidates:
    """A job's candidates, built one at a time and kept as stored rows (``CandidateRow``) in a temporary file:
    planning memory does not grow with their number, and the store reads them back a chunk at a time.

    Building first and storing afterwards (rather than inside the transaction) keeps SQLite's write lock for the
    inserts alone: building 10,000 candidates takes minutes, while other writers wait only ``busy_timeout``. A
    transaction retried after a lock conflict reads the file again. (Pickled, not JSON: the rows come back exactly.)
    """

    def __init__(self, built: Iterable):
        from workflows.db.candidates import candidate_row
        from workflows.jobs.spec import CandidateFailure

        self.hashes: list[str] = []  # structure hash of each candidate, in order (the task keys need them)
        self.failures: list[str] = []  # "candidates[i] (label): Error: message" of each one not built
        self._file = tempfile.TemporaryFile()
        try:
            for item in built:
                if isinstance(item, CandidateFailure):
                    self.failures.append(f"{item.item} ({item.label}): {item.error_type}: {item.error}")
                    continue
                row = candidate_row(item)
                pickle.dump(row, self._file, protocol=pickle.HIGHEST_PROTOCOL)
                self.hashes.append(row.structure_hash)
        except BaseException:
            self._file.close()
            raise

    def __len__(self) -> int:
        return len(self.hashes)

    def __iter__(self) -> Iterator:
        self._file.seek(0)
        for _ in self.hashes:
            yield pickle.load(self._file)  # our own file, written above

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self._file.close()


class _PlannedTasks:
    """The tasks of a plan's candidates in run order (the primary model's first), made as the store reads them."""

    def __init__(self, plan: JobPlan, hashes: list[str]):
        self.plan, self.hashes = plan, hashes

    def __len__(self) -> int:
        return len(self.plan.models) * len(self.hashes) * len(self.plan.stages)

    def __iter__(self) -> Iterator:
        from workflows.db.jobs import PlannedTask

        protocols = {stage: self.plan.protocol_hash(stage) for stage in self.plan.stages}
        for model in self.plan.models:
            for i, structure_hash in enumerate(self.hashes):
                for stage in self.plan.stages:
                    key = task_key(structure_hash, stage, protocols[stage], model.sha256)
                    yield PlannedTask(i, stage, key, str(workdir_for(Path("."), key)))


def plan_job(spec: JobSpec, settings: Settings, *, store=None, submitted_by: str | None = None) -> PlannedJob:
    """Validate the job and store it with its plan, candidates and tasks (status pending), atomically. No Ray work.
    ``submitted_by`` is recorded with the job: the API token's name, or ``user@host`` from the command line.
    Candidates are built and stored one chunk at a time (:class:`_SpooledCandidates`); a candidate that cannot be
    built is reported (``PlannedJob.failures``, the plan's ``candidate_failures``) and the others are planned."""
    from mlip.loader import load_model
    from workflows.db import Store
    from workflows.jobs.spec import iter_candidates

    store = store or Store.open(settings.db_url)
    loaded = load_model(spec.model, settings)  # resolves and checks trust now, not on a worker
    second = None
    if spec.agreement_model is not None:
        second = load_model(spec.agreement_model, settings)
        if second.sha256 == loaded.sha256:
            raise InputError(f"agreement_model {spec.agreement_model} is the same model as model {spec.model} "
                             f"(SHA-256 {loaded.sha256}); a model agrees with itself, so name a different one")
    built = iter_candidates(spec, allowed_elements=set(loaded.elements),
                            agreement_elements=set(second.elements) if second is not None else None)
    with _SpooledCandidates(built) as candidates:
        failures = candidates.failures
        if not len(candidates):
            raise InputError("no candidate of the job can be screened:\n  " + "\n  ".join(failures))
        plan = JobPlan(model=PinnedModel(ref=spec.model, sha256=loaded.sha256),
                       agreement_model=PinnedModel(ref=spec.agreement_model, sha256=second.sha256) if second else None,
                       transport=spec.transport_protocol(), neb=spec.neb, resources=spec.resources,
                       ranking=spec.ranking, candidate_failures=failures)
        tasks = _PlannedTasks(plan, candidates.hashes)
        error = "candidates that could not be built:\n" + "\n".join(failures) if failures else None
        job_id = store.jobs.create(spec, model_sha256=loaded.sha256, plan=plan.model_dump(mode="json"),
                                   candidates=candidates, tasks=tasks, error=error, submitted_by=submitted_by)
    return PlannedJob(job_id, plan, len(candidates), len(tasks), failures)


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
    hashes = store.candidates.hashes_for_job(job_id)
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


class TaskPayloads(Mapping):
    """The typed payloads of a job's tasks (task id → :class:`TaskSpec`, in the order given), each built when it is
    looked up: a driver of 10,000 tasks holds the payloads it has just built, not every candidate's structure.

    The ``keep`` payloads (and candidates) built last are kept, so a lookup when a task ends finds the one built when
    it was submitted (``run_job`` keeps twice as many as run at once); one that has left is built again. ``builds``
    counts the payloads built."""

    def __init__(self, store, plan: JobPlan, tasks, models: dict[int, PinnedModel], *,
                 mlflow_run_id: str | None = None, keep: int = 64):
        self._store, self._plan, self._mlflow_run_id = store, plan, mlflow_run_id
        self._tasks = {t.id: (t.candidate_id, Stage(t.stage), t.task_key, models[t.id]) for t in tasks}
        self.keep = keep
        self.builds = 0
        self._built: OrderedDict[int, TaskSpec] = OrderedDict()
        self._candidates: OrderedDict[int, Candidate] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[int]:
        return iter(self._tasks)

    def __contains__(self, task_id) -> bool:
        return task_id in self._tasks

    def stage(self, task_id: int) -> Stage:
        return self._tasks[task_id][1]

    def model(self, task_id: int) -> PinnedModel:
        return self._tasks[task_id][3]

    def __getitem__(self, task_id: int) -> TaskSpec:
        spec = self._built.get(task_id)
        if spec is None:
            candidate_id, stage, key, model = self._tasks[task_id]
            spec = TaskSpec(task_id=task_id, task_key=key, stage=stage, candidate_id=candidate_id,
                            candidate=self._candidate(candidate_id), model=model,
                            transport=self._plan.transport if stage is Stage.TRANSPORT else None,
                            neb=self._plan.neb if stage is Stage.NEB else None, mlflow_run_id=self._mlflow_run_id)
            self.builds += 1
            _keep(self._built, task_id, spec, self.keep)
        return spec

    def _candidate(self, candidate_id: int) -> Candidate:
        candidate = self._candidates.get(candidate_id)
        if candidate is None:
            candidate = Candidate.from_cif_text(self._store.candidates.get(candidate_id).cif)
            _keep(self._candidates, candidate_id, candidate, self.keep)
        return candidate


def _keep(cache: OrderedDict, key, value, size: int) -> None:
    """Remember ``value``; forget the oldest beyond ``size``. Oldest built, not least recently used: a lookup when a
    task ends must not make its entry outlive those of the tasks still running."""
    cache[key] = value
    while len(cache) > max(1, size):
        cache.popitem(last=False)


def task_specs(store, job_id: str, plan: JobPlan, tasks, *, mlflow_run_id: str | None = None) -> TaskPayloads:
    """The typed payloads of ``tasks`` (TaskRecords of the job), by task id, each with the model it runs; each is
    built when it is looked up (:class:`TaskPayloads`)."""
    return TaskPayloads(store, plan, tasks, task_models(store, job_id, plan, tasks), mlflow_run_id=mlflow_run_id)
