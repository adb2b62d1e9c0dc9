"""The ``frames`` validation set: energy, force and stress errors of a model on a labelled dataset split
(``ionscreen data import`` output), through the model's own ASE calculator, so every family is measured the same way.

It lives in ``training`` (not ``screening.validation``) because it reuses :mod:`training.evaluate` (error tables with
bootstrap intervals, parity plots), and ``screening`` may import only ``mlip``. An entry is one frame; its record holds
the model's energy, forces and stress, and the errors are computed against the dataset's labels when summarising.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mlip.errors import InputError, IonscreenError
from screening.validation.base import EntryStatus, RunContext, ValidationEntry


class FramesSet:
    """Errors against the labels of one split of a dataset directory."""

    name = "frames"

    def __init__(self, dataset: str | Path, split: str = "test"):
        from training.data import Split, load_dataset
        from training.evaluate import _check_labels, is_isolated_atom

        self.dataset_dir = Path(dataset)
        if not self.dataset_dir.is_dir():
            raise InputError(f"frames set: dataset directory {self.dataset_dir} does not exist "
                             "(give --dataset DIR, a directory made by `ionscreen data import`)")
        try:
            self.split = Split(split).value
        except ValueError as err:
            raise InputError(f"unknown split {split!r}; use one of {', '.join(s.value for s in Split)}") from err
        self.dataset = load_dataset(self.dataset_dir)
        self.frames = [a for a in self.dataset.split(self.split) if not is_isolated_atom(a)]
        if not self.frames:
            raise InputError(f"the {self.split} split of {self.dataset_dir} has no frames "
                             f"({self.dataset.manifest.split_counts}); choose another --split")
        _check_labels(self.frames, str(self.dataset_dir))

    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self.dataset.hash}|{self.split}|single_point-float64".encode()).hexdigest()

    def describe(self) -> dict[str, Any]:
        return {"dataset": str(self.dataset_dir), "dataset_hash": self.dataset.hash, "split": self.split,
                "n_frames": len(self.frames), "dtype": "float64"}

    def entries(self, *, limit: int | None = None, full: bool = False) -> list[ValidationEntry]:
        """Every frame of the split in dataset order (the CPU subset and ``full`` are the same: frames are cheap)."""
        frames = self.frames if limit is None else self.frames[:limit]
        return [ValidationEntry(key=f"{self.split}:{i:06d}",
                                label=f"{self.split} frame {i} ({a.info.get('config_type', 'Default')}, {len(a)} atoms)",
                                elements=frozenset(a.get_chemical_symbols()),
                                data={"index": i, "n_atoms": len(a), "config_type": str(a.info.get("config_type", "Default"))})
                for i, a in enumerate(frames)]

    def run_entry(self, entry: ValidationEntry, context: RunContext) -> dict[str, Any]:
        from ase import Atoms
        from ase.calculators.calculator import PropertyNotImplementedError

        from mlip.calculators import Task

        t0 = time.perf_counter()
        frame = self.frames[int(entry.data["index"])]
        atoms = Atoms(numbers=frame.numbers, positions=frame.positions, cell=frame.cell, pbc=frame.pbc)
        atoms.calc = context.calculator(task=Task.SINGLE_POINT, dtype="float64")
        try:
            energy = float(atoms.get_potential_energy())
            forces = atoms.get_forces()
            stress = None
            if bool(np.all(atoms.pbc)) and atoms.cell.rank == 3:
                try:
                    stress = [float(v) for v in atoms.get_stress(voigt=True)]
                except PropertyNotImplementedError:
                    stress = None
        except IonscreenError as err:
            return {"status": EntryStatus.FAILED.value, **entry.data, "error": str(err)[:500]}
        if not (np.isfinite(energy) and np.all(np.isfinite(forces))):
            return {"status": EntryStatus.FAILED.value, **entry.data, "error": "non-finite energy or forces"}
        from training.evaluate import ENERGY_KEY, FORCES_KEY, MEV

        d_energy = (energy - float(frame.info[ENERGY_KEY])) / len(frame) * MEV
        f_mae = float(np.mean(np.abs(forces - np.asarray(frame.arrays[FORCES_KEY])))) * MEV
        return {"status": EntryStatus.OK.value, **entry.data, "energy_eV": energy,
                "forces_eV_A": np.round(forces, 8).tolist(), "stress_eV_A3": stress,
                "shown": f"ΔE {d_energy:+.2f} meV/atom, F MAE {f_mae:.0f} meV/Å", "wall_s": time.perf_counter() - t0}

    def _joined(self, records: Sequence[Mapping[str, Any]]):
        from training.evaluate import Predictions

        ok = [r for r in records if r.get("status") == EntryStatus.OK.value]
        frames = [self.frames[int(r["index"])] for r in ok]
        pred = Predictions(
            energies_eV=np.array([r["energy_eV"] for r in ok], dtype=float),
            forces_eV_A=[np.asarray(r["forces_eV_A"], dtype=float).reshape(-1, 3) for r in ok],
            stresses_eV_A3=np.array([r["stress_eV_A3"] if r.get("stress_eV_A3") else [np.nan] * 6 for r in ok],
                                    dtype=float).reshape(-1, 6))
        return frames, pred

    def summarise(self, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        from training.evaluate import error_tables

        counts = {s.value: sum(r.get("status") == s.value for r in records) for s in EntryStatus}
        out: dict[str, Any] = {"n_entries": len(records), "n_ok": counts["ok"], "n_failed": counts["failed"],
                               "n_uncovered": counts["uncovered"]}
        frames, pred = self._joined(records)
        if not frames:
            return out
        overall, per_element, per_config = error_tables(frames, pred)

        def est(e, n):
            return None if e is None else {"value": e.value, "ci95": None if e.ci95_low is None
                                           else [e.ci95_low, e.ci95_high], "n": n}

        for name in ("energy_mae_meV_atom", "energy_rmse_meV_atom", "force_mae_meV_A", "force_rmse_meV_A"):
            out[name] = est(getattr(overall, name), overall.n_frames)
        for name in ("stress_mae_meV_A3", "stress_rmse_meV_A3"):
            out[name] = est(getattr(overall, name), overall.n_stress_frames)
        out["force_mae_meV_A_per_element"] = {el: es.force_mae_meV_A.value for el, es in per_element.items()
                                              if es.force_mae_meV_A is not None}
        out["energy_mae_meV_atom_per_config_type"] = {ct: es.energy_mae_meV_atom.value for ct, es in per_config.items()
                                                      if es.energy_mae_meV_atom is not None}
        out["rule"] = ("training.evaluate conventions: energy per atom per frame, forces per Cartesian component, "
                       "stress per Voigt component; 95% bootstrap intervals over frames")
        return out

    def plot(self, records: Sequence[Mapping[str, Any]], out_dir: Path, *, title: str) -> list[Path]:
        from training.evaluate import parity_plots

        frames, pred = self._joined(records)
        if not frames:
            return []
        return list(parity_plots(frames, pred, out_dir, title=title).values())
