"""From frames to flagged results: one temperature (``analyze_frames``) and across them (``analyze_arrhenius``)."""

from __future__ import annotations

import numpy as np

from mlip.errors import InputError
from screening.transport.arrhenius import fit_arrhenius
from screening.transport.diffusion import DiffusionAnalysis, FitWindow, analyze_diffusion, nernst_einstein_factor
from screening.transport.framelog import FrameData
from screening.transport.protocol import AnalysisSettings
from screening.transport.results import ArrheniusResult, Flag, TemperatureResult

ROOM_TEMPERATURE_K = 300.0

#: Flags that make a temperature unusable for the Arrhenius fit.
EXCLUDE_FROM_FIT = {Flag.UNSTABLE_MD, Flag.FRAMEWORK_MELTED, Flag.NOT_DIFFUSIVE}


def _scaled(interval, factor):
    return (interval[0] * factor, interval[1] * factor)


def analyze_frames(
    data: FrameData,
    *,
    temperature_K: float,
    ion_charge: int,
    settings: AnalysisSettings | None = None,
    md_status: str = "completed",
    md_reason: str = "",
) -> tuple[TemperatureResult, DiffusionAnalysis | None]:
    """Analyse one temperature's frames; numbers that cannot be trusted come back flagged or absent."""
    settings = settings or AnalysisSettings()
    volume = float(data.meta["volume_A3"])
    n_mobile = data.mobile_A.shape[1]
    base = dict(
        temperature_K=temperature_K,
        ion_charge=ion_charge,
        n_mobile_ions=n_mobile,
        n_frames=data.n_frames,
        n_blocks=settings.n_blocks,
        volume_A3=volume,
        md_status=md_status,
        md_reason=md_reason,
        production_ps=float(data.times_fs[-1] - data.times_fs[0]) / 1000.0 if data.n_frames else 0.0,
        mean_temperature_K=float(np.mean(data.temperature_K)) if data.n_frames and np.all(np.isfinite(data.temperature_K)) else None,
    )
    flags: list[str] = []
    if md_status != "completed":
        flags.append(Flag.UNSTABLE_MD)
        return TemperatureResult(**base, n_hops=0, flags=flags), None
    window = FitWindow(settings.fit_start_fraction, settings.fit_end_fraction, settings.fit_min_start_fs)
    try:
        da = analyze_diffusion(
            data.mobile_A,
            data.times_fs,
            framework_centroid_A=data.framework_centroid_A if len(data.meta.get("framework_indices", [])) else None,
            n_blocks=settings.n_blocks,
            window=window,
            hop_distance_A=settings.hop_distance_A,
            framework_msd_A2=data.framework_msd_A2[-1] if data.framework_msd_A2.size else None,
        )
    except InputError as err:
        flags += [Flag.SHORT_RUN, Flag.NOT_DIFFUSIVE]
        base["md_reason"] = f"{md_reason} analysis: {err}".strip()
        return TemperatureResult(**base, n_hops=0, flags=flags), None

    factor = nernst_einstein_factor(n_mobile, volume, ion_charge, temperature_K)
    if da.n_hops < settings.min_hops:
        flags += [Flag.FEW_HOPS, Flag.NOT_DIFFUSIVE]
    elif da.linearity_ratio < settings.min_linearity:
        flags.append(Flag.NOT_DIFFUSIVE)
    if da.tracer.rel_half_width > settings.max_rel_half_width:
        flags.append(Flag.SHORT_RUN)
    if da.framework_max_msd_A2 is not None and da.framework_max_msd_A2 > settings.framework_msd_limit_A2:
        flags.append(Flag.FRAMEWORK_MELTED)
    if base["mean_temperature_K"] is not None and data.n_frames >= settings.n_blocks:
        temps = np.array_split(data.temperature_K, settings.n_blocks)
        block_means = np.array([b.mean() for b in temps])
        se = block_means.std(ddof=1) / np.sqrt(len(block_means))
        if abs(base["mean_temperature_K"] - temperature_K) > settings.thermostat_tolerance * temperature_K + 3 * se:
            flags.append(Flag.THERMOSTAT_OFF)
    lags = da.curves.lags_fs
    result = TemperatureResult(
        **base,
        diffusivity_cm2_s=da.tracer.value,
        diffusivity_ci95_cm2_s=da.tracer.ci95,
        diffusivity_std_error_cm2_s=da.tracer.std_error,
        diffusivity_components_cm2_s=tuple(c.value for c in da.components),
        diffusivity_components_ci95_cm2_s=tuple(c.ci95 for c in da.components),
        charge_diffusivity_cm2_s=da.charge.value,
        charge_diffusivity_ci95_cm2_s=da.charge.ci95,
        haven_ratio=da.haven_ratio,
        conductivity_mS_cm=da.tracer.value * factor,
        conductivity_ci95_mS_cm=_scaled(da.tracer.ci95, factor),
        charge_conductivity_mS_cm=da.charge.value * factor,
        charge_conductivity_ci95_mS_cm=_scaled(da.charge.ci95, factor),
        n_hops=da.n_hops,
        fit_window_fs=(float(lags[0]), float(lags[-1])),
        msd_linearity=da.linearity_ratio,
        framework_max_msd_A2=da.framework_max_msd_A2,
        flags=[str(f) for f in flags],
    )
    return result, da


def analyze_arrhenius(
    temperatures: list[TemperatureResult],
    *,
    n_blocks: int,
    seed: int = 0,
) -> tuple[ArrheniusResult, object | None]:
    """Arrhenius fit over the usable temperatures (those without disqualifying flags), extrapolated to 300 K."""
    usable = [
        t for t in temperatures
        if t.diffusivity_cm2_s and t.diffusivity_std_error_cm2_s and not (set(t.flags) & {str(f) for f in EXCLUDE_FROM_FIT})
    ]
    if len(usable) < 2:
        return ArrheniusResult(temperatures_K=[t.temperature_K for t in usable], flags=[Flag.FEW_TEMPERATURES]), None
    fit = fit_arrhenius(
        [t.temperature_K for t in usable],
        [t.diffusivity_cm2_s for t in usable],
        [t.diffusivity_std_error_cm2_s for t in usable],
        n_blocks - 1,
        seed=seed,
    )
    d300, d300_ci = fit.diffusivity_at(ROOM_TEMPERATURE_K)
    ref = usable[0]
    factor = nernst_einstein_factor(ref.n_mobile_ions, ref.volume_A3, ref.ion_charge, ROOM_TEMPERATURE_K)
    return ArrheniusResult(
        temperatures_K=fit.temperatures_K,
        activation_energy_eV=fit.activation_energy_eV,
        activation_energy_ci95_eV=fit.activation_energy_ci95_eV,
        prefactor_cm2_s=fit.prefactor_cm2_s,
        prefactor_ci95_cm2_s=fit.prefactor_ci95_cm2_s,
        diffusivity_300K_cm2_s=d300,
        diffusivity_300K_ci95_cm2_s=d300_ci,
        conductivity_300K_mS_cm=d300 * factor,
        conductivity_300K_ci95_mS_cm=_scaled(d300_ci, factor),
        reduced_chi2=fit.reduced_chi2,
        flags=list(fit.flags),
    ), fit
