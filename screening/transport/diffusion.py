"""Diffusion analysis on arrays: MSDs, tracer and charge diffusivity, hops, and honest intervals.

Inputs are unwrapped Cartesian positions (Å) of the mobile ions per frame, the frame times (fs), and
the framework's centroid displacement per frame (for drift correction). Everything is plain numpy.

Uncertainty. The point estimate is a weighted least-squares fit of the time-origin-averaged MSD over
a lag window (weights ∝ 1/lag, intercept free, the same estimator as pymatgen-analysis-diffusion's
``DiffusionAnalyzer`` with ``smoothed="max"``). Its uncertainty comes from block averaging: the run
is cut into ``n_blocks`` contiguous time windows, the same fit over the same lags is made in each,
and the spread of the block estimates gives the standard error (σ_blocks/√B) with a Student-t
quantile on B−1 degrees of freedom. For a Markovian hopper, displacements in disjoint time windows
are independent, so the blocks are independent samples whatever the correlations between ions —
which is why this also works for the collective (charge) diffusivity, where per-ion statistics do
not exist. The lag-fitted slope is linear in squared displacements, so the estimate is unbiased; the
interval's calibration is tested on synthetic random walks (tests/test_diffusion_calibration.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from mlip.errors import InputError

#: 1 Å²/fs in cm²/s
A2_PER_FS_TO_CM2_PER_S = 1e-16 / 1e-15
_E_CHARGE_C = 1.602176634e-19
_KB_J_K = 1.380649e-23


def unwrap_fractional(frac: np.ndarray, lattices: np.ndarray) -> np.ndarray:
    """Unwrapped Cartesian positions (Å) from wrapped fractional coordinates.

    ``frac``: (n_frames, n_atoms, 3); ``lattices``: (3, 3) or (n_frames, 3, 3), rows are lattice vectors.
    Consecutive frames are joined by the minimum-image step, so frames must be close enough in time
    that no atom moves more than half a cell between them.
    """
    frac = np.asarray(frac, dtype=float)
    lat = np.asarray(lattices, dtype=float)
    if lat.ndim == 2:
        lat = np.broadcast_to(lat, (frac.shape[0], 3, 3))
    step = frac[1:] - frac[:-1]
    step -= np.round(step)
    cart_steps = np.einsum("fai,fij->faj", step, lat[1:])
    start = frac[0] @ lat[0]
    out = np.empty_like(frac)
    out[0] = start
    out[1:] = start[None] + np.cumsum(cart_steps, axis=0)
    return out


def windowed_msd(x: np.ndarray) -> np.ndarray:
    """Time-origin-averaged squared displacement per particle, lag and axis.

    ``x``: (n_particles, n_frames, dim). Returns (n_particles, n_frames, dim) where entry [p, m, d] is
    the mean over origins t of (x[p, t+m, d] − x[p, t, d])². Computed with the FFT (S1 − 2·S2).
    """
    x = np.asarray(x, dtype=float)
    n = x.shape[1]
    nfft = 1 << int(np.ceil(np.log2(2 * n)))
    f = np.fft.rfft(x, n=nfft, axis=1)
    s2 = np.fft.irfft(f * f.conj(), n=nfft, axis=1)[:, :n] / (n - np.arange(n))[None, :, None]
    # S1(m) = sum_{t<n-m} (x_t² + x_{t+m}²) = 2·sum x² − (first m terms) − (last m terms)
    sq = x**2
    total = 2.0 * sq.sum(axis=1, keepdims=True)
    head = np.concatenate([np.zeros_like(sq[:, :1]), np.cumsum(sq, axis=1)[:, :-1]], axis=1)
    tail = np.concatenate([np.zeros_like(sq[:, :1]), np.cumsum(sq[:, ::-1], axis=1)[:, :-1]], axis=1)
    s1 = (total - head - tail) / (n - np.arange(n))[None, :, None]
    return np.maximum(s1 - 2.0 * s2, 0.0)


def fit_slope(lags_fs: np.ndarray, msd: np.ndarray) -> float:
    """Slope (Å²/fs) of MSD against lag, weighted least squares with weights 1/lag and free intercept."""
    w = 1.0 / np.sqrt(lags_fs)
    a = np.stack([lags_fs, np.ones_like(lags_fs)], axis=1) * w[:, None]
    (slope, _), *_ = np.linalg.lstsq(a, msd * w, rcond=None)
    return float(slope)


@dataclass(frozen=True)
class FitWindow:
    """Which lags enter the MSD fit, as fractions of a block's length (the same lags in every block)."""

    start_fraction: float = 0.1
    end_fraction: float = 0.5
    min_start_fs: float = 0.0
    max_lags: int = 200

    def lag_indices(self, block_frames: int, frame_dt_fs: float) -> np.ndarray:
        start = max(int(np.ceil(self.start_fraction * block_frames)), int(np.ceil(self.min_start_fs / frame_dt_fs)), 1)
        end = int(self.end_fraction * block_frames)
        if end - start < 3:
            raise InputError(
                f"too few frames to fit an MSD: a block of {block_frames} frames gives lags {start}..{end}; "
                "run longer, sample more often, or use fewer blocks"
            )
        step = max((end - start) // self.max_lags, 1)
        return np.arange(start, end + 1, step)


@dataclass
class MSDCurves:
    """MSD curves of one stretch of trajectory (Å², against lag in fs)."""

    lags_fs: np.ndarray
    tracer: np.ndarray  # mean over mobile ions, summed over axes
    components: np.ndarray  # (n_lags, 3) mean over ions per axis
    charge: np.ndarray  # |Σ_i Δr_i|² / N


def msd_curves(mobile: np.ndarray, lag_idx: np.ndarray, frame_dt_fs: float) -> MSDCurves:
    """MSDs of the drift-corrected mobile positions ``mobile`` (n_frames, n_mobile, 3)."""
    per_ion = windowed_msd(np.transpose(mobile, (1, 0, 2)))[:, lag_idx]  # (ions, lags, 3)
    summed = mobile.sum(axis=1)[None]  # (1, frames, 3)
    charge = windowed_msd(summed)[0, lag_idx].sum(axis=-1) / mobile.shape[1]
    return MSDCurves(
        lags_fs=lag_idx * frame_dt_fs,
        tracer=per_ion.sum(axis=-1).mean(axis=0),
        components=per_ion.mean(axis=0),
        charge=charge,
    )


@dataclass
class Estimate:
    """A diffusivity (cm²/s) with its block standard error and 95% interval."""

    value: float
    std_error: float
    ci95: tuple[float, float]
    block_values: list[float]

    @property
    def rel_half_width(self) -> float:
        if self.value <= 0:
            return float("inf")
        return (self.ci95[1] - self.ci95[0]) / 2.0 / self.value


def _estimate(full: float, blocks: np.ndarray) -> Estimate:
    b = len(blocks)
    se = float(np.std(blocks, ddof=1) / np.sqrt(b))
    q = float(stats.t.ppf(0.975, b - 1))
    return Estimate(full, se, (max(full - q * se, 0.0), full + q * se), [float(v) for v in blocks])


@dataclass
class DiffusionAnalysis:
    """Everything the analysis of one temperature yields, in cm²/s unless named otherwise."""

    tracer: Estimate
    charge: Estimate
    components: list[Estimate]  # D_x, D_y, D_z
    haven_ratio: float | None
    n_hops: int
    n_mobile: int
    duration_fs: float
    frame_dt_fs: float
    curves: MSDCurves
    linearity_ratio: float  # slope over the late half of the window / early half
    framework_max_msd_A2: float | None = None
    n_blocks: int = 5
    window: FitWindow = field(default_factory=FitWindow)


def count_hops(mobile: np.ndarray, frame_dt_fs: float, hop_distance_A: float = 1.5, smoothing_fs: float = 300.0) -> int:
    """Distinct ion hops: moves of more than ``hop_distance_A`` from the last resting point.

    Positions are first averaged over ``smoothing_fs`` to remove thermal vibration, then each ion is
    anchored where it rests; when its smoothed position leaves a sphere of ``hop_distance_A`` around
    the anchor, one hop is counted and the anchor moves to where the ion rests next. Hops closer
    together in time than the smoothing window count once.
    """
    n_frames = mobile.shape[0]
    w = max(int(round(smoothing_fs / frame_dt_fs)), 1)
    if n_frames <= w:
        w = max(n_frames // 4, 1)
    csum = np.cumsum(np.insert(mobile, 0, 0.0, axis=0), axis=0)
    smooth = (csum[w:] - csum[:-w]) / w  # (n_frames - w + 1, ions, 3)
    hops = 0
    anchor = smooth[0].copy()
    limit2 = hop_distance_A**2
    last = len(smooth) - 1
    for f in range(1, len(smooth)):
        moved = ((smooth[f] - anchor) ** 2).sum(axis=1) > limit2
        if moved.any():
            hops += int(moved.sum())
            # re-anchor where the ion comes to rest: one smoothing window later, when the averaged
            # position has finished its ramp (re-anchoring mid-ramp would count one hop twice)
            anchor[moved] = smooth[min(f + w, last)][moved]
    return hops


def analyze_diffusion(
    mobile_A: np.ndarray,
    times_fs: np.ndarray,
    *,
    framework_centroid_A: np.ndarray | None = None,
    n_blocks: int = 5,
    window: FitWindow | None = None,
    hop_distance_A: float = 1.5,
    framework_msd_A2: np.ndarray | None = None,
    lag_indices: np.ndarray | None = None,
) -> DiffusionAnalysis:
    """Tracer/charge/directional diffusivities with block-averaged intervals for one temperature.

    ``mobile_A``: (n_frames, n_mobile, 3) unwrapped Cartesian positions; ``times_fs``: evenly spaced
    frame times; ``framework_centroid_A``: (n_frames, 3) framework centroid (for drift correction).
    ``lag_indices`` overrides the window (lags in frames; every block must be longer than the last).
    """
    mobile = np.asarray(mobile_A, dtype=float)
    times = np.asarray(times_fs, dtype=float)
    if mobile.ndim != 3 or mobile.shape[2] != 3 or mobile.shape[0] != times.shape[0]:
        raise InputError(f"positions must be (frames, ions, 3) matching {times.shape[0]} times; got {mobile.shape}")
    if mobile.shape[1] == 0:
        raise InputError("no mobile ions to analyse")
    if not np.all(np.isfinite(mobile)):
        raise InputError("positions contain NaN or infinity")
    if n_blocks < 2:
        raise InputError("n_blocks must be at least 2 to estimate an uncertainty")
    dts = np.diff(times)
    if len(dts) < 2 or np.any(dts <= 0) or not np.allclose(dts, dts[0], rtol=1e-6, atol=1e-9):
        raise InputError("frame times must be strictly increasing and evenly spaced")
    dt = float(dts[0])
    if framework_centroid_A is not None:
        centroid = np.asarray(framework_centroid_A, dtype=float)
        mobile = mobile - (centroid - centroid[0])[:, None, :]
    window = window or FitWindow()

    n_frames = mobile.shape[0]
    block_frames = n_frames // n_blocks
    if lag_indices is None:
        lag_idx = window.lag_indices(block_frames, dt)
    else:
        lag_idx = np.asarray(lag_indices, dtype=int)
        if lag_idx.min() < 1 or lag_idx.max() >= block_frames:
            raise InputError(f"lags must lie in 1..{block_frames - 1} frames for {n_blocks} blocks")
    to_cgs = A2_PER_FS_TO_CM2_PER_S

    def fit_all(curves: MSDCurves) -> tuple[float, float, list[float]]:
        tracer = fit_slope(curves.lags_fs, curves.tracer) / 6.0 * to_cgs
        charge = fit_slope(curves.lags_fs, curves.charge) / 6.0 * to_cgs
        comps = [fit_slope(curves.lags_fs, curves.components[:, k]) / 2.0 * to_cgs for k in range(3)]
        return tracer, charge, comps

    full_curves = msd_curves(mobile, lag_idx, dt)
    full = fit_all(full_curves)
    per_block = [fit_all(msd_curves(mobile[b * block_frames:(b + 1) * block_frames], lag_idx, dt)) for b in range(n_blocks)]
    tracer = _estimate(full[0], np.array([p[0] for p in per_block]))
    charge = _estimate(full[1], np.array([p[1] for p in per_block]))
    comps = [_estimate(full[2][k], np.array([p[2][k] for p in per_block])) for k in range(3)]

    half = len(lag_idx) // 2
    early = fit_slope(full_curves.lags_fs[: half + 1], full_curves.tracer[: half + 1])
    late = fit_slope(full_curves.lags_fs[half:], full_curves.tracer[half:])
    linearity = late / early if early > 0 else 0.0

    return DiffusionAnalysis(
        tracer=tracer,
        charge=charge,
        components=comps,
        haven_ratio=(tracer.value / charge.value) if charge.value > 0 else None,
        n_hops=count_hops(mobile, dt, hop_distance_A),
        n_mobile=mobile.shape[1],
        duration_fs=float(times[-1] - times[0]),
        frame_dt_fs=dt,
        curves=full_curves,
        linearity_ratio=float(linearity),
        framework_max_msd_A2=None if framework_msd_A2 is None else float(np.max(framework_msd_A2)),
        n_blocks=n_blocks,
        window=window,
    )


def nernst_einstein_factor(n_ions: int, volume_A3: float, charge: int, temperature_K: float) -> float:
    """Conductivity per diffusivity: σ (mS/cm) = factor × D (cm²/s), for ``n_ions`` of charge ``charge``·e."""
    if temperature_K <= 0 or volume_A3 <= 0:
        raise InputError("temperature and volume must be positive")
    n_per_cm3 = n_ions / (volume_A3 * 1e-24)
    siemens_per_cm = n_per_cm3 * (charge * _E_CHARGE_C) ** 2 / (_KB_J_K * temperature_K)
    return 1000.0 * siemens_per_cm
