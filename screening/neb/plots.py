"""PNG plot of a NEB energy profile (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_profile(
    path: str | Path,
    reaction_coordinate_A,
    energies_rel_eV,
    *,
    fit_reaction_coordinate_A=None,
    fit_energies_rel_eV=None,
    title: str = "",
    converged: bool = True,
) -> Path:
    """Energies (relative to the initial state) along the band, with the force-interpolated curve."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.0, 3.6), dpi=120)
    try:
        if fit_reaction_coordinate_A is not None and fit_energies_rel_eV is not None:
            ax.plot(fit_reaction_coordinate_A, fit_energies_rel_eV, "-", color="0.4", lw=1.2, label="force-interpolated")
        x = np.asarray(reaction_coordinate_A)
        y = np.asarray(energies_rel_eV)
        ax.plot(x, y, "o", color="C0" if converged else "C3", label="images" if converged else "images (NOT converged)")
        top = int(np.argmax(y))
        ax.annotate(f"{y[top]:.3f} eV", (x[top], y[top]), textcoords="offset points", xytext=(0, 6), ha="center")
        ax.set_xlabel("reaction coordinate (Å)")
        ax.set_ylabel("energy relative to initial state (eV)")
        if title:
            ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
