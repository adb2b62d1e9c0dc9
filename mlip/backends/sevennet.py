"""SevenNet behind the backend protocol: the pretrained weights that the ``sevenn`` wheel ships (references
``sevennet:7net-0`` and ``sevennet:7net-l3i5``), computed in a worker process, with an ASE calculator only.

Why it is here: it is the second universal potential whose weights install with a package on a machine without
internet, and its architecture (an equivariant NequIP-style network, 5 interaction layers) is not CHGNet's. Two
models of one architecture share most of their errors (CHGNet 0.3.0 and its r2SCAN transfer: README,
"Validation"); a model of another architecture, trained on the same MPtrj data, gives the model spread that
``ionscreen validate`` and a screening job's ``agreement_model`` use a meaning. It covers 89 elements.

Why a worker process: SevenNet needs e3nn >= 0.5; mace-torch pins e3nn 0.4.4 because e3nn 0.5 changed the
Clebsch-Gordan phase convention that every MACE file was trained with, and one interpreter holds one e3nn. So
SevenNet and its dependencies live in their own directory (``IONSCREEN_SEVENNET_DIR``, default
``<venv>/ionscreen-sevennet``), installed with ``pip install --no-deps --target DIR -r`` the requirements file
beside this module, and each calculator starts one worker (:mod:`mlip.backends._sevennet_worker`) that puts that
directory first on its path and loads the checkpoint once. ionscreen's own processes never import sevenn.

Trust: a checkpoint is a pickle. It is loaded only when its SHA-256 equals the one recorded here from the sevenn
0.13.0 wheel; the worker hashes the bytes again and unpickles that checked copy. Energies are total energies in
eV (MPtrj's PBE/PBE+U references, the same level as CHGNet's), forces eV/Å, stresses eV/Å³ with ASE's sign.
On a CPU it is slower than CHGNet: the NEB barriers validation subset took 2.9x CHGNet's time (README,
"Validation"); the JSON exchange with the worker adds milliseconds per call.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from mlip.backends.base import Capability, ModelBackend, PackagedWeights, refuse_uncovered, stamp
from mlip.errors import InputError, SimulationFailed

if TYPE_CHECKING:
    from mlip.model import LoadedModel, ResolvedModel

SEVENN_VERSION = "0.13.0"
#: Where SevenNet and its dependencies are installed (see the module docstring); the environment variable wins.
DIR_ENV = "IONSCREEN_SEVENNET_DIR"
REQUIREMENTS = Path(__file__).with_name("sevennet-requirements.txt")
WORKER = Path(__file__).with_name("_sevennet_worker.py")

#: The 89 elements of both checkpoints' type maps (H to Bi, then Ac to Pu): the same as CHGNet's.
COVERED_ATOMIC_NUMBERS: tuple[int, ...] = tuple(range(1, 84)) + tuple(range(89, 95))
#: Seconds to wait for the worker to load a checkpoint, and for one force call (a stuck worker is killed).
LOAD_TIMEOUT_S = 300.0
CALL_TIMEOUT_S = 600.0


def sevennet_dir() -> Path:
    """The directory that holds sevenn and e3nn >= 0.5 for the worker."""
    configured = os.environ.get(DIR_ENV)
    return Path(configured).expanduser().resolve() if configured else Path(sys.prefix) / "ionscreen-sevennet"


def install_command() -> str:
    return f"pip install --no-deps --target {sevennet_dir()} -r {REQUIREMENTS}"


@dataclass(frozen=True)
class SidecarWeights(PackagedWeights):
    """Weights of a package that lives in the SevenNet directory, not in ionscreen's environment."""

    def path(self) -> Path | None:
        root = sevennet_dir() / self.package
        return root / self.relative_path if root.is_dir() else None

    def install_hint(self) -> str:
        return f"install SevenNet for ionscreen's worker: {install_command()}"


#: The weights inside the sevenn 0.13.0 wheel, with the SHA-256 of each file as the wheel ships it.
WEIGHTS: dict[str, PackagedWeights] = {
    "7net-0": SidecarWeights(
        "sevenn", SEVENN_VERSION, "pretrained_potentials/SevenNet_0__11Jul2024/checkpoint_sevennet_0.pth",
        "7052cb42b7b3be42b40b97fa0d21077a48c54b5548948fc4dcf346629f813c36",
        "SevenNet-0 (11 Jul 2024; 0.84 M parameters, l <= 2, 5 layers), trained on MPtrj (PBE/PBE+U relaxation "
        "trajectories of the Materials Project)",
        COVERED_ATOMIC_NUMBERS,
    ),
    "7net-l3i5": SidecarWeights(
        "sevenn", SEVENN_VERSION, "pretrained_potentials/SevenNet_l3i5/checkpoint_l3i5.pth",
        "a7ff190d41efe5b8317a03d20a468e4036a1a3e64e0b14fdbab64ac3f4bfc09d",
        "SevenNet-l3i5 (1.17 M parameters, l <= 3, 5 layers), trained on MPtrj: its authors' more accurate and "
        "slower variant",
        COVERED_ATOMIC_NUMBERS,
    ),
}


class SevennetBackend(ModelBackend):
    family = "sevennet"
    label = "SevenNet"
    capabilities = frozenset({Capability.CALCULATOR})
    #: The checkpoint is unpickled in the worker, never in this process (see the module docstring).
    in_worker = True

    def packaged_weights(self) -> dict[str, PackagedWeights]:
        return WEIGHTS

    #: Trainable parameters of each checkpoint's model (counted when the weights were pinned; describing a model
    #: starts no worker).
    N_PARAMS = {"7net-0": 842_623, "7net-l3i5": 1_171_327}

    def describe(self, resolved: "ResolvedModel", module) -> "LoadedModel":
        name = resolved.ref.name
        return resolved.loaded(
            family=self.family,
            module=None,
            atomic_numbers=WEIGHTS[name].atomic_numbers,
            n_params=self.N_PARAMS[name],
            dtype="float32",
            r_max_A=5.0,
            model_class=f"SevenNet {name} (sevenn {SEVENN_VERSION}, in a worker process)",
        )

    def calculator(self, loaded: "LoadedModel", *, task, dtype: str, device: str = "auto", **options):
        import torch

        from mlip.calculators import resolve_device

        if options:
            raise InputError(f"the SevenNet calculator takes no options; got {', '.join(sorted(options))}")
        calc = SevennetCalculator(Path(loaded.path), loaded.sha256, device=resolve_device(device),
                                  threads=torch.get_num_threads())
        return stamp(calc, loaded)


class WorkerError(SimulationFailed):
    """The SevenNet worker failed, answered an error, or did not answer in time."""


class _Worker:
    """One worker process and its two pipes; requests are serialised by a lock."""

    def __init__(self, checkpoint: Path, sha256: str, device: str, threads: int):
        root = sevennet_dir()  # the loader found the checkpoint in it (SidecarWeights.path) or named install_command
        self._log = tempfile.NamedTemporaryFile(prefix="ionscreen-sevennet-", suffix=".log", delete=False)
        bootstrap = ("import runpy, sys; sys.path.insert(0, sys.argv[1]); "
                     "runpy.run_path(sys.argv[2], run_name='__main__')")
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads)), "PYTHONWARNINGS": "ignore"}
        # -I: no current directory, PYTHONPATH or user site on the path, so nothing shadows the SevenNet directory
        self.process = subprocess.Popen([sys.executable, "-I", "-c", bootstrap, str(root), str(WORKER)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                        text=True, bufsize=1, env=env)
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _stop, self.process, self._log.name)
        self.facts = self.request({"op": "load", "checkpoint": str(checkpoint), "sha256": sha256, "device": device,
                                   "threads": threads}, timeout_s=LOAD_TIMEOUT_S)

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = Path(self._log.name).read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def request(self, payload: dict, *, timeout_s: float = CALL_TIMEOUT_S) -> dict:
        with self._lock:
            if self.process.poll() is not None:
                raise WorkerError(f"the SevenNet worker exited (status {self.process.returncode}): {self.log_tail()}")
            try:
                self.process.stdin.write(json.dumps(payload) + "\n")
                self.process.stdin.flush()
            except (BrokenPipeError, OSError) as err:
                raise WorkerError(f"the SevenNet worker is gone ({err}): {self.log_tail()}") from err
            ready, _, _ = select.select([self.process.stdout], [], [], timeout_s)
            if not ready:
                self.close()
                raise WorkerError(f"the SevenNet worker did not answer {payload['op']!r} within {timeout_s:.0f} s; "
                                  "it was stopped")
            line = self.process.stdout.readline()
        if not line:
            self.process.wait(timeout=10)
            raise WorkerError(f"the SevenNet worker exited (status {self.process.returncode}) during "
                              f"{payload['op']!r}: {self.log_tail()}")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise WorkerError(f"SevenNet worker: {reply.get('error')}")
        return reply

    def close(self) -> None:
        self._finalizer()


def _stop(process: subprocess.Popen, log: str) -> None:
    if process.poll() is None:
        try:
            process.stdin.close()
            process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()
    Path(log).unlink(missing_ok=True)


class SevennetCalculator(Calculator):
    """An ASE calculator whose model runs in a SevenNet worker, started on the first calculation and stopped with
    the calculator (or at exit). Energy, forces and stress come from one model call."""

    implemented_properties = ("energy", "free_energy", "forces", "stress")
    default_dtype = "float32"  # what NEB provenance records: SevenNet computes in float32

    def __init__(self, checkpoint: Path, sha256: str, *, device: str = "cpu", threads: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.checkpoint, self.sha256, self.device, self.threads = Path(checkpoint), sha256, device, int(threads)
        self._worker: _Worker | None = None

    def worker(self) -> _Worker:
        if self._worker is None:
            self._worker = _Worker(self.checkpoint, self.sha256, self.device, self.threads)
        return self._worker

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        refuse_uncovered(self, self.atoms)
        a = self.atoms
        reply = self.worker().request({"op": "calc", "numbers": a.numbers.tolist(), "positions": a.positions.tolist(),
                                       "cell": a.cell.array.tolist(), "pbc": [bool(p) for p in a.pbc]})
        energy = float(reply["energy_eV"])
        forces = np.asarray(reply["forces_eV_A"], dtype=float).reshape(len(a), 3)
        stress = np.asarray(reply["stress_eV_A3"], dtype=float)
        if not (np.isfinite(energy) and np.all(np.isfinite(forces))):
            raise SimulationFailed("SevenNet returned a non-finite energy or forces")
        self.results = {"energy": energy, "free_energy": energy, "forces": forces}
        if a.cell.rank == 3 and stress.size == 6:
            self.results["stress"] = stress

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def __getstate__(self):  # a copy (pickled into another process) starts its own worker
        state = self.__dict__.copy()
        state["_worker"] = None
        return state
