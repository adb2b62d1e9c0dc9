"""``ionscreen md`` (run the transport protocol) and ``ionscreen analyze`` (analyse existing trajectories)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from mlip.errors import InputError
from screening.transport.cli_keys import ANALYZE_KEYS, ARRHENIUS_KEYS
from workflows.cli.options import JsonFlag


def _fmt(value, ci=None, unit=""):
    if value is None:
        return "—"
    text = f"{value:.3g}"
    if ci is not None:
        text += f" [{ci[0]:.3g}, {ci[1]:.3g}]"
    return f"{text} {unit}".rstrip()


def _value_or_bound(value, ci, bound, unit=""):
    return f"< {bound:.3g} {unit}".rstrip() if value is None and bound is not None else _fmt(value, ci, unit)


def _print_temperature_table(temps) -> None:
    typer.echo(f"{'T (K)':>7}  {'D* (cm²/s) [95% CI]':<34} {'D_σ (cm²/s)':<11} {'H':>5}  {'σ (mS/cm) [95% CI]':<32} "
               f"{'hops':>6}  {'window (ps)':<12} flags")
    for t in temps:
        window = f"{t.fit_window_ps[0]:.3g}-{t.fit_window_ps[1]:.3g}" if t.fit_window_ps else "—"
        typer.echo(
            f"{t.temperature_K:>7.0f}  {_value_or_bound(t.diffusivity_cm2_s, t.diffusivity_ci95_cm2_s, t.diffusivity_upper_bound_cm2_s):<34} "
            f"{_fmt(t.charge_diffusivity_cm2_s):<11} {_fmt(t.haven_ratio):>5}  "
            f"{_value_or_bound(t.conductivity_mS_cm, t.conductivity_ci95_mS_cm, t.conductivity_upper_bound_mS_cm):<32} "
            f"{t.n_hops:>6}  {window:<12} {','.join(t.flags) or '-'}"
        )
    for t in temps:
        if t.analysis_note:
            typer.echo(f"{t.temperature_K:.0f} K: upper bound only: {t.analysis_note}")


def _print_arrhenius(a) -> None:
    if a.activation_energy_eV is None:
        typer.echo(f"Arrhenius: no fit ({', '.join(a.flags)})")
        if a.diffusivity_300K_upper_bound_cm2_s is not None:
            typer.echo(f"300 K: D* < {a.diffusivity_300K_upper_bound_cm2_s:.3g} cm²/s   "
                       f"σ < {a.conductivity_300K_upper_bound_mS_cm:.3g} mS/cm")
        if a.activation_energy_lower_bound_eV is not None:
            typer.echo(f"Ea > {a.activation_energy_lower_bound_eV:.3g} eV")
        return
    typer.echo(f"Ea = {_fmt(a.activation_energy_eV, a.activation_energy_ci95_eV, 'eV')}   "
               f"D0 = {_fmt(a.prefactor_cm2_s, a.prefactor_ci95_cm2_s, 'cm²/s')}")
    typer.echo(f"300 K: D* = {_fmt(a.diffusivity_300K_cm2_s, a.diffusivity_300K_ci95_cm2_s, 'cm²/s')}   "
               f"σ = {_fmt(a.conductivity_300K_mS_cm, a.conductivity_300K_ci95_mS_cm, 'mS/cm')}"
               + (f"   flags: {', '.join(a.flags)}" if a.flags else ""))


def analyze(
    trajectories: Annotated[list[Path], typer.Argument(help="extxyz, .traj, XDATCAR, vasprun.xml or ionscreen frame-log directories; several files = several temperatures.")],
    ion: Annotated[str, typer.Option("--ion", help="Working ion, e.g. Li, Na, Mg.")],
    temperature_K: Annotated[Optional[float], typer.Option("--temperature-K", help="Temperature (K) when the file does not state it.")] = None,
    timestep_fs: Annotated[Optional[float], typer.Option("--timestep-fs", help="Time between consecutive frames in the file, fs.")] = None,
    ion_charge: Annotated[Optional[int], typer.Option("--ion-charge", help="Override the working ion's charge (e).")] = None,
    n_blocks: Annotated[int, typer.Option(help="Time blocks of the temperature-stationarity check.")] = 5,
    plots: Annotated[Optional[Path], typer.Option("--plots", help="Directory for MSD and Arrhenius PNGs.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Diffusivity, conductivity and Haven ratio (with 95% intervals and flags) from existing trajectories."""
    from screening.ions import ion_charge as stated_charge
    from screening.transport.analysis import analyze_arrhenius, analyze_frames
    from screening.transport.plots import plot_arrhenius, plot_msd
    from screening.transport.protocol import AnalysisSettings
    from screening.transport.trajread import load_trajectory

    charge = stated_charge(ion) if ion_charge is None else ion_charge
    settings = AnalysisSettings(n_blocks=n_blocks, min_hops=AnalysisSettings().min_hops)
    loaded = [load_trajectory(p, ion, temperature_K=temperature_K, timestep_fs=timestep_fs) for p in trajectories]
    temps = [lt.temperature_K for lt in loaded]
    if len(loaded) > 1 and len(set(temps)) != len(temps):
        raise InputError(f"several trajectories must be at different temperatures; got {temps} K")
    results = []
    for lt in loaded:
        res, da = analyze_frames(lt.frames, temperature_K=lt.temperature_K, ion_charge=charge, settings=settings)
        results.append(res)
        if plots is not None and da is not None:
            plots.mkdir(parents=True, exist_ok=True)
            plot_msd(da, res, plots / f"msd_{lt.temperature_K:g}K.png", ion)
    arrhenius = None
    if len(results) > 1:
        arrhenius, fit = analyze_arrhenius(results, n_blocks=n_blocks)
        if plots is not None:
            plot_arrhenius(results, arrhenius, fit, plots / "arrhenius.png", ion)
    if as_json:
        def per_t(r):
            data = r.model_dump(mode="json")
            return {k: data[k] for k in ANALYZE_KEYS}

        if len(results) == 1:
            out = per_t(results[0])
        else:
            a = arrhenius.model_dump(mode="json")
            out = {"per_temperature_K": {f"{r.temperature_K:g}": per_t(r) for r in results},
                   **{k: a[k] for k in ARRHENIUS_KEYS}}
        typer.echo(json.dumps(out, indent=2))
        return
    for lt in loaded:
        typer.echo(f"{lt.source}: {lt.frames.n_frames} frames, Δt = {lt.frame_dt_fs:g} fs ({lt.dt_source}), "
                   f"T = {lt.temperature_K:g} K ({lt.temperature_source}), {ion}{charge}+ × {lt.frames.mobile_A.shape[1]}")
    _print_temperature_table(results)
    if arrhenius is not None:
        _print_arrhenius(arrhenius)


def md(
    structure: Annotated[Path, typer.Argument(help="Structure file (CIF, POSCAR, extxyz).")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model reference (bundled:NAME, mace-mp:small, models:/NAME@ALIAS, file, ase:emt).")],
    ion: Annotated[str, typer.Option("--ion", help="Working ion, e.g. Li.")],
    protocol: Annotated[str, typer.Option("--protocol", "-p", help="Preset name (quick, standard) or a YAML file of protocol fields.")] = "quick",
    temperatures_K: Annotated[Optional[str], typer.Option("--temperatures-K", help="Override temperatures, comma-separated, K.")] = None,
    production_ps: Annotated[Optional[float], typer.Option("--production-ps", help="Override production length per temperature, ps.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Override the random seed.")] = None,
    engine: Annotated[Optional[str], typer.Option("--engine", help="Override the MD engine: lean (the family's batched engine; "
                                                  "ASE's dynamics for families without one, with a note) or ase.")] = None,
    batch_systems: Annotated[Optional[int], typer.Option("--batch-systems", help="Lean engine: temperatures per batch (default: measured).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Work directory (re-run to resume).")] = Path("transport-run"),
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    as_json: JsonFlag = False,
) -> None:
    """Run the transport protocol (relax → MD at each temperature → analysis) for one structure; resumable."""
    from mlip.config import load_settings
    from mlip.loader import load_model
    from screening.cells import repeats_for_min_height
    from screening.structio import read_structure
    from screening.transport.protocol import preset_or_file
    from screening.transport.run import calculator_factory_for, run_transport

    overrides = {}
    if temperatures_K:
        try:
            overrides["temperatures_K"] = tuple(float(t) for t in temperatures_K.split(","))
        except ValueError as err:
            raise InputError(f"--temperatures-K must be comma-separated numbers, got {temperatures_K!r}") from err
    if production_ps is not None:
        overrides["production_ps"] = production_ps
    if seed is not None:
        overrides["seed"] = seed
    if engine is not None:
        overrides["md_engine"] = engine
    proto = preset_or_file(protocol, **overrides)
    struct = read_structure(structure)
    # before the model loads (which may download it): the supercell must be within the size limit
    repeats_for_min_height(struct.lattice.matrix, proto.supercell_min_length_A, len(struct),
                           what=f"the supercell of {structure} with every cell height ≥ {proto.supercell_min_length_A:g} Å")
    settings = load_settings()
    loaded = load_model(model, settings)
    loaded.check_elements([el.symbol for el in struct.composition.elements], what=f"structure {structure}")

    def progress(stage, info):
        if not as_json or stage == "fallback":  # stderr: a fallback is said even under --json
            typer.echo(f"[{stage}] " + " ".join(f"{k}={v}" for k, v in info.items()), err=True)

    result = run_transport(struct, calculator_factory_for(loaded, device), proto, out, ion,
                           model_ref=loaded.ref, model_sha256=loaded.sha256, progress=progress,
                           md_batch_systems=batch_systems, home=settings.ensure_home())
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
        return
    typer.echo(f"{result.formula} ({result.n_atoms} atoms, supercell {result.supercell}), {ion}{result.ion_charge}+, "
               f"protocol {proto.name} {proto.hash[:12]}, model {loaded.ref} ({loaded.family}) {loaded.sha256[:12]}")
    _print_temperature_table(result.temperatures)
    _print_arrhenius(result.arrhenius)
    typer.echo(f"results, plots and trajectories in {out}/ (result.json)")
