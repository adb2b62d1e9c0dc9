"""Resolve ``models:/NAME@ALIAS`` and ``models:/NAME/VERSION`` through the MLflow model registry.

A model version registered by ionscreen carries tags with the SHA-256 of its ``.model`` file and
a summary (elements, parameter count, dtype). The artifact is downloaded once into
``$IONSCREEN_HOME/registry-cache/NAME/VERSION`` and re-used while its hash still matches.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from mlip.config import Settings, mask_password
from mlip.errors import ModelNotFoundError
from mlip.refs import ModelRef, RefKind
from mlip.trust import sha256_file

TAG_SHA256 = "ionscreen.sha256"
TAG_ELEMENTS = "ionscreen.elements"
TAG_PARAMS = "ionscreen.n_params"
TAG_DTYPE = "ionscreen.dtype"
TAG_FILE = "ionscreen.model_file"


@dataclass(frozen=True)
class RegistryVersion:
    name: str
    version: int
    aliases: tuple[str, ...]
    source: str
    run_id: str | None
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def sha256(self) -> str | None:
        return self.tags.get(TAG_SHA256)


def client(settings: Settings):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)


def _version_record(mv) -> RegistryVersion:
    return RegistryVersion(
        name=mv.name,
        version=int(mv.version),
        aliases=tuple(getattr(mv, "aliases", []) or ()),
        source=mv.source,
        run_id=mv.run_id,
        tags=dict(mv.tags or {}),
    )


def get_version(ref: ModelRef, settings: Settings) -> RegistryVersion:
    """Look up the registry entry that ``ref`` points at."""
    assert ref.kind is RefKind.REGISTRY
    from mlflow.exceptions import MlflowException

    c = client(settings)
    try:
        if ref.alias is not None:
            mv = c.get_model_version_by_alias(ref.name, ref.alias)
        else:
            mv = c.get_model_version(ref.name, str(ref.version))
    except MlflowException as err:
        raise ModelNotFoundError(
            f"{ref.text} does not resolve in the MLflow registry at {mask_password(settings.mlflow_tracking_uri)}: "
            f"{err.message if hasattr(err, 'message') else err}. "
            "List registered models with `ionscreen models list`."
        ) from err
    return _version_record(mv)


def list_versions(settings: Settings) -> list[RegistryVersion]:
    """Every model version in the registry (empty when the registry database does not exist yet)."""
    if settings.mlflow_tracking_uri.startswith("sqlite:///"):
        db = Path(settings.mlflow_tracking_uri.removeprefix("sqlite:///"))
        if not db.exists():
            return []
    c = client(settings)
    out = []
    for mv in c.search_model_versions(max_results=10_000):
        out.append(_version_record(mv))
    # search_model_versions does not fill aliases in every backend: add them from the model.
    by_name = {}
    for rv in out:
        if rv.name not in by_name:
            by_name[rv.name] = c.get_registered_model(rv.name).aliases or {}
    return sorted(
        (
            RegistryVersion(
                rv.name,
                rv.version,
                tuple(a for a, v in by_name[rv.name].items() if int(v) == rv.version),
                rv.source,
                rv.run_id,
                rv.tags,
            )
            for rv in out
        ),
        key=lambda r: (r.name, r.version),
    )


def fetch_model_file(version: RegistryVersion, settings: Settings) -> Path:
    """Download the version's ``.model`` artifact (once) and return its local path.

    Safe when several processes or threads of one data directory ask at once (jobs submitted together, workers
    starting): one downloads, under a lock, into a staging directory that is renamed into place complete."""
    import mlflow.artifacts

    from mlip.util import file_lock

    dest = settings.registry_cache_dir / version.name / str(version.version)
    with file_lock(dest.parent / f".{version.version}.lock"):
        cached = sorted(dest.glob("**/*.model")) if dest.exists() else []
        if len(cached) == 1 and (version.sha256 is None or sha256_file(cached[0]) == version.sha256):
            return cached[0]
        staging = Path(tempfile.mkdtemp(prefix=f".{version.version}-download-", dir=dest.parent))
        try:
            try:
                local = Path(
                    mlflow.artifacts.download_artifacts(
                        artifact_uri=version.source,
                        dst_path=str(staging),
                        tracking_uri=settings.mlflow_tracking_uri,
                    )
                )
            except Exception as err:  # mlflow raises many types for missing artifacts
                raise ModelNotFoundError(
                    f"models:/{version.name}/{version.version}: its artifact {version.source} "
                    f"could not be downloaded ({err})"
                ) from err
            files = [local] if local.is_file() else sorted(local.glob("**/*.model"))
            if len(files) != 1:
                raise ModelNotFoundError(
                    f"models:/{version.name}/{version.version}: expected exactly one .model file in "
                    f"{version.source}, found {len(files)}"
                )
            if dest.exists():
                shutil.rmtree(dest)
            staging.rename(dest)
            return dest / files[0].relative_to(staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
