"""The batched MD state: every system's atoms in one set of float64 tensors on the device, told apart by
``system_idx``, so that a time step is a function ``MDState -> MDState`` (as torch-sim's ``SimState``)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch


@dataclasses.dataclass(frozen=True)
class MDState:
    """Positions, momenta and the forces at those positions of B systems with N atoms in all (ASE units)."""

    positions: torch.Tensor  # (N, 3) Å
    momenta: torch.Tensor  # (N, 3) amu·Å/ASE-time
    masses: torch.Tensor  # (N, 1) amu
    cells: torch.Tensor  # (B, 3, 3) Å
    system_idx: torch.Tensor  # (N,) long, the system of each atom
    energies: torch.Tensor  # (B,) eV, potential energy at ``positions``
    forces: torch.Tensor  # (N, 3) eV/Å at ``positions``

    @property
    def n_systems(self) -> int:
        return int(self.cells.shape[0])

    def system_sum(self, per_atom: torch.Tensor) -> torch.Tensor:
        """Per-system sums of a per-atom quantity, on the device."""
        import torch

        out = torch.zeros(self.n_systems, dtype=per_atom.dtype, device=per_atom.device)
        return out.index_add_(0, self.system_idx, per_atom)

    def kinetic_energies(self) -> torch.Tensor:
        """(B,) float64 kinetic energy per system, as ASE's ``get_kinetic_energy``."""
        return self.system_sum((self.momenta * self.momenta / self.masses).sum(dim=1) * 0.5)

    def select(self, keep: Sequence[int], rows: torch.Tensor, counts: np.ndarray) -> MDState:
        """Systems ``keep`` (in that order), whose atoms are ``rows`` of this state and number ``counts``."""
        import torch

        keep_t = torch.as_tensor(list(keep), device=self.cells.device)
        return MDState(
            positions=self.positions[rows].clone(), momenta=self.momenta[rows].clone(),
            masses=self.masses[rows].clone(), cells=self.cells[keep_t].clone(),
            system_idx=torch.as_tensor(np.repeat(np.arange(len(counts)), counts), device=rows.device),
            energies=self.energies[keep_t].clone(), forces=self.forces[rows].clone(),
        )


__all__ = ["MDState"]
