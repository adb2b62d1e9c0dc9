"""The thermostats' random numbers, drawn ahead in blocks of steps and sent to the device in one copy per
block, yet the same numbers in the same order as drawing them step by step from each system's generator.

Each system draws from its own ``numpy.random.Generator`` (``SystemSpec.rng``), exactly what ASE's
``Bussi`` and ``Langevin`` draw per step: Bussi R₁ = ``standard_normal()`` then
``2 · standard_gamma((3n − 1)/2)``; Langevin ξ then η, each ``standard_normal((n, 3))``. Within a step
the Bussi systems draw first, then the Langevin systems, each in batch order, which matters only when
systems share a generator. A block is drawn from copies of the generators; after every step the real
generator is set to the copy's state as of that step, so between steps it stands exactly where step-by-step
drawing would leave it, and a checkpoint of it resumes the same stream. A generator touched from outside,
a replaced generator or a changed integrator voids the rest of the block, and the next step draws afresh.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import TYPE_CHECKING, Sequence

import numpy as np

from mlip.engine.integrators import Integrator

if TYPE_CHECKING:
    import torch

    from mlip.engine.batch import SystemSpec

BLOCK_STEPS = 64  # steps drawn ahead: one host-to-device copy per this many steps
BLOCK_BYTES = 64 * 2 ** 20  # ... fewer when a block would take more device memory than this


@dataclasses.dataclass(frozen=True)
class StepNoise:
    """One step's random numbers for the whole batch, on the device (zeros for systems that draw none)."""

    bussi: torch.Tensor | None  # (B, 2): R₁ and Σ Rᵢ² = R₁² + 2 · gamma draw (None: no Bussi system)
    langevin: torch.Tensor | None  # (2, N, 3): ξ and η of each atom (None: no Langevin system)


class NoiseBlocks:
    """Random numbers of the next steps of a batch, drawn ahead from its systems' generators."""

    def __init__(self, counts: np.ndarray, device, block_steps: int = BLOCK_STEPS):
        self.counts = np.asarray(counts, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])
        self.device = device
        self.block_steps = int(block_steps)
        self.n_blocks = 0  # blocks drawn, each one host-to-device copy
        self._bussi = self._langevin = None  # (K, B, 2) and (K, 2, N, 3) on the device
        self._length = self._cursor = 0
        self._kinds: list[Integrator] = []
        self._rngs: list = []  # the generator objects the block was drawn from, per system
        self._after: dict[int, tuple] = {}  # id(generator) -> (generator, its state after each step of the block)
        self._left: dict[int, dict] = {}  # id(generator) -> the state this object last left it in

    def next(self, systems: Sequence[SystemSpec]) -> StepNoise:
        """The random numbers of the coming step, which count as drawn from now on."""
        if not self._still_valid(systems):
            self._draw(systems)
        j = self._cursor
        self._cursor += 1
        for key, (rng, states) in self._after.items():
            rng.bit_generator.state = self._left[key] = states[j]
        return StepNoise(bussi=None if self._bussi is None else self._bussi[j],
                         langevin=None if self._langevin is None else self._langevin[j])

    def select(self, keep: Sequence[int], rows: torch.Tensor) -> None:
        """Keep the drawn numbers of systems ``keep`` (in that order), whose atoms are ``rows``."""
        import torch

        keep = list(keep)
        self.counts = self.counts[keep]
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])
        drawing = [id(rng) for rng, kind in zip(self._rngs, self._kinds) if kind is not Integrator.NVE]
        if len(drawing) != len(set(drawing)):
            self._length = 0  # a shared generator's block interleaves the systems' draws in the old order
        if self._length == 0:
            return
        self._kinds = [self._kinds[b] for b in keep]
        self._rngs = [self._rngs[b] for b in keep]
        if self._bussi is not None:
            self._bussi = self._bussi[:, torch.as_tensor(keep, device=self._bussi.device)]
        if self._langevin is not None:
            self._langevin = self._langevin[:, :, rows]
        live = {id(self._rngs[b]) for b in range(len(keep)) if self._kinds[b] is not Integrator.NVE}
        self._after = {key: value for key, value in self._after.items() if key in live}

    def _still_valid(self, systems: Sequence[SystemSpec]) -> bool:
        if self._cursor >= self._length or len(systems) != len(self._kinds):
            return False
        for s, kind, rng in zip(systems, self._kinds, self._rngs):
            if s.integrator is not kind or s.rng is not rng:
                return False
        # a generator drawn from (or reset) outside since the last step: the block is no longer its stream
        return all(rng.bit_generator.state == self._left[id(rng)]
                   for rng, kind in zip(self._rngs, self._kinds) if kind is not Integrator.NVE)

    def _draw(self, systems: Sequence[SystemSpec]) -> None:
        import torch

        n_sys, n_atoms = len(systems), int(self.offsets[-1])
        kinds = [s.integrator for s in systems]
        bussi = [b for b, k in enumerate(kinds) if k is Integrator.BUSSI]
        langevin = [b for b, k in enumerate(kinds) if k is Integrator.LANGEVIN]
        bytes_per_step = 8 * (2 * n_sys * bool(bussi) + 6 * n_atoms * bool(langevin))
        steps = max(1, min(self.block_steps, BLOCK_BYTES // max(bytes_per_step, 1)))
        bussi_block = np.zeros((steps, n_sys, 2)) if bussi else None
        langevin_block = np.zeros((steps, 2, n_atoms, 3)) if langevin else None
        ahead: dict[int, np.random.Generator] = {}  # one copy per distinct generator, so shared ones interleave
        for b in bussi + langevin:
            ahead.setdefault(id(systems[b].rng), copy.deepcopy(systems[b].rng))
        after: dict[int, list[dict]] = {key: [] for key in ahead}
        for j in range(steps):
            for b in bussi:
                rng = ahead[id(systems[b].rng)]
                normal = rng.standard_normal()
                gamma_sum = 2.0 * rng.standard_gamma(0.5 * (3 * int(self.counts[b]) - 1))
                # R₁² summed here, in Python as before, so the device sees the same rounding
                bussi_block[j, b] = normal, gamma_sum + normal ** 2
            for b in langevin:
                rng = ahead[id(systems[b].rng)]
                lo, hi = self.offsets[b], self.offsets[b + 1]
                langevin_block[j, :, lo:hi] = rng.standard_normal(size=(2, hi - lo, 3))  # ξ then η
            for key, rng in ahead.items():
                after[key].append(rng.bit_generator.state)
        parts = [a.reshape(-1) for a in (bussi_block, langevin_block) if a is not None]
        flat = torch.as_tensor(np.concatenate(parts) if parts else np.zeros(0))
        if str(self.device).startswith("cuda"):
            # pinned, so the copy queues behind the running step instead of waiting for it to finish
            flat = flat.pin_memory().to(self.device, non_blocking=True)
        else:
            flat = flat.to(self.device)
        self._bussi = self._langevin = None
        if bussi_block is not None:
            self._bussi = flat[:bussi_block.size].view(bussi_block.shape)
        if langevin_block is not None:
            self._langevin = flat[flat.numel() - langevin_block.size:].view(langevin_block.shape)
        self._kinds, self._rngs = kinds, [s.rng for s in systems]
        self._after = {id(s.rng): (s.rng, after[id(s.rng)]) for s in systems if id(s.rng) in after}
        self._left = {key: rng.bit_generator.state for key, (rng, _) in self._after.items()}
        self._length, self._cursor = steps, 0
        self.n_blocks += 1


__all__ = ["BLOCK_STEPS", "NoiseBlocks", "StepNoise"]
