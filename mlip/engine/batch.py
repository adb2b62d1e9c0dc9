"""Many MD systems advanced together, one model call per step: :class:`MDBatch` ties the batched state,
the neighbour lists, the MACE adapter, the integrators and the pre-drawn random numbers together.

A step keeps everything on the device: kinetic energies and Bussi factors are computed there, random
numbers arrive once per block of steps, and the only host synchronisation is the edge count of the
neighbour filter (plus list rebuilds when some atom has moved half the skin).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Sequence

import numpy as np

from mlip.engine.integrators import Integrator, StepParams, md_step, step_params
from mlip.engine.mace_model import LeanMACE
from mlip.engine.neighbours import DEFAULT_SKIN_A, GraphBatch
from mlip.engine.noise import NoiseBlocks
from mlip.engine.state import MDState
from mlip.errors import InputError

if TYPE_CHECKING:
    import torch


@dataclasses.dataclass
class SystemSpec:
    """One system to advance: starting state and its integrator settings (ASE units inside)."""

    numbers: np.ndarray  # (n,) atomic numbers
    cell: np.ndarray  # (3, 3) Å
    positions: np.ndarray  # (n, 3) Å
    momenta: np.ndarray  # (n, 3) amu·Å/ASE-time
    masses: np.ndarray  # (n,) amu
    integrator: Integrator
    temperature_K: float
    timestep_fs: float
    time_constant_fs: float  # Bussi τ_T, or 1/friction for Langevin
    rng: np.random.Generator
    pbc: tuple[bool, bool, bool] = (True, True, True)

    @classmethod
    def from_atoms(cls, atoms, *, integrator: Integrator | str, temperature_K: float, timestep_fs: float,
                   time_constant_fs: float = 100.0, rng: np.random.Generator | None = None) -> SystemSpec:
        return cls(
            numbers=atoms.numbers.copy(), cell=atoms.cell.array.copy(), positions=atoms.get_positions(),
            momenta=atoms.get_momenta(), masses=atoms.get_masses(), integrator=Integrator(integrator),
            temperature_K=float(temperature_K), timestep_fs=float(timestep_fs),
            time_constant_fs=float(time_constant_fs), rng=rng if rng is not None else np.random.default_rng(0),
            pbc=tuple(bool(p) for p in atoms.pbc),
        )


class MDBatch:
    """Several systems advanced together, one model call per step.

    Per system: integrator, temperature, time step and random-number generator. The state
    (:class:`mlip.engine.state.MDState`) lives in float64 tensors on the model's device;
    ``positions(b)``/``momenta_of(b)`` copy one system out. Between steps each system's ``rng`` stands
    exactly where drawing step by step would leave it, so checkpointing it resumes the same stream.
    """

    def __init__(self, model: LeanMACE, systems: Sequence[SystemSpec], *, skin_A: float = DEFAULT_SKIN_A):
        import torch

        if not systems:
            raise InputError("an MD batch needs at least one system")
        self.model = model
        self.systems = list(systems)
        for s in self.systems:
            if s.temperature_K < 0 or (s.integrator is not Integrator.NVE and s.temperature_K <= 0):
                raise InputError(f"temperature must be positive, got {s.temperature_K} K")
            if s.timestep_fs <= 0:
                raise InputError(f"time step must be positive, got {s.timestep_fs} fs")
        self.graph = GraphBatch(model, [s.numbers for s in systems], [s.cell for s in systems],
                                [s.positions for s in systems], skin_A=skin_A, pbc=[s.pbc for s in systems])
        dev, f64 = model.device, torch.float64
        g = self.graph
        from ase.data import covalent_radii

        self._radii = torch.tensor(covalent_radii[np.concatenate(g.numbers)], dtype=f64, device=dev)
        energies, forces = g.compute()
        self.state = MDState(
            positions=g.positions,
            momenta=torch.tensor(np.concatenate([s.momenta for s in systems]), dtype=f64, device=dev),
            masses=torch.tensor(np.concatenate([s.masses for s in systems]), dtype=f64, device=dev)[:, None],
            cells=g.cells64, system_idx=g.system_idx, energies=energies, forces=forces,
        )
        self.noise = NoiseBlocks(g.counts, dev)
        self._params: tuple[tuple, StepParams] | None = None
        self.steps_taken = 0

    # -- the state, per system and as tensors -------------------------------------------------------
    @property
    def n_systems(self) -> int:
        return self.graph.n_systems

    @property
    def momenta(self) -> torch.Tensor:
        return self.state.momenta

    @property
    def masses(self) -> torch.Tensor:
        return self.state.masses

    @property
    def forces(self) -> torch.Tensor:
        return self.state.forces

    @property
    def energies(self) -> torch.Tensor:
        return self.state.energies

    def _slice(self, b: int) -> slice:
        return slice(int(self.graph.offsets[b]), int(self.graph.offsets[b + 1]))

    # The graph's positions are the state's, except after a step that failed in the model call: then they
    # are the positions that step tried, where a caller looks for the non-finite values that broke it.
    def positions(self, b: int) -> np.ndarray:
        return self.graph.positions[self._slice(b)].cpu().numpy()

    def momenta_of(self, b: int) -> np.ndarray:
        return self.state.momenta[self._slice(b)].cpu().numpy()

    def forces_of(self, b: int) -> np.ndarray:
        return self.state.forces[self._slice(b)].cpu().numpy()

    def all_positions(self) -> list[np.ndarray]:
        pos = self.graph.positions.cpu().numpy()
        return [pos[self._slice(b)] for b in range(self.n_systems)]

    def potential_energies(self) -> np.ndarray:
        return self.state.energies.cpu().numpy().copy()

    def kinetic_energies(self) -> torch.Tensor:
        """Per-system kinetic energy (tensor, float64), as ASE's ``get_kinetic_energy``."""
        return self.state.kinetic_energies()

    def min_distances(self) -> tuple[np.ndarray, np.ndarray]:
        return self.graph.min_distances(self._radii)

    # -- changing the batch -------------------------------------------------------------------------
    def set_integrator(self, b: int, integrator: Integrator | str) -> None:
        self.systems[b].integrator = Integrator(integrator)

    def remove_com_momentum(self, b: int) -> None:
        """Zero the centre-of-mass momentum of system ``b``, keeping its temperature: ASE's ``Stationary``
        (``preserve_temperature=True``), applied through ASE itself so that both paths agree."""
        import torch
        from ase import Atoms
        from ase.md.velocitydistribution import Stationary

        sl = self._slice(b)
        atoms = Atoms(numbers=self.graph.numbers[b], masses=self.state.masses[sl, 0].cpu().numpy(),
                      momenta=self.state.momenta[sl].cpu().numpy())
        Stationary(atoms)
        momenta = self.state.momenta.clone()
        momenta[sl] = torch.as_tensor(atoms.get_momenta(), dtype=momenta.dtype, device=momenta.device)
        self.state = dataclasses.replace(self.state, momenta=momenta)

    def select(self, keep: Sequence[int]) -> None:
        """Keep only systems ``keep`` (in that order); their state, forces, lists and drawn random numbers
        are carried over."""
        import torch

        keep = list(keep)
        if not keep:
            raise InputError("cannot keep an empty batch")
        g = self.graph
        atom_rows = np.concatenate([np.arange(g.offsets[b], g.offsets[b + 1]) for b in keep])
        rows = torch.tensor(atom_rows, device=g.positions.device)
        self.graph = g.select(keep, rows)
        self.state = self.state.select(keep, rows, self.graph.counts)
        self.graph.positions = self.state.positions
        self.noise.select(keep, rows)
        self.systems = [self.systems[b] for b in keep]
        self._radii = self._radii[rows].clone()
        self._params = None

    # -- one step -----------------------------------------------------------------------------------
    def _step_params(self) -> StepParams:
        """The integrators' device constants, rebuilt only when a system's settings changed."""
        key = tuple((s.integrator, s.temperature_K, s.timestep_fs, s.time_constant_fs) for s in self.systems)
        if self._params is None or self._params[0] != key:
            s = self.systems
            params = step_params([x.integrator for x in s], [x.temperature_K for x in s], [x.timestep_fs for x in s],
                                 [x.time_constant_fs for x in s], self.graph.counts, self.state.masses)
            self._params = (key, params)
        return self._params[1]

    def _force_field(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.graph.positions = positions
        return self.graph.compute()

    def step(self) -> None:
        """Advance every system by one time step (one model call)."""
        params = self._step_params()
        stochastic = params.bussi is not None or params.langevin is not None
        noise = self.noise.next(self.systems) if stochastic else None
        self.state = md_step(self.state, params, noise, self._force_field)
        self.steps_taken += 1


__all__ = ["MDBatch", "SystemSpec"]
