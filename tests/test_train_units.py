"""The pieces of training that need no training run: labels, E0 fit, mace's command line and results
file, the error tables (against errors planted on purpose) and batched prediction (against MACE's own
ASE calculator)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import Atoms

from mlip.errors import InputError
from training.evaluate import Predictions, error_tables, predict
from training.testing import PairMorse, pair_frames
from training.train import (
    FinetuneMode,
    Loss,
    TrainConfig,
    _resolve_mode,
    epoch_metrics,
    fit_e0s,
    mace_arguments,
    merged_epoch_metrics,
    parse_mace_arguments,
    prune_checkpoints,
)


def test_pair_labels_are_exact_derivatives():
    """Forces are minus the energy gradient and stress is dE/dε / V (finite differences)."""
    from ase.build import bulk

    atoms = bulk("LiCl", "rocksalt", a=5.1, cubic=True)
    atoms.rattle(0.1, seed=3)
    atoms.calc = PairMorse()
    forces, stress = atoms.get_forces(), atoms.get_stress(voigt=False)
    h = 1e-5
    for i, k in [(0, 0), (3, 1), (6, 2)]:
        p = atoms.positions.copy()
        energies = []
        for sign in (1, -1):
            q = p.copy()
            q[i, k] += sign * h
            atoms.positions = q
            energies.append(atoms.get_potential_energy())
        atoms.positions = p
        assert forces[i, k] == pytest.approx(-(energies[0] - energies[1]) / (2 * h), abs=1e-7)
    cell = atoms.cell.array.copy()
    for a, b in [(0, 0), (1, 2), (2, 0)]:
        energies = []
        for sign in (1, -1):
            eps = np.eye(3)
            eps[a, b] += sign * h
            atoms.set_cell(cell @ eps, scale_atoms=True)
            energies.append(atoms.get_potential_energy())
        atoms.set_cell(cell, scale_atoms=True)
        assert stress[a, b] == pytest.approx((energies[0] - energies[1]) / (2 * h) / atoms.get_volume(), abs=1e-8)


def test_fit_e0s_recovers_known_reference_energies():
    e0 = {3: -1.9, 17: -0.7}
    frames = []
    for n_li, n_cl in [(4, 4), (3, 4), (4, 3), (2, 4)]:
        a = Atoms(numbers=[3] * n_li + [17] * n_cl)
        a.info["REF_energy"] = n_li * e0[3] + n_cl * e0[17]
        frames.append(a)
    fitted, under = fit_e0s(frames, [3, 17])
    assert not under
    assert fitted[3] == pytest.approx(-1.9, abs=1e-10) and fitted[17] == pytest.approx(-0.7, abs=1e-10)
    _, under = fit_e0s([frames[0], frames[0].copy()], [3, 17])  # one composition: Li and Cl not separable
    assert under


def _line(**kw):
    return json.dumps(kw)


def test_epoch_metrics_from_mace_results_lines():
    lines = [
        _line(mode="eval", epoch=None, head="Default", loss=2.0, mae_e_per_atom=0.1, rmse_f=0.3, mae_f=0.2),
        _line(mode="opt", epoch=0, loss=4.0, time=0.5),
        _line(mode="opt", epoch=0, loss=2.0, time=0.25),
        _line(mode="eval", epoch=0, head="Default", loss=1.0, mae_e_per_atom=0.05, mae_f=0.1, mae_stress=None),
        _line(mode="eval", epoch=0, head="pt_head", loss=0.5, mae_f=0.01),
        _line(mode="opt", epoch=1, loss=1.0, time=0.5),
        '{"mode": "opt", "epo',  # being written
    ]
    running = epoch_metrics(lines, final=False)
    assert sorted(running) == [0, 1]  # epoch 1 (step 2) is still running
    assert running[0] == {"valid_loss": 2.0, "valid_energy_mae_meV_atom": 100.0, "valid_force_rmse_meV_A": 300.0,
                          "valid_force_mae_meV_A": 200.0}
    assert running[1]["train_loss"] == pytest.approx(3.0)
    assert running[1]["epoch_time_s"] == pytest.approx(0.75)
    assert running[1]["valid_energy_mae_meV_atom"] == pytest.approx(50.0)
    assert running[1]["valid_pt_head_force_mae_meV_A"] == pytest.approx(10.0)
    assert "valid_stress_mae_meV_A3" not in running[1]
    final = epoch_metrics(lines, final=True)
    assert final[2] == {"train_loss": 1.0, "epoch_time_s": 0.5}


def _segment(epochs, loss, start=None):
    lines = [_line(mode="eval", epoch=None, head="Default", loss=loss)]
    for e in epochs:
        lines += [_line(mode="opt", epoch=e, loss=loss, time=1.0),
                  _line(mode="eval", epoch=e, head="Default", loss=loss)]
    return lines, start


def test_a_resumed_segment_replaces_the_steps_after_its_restart_epoch():
    # killed after epoch 6 (step 7) with the checkpoint of epoch 4; mace trains epoch 4 again; then once more
    merged = merged_epoch_metrics([_segment(range(0, 7), 3.0), _segment(range(4, 9), 2.0, start=4),
                                   _segment(range(6, 10), 1.0, start=6)])
    assert sorted(merged) == list(range(11))
    assert [merged[s]["valid_loss"] for s in range(11)] == [3.0] * 5 + [2.0] * 2 + [1.0] * 4
    assert merged[10]["train_loss"] == 1.0  # no mean over two segments' losses of one epoch


def test_prune_keeps_the_two_newest_checkpoints_of_each_stage(tmp_path):
    names = [f"m_run-1_epoch-{e}.pt" for e in (1, 2, 10, 3)] + [f"m_run-1_epoch-{e}_swa.pt" for e in (11, 12, 13)]
    for n in names + ["m_run-1.model"]:
        (tmp_path / n).write_bytes(b"x")
    removed = prune_checkpoints(tmp_path)
    assert sorted(p.name for p in removed) == ["m_run-1_epoch-1.pt", "m_run-1_epoch-11_swa.pt", "m_run-1_epoch-2.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "m_run-1.model", "m_run-1_epoch-10.pt", "m_run-1_epoch-12_swa.pt", "m_run-1_epoch-13_swa.pt",
        "m_run-1_epoch-3.pt"]


def test_mace_arguments_parse_with_mace_own_parser(tmp_path):
    splits = {"train": tmp_path / "train.xyz", "valid": tmp_path / "valid.xyz", "test": tmp_path / "test.xyz"}
    cfg = TrainConfig(max_num_epochs=7, stage_two=True, start_stage_two=5, extra_mace_args={"num_workers": "0"})
    cfg.architecture.hidden_irreps = "16x0e+16x1o"
    argv = mace_arguments(cfg, FinetuneMode.SCRATCH, name="m", work_dir=tmp_path / "w", model_dir=tmp_path,
                          splits=splits, e0s="{3: -1.0, 17: -2.0}", loss=Loss.STRESS, device="cpu")
    args = parse_mace_arguments(argv)
    assert args.hidden_irreps == "16x0e+16x1o" and args.r_max == 5.0 and args.max_num_epochs == 7
    assert args.E0s == "{3: -1.0, 17: -2.0}" and args.loss == "stress" and args.energy_key == "REF_energy"
    assert args.swa and args.start_swa == 5 and args.num_workers == 0 and args.foundation_model is None

    ft = mace_arguments(TrainConfig(foundation="x", replay_file="r.xyz", pseudolabel_replay=True),
                        FinetuneMode.MULTIHEAD, name="m", work_dir=tmp_path / "w", model_dir=tmp_path, splits=splits,
                        e0s="foundation", loss=Loss.WEIGHTED, device="cpu", foundation_file=tmp_path / "f.model",
                        replay_file=tmp_path / "r.xyz")
    args = parse_mace_arguments(ft)
    assert args.multiheads_finetuning is True and args.pt_train_file == str(tmp_path / "r.xyz")
    assert args.foundation_model == str(tmp_path / "f.model") and args.pseudolabel_replay is True
    # mace's own multihead overrides, written out so the recorded flags are what ran ...
    assert args.loss == "universal" and args.lr == 1e-4 and args.ema and args.ema_decay == 0.99999
    assert not args.force_mh_ft_lr
    # ... unless the user chose the optimiser settings
    mine = parse_mace_arguments(mace_arguments(
        TrainConfig(foundation="x", replay_file="r.xyz", lr=0.003), FinetuneMode.MULTIHEAD, name="m",
        work_dir=tmp_path, model_dir=tmp_path, splits=splits, e0s="foundation", loss=Loss.WEIGHTED, device="cpu",
        foundation_file=tmp_path / "f.model", replay_file=tmp_path / "r.xyz"))
    assert mine.lr == 0.003 and mine.force_mh_ft_lr and not mine.ema
    naive = parse_mace_arguments(mace_arguments(
        TrainConfig(foundation="x"), FinetuneMode.NAIVE, name="m", work_dir=tmp_path, model_dir=tmp_path,
        splits=splits, e0s="{}", loss=Loss.WEIGHTED, device="cpu", foundation_file=tmp_path / "f.model"))
    assert naive.multiheads_finetuning is False  # mace's default is True: naive must say so

    with pytest.raises(InputError, match="train_file"):
        mace_arguments(TrainConfig(extra_mace_args={"train_file": "x"}), FinetuneMode.SCRATCH, name="m",
                       work_dir=tmp_path, model_dir=tmp_path, splits=splits, e0s="{}", loss=Loss.WEIGHTED, device="cpu")
    with pytest.raises(InputError, match="mace-torch rejected"):
        parse_mace_arguments(argv + ["--no_such_flag", "1"])


def test_mode_rules():
    assert _resolve_mode(TrainConfig()) is FinetuneMode.SCRATCH
    assert _resolve_mode(TrainConfig(foundation="f.model")) is FinetuneMode.NAIVE
    assert _resolve_mode(TrainConfig(foundation="f.model", replay_file="r.xyz")) is FinetuneMode.MULTIHEAD
    with pytest.raises(InputError, match="replay"):
        _resolve_mode(TrainConfig(foundation="f.model", mode="multihead"))
    with pytest.raises(InputError, match="needs a foundation"):
        _resolve_mode(TrainConfig(mode="naive"))
    with pytest.raises(InputError, match="no foundation"):
        _resolve_mode(TrainConfig(mode="scratch", foundation="f.model"))


def test_error_tables_report_planted_errors():
    """Predictions = labels + known offsets: every table entry has a value known in advance."""
    frames = pair_frames(12, seed=5)
    energies = np.array([a.get_potential_energy() for a in frames])
    for a, e in zip(frames, energies):  # the store's key names, as evaluation reads them
        a.info["REF_energy"] = e
        a.arrays["REF_forces"] = a.get_forces().copy()
        a.info["REF_stress"] = a.get_stress().copy()
    n_atoms = np.array([len(a) for a in frames])
    sign = np.where(np.arange(12) % 2 == 0, 1.0, -1.0)
    offset_f = {3: 0.002, 17: -0.004}  # eV/Å on every component of Li / Cl atoms
    pred = Predictions(
        energies_eV=energies + sign * 0.010 * n_atoms,  # ±10 meV/atom
        forces_eV_A=[a.arrays["REF_forces"] + np.vectorize(offset_f.get)(a.numbers)[:, None] for a in frames],
        stresses_eV_A3=np.array([a.info["REF_stress"] + 0.001 for a in frames]),
    )
    overall, per_element, per_config = error_tables(frames, pred)
    assert overall.energy_mae_meV_atom.value == pytest.approx(10.0)
    assert overall.energy_rmse_meV_atom.value == pytest.approx(10.0)
    n_li = sum(int(np.sum(a.numbers == 3)) for a in frames)
    n_cl = sum(int(np.sum(a.numbers == 17)) for a in frames)
    assert overall.force_mae_meV_A.value == pytest.approx((2 * n_li + 4 * n_cl) / (n_li + n_cl))
    assert overall.force_rmse_meV_A.value == pytest.approx(np.sqrt((4 * n_li + 16 * n_cl) / (n_li + n_cl)))
    assert overall.stress_mae_meV_A3.value == pytest.approx(1.0)
    assert per_element["Li"].force_mae_meV_A.value == pytest.approx(2.0)
    assert per_element["Cl"].force_rmse_meV_A.value == pytest.approx(4.0)
    assert per_element["Li"].n_atoms == n_li and per_element["Li"].energy_mae_meV_atom is None
    assert per_element["Li"].stress_mae_meV_A3 is None
    assert set(per_config) == {"rattled", "strained"}
    assert per_config["rattled"].n_frames + per_config["strained"].n_frames == 12
    # the bootstrap interval brackets the estimate
    est = overall.force_mae_meV_A
    assert est.ci95_low <= est.value <= est.ci95_high


def test_batched_prediction_matches_mace_calculator(tiny_model_copy, settings):
    """predict() (several frames per call, stress included) equals MACE's own calculator frame by frame."""
    from mlip.loader import trust

    loaded = trust(tiny_model_copy, settings)
    frames = pair_frames(5, seed=2)
    frames.append(Atoms("LiCl", positions=[[0, 0, 0], [2.3, 0.2, 0.1]]))  # molecule: no stress
    pred = predict(loaded.module, frames, batch_size=3)
    one_by_one = predict(loaded.module, frames, batch_size=1)
    calc = loaded.calculator(task="single_point", device="cpu")
    for i, a in enumerate(frames):
        b = a.copy()
        b.calc = calc
        assert pred.energies_eV[i] == pytest.approx(b.get_potential_energy(), abs=1e-9)
        np.testing.assert_allclose(pred.forces_eV_A[i], b.get_forces(), atol=1e-9)
        np.testing.assert_allclose(one_by_one.forces_eV_A[i], pred.forces_eV_A[i], atol=1e-10)
        if i < 5:
            np.testing.assert_allclose(pred.stresses_eV_A3[i], b.get_stress(), atol=1e-9)
    assert np.all(np.isnan(pred.stresses_eV_A3[5]))


def test_shipped_demo_config_is_valid(tmp_path):
    """The config the bundled model is trained with parses, and mace-torch accepts what it turns into."""
    from pathlib import Path

    from training.train import load_train_config

    cfg = load_train_config(Path(__file__).resolve().parent.parent / "training" / "configs" / "lipscl-demo.yaml")
    splits = {"train": tmp_path / "train.xyz", "valid": tmp_path / "valid.xyz"}
    args = parse_mace_arguments(mace_arguments(cfg, FinetuneMode.SCRATCH, name="lipscl-demo", work_dir=tmp_path,
                                               model_dir=tmp_path, splits=splits, e0s="{}", loss=Loss.STRESS,
                                               device="cpu"))
    assert args.hidden_irreps == "32x0e" and args.r_max == 5.0 and args.swa and args.start_swa < args.max_num_epochs


def test_e0s_choice_isolated_auto_average_explicit():
    from training.testing import isolated_atom_frames
    from training.train import _e0s_argument, isolated_e0s

    frames = pair_frames(8, seed=1)
    for a in frames:
        a.info["REF_energy"] = a.get_potential_energy()
    atoms = isolated_atom_frames(["Li", "Cl"])
    for a in atoms:
        a.info["REF_energy"] = a.get_potential_energy()
    iso = isolated_e0s(atoms)
    assert iso == {3: pytest.approx(-1.9), 17: pytest.approx(-0.7)}
    arg, e0, method, _ = _e0s_argument(TrainConfig(), frames, [3, 17], iso)  # auto: isolated atoms win
    assert e0 == {"Li": pytest.approx(-1.9), "Cl": pytest.approx(-0.7)} and "isolated" in method
    assert arg.startswith("{3: -1.9")
    _, e0, method, _ = _e0s_argument(TrainConfig(), frames, [3, 17], {3: -1.9})  # Cl missing: least squares
    assert "least squares" in method and e0["Cl"] != pytest.approx(-0.7)
    with pytest.raises(InputError, match="Cl"):
        _e0s_argument(TrainConfig(e0s="isolated"), frames, [3, 17], {3: -1.9})
    with pytest.raises(InputError, match="Cl"):
        _e0s_argument(TrainConfig(e0s={"Li": -1.0}), frames, [3, 17], {})
    arg, e0, _, _ = _e0s_argument(TrainConfig(e0s={"Li": -1.0, "Cl": -2.0}), frames, [3, 17], iso)
    assert arg == "{3: -1.0, 17: -2.0}"
