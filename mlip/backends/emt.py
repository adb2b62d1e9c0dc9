"""ASE's effective-medium theory (EMT) behind the backend protocol: a toy family, reference ``ase:emt``, with a
calculator only, so its models run MD and NEB through the ASE fallbacks.

The identity of a potential defined by code is its code: nothing is unpickled, so it is trusted as code, and
its SHA-256 is that of the bytes of ASE's ``ase/calculators/emt.py`` followed by the ASE version string.
Elements are those ``ase.calculators.emt.parameters`` has parameters for (Cu, Ag, Au, Al, Ni, Pd, Pt, H, C,
N, O in ASE 3.29); EMT is numpy code, so it runs on the CPU in float64 whatever device or dtype is asked.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from ase.data import atomic_numbers

from mlip.backends.base import Capability, CodeSource, ModelBackend, refuse_uncovered, stamp
from mlip.errors import InputError

if TYPE_CHECKING:
    from mlip.model import LoadedModel, ResolvedModel


class EmtBackend(ModelBackend):
    family = "emt"
    label = "EMT"
    capabilities = frozenset({Capability.CALCULATOR})

    def code_source(self) -> CodeSource:
        return _code_source()

    def describe(self, resolved: "ResolvedModel", module=None) -> "LoadedModel":
        from ase import Atoms
        from ase.calculators import emt

        # EMT's neighbour-search radius with its default cutoff (set by the largest atom in the table).
        _, r_list_A, _ = emt.EMT()._calc_cutoff(Atoms())
        return resolved.loaded(
            family=self.family,
            module=None,
            atomic_numbers=tuple(sorted(atomic_numbers[symbol] for symbol in emt.parameters)),
            n_params=sum(len(values) for values in emt.parameters.values()),
            dtype="float64",
            r_max_A=float(r_list_A),
            model_class="EMT",
        )

    def calculator(self, loaded: "LoadedModel", *, task, dtype: str, device: str = "auto", **options):
        if options:
            raise InputError(f"the EMT calculator takes no options; got {', '.join(sorted(options))}")
        return stamp(_coverage_checked_class()(), loaded)


@functools.cache
def _code_source() -> CodeSource:
    import ase
    from ase.calculators import emt

    path = Path(emt.__file__).resolve()
    sha256 = hashlib.sha256(path.read_bytes() + ase.__version__.encode()).hexdigest()
    return CodeSource(path, sha256, f"ASE {ase.__version__} code (ase.calculators.emt)")


@functools.cache
def _coverage_checked_class():
    from ase.calculators.calculator import all_changes
    from ase.calculators.emt import EMT

    class CoverageCheckedEMT(EMT):
        """EMT that names uncovered elements as a ModelDomainError instead of NotImplementedError."""

        default_dtype = "float64"  # what NEB provenance records; EMT computes in numpy float64

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            refuse_uncovered(self, atoms)
            return super().calculate(atoms, properties, system_changes)

    return CoverageCheckedEMT
