"""Statistics of a validation: rank agreement (Spearman ρ with a seeded bootstrap interval, Kendall τ-b) and
errors (MAE, RMSE, MAE of log10 σ) between a model and a reference, or between two models.

**Bounds rank as bounds.** A value that is only a bound (a run without a diffusive signal gives σ < U; an
experiment below its detection limit gives σ < 1e-10 S/cm) is never ranked as if it were the number U. We
follow the standard rule for censored data with several detection limits (Helsel, *Statistics for Censored
Environmental Data*, 2nd ed., 2012, ch. 11-12): for upper bounds, let U be the highest bound in the sample;
every bound and every value below U are recensored to "< U" and share one tied rank below all values ≥ U (a
value under U cannot be ordered against a bound of U, so no order is invented between them). Lower bounds
mirror this at the top (L, the lowest lower bound). When the two classes overlap (a lower bound under an upper
bound), nothing in the sample can be ordered for sure and every entry gets the same rank (ρ is undefined).
The recensoring is redone inside every bootstrap resample. The price is information: one high bound ties
every value beneath it, which shows as a wider interval, not as a false number.

scipy computes the point estimates (``spearmanr``, ``kendalltau`` with its τ-b tie correction); our own code does
the recensoring and the bootstrap, which draws many resamples in one array operation for Spearman.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from scipy import stats as sstats

from mlip.errors import InputError

N_BOOTSTRAP = 2000
MIN_N_RANK = 3  # fewer paired entries than this: no rank correlation at all
MIN_N_INTERVAL = 4  # fewer than this: a value but no interval (a bootstrap of three points says nothing)


class Bound(enum.StrEnum):
    """What a censored value says: the true value is below (UPPER) or above (LOWER) the stated number."""

    UPPER = "upper"
    LOWER = "lower"


@dataclass(frozen=True)
class RankValue:
    """One entry's number to rank by, or its bound (``bound`` set: ``value`` is the bound, not an estimate)."""

    value: float
    bound: Bound | None = None


@dataclass
class RankCorrelation:
    """A rank correlation with its bootstrap interval and what went into it."""

    statistic: str  # "spearman" or "kendall_tau_b"
    value: float | None  # None: fewer than MIN_N_RANK entries, or no order to compare
    ci95: tuple[float, float] | None  # percentile bootstrap interval; None under MIN_N_INTERVAL entries
    n: int  # paired entries used
    n_bounds_x: int  # of them, bounds on the first variable
    n_bounds_y: int
    n_boot: int  # bootstrap resamples drawn
    n_boot_undefined: int  # resamples in which every rank tied (left out of the interval)
    seed: int
    note: str = ""

    def as_dict(self) -> dict:
        out = asdict(self)
        out["ci95"] = list(self.ci95) if self.ci95 is not None else None
        return out


def _bound_array(bounds, n: int) -> np.ndarray:
    """Bounds as an int array: 0 value, -1 upper bound, +1 lower bound."""
    if bounds is None:
        return np.zeros(n, dtype=np.int8)
    out = np.zeros(n, dtype=np.int8)
    for i, b in enumerate(bounds):
        if b is None or b == "" or b is False:
            continue
        b = Bound(b)
        out[i] = -1 if b is Bound.UPPER else 1
    if len(out) != n:
        raise InputError(f"{len(out)} bound markers for {n} values")
    return out


def censored_keys(values: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Sort keys that implement the recensoring rule of the module docstring, row by row (last axis): -inf for
    the bottom class (upper bounds and values under the highest upper bound), +inf for the top class, the value
    otherwise; NaN everywhere in a row whose classes overlap (no order at all)."""
    values = np.asarray(values, dtype=float)
    upper, lower = bounds == -1, bounds == 1
    u = np.max(np.where(upper, values, -np.inf), axis=-1, keepdims=True)
    low = np.min(np.where(lower, values, np.inf), axis=-1, keepdims=True)
    bottom = upper | ((bounds == 0) & (values < u))
    top = lower | ((bounds == 0) & (values > low))
    keys = np.where(bottom, -np.inf, np.where(top, np.inf, values))
    clash = np.any(bottom & top, axis=-1, keepdims=True) | (np.any(upper, axis=-1, keepdims=True)
                                                           & np.any(lower, axis=-1, keepdims=True) & (low < u))
    return np.where(clash, np.nan, keys)


def censored_ranks(values, bounds=None) -> np.ndarray:
    """Average ranks (1..n) under the recensoring rule; all equal when the sample holds no order."""
    values = np.asarray(values, dtype=float)
    keys = censored_keys(values, _bound_array(bounds, len(values)))
    if np.isnan(keys).any():
        return np.full(len(values), (len(values) + 1) / 2.0)
    return sstats.rankdata(keys)


def _checked_pairs(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise InputError(f"paired values need two 1-D arrays of one length, got shapes {x.shape} and {y.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise InputError("rank statistics need finite values (a bound is a finite number with its bound marker)")
    return x, y


def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(axis=-1) / den
    return np.where(den > 0, r, np.nan)


def _rank_rows(keys: np.ndarray) -> np.ndarray:
    """Average ranks along the last axis; rows holding NaN (no order) become constant ranks."""
    safe = np.where(np.isnan(keys), 0.0, keys)
    ranks = sstats.rankdata(safe, axis=-1)
    return np.where(np.isnan(keys).any(axis=-1, keepdims=True), 1.0, ranks)


def _rank_pair(x, y, x_bounds, y_bounds) -> tuple[np.ndarray, np.ndarray] | None:
    """The censored ranks of both samples, or None when a rank correlation is undefined (too few pairs, or one
    sample without any order)."""
    x, y = _checked_pairs(x, y)
    if len(x) < MIN_N_RANK:
        return None
    rx, ry = censored_ranks(x, x_bounds), censored_ranks(y, y_bounds)
    if np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return None
    return rx, ry


def spearman(x, y, x_bounds=None, y_bounds=None) -> float | None:
    """Spearman ρ of the censored ranks (scipy's ``spearmanr`` of them); None when it is undefined."""
    ranks = _rank_pair(x, y, x_bounds, y_bounds)
    return None if ranks is None else float(sstats.spearmanr(*ranks).statistic)


def kendall_tau_b(x, y, x_bounds=None, y_bounds=None) -> float | None:
    """Kendall τ-b (ties corrected) of the censored ranks (scipy's ``kendalltau``); None when undefined."""
    ranks = _rank_pair(x, y, x_bounds, y_bounds)
    return None if ranks is None else float(sstats.kendalltau(*ranks, variant="b").statistic)


def _tau_b_rows(rx: np.ndarray, ry: np.ndarray) -> np.ndarray:
    """τ-b of each row pair from pairwise signs (n² per row; validation sets are small)."""
    dx = np.sign(rx[:, :, None] - rx[:, None, :])
    dy = np.sign(ry[:, :, None] - ry[:, None, :])
    iu = np.triu_indices(rx.shape[1], k=1)
    dx, dy = dx[:, iu[0], iu[1]], dy[:, iu[0], iu[1]]
    s = (dx * dy).sum(axis=1)
    den = np.sqrt((dx != 0).sum(axis=1) * (dy != 0).sum(axis=1).astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, s / den, np.nan)


def rank_correlation(
    x,
    y,
    *,
    x_bounds=None,
    y_bounds=None,
    statistic: str = "spearman",
    x_log_sd=None,
    n_boot: int = N_BOOTSTRAP,
    seed: int = 0,
) -> RankCorrelation:
    """Spearman ρ (or Kendall τ-b) with a percentile bootstrap 95% interval over entries, bounds as bounds.

    ``x_log_sd`` (optional, one per entry, same units as ``x``): the standard deviation of each estimate in
    ``x``; every resample then redraws each value (not each bound) from a normal of that width, so the interval
    carries the estimates' own uncertainty on top of the sampling of entries. Resamples in which every rank
    ties are left out and counted. Seeded: the same inputs and seed give the same interval.
    """
    if statistic not in ("spearman", "kendall_tau_b"):
        raise InputError(f"unknown rank statistic {statistic!r}; use spearman or kendall_tau_b")
    x, y = _checked_pairs(x, y)
    n = len(x)
    bx, by = _bound_array(x_bounds, n), _bound_array(y_bounds, n)
    point = (spearman if statistic == "spearman" else kendall_tau_b)(x, y, _bounds_list(bx), _bounds_list(by))
    result = RankCorrelation(statistic, point, None, n, int((bx != 0).sum()), int((by != 0).sum()), 0, 0, seed)
    if n < MIN_N_INTERVAL or point is None:
        result.note = (f"{n} paired entries: no interval under {MIN_N_INTERVAL}" if point is not None
                       else f"undefined with {n} paired entries (fewer than {MIN_N_RANK}, or no order to compare)")
        return result
    sd = None
    if x_log_sd is not None:
        sd = np.asarray(x_log_sd, dtype=float)
        if sd.shape != x.shape or np.any(sd < 0) or not np.all(np.isfinite(sd)):
            raise InputError("x_log_sd needs one finite, non-negative width per entry")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    xs = x[idx]
    if sd is not None:
        xs = xs + np.where(bx[idx] == 0, sd[idx], 0.0) * rng.standard_normal(xs.shape)
    rx = _rank_rows(censored_keys(xs, bx[idx]))
    ry = _rank_rows(censored_keys(y[idx], by[idx]))
    if statistic == "spearman":
        boot = _rowwise_pearson(rx, ry)
    else:
        boot = np.concatenate([_tau_b_rows(rx[i:i + 200], ry[i:i + 200]) for i in range(0, n_boot, 200)])
    ok = boot[np.isfinite(boot)]
    result.n_boot, result.n_boot_undefined = n_boot, int(n_boot - ok.size)
    if ok.size >= 0.5 * n_boot:
        lo, hi = np.percentile(ok, [2.5, 97.5])
        result.ci95 = (float(lo), float(hi))
    else:
        result.note = f"{result.n_boot_undefined} of {n_boot} resamples had no order: no interval"
    return result


def log10_ranking(records: Sequence[Mapping[str, Any]], value: Callable[[Mapping[str, Any]], float | None],
                  upper_bound: Callable[[Mapping[str, Any]], float | None]) -> dict[str, RankValue]:
    """key → log10 of each finished (``status`` ok) record's positive ``value``, or else of its ``upper_bound``
    marked as a bound; records with neither are left out. The ``ranking`` of a set whose figure is a positive
    quantity that a run may only bound from above (σ, D*)."""
    out = {}
    for r in records:
        if r.get("status") != "ok":
            continue
        v, ub = value(r), upper_bound(r)
        if v is not None and v > 0:
            out[r["key"]] = RankValue(float(np.log10(v)))
        elif ub is not None and ub > 0:
            out[r["key"]] = RankValue(float(np.log10(ub)), Bound.UPPER)
    return out


def _bounds_list(b: np.ndarray) -> list[str | None]:
    return [None if v == 0 else (Bound.UPPER if v < 0 else Bound.LOWER) for v in b]


@dataclass
class ErrorSummary:
    """MAE, RMSE and mean signed error (model − reference) over paired numbers (bounds excluded by the caller)."""

    n: int
    mae: float | None
    rmse: float | None
    mean_signed: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def errors(reference, model) -> ErrorSummary:
    ref, mod = _checked_pairs(reference, model)
    if len(ref) == 0:
        return ErrorSummary(0, None, None, None)
    d = mod - ref
    return ErrorSummary(len(d), float(np.mean(np.abs(d))), float(np.sqrt(np.mean(d * d))), float(np.mean(d)))


def log10_errors(reference, model) -> ErrorSummary:
    """Errors of log10 of positive quantities (e.g. σ in S/cm: MAE in decades)."""
    ref, mod = np.asarray(reference, dtype=float), np.asarray(model, dtype=float)
    if np.any(ref <= 0) or np.any(mod <= 0):
        raise InputError("log10 errors need positive values")
    return errors(np.log10(ref), np.log10(mod))


def pairwise_agreement(rankings: dict[str, dict[str, RankValue]], *, seed: int = 0,
                       n_boot: int = N_BOOTSTRAP) -> list[dict]:
    """Kendall τ-b and Spearman ρ (bounds as bounds, bootstrap intervals) between every pair of rankings,
    each over the entries both ranked. ``rankings``: name → {entry key → RankValue}."""
    names = list(rankings)
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            keys = sorted(set(rankings[a]) & set(rankings[b]))
            xa = [rankings[a][k] for k in keys]
            xb = [rankings[b][k] for k in keys]
            kw = dict(x_bounds=[v.bound for v in xa], y_bounds=[v.bound for v in xb], seed=seed, n_boot=n_boot)
            vx, vy = [v.value for v in xa], [v.value for v in xb]
            out.append({"a": a, "b": b, "n": len(keys),
                        "kendall_tau_b": rank_correlation(vx, vy, statistic="kendall_tau_b", **kw).as_dict(),
                        "spearman": rank_correlation(vx, vy, **kw).as_dict()})
    return out


def spread_vs_error(predictions: dict[str, dict[str, float]], reference: dict[str, float], *, unit: str,
                    seed: int = 0, n_boot: int = N_BOOTSTRAP) -> dict | None:
    """Is the models' disagreement a usable uncertainty? Over the entries where every model and the reference give a
    number (bounds are left out by the caller): the spread (largest minus smallest prediction) of each entry, the
    share of references inside the models' range, and for each model the Spearman ρ (bootstrap interval) between
    the spread and its absolute error, with its MAE on the entries of below- and above-median spread. None with
    fewer than two models. ``unit`` names the unit of every value (eV, log10 S/cm)."""
    names = list(predictions)
    if len(names) < 2:
        return None
    keys = sorted(set(reference).intersection(*(set(predictions[n]) for n in names)))
    out: dict = {"unit": unit, "models": names, "n": len(keys)}
    if not keys:
        return out
    pred = np.array([[predictions[n][k] for k in keys] for n in names], dtype=float)
    ref = np.array([reference[k] for k in keys], dtype=float)
    if not (np.all(np.isfinite(pred)) and np.all(np.isfinite(ref))):
        raise InputError("spread versus error needs finite predictions and references")
    lo, hi = pred.min(axis=0), pred.max(axis=0)
    spread = hi - lo
    median = float(np.median(spread))
    narrow, wide = spread <= median, spread > median
    out.update({"median_spread": median, "mean_spread": float(spread.mean()),
                "reference_inside_range_share": float(np.mean((ref >= lo) & (ref <= hi))),
                "n_narrow": int(narrow.sum()), "n_wide": int(wide.sum()),
                "committee_mean_mae": float(np.mean(np.abs(pred.mean(axis=0) - ref))), "per_model": {}})
    for name, row in zip(names, pred):
        err = np.abs(row - ref)
        out["per_model"][name] = {
            "mae": float(err.mean()),
            "mae_narrow_spread": float(err[narrow].mean()) if narrow.any() else None,
            "mae_wide_spread": float(err[wide].mean()) if wide.any() else None,
            "spearman_spread_abs_error": rank_correlation(spread, err, seed=seed, n_boot=n_boot).as_dict(),
        }
    return out


__all__ = ["Bound", "RankValue", "RankCorrelation", "ErrorSummary", "censored_ranks", "spearman", "kendall_tau_b",
           "rank_correlation", "errors", "log10_errors", "pairwise_agreement", "spread_vs_error"]

