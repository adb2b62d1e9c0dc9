"""Run a screening job's tasks on Ray: long-lived model-holding actors, bounded in-flight work, one writer.

The driver (this module, in the ``ionscreen screen`` process) owns the database: workers run
:func:`workflows.jobs.tasks.run_task` on typed :class:`~workflows.jobs.plan.TaskSpec` payloads and send back small
result rows; the driver records them. A worker
killed mid-task (its actor is restarted by Ray, which reloads the model) gets the task again, and the
task resumes from its MD checkpoints in its work directory. Errors raised by the science (bad input,
model domain) are permanent: the task is marked failed with its error and the job goes on.

On a cluster every node must see the driver's ``IONSCREEN_HOME`` (a shared file system, as HPC nodes share a
parallel file system): the driver writes a check file there and each worker reads it back before it loads a model;
a worker on a node that does not see it stops the job at start-up with an error naming the node. Each task records
the node of each attempt (``tasks.node``, ``tasks.attempts_json``), so ``ionscreen jobs status`` says where it ran and
why it ran again.

A worker holds every model its tasks name: the first when it starts (a model that cannot load fails at once), any
other — a job's ``agreement_model`` — on its first task. The queue holds the primary model's tasks first, so the
second model is loaded once the first model's work is handed out, and no worker idles between the two.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

from mlip.errors import ConfigError, IonscreenError

if TYPE_CHECKING:
    from workflows.jobs.plan import TaskSpec

log = logging.getLogger(__name__)

PROGRESS_ACTOR = "ionscreen-progress-{job}"
WORKER_START_TIMEOUT_S = 600.0  # a worker (model load included) that has not answered by then is reported


class SharedHomeError(ConfigError):
    """A cluster node does not see the driver's IONSCREEN_HOME: the nodes need a shared file system."""


def node_identity() -> dict:
    """Where this process runs: the Ray node's address and id, the host name and the pid."""
    import ray

    return {"node_ip": ray.util.get_node_ip_address(), "node_id": ray.get_runtime_context().get_node_id(),
            "hostname": socket.gethostname(), "pid": os.getpid()}


def node_label(where: dict) -> str:
    """How a node is named in task records and progress: its address, and its host name when that says more."""
    return where["node_ip"] if where["hostname"] in ("", where["node_ip"]) else f"{where['node_ip']} ({where['hostname']})"


def write_home_check(home: str) -> tuple[str, str]:
    """The file the driver leaves in IONSCREEN_HOME for every worker to read back: (path, its secret content)."""
    from mlip.util import atomic_write_text

    token = secrets.token_hex(16)
    path = os.path.join(home, "cluster", f"home-check-{token[:12]}.txt")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write_text(path, token)
    return path, token


def check_shared_home(path: str, token: str, where: dict) -> None:
    """Refuse to work on a node that does not see the driver's IONSCREEN_HOME (``write_home_check``)."""
    home = os.path.dirname(os.path.dirname(path))
    try:
        seen = open(path).read().strip()
    except OSError as err:
        seen = f"<{type(err).__name__}: {err.strerror or err}>"
    if seen != token:
        raise SharedHomeError(
            f"node {node_label(where)} does not see the driver's data directory IONSCREEN_HOME={home}: the check file "
            f"{path} that the driver wrote there reads {seen[:80]!r} on this node. Every node of a Ray cluster needs "
            "the same IONSCREEN_HOME on a shared file system (NFS, Lustre, GPFS, ...), mounted at the same path")


@dataclass(frozen=True)
class ExecutionOptions:
    address: str | None = None  # None: in-process Ray; "auto" or ray://…: an existing cluster
    workers: int = 2
    threads_per_worker: int = 1
    gpus_per_worker: float = 0.0
    max_in_flight: int = 4
    max_attempts: int = 3
    device: str = "auto"


@dataclass
class RunSummary:
    job_id: str
    done: int = 0
    failed: int = 0
    reused: int = 0
    cancelled: int = 0
    retried: int = 0
    wall_s: float = 0.0
    errors: dict[int, str] = field(default_factory=dict)
    # per computed task, for the orchestration benchmark: (worker index, start and end of its compute on the worker,
    # unix s) and the driver's database write (result + task state), s
    task_times: list[tuple[int, float, float]] = field(default_factory=list)
    db_write_s: list[float] = field(default_factory=list)


def init_ray(options: ExecutionOptions):
    """Start Ray in-process, or connect to a cluster (``--address`` / ``RAY_ADDRESS``).

    Settings reach the workers through each actor's runtime environment (not the job's), so one
    process can run jobs of different data directories.
    """
    import ray

    if ray.is_initialized():
        return ray
    address = options.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        cpus = max(os.cpu_count() or 1, options.workers * options.threads_per_worker)
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)  # not a `ray start` cluster here
    return ray


def _actor_classes():
    import ray

    @ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
    class ProgressSink:
        """Collects progress events from workers; the driver drains them."""

        def __init__(self):
            self.events = []

        def push(self, event: dict) -> None:
            self.events.append(event)

        def drain(self) -> list[dict]:
            out, self.events = self.events, []
            return out

    @ray.remote(max_restarts=-1, max_task_retries=0)
    class ModelWorker:
        """Holds its loaded models for its whole life (see the module docstring); runs tasks one at a time."""

        def __init__(self, model_refs: list[str], threads: int, device: str, progress_name: str,
                     home_check: tuple[str, str] | None = None):
            import torch

            from mlip.config import load_settings

            self.where = node_identity()
            if home_check is not None:  # before anything reads the data directory
                check_shared_home(*home_check, self.where)
            torch.set_num_threads(threads)
            self.settings = load_settings()
            self.models: dict = {}
            self.model(model_refs[0])
            self.device = device
            self.progress_name = progress_name
            self.engines: dict = {}  # each model's MD engines, built on its first task

        def model(self, ref: str):
            from mlip.loader import load_model

            if ref not in self.models:
                self.models[ref] = load_model(ref, self.settings)
            return self.models[ref]

        def pid(self) -> int:
            return os.getpid()

        def identity(self) -> dict:
            return self.where

        def run(self, spec) -> dict:
            """The task's result row, with when its compute started and ended here (unix s)."""
            from workflows.jobs.tasks import run_task

            sink = ray.get_actor(self.progress_name)

            def progress(stage: str, info: dict) -> None:
                sink.push.remote({"task_id": spec.task_id, "stage": stage, **info})

            started = time.time()
            row = run_task(spec, self.model(spec.model.ref), home=self.settings.home, device=self.device,
                           progress=progress, engines=self.engines)
            return {"row": row, "started_unix": started, "ended_unix": time.time()}

    return ProgressSink, ModelWorker


def _worker_start_error(err: BaseException) -> ConfigError:
    """The reason a worker's constructor failed (for example :class:`SharedHomeError`), as the job's error."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    reason = next((line for line in reversed(lines) if ("Error: " in line or "Exception: " in line)
                   and not line.startswith("ray.exceptions")), lines[-1] if lines else repr(err))
    kind, _, message = reason.partition(": ")
    if kind.rsplit(".", 1)[-1] == "SharedHomeError":
        return SharedHomeError(message)
    return ConfigError(f"a worker could not start: {reason}")


def _is_permanent(err: BaseException) -> bool:
    """Errors the science raises on purpose (bad input, model domain, failed simulation) will not go away on retry."""
    return isinstance(err, IonscreenError) or isinstance(getattr(err, "cause", None), IonscreenError)


def execute(
    store,
    job_id: str,
    model_refs: Sequence[str],
    payloads: Mapping[int, "TaskSpec"],
    options: ExecutionOptions,
    *,
    env: dict[str, str],
    on_event: Callable[[str, dict], None] = lambda kind, info: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> RunSummary:
    """Run the pending tasks ``payloads`` (task id → TaskSpec, in the order to run them; a lazy mapping such as
    :class:`~workflows.jobs.plan.TaskPayloads` builds each when it is submitted) with workers that hold
    ``model_refs`` (the first loaded at start, the others on first use), and record their results.

    ``on_event(kind, info)`` receives ``submitted``/``progress``/``done``/``failed``/``retry`` events for
    the progress display; ``should_stop()`` is polled (cancellation).
    """
    ray = init_ray(options)
    from ray.exceptions import GetTimeoutError, RayActorError

    started = time.perf_counter()
    summary = RunSummary(job_id)
    if not payloads:
        return summary
    ProgressSink, ModelWorker = _actor_classes()
    sink_name = PROGRESS_ACTOR.format(job=job_id)
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # the progress sink lives on the driver's node: it shares the driver's fate, not a worker node's
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    sink = ProgressSink.options(name=sink_name, get_if_exists=True, scheduling_strategy=here).remote()
    n_workers = max(1, min(options.workers, len(payloads)))
    worker_opts = {"num_cpus": options.threads_per_worker, "runtime_env": {"env_vars": env}}
    if options.gpus_per_worker:
        worker_opts["num_gpus"] = options.gpus_per_worker
    device = options.device
    if device == "auto":
        device = "cuda" if options.gpus_per_worker else "cpu"
    home = env.get("IONSCREEN_HOME")
    home_check = write_home_check(home) if home else None
    workers = [
        ModelWorker.options(**worker_opts).remote(list(model_refs), options.threads_per_worker, device, sink_name,
                                                  home_check)
        for _ in range(n_workers)
    ]
    queue = list(payloads)  # task ids, in order
    load = {i: 0 for i in range(n_workers)}
    in_flight: dict = {}  # ObjectRef -> (task_id, worker index)
    # ObjectRef -> worker index: a worker is used once it says where it runs (at start, and after each restart)
    probes: dict = {workers[w].identity.remote(): w for w in range(n_workers)}
    nodes: dict[int, dict] = {}  # worker index -> where it runs now
    limit = max(options.max_in_flight, n_workers)
    waiting_since = time.monotonic()

    def submit(task_id: int) -> bool:
        available = [w for w in load if w not in probes.values()]
        if not available:
            return False
        w = min(available, key=load.get)
        node = node_label(nodes[w])
        store.tasks.claim(task_id, worker=f"actor{w}", node=node)
        ref = workers[w].run.remote(payloads[task_id])
        in_flight[ref] = (task_id, w)
        load[w] += 1
        on_event("submitted", {"task_id": task_id, "node": node})
        return True

    try:
        while queue or in_flight:
            if should_stop():
                for actor in workers:  # stops the running tasks (actor tasks cannot be force-cancelled)
                    ray.kill(actor, no_restart=True)
                for task_id in [t for t, _ in in_flight.values()] + queue:
                    if store.tasks.get(task_id).state in ("pending", "running"):  # cancel_job already did the pending ones
                        store.tasks.finish(task_id, "cancelled", error="job cancelled")
                    summary.cancelled += 1
                queue.clear()
                in_flight.clear()
                break
            while queue and len(in_flight) < limit and submit(queue[0]):
                queue.pop(0)
            if probes:
                answered, _ = ray.wait(list(probes), num_returns=len(probes), timeout=0)
                for ref in answered:
                    w = probes.pop(ref)
                    try:
                        nodes[w] = ray.get(ref)
                        on_event("worker", {"worker": w, "node": node_label(nodes[w])})
                    except RayActorError as err:
                        if getattr(err, "actor_init_failed", False):  # it will not start on this cluster: say why
                            raise _worker_start_error(err) from None
                        time.sleep(0.5)  # still restarting (reloading the model): ask again
                        probes[workers[w].identity.remote()] = w
                if len(probes) < n_workers:
                    waiting_since = time.monotonic()
                elif time.monotonic() - waiting_since > WORKER_START_TIMEOUT_S:
                    raise ConfigError(
                        f"no worker of this job has started (or come back) in {WORKER_START_TIMEOUT_S:.0f} s: the "
                        f"cluster has {ray.available_resources().get('CPU', 0):g} CPUs and "
                        f"{ray.available_resources().get('GPU', 0):g} GPUs free, and each worker asks for "
                        f"{options.threads_per_worker} CPUs and {options.gpus_per_worker:g} GPUs; tasks still running "
                        "are resumed by `ionscreen jobs resume`")
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=0.5)
            try:
                for event in ray.get(sink.drain.remote(), timeout=10):
                    on_event("progress", event)
            except GetTimeoutError:
                pass
            for ref in ready:
                task_id, w = in_flight.pop(ref)
                load[w] -= 1
                try:
                    answer = ray.get(ref)
                except RayActorError as err:
                    if getattr(err, "actor_init_failed", False):
                        raise _worker_start_error(err) from None
                    if w not in probes.values():
                        probes[workers[w].identity.remote()] = w  # Ray restarts the actor; wait until it answers
                    attempts = store.tasks.get(task_id).attempts
                    if attempts < options.max_attempts:
                        log.warning("worker died running task %s (attempt %s): retrying", task_id, attempts)
                        store.tasks.requeue(task_id, error=f"worker died: {type(err).__name__}")
                        queue.insert(0, task_id)
                        summary.retried += 1
                        on_event("retry", {"task_id": task_id, "attempts": attempts})
                    else:
                        store.tasks.finish(task_id, "failed", error=f"worker died {attempts} times: {err}")
                        summary.failed += 1
                        summary.errors[task_id] = str(err)
                        on_event("failed", {"task_id": task_id, "error": str(err)})
                    continue
                except Exception as err:  # raised inside the task: permanent
                    cause = getattr(err, "cause", None) or err
                    message = f"{type(cause).__name__}: {cause}"
                    store.tasks.finish(task_id, "failed", error=message)
                    summary.failed += 1
                    summary.errors[task_id] = message
                    on_event("failed", {"task_id": task_id, "error": message, "permanent": _is_permanent(err),
                                        "node": node_label(nodes[w]) if w in nodes else None})
                    continue
                row = answer["row"]
                compute_s = answer["ended_unix"] - answer["started_unix"]
                payload = payloads[task_id]
                written = time.perf_counter()
                store.results.record({**row, "candidate_id": payload.candidate_id,
                                      "mlflow_run_id": payload.mlflow_run_id})
                store.tasks.finish(task_id, "done", compute_s=compute_s)
                summary.db_write_s.append(time.perf_counter() - written)
                summary.task_times.append((w, answer["started_unix"], answer["ended_unix"]))
                summary.done += 1
                on_event("done", {"task_id": task_id, "row": row, "node": node_label(nodes[w]) if w in nodes else None})
    finally:
        for actor in workers:
            ray.kill(actor)
        ray.kill(sink)
        if home_check is not None:
            try:
                os.unlink(home_check[0])
            except OSError:
                pass
    summary.wall_s = time.perf_counter() - started
    return summary
