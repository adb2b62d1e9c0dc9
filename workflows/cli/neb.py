"""``ionscreen neb``: climbing-image NEB over every distinct hop of a structure, with percolation barriers, or
between two given endpoint structures (``--endpoints INITIAL FINAL``).

Thin wrapper over :func:`screening.neb.neb_for_structure` and :mod:`screening.neb.endpoints`; heavy imports happen
inside the command. Wire it into the main CLI with ``app.command("neb")(workflows.cli.neb.neb)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mlip.errors import InputError

app = typer.Typer(
    name="neb",
    help="Migration barriers by climbing-image NEB.",
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _parse_site(text: str) -> tuple[float, float, float]:
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError as err:
        raise InputError(f"insertion site {text!r} is not three numbers (fractional x,y,z)") from err
    if len(values) != 3:
        raise InputError(f"insertion site {text!r} must have three fractional coordinates, e.g. 0,0.5,0.25")
    return values  # type: ignore[return-value]


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _table(document) -> str:
    header = f"{'hop':>4} {'length_A':>8} {'mult':>4} {'fwd_eV':>7} {'bwd_eV':>7} {'maxF_eV_A':>9} {'steps':>5}  flags"
    lines = [header, "-" * len(header)]
    for hop in document.hops:
        lines.append(
            f"{_fmt(hop.hop_label, 'd'):>4} {_fmt(hop.hop_length_A):>8} {_fmt(hop.multiplicity, 'd'):>4} "
            f"{_fmt(hop.barrier_forward_eV):>7} {_fmt(hop.barrier_backward_eV):>7} "
            f"{_fmt(hop.max_force_eV_A):>9} {hop.steps:>5}  {','.join(hop.flags) or 'ok'}"
        )
    perc = document.percolation
    lines.append("")
    lines.append(
        "percolation barrier (eV): "
        f"1D {_fmt(perc.barrier_1d_eV)}   2D {_fmt(perc.barrier_2d_eV)}   3D {_fmt(perc.barrier_3d_eV)}"
        + (f"   [{', '.join(perc.flags)}]" if perc.flags else "")
    )
    return "\n".join(lines)


#: Options that only mean something for one of the two modes (refused in the other when given on the command line).
_STRUCTURE_ONLY = ("min_length_A", "max_hops", "insertion_site", "mechanism")
_ENDPOINTS_ONLY = ("moving_index", "path", "max_host_displacement_A")


def _given_on_command_line(ctx: typer.Context, names: tuple[str, ...]) -> list[str]:
    # by name: typer ships its own copy of click, whose ParameterSource is another enum than click's
    return [p.opts[0] for p in ctx.command.params if p.name in names
            and ctx.get_parameter_source(p.name) is not None and ctx.get_parameter_source(p.name).name == "COMMANDLINE"]


@app.command("neb")
def neb(
    ctx: typer.Context,
    structure: Annotated[Optional[Path], typer.Argument(
        help="Structure file (CIF, POSCAR, extxyz), ordered: NEB over every distinct hop of --ion.")] = None,
    endpoints: Annotated[Optional[tuple[Path, Path]], typer.Option(
        "--endpoints", metavar="INITIAL FINAL",
        help="Instead of STRUCTURE: NEB of one hop between two endpoint files (same atoms, same order, same cell).")] = None,
    ion: Annotated[Optional[str], typer.Option(
        "--ion", help="Working ion, e.g. Li, Na, Mg (required with STRUCTURE; with --endpoints, checks the moving atom).")] = None,
    model: Annotated[str, typer.Option("--model", help="Model reference (path, mace-mp:NAME, models:/..., bundled:NAME, chgnet:0.3.0, sevennet:7net-0, ase:emt).")] = ...,
    min_length_A: Annotated[float, typer.Option("--min-length-A", help="Every supercell lattice vector >= this, Å.")] = 8.0,
    fmax: Annotated[float, typer.Option("--fmax", help="Band force tolerance, eV/Å.")] = 0.05,
    images: Annotated[int, typer.Option("--images", help="Moving images per band.")] = 5,
    max_steps: Annotated[int, typer.Option("--max-steps", help="Optimizer step budget per band.")] = 500,
    max_hops: Annotated[Optional[int], typer.Option("--max-hops", help="Compute only the N shortest distinct hops.")] = None,
    max_hop_length_A: Annotated[Optional[float], typer.Option(
        "--max-hop-length-A", help="Longest hop to consider, Å (default: percolation-based cutoff; with --endpoints: "
        "the longest displacement accepted, default 10).")] = None,
    insertion_site: Annotated[Optional[list[str]], typer.Option(
        "--insertion-site", help="Empty host: insertion site 'x,y,z' (fractional); repeatable.")] = None,
    mechanism: Annotated[Optional[str], typer.Option(
        "--mechanism", help="vacancy or interstitial (default: vacancy if the ion is present).")] = None,
    moving_index: Annotated[Optional[int], typer.Option(
        "--moving-index", help="With --endpoints: index (0-based) of the hopping atom (default: the atom that moves "
        "the most between the endpoints).")] = None,
    path: Annotated[str, typer.Option(
        "--path", help="With --endpoints: minimum-image (the moving atom takes the shortest periodic image of its "
        "displacement) or as-given (final minus initial as written, e.g. a published band's path).")] = "minimum-image",
    max_host_displacement_A: Annotated[Optional[float], typer.Option(
        "--max-host-displacement-A", help="With --endpoints: how far any other atom may move between the endpoints, "
        "Å (default 1).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    batch_size: Annotated[Optional[int], typer.Option(
        "--batch-size", help="Images per model call (default: measured on the first band, cached); "
        "families without a batched evaluator evaluate one image at a time.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Output directory (default ./neb-<structure name>).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result document as JSON.")] = False,
) -> None:
    """Run climbing-image NEB over every symmetry-distinct hop of ION and print barriers + percolation, or (with
    --endpoints) the NEB of one hop between two given endpoint structures."""
    if (structure is None) == (endpoints is None):
        raise InputError("give either a STRUCTURE (every distinct hop of --ion) or --endpoints INITIAL FINAL (one hop)")
    if endpoints is not None:
        wrong = _given_on_command_line(ctx, _STRUCTURE_ONLY)
        if wrong:
            raise InputError(f"{', '.join(wrong)} only apply to a STRUCTURE, not to --endpoints")
        _neb_endpoints(endpoints, ion=ion, model=model, fmax=fmax, images=images, max_steps=max_steps,
                       max_hop_length_A=max_hop_length_A, moving_index=moving_index, path=path,
                       max_host_displacement_A=max_host_displacement_A, device=device, batch_size=batch_size,
                       out=out, as_json=as_json)
        return
    wrong = _given_on_command_line(ctx, _ENDPOINTS_ONLY)
    if wrong:
        raise InputError(f"{', '.join(wrong)} only apply to --endpoints, not to a STRUCTURE")
    if ion is None:
        raise InputError("--ion is required with a STRUCTURE: the working ion whose hops are computed, e.g. --ion Li")
    _neb_structure(structure, ion=ion, model=model, min_length_A=min_length_A, fmax=fmax, images=images,
                   max_steps=max_steps, max_hops=max_hops, max_hop_length_A=max_hop_length_A,
                   insertion_site=insertion_site, mechanism=mechanism, device=device, batch_size=batch_size,
                   out=out, as_json=as_json)


def _engine(loaded, device: str, settings):
    from mlip.backends import BatchedEvaluator
    from screening.neb.driver import neb_engine_for

    engine = neb_engine_for(loaded, device=device if device != "auto" else settings.device)
    if not isinstance(engine, BatchedEvaluator):
        typer.echo(f"[fallback] family {loaded.family} has no batched evaluator: NEB images are evaluated one at "
                   f"a time by its ASE calculator", err=True)
    return engine


def _neb_parameters(**values):
    from screening.neb import NebParameters

    try:
        return NebParameters(**values)
    except ValueError as err:  # pydantic's ValidationError is a ValueError
        raise InputError(f"invalid NEB option: {err}") from err


def _neb_endpoints(endpoints: tuple[Path, Path], *, ion, model, fmax, images, max_steps, max_hop_length_A,
                   moving_index, path, max_host_displacement_A, device, batch_size, out, as_json) -> None:
    from mlip.config import load_settings
    from mlip.loader import load_model
    from screening.neb import PathConvention
    from screening.neb.endpoints import (
        ENDPOINTS_SUMMARY_FILE,
        MAX_HOP_LENGTH_A,
        MAX_HOST_DISPLACEMENT_A,
        check_endpoint_pair,
        neb_for_endpoint_pair,
        read_endpoint,
    )

    settings = load_settings()
    try:
        path = PathConvention(path.lower())
    except ValueError as err:
        raise InputError(f"--path must be one of {', '.join(p.value for p in PathConvention)}, got {path!r}") from err
    params = _neb_parameters(n_images=images, fmax_eV_A=fmax, max_steps=max_steps, batch_size=batch_size)
    first, second = endpoints
    pair = check_endpoint_pair(
        read_endpoint(first), read_endpoint(second), names=(str(first), str(second)), moving_index=moving_index,
        ion=ion.strip() if ion else None, path=path,
        max_hop_length_A=MAX_HOP_LENGTH_A if max_hop_length_A is None else max_hop_length_A,
        max_host_displacement_A=MAX_HOST_DISPLACEMENT_A if max_host_displacement_A is None else max_host_displacement_A)
    typer.echo(f"[moving atom] {pair.describe_choice()}"
               + ("; --moving-index overrides" if pair.moving_index_chosen else ""), err=True)
    loaded = load_model(model, settings)
    loaded.check_elements(sorted(set(pair.initial.get_chemical_symbols())), what=f"endpoints {first.name}, {second.name}")
    engine = _engine(loaded, device, settings)
    out_dir = out or Path(f"neb-{first.stem}-{second.stem}")
    result = neb_for_endpoint_pair(pair, engine, params, name="band", out_dir=out_dir, home=settings.home)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / ENDPOINTS_SUMMARY_FILE).write_text(result.model_dump_json(indent=2))
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
        return
    typer.echo(f"{first.name} -> {second.name}: atom {result.moving_index} ({result.ion}) hops "
               f"{_fmt(result.hop_length_A, '.2f')} Å, model {loaded.ref} ({loaded.family}, sha256 {loaded.sha256[:12]})")
    header = f"{'fwd_eV':>7} {'bwd_eV':>7} {'maxF_eV_A':>9} {'steps':>5}  flags"
    typer.echo(header + "\n" + "-" * len(header))
    typer.echo(f"{_fmt(result.barrier_forward_eV):>7} {_fmt(result.barrier_backward_eV):>7} "
               f"{_fmt(result.max_force_eV_A):>9} {result.steps:>5}  {','.join(result.flags) or 'ok'}"
               + (f"  ({result.message})" if result.message else ""))
    typer.echo(f"\nfiles: {out_dir}/ ({ENDPOINTS_SUMMARY_FILE}, band.profile.json, band.band.extxyz, band.png)")


def _neb_structure(structure: Path, *, ion, model, min_length_A, fmax, images, max_steps, max_hops, max_hop_length_A,
                   insertion_site, mechanism, device, batch_size, out, as_json) -> None:
    from mlip.config import load_settings
    from mlip.loader import load_model
    from screening.neb import Mechanism, neb_for_structure
    from screening.structio import element_symbols, read_structure

    settings = load_settings()
    struct = read_structure(structure)
    sites = [_parse_site(text) for text in insertion_site] if insertion_site else None
    if mechanism is not None:
        try:
            mechanism = Mechanism(mechanism.lower())
        except ValueError as err:
            raise InputError(f"--mechanism must be one of {', '.join(m.value for m in Mechanism)}") from err
    params = _neb_parameters(n_images=images, fmax_eV_A=fmax, max_steps=max_steps, min_length_A=min_length_A,
                             batch_size=batch_size)
    loaded = load_model(model, settings)
    loaded.check_elements(element_symbols(struct) + [ion.strip()], what=f"structure {structure.name} + {ion}")
    engine = _engine(loaded, device, settings)
    out_dir = out or Path(f"neb-{structure.stem}")

    def progress(i: int, n: int, hop) -> None:
        state = "ok" if hop.converged else ",".join(hop.flags) or "not converged"
        typer.echo(f"[{i + 1}/{n}] hop {hop.hop_label} ({_fmt(hop.hop_length_A, '.2f')} Å): "
                   f"barrier {_fmt(hop.barrier_forward_eV)} eV [{state}]", err=True)

    document = neb_for_structure(struct, ion, engine, params, insertion_sites_frac=sites,
                                 max_hop_length_A=max_hop_length_A, max_hops=max_hops, mechanism=mechanism,
                                 out_dir=out_dir, home=settings.home, progress=progress)
    if as_json:
        typer.echo(document.model_dump_json(indent=2))
        return
    typer.echo(f"{document.formula}: {document.n_distinct_hops} distinct {document.ion} hop(s), "
               f"{document.mechanism} mechanism, model {loaded.ref} ({loaded.family}, sha256 {loaded.sha256[:12]})")
    typer.echo(_table(document))
    typer.echo(f"\nfiles: {out_dir}/ (summary neb_summary.json, per hop .profile.json, .band.extxyz, .png)")
