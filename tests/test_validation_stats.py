"""screening.validation.stats on synthetic data with known answers: rank correlations against scipy and textbook
values, the bootstrap interval's coverage over seeds, and bounds that rank as bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sstats

from mlip.errors import InputError
from screening.validation.stats import (
    Bound,
    RankValue,
    censored_ranks,
    errors,
    kendall_tau_b,
    log10_errors,
    pairwise_agreement,
    rank_correlation,
    spearman,
    spread_vs_error,
)


def test_perfectly_monotone_data_give_one_and_reversed_give_minus_one():
    x = np.linspace(-3, 2, 15)
    y = np.exp(x) ** 3  # monotone, far from linear
    assert spearman(x, y) == pytest.approx(1.0)
    assert kendall_tau_b(x, y) == pytest.approx(1.0)
    assert spearman(x, -y) == pytest.approx(-1.0)
    r = rank_correlation(x, y, seed=3)
    assert r.value == pytest.approx(1.0) and r.ci95 == pytest.approx((1.0, 1.0))


def test_point_estimates_equal_scipy_with_ties():
    rng = np.random.default_rng(7)
    for _ in range(20):
        x = rng.integers(0, 6, size=25).astype(float)  # many ties
        y = x + rng.integers(-2, 3, size=25)
        assert spearman(x, y) == pytest.approx(sstats.spearmanr(x, y).statistic, abs=1e-12)
        assert kendall_tau_b(x, y) == pytest.approx(sstats.kendalltau(x, y, variant="b").statistic, abs=1e-12)


def test_kendall_tau_b_textbook_value():
    # 4 concordant, 1 discordant, one tie in x: n0 = 6, n1 = 1 (x ties), n2 = 0 → τ_b = (4-1)/sqrt(5*6)
    x = [1, 2, 2, 3]
    y = [1, 2, 3, 0.5]
    # pairs: (1,2)+ (1,3)+ (1,4)- (2,3)tie-x (2,4)- (3,4)-  → C=2, D=3
    expected = (2 - 3) / math.sqrt((6 - 1) * 6)
    assert kendall_tau_b(x, y) == pytest.approx(expected)


def test_bootstrap_resamples_match_a_loop_over_scipy():
    """The vectorised bootstrap computes, resample by resample, what scipy would (same indices)."""
    rng = np.random.default_rng(11)
    x, y = rng.normal(size=12), rng.normal(size=12)
    r = rank_correlation(x, y, seed=5, n_boot=300)
    idx = np.random.default_rng(5).integers(0, 12, size=(300, 12))
    loop = np.array([sstats.spearmanr(x[i], y[i]).statistic for i in idx])
    loop = loop[np.isfinite(loop)]
    assert r.ci95 == pytest.approx(tuple(np.percentile(loop, [2.5, 97.5])), abs=1e-12)
    rk = rank_correlation(x, y, seed=5, n_boot=300, statistic="kendall_tau_b")
    loop = np.array([sstats.kendalltau(x[i], y[i]).statistic for i in idx])
    assert rk.ci95 == pytest.approx(tuple(np.percentile(loop[np.isfinite(loop)], [2.5, 97.5])), abs=1e-12)


def test_seeded_interval_is_reproducible_and_seed_dependent():
    rng = np.random.default_rng(2)
    x = rng.normal(size=20)
    y = x + rng.normal(size=20)
    assert rank_correlation(x, y, seed=1).ci95 == rank_correlation(x, y, seed=1).ci95
    assert rank_correlation(x, y, seed=1).ci95 != rank_correlation(x, y, seed=2).ci95


@pytest.mark.parametrize("r_true", [0.0, 0.6])
def test_interval_covers_the_truth_at_its_stated_rate(r_true):
    """Bivariate normal samples: population Spearman ρ = (6/π) arcsin(r/2). The 95% percentile interval must cover
    it in about 95% of seeds (binomial spread over 200 seeds: ±3%; percentile bootstrap with n = 40 is known to
    under-cover slightly, so 0.88 is the floor)."""
    rho_true = 6 / math.pi * math.asin(r_true / 2)
    cov = [[1, r_true], [r_true, 1]]
    hits = 0
    n_seeds = 200
    for seed in range(n_seeds):
        xy = np.random.default_rng(1000 + seed).multivariate_normal([0, 0], cov, size=40)
        ci = rank_correlation(xy[:, 0], xy[:, 1], seed=seed, n_boot=400).ci95
        hits += ci[0] <= rho_true <= ci[1]
    assert 0.88 <= hits / n_seeds <= 0.99


def test_upper_bounds_tie_with_every_value_below_the_highest_bound():
    values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    bounds = [None, Bound.UPPER, None, Bound.UPPER, None, None]
    ranks = censored_ranks(values, bounds)
    # highest upper bound 4: entries 1, 2, 3 (values below 4) and both bounds tie at the bottom
    assert ranks.tolist() == [2.5, 2.5, 2.5, 2.5, 5.0, 6.0]


def test_lower_bounds_mirror_at_the_top_and_overlapping_classes_hold_no_order():
    assert censored_ranks([1, 2, 3, 4], [None, None, Bound.LOWER, None]).tolist() == [1, 2, 3.5, 3.5]
    # a lower bound (> 2) under an upper bound (< 3): nothing can be ordered for sure
    assert np.ptp(censored_ranks([1, 3, 2, 4], [None, Bound.UPPER, Bound.LOWER, None])) == 0


def test_a_bound_never_ranks_as_the_number():
    """Model gives '< 1e-3' for an entry measured lowest: ranked at its bound it would look like a miss; as a bound it
    ties with the values under it and ρ reflects only what is known."""
    measured = [-9.0, -6.0, -5.0, -4.0, -3.0, -2.0]
    model = [-3.0, -6.5, -5.5, -4.5, -2.5, -1.0]
    as_number = spearman(measured, model)
    as_bound = spearman(measured, model, y_bounds=[Bound.UPPER, None, None, None, None, None])
    assert as_number < 0.8 and as_bound > as_number
    # by hand: model ranks with the bound recensored: {-3 bound, -6.5, -5.5, -4.5} tie at the bottom (2.5)
    expected = sstats.spearmanr([1, 2, 3, 4, 5, 6], [2.5, 2.5, 2.5, 2.5, 5, 6]).statistic
    assert as_bound == pytest.approx(expected)


def test_bootstrap_recensors_inside_each_resample():
    """With all predictions bounds except two, ρ's resamples that draw no value are undefined and are counted."""
    x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    y = [0.0, 0.0, 0.0, 0.0, 5.0, 6.0]
    r = rank_correlation(x, y, y_bounds=[Bound.UPPER] * 4 + [None, None], seed=0, n_boot=400)
    assert r.n_bounds_y == 4
    assert r.n_boot_undefined > 0
    assert r.value == pytest.approx(sstats.spearmanr(x, [2.5, 2.5, 2.5, 2.5, 5, 6]).statistic)


def test_prediction_widths_widen_the_interval():
    rng = np.random.default_rng(4)
    x = rng.normal(size=25)
    y = x + 0.3 * rng.normal(size=25)
    plain = rank_correlation(y, x, seed=0)
    noisy = rank_correlation(y, x, seed=0, x_log_sd=np.full(25, 1.0))
    assert noisy.value == plain.value
    assert (noisy.ci95[1] - noisy.ci95[0]) > (plain.ci95[1] - plain.ci95[0])
    zero = rank_correlation(y, x, seed=0, x_log_sd=np.zeros(25))
    assert zero.ci95 == plain.ci95


def test_small_samples_say_so():
    assert spearman([1, 2], [2, 1]) is None
    r = rank_correlation([1, 2, 3], [1, 3, 2])
    assert r.value == pytest.approx(0.5) and r.ci95 is None and "no interval" in r.note


def test_errors_and_log_errors():
    e = errors([1.0, 2.0, 3.0], [2.0, 2.0, 1.0])
    assert (e.mae, e.rmse, e.mean_signed) == pytest.approx((1.0, math.sqrt(5 / 3), -1 / 3))
    le = log10_errors([1e-3, 1e-6], [1e-2, 1e-8])
    assert le.mae == pytest.approx(1.5) and le.mean_signed == pytest.approx(-0.5)
    with pytest.raises(InputError, match="positive"):
        log10_errors([1e-3], [0.0])
    with pytest.raises(InputError, match="finite"):
        spearman([1, 2, float("nan")], [1, 2, 3])


def test_pairwise_agreement_over_shared_entries():
    a = {f"e{i}": RankValue(float(i)) for i in range(8)}
    b = {f"e{i}": RankValue(float(i) ** 2) for i in range(1, 9)}  # shares e1..e7, same order
    c = {f"e{i}": RankValue(-float(i)) for i in range(8)}
    pairs = pairwise_agreement({"a": a, "b": b, "c": c}, n_boot=200)
    by = {(p["a"], p["b"]): p for p in pairs}
    assert by[("a", "b")]["n"] == 7 and by[("a", "b")]["kendall_tau_b"]["value"] == pytest.approx(1.0)
    assert by[("a", "c")]["kendall_tau_b"]["value"] == pytest.approx(-1.0)
    assert by[("a", "c")]["spearman"]["value"] == pytest.approx(-1.0)


def test_spread_versus_error_on_synthetic_committees():
    """Two models that scatter about the truth: where they disagree more, each is off by more. And a pair whose
    disagreement says nothing about its error (a constant offset) gets a ρ interval that holds 0."""
    rng = np.random.default_rng(3)
    n = 60
    truth = rng.uniform(0.1, 1.5, n)
    width = rng.uniform(0.01, 0.6, n)  # each entry's difficulty
    a = truth + width * rng.standard_normal(n)
    b = truth + width * rng.standard_normal(n)
    keys = [f"h{i}" for i in range(n)]
    ref = dict(zip(keys, truth))
    res = spread_vs_error({"a": dict(zip(keys, a)), "b": dict(zip(keys, b))}, ref, unit="eV", n_boot=500)
    assert res["n"] == n and res["n_narrow"] + res["n_wide"] == n
    spread = np.abs(a - b)
    assert res["median_spread"] == pytest.approx(float(np.median(spread)))
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    assert res["reference_inside_range_share"] == pytest.approx(float(np.mean((truth >= lo) & (truth <= hi))))
    assert res["committee_mean_mae"] == pytest.approx(float(np.mean(np.abs((a + b) / 2 - truth))))
    for name, pred in (("a", a), ("b", b)):
        row = res["per_model"][name]
        assert row["mae"] == pytest.approx(float(np.mean(np.abs(pred - truth))))
        assert row["mae_wide_spread"] > row["mae_narrow_spread"]
        rho = row["spearman_spread_abs_error"]
        assert rho["value"] == pytest.approx(sstats.spearmanr(spread, np.abs(pred - truth)).statistic)
        assert rho["ci95"][0] > 0

    offset = truth + 0.3 + 0.01 * rng.standard_normal(n)  # always 0.3 high: spread carries no information
    noise = truth + 0.3 + 0.01 * rng.standard_normal(n)
    flat = spread_vs_error({"a": dict(zip(keys, offset)), "b": dict(zip(keys, noise))}, ref, unit="eV", n_boot=500)
    assert flat["reference_inside_range_share"] == 0.0
    lo95, hi95 = flat["per_model"]["a"]["spearman_spread_abs_error"]["ci95"]
    assert lo95 < 0 < hi95


def test_spread_versus_error_needs_two_models_and_finite_numbers():
    assert spread_vs_error({"a": {"x": 1.0}}, {"x": 1.0}, unit="eV") is None
    empty = spread_vs_error({"a": {"x": 1.0}, "b": {"y": 1.0}}, {"x": 1.0, "y": 2.0}, unit="eV")
    assert empty["n"] == 0 and "per_model" not in empty  # no entry that both models give
    with pytest.raises(InputError, match="finite"):
        spread_vs_error({"a": {"x": 1.0}, "b": {"x": float("nan")}}, {"x": 1.0}, unit="eV")
