"""Server-made PNG plots for documents whose stored plot is missing: Arrhenius points with 95 % error bars and the
fitted line, and NEB energy profiles. The science code's own PNGs are served when they exist (they carry the
bootstrap band); these are drawn from the numbers in the documents, with matplotlib's object API (no pyplot state,
so threads do not share figures) and kept in a small in-memory cache.
"""

from __future__ import annotations

import io
import math
import threading
from collections import OrderedDict
from typing import Any, Callable

KB_EV_K = 8.617333262e-5

_lock = threading.Lock()
_cache: OrderedDict[tuple, bytes] = OrderedDict()
_CACHE_SIZE = 128


def cached_png(key: tuple, draw: Callable[[], bytes]) -> bytes:
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    png = draw()
    with _lock:
        _cache[key] = png
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return png


def _figure(width_in: float = 6.0, height_in: float = 4.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def arrhenius_png(document: Any) -> bytes:
    """log10 D* against 1000/T with 95 % error bars, the fitted line and the 300 K extrapolation."""
    fig = _figure()
    ax = fig.add_subplot()
    a = document.arrhenius
    used_any = False
    for t in document.temperatures:
        d, ci = t.diffusivity_cm2_s, t.diffusivity_ci95_cm2_s
        if not d or d <= 0:
            continue
        x, y = 1000.0 / t.temperature_K, math.log10(d)
        used = t.temperature_K in a.temperatures_K
        yerr = None
        if ci is not None:
            lo = max(ci[0], d * 1e-3)  # an interval reaching 0 is drawn to 3 decades below the estimate
            yerr = [[y - math.log10(lo)], [math.log10(max(ci[1], d)) - y]]
        ax.errorbar([x], [y], yerr=yerr, fmt="o" if used else "x", color="k" if used else "0.6", capsize=3,
                    label=None)
        used_any = True
    if a.activation_energy_eV is not None and a.prefactor_cm2_s and a.temperatures_K:
        x0, x1 = 1000.0 / max(a.temperatures_K) * 0.97, 1000.0 / 300.0
        xs = [x0 + (x1 - x0) * i / 50 for i in range(51)]
        # ln D = ln D0 - Ea / (kB T), with 1/T = x / 1000 for x = 1000/T
        ys = [(math.log(a.prefactor_cm2_s) - a.activation_energy_eV * x / (1000.0 * KB_EV_K)) / math.log(10) for x in xs]
        label = f"Ea = {a.activation_energy_eV:.3f} eV"
        if a.activation_energy_ci95_eV:
            label += f" [{a.activation_energy_ci95_eV[0]:.3f}, {a.activation_energy_ci95_eV[1]:.3f}]"
        ax.plot(xs, ys, color="tab:blue", label=label)
        ax.axvline(1000.0 / 300.0, color="0.5", ls=":", lw=1)
        if a.diffusivity_300K_cm2_s and a.diffusivity_300K_cm2_s > 0:
            y300 = math.log10(a.diffusivity_300K_cm2_s)
            ci = a.diffusivity_300K_ci95_cm2_s
            yerr = None
            if ci is not None and ci[1] > 0:
                lo = max(ci[0], a.diffusivity_300K_cm2_s * 1e-3)
                yerr = [[y300 - math.log10(lo)], [math.log10(ci[1]) - y300]]
            ax.errorbar([1000.0 / 300.0], [y300], yerr=yerr, fmt="s", color="tab:red", capsize=3,
                        label="300 K extrapolation (95% CI)")
    if not used_any:
        ax.text(0.5, 0.5, "no diffusivity was obtained", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("1000 / T (1/K)")
    ax.set_ylabel(f"log10 D*({document.working_ion}) (cm²/s)")
    flags = f"  [{', '.join(a.flags)}]" if a.flags else ""
    ax.set_title(f"Arrhenius plot, {document.working_ion} in {document.formula}{flags}", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    return _png(fig)


def profile_png(profile: dict[str, Any], title: str = "") -> bytes:
    """NEB energies relative to the initial state along the band, with the force-interpolated curve."""
    fig = _figure(5.0, 3.6)
    ax = fig.add_subplot()
    x = profile.get("reaction_coordinate_A") or []
    y = profile.get("energy_relative_eV") or []
    fx, fy = profile.get("fit_reaction_coordinate_A"), profile.get("fit_energy_relative_eV")
    converged = bool(profile.get("converged", True))
    if fx and fy:
        ax.plot(fx, fy, "-", color="0.4", lw=1.2, label="force-interpolated")
    if x and y:
        ax.plot(x, y, "o", color="C0" if converged else "C3", label="images" if converged else "images (NOT converged)")
        top = max(range(len(y)), key=lambda i: y[i])
        ax.annotate(f"{y[top]:.3f} eV", (x[top], y[top]), textcoords="offset points", xytext=(0, 6), ha="center")
    ax.set_xlabel("reaction coordinate (Å)")
    ax.set_ylabel("energy relative to initial state (eV)")
    if title:
        ax.set_title(title, fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _png(fig)


__all__ = ["arrhenius_png", "cached_png", "profile_png"]
