"""The integrators as pure functions of the batched state: velocity Verlet (NVE), Bussi stochastic velocity
rescaling and ASE's Langevin scheme, each system with its own, mixed in one step with one model call.

The arithmetic is ASE's (``VelocityVerlet``, ``Bussi``, ``Langevin`` with ``fixcm=False``) operation for
operation, so float64 trajectories equal ASE's to rounding; the random numbers come from
:mod:`mlip.engine.noise`.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
from ase import units

from mlip.engine.state import MDState

if TYPE_CHECKING:
    import torch

    from mlip.engine.noise import StepNoise

# Documented float32 bound (tests/test_engine.py measures it): |linear drift of the total energy| per
# atom per ps in NVE, float32 model, 1 fs time step, soft Li–P–S–Cl test system at ~600 K. Measured
# there: ~1.3e-6 in float32 and in float64 alike (the time step limits it, not the precision); the
# bound leaves room for stiffer, real potentials. Over a 100 ps run it is 0.01 eV/atom at most.
NVE_DRIFT_BOUND_EV_PER_ATOM_PS = 1.0e-4

# positions -> (energies (B,), forces (N, 3)), float64: the one model call of a step
ForceField = Callable[["torch.Tensor"], tuple["torch.Tensor", "torch.Tensor"]]


class Integrator(enum.StrEnum):
    """How a system's momenta evolve (the ``value`` equals screening's thermostat names)."""

    NVE = "nve"  # velocity Verlet
    BUSSI = "bussi"  # stochastic velocity rescaling, then velocity Verlet (as ase.md.bussi.Bussi)
    LANGEVIN = "langevin"  # the Vanden-Eijnden–Ciccotti scheme of ase.md.langevin.Langevin (fixcm=False)


@dataclasses.dataclass(frozen=True)
class BussiParams:
    """Per-system constants of Bussi et al. (2007) eq. (A7), on the device; neutral for other systems."""

    systems: torch.Tensor  # (B,) bool, True where the system is Bussi-thermostatted
    exp_term: torch.Tensor  # (B,) exp(-Δt/τ_T)
    energy_term: torch.Tensor  # (B,) (1 - exp(-Δt/τ_T)) · target kinetic energy, eV
    ndof: torch.Tensor  # (B,) degrees of freedom, 3n


@dataclasses.dataclass(frozen=True)
class LangevinParams:
    """ASE Langevin's c1…c5 per atom (friction 1/τ, temperature of the atom's system), on the device."""

    atoms: torch.Tensor  # (N, 1) bool, True for atoms of Langevin systems
    c1: torch.Tensor
    c2: torch.Tensor
    c3: torch.Tensor
    c4: torch.Tensor
    c5: torch.Tensor


@dataclasses.dataclass(frozen=True)
class StepParams:
    """Everything a step needs besides the state and the random numbers; rebuilt only when settings change."""

    dt: torch.Tensor  # (N, 1) time step of each atom's system, ASE time
    bussi: BussiParams | None  # None when no system is Bussi-thermostatted
    langevin: LangevinParams | None  # None when no system is Langevin


def step_params(integrators: Sequence[Integrator], temperatures_K: Sequence[float], timesteps_fs: Sequence[float],
                time_constants_fs: Sequence[float], counts: np.ndarray, masses: torch.Tensor) -> StepParams:
    """The device-side constants of a batch's integrators (one host-to-device copy per quantity)."""
    import torch

    dev = masses.device

    def per_system(values) -> torch.Tensor:
        return torch.as_tensor(np.asarray(values, dtype=np.float64), device=dev)

    def per_atom(values) -> torch.Tensor:
        return torch.as_tensor(np.repeat(np.asarray(values, dtype=np.float64), counts), device=dev)[:, None]

    dt = per_atom([t * units.fs for t in timesteps_fs])
    bussi = [k is Integrator.BUSSI for k in integrators]
    langevin = [k is Integrator.LANGEVIN for k in integrators]
    bussi_params = langevin_params = None
    if any(bussi):
        exp_term, energy_term = np.ones(len(counts)), np.zeros(len(counts))
        for b in np.flatnonzero(bussi):
            ndof = 3 * int(counts[b])
            exp_term[b] = math.exp(-timesteps_fs[b] / time_constants_fs[b])
            target = 0.5 * temperatures_K[b] * units.kB * ndof
            # (1 - e) · target is the left-to-right start of ASE's (1 - e) · target / K / ndof: same rounding
            energy_term[b] = (1 - exp_term[b]) * target
        bussi_params = BussiParams(systems=torch.as_tensor(bussi, device=dev), exp_term=per_system(exp_term),
                                   energy_term=per_system(energy_term), ndof=per_system(3 * counts))
    if any(langevin):
        # other systems get harmless values: their Langevin branch is computed and then discarded
        fr = per_atom([1.0 / (tau * units.fs) if lv else 1.0 for tau, lv in zip(time_constants_fs, langevin)])
        temp = per_atom([t * units.kB if lv else 1.0 for t, lv in zip(temperatures_K, langevin)])
        sigma = (2 * temp * fr / masses).sqrt()
        c5 = dt ** 1.5 * sigma / (2 * math.sqrt(3))
        langevin_params = LangevinParams(
            atoms=torch.as_tensor(np.repeat(langevin, counts), device=dev)[:, None],
            c1=dt / 2.0 - dt * dt * fr / 8.0,
            c2=dt * fr / 2 - dt * dt * fr * fr / 8.0,
            c3=dt.sqrt() * sigma / 2.0 - dt ** 1.5 * fr * sigma / 8.0,
            c4=fr / 2.0 * c5,
            c5=c5,
        )
    return StepParams(dt=dt, bussi=bussi_params, langevin=langevin_params)


def _two_product(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """a·b = p + e exactly (Dekker, with Veltkamp's split; no FMA needed), for |a|, |b| well below 1e300."""
    split = 134217729.0  # 2**27 + 1
    p = a * b
    c = split * a
    a_hi = c - (c - a)
    a_lo = a - a_hi
    c = split * b
    b_hi = c - (c - b)
    b_lo = b - b_hi
    return p, ((a_hi * b_hi - p) + a_hi * b_lo + a_lo * b_hi) + a_lo * b_lo


def sqrt_rn(x: torch.Tensor) -> torch.Tensor:
    """The correctly rounded float64 square root, as ``math.sqrt`` (and ASE's Bussi) gives it.

    torch's CPU kernels (MKL/Sleef) are only faithful: about 1 % of results differ from ``math.sqrt`` in
    the last bit. Tuckerman's test, with exact products, moves such a result to its neighbour:
    y = RN(√x) exactly when y⁻·y < x ≤ y·y⁺. On CUDA the square root is already exact and this changes nothing.
    """
    import torch

    y = torch.sqrt(x)
    up = torch.nextafter(y, torch.full_like(y, math.inf))
    down = torch.nextafter(y, torch.zeros_like(y))
    p, e = _two_product(y, up)
    too_small = (x - p) > e  # x - p is exact (Sterbenz): p is within a few ulps of x
    p, e = _two_product(down, y)
    too_large = (x - p) <= e
    return torch.where(too_small, up, torch.where(too_large, down, y))


def bussi_rescale(state: MDState, params: BussiParams, noise: torch.Tensor) -> MDState:
    """Bussi's stochastic velocity rescaling, eq. (A7), on the device; ``noise`` (B, 2) holds per system R₁
    and Σᵢ Rᵢ² over all degrees of freedom (``mlip.engine.noise``). Other systems keep their momenta."""
    import torch

    normal, sum_of_squares = noise[:, 0], noise[:, 1]
    scaling = params.energy_term / state.kinetic_energies() / params.ndof
    alpha = sqrt_rn(params.exp_term + scaling * sum_of_squares + 2 * normal * sqrt_rn(params.exp_term * scaling))
    alpha = torch.where(params.systems, alpha, 1.0)
    return dataclasses.replace(state, momenta=state.momenta * alpha[state.system_idx][:, None])


def verlet_drift(state: MDState, dt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Velocity Verlet's half kick and drift: (new positions, half-step momenta)."""
    p_half = state.momenta + 0.5 * dt * state.forces
    return state.positions + dt * p_half / state.masses, p_half


def verlet_kick(p_half: torch.Tensor, forces: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
    """Velocity Verlet's second half kick with the forces at the new positions."""
    return p_half + 0.5 * dt * forces


@dataclasses.dataclass(frozen=True)
class LangevinHalfStep:
    """What ASE's Langevin step carries from before the force call to after it."""

    velocities: torch.Tensor  # (N, 3) Å/ASE-time
    rnd_vel: torch.Tensor  # (N, 3)


def langevin_drift(state: MDState, dt: torch.Tensor, c: LangevinParams,
                   noise: torch.Tensor) -> tuple[torch.Tensor, LangevinHalfStep]:
    """ASE Langevin's first half: new positions from ξ, η = ``noise[0]``, ``noise[1]`` (each (N, 3))."""
    xi, eta = noise[0], noise[1]
    m, x = state.masses, state.positions
    rnd_pos = c.c5 * eta
    rnd_vel = c.c3 * xi - c.c4 * eta
    v = state.momenta / m
    v = v + (c.c1 * state.forces / m - c.c2 * v + rnd_vel)
    x_new = x + dt * v + rnd_pos
    v = (x_new - x - rnd_pos) / dt  # ASE's "recalc velocities after RATTLE", kept for equal rounding
    return x_new, LangevinHalfStep(velocities=v, rnd_vel=rnd_vel)


def langevin_kick(half: LangevinHalfStep, forces: torch.Tensor, masses: torch.Tensor,
                  c: LangevinParams) -> torch.Tensor:
    """ASE Langevin's second half: momenta with the forces at the new positions."""
    v = half.velocities + (c.c1 * forces / masses - c.c2 * half.velocities + half.rnd_vel)
    return v * masses


def md_step(state: MDState, params: StepParams, noise: StepNoise | None, force_field: ForceField) -> MDState:
    """One time step of every system with one call of ``force_field``: Bussi systems are rescaled, then
    Langevin systems take ASE's Langevin step and all others velocity Verlet."""
    import torch

    if params.bussi is not None:
        state = bussi_rescale(state, params.bussi, noise.bussi)
    x, p_half = verlet_drift(state, params.dt)
    if params.langevin is not None:
        x_lan, lan_half = langevin_drift(state, params.dt, params.langevin, noise.langevin)
        x = torch.where(params.langevin.atoms, x_lan, x)
    energies, forces = force_field(x)
    momenta = verlet_kick(p_half, forces, params.dt)
    if params.langevin is not None:
        momenta = torch.where(params.langevin.atoms, langevin_kick(lan_half, forces, state.masses, params.langevin),
                              momenta)
    return dataclasses.replace(state, positions=x, momenta=momenta, energies=energies, forces=forces)


__all__ = ["NVE_DRIFT_BOUND_EV_PER_ATOM_PS", "Integrator", "StepParams", "bussi_rescale", "langevin_drift",
           "langevin_kick", "md_step", "sqrt_rn", "step_params", "verlet_drift", "verlet_kick"]
