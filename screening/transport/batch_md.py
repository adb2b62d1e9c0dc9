"""Many MD segments advanced together on the lean engine (:mod:`mlip.engine`), one model call per step.

``run_md_batch`` is ``run_md`` for a list of jobs: each job keeps its own work directory with the same
checkpoint, frame log, ``status.json`` and instability verdicts as the ASE path (both drive
:class:`screening.transport.md.SegmentRun`), so analysis reads the results unchanged. Systems that
finish or go unstable leave the batch; the others go on.

Exact resumption: a system's last bits depend on the shape of the batch it ran in (BLAS), so the
batch's composition changes only at checkpoints of all its systems — whenever one system
checkpoints, leaves or joins, all do. A killed batch re-run on the same jobs then continues every
system bit for bit (on CPUs; GPU atomics make the last bits vary anyway). The checkpoints of one event are
written one system after another, so a kill can land between them; each records the event's number and its
members, keeps the previous one, and a re-run first takes every member of an event that not all its members
reached back to the event before (:func:`align_checkpoints`).

Batches are capped at ``batch_systems`` systems and ``max_batch_atoms`` atoms (:mod:`mlip.engine.tuning`
measures good values);
a batch that still does not fit in device memory is split in two, with a log message, and both
halves continue from their checkpoints.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from ase import Atoms

from mlip.engine import DEFAULT_SKIN_A, BatchTooLarge, Integrator, LeanMACE, MDBatch, SystemSpec
from mlip.errors import InputError
from screening.transport.md import (
    CHECKPOINT,
    PREVIOUS_CHECKPOINT,
    STAGED_CHECKPOINT,
    MDOutcome,
    MDSegment,
    MDStatus,
    SegmentRun,
    batch_stamp,
    min_distance,
)

log = logging.getLogger(__name__)

MIN_DISTANCE_CUTOFF_A = 3.0  # as md.min_distance


@dataclass
class MDJob:
    """One segment to run: starting structure (replaced by its checkpoint when one exists), settings, directory."""

    atoms: Atoms
    segment: MDSegment
    workdir: Path | str


# (jobs done so far counting each running system's fraction of its steps, number of jobs, systems running):
# monotonic over the whole call, whatever the batching
Progress = Callable[[float, int, int], None]


def chunk_jobs(sizes: Sequence[int], max_systems: int | None = None, max_atoms: int | None = None) -> list[list[int]]:
    """Consecutive groups of indices with at most ``max_systems`` members and ``max_atoms`` atoms
    (a system larger than ``max_atoms`` still runs, alone)."""
    for name, value in (("max_systems", max_systems), ("max_atoms", max_atoms)):
        if value is not None and value < 1:
            raise InputError(f"{name} must be ≥ 1, got {value}")
    groups, current, total = [], [], 0
    for index, n in enumerate(sizes):
        full = (max_systems is not None and len(current) >= max_systems) or \
            (max_atoms is not None and total + n > max_atoms)
        if current and full:
            groups.append(current)
            current, total = [], 0
        current.append(index)
        total += n
    if current:
        groups.append(current)
    return groups


def run_md_batch(jobs: Sequence[MDJob], model: LeanMACE, *, skin_A: float = DEFAULT_SKIN_A,
                 batch_systems: int | None = None, max_batch_atoms: int | None = None,
                 progress: Progress | None = None) -> list[MDOutcome]:
    """Run (or continue) every job; outcomes in the jobs' order. Bad input fails before any MD.

    Jobs run in consecutive batches of at most ``batch_systems`` systems and ``max_batch_atoms`` atoms
    (see :func:`mlip.engine.tuning.choose_md_batch`); None means no limit.
    """
    jobs = list(jobs)
    if len({Path(j.workdir).resolve() for j in jobs}) != len(jobs):
        raise InputError("two MD jobs share a work directory; give each its own")
    for job in jobs:
        job.segment.validate()
        model.species_index(job.atoms.numbers)  # uncovered elements: a clear error now, not mid-batch
    align_checkpoints([Path(j.workdir) for j in jobs])
    # start every job now, so that a bad structure or a mismatched checkpoint stops all before MD
    for job in jobs:
        SegmentRun(job.atoms.copy(), job.segment, job.workdir)
    outcomes: dict[int, MDOutcome] = {}
    pending = chunk_jobs([len(j.atoms) for j in jobs], batch_systems, max_batch_atoms)
    while pending:
        group = pending.pop(0)
        try:
            report = None
            if progress is not None:
                done_before = len(outcomes)

                def report(runs, done_in_group, done_before=done_before):
                    units = done_before + done_in_group + sum(min(run.step / max(run.end, 1), 1.0) for _, run in runs)
                    progress(units, len(jobs), len(runs))
            outcomes.update(_run_group(jobs, group, model, skin_A, report))
        except BatchTooLarge as err:
            if len(group) == 1:
                raise BatchTooLarge(f"one system of {len(jobs[group[0]].atoms)} atoms does not fit in the device's "
                                    f"memory on its own ({jobs[group[0]].workdir}): {err}") from err
            half = len(group) // 2
            log.warning("a batch of %d systems (%d atoms) does not fit in device memory; splitting it into batches "
                        "of %d and %d systems, which continue from their checkpoints. Cap it with max_batch_atoms "
                        "(now %s) or batch_systems (now %s) to avoid this. (%s)", len(group),
                        sum(len(jobs[i].atoms) for i in group), half, len(group) - half, max_batch_atoms,
                        batch_systems, err)
            pending[:0] = [group[:half], group[half:]]
    return [outcomes[i] for i in range(len(jobs))]


def align_checkpoints(workdirs: Sequence[Path]) -> list[Path]:
    """Undo the checkpoints of a batch event that a kill interrupted; returns the directories taken back.

    An event's members checkpoint one after another; if some of them (among ``workdirs``) still hold an
    older checkpoint, the ones that got the new one go back to their previous checkpoint (or, at the first
    event, to none), so that the batch resumes with the composition it had, bit for bit."""
    keys = {str(Path(w).resolve()): Path(w) for w in workdirs}
    stamps: dict[str, dict | None] = {}
    for key, wd in keys.items():
        (wd / STAGED_CHECKPOINT).unlink(missing_ok=True)  # staged, never promoted
        if not (wd / CHECKPOINT).exists() and (wd / PREVIOUS_CHECKPOINT).exists():
            os.replace(wd / PREVIOUS_CHECKPOINT, wd / CHECKPOINT)  # killed between the two renames
        stamps[key] = batch_stamp(wd)
    taken_back = []
    for key, stamp in stamps.items():
        if not stamp:
            continue
        behind = [m for m in stamp["members"] if m in stamps and (stamps[m] or {}).get("seq", -1) < stamp["seq"]]
        if not behind:
            continue
        wd = keys[key]
        if (wd / PREVIOUS_CHECKPOINT).exists():
            os.replace(wd / PREVIOUS_CHECKPOINT, wd / CHECKPOINT)
        else:
            (wd / CHECKPOINT).unlink()
        log.info("%s: back to the checkpoint before batch event %d, which %d other system(s) of its batch did not "
                 "reach before the run stopped", wd, stamp["seq"], len(behind))
        taken_back.append(wd)
    return taken_back


def _run_group(jobs: Sequence[MDJob], group: list[int], model: LeanMACE, skin_A: float,
               progress: Callable | None) -> dict[int, MDOutcome]:
    outcomes: dict[int, MDOutcome] = {}
    runs, specs = [], []
    for i in group:
        atoms = jobs[i].atoms.copy()
        run = SegmentRun(atoms, jobs[i].segment, jobs[i].workdir)
        seg = run.seg
        runs.append((i, run))
        specs.append(SystemSpec.from_atoms(atoms, integrator=Integrator(run.thermostat_now.value),
                                           temperature_K=seg.temperature_K, timestep_fs=seg.timestep_fs,
                                           time_constant_fs=seg.thermostat_time_constant_fs, rng=run.rng))
    batch = MDBatch(model, specs, skin_A=skin_A)
    checkpoint_all = True  # a (re)started batch begins with every system checkpointed where it stands
    seq = 1 + max((run.batch_stamp["seq"] for _, run in runs if run.batch_stamp), default=0)
    steps = 0
    while runs:
        positions = batch.all_positions()
        momenta = [batch.momenta_of(k) for k in range(len(runs))]
        leaving: dict[int, MDOutcome] = {}
        if any(run.wants_sample() for _, run in runs):
            epot, ekin = batch.potential_energies(), batch.kinetic_energies().cpu().numpy()
            dmin, rel = _min_distances(batch, runs, positions)
            for k, (_, run) in enumerate(runs):
                run.ensure_reference(positions[k])
                if run.wants_sample():
                    unstable = run.sample(positions[k], float(epot[k]), float(ekin[k]), float(dmin[k]), float(rel[k]))
                    if unstable is not None:
                        leaving[k] = unstable
        else:
            for k, (_, run) in enumerate(runs):
                run.ensure_reference(positions[k])
        staying = [k for k, (_, run) in enumerate(runs) if k not in leaving and not run.done]
        if checkpoint_all or len(staying) < len(runs) or any(run.wants_checkpoint() for _, run in runs):
            event = {"seq": seq, "members": [str(Path(jobs[i].workdir).resolve())
                                             for k, (i, _) in enumerate(runs) if k not in leaving]}
            for k, (_, run) in enumerate(runs):
                if k not in leaving:
                    run.checkpoint(positions[k], momenta[k], batch=event)
            seq += 1
        checkpoint_all = False
        for k, (_, run) in enumerate(runs):
            if k not in leaving and run.done:
                leaving[k] = run.finish(MDStatus.COMPLETED, "")
        for k, outcome in leaving.items():
            outcomes[runs[k][0]] = outcome
        if not staying:
            break
        if len(staying) < len(runs):
            batch.select(staying)
            runs = [runs[k] for k in staying]
        for k, (_, run) in enumerate(runs):
            batch.set_integrator(k, Integrator(run.thermostat_now.value))
        try:
            batch.step()
        except BatchTooLarge:
            raise
        except Exception as err:
            # the engine itself failing is a bug unless a system's state has gone non-finite: then that
            # system failed (as ``run_md`` reports a failed step) and the others restart from their checkpoints
            bad = [k for k in range(len(runs)) if not (np.all(np.isfinite(batch.positions(k)))
                                                       and np.all(np.isfinite(batch.momenta_of(k))))]
            if not bad:
                raise
            for k in bad:
                i, run = runs[k]
                outcomes[i] = run.finish(MDStatus.UNSTABLE, f"MD step {run.step} failed: {err}")
            rest = [i for k, (i, _) in enumerate(runs) if k not in bad]
            if rest:
                outcomes.update(_run_group(jobs, rest, model, skin_A, progress))
            return outcomes
        steps += 1
        finite = [bool(np.all(np.isfinite(batch.momenta_of(k)))) for k in range(len(runs))]
        for k, (i, run) in enumerate(runs):
            if not finite[k]:
                outcomes[i] = run.finish(MDStatus.UNSTABLE, f"non-finite velocities at step {run.step}")
        if not all(finite):
            keep = [k for k in range(len(runs)) if finite[k]]
            if not keep:
                break
            batch.select(keep)
            runs = [runs[k] for k in keep]
            checkpoint_all = True
        for k, (_, run) in enumerate(runs):
            if run.advance():
                batch.remove_com_momentum(k)  # as run_md's Stationary when production starts
        if progress is not None and steps % 10 == 0:
            progress(runs, len(outcomes))
    return outcomes


def _min_distances(batch: MDBatch, runs, positions) -> tuple[np.ndarray, np.ndarray]:
    """Per system: shortest distance and shortest distance relative to covalent radii, as md.min_distance."""
    if batch.model.r_max_A >= MIN_DISTANCE_CUTOFF_A:
        return batch.min_distances()
    out = [min_distance(Atoms(run.symbols, positions=positions[k], cell=run.cell, pbc=True), MIN_DISTANCE_CUTOFF_A)
           for k, (_, run) in enumerate(runs)]
    return np.array([d for d, _ in out]), np.array([r for _, r in out])


__all__ = ["MDJob", "run_md_batch", "chunk_jobs"]
