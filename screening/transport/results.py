"""Result documents of the transport protocol: every number with its unit, interval, flags and provenance."""

from __future__ import annotations

import enum

from pydantic import BaseModel, ConfigDict, Field

from screening.provenance import Provenance as BaseProvenance
from screening.summaries import Measured, TransportSummary


class Flag(enum.StrEnum):
    """Quality flags. A number carrying one of these is not ranked as if it were certain."""

    NOT_DIFFUSIVE = "not_diffusive"  # the run never reached the diffusive regime: D is an upper bound only
    FEW_HOPS = "few_hops"  # fewer distinct hops than the protocol's minimum
    UNSTABLE_MD = "unstable_md"  # atoms too close, exploding energy or temperature, NaN
    FRAMEWORK_MELTED = "framework_melted"  # framework atoms diffuse
    FRAMEWORK_DISORDERED = "framework_disordered"  # framework atoms far from their sites but not diffusing (rotors)
    THERMOSTAT_OFF = "thermostat_off"  # mean temperature off target
    SHORT_RUN = "short_run"  # interval too wide for ranking
    TARGET_NOT_MET = "target_not_met"  # adaptive run spent its budget before reaching the target
    FEW_TEMPERATURES = "few_temperatures"  # fewer than two usable temperatures: no Arrhenius fit
    NON_ARRHENIUS = "non_arrhenius"  # points scatter beyond their error bars around the Arrhenius line
    UPPER_BOUND = "upper_bound"  # only an upper bound could be given (value None, interval (0, bound))
    PARTLY_DIFFUSIVE = "partly_diffusive"  # diffusive along some axes only; the others add their bound to the interval


Interval = tuple[float, float]


class TemperatureResult(BaseModel):
    """Transport at one temperature."""

    model_config = ConfigDict(extra="forbid")

    temperature_K: float = Field(description="Target (thermostat) temperature, K.")
    mean_temperature_K: float | None = Field(None, description="Mean kinetic temperature over production, K.")
    diffusivity_cm2_s: float | None = Field(None, description="Tracer diffusivity D* of the working ion, cm²/s.")
    diffusivity_ci95_cm2_s: Interval | None = Field(
        None, description="95% interval of D* (jackknife over ions), cm²/s; (0, upper bound) when only a bound is known.")
    diffusivity_std_error_cm2_s: float | None = Field(None, description="Jackknife standard error of D*, cm²/s.")
    diffusivity_dof: int | None = Field(None, description="Degrees of freedom of the D* interval (ions − 1).")
    diffusivity_upper_bound_cm2_s: float | None = Field(
        None, description="One-sided 97.5% upper bound of D* when the run never reached the diffusive regime "
        "(then D* itself is None), cm²/s.")
    diffusivity_components_cm2_s: tuple[float | None, float | None, float | None] | None = Field(
        None, description="D*_x, D*_y, D*_z along Cartesian axes, cm²/s (None along an axis that only has a bound).")
    diffusivity_components_ci95_cm2_s: tuple[Interval, Interval, Interval] | None = None
    charge_diffusivity_cm2_s: float | None = Field(None, description="Collective (charge) diffusivity D_σ, cm²/s.")
    charge_diffusivity_ci95_cm2_s: Interval | None = None
    haven_ratio: float | None = Field(None, description="H = D*/D_σ (dimensionless).")
    haven_ratio_ci95: Interval | None = Field(None, description="95% interval of H (jackknife of ln H over ions).")
    conductivity_mS_cm: float | None = Field(None, description="Nernst–Einstein conductivity from D* (H = 1), mS/cm.")
    conductivity_ci95_mS_cm: Interval | None = None
    charge_conductivity_mS_cm: float | None = Field(None, description="Nernst–Einstein conductivity from D_σ, mS/cm.")
    charge_conductivity_ci95_mS_cm: Interval | None = None
    conductivity_upper_bound_mS_cm: float | None = Field(
        None, description="Nernst–Einstein σ of the D* upper bound when only a bound is known, mS/cm.")
    ion_charge: int = Field(description="Formal charge of the working ion, e (stated, never guessed).")
    n_mobile_ions: int
    n_hops: int = Field(description="Distinct ion hops counted over the production run.")
    production_ps: float = Field(description="Production time analysed, ps.")
    n_frames: int
    n_blocks: int
    fit_window_fs: Interval | None = Field(None, description="Lag window of the MSD fit, fs.")
    fit_window_ps: Interval | None = Field(None, description="Lag window of the MSD fit, chosen from the data, ps.")
    msd_relaxation_ps: float | None = Field(
        None, description="Relaxation time of the MSD's local slope after the cage peak, ps (None: none resolved).")
    msd_plateau_A2: float | None = Field(None, description="Intercept of the MSD fit: the cage's bounded displacement, Å².")
    msd_linearity: float | None = Field(None, description="Late/early MSD slope ratio in the window (1 = linear).")
    analysis_note: str = Field("", description="Why the diffusivities are bounds only, when they are.")
    framework_max_msd_A2: float | None = Field(
        None, description="Largest framework-species MSD (from the start of production), averaged over the last "
        "quarter of production, Å².")
    framework_msd_growth: float | None = Field(
        None, description="For the framework species past the MSD limit: the largest share of its late MSD gained "
        "since the second quarter of production (about 0.57 for diffusion, about 0 for bounded motion); the "
        "species whose motion is polyanion rotation are left out of it.")
    framework_rotating_species: list[str] = Field(
        default_factory=list, description="Framework species past the MSD limit whose MSD stays within what "
        "rotation of isolated polyanions about fixed centres allows (framework_disordered, never melted).")
    volume_A3: float
    flags: list[str] = Field(default_factory=list)
    md_status: str = "completed"
    md_reason: str = ""
    extensions: int = Field(0, description="Adaptive runs: production extensions made.")
    md_resumed_from_step: int | None = Field(
        None, description="MD continued from its checkpoint at this step (the task ran again after its worker, node "
                          "or driver died); None: it ran in one go.")
    frame_log: str | None = Field(None, description="Frame-log directory, relative to the result file.")
    msd_plot: str | None = Field(None, description="MSD plot (PNG), relative to the result file.")


class ArrheniusResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    temperatures_K: list[float] = Field(description="Temperatures used in the fit, K.")
    activation_energy_eV: float | None = None
    activation_energy_ci95_eV: Interval | None = None
    prefactor_cm2_s: float | None = Field(None, description="Arrhenius prefactor D0, cm²/s.")
    prefactor_ci95_cm2_s: Interval | None = None
    diffusivity_300K_cm2_s: float | None = Field(None, description="D* extrapolated to 300 K, cm²/s.")
    diffusivity_300K_ci95_cm2_s: Interval | None = None
    conductivity_300K_mS_cm: float | None = Field(None, description="σ at 300 K (Nernst–Einstein from extrapolated D*), mS/cm.")
    conductivity_300K_ci95_mS_cm: Interval | None = None
    diffusivity_300K_upper_bound_cm2_s: float | None = Field(
        None, description="Upper bound of D*(300 K) when fewer than two temperatures gave a value; D* grows with T, so "
        "no temperature's bound or interval is exceeded at 300 K, cm²/s.")
    conductivity_300K_upper_bound_mS_cm: float | None = Field(None, description="σ(300 K) of that bound, mS/cm.")
    activation_energy_lower_bound_eV: float | None = Field(
        None, description="95% lower bound of Ea from a value at a higher temperature and a bound at a lower one, eV.")
    reduced_chi2: float | None = None
    flags: list[str] = Field(default_factory=list)
    plot: str | None = None


class Provenance(BaseProvenance):
    """Model and code (the base), plus the transport protocol's hash, the seed, the MLflow run and the MD engine."""

    protocol_hash: str
    seed: int
    mlflow_run_id: str | None = None
    md_engine: dict | None = Field(None, description="Which MD engine ran (lean or ase) and, for lean, the batch "
                                   "size and whether it was measured, cached or configured.")


class TransportResult(BaseModel):
    """Transport of one candidate under one protocol and model."""

    model_config = ConfigDict(extra="forbid")

    formula: str
    working_ion: str
    ion_charge: int
    n_atoms: int = Field(description="Atoms in the simulated supercell.")
    supercell: tuple[int, int, int]
    volume_A3: float
    protocol: dict
    provenance: Provenance
    temperatures: list[TemperatureResult]
    arrhenius: ArrheniusResult
    flags: list[str] = Field(default_factory=list, description="Union of the flags of every part.")
    wall_s: float | None = None
    created_utc: str | None = None

    def summary(self) -> TransportSummary:
        """What the candidate is ranked by: σ, D* and Ea at 300 K with intervals, the Haven ratio, the hottest σ."""
        a = self.arrhenius
        havens = [t.haven_ratio for t in self.temperatures if t.haven_ratio is not None]
        hottest = max(self.temperatures, key=lambda t: t.temperature_K) if self.temperatures else None
        return TransportSummary(
            conductivity_300K_mS_cm=Measured(value=a.conductivity_300K_mS_cm, ci95=a.conductivity_300K_ci95_mS_cm),
            diffusivity_300K_cm2_s=Measured(value=a.diffusivity_300K_cm2_s, ci95=a.diffusivity_300K_ci95_cm2_s),
            activation_energy_eV=Measured(value=a.activation_energy_eV, ci95=a.activation_energy_ci95_eV),
            haven_ratio_mean=sum(havens) / len(havens) if havens else None,
            max_temperature_conductivity_mS_cm=hottest.conductivity_mS_cm if hottest else None,
            flags=list(self.flags),
        )
