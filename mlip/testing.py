"""Small, randomly initialised MACE models for tests and benchmarks (never for science).

They have the real MACE architecture (so every code path that touches a model is exercised) and
build in about a second on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def build_mace(
    atomic_numbers: list[int],
    *,
    hidden_irreps: str = "8x0e",
    r_max: float = 4.5,
    num_interactions: int = 2,
    correlation: int = 2,
    max_ell: int = 2,
    avg_num_neighbors: float = 10.0,
    atomic_energies: list[float] | None = None,
    seed: int = 0,
    dtype: str = "float64",
    pair_repulsion: bool = False,
    interaction_scale: float = 1.0,
):
    """A ScaleShiftMACE with the given elements and size, seeded.

    A randomly initialised MACE has no repulsive core, so MD with it collapses. With
    ``pair_repulsion=True`` (MACE's ZBL term) and a small ``interaction_scale`` the model is a
    stable "soft-sphere" potential: good for exercising MD machinery, not for physics.
    """
    from mlip._mace import import_mace

    import_mace()  # before e3nn
    import torch
    from e3nn import o3
    from mace import modules

    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        zs = sorted(int(z) for z in atomic_numbers)
        e0s = np.asarray(atomic_energies if atomic_energies is not None else [-1.0 - 0.1 * z for z in zs])
        block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
        model = modules.ScaleShiftMACE(
            r_max=r_max,
            num_bessel=8,
            num_polynomial_cutoff=5,
            max_ell=max_ell,
            interaction_cls=block,
            interaction_cls_first=block,
            num_interactions=num_interactions,
            num_elements=len(zs),
            hidden_irreps=o3.Irreps(hidden_irreps),
            MLP_irreps=o3.Irreps("16x0e"),
            atomic_energies=e0s,
            avg_num_neighbors=avg_num_neighbors,
            atomic_numbers=zs,
            correlation=correlation,
            gate=torch.nn.functional.silu,
            atomic_inter_scale=1.0,
            atomic_inter_shift=0.0,
            pair_repulsion=pair_repulsion,
        )
        if interaction_scale != 1.0:
            # Scale the learned readouts only, so the ZBL core (also summed before the scale-shift) stays full.
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if name.startswith("readouts.") and name.endswith(("linear.weight", "linear_2.weight")):
                        param.mul_(interaction_scale)
    finally:
        torch.set_default_dtype(previous)
    return model


def save_model(model, path: str | Path) -> Path:
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model, path)
    return path


def numerical_force(atoms, index: int, axis: int, h_A: float = 1e-4) -> float:
    """-dE/dx of atom ``index`` along ``axis`` by central differences with the atoms' own calculator (eV/Å)."""
    plus, minus = atoms.copy(), atoms.copy()
    plus.positions[index, axis] += h_A
    minus.positions[index, axis] -= h_A
    plus.calc = minus.calc = atoms.calc
    return -(plus.get_potential_energy() - minus.get_potential_energy()) / (2 * h_A)
