"""A tiny MACE model trained from scratch by mace-torch on pair-potential data, tracked in MLflow,
registered, and loaded back through ``models:/NAME@ALIAS`` with bit-identical predictions."""

from __future__ import annotations

import time

import numpy as np
import pytest

from training.testing import make_pair_dataset
from training.train import Architecture, TrainConfig, train

TINY = Architecture(hidden_irreps="8x0e", r_max_A=4.0, max_ell=1, correlation=2, num_radial_basis=6,
                    mlp_irreps="8x0e", radial_mlp="[16, 16]")
EPOCHS = 3


@pytest.fixture
def dataset(tmp_path):
    """36 Li/Cl frames plus one isolated Li and Cl atom (E0 references: exactly -1.9 and -0.7 eV)."""
    return make_pair_dataset(tmp_path / "licl", 36, seed=0, isolated_atoms=True).manifest, tmp_path / "licl"


def _artifacts(client, run_id, path=""):
    out = []
    for f in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, f.path) if f.is_dir else [f.path]
    return out


def test_train_register_and_load_back(dataset, settings, tmp_path):
    from mlflow import MlflowClient

    from mlip.loader import load_model
    from mlip.trust import TrustStore, sha256_file
    from training.data import load_dataset
    from training.evaluate import predict

    manifest, ds_dir = dataset
    t0 = time.perf_counter()
    result = train(ds_dir, settings, name="tiny-licl", register="tiny-licl", alias="production",
                   config=TrainConfig(architecture=TINY, max_num_epochs=EPOCHS, batch_size=4, seed=1, device="cpu"),
                   out_dir=tmp_path / "run", metrics_poll_s=0.3)  # live logging exercised too
    wall = time.perf_counter() - t0
    assert wall < 120, f"training the tiny model took {wall:.0f} s"

    # the model file: written by mace, trusted as "trained", registered, loadable by reference
    assert result.epochs_run == EPOCHS and result.mode.value == "scratch"
    assert sha256_file(result.model_path) == result.model_sha256
    entry = TrustStore(settings.trust_store_path).get(result.model_sha256)
    assert entry is not None and entry.source == "trained"
    assert result.registered == "models:/tiny-licl/1" and result.registered_alias == "models:/tiny-licl@production"
    from_file = load_model(result.model_path, settings)
    from_registry = load_model("models:/tiny-licl@production", settings)
    assert from_registry.sha256 == result.model_sha256
    assert from_registry.elements == ("Li", "Cl") and from_registry.r_max_A == 4.0
    test_frames = [f for f in load_dataset(ds_dir).split("test") if len(f) > 1]
    a = predict(from_file.module, test_frames)
    b = predict(from_registry.module, test_frames)
    assert np.array_equal(a.energies_eV, b.energies_eV)
    assert all(np.array_equal(x, y) for x, y in zip(a.forces_eV_A, b.forces_eV_A))
    atoms = test_frames[0].copy()
    atoms.calc = from_registry.calculator(task="single_point", device="cpu")
    assert atoms.get_potential_energy() == pytest.approx(a.energies_eV[0], abs=1e-9)

    # the MLflow run: parameters, dataset, per-epoch metrics, test errors, artifacts
    client = MlflowClient(settings.mlflow_tracking_uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    p = run.data.params
    assert p["dataset.hash"] == manifest.dataset_hash == result.dataset_hash
    # isolated atoms are E0 references: they set the E0s and are neither trained on nor tested
    n_iso = {s: sum(1 for a in load_dataset(ds_dir).split(s) if len(a) == 1) for s in ("train", "valid", "test")}
    assert sum(n_iso.values()) == 2 and int(p["dataset.n_isolated_atoms"]) == 2
    assert int(p["dataset.n_train"]) == manifest.split_counts["train"] - n_iso["train"]
    assert int(p["dataset.n_test"]) == manifest.split_counts["test"] - n_iso["test"] == result.test.n_frames
    assert p["e0s.method"] == "isolated-atom frames of the dataset"
    assert result.e0s_eV == {"Li": pytest.approx(-1.9), "Cl": pytest.approx(-0.7)}
    e0_in_model = from_file.module.atomic_energies_fn.atomic_energies.detach().numpy().reshape(-1)
    np.testing.assert_allclose(e0_in_model, [-1.9, -0.7], atol=1e-12)  # mace used exactly these
    assert p["mace.hidden_irreps"] == "8x0e" and p["mace.r_max"] == "4.0" and p["mace.max_num_epochs"] == str(EPOCHS)
    assert p["mace.energy_key"] == "REF_energy" and p["mace.loss"] == "stress"  # every frame has a stress label
    assert float(p["e0s.Li_eV"]) == pytest.approx(result.e0s_eV["Li"])
    assert run.data.tags["ionscreen.dataset_hash"] == manifest.dataset_hash
    for key in ("valid_loss", "valid_energy_mae_meV_atom", "valid_force_mae_meV_A", "valid_stress_mae_meV_A3"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert sorted(steps) == list(range(EPOCHS + 1)), key  # before training + after every epoch
    train_loss = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in train_loss) == list(range(1, EPOCHS + 1))
    valid_loss = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "valid_loss")}
    assert min(valid_loss[s] for s in range(1, EPOCHS + 1)) < valid_loss[0]  # mace trained: it got better
    overall = result.test.overall
    m = run.data.metrics
    assert m["test_energy_mae_meV_atom"] == pytest.approx(overall.energy_mae_meV_atom.value)
    assert m["test_force_rmse_meV_A"] == pytest.approx(overall.force_rmse_meV_A.value)
    assert m["test_stress_mae_meV_A3"] == pytest.approx(overall.stress_mae_meV_A3.value)
    assert m["test_force_mae_meV_A.Li"] == pytest.approx(result.test.per_element["Li"].force_mae_meV_A.value)
    arts = set(_artifacts(client, run.info.run_id))
    assert {"model/tiny-licl.model", "model-variants/tiny-licl_compiled.model", "model_card.md",
            "plots/parity_energy.png", "plots/parity_forces.png", "plots/parity_stress.png",
            "evaluation/test.json", "dataset/manifest.json", "training_result.json"} <= arts
    local = client.download_artifacts(run.info.run_id, "plots", str(tmp_path / "dl"))
    for png in ("parity_energy.png", "parity_forces.png"):
        assert (tmp_path / "dl" / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", local
    card = open(client.download_artifacts(run.info.run_id, "model_card.md", str(tmp_path / "dl"))).read()
    for needle in (manifest.dataset_hash, result.model_sha256, "## Intended use", "## Limitations",
                   "element Li", "config rattled", "models:/tiny-licl@production", "hidden_irreps"):
        assert needle in card
    model_art = client.download_artifacts(run.info.run_id, "model/tiny-licl.model", str(tmp_path / "dl"))
    assert sha256_file(model_art) == result.model_sha256

    # the registry version points back at the training run and carries the hash
    version = client.get_model_version("tiny-licl", "1")
    assert version.run_id == result.mlflow_run_id
    assert version.tags["ionscreen.sha256"] == result.model_sha256
    assert version.tags["ionscreen.dataset_hash"] == manifest.dataset_hash


def test_failed_training_is_reported_and_leaves_no_global_state(dataset, settings, tmp_path):
    """mace-torch failing inside its run: a TrainingFailed naming it, a FAILED MLflow run, the process as before."""
    import logging

    import torch
    from mlflow import MlflowClient

    from training.train import TrainingFailed

    _, ds_dir = dataset
    root = logging.getLogger()
    handlers, level, dtype = list(root.handlers), root.level, torch.get_default_dtype()
    # mace-torch asserts that all hidden channels have one multiplicity; this reaches its run() and fails there
    cfg = TrainConfig(architecture=TINY, max_num_epochs=1, device="cpu",
                      extra_mace_args={"hidden_irreps": "16x0e+8x1o"})
    with pytest.raises(TrainingFailed, match="mace-torch training failed"):
        train(ds_dir, settings, name="broken", config=cfg, out_dir=tmp_path / "broken")
    assert root.handlers == handlers and root.level == level and torch.get_default_dtype() == dtype
    client = MlflowClient(settings.mlflow_tracking_uri)
    exp = client.get_experiment_by_name("ionscreen-training")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FAILED" and run.data.params["mace.hidden_irreps"] == "16x0e+8x1o"
