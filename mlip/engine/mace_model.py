"""The MACE adapter: a MACE model evaluated on graph tensors the engine builds itself
(:class:`mlip.engine.neighbours.GraphBatch`), energies and forces only, in the chosen dtype and device.

Why not ASE + ``MACECalculator``: every step there rebuilds the graph through mace-torch's data pipeline
(config → AtomicData → collate), recomputes the neighbour list, and asks for stress and virials that NVT
does not need — about 40 % of a step for a small model on a CPU. Here the graph tensors go straight into
MACE's own ``forward`` with ``compute_stress=False``.
"""

from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
from ase.data import chemical_symbols

from mlip._mace import import_mace
from mlip.engine.neighbours import GraphBatch
from mlip.errors import InputError, ModelDomainError


class BatchTooLarge(RuntimeError):
    """The model ran out of device memory on a batch; the caller splits it."""


def _to_dtype(name: str):
    import torch

    if name not in ("float32", "float64"):
        raise InputError(f"dtype must be float32 or float64, got {name!r}")
    return getattr(torch, name)


class LeanMACE:
    """A MACE model evaluated on graph tensors the engine builds itself (energies and forces only)."""

    def __init__(self, module, *, device: str = "cpu", dtype: str = "float32", head: str | None = None,
                 model_ref: str | None = None, model_sha256: str | None = None, accelerated: bool = True):
        import_mace()

        from mlip.engine.kernels import accelerate, tabulate_radial

        if not hasattr(module, "atomic_numbers") or not hasattr(module, "r_max"):
            raise InputError(f"{type(module).__name__} is not a MACE model (no atomic_numbers / r_max)")
        self.torch_dtype = _to_dtype(dtype)
        self.dtype = dtype
        self.device = device
        # dtype conversion and device moves are in place: the caller's module stays untouched
        self.module = copy.deepcopy(module)
        self.accelerated = accelerate(self.module) if accelerated else []
        if accelerated and dtype == "float32":  # float64 is the reference: exact radial functions there
            self.accelerated += tabulate_radial(self.module)
        self.module = self.module.to(device=device, dtype=self.torch_dtype)
        self.module.eval()
        for param in self.module.parameters():
            param.requires_grad_(False)
        self.atomic_numbers = tuple(int(z) for z in self.module.atomic_numbers)
        self._species_index = np.full(max(self.atomic_numbers) + 1, -1, dtype=np.int64)
        for k, z in enumerate(self.atomic_numbers):
            self._species_index[z] = k
        self.r_max_A = float(self.module.r_max)
        heads = list(getattr(self.module, "heads", None) or ["Default"])
        if head is None:
            head = heads[0] if len(heads) == 1 else next((h for h in heads if h.lower() == "default"), None)
            if head is None:
                raise InputError(f"the model has several heads ({', '.join(heads)}); name the one to use")
        elif head not in heads:
            raise InputError(f"model has no head {head!r}; available heads: {', '.join(heads)}")
        self.head_index = heads.index(head)
        self.model_ref = model_ref
        self.model_sha256 = model_sha256
        self.n_model_calls = 0

    @classmethod
    def from_loaded(cls, loaded, *, device: str = "auto", dtype: str = "float32", head: str | None = None,
                    accelerated: bool = True) -> LeanMACE:
        """From a :class:`mlip.loader.LoadedModel` (keeps its reference and SHA-256 for provenance)."""
        from mlip.calculators import resolve_device

        return cls(loaded.module, device=resolve_device(device), dtype=dtype, head=head,
                   model_ref=loaded.ref, model_sha256=loaded.sha256, accelerated=accelerated)

    def species_index(self, numbers: np.ndarray) -> np.ndarray:
        numbers = np.asarray(numbers, dtype=np.int64)
        index = np.full(len(numbers), -1, dtype=np.int64)
        known = (numbers >= 0) & (numbers < len(self._species_index))
        index[known] = self._species_index[numbers[known]]
        if (index < 0).any():
            missing = sorted({int(z) for z in numbers[index < 0]})
            raise ModelDomainError(
                f"model {self.model_ref or '(in memory)'} does not cover element(s) "
                f"{', '.join(chemical_symbols[z] for z in missing)}; it covers "
                f"{', '.join(chemical_symbols[z] for z in self.atomic_numbers)}"
            )
        return index

    def forward(self, graph: GraphBatch, edge_index, shifts) -> tuple:
        """Energies (B,) and forces (N, 3), both float64, for positions ``graph.model_positions``."""
        import torch

        data = {
            "positions": graph.model_positions(),
            "node_attrs": graph.node_attrs,
            "edge_index": edge_index,
            "shifts": shifts,
            "unit_shifts": shifts,  # read only for stress, which the engine never asks for
            "cell": graph.cell,
            "batch": graph.batch,
            "ptr": graph.ptr,
            "head": graph.head,
        }
        try:
            out = self.module(data, compute_force=True, compute_stress=False, training=False)
        except torch.OutOfMemoryError as err:
            if str(self.device).startswith("cuda"):
                torch.cuda.empty_cache()  # give the cached blocks back before the caller retries smaller batches
            raise BatchTooLarge(f"out of memory on {graph.n_systems} systems, {graph.n_atoms} atoms, "
                                f"{int(edge_index.shape[1])} edges: {err}") from err
        self.n_model_calls += 1
        return out["energy"].detach().to(torch.float64), out["forces"].detach().to(torch.float64)

    def evaluate(self, atoms_list: Sequence, skin_A: float = 0.0) -> list[tuple[float, np.ndarray]]:
        """(energy_eV, forces_eV_A) of each structure, in one model call (for checks and tests)."""
        graph = GraphBatch(self, [a.numbers for a in atoms_list], [a.cell.array for a in atoms_list],
                           [a.get_positions() for a in atoms_list], skin_A=skin_A,
                           pbc=[tuple(bool(p) for p in a.pbc) for a in atoms_list])
        energy, forces = graph.compute()
        energy, forces = energy.cpu().numpy(), forces.cpu().numpy()
        ptr = graph.ptr.cpu().numpy()
        return [(float(energy[b]), forces[ptr[b]:ptr[b + 1]].copy()) for b in range(len(atoms_list))]


__all__ = ["BatchTooLarge", "LeanMACE"]
