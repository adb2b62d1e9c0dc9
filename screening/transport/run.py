"""The transport protocol end to end for one structure: relax → MD at each temperature → analyse.

``run_transport`` is a plain function; Ray, MLflow and the CLI wrap it. Everything lands in one work
directory (relaxed structure, one sub-directory per temperature with checkpoint and frame log, plots,
``result.json``); re-running in the same directory continues where a killed run stopped.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Callable

import ase.io
import numpy as np
from ase import Atoms

from mlip.calculators import Task
from mlip.errors import InputError, SimulationFailed
from mlip.version import code_version
from screening.cells import make_supercell
from screening.ions import ion_charge as stated_charge
from screening.transport.analysis import analyze_arrhenius, analyze_frames
from screening.transport.framelog import FrameLog
from screening.transport.md import MDSegment, MDStatus, check_structure, run_md
from screening.transport.plots import plot_arrhenius, plot_msd
from screening.transport.protocol import TransportProtocol
from screening.transport.results import Flag, Provenance, TemperatureResult, TransportResult

CalculatorFactory = Callable[[Task, str | None], object]
Progress = Callable[[str, dict], None]


def to_atoms(structure) -> Atoms:
    """ASE Atoms from Atoms or an ordered pymatgen Structure."""
    if isinstance(structure, Atoms):
        return structure.copy()
    if getattr(structure, "is_ordered", True) is False:
        raise InputError("structure has partially occupied sites; order it first (ionscreen candidates)")
    from pymatgen.io.ase import AseAtomsAdaptor

    return AseAtomsAdaptor.get_atoms(structure)


def calculator_factory_for(loaded, device: str = "auto") -> CalculatorFactory:
    """Calculators from a :class:`mlip.loader.LoadedModel`, one per task and dtype."""
    return lambda task, dtype=None: loaded.calculator(task=task, device=device, dtype=dtype)


def _relax(atoms: Atoms, protocol: TransportProtocol, calc, workdir: Path) -> Atoms:
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    done = workdir / "relaxed.extxyz"
    if done.exists():
        return ase.io.read(done)
    atoms = atoms.copy()
    atoms.calc = calc
    target = FrechetCellFilter(atoms) if protocol.relax_cell else atoms
    opt = FIRE(target, logfile=str(workdir / "relax.log"))
    converged = opt.run(fmax=protocol.relax_fmax_eV_A, steps=protocol.relax_max_steps)
    atoms.info["relax_converged"] = bool(converged)
    atoms.info["relax_steps"] = int(opt.nsteps)
    check_structure(atoms)
    tmp = workdir / "relaxed.tmp.extxyz"
    ase.io.write(tmp, atoms, format="extxyz")
    os.replace(tmp, done)
    return ase.io.read(done)


def _segment(protocol: TransportProtocol, temperature_K: float, production_steps: int, ion: str) -> MDSegment:
    return MDSegment(
        temperature_K=temperature_K,
        timestep_fs=protocol.timestep_fs,
        equilibration_steps=protocol.equilibration_steps,
        production_steps=production_steps,
        sample_every_steps=protocol.sample_every_steps,
        checkpoint_every_steps=protocol.checkpoint_every_steps,
        thermostat=protocol.thermostat,
        equilibration_thermostat=protocol.equilibration_thermostat,
        thermostat_time_constant_fs=protocol.thermostat_time_constant_fs,
        seed=protocol.seed,
        mobile_symbol=ion,
    )


def _run_temperature(
    atoms: Atoms, protocol: TransportProtocol, temperature_K: float, ion: str, charge: int, calc, tdir: Path,
    progress: Progress,
) -> TemperatureResult:
    state_path = tdir / "adaptive.json"
    production_steps = protocol.steps(protocol.production_ps)
    extensions = 0
    if state_path.exists():
        state = json.loads(state_path.read_text())
        production_steps, extensions = state["production_steps"], state["extensions"]
    while True:
        md_atoms = atoms.copy()
        md_atoms.calc = calc
        progress("md", {"temperature_K": temperature_K, "production_steps": production_steps, "extensions": extensions})
        outcome = run_md(md_atoms, _segment(protocol, temperature_K, production_steps, ion), tdir)
        frames = FrameLog(tdir / "frames").read() if FrameLog.exists(tdir / "frames") else None
        if outcome.status is not MDStatus.COMPLETED or frames is None:
            res, _ = analyze_frames(frames, temperature_K=temperature_K, ion_charge=charge,
                                    settings=protocol.analysis, md_status=outcome.status.value,
                                    md_reason=outcome.reason) if frames is not None else (None, None)
            if res is None:
                res = TemperatureResult(temperature_K=temperature_K, ion_charge=charge, n_mobile_ions=0, n_hops=0,
                                        production_ps=0.0, n_frames=0, n_blocks=protocol.analysis.n_blocks,
                                        volume_A3=float(atoms.get_volume()), flags=[Flag.UNSTABLE_MD],
                                        md_status=outcome.status.value, md_reason=outcome.reason)
            return res.model_copy(update={"extensions": extensions, "frame_log": "frames"})
        result, analysis = analyze_frames(frames, temperature_K=temperature_K, ion_charge=charge, settings=protocol.analysis)
        if not protocol.adaptive:
            break
        rel = (analysis.tracer.rel_half_width if analysis is not None else float("inf"))
        budget = protocol.steps(protocol.max_production_ps)
        if rel <= protocol.target_rel_half_width:
            break
        if production_steps >= budget:
            result = result.model_copy(update={"flags": result.flags + [Flag.TARGET_NOT_MET]})
            break
        production_steps = min(production_steps + protocol.steps(protocol.extension_ps), budget)
        extensions += 1
        tmp = state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"production_steps": production_steps, "extensions": extensions}))
        os.replace(tmp, state_path)
    update = {"extensions": extensions, "frame_log": "frames"}
    if analysis is not None:
        plot_msd(analysis, result, tdir / "msd.png", ion)
        update["msd_plot"] = "msd.png"
    return result.model_copy(update=update)


@contextlib.contextmanager
def _exclusive(workdir: Path, timeout_s: float = 300.0):
    """One process at a time per work directory (a retried task must not race a dying copy of itself)."""
    deadline = time.monotonic() + timeout_s
    with open(workdir / ".lock", "a+") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SimulationFailed(f"{workdir} is locked by another process for {timeout_s:.0f} s") from None
                time.sleep(1.0)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_transport(
    structure,
    calculator_factory: CalculatorFactory,
    protocol: TransportProtocol,
    workdir: str | Path,
    ion: str,
    *,
    charge: int | None = None,
    model_ref: str | None = None,
    model_sha256: str | None = None,
    progress: Progress | None = None,
) -> TransportResult:
    """Run the transport protocol for ``structure`` with the working ion ``ion``; returns the result document."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with _exclusive(workdir):
        return _run_transport(structure, calculator_factory, protocol, workdir, ion, charge=charge,
                              model_ref=model_ref, model_sha256=model_sha256, progress=progress)


def _run_transport(structure, calculator_factory, protocol, workdir: Path, ion, *, charge, model_ref, model_sha256,
                   progress) -> TransportResult:
    t0 = time.perf_counter()
    progress = progress or (lambda stage, info: None)
    charge = stated_charge(ion) if charge is None else int(charge)
    atoms = to_atoms(structure)
    check_structure(atoms, ion)
    atoms, reps = make_supercell(atoms, protocol.supercell_min_length_A)
    (workdir / "protocol.json").write_text(json.dumps({"hash": protocol.hash, **protocol.model_dump(mode="json")}, indent=1))

    if protocol.relax:
        progress("relax", {"n_atoms": len(atoms)})
        atoms = _relax(atoms, protocol, calculator_factory(Task.RELAX, None), workdir)
    md_calc = calculator_factory(Task.MD, protocol.md_dtype)
    temps = []
    for index, temperature in enumerate(protocol.temperatures_K):
        progress("temperature", {"index": index, "temperature_K": temperature, "n_temperatures": len(protocol.temperatures_K)})
        tdir = workdir / f"T{temperature:g}K"
        temps.append(_run_temperature(atoms, protocol, temperature, ion, charge, md_calc, tdir, progress))
        temps[-1] = temps[-1].model_copy(update={
            "frame_log": f"{tdir.name}/frames",
            "msd_plot": f"{tdir.name}/msd.png" if temps[-1].msd_plot else None,
        })
    progress("analyse", {})
    arrhenius, fit = analyze_arrhenius(temps, n_blocks=protocol.analysis.n_blocks, seed=protocol.seed)
    if any(t.diffusivity_cm2_s for t in temps):
        plot_arrhenius(temps, arrhenius, fit, workdir / "arrhenius.png", ion)
        arrhenius = arrhenius.model_copy(update={"plot": "arrhenius.png"})
    flags = sorted({f for t in temps for f in t.flags} | set(arrhenius.flags))
    result = TransportResult(
        formula=atoms.get_chemical_formula(mode="metal", empirical=True),
        working_ion=ion,
        ion_charge=charge,
        n_atoms=len(atoms),
        supercell=reps,
        volume_A3=float(atoms.get_volume()),
        protocol=protocol.model_dump(mode="json"),
        provenance=Provenance(model_ref=model_ref, model_sha256=model_sha256, protocol_hash=protocol.hash,
                              code_version=code_version(), seed=protocol.seed),
        temperatures=temps,
        arrhenius=arrhenius,
        flags=flags,
        wall_s=time.perf_counter() - t0,
        created_utc=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    )
    tmp = workdir / "result.json.tmp"
    tmp.write_text(result.model_dump_json(indent=1))
    os.replace(tmp, workdir / "result.json")
    return result


def load_result(workdir: str | Path) -> TransportResult:
    return TransportResult.model_validate_json((Path(workdir) / "result.json").read_text())


__all__ = ["run_transport", "calculator_factory_for", "load_result", "to_atoms"]
