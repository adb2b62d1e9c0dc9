"""Batched MACE inference: many structures (e.g. the images of NEB bands) in one model call.

The structures become one disjoint-union graph through mace-torch's own data pipeline
(``config_from_atoms`` → ``AtomicData`` → ``torch_geometric.Batch``), so the model sees exactly what
``MACECalculator`` would feed it, just several graphs at once. Whether batching is faster depends on
the device (on small CPUs it is often slower, on GPUs it is the main win), so the batch size is
measured on the actual structures and cached per (device, model hash, dtype, size bucket) in
``$IONSCREEN_HOME/batch_size_cache.json`` — or given by the caller — never assumed.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import platform
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.data import chemical_symbols

from mlip._mace import import_mace
from mlip.errors import InputError, ModelDomainError, SimulationFailed
from mlip.util import atomic_write_json, file_lock, synchronize

CACHE_FILE_NAME = "batch_size_cache.json"


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Energy and forces of one structure."""

    energy_eV: float
    forces_eV_A: np.ndarray  # (n_atoms, 3)


class BatchedMACE:
    """A MACE model that evaluates a list of ASE Atoms in one forward call per batch.

    Energies and forces only (no stress): that is what relaxations at fixed cell and NEB need.
    """

    def __init__(
        self,
        module,
        *,
        device: str = "cpu",
        dtype: str = "float64",
        head: str | None = None,
        model_ref: str | None = None,
        model_sha256: str | None = None,
    ):
        import_mace()
        import torch
        from mace.tools import utils

        if dtype not in ("float32", "float64"):
            raise InputError(f"dtype must be float32 or float64, got {dtype!r}")
        if not hasattr(module, "atomic_numbers") or not hasattr(module, "r_max"):
            raise InputError(f"{type(module).__name__} is not a MACE model (no atomic_numbers / r_max)")
        import copy

        # The caller's module is left untouched (dtype conversion and device moves are in place).
        self.module = copy.deepcopy(module).to(device=device, dtype=getattr(torch, dtype))
        self.module.eval()
        for param in self.module.parameters():
            param.requires_grad_(False)
        self.device = device
        self.dtype = dtype
        self.torch_dtype = getattr(torch, dtype)
        self.atomic_numbers = tuple(int(z) for z in self.module.atomic_numbers)
        self.z_table = utils.AtomicNumberTable(list(self.atomic_numbers))
        self.r_max_A = float(self.module.r_max)
        self.heads = list(getattr(self.module, "heads", None) or ["Default"])
        self.head = _choose_head(self.heads, head)
        self.model_ref = model_ref
        self.model_sha256 = model_sha256
        self.n_model_calls = 0
        self.n_structures_evaluated = 0

    @classmethod
    def from_loaded(cls, loaded, *, device: str = "auto", dtype: str = "float64", head: str | None = None):
        """From a :class:`mlip.loader.LoadedModel` (keeps its reference and SHA-256 for provenance)."""
        from mlip.calculators import resolve_device

        return cls(loaded.module, device=resolve_device(device), dtype=dtype, head=head,
                   model_ref=loaded.ref, model_sha256=loaded.sha256)

    @property
    def device_name(self) -> str:
        return describe_device(self.device)

    def check_elements(self, atoms_list: Iterable) -> None:
        covered = set(self.atomic_numbers)
        missing = sorted({int(z) for atoms in atoms_list for z in atoms.numbers} - covered)
        if missing:
            raise ModelDomainError(
                f"model {self.model_ref or '(in memory)'} does not cover element(s) "
                f"{', '.join(chemical_symbols[z] for z in missing)}; it covers "
                f"{', '.join(chemical_symbols[z] for z in sorted(covered))}"
            )

    def _graph(self, atoms):
        from mace import data as mace_data

        config = mace_data.config_from_atoms(atoms, key_specification=mace_data.KeySpecification(),
                                             head_name=self.head)
        return mace_data.AtomicData.from_config(config, z_table=self.z_table, cutoff=self.r_max_A,
                                                heads=self.heads)

    def evaluate(self, atoms_list: Sequence) -> list[Evaluation]:
        """Energies and forces of every structure in ONE model call over the union of their graphs."""
        import torch
        from mace.tools import torch_geometric, torch_tools

        atoms_list = list(atoms_list)
        if not atoms_list:
            return []
        self.check_elements(atoms_list)
        with torch_tools.default_dtype(self.dtype):
            graphs = [self._graph(atoms) for atoms in atoms_list]
        batch = torch_geometric.Batch.from_data_list(graphs).to(self.device)
        for key in batch.keys:
            value = batch[key]
            if torch.is_tensor(value) and torch.is_floating_point(value):
                batch[key] = value.to(dtype=self.torch_dtype)
        out = self.module(batch.to_dict(), compute_force=True, compute_stress=False, training=False)
        self.n_model_calls += 1
        self.n_structures_evaluated += len(atoms_list)
        energies = out["energy"].detach().cpu().numpy().astype(np.float64)
        forces = out["forces"].detach().cpu().numpy().astype(np.float64)
        if not (np.all(np.isfinite(energies)) and np.all(np.isfinite(forces))):
            raise SimulationFailed("MACE returned non-finite energies or forces (atoms too close?)")
        ptr = batch["ptr"].cpu().numpy()
        return [Evaluation(float(energies[i]), forces[ptr[i]:ptr[i + 1]].copy()) for i in range(len(atoms_list))]

    def evaluate_in_batches(self, atoms_list: Sequence, batch_size: int) -> list[Evaluation]:
        """Evaluate in consecutive chunks of ``batch_size`` structures (one model call per chunk)."""
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        atoms_list = list(atoms_list)
        results: list[Evaluation] = []
        for start in range(0, len(atoms_list), batch_size):
            results.extend(self.evaluate(atoms_list[start:start + batch_size]))
        return results

    def calculator(self) -> "BatchedImageCalculator":
        """An ASE calculator for a single structure (a group of one) backed by this model."""
        return ImageGroup(self, batch_size=1).new_calculator()


def _choose_head(heads: list[str], requested: str | None) -> str:
    if requested is not None:
        if requested not in heads:
            raise InputError(f"model has no head {requested!r}; available heads: {', '.join(heads)}")
        return requested
    if len(heads) == 1:
        return heads[0]
    for head in heads:
        if head.lower() == "default":
            return head
    raise InputError(f"the model has several heads ({', '.join(heads)}); name the one to use")


class BatchedImageCalculator(Calculator):
    """ASE calculator proxy: asking any member of an :class:`ImageGroup` computes every stale member.

    ASE's NEB asks the images one after another; the first request evaluates all images whose
    positions changed, in batches, and the later requests find their results already there.
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, group: "ImageGroup"):
        super().__init__()
        self.group = group

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.group.compute_stale(requester=self)


class ImageGroup:
    """Structures (e.g. the moving images of a band) whose calculators are evaluated together."""

    def __init__(self, model: BatchedMACE, batch_size: int):
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.batch_size = int(batch_size)
        self._members: list[tuple[object, BatchedImageCalculator]] = []
        self.n_rounds = 0

    def new_calculator(self) -> BatchedImageCalculator:
        calc = BatchedImageCalculator(self)
        self._members.append((None, calc))
        return calc

    def attach(self, images: Sequence) -> None:
        """Give each image its own proxy calculator in this group."""
        for atoms in images:
            calc = BatchedImageCalculator(self)
            atoms.calc = calc
            self._members.append((atoms, calc))

    def compute_stale(self, requester: BatchedImageCalculator) -> None:
        pending: list[tuple[object, BatchedImageCalculator]] = []
        for atoms, calc in self._members:
            if calc is requester:
                pending.append((calc.atoms, calc))  # Calculator.calculate just stored a copy
            elif atoms is not None and atoms.calc is calc and calc.calculation_required(atoms, ["energy", "forces"]):
                pending.append((atoms, calc))
        evaluations = self.model.evaluate_in_batches([atoms for atoms, _ in pending], self.batch_size)
        self.n_rounds += 1
        for (atoms, calc), ev in zip(pending, evaluations):
            if calc is not requester:
                calc.atoms = atoms.copy()
            calc.results = {"energy": ev.energy_eV, "free_energy": ev.energy_eV, "forces": ev.forces_eV_A}


# --- choosing the batch size from a measurement ---------------------------------------------------


def describe_device(device: str) -> str:
    """A stable name for the hardware a measurement was made on."""
    import torch

    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        return f"cuda:{torch.cuda.get_device_name(index)}"
    return f"cpu:{platform.machine()}:{os.cpu_count()}cpus:{torch.get_num_threads()}threads"


def size_bucket(n_atoms: int) -> int:
    """Round the structure size up to a power of two, so similar bands share a measurement."""
    return 1 << max(0, int(np.ceil(np.log2(max(1, n_atoms)))))


def candidate_batch_sizes(n_structures: int) -> list[int]:
    sizes = {1, n_structures}
    size = 2
    while size < n_structures:
        sizes.add(size)
        size *= 2
    return sorted(s for s in sizes if 1 <= s <= max(1, n_structures))


@dataclasses.dataclass(frozen=True)
class BatchSizeChoice:
    """The batch size a run uses and where it came from (``measured``, ``cache`` or ``configured``)."""

    batch_size: int
    source: str
    images_per_s: dict[int, float]
    key: str

    def as_dict(self) -> dict:
        return {"batch_size": self.batch_size, "source": self.source, "key": self.key,
                "images_per_s": {str(k): v for k, v in self.images_per_s.items()}}


def measure_batch_sizes(model: BatchedMACE, atoms_list: Sequence, sizes: Sequence[int] | None = None,
                        *, repeats: int = 2) -> dict[int, float]:
    """Images per second for each batch size, evaluating all of ``atoms_list`` (best of ``repeats``)."""
    atoms_list = list(atoms_list)
    sizes = list(sizes or candidate_batch_sizes(len(atoms_list)))
    model.evaluate(atoms_list[:1])  # warm-up: first call allocates
    rates: dict[int, float] = {}
    for size in sizes:
        best = float("inf")
        for _ in range(max(1, repeats)):
            synchronize(model.device)
            start = time.perf_counter()
            model.evaluate_in_batches(atoms_list, size)
            synchronize(model.device)
            best = min(best, time.perf_counter() - start)
        rates[size] = len(atoms_list) / best
    return rates


def choose_batch_size(
    model: BatchedMACE,
    atoms_list: Sequence,
    *,
    home: str | Path | None = None,
    configured: int | None = None,
    repeats: int = 2,
) -> BatchSizeChoice:
    """Batch size for evaluating ``atoms_list``-like sets: configured, else cached, else measured now.

    The cache key is (device, model SHA-256, dtype, atoms-size bucket, number of structures); a
    measurement is stored in ``home/batch_size_cache.json`` (``home`` defaults to $IONSCREEN_HOME).
    """
    atoms_list = list(atoms_list)
    n_atoms = max(len(a) for a in atoms_list)
    key = "|".join([
        model.device_name,
        model.model_sha256 or "unhashed-model",
        model.dtype,
        f"atoms<={size_bucket(n_atoms)}",
        f"structures={len(atoms_list)}",
    ])
    if configured is not None:
        if configured < 1:
            raise InputError(f"configured batch size must be >= 1, got {configured}")
        return BatchSizeChoice(int(configured), "configured", {}, key)
    cache_path = _cache_path(home)
    if model.model_sha256 is not None:
        entry = _read_cache(cache_path).get(key)
        if entry is not None:
            return BatchSizeChoice(int(entry["batch_size"]), "cache",
                                   {int(k): float(v) for k, v in entry["images_per_s"].items()}, key)
    rates = measure_batch_sizes(model, atoms_list, repeats=repeats)
    best = max(rates, key=lambda size: rates[size])
    if model.model_sha256 is not None:  # only a hashed model identifies what was measured
        _update_cache(cache_path, key, {
            "batch_size": best,
            "images_per_s": {str(k): v for k, v in rates.items()},
            "measured_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        })
    return BatchSizeChoice(best, "measured", rates, key)


def _cache_path(home: str | Path | None) -> Path:
    if home is None:
        from mlip.config import load_settings

        home = load_settings().home
    return Path(home) / CACHE_FILE_NAME


def _read_cache(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError):
        return {}  # a damaged cache only costs a new measurement


def _update_cache(path: Path, key: str, entry: dict) -> None:
    with file_lock(path.with_suffix(".lock")):
        data = _read_cache(path)
        data[key] = entry
        atomic_write_json(path, data, indent=2)
