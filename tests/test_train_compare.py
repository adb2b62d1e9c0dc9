"""``models compare``: two models on one split, rows per element and per config type, numbers checked
against an independent frame-by-frame computation with MACE's own ASE calculator."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from mlip.errors import ModelDomainError
from training.evaluate import compare_models
from training.testing import make_pair_dataset


@pytest.fixture
def dataset(tmp_path):
    make_pair_dataset(tmp_path / "licl", 30, seed=1)
    return tmp_path / "licl"


@pytest.fixture
def models(tmp_path, settings):
    """A tiny Li/Cl model, a copy with one weight perturbed, both trusted."""
    import torch

    from mlip.loader import trust
    from mlip.testing import build_mace, save_model

    model = build_mace([3, 17], seed=7, r_max=4.0)
    a = save_model(model, tmp_path / "a.model")
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if n.startswith("readouts.")).mul_(1.5)
    b = save_model(model, tmp_path / "b.model")
    trust(a, settings)
    trust(b, settings)
    return a, b


def _independent(ref, frames, settings):
    """Errors from MACE's calculator and plain numpy: overall, per element and per config type."""
    from mlip.loader import load_model

    calc = load_model(ref, settings).calculator(task="single_point", device="cpu")
    e_err, df_by_z, df_all, ct_e = [], {}, [], {}
    for a in frames:
        b = a.copy()
        b.calc = calc
        err = (b.get_potential_energy() - a.info["REF_energy"]) / len(a) * 1000
        df = (b.get_forces() - a.arrays["REF_forces"]) * 1000
        e_err.append(err)
        df_all.append(df.reshape(-1))
        for z in set(a.numbers.tolist()):
            df_by_z.setdefault(z, []).append(df[a.numbers == z].reshape(-1))
        ct_e.setdefault(a.info["config_type"], []).append(err)
    e_err = np.array(e_err)
    df_all = np.concatenate(df_all)
    return {
        "e_mae": np.mean(np.abs(e_err)), "e_rmse": np.sqrt(np.mean(e_err ** 2)),
        "f_mae": np.mean(np.abs(df_all)), "f_rmse": np.sqrt(np.mean(df_all ** 2)),
        "f_mae_Li": np.mean(np.abs(np.concatenate(df_by_z[3]))), "f_rmse_Cl": np.sqrt(np.mean(np.concatenate(df_by_z[17]) ** 2)),
        "e_mae_ct": {k: np.mean(np.abs(v)) for k, v in ct_e.items()},
    }


def test_compare_numbers_and_rows(dataset, models, settings):
    from training.data import load_dataset

    a, b = models
    frames = load_dataset(dataset).split("test")
    same = compare_models(str(a), str(a), dataset, split="test", settings=settings)
    kinds = [(r.kind, r.group) for r in same.rows]
    assert kinds[0] == ("overall", "all")
    assert {g for k, g in kinds if k == "element"} == {"Li", "Cl"}
    assert {g for k, g in kinds if k == "config_type"} == {str(f.info["config_type"]) for f in frames}
    for row in same.rows:  # a model compared with itself: identical errors, row by row
        assert row.a == row.b
    ind = _independent(a, frames, settings)
    overall = same.rows[0].a
    assert overall.n_frames == len(frames) == same.n_frames
    assert overall.energy_mae_meV_atom.value == pytest.approx(ind["e_mae"], rel=1e-6)
    assert overall.energy_rmse_meV_atom.value == pytest.approx(ind["e_rmse"], rel=1e-6)
    assert overall.force_mae_meV_A.value == pytest.approx(ind["f_mae"], rel=1e-6)
    assert overall.force_rmse_meV_A.value == pytest.approx(ind["f_rmse"], rel=1e-6)
    rows = {(r.kind, r.group): r.a for r in same.rows}
    assert rows[("element", "Li")].force_mae_meV_A.value == pytest.approx(ind["f_mae_Li"], rel=1e-6)
    assert rows[("element", "Cl")].force_rmse_meV_A.value == pytest.approx(ind["f_rmse_Cl"], rel=1e-6)
    for ct, value in ind["e_mae_ct"].items():
        assert rows[("config_type", ct)].energy_mae_meV_atom.value == pytest.approx(value, rel=1e-6)

    diff = compare_models(str(a), str(b), dataset, split="test", settings=settings)
    assert diff.model_a_sha256 != diff.model_b_sha256
    assert diff.rows[0].a == same.rows[0].a  # A is evaluated the same way in both comparisons
    assert diff.rows[0].b.force_mae_meV_A.value != pytest.approx(diff.rows[0].a.force_mae_meV_A.value, rel=1e-3)
    ind_b = _independent(b, frames, settings)
    assert diff.rows[0].b.force_mae_meV_A.value == pytest.approx(ind_b["f_mae"], rel=1e-6)


def test_compare_refuses_uncovered_elements(dataset, models, tmp_path, settings):
    from mlip.loader import trust
    from mlip.testing import build_mace, save_model

    li_only = save_model(build_mace([3, 16], seed=2), tmp_path / "lis.model")
    trust(li_only, settings)
    with pytest.raises(ModelDomainError, match="Cl"):
        compare_models(str(models[0]), str(li_only), dataset, split="test", settings=settings)


def test_compare_cli_table_and_json(dataset, models, settings):
    from workflows.cli.train import app

    a, b = models
    runner = CliRunner()
    res = runner.invoke(app, ["models", "compare", str(a), str(b), "--dataset", str(dataset)])  # test split
    assert res.exit_code == 0, res.output
    for needle in ("element Li", "element Cl", "config rattled", "config strained", "E MAE meV/atom", "F RMSE meV/Å"):
        assert needle in res.output
    res = runner.invoke(app, ["models", "compare", str(a), str(b), "--dataset", str(dataset), "--split", "valid", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["split"] == "valid" and doc["rows"][0]["kind"] == "overall"
    assert doc["rows"][0]["a"]["force_mae_meV_A"]["value"] != doc["rows"][0]["b"]["force_mae_meV_A"]["value"]
