"""MACE behind the backend protocol: facts of an unpickled MACE module, mace-torch's ASE calculator (with an
element-coverage check), :class:`mlip.batched.BatchedMACE` for NEB images and :class:`mlip.engine.LeanMACE` for MD.
"""

from __future__ import annotations

import copy
import functools
from typing import TYPE_CHECKING

from mlip._mace import import_mace
from mlip.backends.base import Capability, ModelBackend, refuse_uncovered, stamp
from mlip.errors import InputError

if TYPE_CHECKING:
    from mlip.model import LoadedModel, ResolvedModel


class MaceBackend(ModelBackend):
    family = "mace"
    label = "MACE"
    capabilities = frozenset({Capability.CALCULATOR, Capability.BATCHED_EVALUATOR, Capability.LEAN_MD_ENGINE})

    def describe(self, resolved: "ResolvedModel", module) -> "LoadedModel":
        import torch

        is_mace = isinstance(module, torch.nn.Module) and hasattr(module, "atomic_numbers") and hasattr(module, "r_max")
        if not is_mace:
            raise InputError(
                f"{resolved.path} is not a MACE model (got {type(module).__name__} without atomic_numbers/r_max)"
            )
        params = list(module.parameters())
        dtype = str(params[0].dtype).removeprefix("torch.") if params else "float64"
        heads = tuple(getattr(module, "heads", None) or ("Default",))
        return resolved.loaded(
            family=self.family,
            module=module,
            atomic_numbers=tuple(int(z) for z in module.atomic_numbers),
            n_params=int(sum(p.numel() for p in params)),
            dtype=dtype,
            r_max_A=float(module.r_max),
            model_class=type(module).__name__,
            heads=heads,
        )

    def calculator(self, loaded: "LoadedModel", *, task, dtype: str, device: str = "auto",
                   use_cueq: bool | None = None):
        """mace-torch's calculator; ``use_cueq=None`` enables cuEquivariance on CUDA when it is installed."""
        from mlip.calculators import cueq_available, resolve_device

        device = resolve_device(device)
        if use_cueq is None:
            use_cueq = device.startswith("cuda") and cueq_available()
        elif use_cueq and not cueq_available():
            raise InputError("cuEquivariance requested but cuequivariance_torch is not installed")

        # MACECalculator converts dtype in place; keep the caller's module untouched.
        module = copy.deepcopy(loaded.module)
        return stamp(_coverage_checked_class()(models=module, device=device, default_dtype=dtype,
                                               enable_cueq=use_cueq), loaded)

    def batched_evaluator(self, loaded: "LoadedModel", *, device: str = "auto", dtype: str = "float64"):
        from mlip.batched import BatchedMACE

        return BatchedMACE.from_loaded(loaded, device=device, dtype=dtype)

    def lean_md_engine(self, loaded: "LoadedModel", *, device: str = "auto", dtype: str = "float32"):
        from mlip.engine import LeanMACE

        return LeanMACE.from_loaded(loaded, device=device, dtype=dtype)


@functools.cache
def _coverage_checked_class():
    import_mace()
    from ase.calculators.calculator import all_changes
    from mace.calculators import MACECalculator

    class CoverageCheckedMACECalculator(MACECalculator):
        """MACECalculator that names uncovered elements instead of failing deep inside MACE."""

        def calculate(self, atoms=None, properties=None, system_changes=all_changes):
            refuse_uncovered(self, atoms)
            return super().calculate(atoms, properties, system_changes)

    return CoverageCheckedMACECalculator
