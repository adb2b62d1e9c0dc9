"""Arrhenius fits of diffusivities across temperatures, with propagated uncertainty.

ln D = ln D0 − Ea / (kB T), fitted by weighted least squares in ln D with each temperature's
weight from its block standard error (σ_lnD ≈ SE/D). Intervals for Ea, D0 and the extrapolation
to 300 K come from Monte Carlo propagation: each temperature's ln D is redrawn from a Student-t with
that temperature's block degrees of freedom, the fit is repeated, and the 2.5/97.5 percentiles are
taken. When the points scatter more than their error bars allow (reduced χ² > 1), the errors are
inflated by √χ²_red (the Birge ratio) and ``non_arrhenius`` is flagged if the misfit is significant.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from mlip.errors import InputError

KB_EV_K = 8.617333262e-5


@dataclass
class ArrheniusFit:
    temperatures_K: list[float]
    activation_energy_eV: float
    activation_energy_ci95_eV: tuple[float, float]
    prefactor_cm2_s: float
    prefactor_ci95_cm2_s: tuple[float, float]
    reduced_chi2: float | None
    flags: list[str] = field(default_factory=list)
    _samples: tuple[np.ndarray, np.ndarray] | None = None  # (Ea, ln D0) Monte Carlo samples

    def fitted(self) -> dict:
        """The fitted line's fields (temperatures, Ea and D0 with their intervals, reduced χ²) by name."""
        names = ("temperatures_K", "activation_energy_eV", "activation_energy_ci95_eV", "prefactor_cm2_s",
                 "prefactor_ci95_cm2_s", "reduced_chi2")
        return {name: getattr(self, name) for name in names}

    def diffusivity_at(self, temperature_K: float) -> tuple[float, tuple[float, float]]:
        """D (cm²/s) extrapolated to ``temperature_K`` with its 95% interval."""
        value = self.prefactor_cm2_s * np.exp(-self.activation_energy_eV / (KB_EV_K * temperature_K))
        ea, ln_d0 = self._samples
        draws = np.exp(ln_d0 - ea / (KB_EV_K * temperature_K))
        lo, hi = np.percentile(draws, [2.5, 97.5])
        return float(value), (float(lo), float(hi))


def _wls(x: np.ndarray, y: np.ndarray, sigma: np.ndarray) -> tuple[float, float, float]:
    """Weighted line fit y = a + b x; returns (a, b, chi²)."""
    w = 1.0 / sigma**2
    a_mat = np.stack([np.ones_like(x), x], axis=1) * np.sqrt(w)[:, None]
    (a, b), *_ = np.linalg.lstsq(a_mat, y * np.sqrt(w), rcond=None)
    chi2 = float(np.sum(w * (y - a - b * x) ** 2))
    return float(a), float(b), chi2


def fit_arrhenius(
    temperatures_K,
    diffusivities_cm2_s,
    std_errors_cm2_s,
    dofs,
    *,
    n_samples: int = 4000,
    seed: int = 0,
) -> ArrheniusFit:
    """Fit Ea (eV) and D0 (cm²/s) with 95% intervals from per-temperature D, SE and degrees of freedom."""
    t = np.asarray(temperatures_K, dtype=float)
    d = np.asarray(diffusivities_cm2_s, dtype=float)
    se = np.asarray(std_errors_cm2_s, dtype=float)
    dof = np.broadcast_to(np.asarray(dofs, dtype=float), t.shape)
    if len(t) < 2:
        raise InputError("an Arrhenius fit needs at least two temperatures")
    if len(set(t.tolist())) != len(t):
        raise InputError("Arrhenius temperatures must be distinct")
    if np.any(d <= 0) or np.any(se <= 0) or np.any(t <= 0):
        raise InputError("Arrhenius fit needs positive temperatures, diffusivities and standard errors")
    x = -1.0 / (KB_EV_K * t)  # ln D = ln D0 + Ea * x
    y = np.log(d)
    sigma = se / d
    a, b, chi2 = _wls(x, y, sigma)
    flags: list[str] = []
    red = None
    if len(t) > 2:
        red = chi2 / (len(t) - 2)
        if red > 1.0:
            sigma = sigma * np.sqrt(red)
        if stats.chi2.sf(chi2, len(t) - 2) < 0.01:
            flags.append("non_arrhenius")
    rng = np.random.default_rng(seed)
    draws = y[None, :] + sigma[None, :] * rng.standard_t(dof[None, :], size=(n_samples, len(t)))
    w = 1.0 / sigma**2
    design = np.stack([np.ones_like(x), x], axis=1) * np.sqrt(w)[:, None]
    coef, *_ = np.linalg.lstsq(design, (draws * np.sqrt(w)[None, :]).T, rcond=None)
    ln_d0_s, ea_s = coef[0], coef[1]
    ea_ci = tuple(float(v) for v in np.percentile(ea_s, [2.5, 97.5]))
    d0_ci = tuple(float(v) for v in np.exp(np.percentile(ln_d0_s, [2.5, 97.5])))
    return ArrheniusFit(
        temperatures_K=t.tolist(),
        activation_energy_eV=b,
        activation_energy_ci95_eV=ea_ci,
        prefactor_cm2_s=float(np.exp(a)),
        prefactor_ci95_cm2_s=d0_ci,
        reduced_chi2=red,
        flags=flags,
        _samples=(ea_s, ln_d0_s),
    )
