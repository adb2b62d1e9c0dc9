"""How many model-holding workers, with how many threads each, when the job file leaves it open.

``resources.workers`` / ``threads_per_worker`` unset (or ``auto``):

- in-process Ray on a CPU node: both measured — the same MD on a candidate-sized system in each layout
  that uses every core (e.g. 2 processes × 1 thread vs 1 × 2) at the same time, the best total
  atom-steps/s wins (:func:`mlip.engine.tuning.choose_workers_threads`, cached per CPU, model and size);
- one of the two given: the other fills this node's cores (workers × threads = cores);
- a GPU device or an existing cluster (``--address``): a measurement on this node says nothing about
  the workers' nodes, so unset values fall back to 1 thread and one worker per GPU (or per CPU of the
  cluster), and the job says so.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Layout:
    workers: int
    threads_per_worker: int
    source: str  # configured, filled, measured, cache, gpus, cluster
    atom_steps_per_s: dict[str, float] = dataclasses.field(default_factory=dict)

    def describe(self) -> str:
        rates = ", ".join(f"{k}: {v:.0f}" for k, v in self.atom_steps_per_s.items())
        return (f"{self.workers} worker(s) × {self.threads_per_worker} thread(s) ({self.source}"
                + (f"; atom-steps/s {rates}" if rates else "") + ")")


def cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _uses_gpu(device: str) -> bool:
    if device.startswith("cuda"):
        return True
    if device != "auto":
        return False
    import torch

    return torch.cuda.is_available()


def resolve_layout(workers: int | None, threads: int | None, *, device: str, cluster: bool, model_ref: str,
                   model_sha256: str | None, structures, home: Path | None, dtype: str = "float32") -> Layout:
    """Workers × threads for this job (see the module docstring); ``structures``: ASE Atoms like the tasks'."""
    if workers is not None and threads is not None:
        return Layout(workers, threads, "configured")
    if cluster:
        import ray

        if workers is None:
            resources = ray.cluster_resources()
            key = "GPU" if _uses_gpu(device) and resources.get("GPU") else "CPU"
            workers = max(1, int(resources.get(key, 1)) // (1 if key == "GPU" else (threads or 1)))
        return Layout(workers, threads or 1, "cluster")
    n_cores = cores()
    if workers is not None or threads is not None:
        if workers is None:
            workers = max(1, n_cores // threads)
        else:
            threads = max(1, n_cores // workers)
        return Layout(workers, threads, "filled")
    if _uses_gpu(device):
        import torch

        return Layout(max(1, torch.cuda.device_count()), 1, "gpus")
    from mlip.engine.tuning import choose_workers_threads, worker_thread_options

    structures = list(structures)
    if not structures or n_cores == 1:
        return Layout(1, 1, "single core" if n_cores == 1 else "no structure to measure")
    (w, t), rates, source = choose_workers_threads(model_ref, model_sha256, structures[:1], dtype=dtype, home=home,
                                                   options=worker_thread_options(n_cores))
    return Layout(w, t, source, {f"{a}x{b}": r for (a, b), r in sorted(rates.items())})


__all__ = ["Layout", "resolve_layout"]
