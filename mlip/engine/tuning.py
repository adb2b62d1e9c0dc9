"""How big an MD batch, and how many worker processes × threads, from measurements rather than guesses.

Batch size: the engine advances ``size`` systems for a few steps at each candidate size and counts
atom-steps per second; the smallest size within ``TOLERANCE`` of the best rate wins (smaller batches
hold less memory and finish together), subject to a memory bound in atoms. On CUDA the bound comes
from the peak memory a measured batch used per atom and the device's free memory; on CPUs there is
none by default. Measurements are cached in ``$IONSCREEN_HOME/batch_size_cache.json`` (the file
:mod:`mlip.batched` uses) under keys that start with ``md-engine``, per (device, model SHA-256,
dtype, system-size bucket, number of systems).

Workers × threads: on a CPU node one process with several threads often gains little (this 2-core
machine: 1.4–1.7× from a second thread), while independent processes scale; which wins depends on
the machine and the model, so :func:`measure_workers_threads` runs the same MD in each layout
(e.g. 2 processes × 1 thread vs 1 × 2) at the same time and :func:`select_workers_threads` picks.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import multiprocessing
import os
import time
from pathlib import Path
from typing import Sequence

from mlip.batched import (
    _cache_path,
    _read_cache,
    _update_cache,
    candidate_batch_sizes,
    describe_device,
    size_bucket,
)
from mlip.engine import BatchTooLarge, Integrator, LeanMACE, MDBatch, SystemSpec
from mlip.errors import InputError
from mlip.util import synchronize

log = logging.getLogger(__name__)

TOLERANCE = 0.05  # sizes within 5% of the best measured rate count as equally fast
MEMORY_HEADROOM = 0.8  # use at most this fraction of the device's free memory


@dataclasses.dataclass(frozen=True)
class BatchChoice:
    """How many systems to batch (and the atom cap that goes with it), and where that came from."""

    batch_systems: int
    max_batch_atoms: int | None  # the memory bound, None when there is none
    source: str  # measured, cache or configured
    atom_steps_per_s: dict[int, float]
    key: str

    def as_dict(self) -> dict:
        return {"batch_systems": self.batch_systems, "max_batch_atoms": self.max_batch_atoms, "source": self.source,
                "key": self.key, "atom_steps_per_s": {str(k): v for k, v in self.atom_steps_per_s.items()}}


def select_batch_size(rates: dict[int, float], atoms_per_system: float, max_batch_atoms: int | None = None,
                      tolerance: float = TOLERANCE) -> int:
    """The smallest measured size whose rate is within ``tolerance`` of the best that fits ``max_batch_atoms``.

    Sizes that failed (rate 0, e.g. out of memory) never win; at least one system is always allowed.
    """
    fits = {size: rate for size, rate in rates.items() if rate > 0
            and (max_batch_atoms is None or size == 1 or size * atoms_per_system <= max_batch_atoms)}
    if not fits:
        return 1
    best = max(fits.values())
    return min(size for size, rate in fits.items() if rate >= (1.0 - tolerance) * best)


def _specs(atoms_list: Sequence) -> list[SystemSpec]:
    import numpy as np
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    specs = []
    for k, atoms in enumerate(atoms_list):
        atoms = atoms.copy()
        MaxwellBoltzmannDistribution(atoms, temperature_K=600.0, rng=np.random.default_rng(k))
        specs.append(SystemSpec.from_atoms(atoms, integrator=Integrator.BUSSI, temperature_K=600.0, timestep_fs=2.0,
                                           rng=np.random.default_rng(k)))
    return specs


def measure_md_throughput(model: LeanMACE, atoms_list: Sequence, sizes: Sequence[int] | None = None, *,
                          steps: int = 5, skin_A: float | None = None) -> tuple[dict[int, float], dict[int, int]]:
    """Atom-steps per second of MD batches of each size (systems taken from ``atoms_list``, cycled),
    and the peak device memory per size in bytes (CUDA only). A size that runs out of memory gets rate
    0 and no larger size is tried."""
    import torch

    from mlip.engine import DEFAULT_SKIN_A

    atoms_list = list(atoms_list)
    if not atoms_list:
        raise InputError("throughput measurement needs at least one structure")
    sizes = sorted(sizes or candidate_batch_sizes(len(atoms_list)))
    rates: dict[int, float] = {}
    peaks: dict[int, int] = {}
    for size in sizes:
        systems = [atoms_list[k % len(atoms_list)] for k in range(size)]
        n_atoms = sum(len(a) for a in systems)
        cuda = model.device.startswith("cuda")
        try:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            batch = MDBatch(model, _specs(systems), skin_A=DEFAULT_SKIN_A if skin_A is None else skin_A)
            batch.step()  # warm-up
            synchronize(model.device)
            start = time.perf_counter()
            for _ in range(steps):
                batch.step()
            synchronize(model.device)
            rates[size] = n_atoms * steps / (time.perf_counter() - start)
            if cuda:
                peaks[size] = int(torch.cuda.max_memory_allocated())
        except BatchTooLarge as err:
            log.info("batch of %d systems (%d atoms) does not fit: %s", size, n_atoms, err)
            rates[size] = 0.0
            break
        finally:
            batch = None
    return rates, peaks


def memory_bound_atoms(peaks: dict[int, int], atoms_per_system: float, free_bytes: int | None) -> int | None:
    """Atoms that fit in ``MEMORY_HEADROOM`` × ``free_bytes``, from the largest measured batch's peak per atom."""
    if free_bytes is None or not peaks:
        return None
    size = max(peaks)
    per_atom = peaks[size] / (size * atoms_per_system)
    return max(1, int(MEMORY_HEADROOM * free_bytes / per_atom))


def _free_device_bytes(device: str) -> int | None:
    if not device.startswith("cuda"):
        return None
    import torch

    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return int(free) + int(torch.cuda.memory_allocated(torch.device(device)))


def choose_md_batch(model: LeanMACE, atoms_list: Sequence, *, home: str | Path | None = None,
                    configured: int | None = None, steps: int = 5,
                    sizes: Sequence[int] | None = None) -> BatchChoice:
    """Systems per MD batch for ``atoms_list``-like jobs: configured, else cached, else measured now."""
    atoms_list = list(atoms_list)
    atoms_per_system = sum(len(a) for a in atoms_list) / len(atoms_list)
    n_max = max(len(a) for a in atoms_list)
    key = "|".join(["md-engine", describe_device(model.device), model.model_sha256 or "unhashed-model", model.dtype,
                    f"atoms<={size_bucket(n_max)}", f"systems={len(atoms_list)}"])
    if configured is not None:
        if configured < 1:
            raise InputError(f"configured batch size must be >= 1, got {configured}")
        return BatchChoice(int(configured), None, "configured", {}, key)
    cache_path = _cache_path(home)
    if model.model_sha256 is not None:
        entry = _read_cache(cache_path).get(key)
        if entry is not None:
            return BatchChoice(int(entry["batch_systems"]), entry.get("max_batch_atoms"), "cache",
                               {int(k): float(v) for k, v in entry["atom_steps_per_s"].items()}, key)
    rates, peaks = measure_md_throughput(model, atoms_list, sizes, steps=steps)
    bound = memory_bound_atoms(peaks, atoms_per_system, _free_device_bytes(model.device))
    best = select_batch_size(rates, atoms_per_system, bound)
    choice = BatchChoice(best, bound, "measured", rates, key)
    if model.model_sha256 is not None:  # only a hashed model identifies what was measured
        _update_cache(cache_path, key, {**choice.as_dict(), "measured_utc":
                                        _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    return choice


# --- worker processes × threads per process --------------------------------------------------------


def worker_thread_options(n_cores: int | None = None) -> list[tuple[int, int]]:
    """Layouts (workers, threads each) that use all ``n_cores``: 1×n, …, n×1 over the divisors of n."""
    n = n_cores or os.cpu_count() or 1
    return [(w, n // w) for w in range(1, n + 1) if n % w == 0]


def select_workers_threads(rates: dict[tuple[int, int], float], tolerance: float = TOLERANCE) -> tuple[int, int]:
    """The layout with the best total rate; within ``tolerance`` of it, the one with fewer processes
    (each process holds its own copy of the model)."""
    usable = {layout: rate for layout, rate in rates.items() if rate > 0}
    if not usable:
        raise InputError("no workers × threads layout was measured successfully")
    best = max(usable.values())
    return min((layout for layout, rate in usable.items() if rate >= (1.0 - tolerance) * best),
               key=lambda layout: (layout[0], -layout[1]))


def _worker_rate(args) -> tuple[float, float, int]:
    """In a fresh process: (start, end) wall-clock times of ``steps`` MD steps and atoms advanced."""
    model_path, dtype, threads, atoms_list, steps, barrier = args
    import torch

    torch.set_num_threads(threads)
    from mlip.loader import load_model

    model = LeanMACE.from_loaded(load_model(model_path), device="cpu", dtype=dtype)
    batch = MDBatch(model, _specs(atoms_list))
    batch.step()
    barrier.wait()  # all workers of a layout time the same stretch of wall-clock time
    start = time.time()
    for _ in range(steps):
        batch.step()
    return start, time.time(), sum(len(a) for a in atoms_list)


def measure_workers_threads(model_path: str, atoms_list: Sequence, *, dtype: str = "float32", steps: int = 10,
                            options: Sequence[tuple[int, int]] | None = None) -> dict[tuple[int, int], float]:
    """Total atom-steps/s of each (workers, threads) layout, every worker running MD on ``atoms_list``.

    Each layout runs its workers at the same time in fresh processes (spawned: no forked torch state).
    ``model_path`` must be loadable by :func:`mlip.loader.load_model` (a trusted file or reference).
    """
    context = multiprocessing.get_context("spawn")
    rates = {}
    for workers, threads in options or worker_thread_options():
        with context.Manager() as manager:
            barrier = manager.Barrier(workers)
            with context.Pool(workers) as pool:
                results = pool.map(_worker_rate, [(model_path, dtype, threads, list(atoms_list), steps, barrier)] * workers)
        start, end = min(r[0] for r in results), max(r[1] for r in results)
        rates[(workers, threads)] = sum(r[2] for r in results) * steps / (end - start)
        log.info("%d worker(s) × %d thread(s): %.0f atom-steps/s", workers, threads, rates[(workers, threads)])
    return rates


def choose_workers_threads(model_path: str, model_sha256: str | None, atoms_list: Sequence, *, dtype: str = "float32",
                           home: str | Path | None = None, steps: int = 10,
                           options: Sequence[tuple[int, int]] | None = None) -> tuple[tuple[int, int], dict, str]:
    """(workers, threads), the rates behind it and their source (cache or measured), cached per CPU and model."""
    import platform

    n_max = max(len(a) for a in atoms_list)
    key = "|".join(["md-workers", f"cpu:{platform.machine()}:{os.cpu_count()}cpus", model_sha256 or "unhashed-model",
                    dtype, f"atoms<={size_bucket(n_max)}"])
    cache_path = _cache_path(home)
    entry = _read_cache(cache_path).get(key) if model_sha256 else None
    if entry is not None:
        rates = {tuple(int(x) for x in k.split("x")): float(v) for k, v in entry["atom_steps_per_s"].items()}
        return select_workers_threads(rates), rates, "cache"
    rates = measure_workers_threads(model_path, atoms_list, dtype=dtype, steps=steps, options=options)
    if model_sha256:
        _update_cache(cache_path, key, {"atom_steps_per_s": {f"{w}x{t}": r for (w, t), r in rates.items()},
                                        "measured_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    return select_workers_threads(rates), rates, "measured"


__all__ = ["BatchChoice", "choose_md_batch", "select_batch_size", "measure_md_throughput", "memory_bound_atoms",
           "worker_thread_options", "select_workers_threads", "measure_workers_threads", "choose_workers_threads"]
