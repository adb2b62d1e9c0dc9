"""Climbing-image NEB between two endpoint structures with any ASE calculator or a batched MACE model.

Steps: relax both endpoints at fixed cell, interpolate (IDPP by default), relax the band with the
improved-tangent NEB (Henkelman & Jónsson 2000) — first without, then with the climbing image —
to a force tolerance within a step budget. With a batched evaluator (:class:`mlip.backends.BatchedEvaluator`, e.g. MACE's) the moving
images of the band go to the model together, in batches whose size is measured on this band.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from mlip.errors import InputError, SimulationFailed
from screening.cells import MAX_SIMULATION_ATOMS, MAX_SUPERCELL_LENGTH_A
from screening.neb.results import NebFlag

# An interior image this far (eV) below both endpoints means the path holds another minimum.
INTERMEDIATE_MINIMUM_TOL_EV = 0.01
MAX_FORCE_EV_A = 10.0  # a force tolerance above this accepts any structure (NEB and the transport relaxation)
MAX_OPTIMIZER_STEPS = 100_000  # step budgets (band, each endpoint, the transport protocol's relaxation)


class OptimizerKind(enum.StrEnum):
    FIRE = "fire"
    BFGS = "bfgs"
    MDMIN = "mdmin"


class Interpolation(enum.StrEnum):
    IDPP = "idpp"
    LINEAR = "linear"


class PathConvention(enum.StrEnum):
    """Which periodic image of the moving ion's displacement the band follows (the other atoms always take the
    shortest one)."""

    MINIMUM_IMAGE = "minimum-image"  # the shortest image: what two wrapped structure files usually mean
    AS_GIVEN = "as-given"  # final minus initial position as written: a published band's own path


def optimizer_class(kind: OptimizerKind):
    from ase.optimize import BFGS, FIRE, MDMin

    return {OptimizerKind.FIRE: FIRE, OptimizerKind.BFGS: BFGS, OptimizerKind.MDMIN: MDMin}[OptimizerKind(kind)]


class NebParameters(BaseModel):
    """Everything that decides a NEB result (recorded, hashed, in provenance)."""

    # Bounds: physical ranges and affordable sizes; no value changes, so no protocol hash changes.
    model_config = ConfigDict(extra="forbid", use_enum_values=True, allow_inf_nan=False)

    n_images: int = Field(5, ge=1, le=64, description="Moving images between the endpoints.")
    fmax_eV_A: float = Field(0.05, gt=0, le=MAX_FORCE_EV_A, description="Band force tolerance (max per-atom NEB force), eV/Å.")
    max_steps: int = Field(500, ge=0, le=MAX_OPTIMIZER_STEPS, description="Optimizer step budget for the band (both stages).")
    climb: bool = Field(True, description="Climbing image (the highest image climbs to the saddle).")
    pre_climb_fmax_eV_A: float | None = Field(
        0.5, gt=0, le=MAX_FORCE_EV_A, description="Relax without climbing until this force first; None: climb from the start.")
    spring_constant_eV_A2: float = Field(0.1, gt=0, le=100.0, description="NEB spring constant, eV/Å².")
    optimizer: OptimizerKind = Field(OptimizerKind.FIRE, description="Band optimizer.")
    interpolation: Interpolation = Field(Interpolation.IDPP, description="Initial band guess.")
    relax_endpoints: bool = Field(True, description="Relax both endpoints (fixed cell) before the band.")
    endpoint_fmax_eV_A: float = Field(0.02, gt=0, le=MAX_FORCE_EV_A, description="Endpoint force tolerance, eV/Å.")
    endpoint_max_steps: int = Field(300, ge=0, le=MAX_OPTIMIZER_STEPS, description="Optimizer step budget per endpoint.")
    endpoint_optimizer: OptimizerKind = Field(OptimizerKind.BFGS, description="Endpoint optimizer.")
    drift_tolerance_A: float = Field(
        0.5, gt=0, le=10.0, description="Moving-ion displacement during endpoint relaxation that raises endpoint_drifted, Å.")
    min_length_A: float = Field(8.0, gt=0, le=MAX_SUPERCELL_LENGTH_A,
                                description="Every supercell lattice vector at least this long, Å.")
    max_atoms: int | None = Field(None, ge=1, le=MAX_SIMULATION_ATOMS,
                                  description="Refuse supercells with more atoms than this.")
    batch_size: int | None = Field(
        None, ge=1, le=64, description="Images per model call (batched MACE); None: measured on the band and cached.")


@dataclasses.dataclass
class BandOutcome:
    """What a band relaxation produced (plain data; the driver turns it into a result document)."""

    images: list  # ase.Atoms with frozen energy/forces (SinglePointCalculator)
    energies_eV: np.ndarray  # all images, endpoints included
    reaction_coordinate_A: np.ndarray
    fit_reaction_coordinate_A: np.ndarray
    fit_energies_rel_eV: np.ndarray  # relative to the initial state
    neb_converged: bool
    endpoints_converged: tuple[bool, bool]
    steps: int
    endpoint_steps: tuple[int, int]
    max_force_eV_A: float
    endpoint_drift_A: tuple[float, float] | None
    flags: list[NebFlag]
    batch_choice: object | None = None  # mlip.batched.BatchSizeChoice

    @property
    def converged(self) -> bool:
        return self.neb_converged and all(self.endpoints_converged)

    @property
    def saddle_energy_eV(self) -> float:
        return float(np.max(self.energies_eV))

    @property
    def barrier_forward_eV(self) -> float:
        return self.saddle_energy_eV - float(self.energies_eV[0])

    @property
    def barrier_backward_eV(self) -> float:
        return self.saddle_energy_eV - float(self.energies_eV[-1])

    def barrier_intervals_eV(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """(forward, backward) intervals spanning the image maximum and the force-interpolated maximum."""
        fit_max = float(np.max(self.fit_energies_rel_eV)) + float(self.energies_eV[0])
        lo, hi = sorted((self.saddle_energy_eV, max(fit_max, self.saddle_energy_eV)))
        e0, e1 = float(self.energies_eV[0]), float(self.energies_eV[-1])
        return (lo - e0, hi - e0), (lo - e1, hi - e1)


def _is_batched(engine) -> bool:
    from mlip.backends import BatchedEvaluator

    return isinstance(engine, BatchedEvaluator)


def _check_endpoints(initial, final) -> None:
    if len(initial) != len(final) or np.any(initial.numbers != final.numbers):
        raise InputError("initial and final structures must have the same atoms in the same order")
    if not np.allclose(initial.cell.array, final.cell.array, atol=1e-6):
        raise InputError("initial and final structures must share the cell (NEB at fixed cell)")
    if np.any(initial.pbc != final.pbc):
        raise InputError("initial and final structures must have the same periodic directions")


def _freeze(atoms, energy: float, forces: np.ndarray) -> None:
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms.calc = SinglePointCalculator(atoms, energy=float(energy), forces=np.array(forces))


def _relax(atoms, params: NebParameters) -> tuple[bool, int]:
    if not params.relax_endpoints:
        return True, 0
    opt = optimizer_class(params.endpoint_optimizer)(atoms, logfile=None)
    converged = bool(opt.run(fmax=params.endpoint_fmax_eV_A, steps=params.endpoint_max_steps))
    return converged, int(opt.nsteps)


def _check_finite(energy: float, forces: np.ndarray, what: str) -> None:
    if not (math.isfinite(energy) and np.all(np.isfinite(forces))):
        raise SimulationFailed(f"non-finite energy or forces for the {what}")


def run_band(
    initial,
    final,
    engine,
    params: NebParameters | None = None,
    *,
    moving_index: int | None = None,
    home: str | Path | None = None,
    path: PathConvention = PathConvention.MINIMUM_IMAGE,
) -> BandOutcome:
    """Relax endpoints and a climbing-image NEB band between ``initial`` and ``final`` (ASE Atoms).

    ``engine`` is any ASE calculator (shared by all images) or a :class:`mlip.backends.BatchedEvaluator`
    (images evaluated together in batches). The inputs are not modified. ``moving_index`` (the
    hopping atom) enables the endpoint-drift check. ``home`` is where batch-size measurements are
    cached (default $IONSCREEN_HOME). ``path`` ``as-given`` keeps the moving atom's displacement as written
    (needs ``moving_index``); every other atom, and by default the moving one too, takes its shortest image.
    """
    from ase.calculators.calculator import Calculator
    from ase.geometry import find_mic
    from ase.mep import NEB
    from ase.mep.neb import idpp_interpolate
    from ase.utils.forcecurve import fit_raw

    params = params or NebParameters()
    _check_endpoints(initial, final)
    batched = _is_batched(engine)
    if not batched and not isinstance(engine, Calculator):
        raise InputError(f"engine must be an ASE calculator or a batched evaluator, got {type(engine).__name__}")

    path = PathConvention(path)
    if path is PathConvention.AS_GIVEN and moving_index is None:
        raise InputError("the as-given path needs the index of the moving atom (moving_index)")
    start, end = initial.copy(), final.copy()
    # One consistent unwrapping: ASE's NEB tangents and springs use plain position differences.
    step = find_mic(end.positions - start.positions, start.cell, start.pbc)[0]
    if path is PathConvention.AS_GIVEN:
        step[moving_index] = final.positions[moving_index] - initial.positions[moving_index]
    end.positions = start.positions + step
    endpoint_converged, endpoint_steps, drift = [], [], []
    for atoms in (start, end):
        before = atoms.positions.copy()
        atoms.calc = engine.calculator() if batched else engine
        ok, steps = _relax(atoms, params)
        energy, forces = float(atoms.get_potential_energy()), atoms.get_forces(apply_constraint=False)
        _check_finite(energy, forces, "endpoint")
        endpoint_converged.append(ok)
        endpoint_steps.append(steps)
        if moving_index is not None:
            drift.append(float(np.linalg.norm(atoms.positions[moving_index] - before[moving_index])))
        _freeze(atoms, energy, forces)

    images = [start] + [start.copy() for _ in range(params.n_images)] + [end]
    neb = NEB(images, k=params.spring_constant_eV_A2, climb=False, method="improvedtangent",
              allow_shared_calculator=not batched)
    neb.interpolate(method="linear", mic=False, apply_constraint=False)
    if params.interpolation == Interpolation.IDPP:
        idpp_interpolate(neb, traj=None, log=None, mic=True)

    batch_choice = None
    if batched:
        from mlip.batched import ImageGroup, choose_batch_size

        batch_choice = choose_batch_size(engine, images[1:-1], home=home, configured=params.batch_size)
        ImageGroup(engine, batch_choice.batch_size).attach(images[1:-1])
    else:
        for atoms in images[1:-1]:
            atoms.calc = engine

    opt_cls = optimizer_class(params.optimizer)
    steps_used = 0
    two_stage = params.climb and params.pre_climb_fmax_eV_A is not None and params.pre_climb_fmax_eV_A > params.fmax_eV_A
    if two_stage:
        opt = opt_cls(neb, logfile=None)
        opt.run(fmax=params.pre_climb_fmax_eV_A, steps=params.max_steps)
        steps_used += int(opt.nsteps)
    neb.climb = params.climb
    opt = opt_cls(neb, logfile=None)
    neb_converged = bool(opt.run(fmax=params.fmax_eV_A, steps=max(0, params.max_steps - steps_used)))
    steps_used += int(opt.nsteps)

    neb_forces = neb.get_forces().reshape(-1, 3)
    max_force = float(np.linalg.norm(neb_forces, axis=1).max()) if len(neb_forces) else 0.0
    energies = np.array(neb.energies, dtype=float)
    real_forces = np.array(neb.real_forces, dtype=float)
    if not (np.all(np.isfinite(energies)) and np.all(np.isfinite(neb_forces))):
        raise SimulationFailed("non-finite energies or forces on the NEB band")
    neb_converged = neb_converged and max_force <= params.fmax_eV_A
    for i, atoms in enumerate(images[1:-1], start=1):
        _freeze(atoms, energies[i], real_forces[i])

    fit = fit_raw(energies, [a.get_forces() for a in images], [a.positions for a in images],
                  images[0].cell, images[0].pbc)

    flags = []
    if not neb_converged:
        flags.append(NebFlag.NEB_NOT_CONVERGED)
    if not all(endpoint_converged):
        flags.append(NebFlag.ENDPOINT_NOT_CONVERGED)
    if drift and max(drift) > params.drift_tolerance_A:
        flags.append(NebFlag.ENDPOINT_DRIFTED)
    if energies[1:-1].min() < min(energies[0], energies[-1]) - INTERMEDIATE_MINIMUM_TOL_EV:
        flags.append(NebFlag.INTERMEDIATE_MINIMUM)
    return BandOutcome(
        images=images,
        energies_eV=energies,
        reaction_coordinate_A=np.asarray(fit.path, dtype=float),
        fit_reaction_coordinate_A=np.asarray(fit.fit_path, dtype=float),
        fit_energies_rel_eV=np.asarray(fit.fit_energies, dtype=float),
        neb_converged=neb_converged,
        endpoints_converged=(endpoint_converged[0], endpoint_converged[1]),
        steps=steps_used,
        endpoint_steps=(endpoint_steps[0], endpoint_steps[1]),
        max_force_eV_A=max_force,
        endpoint_drift_A=(drift[0], drift[1]) if drift else None,
        flags=flags,
        batch_choice=batch_choice,
    )
