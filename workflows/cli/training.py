"""CLI commands for DFT data: ``ionscreen data import|show|export`` and ``ionscreen label`` (CP2K or a teacher).

Wire into the main app with::

    from workflows.cli.training import data_app, label_command
    app.add_typer(data_app, name="data")
    app.command("label")(label_command)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from mlip.errors import InputError, IonscreenError
from workflows.cli.options import DeviceOpt, JsonFlag

data_app = typer.Typer(help="Import DFT data into validated, split datasets.", no_args_is_help=True)
app = typer.Typer(help="DFT data and labelling.", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)
app.add_typer(data_app, name="data")



# Choices as literals (typer lists them in --help); they mirror training.data / training.label, which are not
# imported here so that `--help` stays instant.
FormatName = Literal["vasprun", "outcar", "extxyz", "ase-db", "cp2k-md", "label-dir"]
EnergyName = Literal["free", "sigma0"]
BasisName = Literal["SZV", "DZVP"]
ScfName = Literal["smear", "ot"]


def _fail(err: Exception) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(1)


def _print_summary(manifest) -> None:
    typer.echo(f"dataset hash   {manifest.dataset_hash}")
    typer.echo(f"frames         {manifest.n_frames} ({manifest.n_atoms} atoms)")
    typer.echo("per element    " + "  ".join(
        f"{el}: {n} atoms/{manifest.element_frame_counts[el]} frames" for el, n in manifest.element_atom_counts.items()))
    typer.echo("config types   " + "  ".join(f"{k}: {v}" for k, v in manifest.config_type_counts.items()))
    typer.echo("labelled by    " + "  ".join(f"{k}: {v}" for k, v in manifest.level_of_theory_counts.items()))
    s = manifest.split
    typer.echo(f"splits         train {manifest.split_counts['train']}  valid {manifest.split_counts['valid']}  "
               f"test {manifest.split_counts['test']}  (fractions {s.train}/{s.valid}/{s.test}, seed {s.seed}, "
               f"{'grouped by ' + s.group_by if s.group_by else 'by structure hash'})")


@data_app.command("import")
def data_import(
    files: Annotated[list[Path], typer.Argument(help="vasprun.xml, OUTCAR, *.xyz/*.extxyz, *-pos-1.xyz (CP2K MD), *.db, or an `ionscreen label` --out directory")],
    dataset: Annotated[Path, typer.Option("--dataset", help="Dataset directory (created if absent).")],
    config_type: Annotated[Optional[str], typer.Option("--config-type", help="config_type for every frame "
                                                       "(default: the frame's own, else 'Default').")] = None,
    fmt: Annotated[Optional[FormatName], typer.Option("--format", help="Force a format (default: from the name).")] = None,
    energy: Annotated[EnergyName, typer.Option("--energy", help="VASP energy: free (force-consistent) or sigma0.")] = "free",
    energy_key: Annotated[Optional[str], typer.Option(help="extxyz/db info key of the energy (eV).")] = None,
    forces_key: Annotated[Optional[str], typer.Option(help="extxyz/db array key of the forces (eV/Å).")] = None,
    stress_key: Annotated[Optional[str], typer.Option(help="extxyz/db info key of the stress (eV/Å³, ASE sign).")] = None,
    elements: Annotated[Optional[str], typer.Option("--elements", help="Comma-separated allowed elements, e.g. "
                                                    "the foundation model's (others are rejected).")] = None,
    max_force: Annotated[float, typer.Option("--max-force-eV-A", help="Reject larger force components.")] = 50.0,
    max_stress: Annotated[float, typer.Option("--max-stress-eV-A3", help="Reject larger stress components.")] = 1.0,
    max_energy_dev: Annotated[float, typer.Option("--max-energy-deviation-eV-atom",
                                                  help="Reject energies this far from their composition's median.")] = 2.0,
    require_stress: Annotated[bool, typer.Option("--require-stress", help="Reject periodic frames without stress.")] = False,
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="Import the valid frames and report the "
                                               "others (default: any invalid frame stops the import).")] = False,
    allow_incomplete: Annotated[bool, typer.Option("--allow-incomplete", help="Accept truncated VASP output "
                                                   "(frames before the cut).")] = False,
    allow_mixed_levels: Annotated[bool, typer.Option("--allow-mixed-levels", help="Allow frames of more than one "
                                                     "labeller (level of theory) in the dataset.")] = False,
    split_seed: Annotated[Optional[int], typer.Option("--split-seed", help="New datasets only (default 0).")] = None,
    split_by: Annotated[Optional[str], typer.Option("--split-by", help="New datasets only: an info key that keeps "
                                                    "frames together in one split (e.g. host).")] = None,
    split_fractions: Annotated[Optional[str], typer.Option("--split", help="New datasets only: train,valid,test "
                                                           "fractions (default 0.8,0.1,0.1).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Import DFT frames into a dataset: validate, de-duplicate, split, report counts and the dataset hash."""
    from training.data import (
        EnergyKind,
        Format,
        ReadOptions,
        SplitSpec,
        ValidationLimits,
        import_files,
    )

    try:
        split = None
        if split_seed is not None or split_fractions is not None or split_by is not None:
            fr = [float(x) for x in (split_fractions or "0.8,0.1,0.1").split(",")]
            if len(fr) != 3:
                raise typer.BadParameter("--split needs three fractions: train,valid,test")
            split = SplitSpec(seed=split_seed or 0, train=fr[0], valid=fr[1], test=fr[2], group_by=split_by)
        report = import_files(
            files, dataset, config_type=config_type, fmt=Format(fmt) if fmt else None,
            read_options=ReadOptions(energy_kind=EnergyKind(energy), energy_key=energy_key, forces_key=forces_key,
                                     stress_key=stress_key, allow_incomplete=allow_incomplete),
            limits=ValidationLimits(max_force_eV_A=max_force, max_stress_eV_A3=max_stress,
                                    max_energy_deviation_eV_atom=max_energy_dev, require_stress=require_stress,
                                    allowed_elements=tuple(e.strip() for e in elements.split(",")) if elements else None),
            split=split, skip_invalid=skip_invalid, allow_mixed_levels=allow_mixed_levels,
        )
    except (IonscreenError, ValueError) as err:
        _fail(err)
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
        return
    typer.echo(f"read {report.n_read} frames from {len(files)} file(s): {report.n_accepted} accepted, "
               f"{len(report.duplicates)} duplicates removed, {len(report.rejected)} rejected")
    for r in report.rejected:
        typer.echo(f"  rejected {r.source_file}, frame {r.source_frame}: {r.reason}")
    for d in report.duplicates[:10]:
        typer.echo(f"  duplicate {d.source_file}, frame {d.source_frame} (of {d.duplicate_of})")
    if len(report.duplicates) > 10:
        typer.echo(f"  ... {len(report.duplicates) - 10} more duplicates")
    if not report.written:
        typer.echo("nothing new: dataset unchanged")
    elif report.previous_hash:
        typer.echo(f"previous hash  {report.previous_hash}")
    _print_summary(report.manifest)


@data_app.command("show")
def data_show(dataset: Annotated[Path, typer.Argument(help="Dataset directory.")], as_json: JsonFlag = False) -> None:
    """Show a dataset's counts, splits, sources and hash (verifies the frames against the manifest)."""
    from training.data import load_dataset

    try:
        ds = load_dataset(dataset)
    except IonscreenError as err:
        _fail(err)
    if as_json:
        typer.echo(ds.manifest.model_dump_json(indent=2))
        return
    _print_summary(ds.manifest)
    typer.echo("sources")
    for s in ds.manifest.sources:
        typer.echo(f"  {s.file} [{s.format}] {s.n_accepted}/{s.n_frames} accepted, {s.n_duplicates} duplicates, "
                   f"{s.n_rejected} rejected ({s.imported_at})")


@data_app.command("export")
def data_export(
    dataset: Annotated[Path, typer.Argument(help="Dataset directory.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for train.xyz, valid.xyz, test.xyz.")],
) -> None:
    """Write the splits as plain extxyz files for mace-torch (keys REF_energy, REF_forces, REF_stress)."""
    from training.data import load_dataset

    try:
        paths = load_dataset(dataset).write_splits(out)
    except IonscreenError as err:
        _fail(err)
    for k, p in paths.items():
        typer.echo(f"{k:6s} {p}")


#: The options that set CP2K labelling (parameter names); given with --teacher they are an error.
_CP2K_OPTIONS = ("basis", "cutoff_Ry", "rel_cutoff_Ry", "scf", "eps_scf", "max_scf", "outer_max_scf", "smearing_K",
                 "kpoint_min_length_A", "command")


def label_command(
    ctx: typer.Context,
    structures: Annotated[Path, typer.Argument(help="Structures to label (any ASE-readable file, e.g. extxyz).")],
    out: Annotated[Path, typer.Option("--out", help="Output directory (resumable: rerun to continue).")],
    teacher: Annotated[Optional[str], typer.Option(
        "--teacher", help="Label with this MLIP instead of CP2K (e.g. chgnet:0.3.0): distillation data.")] = None,
    device: DeviceOpt = "cpu",
    basis: Annotated[BasisName, typer.Option("--basis", help="MOLOPT-SR-GTH basis.")] = "DZVP",
    cutoff_Ry: Annotated[float, typer.Option("--cutoff-Ry", help="Plane-wave cutoff, Ry.")] = 400.0,
    rel_cutoff_Ry: Annotated[float, typer.Option("--rel-cutoff-Ry", help="Relative cutoff, Ry.")] = 50.0,
    scf: Annotated[ScfName, typer.Option("--scf", help="smear (diagonalisation, robust, needed for k-points) or ot.")] = "smear",
    eps_scf: Annotated[float, typer.Option("--eps-scf", help="SCF convergence threshold.")] = 1e-6,
    max_scf: Annotated[int, typer.Option("--max-scf", help="SCF iterations (inner loop for OT).")] = 100,
    outer_max_scf: Annotated[int, typer.Option("--outer-max-scf", help="Outer SCF loops (OT).")] = 10,
    smearing_K: Annotated[float, typer.Option("--smearing-K", help="Electronic temperature for --scf smear.")] = 300.0,
    kpoint_min_length_A: Annotated[Optional[float], typer.Option(
        "--kpoint-min-length-A", help="k-points: n_i = ceil(L/|a_i|) per cell vector (default: Gamma only).")] = None,
    command: Annotated[str, typer.Option("--command", help="CP2K shell command.")] = "cp2k_shell",
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Try structures that failed before.")] = False,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Label at most this many now.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Label structures with CP2K (PBE, GTH, MOLOPT) or an MLIP teacher: energy, forces, stress; resumable, each
    frame saved on completion, the labeller recorded on every frame."""
    from training.label import (
        Basis,
        CP2KSettings,
        Cp2kLabeller,
        ScfMethod,
        TeacherLabeller,
        read_structures,
        run_labelling,
    )

    try:
        if teacher is not None:
            # by name: typer ships its own copy of click, whose ParameterSource is another enum than click's
            cp2k_only = [p.opts[0] for p in ctx.command.params if p.name in _CP2K_OPTIONS
                         and ctx.get_parameter_source(p.name).name == "COMMANDLINE"]
            if cp2k_only:
                raise InputError(f"{', '.join(cp2k_only)} set CP2K labelling and cannot go with --teacher {teacher}")
        else:
            try:
                settings = CP2KSettings(basis=Basis[basis], cutoff_Ry=cutoff_Ry, rel_cutoff_Ry=rel_cutoff_Ry,
                                        scf=ScfMethod(scf), eps_scf=eps_scf, max_scf=max_scf,
                                        outer_max_scf=outer_max_scf, smearing_temperature_K=smearing_K,
                                        kpoint_min_length_A=kpoint_min_length_A)
            except (KeyError, ValueError) as err:
                raise InputError(f"bad labelling settings: {err}") from err
        frames = read_structures(structures)
        labeller = TeacherLabeller(teacher, device=device) if teacher is not None else Cp2kLabeller(settings, command)
        summary = run_labelling(frames, out, labeller, retry_failed=retry_failed, max_structures=limit,
                                progress=None if as_json else (lambda m: typer.echo(m) or sys.stdout.flush()))
    except IonscreenError as err:
        _fail(err)
    if as_json:
        typer.echo(summary.model_dump_json(indent=2))
        return
    typer.echo(f"labelled now {summary.n_labelled_now}, before {summary.n_already_labelled}, "
               f"failed now {summary.n_failed_now}, failed before {summary.n_failed_before}, "
               f"remaining {summary.n_remaining}")
    if summary.collected_file:
        typer.echo(f"all labelled frames: {summary.collected_file}")


app.command("label")(label_command)
