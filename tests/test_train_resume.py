"""A training run killed mid-way resumes from mace-torch's last checkpoint when its command is repeated with the
same --out: the epochs before the checkpoint are not trained again, the MLflow run is the same one and ends
FINISHED with every epoch's metrics, and a finished, busy or differently configured directory is refused."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from killing import kill_when
from mlip.errors import InputError
from training.testing import make_pair_dataset
from training.train import (LOCK_FILE, TrainConfig, complete_checkpoint, latest_checkpoint_epoch, load_train_config,
                            train)

EPOCHS = 16
TINY = {"architecture": {"hidden_irreps": "8x0e", "r_max_A": 4.0, "max_ell": 1, "correlation": 2,
                         "num_radial_basis": 6, "mlp_irreps": "8x0e", "radial_mlp": "[16, 16]"},
        "max_num_epochs": EPOCHS, "batch_size": 4, "seed": 1, "device": "cpu", "patience": 1000}


def _epochs_trained(results_file) -> list[int]:
    """The epochs with optimiser steps in a mace results file, in order of first appearance."""
    seen = []
    for line in results_file.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("mode") == "opt" and rec["epoch"] not in seen:
            seen.append(rec["epoch"])
    return seen


def _epoch(checkpoint) -> int:
    return int(checkpoint.stem.rsplit("-", 1)[1])


def test_killed_training_resumes_from_its_last_checkpoint(tmp_path, settings):
    from mlflow import MlflowClient

    ds_dir = tmp_path / "licl"
    make_pair_dataset(ds_dir, 36, seed=0, isolated_atoms=True)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "workflows.cli", "train", str(ds_dir), "--name", "tiny", "--config", str(cfg),
           "--out", str(out), "--json"]
    checkpoints = out / "mace" / "checkpoints"
    kill_when(cmd, lambda: (latest_checkpoint_epoch(checkpoints) or 0) >= 4, poll_s=0.02)
    assert 4 <= latest_checkpoint_epoch(checkpoints) < EPOCHS - 1 and not (out / "training_result.json").exists()
    # the kill may have cut the newest checkpoint short (it was polled for as it appeared); resuming must start from
    # the newest complete one, never silently from scratch, so a cut-short one is made certain here
    newest = max((p for p in checkpoints.glob("*_epoch-*.pt") if complete_checkpoint(p)), key=_epoch)
    killed_at = _epoch(newest)
    cut = checkpoints / newest.name.replace(f"_epoch-{killed_at}.pt", f"_epoch-{EPOCHS - 2}.pt")
    cut.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    state = json.loads((out / "train_state.json").read_text())
    client = MlflowClient(settings.mlflow_tracking_uri)
    assert client.get_run(state["mlflow_run_id"]).info.status == "RUNNING"  # SIGKILL: nobody ended it

    # another --epochs is another run: refused, and the directory is left as it was
    with pytest.raises(InputError, match=r"config\.max_num_epochs differs"):
        train(ds_dir, settings, name="tiny", config=load_train_config(cfg).model_copy(update={"max_num_epochs": 9}),
              out_dir=out)
    # a process training there holds the lock: a second one is refused at once
    from mlip.util import file_lock

    with file_lock(out / LOCK_FILE), pytest.raises(InputError, match="another process is training there"):
        train(ds_dir, settings, name="tiny", config=load_train_config(cfg), out_dir=out)

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["resumed_from_epochs"] == [killed_at] and "resumed" in result["flags"]
    assert result["epochs_run"] == EPOCHS and result["mlflow_run_id"] == state["mlflow_run_id"]

    # the resumed segment starts at the checkpoint's epoch (mace trains that one again), never at 0
    results = out / "mace" / "results"
    first = _epochs_trained(next((results / "before-resume-1").glob("*_train.txt")))
    second = _epochs_trained(next(results.glob("*_train.txt")))
    assert first[0] == 0 and first[-1] >= killed_at
    assert second == list(range(killed_at, EPOCHS))
    assert (checkpoints / "unreadable" / cut.name).is_file()  # set aside, not loaded
    assert len(list(checkpoints.glob("*.pt"))) <= 2  # pruned: mace keeps every one with --keep_checkpoints

    # one MLflow run, FINISHED, with every epoch's validation errors (the killed process logged none or some)
    run = client.get_run(state["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["ionscreen.resumed_from_epochs"] == str(killed_at)
    steps = sorted({m.step for m in client.get_metric_history(run.info.run_id, "valid_force_mae_meV_A")})
    assert steps == list(range(EPOCHS + 1))
    assert len(client.search_runs([run.info.experiment_id])) == 1

    # finished: the same request again is refused and changes nothing
    with pytest.raises(InputError, match="the training run there finished"):
        train(ds_dir, settings, name="tiny", config=load_train_config(cfg), out_dir=out)
    assert json.loads((out / "training_result.json").read_text())["model_sha256"] == result["model_sha256"]


def test_a_directory_that_holds_something_else_is_refused(tmp_path, settings):
    ds_dir = tmp_path / "licl"
    make_pair_dataset(ds_dir, 12, seed=0)
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    with pytest.raises(InputError, match="not empty and holds no training run to resume"):
        train(ds_dir, settings, name="tiny", config=TrainConfig.model_validate(TINY), out_dir=out)
    assert [p.name for p in out.iterdir() if p.name != LOCK_FILE] == ["notes.txt"]
