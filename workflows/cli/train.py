"""``ionscreen train`` (MACE training / fine-tuning with mace-torch, tracked in MLflow) and
``ionscreen models compare`` (two models' errors on a dataset split, per element and per config type).

Thin wrappers over :func:`training.train.train` and :func:`training.evaluate.compare_models`; heavy
imports happen inside the commands (wired into the main CLI by :mod:`workflows.cli`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from mlip.errors import InputError
from workflows.cli.options import JsonFlag

app = typer.Typer(help="Train MACE potentials and compare them.", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)
models_app = typer.Typer(help="Compare models.", no_args_is_help=True)
app.add_typer(models_app, name="models")



# Choices as literals (typer lists them in --help); they mirror training.train's enums, which are not imported
# here so that `--help` stays instant.
Mode = Literal["scratch", "naive", "multihead"]
LossName = Literal["auto", "weighted", "stress", "universal", "huber", "forces_only"]
Dtype = Literal["float32", "float64"]
SplitName = Literal["train", "valid", "test"]


def parse_e0s(text: str):
    """'average' | 'foundation' | 'estimated' | 'Li=-1.9,Cl=-0.7' (eV per element)."""
    text = text.strip()
    if "=" not in text:
        return text
    out = {}
    for part in text.split(","):
        if not part.strip():
            continue
        sym, _, value = part.partition("=")
        try:
            out[sym.strip()] = float(value)
        except ValueError as err:
            raise InputError(f"--e0s: {part.strip()!r} is not ELEMENT=ENERGY_eV") from err
    return out


def parse_mace_args(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not key.strip():
            raise InputError(f"--mace-arg {item!r}: use FLAG=VALUE, e.g. num_workers=2 (FLAG= for a switch)")
        out[key.strip().lstrip("-")] = value.strip() if sep else ""
    return out


def _fmt(est, digits: int = 1) -> str:
    return "-" if est is None else f"{est.value:.{digits}f}"


def _train_summary(result) -> str:
    lines = [
        f"trained {result.name} ({result.mode.value}) in {result.wall_time_s:.0f} s, {result.epochs_run} epoch(s)",
        f"  model       {result.model_path}",
        f"  sha256      {result.model_sha256} (trusted)",
        f"  model card  {result.model_card_path}",
        f"  MLflow run  {result.mlflow_run_id} ({result.mlflow_tracking_uri})",
    ]
    if result.resumed_from_epochs:
        lines.append(f"  resumed     from the checkpoint of epoch {', '.join(map(str, result.resumed_from_epochs))}")
    if result.registered:
        lines.append(f"  registered  {result.registered}" + (f" = {result.registered_alias}" if result.registered_alias else ""))
    if result.test is not None:
        t = result.test.overall
        lines.append(f"  test ({result.test.n_frames} frames): energy MAE {_fmt(t.energy_mae_meV_atom, 2)} meV/atom, "
                     f"RMSE {_fmt(t.energy_rmse_meV_atom, 2)}; force MAE {_fmt(t.force_mae_meV_A)} meV/Å, "
                     f"RMSE {_fmt(t.force_rmse_meV_A)}"
                     + (f"; stress MAE {_fmt(t.stress_mae_meV_A3, 2)} meV/Å³" if t.stress_mae_meV_A3 else ""))
    if result.flags:
        lines.append(f"  flags       {', '.join(result.flags)}")
    return "\n".join(lines)


def train(
    dataset: Annotated[Path, typer.Argument(help="Dataset directory (from `ionscreen data import`).")],
    name: Annotated[str, typer.Option("--name", "-n", help="Model name (file name and MLflow run name).")],
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML training config; flags below override it.")] = None,
    foundation: Annotated[Optional[str], typer.Option("--foundation", help="Fine-tune this model (path, mace-mp:NAME, models:/..., trusted).")] = None,
    mode: Annotated[Optional[Mode], typer.Option("--mode", help="scratch, naive or multihead (default from --foundation/--replay-file).")] = None,
    replay_file: Annotated[Optional[Path], typer.Option("--replay-file", help="Labelled extxyz replay data: multihead fine-tuning.")] = None,
    pseudolabel_replay: Annotated[Optional[bool], typer.Option("--pseudolabel-replay/--no-pseudolabel-replay", help="Relabel replay data with the foundation model.")] = None,
    hidden_irreps: Annotated[Optional[str], typer.Option("--hidden-irreps", help="e.g. 32x0e or 32x0e+32x1o (scratch).")] = None,
    r_max_A: Annotated[Optional[float], typer.Option("--r-max-A", help="Cutoff radius, Å (scratch).")] = None,
    num_interactions: Annotated[Optional[int], typer.Option("--num-interactions", help="Message-passing layers (scratch).")] = None,
    max_ell: Annotated[Optional[int], typer.Option("--max-ell", help="Highest spherical harmonic (scratch).")] = None,
    correlation: Annotated[Optional[int], typer.Option("--correlation", help="Correlation order (scratch).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Maximum number of epochs.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Learning rate.")] = None,
    energy_weight: Annotated[Optional[float], typer.Option("--energy-weight")] = None,
    forces_weight: Annotated[Optional[float], typer.Option("--forces-weight")] = None,
    stress_weight: Annotated[Optional[float], typer.Option("--stress-weight")] = None,
    loss: Annotated[Optional[LossName], typer.Option("--loss", help="auto: stress if every training frame has one.")] = None,
    e0s: Annotated[Optional[str], typer.Option("--e0s", help="average (least squares), foundation, estimated, or Li=-1.9,Cl=-0.7 (eV).")] = None,
    stage_two: Annotated[Optional[bool], typer.Option("--stage-two/--no-stage-two", help="mace's stage two (SWA) at the end.")] = None,
    start_stage_two: Annotated[Optional[int], typer.Option("--start-stage-two", help="Epoch at which stage two starts.")] = None,
    ema: Annotated[Optional[bool], typer.Option("--ema/--no-ema", help="Exponential moving average of the weights.")] = None,
    patience: Annotated[Optional[int], typer.Option("--patience", help="Epochs without improvement before stopping.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="auto, cpu or cuda.")] = None,
    dtype: Annotated[Optional[Dtype], typer.Option("--dtype", help="Training precision.")] = None,
    mace_arg: Annotated[Optional[list[str]], typer.Option("--mace-arg", help="Extra mace-torch flag FLAG=VALUE (repeatable).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Output directory (default $IONSCREEN_HOME/training/NAME/TIME); the same command with the same --out resumes an unfinished run.")] = None,
    experiment: Annotated[str, typer.Option("--experiment", help="MLflow experiment.")] = "ionscreen-training",
    register: Annotated[Optional[str], typer.Option("--register", help="Register the model under this name.")] = None,
    alias: Annotated[Optional[str], typer.Option("--alias", help="Point models:/NAME@ALIAS at the new version, e.g. production.")] = None,
    intended_use: Annotated[Optional[str], typer.Option("--intended-use", help="Intended use, for the model card.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Train a MACE potential (from scratch or by fine-tuning) with mace-torch; one MLflow run with model card."""
    from mlip.config import load_settings
    from training.train import TrainConfig, load_train_config
    from training.train import train as run_training

    cfg = load_train_config(config) if config else TrainConfig()
    arch = {k: v for k, v in {"hidden_irreps": hidden_irreps, "r_max_A": r_max_A, "num_interactions": num_interactions,
                              "max_ell": max_ell, "correlation": correlation}.items() if v is not None}
    top = {
        "pseudolabel_replay": pseudolabel_replay, "max_num_epochs": epochs, "batch_size": batch_size, "lr": lr,
        "energy_weight": energy_weight, "forces_weight": forces_weight, "stress_weight": stress_weight,
        "loss": loss, "e0s": parse_e0s(e0s) if e0s is not None else None,
        "stage_two": stage_two, "start_stage_two": start_stage_two, "ema": ema, "patience": patience, "seed": seed,
        "device": device, "default_dtype": dtype, "intended_use": intended_use,
    }
    data = cfg.model_dump(exclude_unset=True)  # what is unset keeps mace-torch's/ionscreen's mode defaults
    data["architecture"] = {**data.get("architecture", {}), **arch}
    data.update({k: v for k, v in top.items() if v is not None})
    if mace_arg:
        data["extra_mace_args"] = {**data.get("extra_mace_args", {}), **parse_mace_args(mace_arg)}
    try:
        cfg = TrainConfig.model_validate(data)
    except ValueError as err:
        raise InputError(f"invalid training option: {err}") from err
    result = run_training(dataset, load_settings(), name=name, config=cfg, foundation=foundation,
                          mode=mode, replay_file=replay_file, out_dir=out,
                          experiment=experiment, register=register, alias=alias)
    typer.echo(result.model_dump_json(indent=2) if as_json else _train_summary(result))


def comparison_table(report) -> str:
    """The comparison as aligned text: one row per group, A and B side by side for each error."""
    cols = [("E MAE meV/atom", "energy_mae_meV_atom", 2), ("E RMSE meV/atom", "energy_rmse_meV_atom", 2),
            ("F MAE meV/Å", "force_mae_meV_A", 1), ("F RMSE meV/Å", "force_rmse_meV_A", 1)]
    head1 = f"{'group':<22} {'frames':>6} {'atoms':>6}" + "".join(f" | {c[0]:^19}" for c in cols)
    head2 = f"{'':<22} {'':>6} {'':>6}" + "".join(f" | {'A':>9} {'B':>9}" for _ in cols)
    lines = [
        f"A = {report.model_a} (sha256 {report.model_a_sha256[:12]})",
        f"B = {report.model_b} (sha256 {report.model_b_sha256[:12]})",
        f"{report.split} split of {report.dataset_dir} (hash {report.dataset_hash[:12]}, {report.n_frames} frames)",
        "",
        head1, head2, "-" * len(head1),
    ]
    for row in report.rows:
        label = {"overall": "all", "element": f"element {row.group}", "config_type": f"config {row.group}"}[row.kind]
        cells = "".join(f" | {_fmt(getattr(row.a, key), d):>9} {_fmt(getattr(row.b, key), d):>9}" for _, key, d in cols)
        lines.append(f"{label[:22]:<22} {row.a.n_frames:>6} {row.a.n_atoms:>6}{cells}")
    flags = sorted({f for e in report.evaluations for f in e.flags})
    if flags:
        lines.append(f"\nflags: {', '.join(flags)}")
    lines.append("element rows: force errors on that element's atoms; energies are per frame, so not per element.")
    return "\n".join(lines)


def models_compare(
    ref_a: Annotated[str, typer.Argument(help="First model reference (A).")],
    ref_b: Annotated[str, typer.Argument(help="Second model reference (B).")],
    dataset: Annotated[Path, typer.Option("--dataset", help="Dataset directory.")],
    split: Annotated[SplitName, typer.Option("--split", help="Which split to evaluate on.")] = "test",
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or auto.")] = "cpu",
    dtype: Annotated[Dtype, typer.Option("--dtype", help="Evaluation precision.")] = "float64",
    as_json: JsonFlag = False,
) -> None:
    """Errors of two models on a dataset split: energy (meV/atom) and forces (meV/Å), per element and config type."""
    from mlip.calculators import resolve_device
    from mlip.config import load_settings
    from training.evaluate import compare_models

    report = compare_models(ref_a, ref_b, dataset, split=split, settings=load_settings(),
                            device=resolve_device(device), dtype=dtype)
    typer.echo(report.model_dump_json(indent=2) if as_json else comparison_table(report))


app.command("train")(train)
models_app.command("compare")(models_compare)

