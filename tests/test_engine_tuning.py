"""Choosing the MD batch size and the workers × threads layout: the selection logic and the cache (not timings)."""

from __future__ import annotations

import json

import pytest

from mlip.engine import LeanMACE
from mlip.engine.tuning import (
    choose_md_batch,
    measure_md_throughput,
    memory_bound_atoms,
    select_batch_size,
    select_workers_threads,
    worker_thread_options,
)
from mlip.errors import InputError


def test_batch_size_is_the_smallest_near_the_best_rate_that_fits():
    rates = {1: 100.0, 2: 180.0, 4: 300.0, 8: 310.0, 16: 312.0}
    assert select_batch_size(rates, atoms_per_system=100) == 4  # 300 is within 5% of 312
    assert select_batch_size(rates, atoms_per_system=100, tolerance=0.0) == 16
    assert select_batch_size(rates, atoms_per_system=100, max_batch_atoms=250) == 2  # 4 × 100 atoms do not fit
    assert select_batch_size(rates, atoms_per_system=100, max_batch_atoms=10) == 1  # one system always runs
    # a CPU where batching is slower per atom: one system at a time
    assert select_batch_size({1: 100.0, 2: 80.0, 4: 60.0}, atoms_per_system=128) == 1
    # out of memory (rate 0) never wins
    assert select_batch_size({1: 100.0, 2: 190.0, 4: 0.0}, atoms_per_system=128) == 2


def test_memory_bound_from_measured_peak():
    # 2 systems of 100 atoms peaked at 200 MB: 1 MB per atom; 80% of 1 GB free
    assert memory_bound_atoms({1: 120_000_000, 2: 200_000_000}, 100, 1_000_000_000) == 800
    assert memory_bound_atoms({}, 100, 1_000_000_000) is None
    assert memory_bound_atoms({2: 200_000_000}, 100, None) is None


def test_workers_threads_layouts_and_selection():
    assert worker_thread_options(2) == [(1, 2), (2, 1)]
    assert worker_thread_options(4) == [(1, 4), (2, 2), (4, 1)]
    assert worker_thread_options(1) == [(1, 1)]
    assert select_workers_threads({(1, 2): 1000.0, (2, 1): 1500.0}) == (2, 1)
    assert select_workers_threads({(1, 2): 1500.0, (2, 1): 1000.0}) == (1, 2)
    # within the tolerance, fewer processes (each holds a copy of the model)
    assert select_workers_threads({(1, 4): 1000.0, (2, 2): 1030.0, (4, 1): 900.0}) == (1, 4)
    assert select_workers_threads({(1, 2): 0.0, (2, 1): 10.0}) == (2, 1)
    with pytest.raises(InputError):
        select_workers_threads({(1, 2): 0.0})


@pytest.fixture(scope="module")
def soft_module():
    from mlip.testing import build_mace

    return build_mace([3, 15, 16, 17], seed=1, pair_repulsion=True, interaction_scale=0.02, num_interactions=1, max_ell=1)


def _cells():
    from engine_batch_worker import unit_cell

    return [unit_cell() for _ in range(3)]


def test_md_batch_choice_is_measured_then_cached_or_configured(soft_module, settings):
    model = LeanMACE(soft_module, dtype="float32", model_sha256="0" * 64)
    choice = choose_md_batch(model, _cells(), home=settings.home, steps=1)
    assert choice.source == "measured" and set(choice.atom_steps_per_s) == {1, 2, 3}
    assert all(rate > 0 for rate in choice.atom_steps_per_s.values())
    assert choice.batch_systems == select_batch_size(choice.atom_steps_per_s, 12, choice.max_batch_atoms)
    assert choice.max_batch_atoms is None  # no memory bound on a CPU
    cache = json.loads((settings.home / "batch_size_cache.json").read_text())
    assert cache[choice.key]["batch_systems"] == choice.batch_systems
    assert choice.key.startswith("md-engine|cpu:") and "0" * 64 in choice.key and "float32" in choice.key
    calls = model.n_model_calls
    again = choose_md_batch(model, _cells(), home=settings.home)
    assert (again.source, again.batch_systems, again.atom_steps_per_s) == ("cache", choice.batch_systems,
                                                                          choice.atom_steps_per_s)
    assert model.n_model_calls == calls  # nothing measured
    assert choose_md_batch(model, _cells(), home=settings.home, configured=2).batch_systems == 2
    with pytest.raises(InputError):
        choose_md_batch(model, _cells(), home=settings.home, configured=0)
    # an unhashed model is measured but never cached (the measurement would not say what it was of)
    unhashed = LeanMACE(soft_module, dtype="float32")
    first = choose_md_batch(unhashed, _cells(), home=settings.home, steps=1, sizes=[1])
    assert first.source == "measured" and first.key not in json.loads((settings.home / "batch_size_cache.json").read_text())


def test_sizes_that_run_out_of_memory_are_never_chosen(soft_module):
    from engine_batch_worker import SmallDeviceMACE

    model = SmallDeviceMACE(soft_module, limit=30, dtype="float32")
    rates, _ = measure_md_throughput(model, _cells(), [1, 2, 3, 4], steps=1)
    assert rates[1] > 0 and rates[2] > 0 and rates[3] == 0.0
    assert 4 not in rates  # nothing larger is tried after a failure
    assert select_batch_size(rates, 12) in (1, 2)

