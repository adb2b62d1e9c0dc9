"""Hardening of model trust and of printed configuration: what a hostile MLflow user, a replaced download or a
curious onlooker can and cannot do. The "marker" files stand in for arbitrary code run by unpickling."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlip import foundation, signing
from mlip.catalog import list_models
from mlip.config import load_settings, mask_password
from mlip.errors import ConfigError, UntrustedModelError
from mlip.loader import load_model, resolve, trust
from mlip.trust import TrustStore, sha256_file
from hostile import evil_model


def _register_with_plain_mlflow(settings, path: Path, name: str, tags: dict[str, str]) -> None:
    """What any MLflow client can do, without ionscreen: log a file and register it with tags of its choosing."""
    from mlip import registry
    from training.registry import ensure_experiment

    client = registry.client(settings)
    run = client.create_run(ensure_experiment(client, "elsewhere", settings)).info.run_id
    client.log_artifact(run, str(path), artifact_path="model")
    client.create_registered_model(name)
    client.create_model_version(name, source=client.get_run(run).info.artifact_uri + "/model", run_id=run, tags=tags)


def test_registry_pickle_with_a_self_set_hash_tag_runs_nothing(tmp_path, settings):
    """The finding: a pickle registered with plain MLflow and a matching ``ionscreen.sha256`` tag was unpickled by
    ``ionscreen models info``. A tag alone must never make a file loadable, not even with trust_registry on."""
    from workflows.cli import app

    marker = tmp_path / "pwned-through-the-registry"
    evil = evil_model(tmp_path / "evil.model", marker)
    _register_with_plain_mlflow(settings, evil, "sneaky", {"ionscreen.sha256": sha256_file(evil)})
    assert settings.trust_registry
    with pytest.raises(UntrustedModelError, match="registry tag never makes a file loadable"):
        load_model("models:/sneaky/1", settings)
    result = CliRunner().invoke(app, ["models", "info", "models:/sneaky/1"])
    assert result.exit_code != 0 and isinstance(result.exception, UntrustedModelError)
    assert not marker.exists()
    listed = {m.ref: m for m in list_models(settings)}
    assert listed["models:/sneaky/1"].trusted is False


def test_a_forged_signature_is_refused_and_a_team_signature_is_accepted(tmp_path, settings, tiny_model_copy,
                                                                       monkeypatch):
    """Two machines share the registry and the team key, not their trust stores: what one registers through
    ionscreen the other loads; a signature made with another key (or copied from another file) loads nothing."""
    from training.registry import register_model

    signing.create_key(settings.signing_key_path)
    assert (settings.signing_key_path.stat().st_mode & 0o777) == 0o600
    trust(str(tiny_model_copy), settings)
    version = register_model(tiny_model_copy, "team-model", settings, alias="production")
    good_signature = version.tags[signing.TAG_SIGNATURE]

    marker = tmp_path / "pwned-with-a-forged-signature"
    evil = evil_model(tmp_path / "evil.model", marker)
    forged = signing.sign(sha256_file(evil), bytes(32))  # someone else's key
    _register_with_plain_mlflow(settings, evil, "forged", {"ionscreen.sha256": sha256_file(evil),
                                                            signing.TAG_SIGNATURE: forged})
    _register_with_plain_mlflow(settings, evil, "copied", {"ionscreen.sha256": sha256_file(evil),
                                                            signing.TAG_SIGNATURE: good_signature})

    # the second machine: same registry and key, its own (empty) trust store
    other_home = tmp_path / "other-machine"
    other_home.mkdir()
    env = {**os.environ, "IONSCREEN_HOME": str(other_home),
           "IONSCREEN_MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
           "IONSCREEN_REGISTRY_SIGNING_KEY_FILE": str(settings.signing_key_path)}
    other = load_settings(env)
    assert not TrustStore(other.trust_store_path).is_trusted(sha256_file(tiny_model_copy))
    loaded = load_model("models:/team-model@production", other)
    assert "signature verified" in loaded.trusted_by
    for name in ("forged", "copied"):
        with pytest.raises(UntrustedModelError):
            load_model(f"models:/{name}/1", other)
    assert not marker.exists()

    # without the key, or with trust_registry off, the signed version is refused on the other machine
    no_key = load_settings({**env, "IONSCREEN_REGISTRY_SIGNING_KEY_FILE": str(tmp_path / "absent.key")})
    assert resolve("models:/team-model/1", no_key).trusted_by is None
    off = load_settings({**env, "IONSCREEN_TRUST_REGISTRY": "false"})
    assert resolve("models:/team-model/1", off).trusted_by is None


@pytest.mark.parametrize("tag", ["é" * 64, "\u202e" + "0" * 63, "", "0" * 64])
def test_a_malformed_signature_tag_is_refused_not_a_crash(tag):
    from mlip import signing

    key = b"k" * signing.KEY_BYTES
    assert signing.verify("ab" * 32, tag, key) is False
    assert signing.verify("ab" * 32, signing.sign("ab" * 32, key), key) is True


def test_signing_key_must_be_private_and_well_formed(tmp_path):
    key = signing.create_key(tmp_path / "k")
    with pytest.raises(ConfigError, match="already exists"):
        signing.create_key(key)
    key.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        signing.read_key(key)
    key.chmod(0o600)
    key.write_text("abcd\n")
    with pytest.raises(ConfigError, match="at least 32"):
        signing.read_key(key)
    assert signing.read_key(tmp_path / "missing") is None


def _serve_download(monkeypatch, payload: bytes) -> list[str]:
    class Response(io.BytesIO):
        headers = {"Content-Length": str(len(payload))}

        def info(self):
            return "Content-Type: application/octet-stream"

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    urls: list[str] = []
    monkeypatch.setattr("urllib.request.urlopen", lambda url, timeout=None: urls.append(url) or Response(payload))
    return urls


def test_foundation_download_is_trusted_only_when_it_matches_the_pinned_hash(tiny_model_file, settings, monkeypatch):
    payload = tiny_model_file.read_bytes()
    urls = _serve_download(monkeypatch, payload)
    monkeypatch.setitem(foundation.PINNED_SHA256, "small-0b", sha256_file(tiny_model_file))
    loaded = load_model("mace-mp:small-0b", settings)
    assert urls and "mace_agnesi_small.model" in urls[0]
    entry = TrustStore(settings.trust_store_path).get(loaded.sha256)
    assert entry.source == "downloaded" and "mace-mp:small-0b" in entry.refs


def test_foundation_download_that_differs_from_the_pin_is_deleted(tmp_path, settings, monkeypatch):
    marker = tmp_path / "pwned-by-a-replaced-release"
    payload = evil_model(tmp_path / "evil.model", marker).read_bytes()
    _serve_download(monkeypatch, payload)
    monkeypatch.setitem(foundation.PINNED_SHA256, "small-0b", "0" * 64)
    with pytest.raises(UntrustedModelError, match="0{64}") as info:
        load_model("mace-mp:small-0b", settings)
    assert sha256_file(tmp_path / "evil.model") in str(info.value)
    assert not foundation.expected_cache_path("small-0b", settings.model_cache_dir).exists()
    assert not marker.exists()


def test_foundation_download_without_a_pin_is_not_trusted_on_first_use(tmp_path, settings, monkeypatch):
    marker = tmp_path / "pwned-on-first-use"
    payload = evil_model(tmp_path / "evil.model", marker).read_bytes()
    _serve_download(monkeypatch, payload)
    assert "medium-0b" not in foundation.PINNED_SHA256
    with pytest.raises(UntrustedModelError, match="pins no published hash"):
        load_model("mace-mp:medium-0b", settings)
    assert not marker.exists()
    assert len(TrustStore(settings.trust_store_path).entries()) == 0


@pytest.mark.parametrize("url, shown", [
    ("postgresql://alice:s3cr%40t@db.example:5432/ionscreen", "postgresql://alice:***@db.example:5432/ionscreen"),
    ("postgresql+psycopg://bob:pw@10.0.0.2/x?sslmode=require", "postgresql+psycopg://bob:***@10.0.0.2/x?sslmode=require"),
    ("http://u:p@mlflow:5000", "http://u:***@mlflow:5000"),
    ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
    ("postgresql://nopassword@host/db", "postgresql://nopassword@host/db"),
    ("postgresql://carol:pa/ss@h/db", "postgresql://carol:***@h/db"),  # SQLAlchemy reads "pa/ss" as the password
    ("postgresql://dave:p@ss@h/db", "postgresql://dave:***@h/db"),
])
def test_passwords_are_masked(url, shown):
    assert mask_password(url) == shown


def test_config_command_masks_the_database_password(monkeypatch):
    from workflows.cli import app

    monkeypatch.setenv("IONSCREEN_DB_URL", "postgresql://alice:hunter2-secret@127.0.0.1:5432/test")
    monkeypatch.setenv("IONSCREEN_MLFLOW_TRACKING_URI", "http://bob:mlflow-secret@127.0.0.1:5000")
    for args in (["config"], ["config", "--json"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "hunter2-secret" not in result.output and "mlflow-secret" not in result.output
        assert "alice:***@127.0.0.1" in result.output and "bob:***@" in result.output
