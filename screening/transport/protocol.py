"""The transport protocol as data: what MD to run and how to analyse it, hashable and stored with results.

Presets: ``quick`` (CPU demos and tests: minutes on ~100 atoms with a small model), ``standard``
(what a paper would use: ≥ 4 temperatures, 100 ps production each, cells ≥ 10 Å across — GPU work),
and ``custom`` (any values, validated).
"""

from __future__ import annotations

import copy
import enum
import functools
from importlib import resources
from typing import Annotated

import yaml

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from mlip.errors import InputError
from mlip.util import canonical_sha256
from screening.cells import MAX_SUPERCELL_LENGTH_A
from screening.neb.band import MAX_FORCE_EV_A, MAX_OPTIMIZER_STEPS
from screening.transport.diffusion import FitWindow


class Thermostat(enum.StrEnum):
    BUSSI = "bussi"  # stochastic velocity rescaling: canonical, barely perturbs dynamics
    LANGEVIN = "langevin"  # strong coupling, for equilibration; friction slows diffusion


class MDEngine(enum.StrEnum):
    LEAN = "lean"  # mlip.engine: every temperature in one batched model call per step, no calculator overhead
    ASE = "ase"  # ASE dynamics with MACE's ASE calculator, one temperature at a time (any ASE calculator)


# Bounds of every field: physical ranges (a 10^9 K temperature is a typo) and sizes a run can afford.
# They change no value, so no protocol hash; ``allow_inf_nan=False`` refuses .inf and .nan everywhere.
MIN_TEMPERATURE_K = 50.0  # below this an MSD fit sees no hop in any affordable run
MAX_TEMPERATURE_K = 5000.0  # above this every inorganic solid has melted
MAX_TEMPERATURES = 32  # an Arrhenius fit needs 3-8 points
MAX_RUN_PS = 10_000.0  # 10 ns per temperature: production, budget, extension, equilibration
MAX_FRAMES_PER_TEMPERATURE = 500_000  # stored frames of one temperature (10 ns every 20 fs)
MAX_SEED = 2**63 - 1  # numpy and torch take 64-bit seeds (every seed of a job file)
# The supercell length, relaxation force and step bounds are shared with NEB (screening.cells, screening.neb.band).

PositiveFloat = Annotated[float, Field(gt=0)]
Temperature = Annotated[float, Field(ge=MIN_TEMPERATURE_K, le=MAX_TEMPERATURE_K)]


class AnalysisSettings(BaseModel):
    """How trajectories are analysed (part of the protocol, so part of its hash)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    n_blocks: int = Field(5, ge=3, le=50, description="Time blocks of the temperature-stationarity check (thermostat_off).")
    fit_end_fraction: float = Field(0.5, gt=0.1, le=0.9, description="Last lag of the MSD fit, fraction of the run.")
    fit_min_start_fraction: float = Field(
        0.1, ge=0, lt=0.5, description="The MSD fit never starts before this fraction of the run.")
    fit_min_start_fs: float = Field(200.0, ge=0, le=MAX_RUN_PS * 1000.0,
                                    description="Nor before this lag (ballistic regime), fs.")
    relaxation_multiple: float = Field(
        4.0, gt=0, le=20, description="The MSD fit starts this many relaxation times of its local slope past the cage peak.")
    hop_distance_A: float = Field(1.5, gt=0, le=10.0,
                                  description="Displacement from the resting point that counts as a hop, Å.")
    min_hops: int = Field(20, ge=0, le=1_000_000, description="Fewer hops than this at a temperature → few_hops.")
    max_rel_half_width: float = Field(0.5, gt=0, le=100.0,
                                      description="95% interval half-width / D above this → short_run.")
    framework_msd_limit_A2: float = Field(
        2.0, gt=0, le=100.0, description="Framework MSD (late-quarter mean) above this (Å²), still growing → "
        "framework_melted; not growing → framework_disordered.")
    framework_growth_limit: float = Field(
        0.25, gt=0, lt=1, description="Share of a framework species' late MSD gained since the second quarter of "
        "production above which it counts as growing (diffusion gives about 0.57, bounded motion about 0).")
    polyanion_rotation: bool = Field(
        True, description="A framework species whose MSD stays within what rotation of isolated polyanions about "
        "their fixed centres allows (2r² plus the centres' MSD) counts as rotating (framework_disordered) even "
        "while its MSD still grows; false: the growth criterion alone.")
    thermostat_tolerance: float = Field(0.05, gt=0, lt=1, description="Mean T off target by more (fraction) → thermostat_off.")

    def fit_window(self) -> FitWindow:
        return FitWindow(end_fraction=self.fit_end_fraction, min_start_fraction=self.fit_min_start_fraction,
                         min_start_fs=self.fit_min_start_fs, relaxation_multiple=self.relaxation_multiple)


class TransportProtocol(BaseModel):
    """Relax → equilibrate → NVT production at each temperature → analyse. Units are in the names."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field("custom", max_length=64, description="Preset name (not part of the hash).")
    temperatures_K: tuple[Temperature, ...] = Field(
        ..., min_length=1, max_length=MAX_TEMPERATURES,
        description=f"Production temperatures, K ({MIN_TEMPERATURE_K:g}-{MAX_TEMPERATURE_K:g}).")
    timestep_fs: float = Field(..., ge=0.1, le=5.0, description="MD time step, fs.")
    equilibration_ps: float = Field(..., ge=0, le=MAX_RUN_PS, description="Equilibration before sampling, ps.")
    production_ps: float = Field(..., gt=0, le=MAX_RUN_PS, description="Production length per temperature, ps.")
    sample_interval_fs: float = Field(..., gt=0, le=10_000.0, description="Time between stored frames, fs.")
    checkpoint_interval_ps: float = Field(1.0, gt=0, le=MAX_RUN_PS, description="Time between MD checkpoints, ps.")
    thermostat: Thermostat = Thermostat.BUSSI
    thermostat_time_constant_fs: float = Field(100.0, gt=0, le=100_000.0,
                                               description="Bussi τ_T or Langevin 1/friction, fs.")
    equilibration_thermostat: Thermostat = Thermostat.LANGEVIN
    supercell_min_length_A: float = Field(..., gt=0, le=MAX_SUPERCELL_LENGTH_A,
                                          description="Every cell height (and so every lattice vector) ≥ this, Å.")
    relax: bool = Field(True, description="Relax positions (float64) before MD.")
    relax_cell: bool = Field(False, description="Also relax the cell.")
    relax_fmax_eV_A: float = Field(0.05, gt=0, le=MAX_FORCE_EV_A)
    relax_max_steps: int = Field(300, ge=1, le=MAX_OPTIMIZER_STEPS)
    md_dtype: str = Field("float32", pattern="^float(32|64)$")
    md_engine: MDEngine = Field(
        MDEngine.LEAN, description="lean: the batched MACE engine (mlip.engine); ase: ASE's dynamics and calculator. "
        "Same physics; the random streams agree but float32 rounding differs, so trajectories differ bit for bit.")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    target_rel_half_width: float | None = Field(
        None, gt=0, le=100.0, description="Adaptive runs: extend production until the 95% half-width / D* is below this."
    )
    max_production_ps: float | None = Field(None, gt=0, le=MAX_RUN_PS,
                                            description="Adaptive runs: production budget per temperature, ps.")
    extension_ps: float | None = Field(None, gt=0, le=MAX_RUN_PS,
                                       description="Adaptive runs: production added per extension, ps.")
    analysis: AnalysisSettings = Field(default_factory=AnalysisSettings)

    @field_validator("temperatures_K")
    @classmethod
    def _sorted_unique(cls, temps):
        if len(set(temps)) != len(temps):
            raise ValueError("temperatures must be distinct")
        return tuple(sorted(temps))

    @model_validator(mode="after")
    def _consistent(self):
        if self.sample_interval_fs < self.timestep_fs:
            raise ValueError("sample_interval_fs must be at least timestep_fs")
        if abs(self.sample_interval_fs / self.timestep_fs - round(self.sample_interval_fs / self.timestep_fs)) > 1e-9:
            raise ValueError("sample_interval_fs must be a whole number of time steps")
        adaptive = [self.target_rel_half_width, self.max_production_ps, self.extension_ps]
        if any(v is not None for v in adaptive) and not all(v is not None for v in adaptive):
            raise ValueError("adaptive runs need target_rel_half_width, max_production_ps and extension_ps together")
        if self.max_production_ps is not None and self.max_production_ps < self.production_ps:
            raise ValueError("max_production_ps must be at least production_ps")
        longest_ps = max(self.production_ps, self.max_production_ps or 0.0)
        frames = longest_ps * 1000.0 / self.sample_interval_fs
        if frames > MAX_FRAMES_PER_TEMPERATURE:
            raise ValueError(f"{longest_ps:g} ps sampled every {self.sample_interval_fs:g} fs stores {frames:,.0f} frames "
                             f"per temperature, more than {MAX_FRAMES_PER_TEMPERATURE:,}; raise sample_interval_fs")
        return self

    # -- derived step counts -------------------------------------------------------------------
    @property
    def sample_every_steps(self) -> int:
        return int(round(self.sample_interval_fs / self.timestep_fs))

    def steps(self, ps: float) -> int:
        """Whole number of sample intervals covering ``ps``, in MD steps."""
        frames = int(round(ps * 1000.0 / self.sample_interval_fs))
        return frames * self.sample_every_steps

    @property
    def equilibration_steps(self) -> int:
        return int(round(self.equilibration_ps * 1000.0 / self.timestep_fs))

    @property
    def checkpoint_every_steps(self) -> int:
        every = self.sample_every_steps
        return max(int(round(self.checkpoint_interval_ps * 1000.0 / self.sample_interval_fs)), 1) * every

    @property
    def adaptive(self) -> bool:
        return self.target_rel_half_width is not None

    def physics_dict(self) -> dict:
        data = self.model_dump(mode="json")
        data.pop("name")
        return data

    @property
    def hash(self) -> str:
        """SHA-256 of the canonical JSON of everything that affects the numbers (not the name)."""
        return canonical_sha256(self.physics_dict())


@functools.cache
def _presets() -> dict[str, dict]:
    """The named protocols, read once from the packaged ``presets.yaml``."""
    text = resources.files("screening.transport").joinpath("presets.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def preset(name: str, **overrides) -> TransportProtocol:
    """A named preset, optionally with fields overridden (the result is then named ``custom``)."""
    presets = _presets()
    if name not in presets:
        raise InputError(f"unknown protocol preset {name!r}; presets: {', '.join(sorted(presets))}, or custom")
    values = {**copy.deepcopy(presets[name]), **overrides}
    return make_protocol(name=name if not overrides else "custom", **values)


def make_protocol(**values) -> TransportProtocol:
    """Validate protocol values, turning pydantic's errors into an InputError that names each field."""
    try:
        return TransportProtocol(**values)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'protocol'}: {e['msg']}" for e in err.errors()
        )
        raise InputError(f"invalid transport protocol: {problems}") from err


def preset_names() -> list[str]:
    return sorted(_presets())


def preset_or_file(name_or_path: str, **overrides) -> TransportProtocol:
    """A preset by name, or the protocol a YAML file of protocol fields describes (fields not given take their
    defaults; a file's protocol is named by its ``name`` field or ``custom``), with ``overrides`` on top."""
    from pathlib import Path

    if name_or_path in _presets():
        return preset(name_or_path, **overrides)
    path = Path(name_or_path)
    if not path.is_file():
        raise InputError(f"unknown protocol preset {name_or_path!r}, and no YAML file of protocol fields at that path; "
                         f"presets: {', '.join(preset_names())}")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise InputError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(values, dict):
        raise InputError(f"{path} must hold a mapping of protocol fields, not a {type(values).__name__}")
    return make_protocol(**{**values, **overrides})
