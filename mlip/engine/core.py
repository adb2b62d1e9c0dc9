"""A lean molecular-dynamics engine for MACE: many systems advanced together on MACE's own forward.

Why not ASE + ``MACECalculator``: every step there rebuilds the graph through mace-torch's data
pipeline (config → AtomicData → collate), recomputes the neighbour list, and asks for stress and
virials that NVT does not need — about 40 % of a step for a small model on a CPU. Why not torch-sim:
its releases that know Bussi thermostats need Python ≥ 3.12 (we run 3.11), the 3.11-compatible 0.3
rebuilds neighbour lists every step and has no Bussi thermostat, and neither writes our frame log or
checkpoints. So the engine is written here, on MACE's own ``forward``:

* the graph tensors are built directly: node attributes (one-hot species) once per batch, positions
  and shifts as tensors, no data loader;
* neighbour lists are Verlet lists with a skin: candidate pairs within ``r_max + skin`` are built on
  the CPU with matscipy and kept, in a canonical order, until some atom of that system has moved more
  than half the skin; every step the candidates are filtered to ``r < r_max``, so the model sees
  exactly the edges a fresh list would give, in an order that does not depend on when the list was
  built (results equal rebuilding every step, and a resumed run continues bit for bit);
* forces only (``compute_stress=False``): the engine runs NVE and NVT at fixed cell;
* the model runs in float32 by default; positions, momenta and the integrator run in float64.
  Energy conservation in float32 is checked by a test: NVE drift below ``NVE_DRIFT_BOUND_EV_PER_ATOM_PS``;
* many systems advance together: one model call per step over the disjoint union of their graphs,
  with per-system integrators (NVE, Bussi, Langevin — the same algorithms as ASE's ``VelocityVerlet``,
  ``Bussi`` and ``Langevin``, drawing the same random numbers in the same order from a per-system
  numpy generator, so a system's trajectory does not depend on which batch it ran in).

A system's trajectory does not depend on the batch it runs in beyond rounding: BLAS rounds a row's last
bit differently depending on the matrix shape, so batch composition leaves traces at 1e-16 relative
(tests check 1e-11 Å after 25 steps). For bitwise resumption the batch runner
(:mod:`screening.transport.batch_md`) changes a batch's composition only at checkpoints of all its
systems. On GPUs, atomic scatter-adds make the last bits vary from run to run, so resumption there is
statistical, not bitwise.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import logging
import math
from typing import Sequence

import numpy as np
from ase import units
from ase.data import chemical_symbols

from mlip._mace import import_mace
from mlip.errors import InputError, ModelDomainError

log = logging.getLogger(__name__)

DEFAULT_SKIN_A = 1.0
# Documented float32 bound (tests/test_engine.py measures it): |linear drift of the total energy| per
# atom per ps in NVE, float32 model, 1 fs time step, soft Li–P–S–Cl test system at ~600 K. Measured
# there: ~1.3e-6 in float32 and in float64 alike (the time step limits it, not the precision); the
# bound leaves room for stiffer, real potentials. Over a 100 ps run it is 0.01 eV/atom at most.
NVE_DRIFT_BOUND_EV_PER_ATOM_PS = 1.0e-4


class Integrator(enum.StrEnum):
    """How a system's momenta evolve (the ``value`` equals screening's thermostat names)."""

    NVE = "nve"  # velocity Verlet
    BUSSI = "bussi"  # stochastic velocity rescaling, then velocity Verlet (as ase.md.bussi.Bussi)
    LANGEVIN = "langevin"  # the Vanden-Eijnden–Ciccotti scheme of ase.md.langevin.Langevin (fixcm=False)


class BatchTooLarge(RuntimeError):
    """The model ran out of device memory on a batch; the caller splits it."""


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
                   time_constant_fs: float = 100.0, rng: np.random.Generator | None = None) -> "SystemSpec":
        return cls(
            numbers=atoms.numbers.copy(), cell=atoms.cell.array.copy(), positions=atoms.get_positions(),
            momenta=atoms.get_momenta(), masses=atoms.get_masses(), integrator=Integrator(integrator),
            temperature_K=float(temperature_K), timestep_fs=float(timestep_fs),
            time_constant_fs=float(time_constant_fs), rng=rng if rng is not None else np.random.default_rng(0),
            pbc=tuple(bool(p) for p in atoms.pbc),
        )


def _to_dtype(name: str):
    import torch

    if name not in ("float32", "float64"):
        raise InputError(f"dtype must be float32 or float64, got {name!r}")
    return getattr(torch, name)


class LeanMACE:
    """A MACE model evaluated on graph tensors the engine builds itself (energies and forces only)."""

    def __init__(self, module, *, device: str = "cpu", dtype: str = "float32", head: str | None = None,
                 model_ref: str | None = None, model_sha256: str | None = None, accelerated: bool = True):
        import_mace()
        import torch

        from mlip.engine.kernels import accelerate, tabulate_radial

        if not hasattr(module, "atomic_numbers") or not hasattr(module, "r_max"):
            raise InputError(f"{type(module).__name__} is not a MACE model (no atomic_numbers / r_max)")
        self.torch_dtype = _to_dtype(dtype)
        self.dtype = dtype
        self.device = device
        # dtype conversion and device moves are in place: the caller's module stays untouched
        self.module = copy.deepcopy(module)
        self.accelerated = accelerate(self.module) if accelerated else []
        if accelerated and dtype == "float32":  # float64 is the reference: exact radial functions there
            self.accelerated += tabulate_radial(self.module)
        self.module = self.module.to(device=device, dtype=self.torch_dtype)
        self.module.eval()
        for param in self.module.parameters():
            param.requires_grad_(False)
        self.atomic_numbers = tuple(int(z) for z in self.module.atomic_numbers)
        self._species_index = np.full(max(self.atomic_numbers) + 1, -1, dtype=np.int64)
        for k, z in enumerate(self.atomic_numbers):
            self._species_index[z] = k
        self.r_max_A = float(self.module.r_max)
        heads = list(getattr(self.module, "heads", None) or ["Default"])
        if head is None:
            head = heads[0] if len(heads) == 1 else next((h for h in heads if h.lower() == "default"), None)
            if head is None:
                raise InputError(f"the model has several heads ({', '.join(heads)}); name the one to use")
        elif head not in heads:
            raise InputError(f"model has no head {head!r}; available heads: {', '.join(heads)}")
        self.head_index = heads.index(head)
        self.model_ref = model_ref
        self.model_sha256 = model_sha256
        self.n_model_calls = 0

    @classmethod
    def from_loaded(cls, loaded, *, device: str = "auto", dtype: str = "float32", head: str | None = None,
                    accelerated: bool = True) -> "LeanMACE":
        """From a :class:`mlip.loader.LoadedModel` (keeps its reference and SHA-256 for provenance)."""
        from mlip.calculators import resolve_device

        return cls(loaded.module, device=resolve_device(device), dtype=dtype, head=head,
                   model_ref=loaded.ref, model_sha256=loaded.sha256, accelerated=accelerated)

    def species_index(self, numbers: np.ndarray) -> np.ndarray:
        numbers = np.asarray(numbers, dtype=np.int64)
        index = np.full(len(numbers), -1, dtype=np.int64)
        known = (numbers >= 0) & (numbers < len(self._species_index))
        index[known] = self._species_index[numbers[known]]
        if (index < 0).any():
            missing = sorted({int(z) for z in numbers[index < 0]})
            raise ModelDomainError(
                f"model {self.model_ref or '(in memory)'} does not cover element(s) "
                f"{', '.join(chemical_symbols[z] for z in missing)}; it covers "
                f"{', '.join(chemical_symbols[z] for z in self.atomic_numbers)}"
            )
        return index

    def forward(self, graph: "GraphBatch", edge_index, shifts) -> tuple:
        """Energies (B,) and forces (N, 3), both float64, for positions ``graph.model_positions``."""
        import torch

        data = {
            "positions": graph.model_positions(),
            "node_attrs": graph.node_attrs,
            "edge_index": edge_index,
            "shifts": shifts,
            "unit_shifts": shifts,  # read only for stress, which the engine never asks for
            "cell": graph.cell,
            "batch": graph.batch,
            "ptr": graph.ptr,
            "head": graph.head,
        }
        try:
            out = self.module(data, compute_force=True, compute_stress=False, training=False)
        except torch.OutOfMemoryError as err:
            if str(self.device).startswith("cuda"):
                torch.cuda.empty_cache()  # give the cached blocks back before the caller retries smaller batches
            raise BatchTooLarge(f"out of memory on {graph.n_systems} systems, {graph.n_atoms} atoms, "
                                f"{int(edge_index.shape[1])} edges: {err}") from err
        self.n_model_calls += 1
        return out["energy"].detach().to(torch.float64), out["forces"].detach().to(torch.float64)

    def evaluate(self, atoms_list: Sequence, skin_A: float = 0.0) -> list[tuple[float, np.ndarray]]:
        """(energy_eV, forces_eV_A) of each structure, in one model call (for checks and tests)."""
        graph = GraphBatch(self, [a.numbers for a in atoms_list], [a.cell.array for a in atoms_list],
                           [a.get_positions() for a in atoms_list], skin_A=skin_A,
                           pbc=[tuple(bool(p) for p in a.pbc) for a in atoms_list])
        energy, forces = graph.compute()
        energy, forces = energy.cpu().numpy(), forces.cpu().numpy()
        ptr = graph.ptr.cpu().numpy()
        return [(float(energy[b]), forces[ptr[b]:ptr[b + 1]].copy()) for b in range(len(atoms_list))]


def _candidate_pairs(positions: np.ndarray, cell: np.ndarray, pbc, cutoff: float):
    """Pairs within ``cutoff`` as (i, j, S) in canonical order (i, j, S lexicographic), no self pair."""
    from matscipy.neighbours import neighbour_list

    i, j, shift = neighbour_list("ijS", positions=positions, cell=cell, pbc=np.asarray(pbc), cutoff=cutoff)
    keep = ~((i == j) & np.all(shift == 0, axis=1))
    i, j, shift = i[keep], j[keep], shift[keep]
    order = np.lexsort((shift[:, 2], shift[:, 1], shift[:, 0], j, i))
    return i[order].astype(np.int64), j[order].astype(np.int64), shift[order].astype(np.int64)


class GraphBatch:
    """Positions, species and skin neighbour lists of several systems as one disjoint-union graph.

    ``positions`` (N, 3, float64, on the device) is the state; the model gets a copy in its dtype.
    """

    def __init__(self, model: LeanMACE, numbers: Sequence, cells: Sequence, positions: Sequence,
                 *, skin_A: float = DEFAULT_SKIN_A, pbc: Sequence | None = None):
        import torch

        self.model = model
        self.skin_A = float(skin_A)
        if self.skin_A < 0:
            raise InputError(f"neighbour-list skin must be ≥ 0 Å, got {skin_A}")
        dev, f64 = model.device, torch.float64
        self.n_systems = len(numbers)
        self.counts = np.array([len(z) for z in numbers], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])
        self.n_atoms = int(self.offsets[-1])
        self.numbers = [np.asarray(z, dtype=np.int64) for z in numbers]
        self.cells_np = [np.asarray(c, dtype=np.float64).reshape(3, 3) for c in cells]
        self.pbc = list(pbc) if pbc is not None else [(True, True, True)] * self.n_systems
        species = np.concatenate([model.species_index(z) for z in self.numbers])
        attrs = np.zeros((self.n_atoms, len(model.atomic_numbers)))
        attrs[np.arange(self.n_atoms), species] = 1.0
        self.node_attrs = torch.tensor(attrs, dtype=model.torch_dtype, device=dev)
        self.system_idx = torch.tensor(np.repeat(np.arange(self.n_systems), self.counts), device=dev)
        self.batch = self.system_idx
        self.ptr = torch.tensor(self.offsets, device=dev)
        self.head = torch.full((self.n_systems,), model.head_index, dtype=torch.long, device=dev)
        self.cell = torch.tensor(np.concatenate(self.cells_np), dtype=model.torch_dtype, device=dev)
        self.cells64 = torch.tensor(np.stack(self.cells_np), dtype=f64, device=dev)
        self.positions = torch.tensor(np.concatenate([np.asarray(p, dtype=np.float64) for p in positions]),
                                      dtype=f64, device=dev)
        self._model_positions = torch.empty((self.n_atoms, 3), dtype=model.torch_dtype, device=dev)
        self._lists: list = [None] * self.n_systems  # per system: (i, j, shift64, ref positions) on the device
        self._joined = None
        self.n_rebuilds = 0
        self.rebuild_every_step = False
        self.last_edges = None

    # -- neighbour lists ----------------------------------------------------------------------------
    def _build(self, b: int) -> None:
        import torch

        dev = self.model.device
        lo, hi = self.offsets[b], self.offsets[b + 1]
        pos = self.positions[lo:hi]
        pos_np = pos.cpu().numpy()
        i, j, s = _candidate_pairs(pos_np, self.cells_np[b], self.pbc[b], self.model.r_max_A + self.skin_A)
        shift = torch.tensor(s.astype(np.float64) @ self.cells_np[b], dtype=torch.float64, device=dev)
        self._lists[b] = (torch.tensor(i + lo, device=dev), torch.tensor(j + lo, device=dev), shift, pos.clone())
        self._joined = None
        self.n_rebuilds += 1

    def refresh_neighbours(self) -> None:
        """Rebuild the lists of systems where some atom moved more than half the skin since their build."""
        import torch

        stale = [b for b in range(self.n_systems) if self._lists[b] is None]
        if self.rebuild_every_step:
            stale = list(range(self.n_systems))
        elif len(stale) < self.n_systems:
            refs = torch.cat([self._lists[b][3] if self._lists[b] is not None else self.positions[self.offsets[b]:self.offsets[b + 1]]
                              for b in range(self.n_systems)])
            moved2 = ((self.positions - refs) ** 2).sum(dim=1)
            worst = torch.zeros(self.n_systems, dtype=moved2.dtype, device=moved2.device)
            worst.scatter_reduce_(0, self.system_idx, moved2, reduce="amax")
            limit = (0.5 * self.skin_A) ** 2
            stale = sorted(set(stale) | set(np.flatnonzero(worst.cpu().numpy() > limit).tolist()))
        for b in stale:
            self._build(b)

    def edges(self):
        """(edge_index, shifts in model dtype, edge lengths float64) of the pairs with r < r_max."""
        import torch

        self.refresh_neighbours()
        if self._joined is None:
            self._joined = tuple(torch.cat([lst[k] for lst in self._lists]) for k in range(3))
        ci, cj, cshift = self._joined
        vec = self.positions[cj] - self.positions[ci] + cshift
        d2 = (vec * vec).sum(dim=1)
        keep = torch.nonzero(d2 < self.model.r_max_A ** 2).squeeze(1)
        edge_index = torch.stack((ci[keep], cj[keep]))
        shifts = cshift[keep].to(self.model.torch_dtype)
        self.last_edges = (edge_index, d2[keep])
        return edge_index, shifts

    def model_positions(self):
        import torch

        with torch.no_grad():
            self._model_positions.copy_(self.positions)
        return self._model_positions

    def compute(self):
        """Energies (B,) and forces (N, 3) in float64 at the current positions (one model call)."""
        edge_index, shifts = self.edges()
        return self.model.forward(self, edge_index, shifts)

    def min_distances(self, numbers_radii, cutoff_A: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
        """Per system: shortest distance among the last edges (capped at ``cutoff_A``) and the shortest
        distance relative to the covalent-radius sum (pairs under ``cutoff_A`` only), as ``md.min_distance``."""
        import torch

        if self.last_edges is None or cutoff_A > self.model.r_max_A:
            raise InputError(f"minimum distances need the edges of the last step within {cutoff_A} Å "
                             f"(model cutoff {self.model.r_max_A} Å); call compute() first")
        edge_index, d2 = self.last_edges
        d = torch.sqrt(d2)
        inside = d < cutoff_A
        i, j, d = edge_index[0][inside], edge_index[1][inside], d[inside]
        rel = d / (numbers_radii[i] + numbers_radii[j])
        sys = self.system_idx[i]
        dmin = torch.full((self.n_systems,), cutoff_A, dtype=torch.float64, device=d.device)
        rmin = torch.full((self.n_systems,), cutoff_A, dtype=torch.float64, device=d.device)
        dmin.scatter_reduce_(0, sys, d, reduce="amin")
        rmin.scatter_reduce_(0, sys, rel, reduce="amin")
        return dmin.cpu().numpy(), rmin.cpu().numpy()


class MDBatch:
    """Several systems advanced together, one model call per step.

    Per system: integrator, temperature, time step and random-number generator. The state lives in
    float64 tensors on the model's device; ``positions(b)``/``momenta(b)`` copy one system out.
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
        self.momenta = torch.tensor(np.concatenate([s.momenta for s in systems]), dtype=f64, device=dev)
        self.masses = torch.tensor(np.concatenate([s.masses for s in systems]), dtype=f64, device=dev)[:, None]
        self._atom_dt = torch.tensor(np.repeat([s.timestep_fs * units.fs for s in systems], g.counts),
                                     dtype=f64, device=dev)[:, None]
        from ase.data import covalent_radii

        self._radii = torch.tensor(covalent_radii[np.concatenate(g.numbers)], dtype=f64, device=dev)
        self.energies, self.forces = g.compute()
        self.steps_taken = 0

    @property
    def n_systems(self) -> int:
        return self.graph.n_systems

    def _slice(self, b: int) -> slice:
        return slice(int(self.graph.offsets[b]), int(self.graph.offsets[b + 1]))

    def positions(self, b: int) -> np.ndarray:
        return self.graph.positions[self._slice(b)].cpu().numpy()

    def momenta_of(self, b: int) -> np.ndarray:
        return self.momenta[self._slice(b)].cpu().numpy()

    def forces_of(self, b: int) -> np.ndarray:
        return self.forces[self._slice(b)].cpu().numpy()

    def all_positions(self) -> list[np.ndarray]:
        pos = self.graph.positions.cpu().numpy()
        return [pos[self._slice(b)] for b in range(self.n_systems)]

    def potential_energies(self) -> np.ndarray:
        return self.energies.cpu().numpy().copy()

    def kinetic_energies(self):
        """Per-system kinetic energy (tensor, float64), as ASE's ``get_kinetic_energy``."""
        import torch

        per_atom = (self.momenta * self.momenta / self.masses).sum(dim=1) * 0.5
        out = torch.zeros(self.n_systems, dtype=torch.float64, device=per_atom.device)
        return out.index_add_(0, self.graph.system_idx, per_atom)

    def set_integrator(self, b: int, integrator: Integrator | str) -> None:
        self.systems[b].integrator = Integrator(integrator)

    def remove_com_momentum(self, b: int) -> None:
        """Zero the centre-of-mass momentum of system ``b``, keeping its temperature: ASE's ``Stationary``
        (``preserve_temperature=True``), applied through ASE itself so that both paths agree."""
        import torch
        from ase import Atoms
        from ase.md.velocitydistribution import Stationary

        sl = self._slice(b)
        atoms = Atoms(numbers=self.graph.numbers[b], masses=self.masses[sl, 0].cpu().numpy(),
                      momenta=self.momenta[sl].cpu().numpy())
        Stationary(atoms)
        self.momenta[sl] = torch.as_tensor(atoms.get_momenta(), dtype=self.momenta.dtype, device=self.momenta.device)

    def min_distances(self) -> tuple[np.ndarray, np.ndarray]:
        return self.graph.min_distances(self._radii)

    def select(self, keep: Sequence[int]) -> None:
        """Keep only systems ``keep`` (in that order); their state, forces and lists are carried over."""
        import torch

        keep = list(keep)
        if not keep:
            raise InputError("cannot keep an empty batch")
        g = self.graph
        atom_rows = np.concatenate([np.arange(g.offsets[b], g.offsets[b + 1]) for b in keep])
        rows = torch.tensor(atom_rows, device=g.positions.device)
        new = GraphBatch.__new__(GraphBatch)
        new.model, new.skin_A = g.model, g.skin_A
        new.n_systems = len(keep)
        new.counts = g.counts[keep]
        new.offsets = np.concatenate([[0], np.cumsum(new.counts)])
        new.n_atoms = int(new.offsets[-1])
        new.numbers = [g.numbers[b] for b in keep]
        new.cells_np = [g.cells_np[b] for b in keep]
        new.pbc = [g.pbc[b] for b in keep]
        new.node_attrs = g.node_attrs[rows]
        new.system_idx = torch.tensor(np.repeat(np.arange(new.n_systems), new.counts), device=rows.device)
        new.batch = new.system_idx
        new.ptr = torch.tensor(new.offsets, device=rows.device)
        new.head = g.head[: new.n_systems].clone()
        new.cell = torch.cat([g.cell[3 * b:3 * b + 3] for b in keep])
        new.cells64 = g.cells64[keep]
        new.positions = g.positions[rows].clone()
        new._model_positions = torch.empty_like(g._model_positions[: new.n_atoms])
        new._lists = []
        for k, b in enumerate(keep):
            lst = g._lists[b]
            if lst is None:
                new._lists.append(None)
                continue
            shift_by = int(new.offsets[k] - g.offsets[b])
            new._lists.append((lst[0] + shift_by, lst[1] + shift_by, lst[2], lst[3]))
        new._joined = None
        new.n_rebuilds = g.n_rebuilds
        new.rebuild_every_step = g.rebuild_every_step
        new.last_edges = None
        if g.last_edges is not None:  # renumbered, so min_distances() works before the next step
            old_to_new = torch.full((g.n_atoms,), -1, dtype=torch.long, device=rows.device)
            old_to_new[rows] = torch.arange(new.n_atoms, device=rows.device)
            edge_index, d2 = g.last_edges
            mapped = old_to_new[edge_index]
            inside = mapped[0] >= 0
            new.last_edges = (mapped[:, inside], d2[inside])
        self.graph = new
        self.systems = [self.systems[b] for b in keep]
        self.momenta = self.momenta[rows].clone()
        self.masses = self.masses[rows].clone()
        self._atom_dt = self._atom_dt[rows].clone()
        self._radii = self._radii[rows].clone()
        self.forces = self.forces[rows].clone()
        self.energies = self.energies[keep].clone()

    # -- one step ---------------------------------------------------------------------------------
    def _per_atom(self, values) -> "torch.Tensor":
        import torch

        return torch.as_tensor(np.repeat(values, self.graph.counts), dtype=torch.float64,
                               device=self.momenta.device)[:, None]

    def step(self) -> None:
        """Advance every system by one time step (one model call)."""
        import torch

        g, p, m, dt = self.graph, self.momenta, self.masses, self._atom_dt
        kinds = [s.integrator for s in self.systems]
        langevin = np.array([k is Integrator.LANGEVIN for k in kinds])
        bussi = np.array([k is Integrator.BUSSI for k in kinds])

        if bussi.any():
            kinetic = self.kinetic_energies().cpu().numpy()
            alpha = np.ones(self.n_systems)
            for b in np.flatnonzero(bussi):
                alpha[b] = _bussi_alpha(self.systems[b], kinetic[b], len(self.systems[b].numbers))
            p.mul_(self._per_atom(alpha))

        if langevin.any():
            lv = self._per_atom(langevin.astype(float))  # 1 for Langevin atoms, 0 otherwise
            c = self._langevin_coefficients()
            xi, eta = self._langevin_noise(langevin)
            rnd_pos = c["c5"] * eta
            rnd_vel = c["c3"] * xi - c["c4"] * eta
            v = p / m
            v_lan = v + (c["c1"] * self.forces / m - c["c2"] * v + rnd_vel)
            x = g.positions
            x_lan = x + dt * v_lan + rnd_pos
            v_lan = (x_lan - x - rnd_pos) / dt
        # velocity Verlet half kick and drift (NVE, Bussi)
        p_vv = p + 0.5 * dt * self.forces
        x_vv = g.positions + dt * p_vv / m
        if langevin.any():
            new_x = torch.where(lv > 0, x_lan, x_vv)
        else:
            new_x = x_vv
        g.positions = new_x
        energies, forces = g.compute()
        p_vv = p_vv + 0.5 * dt * forces
        if langevin.any():
            v_lan = v_lan + (c["c1"] * forces / m - c["c2"] * v_lan + rnd_vel)
            self.momenta = torch.where(lv > 0, v_lan * m, p_vv)
        else:
            self.momenta = p_vv
        self.energies, self.forces = energies, forces
        self.steps_taken += 1

    def _langevin_coefficients(self) -> dict:
        """ASE Langevin's c1…c5 per atom (friction 1/τ, temperature per system)."""
        s = self.systems
        fr = self._per_atom([1.0 / (x.time_constant_fs * units.fs) for x in s])
        temp = self._per_atom([x.temperature_K * units.kB for x in s])
        dt = self._atom_dt
        sigma = (2 * temp * fr / self.masses).sqrt()
        c5 = dt ** 1.5 * sigma / (2 * math.sqrt(3))
        return {
            "c1": dt / 2.0 - dt * dt * fr / 8.0,
            "c2": dt * fr / 2 - dt * dt * fr * fr / 8.0,
            "c3": dt.sqrt() * sigma / 2.0 - dt ** 1.5 * fr * sigma / 8.0,
            "c4": fr / 2.0 * c5,
            "c5": c5,
        }

    def _langevin_noise(self, langevin: np.ndarray):
        """ξ and η for Langevin systems (drawn as ASE draws them: ξ then η, each (n, 3)); zeros elsewhere."""
        import torch

        xi, eta = [], []
        for b, s in enumerate(self.systems):
            n = len(s.numbers)
            if langevin[b]:
                xi.append(s.rng.standard_normal(size=(n, 3)))
                eta.append(s.rng.standard_normal(size=(n, 3)))
            else:
                xi.append(np.zeros((n, 3)))
                eta.append(np.zeros((n, 3)))
        dev = self.momenta.device
        return (torch.tensor(np.concatenate(xi), dtype=torch.float64, device=dev),
                torch.tensor(np.concatenate(eta), dtype=torch.float64, device=dev))


def _bussi_alpha(system: SystemSpec, kinetic_energy: float, n_atoms: int) -> float:
    """Velocity scale factor of Bussi et al. (2007) eq. (A7), random numbers drawn as ase.md.bussi does."""
    ndof = 3 * n_atoms
    exp_term = math.exp(-system.timestep_fs / system.time_constant_fs)
    target = 0.5 * system.temperature_K * units.kB * ndof
    scaling = (1 - exp_term) * target / kinetic_energy / ndof
    normal = system.rng.standard_normal()
    gamma_sum = 2.0 * system.rng.standard_gamma(0.5 * (ndof - 1))
    return math.sqrt(exp_term + scaling * (gamma_sum + normal ** 2) + 2 * normal * math.sqrt(exp_term * scaling))


__all__ = ["LeanMACE", "MDBatch", "SystemSpec", "Integrator", "GraphBatch", "BatchTooLarge",
           "NVE_DRIFT_BOUND_EV_PER_ATOM_PS", "DEFAULT_SKIN_A"]
