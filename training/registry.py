"""Register trained MACE models in the MLflow model registry and move aliases between versions.

A version registered here carries the SHA-256 of its file and a summary of the model as tags, and
its hash is added to the local trust store, so ``models:/NAME@ALIAS`` loads without a prompt here. With a
team signing key (:mod:`mlip.signing`) the version is also signed, so that other machines holding the key
load it too; a tag alone never makes a file loadable.
"""

from __future__ import annotations

from pathlib import Path

from mlip import registry as mlip_registry
from mlip import signing
from mlip.config import Settings
from mlip.errors import InputError, UntrustedModelError
from mlip.loader import load_model
from mlip.refs import RefKind, parse_ref
from mlip.trust import TrustStore

MODELS_EXPERIMENT = "ionscreen-models"


def ensure_experiment(client, name: str, settings: Settings) -> str:
    """The id of experiment ``name``, created if missing. Its artifacts go under ``mlflow_artifact_location``; with
    a tracking server and no location set, where the server says (its served ``mlflow-artifacts:/`` root), never a
    path on this host. Two processes creating it at once (jobs submitted together) both get the one experiment."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    settings.ensure_home()
    try:
        return client.create_experiment(name, artifact_location=settings.experiment_artifact_location(name))
    except MlflowException:
        exp = client.get_experiment_by_name(name)  # created by another process since we looked
        if exp is None:
            raise
        return exp.experiment_id


def register_model(
    path: str | Path,
    name: str,
    settings: Settings,
    *,
    alias: str | None = None,
    run_id: str | None = None,
    description: str = "",
    extra_tags: dict[str, str] | None = None,
) -> mlip_registry.RegistryVersion:
    """Register the (already trusted) model file at ``path`` as a new version of ``name``."""
    from mlflow.exceptions import MlflowException

    path = Path(path).resolve()
    ref = parse_ref(path)
    if ref.kind is not RefKind.PATH:
        raise InputError(f"register takes a model file path, got {path}")
    try:
        loaded = load_model(path, settings)
    except UntrustedModelError as err:
        raise UntrustedModelError(
            f"{err} Only trusted files can be registered (registering makes the file trusted "
            "for everyone who uses the registry)."
        ) from err

    client = mlip_registry.client(settings)
    own_run = run_id is None
    if own_run:
        exp_id = ensure_experiment(client, MODELS_EXPERIMENT, settings)
        run_id = client.create_run(exp_id, run_name=f"register-{name}").info.run_id
        client.log_param(run_id, "source_path", str(path))
    try:
        client.log_artifact(run_id, str(path), artifact_path="model")
        source = client.get_run(run_id).info.artifact_uri.rstrip("/") + "/model"
        try:
            client.create_registered_model(name, description=description or None)
        except MlflowException as err:
            if "already exists" not in str(err).lower() and "RESOURCE_ALREADY_EXISTS" not in str(err):
                raise
        meta = loaded.metadata()
        tags = {
            mlip_registry.TAG_SHA256: loaded.sha256,
            mlip_registry.TAG_ELEMENTS: ",".join(meta["elements"]),
            mlip_registry.TAG_PARAMS: str(meta["n_params"]),
            mlip_registry.TAG_DTYPE: meta["dtype"],
            mlip_registry.TAG_FILE: path.name,
            **(extra_tags or {}),
        }
        tags.pop(signing.TAG_SIGNATURE, None)  # only ionscreen's own key signs
        key = signing.read_key(settings.signing_key_path)
        if key is not None:
            tags[signing.TAG_SIGNATURE] = signing.sign(loaded.sha256, key)
        mv = client.create_model_version(name, source=source, run_id=run_id, tags=tags,
                                         description=description or None)
        if alias:
            client.set_registered_model_alias(name, alias, mv.version)
    finally:
        if own_run:
            client.set_terminated(run_id)
    TrustStore(settings.trust_store_path).add(
        loaded.sha256, source="registered", path=path, ref=f"models:/{name}/{mv.version}",
        metadata=loaded.metadata(),
    )
    return mlip_registry.get_version(parse_ref(f"models:/{name}/{mv.version}"), settings)


def promote(name: str, version: int, alias: str, settings: Settings) -> mlip_registry.RegistryVersion:
    """Point ``models:/NAME@ALIAS`` at ``version``."""
    from mlflow.exceptions import MlflowException

    client = mlip_registry.client(settings)
    try:
        client.get_model_version(name, str(version))
        client.set_registered_model_alias(name, alias, str(version))
    except MlflowException as err:
        raise InputError(f"cannot promote models:/{name}/{version} to @{alias}: {err}") from err
    return mlip_registry.get_version(parse_ref(f"models:/{name}@{alias}"), settings)
