"""Diffusion analysis on arrays: MSDs, tracer and charge diffusivity, hops, and honest intervals.

Inputs are unwrapped Cartesian positions (Å) of the mobile ions per frame, the frame times (fs), and
the framework's centroid displacement per frame (for drift correction). Everything is plain numpy.

Why not a fixed window. Real conductors at screening temperatures are caged: an ion rattles inside its
site, often hops to a neighbour and straight back, and leaves for good only now and then. The MSD then
rises steeply at short lags (cage filling, back-hops) and turns linear only after those correlations
have died out. A fit at short lags measures the cage, not diffusion (on the LGPS AIMD of
pymatgen-analysis-diffusion's tests, 3.6× too high with a confident interval). So:

1. **Window from the data.** The local slope of the mean tracer MSD is measured on logarithmic lag bins.
   After its peak (the end of the ballistic rise) it relaxes towards the diffusive slope; one or two
   exponential modes fitted to it, over the lags where it is measured to 10%, give the relaxation
   times. The fit starts 4 slowest relaxation times past the peak (what is left is then e⁻⁴ ≈ 2% of
   the amplitude), and never before ``min_start_fraction`` (10%) of the run, which is what analysts
   choose by eye for runs of tens of ps (kinisi's ``start_dt``): on caged hopping the slower modes
   (back-hops) are rarely resolved, and starting at the resolved fast mode biases D by 15-40%. Only
   when the slope shows no relaxation at all right after its peak, where it is known best (a plain
   random walk), does the fit start right after the ballistic regime. It ends at ``end_fraction``
   (half) of the run.
2. **Point estimate.** A weighted least-squares line (free intercept: the cage plateau) through the
   time-origin-averaged MSD at evenly spaced lags of the window, each lag weighted by the exact
   variance of an all-origin MSD point of a random walk. The fit is linear in each ion's MSD, so D*
   is the mean of per-ion estimates, and D_σ the same fit of |Σ Δr|²/N.
3. **Interval.** Resampling over ions of the fit in the chosen window: each ion's whole
   trajectory is one sample, so the correlations between overlapping windows and between lags,
   sparse non-Gaussian hopping and the cage noise are all inside the spread, with no model of them.
   D* is a mean of per-ion slopes: its standard error is their spread over √N, and the 95% interval
   a studentised (bootstrap-t) one, which keeps the skew of sparse hopping. The collective (charge)
   diffusivity is a quadratic form over ions, not a mean: a delete-one-ion jackknife with a Student-t
   quantile on N−1 degrees of freedom (valid for it too, tested with concerted pair hops), and the
   same for the Haven ratio on a log scale.
4. **Say when the data cannot tell.** The diffusive regime counts as reached only when the window
   exists (its start before half its end), the interval of D* excludes zero, the MSD does not bend
   over inside the window (the slope of its first half does not exceed that of its second by 3
   standard errors, ion by ion), and it at least doubles over the window (its growth from t_start to
   t_end is no less than what it had reached at t_start, cage included): a bounded cage
   relaxation that is still under way inside the window can only look like diffusion while it
   rises by less than it already has. And the growth must be carried by hops: at least half the
   number of hops it implies if each were ``max_hop_A`` (4 Å) long must be seen as moves of more
   than ``hop_distance_A`` from a resting point (``count_hops``). When the MSD passes every check
   but doubling, the caged axes of a 1D or 2D conductor may be what holds it back: each axis that
   passes every check on its own is then diffusive, D* counts those axes (D*_z/3 for a channel along
   z), and the others add their chord bounds to the upper end of the interval (``partly_diffusive``). When it is not reached, D* is given
   as an upper bound only: the one-sided 97.5% bound of MSD(t_end)/(6 t_end). For a caged process the
   MSD is concave, so its chord from the origin never falls below the diffusive slope, and the bound
   holds whatever the cage does.

Calibration (coverage ≥ 90%, bias ≤ 15% where the regime is reached) is tested on synthetic caged,
sparse and concerted hopping with known long-time D (tests/synthetic.py) and on the LGPS AIMD; the
side-by-side comparison with kinisi and pymatgen is ``benchmarks/diffusion_estimators.py``.
"""

from __future__ import annotations

import enum
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


class Weighting(enum.StrEnum):
    RANDOM_WALK = "random_walk"  # each lag weighted by the exact variance of an all-origin MSD point of a random walk
    INVERSE_LAG = "inverse_lag"  # weights ∝ 1/lag (pymatgen-analysis-diffusion's smoothed="max" fit)


def _random_walk_msd_variance(lags: np.ndarray, n_frames: int) -> np.ndarray:
    """Variance (up to a constant) of the all-origin MSD at each lag (frames) of a random walk in ``n_frames`` frames.

    Two windows of length l whose origins are δ apart share max(l − |δ|, 0) steps; their squared displacements
    covary as the square of that overlap, so the variance is Σ_δ count(δ)·(l − |δ|)² / (n − l)².
    """
    out = np.empty(len(lags))
    for i, lag in enumerate(np.asarray(lags, dtype=float)):
        n_origins = n_frames - lag
        d = np.arange(-lag, lag + 1)
        count = np.clip(n_origins - np.abs(d), 0, None)
        out[i] = np.sum(count * (lag - np.abs(d)) ** 2) / n_origins**2
    return out


def fit_slope(lags_fs: np.ndarray, msd: np.ndarray) -> float:
    """Slope (Å²/fs) of MSD against lag, weighted least squares with weights 1/lag and free intercept."""
    w = 1.0 / np.sqrt(lags_fs)
    a = np.stack([lags_fs, np.ones_like(lags_fs)], axis=1) * w[:, None]
    (slope, _), *_ = np.linalg.lstsq(a, msd * w, rcond=None)
    return float(slope)


@dataclass(frozen=True)
class FitWindow:
    """How the lags of the MSD fit are chosen from the data (see the module docstring)."""

    end_fraction: float = 0.5  # last lag fitted, fraction of the run
    min_start_fraction: float = 0.1  # never start before this fraction of the run
    min_start_fs: float = 0.0  # nor before this (ballistic regime), fs
    relaxation_multiple: float = 4.0  # start = peak of the local slope + this × its relaxation time
    n_lags: int = 24  # evenly spaced lags in the fit
    rel_precision: float = 0.1  # the relaxation is fitted where the local slope is known to this
    bias_tolerance: float = 0.02  # an earlier start is fine when the relaxation left would bias D by less
    relaxation_min_delta_chi2: float = 25.0  # a relaxation counts when it fits this much better than no relaxation
    bend_z: float = 3.0  # the window's early slope above its late one by this many SE → still relaxing
    max_hop_A: float = 4.0  # longest hop expected: the MSD growth implies at least N·6D·T / this² hops

    def end_lag(self, n_frames: int) -> int:
        return int(self.end_fraction * (n_frames - 1))


@dataclass(frozen=True)
class Relaxation:
    """What the local slope of the MSD says about the cage: its peak, relaxation time and where the fit starts."""

    peak_fs: float
    time_fs: float | None  # None: no relaxation resolved
    start_lag: int | None  # None: the relaxation does not die out within the run


def _log_edges(end_lag: int) -> np.ndarray:
    return np.unique(np.geomspace(1, max(end_lag, 2), 22).astype(int))


def _relaxation_modes(x: np.ndarray, s: np.ndarray, sw: np.ndarray, dt: float, min_delta_chi2: float):
    """Fit s(x) = s∞ + Σ A_i exp(−x/τ_i) with one or two modes (A_i ≥ 0) on a grid of τ, weights ``sw`` = 1/σ.

    The first mode is kept only when it lowers χ² by ``min_delta_chi2`` below a flat slope (the local
    slopes of neighbouring bins share time origins, so χ² runs high); a second, once a relaxation is
    established, by a third of that (≈ 3σ). Returns (s∞, amplitudes, τs) or None.
    """
    if len(x) < 3:
        return None
    # a relaxation is resolved only when the slope is seen for three relaxation times after the peak;
    # a slower "mode" is indistinguishable from the correlated noise of the late bins
    taus = np.geomspace(dt, max(x[-1] / 3.0, 2 * dt), 32)
    ones = np.ones((1, len(x)))

    def best_fit(designs: np.ndarray):
        weighted = designs * sw[None, :, None]
        gram = np.einsum("pki,pkj->pij", weighted, weighted) + 1e-12 * np.eye(designs.shape[2])
        coef = np.linalg.solve(gram, np.einsum("pki,k->pi", weighted, s * sw)[..., None])[..., 0]
        chi2 = ((sw[None] * (s[None] - np.einsum("pki,pi->pk", designs, coef))) ** 2).sum(axis=1)
        chi2[(coef[:, 1:] < 0).any(axis=1)] = np.inf
        p = int(np.argmin(chi2))
        return float(chi2[p]), coef[p], p

    flat = float(np.sum((sw * (s - np.sum(sw**2 * s) / np.sum(sw**2))) ** 2))
    one = np.stack([np.repeat(ones, len(taus), 0), np.exp(-x[None] / taus[:, None])], axis=-1)
    chi1, coef1, p1 = best_fit(one)
    if not np.isfinite(chi1) or flat - chi1 < min_delta_chi2:
        return None
    result = (float(coef1[0]), coef1[1:2], taus[p1:p1 + 1])
    if len(x) >= 5:
        i, j = np.triu_indices(len(taus), 1)
        two = np.stack([np.ones((len(i), len(x))), np.exp(-x[None] / taus[i, None]), np.exp(-x[None] / taus[j, None])], -1)
        chi2, coef2, p2 = best_fit(two)
        if np.isfinite(chi2) and chi1 - chi2 >= min_delta_chi2 / 3.0:
            result = (float(coef2[0]), coef2[1:], np.array([taus[i[p2]], taus[j[p2]]]))
    return result


def choose_fit_start(msd: np.ndarray, local_se: np.ndarray, edges: np.ndarray, frame_dt_fs: float,
                     window: FitWindow, n_frames: int) -> Relaxation:
    """Relaxation of the local MSD slope and the first lag past it (``msd`` per lag, ``local_se`` per bin).

    The peak is the bin whose slope is highest by its lower 2σ end (a noisy late bin cannot pose as the
    peak). After it, one or two exponential modes are fitted where the slope is known to
    ``rel_precision``; a relaxation counts only when it fits clearly better than a flat slope.
    - No relaxation in four or more precise bins after the peak (a cage would show there first, as a
      decline): nothing cages, and the fit starts after the ballistic regime (``min_start_fs``).
    - Otherwise the start is ``relaxation_multiple`` times the slowest relaxation time past the peak
      (earlier if what is left would bias the slope by less than ``bias_tolerance``), and never before
      the conservative floor: slower modes of the same cage hide in the noise of all but the best data.
    """
    dt = frame_dt_fs
    slope = np.diff(msd[edges]) / (np.diff(edges) * dt)
    mid = np.sqrt(edges[:-1] * edges[1:]) * dt
    k = int(np.argmax(slope - 2.0 * local_se))
    imprecise = np.flatnonzero(local_se[k:] > window.rel_precision * np.abs(slope[k:]))
    stop = k + (imprecise[0] if len(imprecise) else len(slope) - k)
    stop = max(stop, min(k + 4, len(slope)))
    t, s = mid[k:stop], slope[k:stop]
    sw = 1.0 / np.maximum(local_se[k:stop], 1e-300)
    modes = _relaxation_modes(t - t[0], s, sw, dt, window.relaxation_min_delta_chi2)
    ballistic = max(int(np.ceil(window.min_start_fs / dt)), 1)
    conservative = max(int(np.ceil(window.min_start_fraction * (n_frames - 1))), ballistic)
    end = window.end_lag(n_frames)
    if modes is None:
        # a cage shows as a decline right after the peak, where the slope is known best: none in four or more
        # precise bins means none at all (a random walk); fewer bins cannot tell
        start = ballistic if len(t) >= 4 else conservative
        return Relaxation(peak_fs=float(t[0]), time_fs=None, start_lag=start if start <= end / 2 else None)
    s_inf, amplitudes, taus = modes
    tau = float(max(taus))
    # a resolved relaxation never brings the start before the conservative floor: slower modes of the same
    # cage hide in the noise of all but the best data (tested on caged hopping with back-hops)
    start = max(int(np.ceil((t[0] + window.relaxation_multiple * tau) / dt)), ballistic)
    if s_inf > 0:
        for lag in range(ballistic, start):
            # MSD still to come from the relaxation (Å²) against the diffusive growth over the rest of the window
            left = float(np.sum(amplitudes * taus * np.exp(-(lag * dt - t[0]) / taus)))
            if left <= window.bias_tolerance * s_inf * (end - lag) * dt:
                start = lag
                break
    start = max(start, conservative)
    return Relaxation(peak_fs=float(t[0]), time_fs=tau, start_lag=start if start <= end / 2 else None)


@dataclass
class MSDCurves:
    """MSD curves of the run (Å², against lag in fs), from the first lag to the end of the fit window."""

    lags_fs: np.ndarray
    tracer: np.ndarray  # mean over mobile ions, summed over axes
    components: np.ndarray  # (n_lags, 3) mean over ions per axis
    charge: np.ndarray  # |Σ_i Δr_i|² / N


@dataclass
class Estimate:
    """A diffusivity (cm²/s) with its jackknife standard error and 95% interval, or an upper bound only.

    With ``upper_bound`` set, ``value`` and ``std_error`` are None and ``ci95`` is (0, bound).
    """

    value: float | None
    std_error: float | None
    ci95: tuple[float, float]
    dof: int
    upper_bound: float | None = None

    @property
    def rel_half_width(self) -> float:
        if self.value is None or self.value <= 0:
            return float("inf")
        return (self.ci95[1] - self.ci95[0]) / 2.0 / self.value


@dataclass
class DiffusionAnalysis:
    """Everything the analysis of one temperature yields, in cm²/s unless named otherwise."""

    tracer: Estimate
    charge: Estimate
    components: list[Estimate]  # D_x, D_y, D_z
    haven_ratio: float | None
    haven_ratio_ci95: tuple[float, float] | None
    diffusive: bool  # the diffusive regime was reached in 3D
    diffusive_axes: tuple[int, ...]  # axes along which it was reached (none: every diffusivity is a bound)
    note: str  # why not, when not
    n_hops: int
    n_mobile: int
    duration_fs: float
    frame_dt_fs: float
    curves: MSDCurves
    fit_window_fs: tuple[float, float]
    plateau_A2: float  # intercept of the tracer fit: the cage's bounded displacement
    relaxation: Relaxation | None
    linearity_ratio: float  # slope over the late half of the window / early half (diagnostic)
    bend_z: float  # (early − late half slope) / its jackknife SE: > window.bend_z means still relaxing
    framework_max_msd_A2: float | None = None
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


def _line_weights(lag_frames: np.ndarray, n_frames: int, frame_dt_fs: float, weighting: Weighting) -> np.ndarray:
    """(2, n_lags): rows give slope (Å²/fs) and intercept (Å²) of the weighted line as dot products with MSD."""
    t = np.asarray(lag_frames, dtype=float) * frame_dt_fs
    variance = t if weighting is Weighting.INVERSE_LAG else _random_walk_msd_variance(lag_frames, n_frames)
    scale = 1.0 / np.sqrt(variance)
    design = np.stack([t, np.ones_like(t)], axis=1) * scale[:, None]
    return np.linalg.pinv(design) * scale[None, :]


def _bootstrap_t_quantiles(values: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """(lower, upper) multipliers of the SE for a 95% bootstrap-t interval of the mean of ``values``.

    Per-ion slopes of sparse hopping are skewed (most ions hop a few times, some not at all); the studentised
    bootstrap carries that skew into the interval, where Student's t is symmetric (1D hopping, 20 ions, ~1-3 hops
    each: 85% coverage with t, 92% with this). Seeded, so the same data give the same interval."""
    rng = np.random.default_rng(seed)
    n = len(values)
    idx = rng.integers(n, size=(n_boot, n))
    samples = values[idx]
    means = samples.mean(axis=1)
    ses = samples.std(axis=1, ddof=1) / np.sqrt(n)
    ok = ses > 0
    if ok.sum() < n_boot // 2:  # (nearly) identical ions: no spread to studentise; Student's t
        return _t95(n - 1), _t95(n - 1)
    t = (means[ok] - values.mean()) / ses[ok]
    lo, hi = np.percentile(t, [2.5, 97.5])
    return float(hi), float(-lo)


def _t95(dof: int) -> float:
    return float(stats.t.ppf(0.975, dof))


def _jackknife(full: np.ndarray, replicates: np.ndarray) -> np.ndarray:
    """Delete-one jackknife standard error of ``full`` (any shape) from replicates (N, *shape)."""
    n = replicates.shape[0]
    pseudo = n * full[None] - (n - 1) * replicates
    return pseudo.std(axis=0, ddof=1) / np.sqrt(n)


class _WindowFits:
    """The weighted-line fit of one window, per axis, for every ion, the collective and each delete-one-ion
    replicate, with the checks of the diffusive regime and the estimates or bounds built from them.

    Slopes are of the MSD per axis (Å²/fs; D_k = slope/2). Sums over ``axes`` are reported as shares of the 3D
    diffusivity (Σ_axes D_k / 3) unless ``share=False`` (one axis: D_k itself). The window is chosen once, from
    all ions, and held in the replicates: a choice that flipped between replicates would be amplified N-fold by
    the jackknife (it is not a smooth statistic).
    """

    def __init__(self, mobile, summed, per_ion, lags, end, dt, weighting, window, hop_distance_A, duration_fs):
        n_frames, n_ions = mobile.shape[:2]
        self.n_ions, self.per_ion, self.lags, self.window = n_ions, per_ion, lags, window
        self.hop_distance_A, self.duration_fs = hop_distance_A, duration_fs
        w_slope = _line_weights(lags, n_frames, dt, weighting)[0]
        half = len(lags) // 2
        self.w_early = _line_weights(lags[: half + 1], n_frames, dt, weighting)[0]
        self.w_late = _line_weights(lags[half:], n_frames, dt, weighting)[0]
        self.half = half
        self.collective_msd = windowed_msd(summed[None])[0, : end + 1]  # (lags, 3)
        leave_one_out = [windowed_msd((summed - mobile[:, a])[None])[0, : end + 1] for a in range(n_ions)]
        self.ion_slopes = np.einsum("ilk,l->ik", per_ion[:, lags], w_slope)  # (ions, 3)
        self.tracer = self._ion_mean(self.ion_slopes / 2.0)
        self.charge = (w_slope @ self.collective_msd[lags] / n_ions / 2.0,
                       np.array([w_slope @ m[lags] for m in leave_one_out]) / (n_ions - 1) / 2.0)
        # chords MSD_k(t_end) / (2 t_end): a caged MSD is concave, so they never fall below the diffusive slope
        t_end = end * dt
        self.chord = self._ion_mean(per_ion[:, end] / (2.0 * t_end))
        self.charge_chord = (self.collective_msd[end] / n_ions / (2.0 * t_end),
                             np.array([m[end] for m in leave_one_out]) / (n_ions - 1) / (2.0 * t_end))
        self.n_hops = count_hops(mobile, dt, hop_distance_A)
        self.dof = n_ions - 1
        self.q = _t95(self.dof)

    def _ion_mean(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean over ions, delete-one-ion means) of per-ion values (ions, 3)."""
        return values.mean(axis=0), (values.sum(axis=0)[None] - values) / (self.n_ions - 1)

    @staticmethod
    def _sum(pair, axes, share: bool = True) -> tuple[float, np.ndarray]:
        full, reps = pair
        scale = 3.0 if share else 1.0
        return float(full[axes].sum() / scale), reps[:, axes].sum(axis=1) / scale

    def _upper(self, pair, axes, share: bool = True) -> float:
        value, reps = self._sum(pair, axes, share)
        return value + self.q * float(_jackknife(np.asarray(value), reps))

    def curvature(self, axes) -> tuple[float, float, float]:
        """Early- and late-half slopes of the window (MSD over ``axes``, Å²/fs) and how many SEs apart, ion by ion."""
        msd_axes = self.per_ion[:, :, axes].sum(axis=-1)
        early = msd_axes[:, self.lags[: self.half + 1]] @ self.w_early
        late = msd_axes[:, self.lags[self.half:]] @ self.w_late
        se = float((early - late).std(ddof=1) / np.sqrt(self.n_ions))
        z = float((early.mean() - late.mean()) / se) if se > 0 else 0.0
        return float(early.mean()), float(late.mean()), z

    def why_not(self, axes, relaxation: Relaxation) -> tuple[str, str]:
        """Which check the MSD along ``axes`` fails in the window, and why; ("", "") when it is diffusive."""
        window, lags = self.window, self.lags
        if relaxation.start_lag is None:
            return "relaxing", (f"the MSD's local slope is still relaxing at half the fit window (relaxation time "
                                f"{relaxation.time_fs / 1000:.2g} ps): the run is too short to leave the cage regime "
                                "behind")
        value, reps = self._sum(self.tracer, axes)
        if value - self.q * float(_jackknife(np.asarray(value), reps)) <= 0.0:
            return "zero", "D* is not significantly above zero over the fit window"
        early, late, z = self.curvature(axes)
        if z > window.bend_z:
            return "bends", (f"the MSD bends over inside the fit window (its slope falls by {1 - late / early:.0%} "
                             f"from the first half to the second, {z:.1f} standard errors): still relaxing, not diffusive")
        hops_needed = self.n_ions * 6.0 * value * self.duration_fs / window.max_hop_A**2
        if self.n_hops < 0.5 * hops_needed:
            return "hops", (f"the MSD grows as if {hops_needed:.0f} hops of up to {window.max_hop_A:g} Å had happened, "
                            f"but only {self.n_hops} moves of more than {self.hop_distance_A:g} Å from a resting point "
                            "did: the growth is not carried by hops")
        msd_axes = self.per_ion[:, :, axes].sum(axis=-1).mean(axis=0)
        growth, reached = float(msd_axes[lags[-1]] - msd_axes[lags[0]]), float(msd_axes[lags[0]])
        if growth < reached:
            return "growth", (f"the MSD grows by {growth:.2g} Å² over the fit window, less than it had reached at its "
                              f"start ({reached:.2g} Å²): diffusion cannot be told apart from a slow cage relaxation")
        return "", ""

    def estimate(self, pair, axes, *, bounded=None, per_ion=None, share: bool = True) -> Estimate:
        """The diffusivity of the diffusive ``axes`` (cm²/s); the other axes add their chord bound (``bounded``) to
        the upper end. With ``per_ion`` slopes (a mean over ions) the interval is bootstrap-t, else jackknife-t."""
        value, reps = self._sum(pair, axes, share)
        se = float(_jackknife(np.asarray(value), reps))
        rest = [k for k in range(3) if k not in axes]
        extra = self._upper(bounded, rest, share) if rest and bounded is not None else 0.0
        lo_q = hi_q = self.q
        if per_ion is not None:
            lo_q, hi_q = _bootstrap_t_quantiles(per_ion[:, axes].sum(axis=1))
        v, se_c = value * A2_PER_FS_TO_CM2_PER_S, se * A2_PER_FS_TO_CM2_PER_S
        return Estimate(v, se_c, (max(v - lo_q * se_c, 0.0), v + (hi_q * se + extra) * A2_PER_FS_TO_CM2_PER_S),
                        self.dof)

    def bound(self, pair, axes, *, share: bool = True) -> Estimate:
        """Only a one-sided 97.5% upper bound (cm²/s), from the chords."""
        upper = self._upper(pair, axes, share) * A2_PER_FS_TO_CM2_PER_S
        return Estimate(None, None, (0.0, upper), self.dof, upper_bound=upper)

    def haven_ratio(self, axes) -> tuple[float | None, tuple[float, float] | None]:
        """H = D*/D_σ over ``axes``, with a jackknife interval of ln H when every replicate is positive."""
        t_value, t_reps = self._sum(self.tracer, axes)
        c_value, c_reps = self._sum(self.charge, axes)
        if c_value <= 0 or t_value <= 0:
            return None, None
        haven = t_value / c_value
        if not (np.all(c_reps > 0) and np.all(t_reps > 0)):
            return haven, None
        se_log = float(_jackknife(np.log(np.asarray(haven)), np.log(t_reps / c_reps)))
        return haven, (haven * float(np.exp(-self.q * se_log)), haven * float(np.exp(self.q * se_log)))


def analyze_diffusion(
    mobile_A: np.ndarray,
    times_fs: np.ndarray,
    *,
    framework_centroid_A: np.ndarray | None = None,
    window: FitWindow | None = None,
    hop_distance_A: float = 1.5,
    framework_msd_A2: np.ndarray | None = None,
    lag_indices: np.ndarray | None = None,
    weighting: Weighting | str = Weighting.RANDOM_WALK,
) -> DiffusionAnalysis:
    """Tracer/charge/directional diffusivities with intervals from the spread over ions, or upper bounds, at one T.

    ``mobile_A``: (n_frames, n_mobile, 3) unwrapped Cartesian positions; ``times_fs``: evenly spaced
    frame times; ``framework_centroid_A``: (n_frames, 3) framework centroid (for drift correction).
    ``lag_indices`` fixes the fitted lags (frames) instead of choosing them; the caller then owns the
    window, and the numbers are reported without the diffusive-regime decision.
    """
    mobile = np.asarray(mobile_A, dtype=float)
    times = np.asarray(times_fs, dtype=float)
    if mobile.ndim != 3 or mobile.shape[2] != 3 or mobile.shape[0] != times.shape[0]:
        raise InputError(f"positions must be (frames, ions, 3) matching {times.shape[0]} times; got {mobile.shape}")
    n_ions = mobile.shape[1]
    if n_ions == 0:
        raise InputError("no mobile ions to analyse")
    if n_ions < 2:
        raise InputError("one mobile ion: the interval comes from the spread over ions, so at least 2 are needed; "
                         "simulate a supercell that holds more of them")
    if not np.all(np.isfinite(mobile)):
        raise InputError("positions contain NaN or infinity")
    dts = np.diff(times)
    if len(dts) < 2 or np.any(dts <= 0) or not np.allclose(dts, dts[0], rtol=1e-6, atol=1e-9):
        raise InputError("frame times must be strictly increasing and evenly spaced")
    dt = float(dts[0])
    if framework_centroid_A is not None:
        centroid = np.asarray(framework_centroid_A, dtype=float)
        mobile = mobile - (centroid - centroid[0])[:, None, :]
    window = window or FitWindow()
    weighting = Weighting(weighting)
    n_frames = mobile.shape[0]

    if lag_indices is None:
        end = window.end_lag(n_frames)
        if end < 8:
            raise InputError(f"too few frames to fit an MSD: {n_frames} frames give lags up to {end}; "
                             "run longer or sample more often")
    else:
        fixed = np.asarray(lag_indices, dtype=int)
        if fixed.size < 3 or fixed.min() < 1 or fixed.max() >= n_frames:
            raise InputError(f"lags must be at least 3 values in 1..{n_frames - 1} frames")
        end = int(fixed.max())

    per_ion = windowed_msd(np.transpose(mobile, (1, 0, 2)))[:, : end + 1]  # (ions, lags, 3)
    per_ion_total = per_ion.sum(axis=-1)
    summed = mobile.sum(axis=1)
    msd_all = per_ion_total.mean(axis=0)
    if lag_indices is None:
        edges = _log_edges(end)
        local = np.diff(per_ion_total[:, edges], axis=1) / (np.diff(edges) * dt)
        local_se = local.std(axis=0, ddof=1) / np.sqrt(n_ions)
        relaxation = choose_fit_start(msd_all, local_se, edges, dt, window, n_frames)
        start = relaxation.start_lag if relaxation.start_lag is not None else end // 2
        lags = np.unique(np.linspace(start, end, window.n_lags).astype(int))
    else:
        relaxation, lags = None, fixed

    fits = _WindowFits(mobile, summed, per_ion, lags, end, dt, weighting, window, hop_distance_A,
                       duration_fs=float(times[-1] - times[0]))
    everything = [0, 1, 2]
    failed, note = fits.why_not(everything, relaxation) if lag_indices is None else ("", "")
    diffusive_axes = everything if not failed else []
    if failed == "growth":
        # significant, straight and carried by hops, yet the MSD does not double: the signature of a conductor
        # whose other axes stay caged (a 1D or 2D channel); an axis that passes every check on its own counts
        diffusive_axes = [k for k in range(3) if not fits.why_not([k], relaxation)[0]]
    if diffusive_axes and note:
        names = ", ".join("xyz"[k] for k in diffusive_axes)
        note = (f"diffusive along {names} only; {note} in 3D. D* counts the diffusive axes; the others add their "
                "upper bound to the interval")
    if diffusive_axes:
        tracer = fits.estimate(fits.tracer, diffusive_axes, bounded=fits.chord, per_ion=fits.ion_slopes)
        charge = fits.estimate(fits.charge, diffusive_axes, bounded=fits.charge_chord)
        components = [fits.estimate(fits.tracer, [k], per_ion=fits.ion_slopes, share=False) if k in diffusive_axes
                      else fits.bound(fits.chord, [k], share=False) for k in range(3)]
        haven, haven_ci = fits.haven_ratio(diffusive_axes)
    else:
        tracer = fits.bound(fits.chord, everything)
        charge = fits.bound(fits.charge_chord, everything)
        components = [fits.bound(fits.chord, [k], share=False) for k in range(3)]
        haven = haven_ci = None
    early_slope, late_slope, bend_z = fits.curvature(everything)

    curves = MSDCurves(lags_fs=np.arange(1, end + 1) * dt, tracer=per_ion_total[:, 1:].mean(axis=0),
                       components=per_ion[:, 1:].mean(axis=0), charge=fits.collective_msd[1:].sum(axis=-1) / n_ions)

    return DiffusionAnalysis(
        tracer=tracer,
        charge=charge,
        components=components,
        haven_ratio=haven,
        haven_ratio_ci95=haven_ci,
        diffusive=len(diffusive_axes) == 3,
        diffusive_axes=tuple(diffusive_axes),
        note=note,
        n_hops=fits.n_hops,
        n_mobile=n_ions,
        duration_fs=fits.duration_fs,
        frame_dt_fs=dt,
        curves=curves,
        fit_window_fs=(float(lags[0] * dt), float(lags[-1] * dt)),
        plateau_A2=float(_line_weights(lags, n_frames, dt, weighting)[1] @ msd_all[lags]),
        relaxation=relaxation,
        linearity_ratio=late_slope / early_slope if early_slope > 0 else 0.0,
        bend_z=float(bend_z),
        framework_max_msd_A2=None if framework_msd_A2 is None else float(np.max(framework_msd_A2)),
        window=window,
    )


def nernst_einstein_factor(n_ions: int, volume_A3: float, charge: int, temperature_K: float) -> float:
    """Conductivity per diffusivity: σ (mS/cm) = factor × D (cm²/s), for ``n_ions`` of charge ``charge``·e."""
    if temperature_K <= 0 or volume_A3 <= 0:
        raise InputError("temperature and volume must be positive")
    n_per_cm3 = n_ions / (volume_A3 * 1e-24)
    siemens_per_cm = n_per_cm3 * (charge * _E_CHARGE_C) ** 2 / (_KB_J_K * temperature_K)
    return 1000.0 * siemens_per_cm
