"""Turn a model reference into a ready model of its family — the only place ionscreen unpickles a model.

Order of work for every file reference: resolve to a local file, read its bytes once, hash them,
decide trust, and only then unpickle those same bytes (no window in which the file could be
swapped between the check and the load). Potentials defined by code (``ase:<family>``) are never
unpickled; their identity is their source (:meth:`mlip.backends.ModelBackend.code_source`). What the
model is (its facts, its calculators) is the family's backend's business (:mod:`mlip.backends`).
"""

from __future__ import annotations

import io
import threading
from pathlib import Path

from mlip import bundled, foundation, registry, signing
from mlip._mace import import_mace
from mlip.backends import get_backend
from mlip.config import Settings, load_settings, mask_password
from mlip.errors import InputError, ModelNotFoundError, UntrustedModelError
from mlip.model import FILE_FAMILY, LoadedModel, ResolvedModel, missing_elements  # noqa: F401 (re-exported)
from mlip.refs import ModelRef, RefKind, parse_ref
from mlip.trust import TrustStore, sha256_bytes, sha256_file


def _how_to_trust(ref: ModelRef, path: Path) -> str:
    target = ref.text if ref.kind is not RefKind.PATH else str(path)
    advice = (
        f"If you know where this file came from and accept that loading it runs code, trust it "
        f"with `ionscreen models trust {target}` (records its SHA-256)."
    )
    if ref.kind is RefKind.FOUNDATION:
        advice += (f" ionscreen pins no published hash for {ref.text}: compare the SHA-256 above with the digest "
                   f"published for {foundation.foundation_urls()[ref.name]} first.")
    elif ref.kind is RefKind.REGISTRY:
        advice += (" A registry tag never makes a file loadable; versions that a teammate registered are loaded "
                   "without this step when both machines hold the team's signing key (`ionscreen models signing-key`).")
    return advice


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
    if ref.kind is RefKind.PACKAGED:
        return _resolve_packaged(ref)

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
            _trust_if_pinned(ref, path, store)
        source = f"MACE foundation model cache ({path.parent})"
    else:
        version = registry.get_version(ref, settings)
        path = registry.fetch_model_file(version, settings)
        source = f"MLflow registry {mask_password(settings.mlflow_tracking_uri)}, {version.name} v{version.version}"

    sha = sha256_file(path)
    trusted_by = None
    entry = store.get(sha)
    if entry is not None:
        trusted_by = f"trust store ({entry.source})"
    elif ref.kind is RefKind.FOUNDATION and foundation.PINNED_SHA256.get(ref.name) == sha:
        trusted_by = "pinned published SHA-256"  # also a file cached before its hash was pinned
    elif version is not None and signing.registry_signature_verifies(version.tags, sha, settings):
        trusted_by = "registered through ionscreen (signature verified with the team key)"
    return ResolvedModel(ref, path, sha, source, trusted_by, version)



def _resolve_packaged(ref: ModelRef) -> ResolvedModel:
    """Weights inside an installed package, trusted only when the file's SHA-256 is the one ionscreen recorded
    from that package's release."""
    backend = get_backend(ref.family)
    weights = backend.packaged_weights()[ref.name]
    path = weights.path()
    if path is None:
        raise ModelNotFoundError(f"{ref.text} needs the {weights.package} package: {weights.install_hint()}")
    if not path.is_file():
        raise ModelNotFoundError(f"{ref.text}: {path} is missing from the installed {weights.package} package "
                                 f"(ionscreen knows the files of {weights.package} {weights.package_version})")
    sha = sha256_file(path)
    if sha != weights.sha256:
        raise UntrustedModelError(
            f"{ref.text}: {path} has SHA-256 {sha}, but the file in the {weights.package} {weights.package_version} "
            f"release has {weights.sha256}: another version is installed or the file was altered. "
            f"Install {weights.package}=={weights.package_version}; nothing was loaded."
        )
    return ResolvedModel(ref, path, sha, weights.source,
                         f"pinned SHA-256 of the {weights.package} {weights.package_version} release",
                         family=ref.family, pickled=not backend.in_worker)


def _trust_if_pinned(ref: ModelRef, path: Path, store: TrustStore) -> None:
    """Trust a fresh download whose hash is the pinned one; delete one that differs; leave others untrusted."""
    pinned = foundation.PINNED_SHA256.get(ref.name)
    if pinned is None:
        return
    sha = sha256_file(path)
    if sha != pinned:
        path.unlink(missing_ok=True)
        raise UntrustedModelError(
            f"the download of {ref.text} has SHA-256 {sha}, but the published hash pinned by ionscreen is {pinned}: "
            "the file was altered or the release was replaced. It was deleted and nothing was loaded."
        )
    store.add(sha, source="downloaded", path=path, ref=ref.text,
              note=f"downloaded by ionscreen from {foundation.foundation_urls()[ref.name]}; matches the pinned SHA-256")


# Unpickling a MACE model runs e3nn's code generation, which traces with torch.fx, and torch.fx keeps its patcher in a
# process-wide global: two threads unpickling at once (a web server planning two submitted jobs) break each other.
_UNPICKLE_LOCK = threading.Lock()


def _unpickle(data: bytes, device: str, *, weights_only: bool):
    import_mace()  # before e3nn; it also sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD (an explicit True still holds)
    import torch

    with _UNPICKLE_LOCK:
        return torch.load(io.BytesIO(data), map_location=device, weights_only=weights_only)


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
        return _attached(backend.describe(resolved, None), backend)
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
        module = _unpickle(data, device, weights_only=backend.weights_only)
    except Exception as err:
        raise InputError(f"{resolved.path} could not be loaded as a torch model: {err}") from err
    loaded = _attached(backend.describe(resolved, module), backend)
    TrustStore(settings.trust_store_path).update_metadata(sha, loaded.metadata())
    return loaded


def _attached(loaded: LoadedModel, backend) -> LoadedModel:
    """The model with its family's backend, which everything else asks for calculators and engines."""
    loaded.backend = backend
    return loaded


def trust(ref: str | Path | ModelRef, settings: Settings | None = None, *, note: str = "") -> LoadedModel:
    """Record the current SHA-256 of ``ref``'s file as trusted by the user, then load it."""
    settings = settings or load_settings()
    resolved = resolve(ref, settings)
    if resolved.ref.kind in (RefKind.BUNDLED, RefKind.PACKAGED) or not resolved.pickled:
        # trusted already: by the manifest, by the package's pinned hash, or as code
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
