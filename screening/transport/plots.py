"""PNG plots of MSD curves and Arrhenius fits (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from screening.transport.arrhenius import KB_EV_K


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_msd(analysis, result, path: str | Path, ion: str) -> Path:
    """Tracer, directional and charge MSD against lag, with the fitted lines, for one temperature."""
    plt = _pyplot()
    c = analysis.curves
    lags_ps = c.lags_fs / 1000.0
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=110)
    ax.plot(lags_ps, c.tracer, label=f"{ion} tracer", color="k", lw=2)
    for k, axis in enumerate("xyz"):
        ax.plot(lags_ps, 3 * c.components[:, k], lw=1, alpha=0.7, label=f"3×MSD_{axis}")
    ax.plot(lags_ps, c.charge, lw=1.2, ls="--", color="tab:purple", label="charge (|ΣΔr|²/N)")
    start_fs, end_fs = analysis.fit_window_fs
    ax.axvspan(start_fs / 1000.0, end_fs / 1000.0, color="tab:red", alpha=0.08, lw=0, label="fit window")
    inside = (c.lags_fs >= start_fs) & (c.lags_fs <= end_fs)
    if result.diffusivity_cm2_s is not None:
        d_a2_fs = result.diffusivity_cm2_s / 0.1
        ax.plot(lags_ps[inside], 6 * d_a2_fs * c.lags_fs[inside] + analysis.plateau_A2, color="tab:red", lw=1,
                label=f"fit: D* = {result.diffusivity_cm2_s:.2e} cm²/s")
    elif result.diffusivity_upper_bound_cm2_s is not None:
        bound = 6 * result.diffusivity_upper_bound_cm2_s / 0.1 * c.lags_fs
        ax.plot(lags_ps, bound, color="tab:red", lw=1, ls=":",
                label=f"bound: D* < {result.diffusivity_upper_bound_cm2_s:.2e} cm²/s")
        ax.set_ylim(0, 1.1 * max(c.tracer.max(), c.charge.max()))
    ax.set_xlabel("lag time (ps)")
    ax.set_ylabel("MSD (Å²)")
    flags = f"  [{', '.join(result.flags)}]" if result.flags else ""
    ax.set_title(f"{ion} MSD at {result.temperature_K:.0f} K{flags}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_arrhenius(temperatures, arrhenius, fit, path: str | Path, ion: str) -> Path:
    """log10 D* against 1000/T with 95% error bars, the fit, and the 300 K extrapolation."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=110)
    for t in temperatures:
        if t.diffusivity_upper_bound_cm2_s and not t.diffusivity_cm2_s:
            ax.plot(1000.0 / t.temperature_K, np.log10(t.diffusivity_upper_bound_cm2_s), "v", color="0.4",
                    label="upper bound" if "upper bound" not in ax.get_legend_handles_labels()[1] else None)
            continue
        if not t.diffusivity_cm2_s or not t.diffusivity_ci95_cm2_s:
            continue
        used = t.temperature_K in arrhenius.temperatures_K
        lo = max(t.diffusivity_ci95_cm2_s[0], t.diffusivity_cm2_s * 1e-3)
        yerr = [[np.log10(t.diffusivity_cm2_s) - np.log10(lo)], [np.log10(t.diffusivity_ci95_cm2_s[1]) - np.log10(t.diffusivity_cm2_s)]]
        ax.errorbar(1000.0 / t.temperature_K, np.log10(t.diffusivity_cm2_s), yerr=yerr, fmt="o" if used else "x",
                    color="k" if used else "0.6", capsize=3)
    if fit is not None and arrhenius.activation_energy_eV is not None:
        inv = np.linspace(1000.0 / max(arrhenius.temperatures_K) * 0.97, 1000.0 / 300.0, 100)
        temps = 1000.0 / inv
        ea, ln_d0 = fit._samples
        draws = ln_d0[:, None] - ea[:, None] / (KB_EV_K * temps[None, :])
        lo, hi = np.percentile(draws, [2.5, 97.5], axis=0) / np.log(10)
        line = (np.log(arrhenius.prefactor_cm2_s) - arrhenius.activation_energy_eV / (KB_EV_K * temps)) / np.log(10)
        ax.fill_between(inv, lo, hi, color="tab:blue", alpha=0.2, lw=0, label="95% band")
        ci = arrhenius.activation_energy_ci95_eV
        ax.plot(inv, line, color="tab:blue", label=f"Ea = {arrhenius.activation_energy_eV:.3f} eV [{ci[0]:.3f}, {ci[1]:.3f}]")
        ax.axvline(1000.0 / 300.0, color="0.5", ls=":", lw=1)
    ax.set_xlabel("1000 / T (1/K)")
    ax.set_ylabel(f"log10 D*({ion}) (cm²/s)")
    ax.set_title(f"Arrhenius plot, {ion}" + (f"  [{', '.join(arrhenius.flags)}]" if arrhenius.flags else ""), fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
