"""The protocol every potential family implements: facts of a loaded model, an ASE calculator per task and
dtype, and optionally a batched evaluator (NEB images) and a lean MD engine.

Callers never ask which family a model is; they ask its backend (``loaded.backend``) and take the ASE path
when an optional part is missing (``None``).
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    ClassVar,
    Iterable,
    Protocol,
    Sequence,
    runtime_checkable,
)

if TYPE_CHECKING:
    from ase.calculators.calculator import Calculator

    from mlip.calculators import Task
    from mlip.model import LoadedModel, ResolvedModel


class Capability(enum.StrEnum):
    """What a backend offers beyond the ASE calculator every family has."""

    CALCULATOR = "calculator"
    BATCHED_EVALUATOR = "batched_evaluator"  # many structures per model call (NEB images)
    LEAN_MD_ENGINE = "lean_md_engine"  # many MD systems per model call, no ASE calculator in the loop


@dataclass(frozen=True)
class CodeSource:
    """What identifies a potential defined by code rather than by a file: its source file and SHA-256."""

    path: Path
    sha256: str
    description: str  # where it comes from, in words


def stamp(calc, loaded: "LoadedModel"):
    """``calc`` carrying its model's provenance (``ionscreen_model_ref`` / ``_sha256``, which NEB provenance reads)
    and the elements it covers, for :func:`refuse_uncovered`; returns ``calc``."""
    calc.ionscreen_model_ref = loaded.ref
    calc.ionscreen_model_sha256 = loaded.sha256
    calc.ionscreen_covered = frozenset(loaded.atomic_numbers)
    return calc


def refuse_uncovered(calc, atoms) -> None:
    """In a stamped calculator's ``calculate``: a :class:`ModelDomainError` naming every element of ``atoms`` its
    model does not cover, before the family's code fails on it in its own way."""
    if atoms is None:
        return
    from ase.data import chemical_symbols

    from mlip.errors import ModelDomainError

    missing = sorted(set(int(z) for z in atoms.numbers) - calc.ionscreen_covered)
    if missing:
        names = ", ".join(chemical_symbols[z] for z in missing)
        raise ModelDomainError(f"model {calc.ionscreen_model_ref} does not cover element(s) {names}")


@dataclass(frozen=True)
class PackagedWeights:
    """Weights shipped inside an installed Python package (reference ``<family>:<name>``), trusted only when the
    file's SHA-256 equals the one recorded here from the released wheel."""

    package: str  # the distribution's import name ("chgnet")
    package_version: str  # the release whose files the hash was taken from
    relative_path: str  # inside the installed package directory
    sha256: str
    description: str  # what the weights are, in words
    atomic_numbers: tuple[int, ...] = ()  # the elements covered, known without loading (for listings)
    dtype: str = "float32"

    @property
    def source(self) -> str:
        """Where the weights come from, in words (model listings and resolved models)."""
        return f"{self.description} (installed {self.package} package)"

    def install_hint(self) -> str:
        """What to do when :meth:`path` finds no package."""
        return f"pip install {self.package}=={self.package_version}"

    def path(self) -> Path | None:
        """Where the installed package keeps the file; ``None`` when the package is not installed."""
        import importlib.util

        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(next(iter(spec.submodule_search_locations))) / self.relative_path


@runtime_checkable
class BatchedEvaluator(Protocol):
    """Energies and forces of many structures per model call, as NEB bands use them (:class:`mlip.batched.BatchedMACE`;
    :class:`mlip.batched.ImageGroup` and :func:`mlip.batched.choose_batch_size` need no more than this)."""

    model_ref: str | None
    model_sha256: str | None
    device: str
    dtype: str

    @property
    def device_name(self) -> str: ...  # the hardware, as batch-size measurements are cached by it

    def check_elements(self, atoms_list: Iterable) -> None: ...

    def evaluate(self, atoms_list: Sequence) -> list: ...  # one model call; mlip.batched.Evaluation per structure

    def evaluate_in_batches(self, atoms_list: Sequence, batch_size: int) -> list: ...

    def calculator(self) -> "Calculator": ...  # one structure at a time (endpoint relaxations)


class ModelBackend(abc.ABC):
    """One potential family. Subclass it in one module under :mod:`mlip.backends` and add an instance to
    :data:`mlip.backends.BACKENDS`.

    ``describe`` and ``calculator`` are required; a family without a batched evaluator or lean MD engine
    leaves those methods as they are here (they return ``None``) and its models still run every stage
    through the ASE paths.
    """

    family: ClassVar[str]  # registry key, as stored in LoadedModel.family ("mace", "emt")
    label: ClassVar[str]  # for people ("MACE", "EMT")
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.CALCULATOR})
    #: Whether the family's files hold tensors only, so ``torch.load(weights_only=True)`` reads them and
    #: loading runs no code; MACE files are whole pickled modules.
    weights_only: ClassVar[bool] = False
    #: Whether the family's weights are loaded in a worker process of its own (its packages cannot share this
    #: interpreter), so that this process unpickles nothing.
    in_worker: ClassVar[bool] = False

    def code_source(self) -> CodeSource | None:
        """For a potential defined by code (reference ``ase:<family>``): its identity. ``None``: the family's
        models are pickled files, resolved and trust-checked by :mod:`mlip.loader` before unpickling."""
        return None

    def packaged_weights(self) -> dict[str, PackagedWeights]:
        """Weights that an installed package ships, by name (reference ``<family>:<name>``); none by default."""
        return {}

    @abc.abstractmethod
    def describe(self, resolved: "ResolvedModel", module: object | None) -> "LoadedModel":
        """The loaded model: facts read from the unpickled ``module`` (file families) or from the code
        (``module`` is None). Raise :class:`mlip.errors.InputError` if ``module`` is not this family's."""

    @abc.abstractmethod
    def calculator(self, loaded: "LoadedModel", *, task: "Task", dtype: str, device: str = "auto",
                   **options) -> "Calculator":
        """An ASE calculator for one structure at a time. ``task`` and ``dtype`` are already validated
        (:func:`mlip.calculators.make_calculator`); ``options`` are family-specific. The calculator refuses
        structures with elements outside ``loaded.atomic_numbers`` with :class:`mlip.errors.ModelDomainError`
        and carries ``ionscreen_model_ref`` / ``ionscreen_model_sha256`` for provenance."""

    def batched_evaluator(self, loaded: "LoadedModel", *, device: str = "auto",
                          dtype: str = "float64") -> BatchedEvaluator | None:
        """Evaluator of many structures per call (NEB images), or ``None``: NEB then uses the ASE calculator."""
        return None

    def lean_md_engine(self, loaded: "LoadedModel", *, device: str = "auto", dtype: str = "float32") -> object | None:
        """The lean MD engine (as :func:`screening.transport.batch_md.run_md_batch` takes it), or ``None``:
        the transport protocol then runs ASE's dynamics with :meth:`calculator` and says so."""
        return None
