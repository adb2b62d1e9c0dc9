"""What a model is once resolved and loaded, whatever its family: its identity (reference, SHA-256, file, trust)
and the facts callers need (elements, size, dtype, cutoff). :mod:`mlip.loader` makes them; each family's backend
(:mod:`mlip.backends`) describes its own and is attached to the model it loaded."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from ase.data import chemical_symbols

from mlip.errors import InputError, ModelDomainError

if TYPE_CHECKING:
    from mlip.refs import ModelRef
    from mlip.registry import RegistryVersion

#: The family of model *files* (paths, ``mace-mp:``, ``models:/``, ``bundled:``): MACE pickles.
FILE_FAMILY = "mace"


@dataclass(frozen=True)
class ResolvedModel:
    """A reference resolved to a local file, with the trust decision for its current content."""

    ref: ModelRef
    path: Path
    sha256: str
    source: str  # where it came from, in words
    trusted_by: str | None  # why it may be unpickled; None = refused
    registry_version: RegistryVersion | None = None
    family: str = FILE_FAMILY  # the potential family whose backend turns it into a LoadedModel
    pickled: bool = True  # False: nothing is unpickled here (defined by code, or loaded in a worker process)

    def loaded(self, *, family: str, module: object | None, **facts) -> "LoadedModel":
        """The :class:`LoadedModel` for this file: its provenance plus what the family's backend read from it."""
        return LoadedModel(
            ref=self.ref.text,
            sha256=self.sha256,
            path=self.path,
            source=self.source,
            trusted_by=self.trusted_by or "",
            module=module,
            family=family,
            **facts,
        )


@dataclass
class LoadedModel:
    """A model in memory with the facts every caller needs (provenance, domain, family).

    ``module`` is the torch module for MACE and None for families without one; what the model can do
    (calculators, batched evaluation, lean MD) is asked of :attr:`backend`, never of :attr:`family`.
    """

    ref: str
    sha256: str
    path: Path
    source: str
    trusted_by: str
    module: object | None  # torch.nn.Module for MACE; None for potentials defined by code
    atomic_numbers: tuple[int, ...]
    n_params: int
    dtype: str
    r_max_A: float
    model_class: str
    heads: tuple[str, ...] = ("Default",)
    extra: dict = field(default_factory=dict)
    family: str = FILE_FAMILY
    backend: Any = field(default=None, repr=False, compare=False)  # its family's ModelBackend, set by the loader

    @property
    def elements(self) -> tuple[str, ...]:
        return tuple(chemical_symbols[z] for z in self.atomic_numbers)

    def metadata(self) -> dict:
        return {
            "family": self.family,
            "elements": list(self.elements),
            "atomic_numbers": list(self.atomic_numbers),
            "n_params": self.n_params,
            "dtype": self.dtype,
            "r_max_A": self.r_max_A,
            "model_class": self.model_class,
            "heads": list(self.heads),
        }

    def missing_elements(self, numbers_or_symbols: Iterable[int | str]) -> list[str]:
        return missing_elements(self.atomic_numbers, numbers_or_symbols)

    def check_elements(self, numbers_or_symbols: Iterable[int | str], what: str = "structure") -> None:
        """Raise :class:`ModelDomainError` naming every element the model was not trained on."""
        missing = self.missing_elements(numbers_or_symbols)
        if missing:
            raise ModelDomainError(
                f"model {self.ref} (sha256 {self.sha256[:12]}) does not cover element(s) "
                f"{', '.join(missing)} in the {what}; it covers {', '.join(self.elements)}"
            )

    def calculator(self, **kwargs):
        """An ASE calculator from this model's backend; see :func:`mlip.calculators.make_calculator`."""
        from mlip.calculators import make_calculator

        return make_calculator(self, **kwargs)


def missing_elements(covered: Iterable[int], numbers_or_symbols: Iterable[int | str]) -> list[str]:
    covered = set(int(z) for z in covered)
    needed = set()
    for item in numbers_or_symbols:
        if isinstance(item, str):
            if item not in chemical_symbols[1:]:
                raise InputError(f"unknown chemical element {item!r}")
            needed.add(chemical_symbols.index(item))
        else:
            needed.add(int(item))
    return [chemical_symbols[z] for z in sorted(needed - covered)]
