"""Resumable NVT molecular dynamics on ASE: equilibration, then production that writes a frame log.

``run_md`` is a plain function of (atoms with a calculator, an ``MDSegment``, a work directory). It
checkpoints positions, momenta, the random-number generator and the frame count atomically; when
re-run in the same directory it continues *to* the target step count from the last checkpoint,
cutting the frame log back to the checkpoint, so a killed run and an uninterrupted one produce the
same frames. Instabilities (NaN, atoms too close, runaway temperature or energy) stop the segment
with a reason instead of producing numbers. The bookkeeping (start or resume, frames, checkpoints,
instability) lives in ``SegmentRun``, which the lean engine's batch runner
(:mod:`screening.transport.batch_md`) drives too, so both paths write the same files.
"""

from __future__ import annotations

import enum
import io
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
from mlip.util import atomic_write_bytes, atomic_write_text
from screening.transport.framelog import FrameLog
from screening.transport.polyanions import polyanion_rotors
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
    atomic_write_text(path, json.dumps(data))


def _npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _save_checkpoint(path: Path, positions: np.ndarray, momenta: np.ndarray, cell: np.ndarray, step: int, frames: int,
                     rng: np.random.Generator, extra: dict) -> None:
    atomic_write_bytes(path, _npz_bytes(
        positions=positions,
        momenta=momenta,
        cell=cell,
        state=np.array(json.dumps({"step": step, "frames": frames, "rng": rng.bit_generator.state, **extra})),
    ))


CHECKPOINT = "checkpoint.npz"
PREVIOUS_CHECKPOINT = "checkpoint.prev.npz"  # kept by batch checkpoints (see SegmentRun.checkpoint)
STAGED_CHECKPOINT = "checkpoint.next.npz"


def _load_checkpoint(path: Path) -> tuple[dict, dict]:
    with np.load(path) as data:
        arrays = {k: data[k] for k in ("positions", "momenta", "cell")}
        state = json.loads(str(data["state"]))
    return arrays, state


def batch_stamp(workdir: Path) -> dict | None:
    """The batch event (number, members) of the checkpoint in ``workdir``; None without one or outside a batch."""
    ckpt = Path(workdir) / CHECKPOINT
    if not ckpt.exists():
        return None
    with np.load(ckpt) as data:
        return json.loads(str(data["state"])).get("batch")


class SegmentRun:
    """The bookkeeping of one segment in its work directory, apart from the dynamics that advance it.

    Starting sets ``atoms`` to the checkpoint (or draws Maxwell–Boltzmann velocities); then, each step,
    the driver asks :meth:`wants_sample` / :meth:`sample`, :meth:`wants_checkpoint` / :meth:`checkpoint`,
    stops when :attr:`done`, advances its dynamics with :attr:`thermostat_now` and calls :meth:`advance`.
    ``run_md`` drives one with ASE; :mod:`screening.transport.batch_md` drives many with the lean engine,
    so both write the same checkpoints, frame logs and instability verdicts.
    """

    def __init__(self, atoms: Atoms, seg: MDSegment, workdir: str | Path):
        seg.validate()
        self.seg = seg
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ckpt = self.workdir / CHECKPOINT
        self.t0 = time.perf_counter()
        self.symbols = np.array(atoms.get_chemical_symbols())
        self.mobile = np.flatnonzero(self.symbols == seg.mobile_symbol)
        self.framework = np.flatnonzero(self.symbols != seg.mobile_symbol)
        if len(self.mobile) == 0:
            raise InputError(f"no {seg.mobile_symbol} atoms in {atoms.get_chemical_formula()}")
        self.fw_species = sorted(set(self.symbols[self.framework]))
        self.n_atoms = len(atoms)
        self.rng = np.random.default_rng(np.random.SeedSequence([seg.seed, int(round(seg.temperature_K * 1000))]))
        self.end = seg.equilibration_steps + seg.production_steps
        self.resumed_from = None
        self.batch_stamp: dict | None = None  # the batch event of the checkpoint this run starts from
        if self.ckpt.exists():
            arrays, state = _load_checkpoint(self.ckpt)
            atoms.set_cell(arrays["cell"])
            atoms.set_positions(arrays["positions"])
            atoms.set_momenta(arrays["momenta"])
            if state.get("segment_key") != _segment_key(seg):
                raise InputError(
                    f"{self.workdir} holds a checkpoint of different MD settings; use a fresh directory "
                    "(only the production length may change between runs)"
                )
            self.rng.bit_generator.state = state["rng"]
            self.step, self.frames = int(state["step"]), int(state["frames"])
            self.resumed_from = self.step
            self.batch_stamp = state.get("batch")
            if FrameLog.exists(self.workdir / "frames"):
                self.log = FrameLog(self.workdir / "frames")
                self.log.truncate(self.frames)
            else:
                self.log = None
        else:
            check_structure(atoms, seg.mobile_symbol)
            MaxwellBoltzmannDistribution(atoms, temperature_K=seg.temperature_K, rng=self.rng)
            Stationary(atoms)
            self.step, self.frames, self.log = 0, 0, None
        self.cell = atoms.cell.array.copy()
        self.volume_A3 = float(atoms.get_volume())
        self.ref_path = self.workdir / "production_reference.npz"
        self.ref = None
        if self.ref_path.exists():
            with np.load(self.ref_path) as r:
                self.ref = {k: r[k] for k in r.files}
        self.e_start = None

    @property
    def in_production(self) -> bool:
        return self.step >= self.seg.equilibration_steps

    @property
    def done(self) -> bool:
        return self.step >= self.end

    @property
    def thermostat_now(self) -> Thermostat:
        return self.seg.thermostat if self.in_production else self.seg.equilibration_thermostat

    def ensure_reference(self, positions: np.ndarray) -> None:
        """At the start of production, store the framework positions that framework MSDs refer to."""
        if self.in_production and self.ref is None:
            fw = self.framework
            self.ref = {"framework": positions[fw], "centroid": positions[fw].mean(axis=0) if len(fw) else np.zeros(3)}
            atomic_write_bytes(self.ref_path, _npz_bytes(**self.ref))

    def wants_sample(self) -> bool:
        seg = self.seg
        if not self.in_production or (self.step - seg.equilibration_steps) % seg.sample_every_steps:
            return False
        return self.frames == (self.step - seg.equilibration_steps) // seg.sample_every_steps

    def sample(self, positions: np.ndarray, epot: float, ekin: float, dmin: float, rel: float) -> MDOutcome | None:
        """Check the frame for instability (an outcome if unstable) and append it to the frame log."""
        seg = self.seg
        self.ensure_reference(positions)
        k = (self.step - seg.equilibration_steps) // seg.sample_every_steps
        if self.log is None:
            self.log = FrameLog.create(self.workdir / "frames", {
                "mobile_symbol": seg.mobile_symbol,
                "mobile_indices": self.mobile.tolist(),
                "framework_indices": self.framework.tolist(),
                "framework_species": self.fw_species,
                "framework_rotors": polyanion_rotors(self.symbols[self.framework], self.ref["framework"], self.cell)
                if len(self.framework) else {},
                "symbols": self.symbols.tolist(),
                "cell_A": self.cell.tolist(),
                "volume_A3": self.volume_A3,
                "temperature_K": seg.temperature_K,
                "timestep_fs": seg.timestep_fs,
                "sample_interval_fs": seg.timestep_fs * seg.sample_every_steps,
                "segment": {**asdict(seg), "thermostat": seg.thermostat.value,
                            "equilibration_thermostat": seg.equilibration_thermostat.value},
            })
        temp = 2.0 * ekin / (3.0 * self.n_atoms * units.kB)
        if self.e_start is None:
            self.e_start = epot
        reason = _instability(positions, epot, self.e_start, temp, rel, dmin, self.n_atoms, seg.temperature_K)
        if reason:
            return self.finish(MDStatus.UNSTABLE, f"step {self.step}: {reason}")
        fw = self.framework
        centroid = positions[fw].mean(axis=0) if len(fw) else np.zeros(3)
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
        if len(fw):
            disp = positions[fw] - self.ref["framework"] - (centroid - self.ref["centroid"])
            sq = (disp**2).sum(axis=1)
            fw_symbols = self.symbols[fw]
            for s in self.fw_species:
                values[f"framework_msd_{s}_A2"] = float(sq[fw_symbols == s].mean())
        self.log.append(values, positions[self.mobile])
        self.frames += 1
        return None

    def wants_checkpoint(self) -> bool:
        seg = self.seg
        return self.step % seg.checkpoint_every_steps == 0 or self.step == self.end or self.step == seg.equilibration_steps

    def checkpoint(self, positions: np.ndarray, momenta: np.ndarray, batch: dict | None = None) -> None:
        """Save the state. ``batch`` (from the batch driver: the event's sequence number and its members)
        also keeps the previous checkpoint as ``checkpoint.prev.npz``, so that a batch killed halfway
        through writing one event's checkpoints can go back to the event before (see batch_md)."""
        extra = {"target_steps": self.end, "segment_key": _segment_key(self.seg)}
        if batch is None:
            _save_checkpoint(self.ckpt, positions, momenta, self.cell, self.step, self.frames, self.rng, extra)
            return
        staged = self.ckpt.with_name(STAGED_CHECKPOINT)
        _save_checkpoint(staged, positions, momenta, self.cell, self.step, self.frames, self.rng,
                         {**extra, "batch": batch})
        if self.ckpt.exists():
            os.replace(self.ckpt, self.ckpt.with_name(PREVIOUS_CHECKPOINT))
        os.replace(staged, self.ckpt)

    def advance(self) -> bool:
        """Count a step taken; True when production starts now (the driver then removes the
        centre-of-mass momentum, which the checkpoint at this step then holds)."""
        self.step += 1
        return self.step == self.seg.equilibration_steps

    def finish(self, status: MDStatus, reason: str) -> MDOutcome:
        _save_json_atomic(self.workdir / "status.json", {"status": status.value, "reason": reason, "step": self.step,
                                                          "frames": self.frames, "target_steps": self.end})
        return MDOutcome(status, reason, self.step, self.frames, time.perf_counter() - self.t0, self.resumed_from)


def run_md(atoms: Atoms, seg: MDSegment, workdir: str | Path) -> MDOutcome:
    """Run (or continue) one temperature's MD in ``workdir``; ``atoms`` must carry a calculator.

    ``atoms`` is the starting structure; when a checkpoint exists it is replaced by the checkpoint.
    """
    seg.validate()
    if atoms.calc is None:
        raise InputError("atoms need a calculator for MD")
    run = SegmentRun(atoms, seg, workdir)
    eq_dyn = _thermostat(seg.equilibration_thermostat, atoms, seg, run.rng)
    prod_dyn = _thermostat(seg.thermostat, atoms, seg, run.rng)

    while True:
        run.ensure_reference(atoms.get_positions())
        if run.wants_sample():
            try:
                epot = float(atoms.get_potential_energy())
            except Exception as err:  # a model blowing up mid-run is an instability, not a crash
                return run.finish(MDStatus.UNSTABLE, f"energy evaluation failed at step {run.step}: {err}")
            dmin, rel = min_distance(atoms)
            unstable = run.sample(atoms.get_positions(), epot, float(atoms.get_kinetic_energy()), dmin, rel)
            if unstable is not None:
                return unstable
        if run.wants_checkpoint():
            run.checkpoint(atoms.get_positions(), atoms.get_momenta())
        if run.done:
            break
        try:
            (prod_dyn if run.in_production else eq_dyn).step()
        except Exception as err:
            return run.finish(MDStatus.UNSTABLE, f"MD step {run.step} failed: {err}")
        if not np.all(np.isfinite(atoms.get_momenta())):
            return run.finish(MDStatus.UNSTABLE, f"non-finite velocities at step {run.step}")
        if run.advance():
            Stationary(atoms)  # production starts without centre-of-mass motion (saved in its checkpoint)
    return run.finish(MDStatus.COMPLETED, "")


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
