"""The ``ionscreen`` command line: thin commands over the packages; heavy imports inside commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from mlip.errors import InputError, IonscreenError
from workflows.cli.options import JsonFlag

app = typer.Typer(
    name="ionscreen",
    help="Screen battery materials for ionic transport with MACE interatomic potentials.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="Model references, trust, coverage and the registry.", no_args_is_help=True)
app.add_typer(models_app, name="models")


def _register_area_commands() -> None:
    """Commands that live in their own modules (each keeps its heavy imports inside the commands)."""
    from workflows.cli import candidates as cli_candidates
    from workflows.cli import jobs as cli_jobs
    from workflows.cli import neb as cli_neb
    from workflows.cli import train as cli_train
    from workflows.cli import training as cli_training
    from workflows.cli import transport as cli_transport
    from workflows.cli import validate as cli_validate
    from workflows.cli import web as cli_web

    app.command("screen")(cli_jobs.screen)
    app.command("results")(cli_jobs.results)
    app.command("demo")(cli_jobs.demo)
    app.add_typer(cli_jobs.jobs_app, name="jobs")
    app.command("serve")(cli_web.serve)
    app.add_typer(cli_web.tokens_app, name="tokens", help="API tokens for the REST API.")
    app.command("md")(cli_transport.md)
    app.command("analyze")(cli_transport.analyze)
    app.command("neb")(cli_neb.neb)
    app.add_typer(cli_candidates.app, name="candidates", help="The built-in candidate library, import and export.")
    app.add_typer(cli_training.data_app, name="data")
    app.command("label")(cli_training.label_command)
    app.command("train")(cli_train.train)
    models_app.command("compare")(cli_train.models_compare)
    app.command("validate")(cli_validate.validate)


_register_area_commands()



def _settings():
    from mlip.config import load_settings

    return load_settings()


@app.command("config")
def config_show(as_json: JsonFlag = False) -> None:
    """Show the resolved configuration (data directory, database, MLflow, caches)."""
    from mlip.config import settings_as_dict

    values = settings_as_dict(_settings())
    if as_json:
        typer.echo(json.dumps(values, indent=2))
        return
    width = max(map(len, values))
    for key, value in values.items():
        typer.echo(f"{key:<{width}}  {value}")


@app.command("version")
def version() -> None:
    """Print the ionscreen version."""
    from mlip.version import code_version

    typer.echo(code_version())


@models_app.command("list")
def models_list(as_json: JsonFlag = False) -> None:
    """Every model this install knows: bundled, registered, cached foundation files, trusted files."""
    from mlip.catalog import list_models

    infos = list_models(_settings())
    if as_json:
        typer.echo(json.dumps([i.as_dict() for i in infos], indent=2))
        return
    if not infos:
        typer.echo("no models known yet (see `ionscreen models --help`)")
        return
    for i in infos:
        typer.echo(i.ref + ("" if i.trusted else "   [UNTRUSTED: will not be loaded]"))
        if i.aliases:
            typer.echo(f"  aliases   {', '.join(i.aliases)}")
        typer.echo(f"  family    {i.family}")
        typer.echo(f"  sha256    {i.sha256}")
        typer.echo(f"  elements  {' '.join(i.elements) if i.elements else 'unknown (not inspected)'}")
        typer.echo(f"  params    {i.n_params if i.n_params is not None else 'unknown'}")
        typer.echo(f"  dtype     {i.dtype or 'unknown'}")
        typer.echo(f"  source    {i.source}")
        if i.path:
            typer.echo(f"  path      {i.path}")


@models_app.command("check")
def models_check(
    ref: Annotated[str, typer.Argument(help="Model reference, e.g. bundled:NAME or mace-mp:small.")],
    structure: Annotated[Path, typer.Option("--structure", "-s", help="Structure file (CIF, POSCAR, extxyz).")],
    as_json: JsonFlag = False,
) -> None:
    """Say whether a model covers every element of a structure (exit 1 if not)."""
    from mlip.loader import load_model
    from screening.structio import element_symbols, read_structure

    elements = element_symbols(read_structure(structure))
    loaded = load_model(ref, _settings())
    missing = loaded.missing_elements(elements)
    if as_json:
        typer.echo(json.dumps({"ref": loaded.ref, "family": loaded.family, "sha256": loaded.sha256,
                               "structure": str(structure), "elements": elements, "missing": missing,
                               "covered": not missing}))
    elif missing:
        typer.echo(
            f"NOT COVERED: {ref} ({loaded.family}) lacks {', '.join(missing)} (structure {structure} has "
            f"{' '.join(elements)}; model covers {' '.join(loaded.elements)})",
            err=True,
        )
    else:
        typer.echo(f"covered: {ref} ({loaded.family}) covers every element of {structure} ({' '.join(elements)})")
    raise typer.Exit(1 if missing else 0)


@models_app.command("trust")
def models_trust(
    ref: Annotated[str, typer.Argument(help="A model file path or reference to trust.")],
    note: Annotated[str, typer.Option(help="Why you trust it (recorded).")] = "",
) -> None:
    """Record the SHA-256 of a model file as trusted (loading a .model file runs pickled code)."""
    from mlip.loader import trust

    loaded = trust(ref, _settings(), note=note)
    typer.echo(f"trusted {loaded.ref}\n  sha256    {loaded.sha256}\n  elements  {' '.join(loaded.elements)}")


@models_app.command("untrust")
def models_untrust(ref: Annotated[str, typer.Argument(help="A model file path/reference or a SHA-256.")]) -> None:
    """Remove a hash from the trust store."""
    from mlip.loader import resolve
    from mlip.trust import TrustStore

    settings = _settings()
    sha = ref if len(ref) == 64 and all(c in "0123456789abcdef" for c in ref) else resolve(ref, settings, download=False).sha256
    removed = TrustStore(settings.trust_store_path).remove(sha)
    typer.echo(f"{'removed' if removed else 'was not trusted'}: {sha}")


@models_app.command("info")
def models_info(ref: Annotated[str, typer.Argument(help="Model reference.")], as_json: JsonFlag = False) -> None:
    """Load a model and print what it is (family, elements, size, dtype, cutoff, provenance)."""
    from mlip.loader import load_model

    loaded = load_model(ref, _settings())
    data = {"ref": loaded.ref, "sha256": loaded.sha256, "path": str(loaded.path), "source": loaded.source,
            "trusted_by": loaded.trusted_by, **loaded.metadata(),
            "capabilities": sorted(loaded.backend.capabilities)}
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        for key, value in data.items():
            typer.echo(f"{key:<14}{' '.join(map(str, value)) if isinstance(value, list) else value}")


@models_app.command("download")
def models_download(name: Annotated[str, typer.Argument(help="Foundation model name, e.g. small, medium-mpa-0.")]) -> None:
    """Download a MACE foundation model into mace-torch's cache (and trust it)."""
    from mlip.loader import resolve

    resolved = resolve(f"mace-mp:{name.removeprefix('mace-mp:')}", _settings())
    typer.echo(f"{resolved.ref.text} at {resolved.path}\n  sha256 {resolved.sha256}")


@models_app.command("register")
def models_register(
    path: Annotated[Path, typer.Argument(help="A trusted .model file.")],
    name: Annotated[str, typer.Option("--name", "-n", help="Registered model name.")],
    alias: Annotated[Optional[str], typer.Option(help="Alias to point at the new version, e.g. production.")] = None,
    description: Annotated[str, typer.Option(help="Version description.")] = "",
) -> None:
    """Register a model file in the MLflow registry (its hash becomes trusted)."""
    from training.registry import register_model

    v = register_model(path, name, _settings(), alias=alias, description=description)
    typer.echo(f"registered models:/{v.name}/{v.version}" + (f" (models:/{v.name}@{alias})" if alias else ""))


@models_app.command("signing-key")
def models_signing_key() -> None:
    """Create the team's registry signing key (a secret; copy it, mode 600, to every machine of the team)."""
    from mlip.signing import create_key

    settings = _settings()
    path = create_key(settings.signing_key_path)
    typer.echo(f"created {path} (mode 600). Versions registered from now on are signed; a machine with this key "
               "loads them without `models trust`. Set registry_signing_key_file to use a key elsewhere.")


@models_app.command("promote")
def models_promote(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[int, typer.Argument(help="Version number.")],
    alias: Annotated[str, typer.Option(help="Alias, e.g. production.")] = "production",
) -> None:
    """Point models:/NAME@ALIAS at a version."""
    from training.registry import promote

    v = promote(name, version, alias, _settings())
    typer.echo(f"models:/{name}@{alias} -> version {v.version}")


def main() -> None:
    """Console entry point: ionscreen errors become one clear line and a non-zero exit code."""
    try:
        app()
    except IonscreenError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2 if isinstance(err, InputError) else 1)


if __name__ == "__main__":
    main()
