"""Checks a DFT frame must pass before it enters a dataset: labels present, finite, in plausible units.

Unit mix-ups show up as magnitudes no DFT label has (forces in meV/Å, stress in kBar, energies in
meV or Hartree among eV frames), so the limits here are loose physical bounds, and energies are also
compared with the other frames of the same composition.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from training.data.readers import RawFrame


class ValidationLimits(BaseModel):
    """Plausibility bounds. Defaults are generous for DFT training data (rattled and hot MD included)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_force_eV_A: float = Field(
        50.0, gt=0, description="Largest accepted force component, eV/Å (meV/Å data would exceed it)."
    )
    max_stress_eV_A3: float = Field(
        1.0, gt=0, description="Largest accepted stress component, eV/Å³ (160 GPa; kBar data would exceed it)."
    )
    max_energy_per_atom_eV: float = Field(
        1.0e6, gt=0, description="Largest accepted |energy| per atom, eV (all-electron heavy atoms stay below)."
    )
    max_energy_deviation_eV_atom: float = Field(
        2.0, gt=0, description="Largest accepted distance of a frame's energy per atom from the median of the "
        "frames with the same composition, eV/atom (Hartree-vs-eV or mixed DFT codes exceed it).",
    )
    min_distance_A: float = Field(0.5, ge=0, description="Closest accepted interatomic distance, Å.")
    require_stress: bool = Field(False, description="Reject periodic frames without stress.")
    allowed_elements: tuple[str, ...] | None = Field(
        None, description="If given, frames with other elements are rejected (e.g. a foundation model's)."
    )


@dataclass(frozen=True)
class Problem:
    source_file: str
    source_frame: int
    reason: str

    def __str__(self) -> str:
        return f"{self.source_file}, frame {self.source_frame}: {self.reason}"


def check_frame(frame: RawFrame, limits: ValidationLimits) -> str | None:
    """The first reason ``frame`` is unusable, or None."""
    atoms = frame.atoms
    n = len(atoms)
    if n == 0:
        return "no atoms"
    if limits.allowed_elements is not None:
        extra = sorted(set(atoms.get_chemical_symbols()) - set(limits.allowed_elements))
        if extra:
            return (f"element(s) {', '.join(extra)} not in the allowed set {', '.join(limits.allowed_elements)} "
                    "(the model to be trained or fine-tuned does not cover them)")
    if not np.isfinite(atoms.positions).all():
        return "positions contain NaN or inf"
    if atoms.pbc.any() and abs(atoms.cell.volume) < 1e-6:
        return "periodic frame with a zero-volume cell"
    if frame.energy is None:
        return "no energy label"
    if not np.isfinite(frame.energy):
        return f"energy is {frame.energy} (not finite)"
    if frame.forces is None:
        return "no forces label"
    if frame.forces.shape != (n, 3):
        return f"forces have shape {frame.forces.shape}, expected ({n}, 3)"
    bad = ~np.isfinite(frame.forces)
    if bad.any():
        atom = int(np.where(bad.any(axis=1))[0][0])
        return f"forces contain NaN or inf (atom {atom})"
    if frame.stress is not None and not np.isfinite(frame.stress).all():
        return "stress contains NaN or inf"
    if frame.stress is None and limits.require_stress and atoms.pbc.all():
        return "no stress label (required)"
    e_atom = frame.energy / n
    if abs(e_atom) > limits.max_energy_per_atom_eV:
        return (f"energy per atom {e_atom:.4g} eV exceeds {limits.max_energy_per_atom_eV:g} eV in magnitude: "
                "wrong units (meV? kJ/mol?)")
    fmax = float(np.abs(frame.forces).max())
    if fmax > limits.max_force_eV_A:
        return (f"largest force component {fmax:.4g} eV/Å exceeds {limits.max_force_eV_A:g} eV/Å: wrong units "
                "(meV/Å?) or a broken structure")
    if frame.stress is not None:
        smax = float(np.abs(frame.stress).max())
        if smax > limits.max_stress_eV_A3:
            return (f"largest stress component {smax:.4g} eV/Å³ ({smax * 160.2177:.4g} GPa) exceeds "
                    f"{limits.max_stress_eV_A3:g} eV/Å³: wrong units (kBar or GPa not converted to eV/Å³?)")
    if n > 1 and limits.min_distance_A > 0:
        d = atoms.get_all_distances(mic=atoms.pbc.any())
        np.fill_diagonal(d, np.inf)
        if d.min() < limits.min_distance_A:
            i, j = np.unravel_index(int(np.argmin(d)), d.shape)
            return f"atoms {i} and {j} are {d.min():.3f} Å apart (< {limits.min_distance_A} Å)"
    return None


def composition_key(symbols: list[str]) -> tuple[tuple[str, float], ...]:
    """Composition as element fractions (rounded), so cells of any size with one stoichiometry compare."""
    counts: dict[str, int] = defaultdict(int)
    for s in symbols:
        counts[s] += 1
    n = len(symbols)
    return tuple(sorted((el, round(c / n, 6)) for el, c in counts.items()))


def energy_outliers(
    new: list[tuple[int, RawFrame, str]],
    existing_energies: dict[tuple, list[float]],
    limits: ValidationLimits,
) -> dict[int, str]:
    """Indices (into ``new``: index, frame, level of theory) whose energy per atom is far from the median of
    their composition at their level of theory (energies of two labellers have different zeros).

    ``existing_energies`` is keyed by (level of theory, composition). The median runs over frames already in
    the dataset plus the new ones; a group of one has nothing to compare with and passes.
    """
    groups: dict[tuple, list[tuple[int, float]]] = defaultdict(list)
    for idx, frame, level in new:
        key = (level, composition_key(frame.atoms.get_chemical_symbols()))
        groups[key].append((idx, frame.energy / len(frame.atoms)))
    out: dict[int, str] = {}
    for key, members in groups.items():
        pool = [e for _, e in members] + list(existing_energies.get(key, []))
        if len(pool) < 2:
            continue
        median = float(np.median(pool))
        formula = "".join(f"{el}{frac:g}" for el, frac in key[1])
        for idx, e in members:
            dev = e - median
            if abs(dev) > limits.max_energy_deviation_eV_atom:
                out[idx] = (
                    f"energy per atom {e:.4f} eV is {dev:+.3f} eV/atom from the median ({median:.4f} eV) of the "
                    f"{len(pool)} frames with composition {formula}: mixed units (Hartree, meV) or energies from "
                    "different DFT codes/pseudopotentials"
                )
    return out
