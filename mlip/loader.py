"""Turn a model reference into a ready model of its family — the only place ionscreen unpickles a model.

Order of work for every file reference: resolve to a local file, read its bytes once, hash them,
decide trust, and only then unpickle those same bytes (no window in which the file could be
swapped between the check and the load). Potentials defined by code (``ase:<family>``) are never
unpickled; their identity is their source (:meth:`mlip.backends.ModelBackend.code_source`). What the
model is (its facts, its calculators) is the family's backend's business (:mod:`mlip.backends`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ase.data import chemical_symbols

from mlip import bundled, foundation, registry
from mlip._mace import import_mace
from mlip.backends import FILE_FAMILY, ModelBackend, get_backend
from mlip.config import Settings, load_settings
from mlip.errors import InputError, ModelDomainError, ModelNotFoundError, UntrustedModelError
from mlip.refs import ModelRef, RefKind, parse_ref
from mlip.trust import TrustStore, sha256_bytes, sha256_file


@dataclass(frozen=True)
class ResolvedModel:
    """A reference resolved to a local file, with the trust decision for its current content."""

    ref: ModelRef
    path: Path
    sha256: str
    source: str  # where it came from, in words
    trusted_by: str | None  # why it may be unpickled; None = refused
    registry_version: registry.RegistryVersion | None = None
    family: str = FILE_FAMILY  # the potential family whose backend turns it into a LoadedModel
    pickled: bool = True  # False: defined by code; ``path`` is its source and nothing is unpickled


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

    @property
    def backend(self) -> ModelBackend:
        return get_backend(self.family)

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


def _how_to_trust(ref: ModelRef, path: Path) -> str:
    target = ref.text if ref.kind is not RefKind.PATH else str(path)
    return (
        f"If you know where this file came from and accept that loading it runs code, trust it "
        f"with `ionscreen models trust {target}` (records its SHA-256)."
    )


def resolve(ref: str | Path | ModelRef, settings: Settings | None = None, *, download: bool = True) -> ResolvedModel:
    """Resolve ``ref`` to a local file and decide whether its current content is trusted."""
    settings = settings or load_settings()
    ref = parse_ref(ref)
    store = TrustStore(settings.trust_store_path)
    version = None

    if ref.kind is RefKind.ASE:
        code = get_backend(ref.name).code_source()
        return ResolvedModel(ref, code.path, code.sha256, code.description,
                             "defined by code (nothing is unpickled)", family=ref.name, pickled=False)
    if ref.kind is RefKind.BUNDLED:
        entry = bundled.get(ref.name)
        if not entry.path.is_file():
            raise ModelNotFoundError(f"bundled model file {entry.path} is missing from the installation")
        sha = sha256_file(entry.path)
        trusted_by = "bundled manifest" if sha == entry.sha256 else None
        if trusted_by is None:
            raise UntrustedModelError(
                f"bundled model {ref.text} at {entry.path} has SHA-256 {sha}, but the package "
                f"manifest says {entry.sha256}: the file is corrupted or was replaced. Reinstall ionscreen."
            )
        return ResolvedModel(ref, entry.path, sha, "bundled with ionscreen", trusted_by)

    if ref.kind is RefKind.PATH:
        path = ref.path
        if not path.is_file():
            raise ModelNotFoundError(f"model file {path} does not exist")
        source = "local file"
    elif ref.kind is RefKind.FOUNDATION:
        path = foundation.expected_cache_path(ref.name, settings.model_cache_dir)
        if not path.is_file():
            if not download:
                raise ModelNotFoundError(f"{ref.text} is not cached at {path}")
            path = foundation.download(ref.name, settings.model_cache_dir)
            store.add(sha256_file(path), source="downloaded", path=path, ref=ref.text,
                      note=f"downloaded by ionscreen from {foundation.foundation_urls()[ref.name]}")
        source = f"MACE foundation model cache ({path.parent})"
    else:
        version = registry.get_version(ref, settings)
        path = registry.fetch_model_file(version, settings)
        source = f"MLflow registry {settings.mlflow_tracking_uri}, {version.name} v{version.version}"

    sha = sha256_file(path)
    trusted_by = None
    entry = store.get(sha)
    if entry is not None:
        trusted_by = f"trust store ({entry.source})"
    elif version is not None and settings.trust_registry and version.sha256 == sha:
        trusted_by = "registered through ionscreen (registry tag matches)"
    return ResolvedModel(ref, path, sha, source, trusted_by, version)


def _unpickle(data: bytes, device: str):
    import_mace()  # before e3nn; it also sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD
    import torch

    return torch.load(io.BytesIO(data), map_location=device, weights_only=False)


def load_model(
    ref: str | Path | ModelRef,
    settings: Settings | None = None,
    *,
    device: str = "cpu",
) -> LoadedModel:
    """Load a trusted model. Untrusted files are refused *before* any unpickling."""
    settings = settings or load_settings()
    resolved = resolve(ref, settings)
    backend = get_backend(resolved.family)
    if not resolved.pickled:
        return backend.describe(resolved, None)
    data = resolved.path.read_bytes()
    sha = sha256_bytes(data)
    if sha != resolved.sha256:
        raise UntrustedModelError(f"{resolved.path} changed while it was being loaded; try again")
    if resolved.trusted_by is None:
        raise UntrustedModelError(
            f"refusing to load {resolved.ref.text}: {resolved.path} has SHA-256 {sha}, which is not "
            f"trusted. Loading a .model file unpickles it, which can run arbitrary code. "
            + _how_to_trust(resolved.ref, resolved.path)
        )
    try:
        module = _unpickle(data, device)
    except Exception as err:
        raise InputError(f"{resolved.path} could not be loaded as a torch model: {err}") from err
    loaded = backend.describe(resolved, module)
    TrustStore(settings.trust_store_path).update_metadata(sha, loaded.metadata())
    return loaded


def trust(ref: str | Path | ModelRef, settings: Settings | None = None, *, note: str = "") -> LoadedModel:
    """Record the current SHA-256 of ``ref``'s file as trusted by the user, then load it."""
    settings = settings or load_settings()
    resolved = resolve(ref, settings)
    if resolved.ref.kind is RefKind.BUNDLED or not resolved.pickled:  # trusted already: by manifest, or as code
        return load_model(resolved.ref, settings)
    store = TrustStore(settings.trust_store_path)
    was_trusted = store.is_trusted(resolved.sha256)
    store.add(resolved.sha256, source="user", path=resolved.path, ref=resolved.ref.text, note=note)
    try:
        return load_model(resolved.ref, settings)
    except InputError:
        if not was_trusted:  # not a model of its family: do not leave its hash trusted
            store.remove(resolved.sha256)
        raise
