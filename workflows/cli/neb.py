"""``ionscreen neb``: climbing-image NEB over every distinct hop of a structure, with percolation barriers.

Thin wrapper over :func:`screening.neb.neb_for_structure`; heavy imports happen inside the command.
Wire it into the main CLI with ``app.command("neb")(workflows.cli.neb.neb)``.
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


@app.command("neb")
def neb(
    structure: Annotated[Path, typer.Argument(help="Structure file (CIF, POSCAR, extxyz), ordered.")],
    ion: Annotated[str, typer.Option("--ion", help="Working ion, e.g. Li, Na, Mg.")],
    model: Annotated[str, typer.Option("--model", help="Model reference (path, mace-mp:NAME, models:/..., bundled:NAME, ase:emt).")],
    min_length_A: Annotated[float, typer.Option("--min-length-A", help="Every supercell lattice vector >= this, Å.")] = 8.0,
    fmax: Annotated[float, typer.Option("--fmax", help="Band force tolerance, eV/Å.")] = 0.05,
    images: Annotated[int, typer.Option("--images", help="Moving images per band.")] = 5,
    max_steps: Annotated[int, typer.Option("--max-steps", help="Optimizer step budget per band.")] = 500,
    max_hops: Annotated[Optional[int], typer.Option("--max-hops", help="Compute only the N shortest distinct hops.")] = None,
    max_hop_length_A: Annotated[Optional[float], typer.Option(
        "--max-hop-length-A", help="Longest hop to consider, Å (default: percolation-based cutoff).")] = None,
    insertion_site: Annotated[Optional[list[str]], typer.Option(
        "--insertion-site", help="Empty host: insertion site 'x,y,z' (fractional); repeatable.")] = None,
    mechanism: Annotated[Optional[str], typer.Option(
        "--mechanism", help="vacancy or interstitial (default: vacancy if the ion is present).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    batch_size: Annotated[Optional[int], typer.Option(
        "--batch-size", help="Images per model call (default: measured on the first band, cached); "
        "families without a batched evaluator evaluate one image at a time.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Output directory (default ./neb-<structure name>).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result document as JSON.")] = False,
) -> None:
    """Run climbing-image NEB over every symmetry-distinct hop of ION and print barriers + percolation."""
    from mlip.backends import BatchedEvaluator
    from mlip.config import load_settings
    from mlip.loader import load_model
    from screening.neb import Mechanism, NebParameters, neb_for_structure
    from screening.neb.driver import neb_engine_for
    from screening.structio import element_symbols, read_structure

    settings = load_settings()
    struct = read_structure(structure)
    sites = [_parse_site(text) for text in insertion_site] if insertion_site else None
    if mechanism is not None:
        try:
            mechanism = Mechanism(mechanism.lower())
        except ValueError as err:
            raise InputError(f"--mechanism must be one of {', '.join(m.value for m in Mechanism)}") from err
    try:
        params = NebParameters(n_images=images, fmax_eV_A=fmax, max_steps=max_steps, min_length_A=min_length_A,
                               batch_size=batch_size)
    except ValueError as err:  # pydantic's ValidationError is a ValueError
        raise InputError(f"invalid NEB option: {err}") from err
    loaded = load_model(model, settings)
    loaded.check_elements(element_symbols(struct) + [ion.strip()], what=f"structure {structure.name} + {ion}")
    engine = neb_engine_for(loaded, device=device if device != "auto" else settings.device)
    if not isinstance(engine, BatchedEvaluator):
        typer.echo(f"[fallback] family {loaded.family} has no batched evaluator: NEB images are evaluated one at "
                   f"a time by its ASE calculator", err=True)
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

