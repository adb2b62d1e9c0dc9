"""Potential families behind one protocol (:class:`ModelBackend`), and the registry that names them.

Adding a family is one module here plus one entry in :data:`BACKENDS`; everything else (loading, MD, NEB,
the CLI) asks ``loaded.backend`` and never the family's name.
"""

from __future__ import annotations

from mlip.backends.base import BatchedEvaluator, Capability, CodeSource, ModelBackend, PackagedWeights
from mlip.backends.chgnet import ChgnetBackend
from mlip.backends.emt import EmtBackend
from mlip.backends.mace import MaceBackend
from mlip.backends.sevennet import SevennetBackend
from mlip.errors import InputError
from mlip.model import FILE_FAMILY

#: Every family this install knows, by ``family`` name.
BACKENDS: dict[str, ModelBackend] = {backend.family: backend for backend in (MaceBackend(), ChgnetBackend(), SevennetBackend(), EmtBackend())}

assert MaceBackend.family == FILE_FAMILY  # model files (paths, mace-mp:, models:/, bundled:) are MACE pickles


def get_backend(family: str) -> ModelBackend:
    try:
        return BACKENDS[family]
    except KeyError:
        raise InputError(f"unknown potential family {family!r}; known: {', '.join(BACKENDS)}") from None


def code_defined_families() -> tuple[str, ...]:
    """Families whose potential is code, not a file (referenced as ``ase:<family>``)."""
    return tuple(name for name, backend in BACKENDS.items() if backend.code_source() is not None)


def packaged_families() -> tuple[str, ...]:
    """Families whose weights ship inside an installed package (referenced as ``<family>:<name>``)."""
    return tuple(name for name, backend in BACKENDS.items() if backend.packaged_weights())


def families_with(capability: Capability) -> tuple[str, ...]:
    return tuple(name for name, backend in BACKENDS.items() if capability in backend.capabilities)


__all__ = ["BACKENDS", "FILE_FAMILY", "BatchedEvaluator", "Capability", "CodeSource", "ModelBackend",
           "PackagedWeights", "code_defined_families", "families_with", "get_backend", "packaged_families"]
