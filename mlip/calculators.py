"""ASE calculators from loaded models: device, precision and optional cuEquivariance chosen here.

Precision follows the task: float32 for molecular dynamics (speed; errors average out), float64 for
relaxations and NEB (forces near zero must be resolved) unless the caller asks otherwise.
"""

from __future__ import annotations

import copy
import enum
import functools
import importlib.util
import logging

from ase.data import chemical_symbols

from mlip._mace import import_mace
from mlip.errors import InputError, ModelDomainError

log = logging.getLogger(__name__)


class Task(enum.StrEnum):
    MD = "md"
    RELAX = "relax"
    NEB = "neb"
    SINGLE_POINT = "single_point"


DEFAULT_DTYPE = {
    Task.MD: "float32",
    Task.RELAX: "float64",
    Task.NEB: "float64",
    Task.SINGLE_POINT: "float64",
}


def resolve_device(device: str = "auto") -> str:
    import torch

    device = (device or "auto").lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but CUDA is not available on this machine")
    if device != "cpu" and not device.startswith("cuda"):
        raise InputError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    return device


def cueq_available() -> bool:
    return importlib.util.find_spec("cuequivariance_torch") is not None


def make_calculator(
    loaded,
    *,
    task: Task | str = Task.MD,
    device: str = "auto",
    dtype: str | None = None,
    use_cueq: bool | None = None,
):
    """An ASE calculator for ``loaded`` (a :class:`mlip.loader.LoadedModel`).

    ``use_cueq=None`` enables cuEquivariance when running on CUDA and it is installed.
    The calculator refuses structures with elements outside the model before computing anything.
    """
    task = Task(task)
    device = resolve_device(device)
    dtype = dtype or DEFAULT_DTYPE[task]
    if dtype not in ("float32", "float64"):
        raise InputError(f"dtype must be float32 or float64, got {dtype!r}")
    if use_cueq is None:
        use_cueq = device.startswith("cuda") and cueq_available()
    elif use_cueq and not cueq_available():
        raise InputError("cuEquivariance requested but cuequivariance_torch is not installed")

    # MACECalculator converts dtype in place; keep the caller's module untouched.
    module = copy.deepcopy(loaded.module)
    calc = _coverage_checked_class()(
        models=module, device=device, default_dtype=dtype, enable_cueq=use_cueq
    )
    calc.ionscreen_model_ref = loaded.ref
    calc.ionscreen_model_sha256 = loaded.sha256
    calc.ionscreen_covered = frozenset(loaded.atomic_numbers)
    return calc


@functools.cache
def _coverage_checked_class():
    import_mace()
    from ase.calculators.calculator import all_changes
    from mace.calculators import MACECalculator

    class CoverageCheckedMACECalculator(MACECalculator):
        """MACECalculator that names uncovered elements instead of failing deep inside MACE."""

        def calculate(self, atoms=None, properties=None, system_changes=all_changes):
            if atoms is not None:
                missing = sorted(set(int(z) for z in atoms.numbers) - self.ionscreen_covered)
                if missing:
                    names = ", ".join(chemical_symbols[z] for z in missing)
                    raise ModelDomainError(
                        f"model {self.ionscreen_model_ref} does not cover element(s) {names}"
                    )
            return super().calculate(atoms, properties, system_changes)

    return CoverageCheckedMACECalculator
