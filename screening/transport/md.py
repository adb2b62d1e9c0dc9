"""Resumable NVT molecular dynamics on ASE: equilibration, then production that writes a frame log.

``run_md`` is a plain function of (atoms with a calculator, an ``MDSegment``, a work directory). It
checkpoints positions, momenta, the random-number generator and the frame count atomically; when
re-run in the same directory it continues *to* the target step count from the last checkpoint,
cutting the frame log back to the checkpoint, so a killed run and an uninterrupted one produce the
same frames. Instabilities (NaN, atoms too close, runaway temperature or energy) stop the segment
with a reason instead of producing numbers.
"""

from __future__ import annotations

import enum
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.data import covalent_radii
from ase.md.bussi import Bussi
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
from ase.neighborlist import neighbor_list

from mlip.errors import InputError
from screening.transport.framelog import FrameLog
from screening.transport.protocol import Thermostat

OVERLAP_FRACTION = 0.5  # input atoms closer than this × (sum of covalent radii) = overlapping
CLOSE_CONTACT_FRACTION = 0.4  # during MD, closer than this × (sum of covalent radii) = unstable


class MDStatus(enum.StrEnum):
    COMPLETED = "completed"
    UNSTABLE = "unstable"


@dataclass(frozen=True)
class MDSegment:
    """One temperature's MD: all times in steps of ``timestep_fs``."""

    temperature_K: float
    timestep_fs: float
    equilibration_steps: int
    production_steps: int
    sample_every_steps: int
    checkpoint_every_steps: int
    thermostat: Thermostat
    equilibration_thermostat: Thermostat
    thermostat_time_constant_fs: float
    seed: int
    mobile_symbol: str

    def validate(self) -> None:
        if self.temperature_K <= 0:
            raise InputError(f"temperature must be positive, got {self.temperature_K} K")
        if self.timestep_fs <= 0:
            raise InputError(f"time step must be positive, got {self.timestep_fs} fs")
        if self.production_steps % self.sample_every_steps or self.checkpoint_every_steps % self.sample_every_steps:
            raise InputError("production and checkpoint intervals must be whole numbers of sample intervals")


@dataclass
class MDOutcome:
    status: MDStatus
    reason: str
    steps_done: int
    frames: int
    wall_s: float
    resumed_from_step: int | None


def _thermostat(kind: Thermostat, atoms: Atoms, seg: MDSegment, rng: np.random.Generator):
    dt = seg.timestep_fs * units.fs
    if kind is Thermostat.BUSSI:
        return Bussi(atoms, dt, temperature_K=seg.temperature_K, taut=seg.thermostat_time_constant_fs * units.fs, rng=rng)
    if kind is Thermostat.LANGEVIN:
        # fixcm=False (ASE's fixcm=True samples NVT incorrectly); the centre-of-mass momentum the
        # noise gives is removed once, when production starts (see run_md).
        return Langevin(atoms, dt, temperature_K=seg.temperature_K, friction=1.0 / (seg.thermostat_time_constant_fs * units.fs),
                        rng=rng, fixcm=False)
    raise InputError(f"unsupported thermostat {kind}")


def min_distance(atoms: Atoms, cutoff_A: float = 3.0) -> tuple[float, float]:
    """Shortest interatomic distance and the shortest relative to the covalent-radius sum."""
    i, j, d = neighbor_list("ijd", atoms, cutoff_A)
    if len(d) == 0:
        return cutoff_A, cutoff_A
    radii = covalent_radii[atoms.numbers]
    rel = d / (radii[i] + radii[j])
    return float(d.min()), float(rel.min())


def check_structure(atoms: Atoms, mobile_symbol: str | None = None) -> None:
    """Refuse structures MD cannot start from, naming the problem."""
    if not atoms.pbc.all() or atoms.cell.rank < 3:
        raise InputError(f"structure is not periodic in 3D (pbc={atoms.pbc.tolist()}); transport MD needs a crystal")
    if mobile_symbol is not None and mobile_symbol not in atoms.get_chemical_symbols():
        raise InputError(
            f"structure {atoms.get_chemical_formula()} has no {mobile_symbol}: nothing to diffuse"
        )
    i, j, d = neighbor_list("ijd", atoms, 2.0)
    if len(d):
        radii = covalent_radii[atoms.numbers]
        rel = d / (radii[i] + radii[j])
        k = int(np.argmin(rel))
        if rel[k] < OVERLAP_FRACTION:
            raise InputError(
                f"atoms {i[k]} ({atoms[i[k]].symbol}) and {j[k]} ({atoms[j[k]].symbol}) are {d[k]:.2f} Å apart, "
                f"less than {OVERLAP_FRACTION}× the sum of their covalent radii: overlapping atoms"
            )


def _save_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data))
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _save_checkpoint(path: Path, atoms: Atoms, step: int, frames: int, rng: np.random.Generator, extra: dict) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(
        tmp,
        positions=atoms.get_positions(),
        momenta=atoms.get_momenta(),
        cell=atoms.cell.array,
        state=np.array(json.dumps({"step": step, "frames": frames, "rng": rng.bit_generator.state, **extra})),
    )
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _load_checkpoint(path: Path) -> tuple[dict, dict]:
    with np.load(path) as data:
        arrays = {k: data[k] for k in ("positions", "momenta", "cell")}
        state = json.loads(str(data["state"]))
    return arrays, state


def run_md(atoms: Atoms, seg: MDSegment, workdir: str | Path) -> MDOutcome:
    """Run (or continue) one temperature's MD in ``workdir``; ``atoms`` must carry a calculator.

    ``atoms`` is the starting structure; when a checkpoint exists it is replaced by the checkpoint.
    """
    seg.validate()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt = workdir / "checkpoint.npz"
    t0 = time.perf_counter()
    if atoms.calc is None:
        raise InputError("atoms need a calculator for MD")
    symbols = np.array(atoms.get_chemical_symbols())
    mobile = np.flatnonzero(symbols == seg.mobile_symbol)
    framework = np.flatnonzero(symbols != seg.mobile_symbol)
    if len(mobile) == 0:
        raise InputError(f"no {seg.mobile_symbol} atoms in {atoms.get_chemical_formula()}")
    fw_species = sorted(set(symbols[framework]))

    rng = np.random.default_rng(np.random.SeedSequence([seg.seed, int(round(seg.temperature_K * 1000))]))
    end = seg.equilibration_steps + seg.production_steps
    resumed_from = None
    if ckpt.exists():
        arrays, state = _load_checkpoint(ckpt)
        atoms.set_cell(arrays["cell"])
        atoms.set_positions(arrays["positions"])
        atoms.set_momenta(arrays["momenta"])
        if state.get("segment_key") != _segment_key(seg):
            raise InputError(
                f"{workdir} holds a checkpoint of different MD settings; use a fresh directory "
                "(only the production length may change between runs)"
            )
        rng.bit_generator.state = state["rng"]
        step, frames = int(state["step"]), int(state["frames"])
        resumed_from = step
        if FrameLog.exists(workdir / "frames"):
            log = FrameLog(workdir / "frames")
            log.truncate(frames)
        else:
            log = None
    else:
        check_structure(atoms, seg.mobile_symbol)
        MaxwellBoltzmannDistribution(atoms, temperature_K=seg.temperature_K, rng=rng)
        Stationary(atoms)
        step, frames, log = 0, 0, None

    eq_dyn = _thermostat(seg.equilibration_thermostat, atoms, seg, rng)
    prod_dyn = _thermostat(seg.thermostat, atoms, seg, rng)
    ref_path = workdir / "production_reference.npz"
    ref = None
    if ref_path.exists():
        with np.load(ref_path) as r:
            ref = {k: r[k] for k in r.files}
    e_start = None

    def status(status: MDStatus, reason: str) -> MDOutcome:
        _save_json_atomic(workdir / "status.json", {"status": status.value, "reason": reason, "step": step,
                                                     "frames": frames, "target_steps": end})
        return MDOutcome(status, reason, step, frames, time.perf_counter() - t0, resumed_from)

    while True:
        in_production = step >= seg.equilibration_steps
        if in_production and ref is None:
            pos = atoms.get_positions()
            ref = {"framework": pos[framework], "centroid": pos[framework].mean(axis=0) if len(framework) else np.zeros(3)}
            tmp = ref_path.with_name("production_reference.tmp.npz")
            np.savez(tmp, **ref)
            os.replace(tmp, ref_path)
        if in_production and (step - seg.equilibration_steps) % seg.sample_every_steps == 0:
            k = (step - seg.equilibration_steps) // seg.sample_every_steps
            if frames == k:
                if log is None:
                    log = FrameLog.create(workdir / "frames", {
                        "mobile_symbol": seg.mobile_symbol,
                        "mobile_indices": mobile.tolist(),
                        "framework_indices": framework.tolist(),
                        "framework_species": fw_species,
                        "symbols": symbols.tolist(),
                        "cell_A": atoms.cell.array.tolist(),
                        "volume_A3": float(atoms.get_volume()),
                        "temperature_K": seg.temperature_K,
                        "timestep_fs": seg.timestep_fs,
                        "sample_interval_fs": seg.timestep_fs * seg.sample_every_steps,
                        "segment": {**asdict(seg), "thermostat": seg.thermostat.value,
                                    "equilibration_thermostat": seg.equilibration_thermostat.value},
                    })
                try:
                    epot = float(atoms.get_potential_energy())
                except Exception as err:  # a model blowing up mid-run is an instability, not a crash
                    return status(MDStatus.UNSTABLE, f"energy evaluation failed at step {step}: {err}")
                pos = atoms.get_positions()
                ekin = float(atoms.get_kinetic_energy())
                temp = 2.0 * ekin / (3.0 * len(atoms) * units.kB)
                dmin, rel = min_distance(atoms)
                if e_start is None:
                    e_start = epot
                reason = _instability(pos, epot, e_start, temp, rel, dmin, len(atoms), seg.temperature_K)
                if reason:
                    return status(MDStatus.UNSTABLE, f"step {step}: {reason}")
                centroid = pos[framework].mean(axis=0) if len(framework) else np.zeros(3)
                values = {
                    "time_fs": k * seg.sample_every_steps * seg.timestep_fs,
                    "temperature_K": temp,
                    "epot_eV": epot,
                    "ekin_eV": ekin,
                    "centroid_x_A": centroid[0],
                    "centroid_y_A": centroid[1],
                    "centroid_z_A": centroid[2],
                    "min_distance_A": dmin,
                }
                if len(framework):
                    disp = pos[framework] - ref["framework"] - (centroid - ref["centroid"])
                    sq = (disp**2).sum(axis=1)
                    fw_symbols = symbols[framework]
                    for s in fw_species:
                        values[f"framework_msd_{s}_A2"] = float(sq[fw_symbols == s].mean())
                log.append(values, pos[mobile])
                frames += 1
        if step % seg.checkpoint_every_steps == 0 or step == end or step == seg.equilibration_steps:
            _save_checkpoint(ckpt, atoms, step, frames, rng, {"target_steps": end, "segment_key": _segment_key(seg)})
        if step >= end:
            break
        try:
            (prod_dyn if in_production else eq_dyn).step()
        except Exception as err:
            return status(MDStatus.UNSTABLE, f"MD step {step} failed: {err}")
        if not np.all(np.isfinite(atoms.get_momenta())):
            return status(MDStatus.UNSTABLE, f"non-finite velocities at step {step}")
        step += 1
        if step == seg.equilibration_steps:
            Stationary(atoms)  # production starts without centre-of-mass motion (saved in its checkpoint)
    return status(MDStatus.COMPLETED, "")


def _segment_key(seg: MDSegment) -> str:
    """Everything about a segment that must not change between a run and its continuation."""
    data = asdict(seg)
    data.pop("production_steps")
    return json.dumps({k: str(v) for k, v in sorted(data.items())})


def _instability(pos, epot, e_start, temp, rel_contact, dmin, n_atoms, target_K) -> str:
    if not np.all(np.isfinite(pos)) or not np.isfinite(epot):
        return "non-finite positions or energy"
    if rel_contact < CLOSE_CONTACT_FRACTION:
        return f"atoms {dmin:.2f} Å apart (below {CLOSE_CONTACT_FRACTION}× covalent radii)"
    if temp > 5.0 * target_K:
        return f"temperature {temp:.0f} K exceeds 5× the target {target_K:.0f} K"
    if abs(epot - e_start) / n_atoms > 2.0:
        return f"potential energy changed by {(epot - e_start) / n_atoms:.2f} eV/atom"
    return ""
