"""Every model this installation knows, for ``ionscreen models list``.

Sources: bundled models, registry versions, foundation files in mace-torch's cache, files
trusted explicitly, and potentials defined by code (``ase:<family>``). Facts about a model
(family, elements, size, dtype) come from the bundled manifest, the code, registry tags or the
trust store's record of an earlier load; a trusted model without recorded facts is loaded once
to obtain them. Untrusted files are listed but never unpickled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ase.data import chemical_symbols

from mlip import bundled, foundation, registry, signing
from mlip.backends import BACKENDS, FILE_FAMILY, code_defined_families, packaged_families
from mlip.config import Settings, mask_password
from mlip.refs import ModelRef, RefKind
from mlip.trust import TrustStore, sha256_file


@dataclass
class ModelInfo:
    ref: str
    sha256: str
    source: str
    trusted: bool
    path: str | None = None
    elements: list[str] = field(default_factory=list)
    n_params: int | None = None
    dtype: str | None = None
    aliases: list[str] = field(default_factory=list)
    family: str = FILE_FAMILY

    def as_dict(self) -> dict:
        return {
            "ref": self.ref,
            "family": self.family,
            "sha256": self.sha256,
            "elements": self.elements,
            "n_params": self.n_params,
            "dtype": self.dtype,
            "source": self.source,
            "trusted": self.trusted,
            "path": self.path,
            "aliases": self.aliases,
        }


def _fill(info: ModelInfo, meta: dict) -> None:
    if meta:
        info.elements = list(meta.get("elements") or info.elements)
        info.n_params = meta.get("n_params", info.n_params)
        info.dtype = meta.get("dtype", info.dtype)
        info.family = meta.get("family", info.family)


def list_models(settings: Settings, *, inspect_trusted: bool = True) -> list[ModelInfo]:
    from mlip.loader import load_model

    store = TrustStore(settings.trust_store_path)
    trusted = {e.sha256: e for e in store.entries()}
    out: list[ModelInfo] = []
    seen_paths: set[str] = set()

    for b in bundled.manifest().values():
        info = ModelInfo(f"bundled:{b.name}", b.sha256, "bundled with ionscreen", True, str(b.path))
        _fill(info, b.metadata)
        out.append(info)
        seen_paths.add(str(b.path))

    for family in packaged_families():  # facts without loading: the files are known by their pinned hashes
        for name, weights in BACKENDS[family].packaged_weights().items():
            path = weights.path()
            if path is None or not path.is_file():
                continue
            info = ModelInfo(f"{family}:{name}", weights.sha256, weights.source, sha256_file(path) == weights.sha256,
                             str(path), family=family, elements=[chemical_symbols[z] for z in weights.atomic_numbers], dtype=weights.dtype)
            out.append(info)
            seen_paths.add(str(path))

    for v in registry.list_versions(settings):
        tags = v.tags
        info = ModelInfo(
            f"models:/{v.name}/{v.version}",
            tags.get(registry.TAG_SHA256, "unknown"),
            f"MLflow registry ({mask_password(settings.mlflow_tracking_uri)}), run {v.run_id}",
            tags.get(registry.TAG_SHA256) in trusted
            or signing.registry_signature_verifies(tags, tags.get(registry.TAG_SHA256, ""), settings),
            v.source,
            aliases=[f"models:/{v.name}@{a}" for a in v.aliases],
        )
        _fill(info, {
            "elements": [e for e in tags.get(registry.TAG_ELEMENTS, "").split(",") if e],
            "n_params": int(tags[registry.TAG_PARAMS]) if registry.TAG_PARAMS in tags else None,
            "dtype": tags.get(registry.TAG_DTYPE),
        })
        out.append(info)

    cache_dir = settings.model_cache_dir
    if cache_dir.is_dir():
        for name, url in sorted(foundation.foundation_urls().items()):
            path = cache_dir / foundation.cache_file_name(url)
            if path.is_file() and str(path) not in seen_paths:
                sha = sha256_file(path)
                entry = trusted.get(sha)
                info = ModelInfo(
                    f"mace-mp:{name}", sha,
                    f"foundation cache; {'trusted: ' + entry.source if entry else 'untrusted (copied in?)'}",
                    entry is not None, str(path),
                )
                if entry:
                    _fill(info, entry.metadata)
                out.append(info)
                seen_paths.add(str(path))

    for entry in trusted.values():
        for p in entry.paths:
            if p in seen_paths or not Path(p).is_file():
                continue
            if sha256_file(p) != entry.sha256:
                continue  # file changed since it was trusted: the old hash no longer describes it
            info = ModelInfo(p, entry.sha256, f"trusted file ({entry.source})", True, p)
            _fill(info, entry.metadata)
            out.append(info)
            seen_paths.add(p)

    for family in code_defined_families():  # cheap to load: nothing to unpickle
        loaded = load_model(ModelRef(RefKind.ASE, name=family), settings)
        info = ModelInfo(loaded.ref, loaded.sha256, loaded.source, True, str(loaded.path))
        _fill(info, loaded.metadata())
        out.append(info)

    if inspect_trusted:
        for info in out:
            if info.trusted and not info.elements and info.path and Path(info.path).is_file():
                ref = info.ref
                try:
                    loaded = load_model(ref, settings)
                except Exception as err:  # listing must not die on one bad entry
                    info.source += f"; could not be inspected: {err}"
                    continue
                _fill(info, loaded.metadata())
    return out
