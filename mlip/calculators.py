"""ASE calculators from loaded models: the task, its precision and the device are chosen here; the family's
backend (:mod:`mlip.backends`) builds the calculator.

Precision follows the task: float32 for molecular dynamics (speed; errors average out), float64 for
relaxations and NEB (forces near zero must be resolved) unless the caller asks otherwise.
"""

from __future__ import annotations

import enum
import importlib.util
import logging

from mlip.errors import InputError

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
    **options,
):
    """An ASE calculator for ``loaded`` (a :class:`mlip.loader.LoadedModel`), made by its family's backend.

    ``dtype`` defaults to the task's (:data:`DEFAULT_DTYPE`); ``options`` are family-specific (MACE:
    ``use_cueq=None`` enables cuEquivariance when running on CUDA and it is installed).
    The calculator refuses structures with elements outside the model before computing anything.
    """
    task = Task(task)
    dtype = dtype or DEFAULT_DTYPE[task]
    if dtype not in ("float32", "float64"):
        raise InputError(f"dtype must be float32 or float64, got {dtype!r}")
    return loaded.backend.calculator(loaded, task=task, device=device, dtype=dtype, **options)
