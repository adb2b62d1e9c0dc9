"""``ionscreen validate``: a model's track record against experiment and DFT (thin layer over ``workflows.validate``)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from workflows.cli.options import DeviceOpt, JsonFlag


def validate(
    models: Annotated[list[str], typer.Argument(
        help="Model references, e.g. bundled:lipscl-dzvp-fast chgnet:0.3.0 sevennet:7net-0 models:/NAME@ALIAS; several are compared.")],
    sets: Annotated[Optional[list[str]], typer.Option(
        "--set", "-s", help="Validation set: conductivity, barriers, frames or dynamics (repeat for several; default conductivity).")] = None,
    dataset: Annotated[Optional[Path], typer.Option(
        "--dataset", help="Labelled dataset directory (`ionscreen data import` output) for the frames set.")] = None,
    split: Annotated[Optional[str], typer.Option("--split", help="Dataset split for the frames set (default test).")] = None,
    trajectory: Annotated[Optional[list[Path]], typer.Option(
        "--trajectory", help="A reference AIMD trajectory for the dynamics set, beside the bundled LGPS one: extended "
        "XYZ with time_fs and temperature_K in each frame's info, or a vasprun.xml; every atom in every frame. "
        "Repeat for several.")] = None,
    ion: Annotated[Optional[str], typer.Option(
        "--ion", help="Mobile ion of the --trajectory files (default: the one working ion each holds).")] = None,
    protocol: Annotated[Optional[str], typer.Option(
        "--protocol", help="Transport protocol of the conductivity set: a preset (default validation-cpu; standard for GPUs) or a YAML file of protocol fields.")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Only the first N entries of each set.")] = None,
    entries: Annotated[Optional[list[str]], typer.Option(
        "--entries", "-e", help="Only the entries with these keys (comma-separated or repeated, e.g. obelix:122 "
        "as the report lists them), run in the order given; keys are checked before anything runs.")] = None,
    full: Annotated[bool, typer.Option("--full", help="Every entry of each set (GPU work), not the CPU subset.")] = False,
    device: DeviceOpt = "auto",
    workers: Annotated[str, typer.Option(
        "--workers", "-j", help="Entries run at once, each in its own process with its share of the CPU threads; "
        "auto: one per CPU core on a CPU, one on a GPU (small NEB and MD entries use two processes better than two "
        "threads).")] = "auto",
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Output directory (journals, plots, report); default $IONSCREEN_HOME/validation.")] = None,
    merge_journal: Annotated[Optional[list[Path]], typer.Option(
        "--merge-journal", help="A journal.jsonl of another run of the same models and sets (another machine, or a "
        "copy kept between sessions): its entries count as finished here. Lines of another model, set or protocol "
        "are never merged; a file with none for this run is refused. Repeat for several.")] = None,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Run entries the journal holds as failed again (from a clean work directory).")] = False,
    no_mlflow: Annotated[bool, typer.Option("--no-mlflow", help="Do not log the run to MLflow.")] = False,
    report_only: Annotated[bool, typer.Option(
        "--report-only", help="Run nothing: write the report of what the journals (and --merge-journal files) hold "
        "so far, naming the entries still missing, e.g. while a run that spans sessions goes on. No MLflow run, "
        "model card or model page is written from an interim report.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Validate models on named sets; re-running the same command resumes (finished entries are skipped)."""
    from mlip.config import load_settings
    from workflows.validate import format_figure, run_validation

    def progress(stage: str, info: dict) -> None:
        if as_json:
            return
        if stage == "done":
            note = f": {info['error']}" if info.get("error") else ""
            typer.echo(f"[{info['model']} · {info['set']} {info['index'] + 1}/{info['n']}] {info['key']} "
                       f"{info['status']} ({info['wall_s']:.0f} s){note}", err=True)
        elif stage == "merged":
            typer.echo(f"[{info['model']} · {info['set']}] {info['key']} {info['status']} (merged from {info['file']})",
                       err=True)

    from mlip.errors import InputError

    if (trajectory or ion) and "dynamics" not in (sets or []):
        raise InputError("--trajectory and --ion are options of the dynamics set; add --set dynamics")
    if ion and not trajectory:
        raise InputError("--ion names the mobile ion of --trajectory files; the bundled references state their own")
    options = {"frames": {"dataset": dataset, "split": split}, "conductivity": {"protocol": protocol},
               "dynamics": {"trajectories": trajectory, "ion": ion}}
    result = run_validation(models, sets or ["conductivity"], out_dir=out, limit=limit, full=full, device=device,
                            set_options=options, retry_failed=retry_failed, mlflow=not no_mlflow,
                            settings=load_settings(), progress=progress,
                            command=" ".join(["ionscreen validate", *map(shlex.quote, sys.argv[2:])]),
                            workers=workers, merge_journals=merge_journal or (),
                            entries=[k for item in entries or () for k in item.split(",")], report_only=report_only)
    if as_json:
        typer.echo(json.dumps(json.loads(result.report_json.read_text()), indent=1))
        return
    for model in result.models:
        typer.echo(f"{model.ref} (sha256 {model.sha256[:12]})" + (f", MLflow run {model.mlflow_run_id}"
                                                                   if model.mlflow_run_id else ""))
        for name, run in model.sets.items():
            headline = {k: v for k, v in run.summary.items()
                        if k in ("spearman_rho", "mae_log10_S_cm", "n_ok", "n_bounds", "n_uncovered", "n_failed",
                                 "mae_eV", "energy_mae_meV_atom", "force_mae_meV_A",
                                 "geometric_mean_ratio", "n_consistent", "n_compared")}
            typer.echo(f"  {name}: " + ", ".join(f"{k} {format_figure(v)}" for k, v in headline.items())
                       + (f" (interim: {len(run.records)} of {len(run.records) + len(run.missing)} entries; not "
                          f"finished: {', '.join(run.missing)})" if run.missing else ""))
    for name, pairs in result.agreement.items():
        for pair in pairs:
            typer.echo(f"  {name}: {pair['a']} vs {pair['b']}: Kendall τ-b {format_figure(pair['kendall_tau_b'])}")
    for name, spread in result.spread.items():
        for ref, row in spread.get("per_model", {}).items():
            typer.echo(f"  {name}: spread vs |error| of {ref}: Spearman ρ {format_figure(row['spearman_spread_abs_error'])}"
                       f"; MAE {format_figure(row['mae_narrow_spread'])} (narrow) vs "
                       f"{format_figure(row['mae_wide_spread'])} (wide spread) {spread['unit']}")
    typer.echo(f"report {result.report_md} ({result.wall_s:.0f} s)")
