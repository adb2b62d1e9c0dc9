"""Every reference form resolves to the same tiny model; untrusted files are never unpickled."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk

from mlip import bundled, foundation
from mlip.errors import ModelNotFoundError, ModelUnavailableOffline, UntrustedModelError, InputError
from mlip.loader import load_model, resolve, trust
from mlip.trust import TrustStore, sha256_file
from hostile import evil_model


def _li_cell():
    return bulk("Li", "bcc", a=3.45, cubic=True) * (2, 2, 2)


def _energy(loaded):
    atoms = _li_cell()
    atoms.calc = loaded.calculator(task="single_point")
    return atoms.get_potential_energy()


def test_malicious_pickle_is_refused_and_never_runs(tmp_path, settings):
    import torch

    marker = tmp_path / "pwned-by-ionscreen-load"
    evil = evil_model(tmp_path / "evil.model", marker)
    with pytest.raises(UntrustedModelError, match="ionscreen models trust") as info:
        load_model(str(evil), settings)
    assert sha256_file(evil) in str(info.value)
    assert not marker.exists()

    # Control: the same kind of file really does run code when unpickled without the guard.
    control_marker = tmp_path / "pwned-by-plain-torch-load"
    control = evil_model(tmp_path / "control.model", control_marker)
    torch.load(control, weights_only=False)
    assert control_marker.exists()


def test_trusted_file_swapped_for_malicious_one_is_refused(tmp_path, tiny_model_copy, settings):
    trust(str(tiny_model_copy), settings)
    assert load_model(str(tiny_model_copy), settings).atomic_numbers == (3, 15, 16, 17)
    marker = tmp_path / "pwned-after-swap"
    evil_model(tiny_model_copy, marker)  # same path, new content
    with pytest.raises(UntrustedModelError):
        load_model(str(tiny_model_copy), settings)
    assert not marker.exists()


def test_path_ref_trust_then_load(tiny_model_copy, settings):
    with pytest.raises(UntrustedModelError):
        load_model(str(tiny_model_copy), settings)
    loaded = trust(str(tiny_model_copy), settings, note="built in test")
    assert loaded.elements == ("Li", "P", "S", "Cl")
    assert loaded.dtype == "float64" and loaded.n_params > 1000 and loaded.r_max_A == pytest.approx(4.5)
    entry = TrustStore(settings.trust_store_path).get(loaded.sha256)
    assert entry.source == "user" and entry.note == "built in test"
    assert entry.metadata["elements"] == ["Li", "P", "S", "Cl"]
    again = load_model(tiny_model_copy, settings)
    assert again.sha256 == loaded.sha256 and np.isfinite(_energy(again))


def test_missing_and_non_mace_files(tmp_path, settings):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_model(str(tmp_path / "nope.model"), settings)
    import torch

    other = tmp_path / "linear.model"
    torch.save(torch.nn.Linear(2, 2), other)
    with pytest.raises(InputError, match="not a MACE model"):
        trust(str(other), settings)
    # a failed trust does not leave the hash trusted
    assert not TrustStore(settings.trust_store_path).is_trusted(sha256_file(other))


def _place_in_foundation_cache(model_file: Path, name: str, settings) -> Path:
    target = foundation.expected_cache_path(name, settings.model_cache_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(model_file, target)
    return target


def test_foundation_ref_with_preplaced_cache_file(tiny_model_file, settings):
    target = _place_in_foundation_cache(tiny_model_file, "small", settings)
    assert target.parent == settings.model_cache_dir
    assert target.name == "20231210mace128L0_energy_epoch249model"  # mace-torch's own naming
    with pytest.raises(UntrustedModelError, match="ionscreen models trust mace-mp:small"):
        load_model("mace-mp:small", settings)
    loaded = trust("mace-mp:small", settings)
    assert loaded.ref == "mace-mp:small" and loaded.path == target
    assert np.isfinite(_energy(loaded))


def test_foundation_offline_error_names_cache_path(settings, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    expected = foundation.expected_cache_path("medium", settings.model_cache_dir)
    with pytest.raises(ModelUnavailableOffline) as info:
        load_model("mace-mp:medium", settings)
    assert str(expected) in str(info.value) and "2023-12-03-mace-128-L1_epoch-199.model" in str(info.value)
    assert not expected.exists() and not Path(str(expected) + ".part").exists()


def test_unknown_foundation_name(settings):
    with pytest.raises(ModelNotFoundError, match="known names:.*small"):
        load_model("mace-mp:gigantic", settings)


def test_registry_refs_roundtrip(tiny_model_copy, settings):
    from training.registry import promote, register_model

    trust(str(tiny_model_copy), settings)
    v1 = register_model(tiny_model_copy, "lipscl-tiny", settings, alias="production")
    assert v1.version == 1 and "production" in v1.aliases
    by_alias = load_model("models:/lipscl-tiny@production", settings)
    by_version = load_model("models:/lipscl-tiny/1", settings)
    direct = load_model(str(tiny_model_copy), settings)
    assert by_alias.sha256 == by_version.sha256 == direct.sha256
    assert _energy(by_alias) == pytest.approx(_energy(direct), abs=1e-10)
    # a second version and promotion
    v2 = register_model(tiny_model_copy, "lipscl-tiny", settings)
    assert v2.version == 2
    promote("lipscl-tiny", 2, "production", settings)
    assert resolve("models:/lipscl-tiny@production", settings).registry_version.version == 2
    with pytest.raises(ModelNotFoundError, match="does not resolve"):
        load_model("models:/lipscl-tiny@staging", settings)
    with pytest.raises(ModelNotFoundError, match="does not resolve"):
        load_model("models:/no-such-model/1", settings)


def test_registry_version_not_registered_by_ionscreen_is_refused(tmp_path, settings):
    """A version whose file was put in the registry by someone else (no hash tag) is not trusted."""
    from training.registry import ensure_experiment
    from mlip import registry

    marker = tmp_path / "pwned-from-registry"
    evil = evil_model(tmp_path / "evil.model", marker)
    client = registry.client(settings)
    exp = ensure_experiment(client, "elsewhere", settings)
    run = client.create_run(exp).info.run_id
    client.log_artifact(run, str(evil), artifact_path="model")
    client.create_registered_model("sneaky")
    client.create_model_version("sneaky", source=client.get_run(run).info.artifact_uri + "/model", run_id=run)
    with pytest.raises(UntrustedModelError):
        load_model("models:/sneaky/1", settings)
    assert not marker.exists()


def test_bundled_ref(tiny_model_file, tmp_path, settings, monkeypatch):
    bdir = tmp_path / "bundled"
    bdir.mkdir()
    shutil.copy(tiny_model_file, bdir / "demo.model")
    (bdir / "manifest.json").write_text(json.dumps({"models": {"demo": {
        "file": "demo.model", "sha256": sha256_file(tiny_model_file),
        "metadata": {"elements": ["Li", "P", "S", "Cl"]}}}}))
    monkeypatch.setattr(bundled, "BUNDLED_DIR", bdir)
    loaded = load_model("bundled:demo", settings)
    assert loaded.trusted_by == "bundled manifest" and loaded.elements == ("Li", "P", "S", "Cl")
    with pytest.raises(ModelNotFoundError, match="bundled:demo"):
        load_model("bundled:other", settings)
    (bdir / "demo.model").write_bytes((bdir / "demo.model").read_bytes() + b"tampered")
    with pytest.raises(UntrustedModelError, match="corrupted"):
        load_model("bundled:demo", settings)


def test_shipped_manifest_entries_match_their_files(settings):
    for name, entry in bundled.manifest().items():
        assert entry.path.is_file(), name
        assert sha256_file(entry.path) == entry.sha256, name
        assert load_model(f"bundled:{name}", settings).elements


def test_trust_store_survives_concurrent_writers(tmp_path, settings):
    code = (
        "import sys; from mlip.trust import TrustStore\n"
        "s = TrustStore(sys.argv[1])\n"
        "for i in range(25): s.add(f'{int(sys.argv[2]) * 100 + i:064x}', source='user')\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(settings.trust_store_path), str(k)]) for k in range(4)]
    assert all(p.wait(60) == 0 for p in procs)
    assert len(TrustStore(settings.trust_store_path).entries()) == 100


def test_corrupt_trust_store_is_reported_not_overwritten(settings, tiny_model_copy):
    from mlip.errors import ConfigError

    settings.ensure_home()
    settings.trust_store_path.write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable"):
        trust(str(tiny_model_copy), settings)
    assert settings.trust_store_path.read_text() == "{not json"
