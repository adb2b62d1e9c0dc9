"""The transport protocol end to end for one structure: relax → MD at each temperature → analyse.

``run_transport`` is a plain function; Ray, MLflow and the CLI wrap it. Everything lands in one work
directory (relaxed structure, one sub-directory per temperature with checkpoint and frame log, plots,
``result.json``); re-running in the same directory continues where a killed run stopped.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import io
import json
import time
from pathlib import Path
from typing import Callable

import ase.io
from ase import Atoms

from mlip.calculators import Task
from mlip.errors import InputError, SimulationFailed
from mlip.util import atomic_write_text, exclusive_or_refuse
from mlip.version import code_version
from screening.cells import make_supercell
from screening.ions import ion_charge as stated_charge
from screening.transport.analysis import analyze_arrhenius, analyze_frames
from screening.transport.framelog import FrameLog
from screening.transport.md import MDSegment, MDStatus, check_structure, run_md
from screening.transport.plots import plot_arrhenius, plot_msd
from screening.transport.protocol import MDEngine, TransportProtocol
from screening.transport.results import (
    Flag,
    Provenance,
    TemperatureResult,
    TransportResult,
)

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


class ModelEngines:
    """What the transport protocol needs from one loaded model, asked of its family's backend: ASE calculators
    per task and dtype (call it like a :data:`CalculatorFactory`) and the lean MD engine per dtype
    (:meth:`lean`, built once; None when the family has none)."""

    def __init__(self, loaded, device: str = "auto"):
        self.loaded = loaded
        self.device = device
        self._lean: dict[str, object] = {}

    @property
    def family(self) -> str:
        return self.loaded.family

    def __call__(self, task: Task, dtype: str | None = None):
        return self.loaded.calculator(task=task, device=self.device, dtype=dtype)

    def lean(self, dtype: str):
        if dtype not in self._lean:
            self._lean[dtype] = self.loaded.backend.lean_md_engine(self.loaded, device=self.device, dtype=dtype)
        return self._lean[dtype]


def calculator_factory_for(loaded, device: str = "auto") -> ModelEngines:
    """Calculators (and the lean MD engine) from a :class:`mlip.loader.LoadedModel`."""
    return ModelEngines(loaded, device)


def _md_engine(calculator_factory, protocol: TransportProtocol) -> tuple[dict, object | None]:
    """The MD engine that will run, as provenance, and the lean engine if it is the one: the protocol's choice,
    or ASE's when the model's family has no lean engine (then ``requested`` and ``fallback`` say so)."""
    if protocol.md_engine is not MDEngine.LEAN:
        return {"md_engine": protocol.md_engine.value}, None
    if not isinstance(calculator_factory, ModelEngines):
        from mlip.backends import BACKENDS, Capability

        labels = [b.label for b in BACKENDS.values() if Capability.LEAN_MD_ENGINE in b.capabilities]
        raise InputError(f"md_engine 'lean' runs {', '.join(labels)} models only; this calculator factory has no "
                         "lean engine (use md_engine: ase for other ASE calculators, or "
                         "calculator_factory_for(loaded), which falls back to ASE by itself when the model's "
                         "family has none)")
    lean = calculator_factory.lean(protocol.md_dtype)
    if lean is not None:
        return {"md_engine": MDEngine.LEAN.value}, lean
    return {"md_engine": MDEngine.ASE.value, "requested": MDEngine.LEAN.value,
            "fallback": f"family {calculator_factory.family} has no lean MD engine"}, None


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
    text = io.StringIO()
    ase.io.write(text, atoms, format="extxyz")
    atomic_write_text(done, text.getvalue())
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


@dataclasses.dataclass
class _Temperature:
    """One temperature's MD and analysis as it goes: production length (adaptive runs extend it) and verdict."""

    temperature_K: float
    tdir: Path
    production_steps: int
    extensions: int = 0
    result: TemperatureResult | None = None
    analysis: object = None
    resumed_from_step: int | None = None  # the first checkpoint MD continued from, if it was interrupted
    extended_at_step: int | None = None  # where the last adaptive extension began (a planned continuation)

    @classmethod
    def start(cls, protocol: TransportProtocol, temperature_K: float, tdir: Path) -> "_Temperature":
        state_path = tdir / "adaptive.json"
        if state_path.exists():
            state = json.loads(state_path.read_text())
            return cls(temperature_K, tdir, state["production_steps"], state["extensions"])
        return cls(temperature_K, tdir, protocol.steps(protocol.production_ps))

    def segment(self, protocol: TransportProtocol, ion: str) -> MDSegment:
        return _segment(protocol, self.temperature_K, self.production_steps, ion)

    def judge(self, outcome, protocol: TransportProtocol, charge: int, volume_A3: float) -> None:
        """Analyse the finished segment: set ``result``, or extend production (adaptive runs) and leave it None."""
        tdir, temperature_K = self.tdir, self.temperature_K
        resumed = getattr(outcome, "resumed_from_step", None)
        if self.resumed_from_step is None and resumed and resumed != self.extended_at_step:
            self.resumed_from_step = resumed
        frames = FrameLog(tdir / "frames").read() if FrameLog.exists(tdir / "frames") else None
        if outcome.status is not MDStatus.COMPLETED or frames is None:
            res, _ = analyze_frames(frames, temperature_K=temperature_K, ion_charge=charge,
                                    settings=protocol.analysis, md_status=outcome.status.value,
                                    md_reason=outcome.reason) if frames is not None else (None, None)
            if res is None:
                res = TemperatureResult(temperature_K=temperature_K, ion_charge=charge, n_mobile_ions=0, n_hops=0,
                                        production_ps=0.0, n_frames=0, n_blocks=protocol.analysis.n_blocks,
                                        volume_A3=volume_A3, flags=[Flag.UNSTABLE_MD],
                                        md_status=outcome.status.value, md_reason=outcome.reason)
            self.result = res
            return
        result, analysis = analyze_frames(frames, temperature_K=temperature_K, ion_charge=charge, settings=protocol.analysis)
        if protocol.adaptive:
            rel = (analysis.tracer.rel_half_width if analysis is not None else float("inf"))
            budget = protocol.steps(protocol.max_production_ps)
            if rel > protocol.target_rel_half_width:
                if self.production_steps < budget:
                    self.extended_at_step = protocol.equilibration_steps + self.production_steps
                    self.production_steps = min(self.production_steps + protocol.steps(protocol.extension_ps), budget)
                    self.extensions += 1
                    atomic_write_text(tdir / "adaptive.json", json.dumps(
                        {"production_steps": self.production_steps, "extensions": self.extensions}))
                    return
                result = result.model_copy(update={"flags": result.flags + [Flag.TARGET_NOT_MET]})
        self.result, self.analysis = result, analysis

    def final(self, ion: str) -> TemperatureResult:
        update = {"extensions": self.extensions, "frame_log": f"{self.tdir.name}/frames",
                  "md_resumed_from_step": self.resumed_from_step}
        if self.analysis is not None:
            plot_msd(self.analysis, self.result, self.tdir / "msd.png", ion)
            update["msd_plot"] = f"{self.tdir.name}/msd.png"
        return self.result.model_copy(update=update)


def _md_ase(atoms: Atoms, protocol: TransportProtocol, states: list[_Temperature], ion: str, charge: int, calc,
            progress: Progress) -> None:
    """One temperature after another with ASE's dynamics and ``calc``."""
    for index, st in enumerate(states):
        progress("temperature", {"index": index, "temperature_K": st.temperature_K, "n_temperatures": len(states)})
        while st.result is None:
            md_atoms = atoms.copy()
            md_atoms.calc = calc
            progress("md", {"temperature_K": st.temperature_K, "production_steps": st.production_steps,
                            "extensions": st.extensions})
            st.judge(run_md(md_atoms, st.segment(protocol, ion), st.tdir), protocol, charge, float(atoms.get_volume()))


def _md_lean(atoms: Atoms, protocol: TransportProtocol, states: list[_Temperature], ion: str, charge: int, engine,
             progress: Progress, batch_systems: int | None, home: Path | None) -> dict:
    """Every temperature at once on the lean engine (one model call per step over all of them); adaptive
    extensions run again together. Returns how the batch size was chosen (provenance)."""
    from mlip.engine.tuning import choose_md_batch
    from screening.transport.batch_md import MDJob, run_md_batch

    n = len(states)
    choice = choose_md_batch(engine, [atoms] * n, home=home, configured=batch_systems)
    log_choice = {"md_batch_systems": choice.batch_systems, "md_batch_source": choice.source}
    while pending := [st for st in states if st.result is None]:
        jobs = [MDJob(atoms.copy(), st.segment(protocol, ion), st.tdir) for st in pending]
        done_before = n - len(pending)
        progress("md", {"temperatures_K": [st.temperature_K for st in pending], "batch_systems": choice.batch_systems,
                        "production_steps": [st.production_steps for st in pending]})
        last = [-1.0]

        def report(units: float, n_jobs: int, running: int, done_before=done_before, last=last) -> None:
            index = done_before + units  # temperatures done, as a fractional index
            if index - last[0] >= 0.05 * n:
                last[0] = index
                progress("temperature", {"index": round(index, 3), "n_temperatures": n, "running": running})

        outcomes = run_md_batch(jobs, engine, batch_systems=choice.batch_systems,
                                max_batch_atoms=choice.max_batch_atoms, progress=report)
        for st, outcome in zip(pending, outcomes):
            st.judge(outcome, protocol, charge, float(atoms.get_volume()))
    return log_choice


def _exclusive(workdir: Path, timeout_s: float = 300.0):
    """One process at a time per work directory (a retried task must not race a dying copy of itself)."""
    return exclusive_or_refuse(workdir / ".lock", f"{workdir} is locked by another process for {timeout_s:.0f} s",
                               timeout_s=timeout_s, error=SimulationFailed)


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
    md_batch_systems: int | None = None,
    home: str | Path | None = None,
) -> TransportResult:
    """Run the transport protocol for ``structure`` with the working ion ``ion``; returns the result document.

    ``calculator_factory`` is :func:`calculator_factory_for` a loaded model, or any callable (task, dtype) → ASE
    calculator (then only ``md_engine: ase``). ``md_engine: lean`` runs the family's lean engine; a family without
    one runs ASE's dynamics instead and says so (``progress("fallback", ...)`` and ``provenance.md_engine``).
    With the lean engine, ``md_batch_systems`` caps how many temperatures advance in one batch (None: the
    measured best for this device and model, cached under ``home``, see :mod:`mlip.engine.tuning`).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with _exclusive(workdir):
        return _run_transport(structure, calculator_factory, protocol, workdir, ion, charge=charge,
                              model_ref=model_ref, model_sha256=model_sha256, progress=progress,
                              md_batch_systems=md_batch_systems, home=Path(home) if home is not None else None)


def _run_transport(structure, calculator_factory, protocol, workdir: Path, ion, *, charge, model_ref, model_sha256,
                   progress, md_batch_systems, home) -> TransportResult:
    t0 = time.perf_counter()
    progress = progress or (lambda stage, info: None)
    charge = stated_charge(ion) if charge is None else int(charge)
    atoms = to_atoms(structure)
    check_structure(atoms, ion)
    atoms, reps = make_supercell(atoms, protocol.supercell_min_length_A)
    (workdir / "protocol.json").write_text(json.dumps({"hash": protocol.hash, **protocol.model_dump(mode="json")}, indent=1))
    engine_info, lean = _md_engine(calculator_factory, protocol)
    if "fallback" in engine_info:
        progress("fallback", {"requested": engine_info["requested"], "md_engine": engine_info["md_engine"],
                              "reason": engine_info["fallback"]})

    if protocol.relax:
        progress("relax", {"n_atoms": len(atoms)})
        atoms = _relax(atoms, protocol, calculator_factory(Task.RELAX, None), workdir)
    states = [_Temperature.start(protocol, t, workdir / f"T{t:g}K") for t in protocol.temperatures_K]
    if lean is not None:
        engine_info |= _md_lean(atoms, protocol, states, ion, charge, lean, progress, md_batch_systems, home)
    else:
        _md_ase(atoms, protocol, states, ion, charge, calculator_factory(Task.MD, protocol.md_dtype), progress)
    temps = [st.final(ion) for st in states]
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
                              code_version=code_version(), seed=protocol.seed, md_engine=engine_info),
        temperatures=temps,
        arrhenius=arrhenius,
        flags=flags,
        wall_s=time.perf_counter() - t0,
        created_utc=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    )
    atomic_write_text(workdir / "result.json", result.model_dump_json(indent=1))
    return result


def load_result(workdir: str | Path) -> TransportResult:
    return TransportResult.model_validate_json((Path(workdir) / "result.json").read_text())


__all__ = ["run_transport", "calculator_factory_for", "ModelEngines", "load_result", "to_atoms"]
