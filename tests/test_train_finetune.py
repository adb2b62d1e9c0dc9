"""Fine-tuning a tiny "foundation" MACE model made in the test: naive and multihead replay fine-tuning
with mace-torch, element coverage, and the refusals that must come before any training."""

from __future__ import annotations

import numpy as np
import pytest

from mlip.errors import InputError, ModelDomainError, UntrustedModelError
from training.testing import make_pair_dataset, pair_frames
from training.train import TrainConfig, train

FOUNDATION_Z = [3, 11, 16, 17]  # Li, Na, S, Cl


@pytest.fixture(scope="module")
def foundation_file(tmp_path_factory):
    from mlip.testing import build_mace, save_model

    return save_model(build_mace(FOUNDATION_Z, seed=3, r_max=4.0),
                      tmp_path_factory.mktemp("foundation") / "foundation-lnsc.model")


@pytest.fixture
def trusted_foundation(foundation_file, settings):
    from mlip.loader import trust

    return trust(foundation_file, settings)


@pytest.fixture
def dataset(tmp_path):
    make_pair_dataset(tmp_path / "licl", 30, seed=0)
    return tmp_path / "licl"


def _replay_file(path, elements=("Li", "S"), labelled=True):
    """Li/S frames (elements the foundation knows) with REF_* labels from the pair potential."""
    from ase.io import write

    frames = pair_frames(6, seed=11, elements=elements)
    out = []
    for a in frames:
        b = a.copy()
        if labelled:
            b.info["REF_energy"] = a.get_potential_energy()
            b.arrays["REF_forces"] = a.get_forces()
            b.info["REF_stress"] = a.get_stress()
        out.append(b)
    write(path, out, format="extxyz")
    return path


def _cfg(**kw):
    return TrainConfig(max_num_epochs=2, batch_size=4, seed=2, device="cpu", **kw)


def test_naive_finetuning(dataset, trusted_foundation, settings, tmp_path):
    from mlflow import MlflowClient

    from mlip.loader import load_model
    from mlip.trust import sha256_file
    from training.data import load_dataset
    from training.evaluate import predict

    result = train(dataset, settings, name="ft-naive", foundation=str(trusted_foundation.path), config=_cfg(),
                   out_dir=tmp_path / "naive")
    assert result.mode.value == "naive" and result.foundation_sha256 == trusted_foundation.sha256
    tuned = load_model(result.model_path, settings)
    assert tuned.elements == ("Li", "Cl")  # mace keeps the dataset's elements by default
    assert tuned.r_max_A == trusted_foundation.r_max_A == 4.0 and tuned.heads == ("Default",)
    # mace loaded the private copy, and it is the trusted content
    assert sha256_file(tmp_path / "naive" / "data" / "foundation.model") == trusted_foundation.sha256
    # training changed the foundation's predictions on the dataset
    frames = load_dataset(dataset).split("test")
    before = predict(trusted_foundation.module, frames)
    after = predict(tuned.module, frames)
    assert not np.allclose(np.concatenate(before.forces_eV_A), np.concatenate(after.forces_eV_A), atol=1e-6)
    run = MlflowClient(settings.mlflow_tracking_uri).get_run(result.mlflow_run_id)
    assert run.data.params["foundation.sha256"] == trusted_foundation.sha256
    assert run.data.params["mace.multiheads_finetuning"] == "False"
    assert run.data.params["ionscreen.mode"] == "naive"
    # resuming never hands mace-torch (which loads it as code) a private copy that is no longer the trusted file
    copy = tmp_path / "naive" / "data" / "foundation.model"
    (tmp_path / "naive" / "training_result.json").unlink()  # as if killed before the end
    copy.write_bytes(copy.read_bytes() + b"\0")
    with pytest.raises(InputError, match="foundation.model changed since the run started"):
        train(dataset, settings, name="ft-naive", foundation=str(trusted_foundation.path), config=_cfg(),
              out_dir=tmp_path / "naive")

    keep = train(dataset, settings, name="ft-keep", foundation=str(trusted_foundation.path),
                 config=_cfg(keep_foundation_elements=True, e0s="foundation"), out_dir=tmp_path / "keep")
    assert load_model(keep.model_path, settings).elements == ("Li", "Na", "S", "Cl")


def test_multihead_replay_finetuning(dataset, trusted_foundation, settings, tmp_path):
    from mlflow import MlflowClient

    from mlip.loader import load_model

    replay = _replay_file(tmp_path / "replay.xyz")
    result = train(dataset, settings, name="ft-mh", foundation=str(trusted_foundation.path), replay_file=replay,
                   config=_cfg(pseudolabel_replay=True), out_dir=tmp_path / "mh")
    assert result.mode.value == "multihead"
    tuned = load_model(result.model_path, settings)
    assert tuned.heads == ("pt_head", "Default")
    assert set(tuned.elements) == {"Li", "Cl", "S"}  # dataset + replay elements
    assert result.test is not None and result.test.head == "Default"
    client = MlflowClient(settings.mlflow_tracking_uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.data.params["mace.multiheads_finetuning"] == "True"
    assert run.data.params["replay.sha256"]
    # the replay head was trained and validated (mace gives unlabelled replay frames no weight)
    pt_steps = [m.step for m in client.get_metric_history(result.mlflow_run_id, "valid_pt_head_force_mae_meV_A")]
    assert sorted(pt_steps) == [0, 1, 2]
    calc = tuned.calculator(task="single_point", device="cpu")
    atoms = pair_frames(1, seed=4)[0]
    atoms.calc = calc
    assert np.isfinite(atoms.get_potential_energy())


def test_refusals_before_training(dataset, foundation_file, trusted_foundation, settings, tmp_path):
    from mlip.testing import build_mace, save_model

    # an element of the dataset the foundation model lacks: named, with frames, before any output
    no_cl = save_model(build_mace([3, 16], seed=5, r_max=4.0), tmp_path / "no-cl.model")
    from mlip.loader import trust

    trust(no_cl, settings)
    with pytest.raises(ModelDomainError) as err:
        train(dataset, settings, name="bad", foundation=str(no_cl), config=_cfg(), out_dir=tmp_path / "bad")
    msg = str(err.value)
    assert "Cl" in msg and "licl-raw.xyz:" in msg and "lacks" in msg
    assert not (tmp_path / "bad").exists()
    assert not (settings.home / "mlflow.db").exists()  # no MLflow run was started

    # an untrusted foundation file is never unpickled
    untrusted = tmp_path / "copy.model"
    untrusted.write_bytes(foundation_file.read_bytes() + b"\0")
    with pytest.raises(UntrustedModelError):
        train(dataset, settings, name="bad", foundation=str(untrusted), config=_cfg(), out_dir=tmp_path / "bad")

    # replay data: required for multihead, labelled, and inside the foundation's elements
    with pytest.raises(InputError, match="replay"):
        train(dataset, settings, name="bad", foundation=str(trusted_foundation.path), mode="multihead",
              config=_cfg(), out_dir=tmp_path / "bad")
    unlabelled = _replay_file(tmp_path / "unlabelled.xyz", labelled=False)
    with pytest.raises(InputError, match="REF_energy"):
        train(dataset, settings, name="bad", foundation=str(trusted_foundation.path), replay_file=unlabelled,
              config=_cfg(), out_dir=tmp_path / "bad2")
    with pytest.raises(InputError, match="batch size"):
        train(dataset, settings, name="bad", config=TrainConfig(batch_size=500), out_dir=tmp_path / "bad3")
    assert not (settings.home / "mlflow.db").exists()
