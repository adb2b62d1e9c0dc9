"""``ionscreen train`` on the command line: YAML config overridden by flags, JSON summary, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from training.testing import make_pair_dataset

CONFIG = """
architecture:
  hidden_irreps: 8x0e
  r_max_A: 4.0
  max_ell: 1
  correlation: 2
  num_radial_basis: 6
  mlp_irreps: 8x0e
  radial_mlp: "[16, 16]"
max_num_epochs: 5
batch_size: 4
seed: 3
device: cpu
e0s: {Li: -2.0, Cl: -1.0}
intended_use: "Testing the ionscreen CLI only."
"""


@pytest.fixture
def dataset(tmp_path):
    make_pair_dataset(tmp_path / "licl", 30, seed=2)
    return tmp_path / "licl"


def test_train_cli_config_flags_and_json(dataset, tmp_path, settings):
    from mlflow import MlflowClient

    from workflows.cli.train import app

    cfg = tmp_path / "train.yaml"
    cfg.write_text(CONFIG)
    res = CliRunner().invoke(app, [
        "train", str(dataset), "--name", "cli-tiny", "--config", str(cfg), "--epochs", "2", "--stage-two",
        "--start-stage-two", "1",
        "--loss", "weighted", "--mace-arg", "num_workers=0", "--out", str(tmp_path / "out"),
        "--register", "cli-tiny", "--alias", "staging", "--json",
    ])
    assert res.exit_code == 0, f"{res.output}\n{res.exception!r}"
    doc = json.loads(res.stdout)  # stdout is JSON only (mace's and MLflow's chatter go elsewhere)
    assert doc["epochs_run"] == 2  # the flag beat the YAML's 5
    assert doc["e0s_eV"] == {"Li": -2.0, "Cl": -1.0}  # explicit E0s from the YAML
    assert doc["registered_alias"] == "models:/cli-tiny@staging"
    # with stage two, the model used is mace's stage-two file; the stage-one file is kept as a variant
    assert doc["model_path"].endswith("cli-tiny_stagetwo.model")
    assert {"model", "stagetwo", "compiled"} <= set(doc["model_files"])
    params = MlflowClient(settings.mlflow_tracking_uri).get_run(doc["mlflow_run_id"]).data.params
    assert params["mace.loss"] == "weighted" and params["mace.num_workers"] == "0"
    assert params["mace.E0s"] == "{3: -2.0, 17: -1.0}" and params["e0s.method"] == "given explicitly"
    assert params["mace.stage_two"] == "True" and params["mace.start_stage_two"] == "1"
    card = (tmp_path / "out" / "model_card.md").read_text()
    assert "Testing the ionscreen CLI only." in card


def test_train_cli_errors_exit_nonzero(dataset, tmp_path):
    env = {**os.environ}
    proc = subprocess.run(
        [sys.executable, "-m", "workflows.cli", "train", str(dataset), "--name", "x", "--mode", "naive"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 2 and "needs a foundation model" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "workflows.cli", "train", str(dataset), "--name", "x", "--e0s", "Li=abc"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 2 and "Li=abc" in proc.stderr
