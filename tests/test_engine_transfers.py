"""The engine's step loop stays on the device, and drawing random numbers ahead in blocks changes nothing.

Host transfers are counted on CPU tensors with a ``TorchFunctionMode`` (every call that would copy a device
tensor to the host: ``.cpu()``, ``.item()``, ``.tolist()``, ``bool()``/``float()``/``int()``, ``np.asarray``;
not ``.numpy()``, which a device tensor refuses, so it only ever follows a counted ``.cpu()``), so the check
runs without a GPU. Random streams are compared with drawing one step at a time
(``block_steps = 1``, which is step-by-step drawing from the system's own generator) and with that generator
advanced by hand in ASE's order.
"""

from __future__ import annotations

import collections
import copy
import math

import numpy as np
import pytest
from test_engine import lipscl_cell
from torch.overrides import TorchFunctionMode

from mlip.engine import Integrator, LeanMACE, MDBatch, SystemSpec

DEVICE_TO_HOST = {"cpu", "item", "tolist", "__bool__", "__float__", "__int__", "__index__", "__array__"}
HOST_TO_DEVICE = {"tensor", "as_tensor"}


class CountTransfers(TorchFunctionMode):
    """Counts device-to-host copies, host-to-device copies and ``nonzero`` (a sync: its size reaches the host)."""

    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls[getattr(func, "__name__", "")] += 1
        return func(*args, **(kwargs or {}))

    @property
    def device_to_host(self) -> int:
        return sum(self.calls[name] for name in DEVICE_TO_HOST)

    @property
    def host_to_device(self) -> int:
        return sum(self.calls[name] for name in HOST_TO_DEVICE)


@pytest.fixture(scope="module")
def model():
    from mlip.testing import build_mace

    module = build_mace([3, 15, 16, 17], seed=1, pair_repulsion=True, interaction_scale=0.02, num_interactions=1,
                        max_ell=1)
    return LeanMACE(module, dtype="float64")


def _specs(kinds, seeds=(1, 2, 3), temperature_K=700.0, rngs=None):
    systems = [lipscl_cell(rattle_seed=s, temperature_K=temperature_K) for s in seeds]
    rngs = rngs or [np.random.default_rng(10 + s) for s in seeds]
    return [SystemSpec.from_atoms(a, integrator=k, temperature_K=temperature_K, timestep_fs=2.0, time_constant_fs=20.0,
                                  rng=r) for a, k, r in zip(systems, kinds, rngs)]


def _batch(model, specs, block_steps: int, skin_A: float = 0.5) -> MDBatch:
    batch = MDBatch(model, specs, skin_A=skin_A)
    batch.noise.block_steps = block_steps
    return batch


@pytest.mark.parametrize("kinds", [[Integrator.BUSSI] * 3, [Integrator.LANGEVIN] * 3,
                                   [Integrator.BUSSI, Integrator.LANGEVIN, Integrator.NVE]])
def test_steps_copy_nothing_to_the_host_between_neighbour_list_rebuilds(model, kinds):
    """What a step may transfer, and why:

    * device to host: nothing, except when some atom has moved half the skin — then one copy of the
      per-system staleness flags and one of the stale systems' positions (matscipy builds lists on the CPU);
    * host to device: one copy of the random numbers per block of ``block_steps`` steps, and the new lists
      of rebuilt systems (3 tensors each);
    * one ``nonzero`` per step: the edge filter's size must reach the host (the model's tensors are sized
      by it); whether a list is stale rides on that same count, so it costs no sync of its own. A rebuild
      round adds one more.

    The old engine copied the kinetic energies (Bussi) and the staleness flags to the host every step,
    and the Bussi factors or the Langevin noise and coefficients back.
    """
    n_steps, block = 40, 8
    batch = _batch(model, _specs(kinds), block_steps=block, skin_A=2.0)
    batch.step()  # the first step draws the first block
    rebuilds, blocks = batch.graph.n_rebuilds, batch.noise.n_blocks
    with CountTransfers() as count:
        for _ in range(n_steps):
            batch.step()
    rebuilt_systems = batch.graph.n_rebuilds - rebuilds
    rounds = count.calls["nonzero"] - n_steps  # steps on which some list was rebuilt
    assert 0 <= rounds <= rebuilt_systems < n_steps // 4  # rebuilds are the exception, as in real runs
    assert count.device_to_host == 2 * rounds
    stochastic = any(k is not Integrator.NVE for k in kinds)
    new_blocks = batch.noise.n_blocks - blocks
    assert new_blocks == (n_steps // block if stochastic else 0)
    assert count.host_to_device == new_blocks + 3 * rebuilt_systems


def test_transfers_do_not_grow_with_the_number_of_steps(model):
    """Per step, host transfers are bounded by a constant: without rebuilds (a skin no atom crosses in
    these steps) twice as many steps copy nothing to the host either, and one random block each K steps."""
    counts = []
    for n_steps in (12, 24):
        batch = _batch(model, _specs([Integrator.BUSSI, Integrator.LANGEVIN, Integrator.BUSSI]), block_steps=6,
                       skin_A=4.0)
        batch.step()
        with CountTransfers() as count:
            for _ in range(n_steps):
                batch.step()
        assert batch.graph.n_rebuilds == 3  # only the first lists
        counts.append((count.device_to_host, count.host_to_device, count.calls["nonzero"]))
    assert counts == [(0, 2, 12), (0, 4, 24)]


def _draw_like_ase(rng: np.random.Generator, kind: Integrator, n_atoms: int) -> None:
    """One step's draws of ase.md.bussi.Bussi / ase.md.langevin.Langevin."""
    if kind is Integrator.BUSSI:
        rng.standard_normal()
        rng.standard_gamma(0.5 * (3 * n_atoms - 1))
    elif kind is Integrator.LANGEVIN:
        rng.standard_normal(size=(n_atoms, 3))
        rng.standard_normal(size=(n_atoms, 3))


def test_generators_stand_where_step_by_step_drawing_leaves_them_after_every_step(model):
    """Although blocks are drawn ahead, each system's generator is, between steps, exactly where ASE's
    per-step draws would have left it: that is what a checkpoint saves."""
    kinds = [Integrator.BUSSI, Integrator.LANGEVIN, Integrator.NVE]
    specs = _specs(kinds)
    mirrors = [copy.deepcopy(s.rng) for s in specs]
    batch = _batch(model, specs, block_steps=5)
    for _ in range(12):
        batch.step()
        for s, mirror in zip(batch.systems, mirrors):
            _draw_like_ase(mirror, s.integrator, len(s.numbers))
            assert s.rng.bit_generator.state == mirror.bit_generator.state
    assert batch.noise.n_blocks == 3


def _trajectory(batch: MDBatch, n_steps: int, between=None) -> list:
    out = []
    for n in range(n_steps):
        if between is not None:
            between(batch, n)
        batch.step()
        out.append((batch.graph.positions.clone(), batch.momenta.clone(),
                    [s.rng.bit_generator.state for s in batch.systems]))
    return out


def _assert_same(a: list, b: list) -> None:
    import torch

    assert len(a) == len(b)
    for (x1, p1, r1), (x2, p2, r2) in zip(a, b):
        assert torch.equal(x1, x2) and torch.equal(p1, p2) and r1 == r2


def test_blocks_equal_drawing_every_step_through_switches_outside_draws_and_selection(model):
    """Integrator switches, draws from outside, removed systems and a generator shared by two systems, each
    in the middle of a block: the same trajectory, bit for bit, as drawing one step at a time."""
    shared = np.random.default_rng(99)

    def specs():
        own, common = np.random.default_rng(11), copy.deepcopy(shared)  # systems 1 and 2 share a generator
        return _specs([Integrator.BUSSI, Integrator.LANGEVIN, Integrator.BUSSI], rngs=[own, common, common])

    def events(batch, n):
        if n == 3:
            batch.set_integrator(0, Integrator.LANGEVIN)
        if n == 6:
            batch.systems[1].rng.standard_normal(4)  # someone else draws from a generator
        if n == 9:
            batch.select([2, 0])

    step_by_step = _trajectory(_batch(model, specs(), block_steps=1), 14, events)
    blocked = _batch(model, specs(), block_steps=7)
    _assert_same(_trajectory(blocked, 14, events), step_by_step)
    assert blocked.noise.n_blocks < 14


@pytest.mark.parametrize("stop_after", [3, 8])  # inside the first block, and inside the second
def test_a_checkpoint_inside_a_block_resumes_the_same_stream(model, stop_after):
    """A checkpoint (positions, momenta and the generator's state, as screening's checkpoint writes it)
    taken in the middle of a block resumes bit for bit: the generator's saved state is that of the last
    step taken, not of the numbers drawn ahead."""
    kinds = [Integrator.BUSSI, Integrator.LANGEVIN]
    n_total = 12
    uninterrupted = _trajectory(_batch(model, _specs(kinds, seeds=(1, 2)), block_steps=5), n_total)

    first = _batch(model, _specs(kinds, seeds=(1, 2)), block_steps=5)
    _trajectory(first, stop_after)
    saved = [(first.positions(b), first.momenta_of(b), dict(s.rng.bit_generator.state))
             for b, s in enumerate(first.systems)]
    del first  # the rest of its block is lost with it, as in a killed process
    resumed_specs = _specs(kinds, seeds=(1, 2))
    for spec, (positions, momenta, state) in zip(resumed_specs, saved):
        spec.positions, spec.momenta = positions, momenta
        spec.rng = np.random.default_rng()
        spec.rng.bit_generator.state = state
    resumed = _trajectory(_batch(model, resumed_specs, block_steps=5), n_total - stop_after)
    _assert_same(resumed, uninterrupted[stop_after:])


def test_correctly_rounded_square_root():
    """The Bussi factor's square roots equal math.sqrt's bit for bit (torch's CPU sqrt is only faithful)."""
    import torch

    from mlip.engine.integrators import sqrt_rn

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(1e-6, 50.0, 100_000), 1.0 + rng.uniform(-1e-9, 1e-9, 100_000),
                        np.exp(rng.uniform(-20, 20, 100_000)), [1.0, 4.0, 0.25, np.nextafter(1.0, 0.0)]])
    got = sqrt_rn(torch.as_tensor(x)).numpy()
    assert np.array_equal(got, np.sqrt(x))
    assert all(float(g) == math.sqrt(v) for g, v in zip(got[:1000], x[:1000]))
