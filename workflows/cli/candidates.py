"""``ionscreen candidates``: list, show and export the built-in candidates, and import structure files.

Thin typer layer over ``screening.candidates``; heavy imports happen inside the commands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Built-in candidate structures: list, show, export, import.", no_args_is_help=True)

SeedOption = typer.Option(0, "--seed", help="seed of the ordering / insertion choice")
IonOption = typer.Option(None, "--ion", help="working ion to insert into a cathode host (Mg, Zn, Ca, Al, Li, Na)")
NIonsOption = typer.Option(None, "--n-ions", help="ions to insert into a cathode host (default 1; 0 = empty host)")


def _fail(err: Exception) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(code=2) from err


@app.command("list")
def list_candidates(
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Table of built-in candidates: name, formula, kind, working ion, space group, atoms, flags, citation.

    The atom count comes from the entry's target composition, so listing never runs the (slow) ordering.
    """
    from screening.candidates.builder import ordered_atom_count
    from screening.candidates.library import load_library

    rows = []
    for entry in load_library().entries:
        atoms = str(ordered_atom_count(entry.name)) if entry.buildable else "-"
        rows.append(
            {
                "name": entry.name,
                "formula": entry.formula,
                "kind": entry.kind.value,
                "working_ion": entry.working_ion,
                "spacegroup": f"{entry.spacegroup} ({entry.spacegroup_number})",
                "atoms": atoms,
                "verification": entry.source.verification.value,
                "flags": ",".join(f.value for f in entry.source.quality_flags) or "-",
                "status": entry.status.value,
                "citation": entry.source.reference,
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    columns = ["name", "formula", "kind", "working_ion", "spacegroup", "atoms", "verification", "flags", "citation"]
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns[:-1]}
    typer.echo("  ".join(c.ljust(widths.get(c, 0)) for c in columns))
    for r in rows:
        cite = r["citation"] if r["status"] == "ok" else f"[{r['status']}] {r['citation']}"
        typer.echo("  ".join([*(r[c].ljust(widths[c]) for c in columns[:-1]), cite[:100]]))
    typer.echo("(atoms: ordered cell as built; cathode hosts without inserted ions. '-' = cannot be built yet)")


@app.command("show")
def show(
    name: str = typer.Argument(..., help="library name (see `candidates list`)"),
    ion: Optional[str] = IonOption,
    n_ions: Optional[int] = NIonsOption,
    seed: int = SeedOption,
    as_json: bool = typer.Option(False, "--json", help="print the Candidate document (without the structure)"),
) -> None:
    """Details of one candidate: citation, lattice, sites, oxidation states, hash and ordering record."""
    from mlip.errors import InputError
    from screening.candidates.builder import build_candidate
    from screening.candidates.library import get_entry
    from screening.candidates.oxidation import oxidation_summary

    try:
        entry = get_entry(name)
        cand = build_candidate(entry.name, ion=ion, n_ions=n_ions, seed=seed)
    except InputError as err:
        _fail(err)
    if as_json:
        typer.echo(json.dumps(cand.metadata(), indent=2))
        return
    s = cand.structure
    a, b, c = s.lattice.abc
    al, be, ga = s.lattice.angles
    typer.echo(f"{cand.name}  ({cand.formula}, {cand.kind.value}, working ion {cand.working_ion}{cand.working_ion_charge}+)")
    typer.echo(f"source       {entry.source.reference}")
    typer.echo(f"file         {entry.source.file}  [{entry.source.verification.value}]")
    if entry.source.quality_flags:
        typer.echo(f"flags        {', '.join(f.value for f in entry.source.quality_flags)}")
    if entry.source.checked:
        typer.echo(f"checked      {entry.source.checked}")
    if entry.notes:
        typer.echo(f"notes        {entry.notes}")
    typer.echo(f"parent       {cand.spacegroup}; cited lattice {entry.lattice.model_dump(exclude_none=True)}")
    typer.echo(f"cell         a={a:.4f} b={b:.4f} c={c:.4f} Å  alpha={al:.2f} beta={be:.2f} gamma={ga:.2f}  {len(s)} atoms")
    typer.echo(f"oxidation    {oxidation_summary(s)}")
    typer.echo(f"hash         {cand.structure_hash}")
    if cand.ordering:
        o = cand.ordering
        typer.echo(
            f"ordering     {o.method.value} seed={o.seed} supercell={o.supercell} ({o.parent_cell}) "
            f"E_ewald={o.ewald_energy_eV:.3f} eV ({o.ewald_energy_per_atom_eV:.4f} eV/atom) rank={o.rank} "
            f"configs={o.n_configurations:.3g} d_min={o.min_distance_A:.2f} Å  {o.runtime_s:.2f} s"
        )
        for sub in o.sublattices:
            typer.echo(f"  sublattice {sub.label}: {sub.n_sites} sites, cited {sub.cited_occupancy} -> {sub.counts}")
        for note in o.notes:
            typer.echo(f"  note: {note}")
    if cand.insertion_sites_frac:
        typer.echo(f"insertion    {len(cand.insertion_sites_frac)} empty sites: {[s.note for s in entry.insertion_sites]}")
    for item in cand.history:
        typer.echo(f"history      {item}")
    typer.echo("sites:")
    for site in s:
        x, y, z = site.frac_coords
        typer.echo(f"  {str(site.specie):10s} {x:8.5f} {y:8.5f} {z:8.5f}  {site.properties.get('label') or ''}")


@app.command("export")
def export(
    name: str = typer.Argument(..., help="library name (see `candidates list`)"),
    fmt: str = typer.Option("cif", "--format", "-f", help="cif | poscar | extxyz"),
    output: Path = typer.Option(..., "--output", "-o", help="file to write"),
    ion: Optional[str] = IonOption,
    n_ions: Optional[int] = NIonsOption,
    seed: int = SeedOption,
) -> None:
    """Write a candidate's ordered structure (with oxidation states) to a file."""
    from mlip.errors import InputError
    from screening.candidates.builder import build_candidate
    from screening.candidates.candidate import ExportFormat

    try:
        fmt_enum = ExportFormat(fmt.lower())
    except ValueError:
        _fail(ValueError(f"unknown format {fmt!r}; use one of: {', '.join(f.value for f in ExportFormat)}"))
    try:
        cand = build_candidate(name, ion=ion, n_ions=n_ions, seed=seed)
        path = cand.export(output, fmt_enum)
    except InputError as err:
        _fail(err)
    typer.echo(f"wrote {path} ({cand.formula}, {cand.n_atoms} atoms, hash {cand.structure_hash[:16]})")


@app.command("import")
def import_structure(
    path: Path = typer.Argument(..., help="CIF, POSCAR or extxyz file"),
    ion: str = typer.Option(..., "--ion", help="working ion (its charge is the stated one, never guessed)"),
    oxidation: Optional[str] = typer.Option(None, "--oxidation", help="e.g. Li=1,P=5,S=-2 (default: bond valence, else a guess from the composition; the import says which)"),
    supercell: Optional[str] = typer.Option(None, "--supercell", help="e.g. 2,2,1 (default: smallest neutral)"),
    seed: int = SeedOption,
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="write the ordered candidate as CIF"),
) -> None:
    """Import a structure file: oxidation states, ordering of partial occupancies, hash."""
    from mlip.errors import InputError
    from screening.candidates.builder import import_file
    from screening.candidates.oxidation import parse_oxidation_states

    try:
        sc = [int(x) for x in supercell.split(",")] if supercell else None
        cand = import_file(
            path, working_ion=ion, oxidation_states=parse_oxidation_states(oxidation) if oxidation else None,
            supercell=sc, seed=seed,
        )
    except (InputError, ValueError) as err:
        _fail(err)
    typer.echo(f"{cand.name}: {cand.formula}, {cand.n_atoms} atoms, hash {cand.structure_hash}")
    typer.echo(f"ordering: {cand.ordering.method.value}, supercell {cand.ordering.supercell}, seed {cand.ordering.seed}")
    for note in cand.ordering.notes:
        if note.startswith(("oxidation states by", "bond valence failed", "occupancies rounded")):
            typer.echo(f"  {note}")
    if output:
        cand.to_cif(output)
        typer.echo(f"wrote {output}")
