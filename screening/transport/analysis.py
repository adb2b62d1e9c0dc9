"""From frames to flagged results: one temperature (``analyze_frames``) and across them (``analyze_arrhenius``)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from mlip.errors import InputError
from screening.transport.arrhenius import KB_EV_K, fit_arrhenius
from screening.transport.diffusion import DiffusionAnalysis, Estimate, analyze_diffusion, nernst_einstein_factor
from screening.transport.framelog import FrameData
from screening.transport.protocol import AnalysisSettings
from screening.transport.results import ArrheniusResult, Flag, TemperatureResult

ROOM_TEMPERATURE_K = 300.0

#: Flags that make a temperature unusable for the Arrhenius fit.
EXCLUDE_FROM_FIT = {Flag.UNSTABLE_MD, Flag.FRAMEWORK_MELTED, Flag.NOT_DIFFUSIVE}
#: Flags that make a temperature's numbers (bounds included) meaningless.
UNUSABLE = {Flag.UNSTABLE_MD, Flag.FRAMEWORK_MELTED}


class FrameworkMotion(NamedTuple):
    """What the framework did: its largest late MSD, the growth of the species that count as moving, and the
    species whose motion is bounded polyanion rotation."""

    late_max_A2: float | None
    growth: float | None
    rotating: tuple[str, ...] = ()


def framework_motion(msd_A2: np.ndarray, limit_A2: float, species: list[str] | None = None,
                     rotors: dict[str, dict] | None = None) -> FrameworkMotion:
    """How the framework species moved, from their MSD per frame (frames, species).

    The late MSD of a species is its mean over the last quarter of production, not the last frame's (one frame
    of a few dozen atoms swings by an Å² or more); its growth is the share of it gained since the second
    quarter. A diffusing species (MSD = 6Dt) gains 4/7 ≈ 0.57; bounded motion, such as a polyanion rotating
    about a fixed centre (S of PS4 reaches 2r² ≈ 8 Å² and stays), gains about nothing once the rotation is
    complete. A slow rotation is still growing when production ends, so with ``rotors`` (per species, from
    ``polyanions.polyanion_rotors``: centres, rotor fraction f, rotation MSD 2⟨r²⟩) a species past the limit
    whose late MSD stays within f·(2⟨r²⟩ + its centres' late MSD) + (1 − f)·limit, while every centre species
    stays under the limit, counts as rotating, whatever its growth. The growth returned is that of the other
    species past ``limit_A2``, the one that grows most (None when none is past it)."""
    msd = np.asarray(msd_A2, dtype=float)
    if msd.ndim != 2 or msd.shape[1] == 0 or msd.shape[0] == 0:
        return FrameworkMotion(None, None)
    n = msd.shape[0]
    q = max(1, n // 4)
    late = msd[n - q:].mean(axis=0)
    early = msd[q:max(q + 1, n // 2)].mean(axis=0) if n >= 4 else msd[:1].mean(axis=0)
    past = late > limit_A2
    rotating: list[str] = []
    if rotors and species is not None and len(species) == msd.shape[1]:
        col = {s: k for k, s in enumerate(species)}
        for k in np.flatnonzero(past):
            info = rotors.get(species[k])
            if not info:
                continue
            centres = [col[c] for c in info["centres"] if c in col]
            if not centres or any(late[c] > limit_A2 for c in centres):
                continue
            f = float(info["rotor_fraction"])
            bound = f * (float(info["rotation_msd_A2"]) + max(late[c] for c in centres)) + (1.0 - f) * limit_A2
            if late[k] <= bound:
                rotating.append(species[k])
                past[k] = False
    growth = None
    if past.any():
        growth = float(np.max((late[past] - early[past]) / late[past]))
    return FrameworkMotion(float(late.max()), growth, tuple(rotating))


def _scaled(interval, factor):
    return None if interval is None else (interval[0] * factor, interval[1] * factor)


def _diffusivity_fields(prefix: str, e: Estimate) -> dict:
    return {f"{prefix}_cm2_s": e.value, f"{prefix}_ci95_cm2_s": e.ci95}


def analyze_frames(
    data: FrameData,
    *,
    temperature_K: float,
    ion_charge: int,
    settings: AnalysisSettings | None = None,
    md_status: str = "completed",
    md_reason: str = "",
) -> tuple[TemperatureResult, DiffusionAnalysis | None]:
    """Analyse one temperature's frames; numbers that cannot be trusted come back flagged, bounded or absent."""
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
    rotors = data.meta.get("framework_rotors") if settings.polyanion_rotation else None
    late, growth, rotating = framework_motion(data.framework_msd_A2, settings.framework_msd_limit_A2,
                                              data.meta.get("framework_species"), rotors)
    try:
        da = analyze_diffusion(
            data.mobile_A,
            data.times_fs,
            framework_centroid_A=data.framework_centroid_A if len(data.meta.get("framework_indices", [])) else None,
            window=settings.fit_window(),
            hop_distance_A=settings.hop_distance_A,
            framework_msd_A2=late,
        )
    except InputError as err:
        flags += [Flag.SHORT_RUN, Flag.NOT_DIFFUSIVE]
        base["md_reason"] = f"{md_reason} analysis: {err}".strip()
        return TemperatureResult(**base, n_hops=0, flags=flags), None

    factor = nernst_einstein_factor(n_mobile, volume, ion_charge, temperature_K)
    if da.n_hops < settings.min_hops:
        flags.append(Flag.FEW_HOPS)
    if not da.diffusive_axes:
        flags += [Flag.NOT_DIFFUSIVE, Flag.UPPER_BOUND]
    elif not da.diffusive:
        flags.append(Flag.PARTLY_DIFFUSIVE)
    if da.diffusive_axes and da.tracer.rel_half_width > settings.max_rel_half_width:
        flags.append(Flag.SHORT_RUN)
    if growth is not None and growth > settings.framework_growth_limit:
        flags.append(Flag.FRAMEWORK_MELTED)
    elif growth is not None or rotating:
        flags.append(Flag.FRAMEWORK_DISORDERED)
    if base["mean_temperature_K"] is not None and data.n_frames >= settings.n_blocks:
        temps = np.array_split(data.temperature_K, settings.n_blocks)
        block_means = np.array([b.mean() for b in temps])
        se = block_means.std(ddof=1) / np.sqrt(len(block_means))
        if abs(base["mean_temperature_K"] - temperature_K) > settings.thermostat_tolerance * temperature_K + 3 * se:
            flags.append(Flag.THERMOSTAT_OFF)
    tracer, charge = da.tracer, da.charge
    window_fs = da.fit_window_fs
    result = TemperatureResult(
        **base,
        **_diffusivity_fields("diffusivity", tracer),
        diffusivity_std_error_cm2_s=tracer.std_error,
        diffusivity_dof=tracer.dof,
        diffusivity_upper_bound_cm2_s=tracer.upper_bound,
        diffusivity_components_cm2_s=tuple(c.value for c in da.components) if da.diffusive_axes else None,
        diffusivity_components_ci95_cm2_s=tuple(c.ci95 for c in da.components),
        **_diffusivity_fields("charge_diffusivity", charge),
        haven_ratio=da.haven_ratio,
        haven_ratio_ci95=da.haven_ratio_ci95,
        conductivity_mS_cm=None if tracer.value is None else tracer.value * factor,
        conductivity_ci95_mS_cm=_scaled(tracer.ci95, factor),
        conductivity_upper_bound_mS_cm=None if tracer.upper_bound is None else tracer.upper_bound * factor,
        charge_conductivity_mS_cm=None if charge.value is None else charge.value * factor,
        charge_conductivity_ci95_mS_cm=_scaled(charge.ci95, factor),
        n_hops=da.n_hops,
        fit_window_fs=window_fs,
        fit_window_ps=(window_fs[0] / 1000.0, window_fs[1] / 1000.0),
        msd_relaxation_ps=None if da.relaxation is None or da.relaxation.time_fs is None else da.relaxation.time_fs / 1000.0,
        msd_plateau_A2=da.plateau_A2,
        msd_linearity=da.linearity_ratio,
        analysis_note=da.note,
        framework_max_msd_A2=late,
        framework_msd_growth=growth,
        framework_rotating_species=list(rotating),
        flags=[str(f) for f in flags],
    )
    return result, da


def _upper_ends(temperatures: list[TemperatureResult]) -> list[tuple[float, float]]:
    """(T, upper end of D*) for every temperature whose D* has a value or a bound and is not meaningless."""
    out = []
    for t in temperatures:
        if set(t.flags) & {str(f) for f in UNUSABLE} or not t.diffusivity_ci95_cm2_s:
            continue
        if t.diffusivity_cm2_s is not None or t.diffusivity_upper_bound_cm2_s is not None:
            out.append((t.temperature_K, t.diffusivity_ci95_cm2_s[1]))
    return out


def _activation_energy_lower_bound(usable: list[TemperatureResult], bounds: list[TemperatureResult]) -> float | None:
    """Ea ≥ kB ln(D_lo(T_hi) / D_bound(T_lo)) / (1/T_lo − 1/T_hi) for a value above a bound in temperature."""
    best = None
    for hot in usable:
        lo = hot.diffusivity_ci95_cm2_s[0]
        for cold in bounds:
            if cold.temperature_K >= hot.temperature_K or lo <= 0:
                continue
            ea = KB_EV_K * np.log(lo / cold.diffusivity_upper_bound_cm2_s) / (1 / cold.temperature_K - 1 / hot.temperature_K)
            if ea > 0 and (best is None or ea > best):
                best = float(ea)
    return best


def analyze_arrhenius(
    temperatures: list[TemperatureResult],
    *,
    n_blocks: int | None = None,
    seed: int = 0,
) -> tuple[ArrheniusResult, object | None]:
    """Arrhenius fit over the temperatures with values, extrapolated to 300 K; bounds stay bounds.

    D* grows with temperature (Ea ≥ 0), so D*(300 K) lies below every measured temperature's upper end: a bound
    at any temperature caps the 300 K interval, and with fewer than two values the answer is that cap alone.
    ``n_blocks`` gives the degrees of freedom of results that do not state theirs (older documents).
    """
    excluded = {str(f) for f in EXCLUDE_FROM_FIT}
    usable = [t for t in temperatures
              if t.diffusivity_cm2_s and t.diffusivity_std_error_cm2_s and not (set(t.flags) & excluded)]
    bounds = [t for t in temperatures if t.diffusivity_upper_bound_cm2_s is not None
              and not (set(t.flags) & {str(f) for f in UNUSABLE})]
    ceiling = min((hi for _, hi in _upper_ends(temperatures)), default=None)
    ref = usable[0] if usable else (temperatures[0] if temperatures else None)
    factor = (nernst_einstein_factor(ref.n_mobile_ions, ref.volume_A3, ref.ion_charge, ROOM_TEMPERATURE_K)
              if ref is not None and ref.n_mobile_ions > 0 else None)
    if len(usable) < 2:
        flags = [Flag.FEW_TEMPERATURES]
        extra = {}
        if ceiling is not None and factor is not None:
            flags.append(Flag.UPPER_BOUND)
            extra = dict(diffusivity_300K_ci95_cm2_s=(0.0, ceiling), diffusivity_300K_upper_bound_cm2_s=ceiling,
                         conductivity_300K_ci95_mS_cm=(0.0, ceiling * factor),
                         conductivity_300K_upper_bound_mS_cm=ceiling * factor,
                         activation_energy_lower_bound_eV=_activation_energy_lower_bound(usable, bounds))
        return ArrheniusResult(temperatures_K=[t.temperature_K for t in usable], flags=flags, **extra), None
    dofs = [t.diffusivity_dof if t.diffusivity_dof else (n_blocks or 5) - 1 for t in usable]
    fit = fit_arrhenius(
        [t.temperature_K for t in usable],
        [t.diffusivity_cm2_s for t in usable],
        [t.diffusivity_std_error_cm2_s for t in usable],
        dofs,
        seed=seed,
    )
    flags = list(fit.flags)
    d300, d300_ci = fit.diffusivity_at(ROOM_TEMPERATURE_K)
    if bounds and ceiling is not None and ceiling < d300_ci[1]:
        if ceiling >= d300:
            d300_ci = (d300_ci[0], ceiling)
        elif Flag.NON_ARRHENIUS not in flags:
            flags.append(str(Flag.NON_ARRHENIUS))  # the line passes above a temperature's measured bound
    result = ArrheniusResult(
        **fit.fitted(), diffusivity_300K_cm2_s=d300, diffusivity_300K_ci95_cm2_s=d300_ci,
        conductivity_300K_mS_cm=d300 * factor, conductivity_300K_ci95_mS_cm=_scaled(d300_ci, factor), flags=flags,
    )
    return result, fit
