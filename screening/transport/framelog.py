"""Compact, crash-safe MD trajectories: mobile-ion positions plus per-frame framework summaries.

A frame log is a directory with ``meta.json`` (written once), ``frames.f64`` (fixed-size float64
records: time, temperature, energies, framework centroid, framework MSD per species, shortest
interatomic distance) and ``mobile.f32`` (unwrapped Cartesian positions of the mobile ions, float32).
Fixed-size records make resuming exact: after a crash the files are cut back to the frame count of
the last checkpoint, so no frame is ever duplicated or half-written.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlip.errors import InputError
from mlip.util import atomic_write_text

FORMAT = "ionscreen-framelog/1"
_BASE_FIELDS = ["time_fs", "temperature_K", "epot_eV", "ekin_eV", "centroid_x_A", "centroid_y_A", "centroid_z_A", "min_distance_A"]


@dataclass
class FrameData:
    """A frame log read into memory."""

    meta: dict
    times_fs: np.ndarray
    temperature_K: np.ndarray
    epot_eV: np.ndarray
    ekin_eV: np.ndarray
    framework_centroid_A: np.ndarray  # (frames, 3)
    framework_msd_A2: np.ndarray  # (frames, n_framework_species)
    min_distance_A: np.ndarray
    mobile_A: np.ndarray  # (frames, n_mobile, 3) float64

    @property
    def n_frames(self) -> int:
        return len(self.times_fs)


class FrameLog:
    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.meta = json.loads((self.dir / "meta.json").read_text())
        if self.meta.get("format") != FORMAT:
            raise InputError(f"{self.dir} is not an ionscreen frame log (format {self.meta.get('format')!r})")
        self.fields = self.meta["fields"]
        self.n_mobile = len(self.meta["mobile_indices"])
        self._rec64 = len(self.fields) * 8
        self._rec32 = self.n_mobile * 3 * 4

    @classmethod
    def create(cls, directory: str | Path, meta: dict) -> "FrameLog":
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta = dict(meta, format=FORMAT)
        meta["fields"] = _BASE_FIELDS + [f"framework_msd_{s}_A2" for s in meta["framework_species"]]
        for name in ("frames.f64", "mobile.f32"):  # the data files first: meta.json says the log exists
            (d / name).write_bytes(b"")
        atomic_write_text(d / "meta.json", json.dumps(meta, indent=1))
        return cls(d)

    @staticmethod
    def exists(directory: str | Path) -> bool:
        return (Path(directory) / "meta.json").is_file()

    @property
    def n_frames(self) -> int:
        n64 = (self.dir / "frames.f64").stat().st_size // self._rec64
        n32 = (self.dir / "mobile.f32").stat().st_size // self._rec32 if self._rec32 else n64
        return min(n64, n32)

    def truncate(self, n_frames: int) -> None:
        """Cut both files back to ``n_frames`` complete frames (used when resuming)."""
        for name, rec in (("frames.f64", self._rec64), ("mobile.f32", self._rec32)):
            with open(self.dir / name, "r+b") as fh:
                fh.truncate(n_frames * rec)
                fh.flush()
                os.fsync(fh.fileno())

    def append(self, values: dict[str, float], mobile_A: np.ndarray) -> None:
        record = np.array([values[f] for f in self.fields], dtype=np.float64)
        with open(self.dir / "frames.f64", "ab") as fh:
            fh.write(record.tobytes())
        with open(self.dir / "mobile.f32", "ab") as fh:
            fh.write(np.asarray(mobile_A, dtype=np.float32).tobytes())

    def read(self) -> FrameData:
        n = self.n_frames
        rec = np.fromfile(self.dir / "frames.f64", dtype=np.float64, count=n * len(self.fields)).reshape(n, len(self.fields))
        mobile = np.fromfile(self.dir / "mobile.f32", dtype=np.float32, count=n * self.n_mobile * 3)
        col = {f: i for i, f in enumerate(self.fields)}
        fw = [col[f] for f in self.fields if f.startswith("framework_msd_")]
        return FrameData(
            meta=self.meta,
            times_fs=rec[:, col["time_fs"]],
            temperature_K=rec[:, col["temperature_K"]],
            epot_eV=rec[:, col["epot_eV"]],
            ekin_eV=rec[:, col["ekin_eV"]],
            framework_centroid_A=rec[:, [col["centroid_x_A"], col["centroid_y_A"], col["centroid_z_A"]]],
            framework_msd_A2=rec[:, fw],
            min_distance_A=rec[:, col["min_distance_A"]],
            mobile_A=mobile.reshape(n, self.n_mobile, 3).astype(np.float64),
        )
