"""Train or fine-tune a MACE potential on an ionscreen dataset with mace-torch's own trainer, as one MLflow run.

:func:`train` checks the data and the foundation model, writes the dataset's splits as extxyz, builds
mace-torch's command line (``mace.cli.run_train``) and runs it in this process; ionscreen adds what
mace-torch leaves out: trust checks on the foundation model, an element-coverage check before any
training, E0s (from isolated-atom frames or a least-squares fit) passed explicitly and recorded,
per-epoch metrics from mace's results file into MLflow while it trains, test errors per element and
config type with intervals, parity plots, a model card, the trained file's hash in the trust store,
and optionally a registry version.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import enum
import io
import json
import logging
import re
import shutil
import threading
import time
import warnings
import zipfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers as _Z
from ase.data import chemical_symbols
from pydantic import BaseModel, ConfigDict, Field

from mlip.config import Settings, load_settings, mask_password
from mlip.errors import InputError, ModelDomainError, SimulationFailed
from mlip.util import atomic_write_json, exclusive_or_refuse
from training.evaluate import ISOLATED_CONFIG_TYPE, EvaluationReport, is_isolated_atom

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from mlip.loader import LoadedModel
    from training.data import Dataset
    from training.modelcard import ModelCard

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "ionscreen-training"
METRICS_POLL_S = 15.0
STATE_FILE = "train_state.json"  # what a resume needs; written once the MLflow run exists
LOCK_FILE = "train.lock"  # held by the process training in the directory
RESULT_FILE = "training_result.json"  # written last: the run finished
_CHECKPOINT_RE = re.compile(r"_epoch-(\d+)(?:_swa)?\.pt$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class TrainingFailed(SimulationFailed):
    """mace-torch's training stopped with an error."""


class FinetuneMode(str, enum.Enum):
    SCRATCH = "scratch"  # a new model with the architecture below
    NAIVE = "naive"  # continue training all weights of the foundation model on the dataset only
    MULTIHEAD = "multihead"  # mace's replay fine-tuning: a new head on the dataset, the foundation head on replay data


class E0sMethod(str, enum.Enum):
    AUTO = "auto"  # isolated if the dataset has an isolated-atom frame of every element, else average
    ISOLATED = "isolated"  # energies of the dataset's isolated-atom frames (config_type 'IsolatedAtom')
    AVERAGE = "average"  # least squares of training energies against element counts (computed here)
    FOUNDATION = "foundation"  # the foundation model's E0s
    ESTIMATED = "estimated"  # mace-torch fits E0s to the foundation model's errors on the training set


class Loss(str, enum.Enum):
    AUTO = "auto"  # 'stress' when every training frame has a stress label, else 'weighted'
    WEIGHTED = "weighted"  # energy + forces
    STRESS = "stress"  # energy + forces + stress
    UNIVERSAL = "universal"  # mace's loss for foundation-style data (also forced by multihead fine-tuning)
    HUBER = "huber"
    FORCES_ONLY = "forces_only"


class Architecture(BaseModel):
    """MACE architecture for training from scratch (fine-tuning keeps the foundation model's)."""

    model_config = ConfigDict(extra="forbid")

    model: Literal["MACE", "ScaleShiftMACE"] = "MACE"
    hidden_irreps: str = Field("32x0e", description="e3nn irreps of the node features, e.g. 32x0e or 32x0e+32x1o.")
    r_max_A: float = Field(5.0, gt=0, description="Cutoff radius, Å.")
    num_interactions: int = Field(2, ge=1)
    max_ell: int = Field(3, ge=0, description="Highest spherical harmonic of the edge features.")
    correlation: int = Field(3, ge=1, description="Body order of the product basis minus one.")
    num_radial_basis: int = 8
    num_cutoff_basis: int = 5
    mlp_irreps: str = "16x0e"
    radial_mlp: str = "[64, 64, 64]"
    pair_repulsion: bool = Field(False, description="Add mace's ZBL core repulsion.")
    scaling: Literal["rms_forces_scaling", "std_scaling", "no_scaling"] = "rms_forces_scaling"


class TrainConfig(BaseModel):
    """Everything that decides a training run, besides the data. Unset fields take mace-torch's defaults."""

    model_config = ConfigDict(extra="forbid")

    architecture: Architecture = Field(default_factory=Architecture)
    mode: FinetuneMode | None = Field(None, description="Default: scratch without a foundation model, "
                                      "multihead with one and a replay file, naive with one and none.")
    foundation: str | None = Field(None, description="Model reference of the foundation model (trusted).")
    foundation_head: str | None = None
    keep_foundation_elements: bool = Field(False, description="Keep every element of the foundation model.")
    replay_file: str | None = Field(None, description="Labelled extxyz (REF_energy/REF_forces) for replay fine-tuning.")
    pseudolabel_replay: bool = Field(False, description="Relabel the replay frames with the foundation model.")
    num_samples_pt: int = 10000
    weight_pt_head: float = 1.0
    e0s: E0sMethod | dict[str, float] = Field(E0sMethod.AUTO, description="Method, or eV per element symbol.")
    max_num_epochs: int = Field(100, ge=1)
    batch_size: int = Field(4, ge=1)
    valid_batch_size: int = Field(8, ge=1)
    lr: float = 0.01
    weight_decay: float = 5e-7
    energy_weight: float = 1.0
    forces_weight: float = 100.0
    stress_weight: float = 1.0
    loss: Loss = Loss.AUTO
    stage_two: bool = Field(False, description="mace's stage two (formerly SWA): more energy weight, lower lr at the end.")
    start_stage_two: int | None = None
    stage_two_lr: float = 1e-3
    stage_two_energy_weight: float = 1000.0
    stage_two_forces_weight: float = 100.0
    ema: bool = False
    ema_decay: float = 0.99
    patience: int = Field(50, ge=1, description="Stop after this many epochs without a better validation loss.")
    scheduler_patience: int = 5
    clip_grad: float | None = 10.0
    eval_interval: int = Field(1, ge=1)
    seed: int = 123
    device: str = "auto"
    default_dtype: Literal["float32", "float64"] = "float64"
    extra_mace_args: dict[str, str] = Field(default_factory=dict, description="More mace-torch flags, verbatim.")
    intended_use: str = ""


class TrainingResult(BaseModel):
    """What a training run produced and where (the document written as ``training_result.json``)."""

    name: str
    mode: FinetuneMode
    out_dir: str
    model_path: str = Field(description="The trained model file (trusted), as mace-torch wrote it.")
    model_sha256: str
    model_files: dict[str, str] = Field(description="Every model file mace-torch wrote: variant -> path.")
    model_card_path: str
    dataset_dir: str
    dataset_hash: str
    split_counts: dict[str, int]
    foundation_ref: str | None = None
    foundation_sha256: str | None = None
    e0s_eV: dict[str, float]
    epochs_run: int
    wall_time_s: float = Field(description="Wall time of this process (of the last segment when resumed), s.")
    resumed_from_epochs: list[int] = Field(
        default_factory=list, description="The checkpoint epoch each resume restarted from (0: none was saved yet).")
    test: EvaluationReport | None = Field(None, description="Errors on the test split (None: no test frames).")
    mlflow_run_id: str
    mlflow_experiment_id: str
    mlflow_tracking_uri: str = Field(description="The tracking store, password masked.")
    registered: str | None = Field(None, description="models:/NAME/VERSION when registered.")
    registered_alias: str | None = Field(None, description="models:/NAME@ALIAS when an alias was set.")
    mace_args: list[str]
    flags: list[str] = Field(default_factory=list)
    code_version: str
    mace_version: str


def load_train_config(path: str | Path) -> TrainConfig:
    """A :class:`TrainConfig` from a YAML file (keys as the model's fields)."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise InputError(f"cannot read training config {path}: {err}") from err
    try:
        return TrainConfig.model_validate(data)
    except ValueError as err:
        raise InputError(f"training config {path} is invalid: {err}") from err


# ---------------------------------------------------------------------------------------------------
# Checks before training


def _frame_names(frames: Sequence[Atoms], limit: int = 3) -> str:
    names = [f"{a.info.get('source_file', '?')}:{a.info.get('source_frame', '?')}" for a in frames[:limit]]
    more = f" and {len(frames) - limit} more" if len(frames) > limit else ""
    return ", ".join(names) + more


def _elements(frames: Sequence[Atoms]) -> set[int]:
    return {int(z) for a in frames for z in a.numbers}


def check_foundation_covers(loaded, frames: Sequence[Atoms], what: str) -> None:
    """ModelDomainError naming each element of ``frames`` the foundation model lacks, with frames holding it."""
    missing = sorted(_elements(frames) - set(loaded.atomic_numbers))
    if not missing:
        return
    parts = []
    for z in missing:
        holding = [a for a in frames if z in a.numbers]
        parts.append(f"{chemical_symbols[z]} (in {len(holding)} frame(s): {_frame_names(holding)})")
    raise ModelDomainError(
        f"the foundation model {loaded.ref} (sha256 {loaded.sha256[:12]}) lacks element(s) "
        f"{'; '.join(parts)} of {what}; it covers {', '.join(loaded.elements)}. Fine-tuning cannot add "
        "elements: train from scratch, choose a foundation model that covers them, or remove those frames."
    )


def isolated_e0s(frames: Sequence[Atoms]) -> dict[int, float]:
    """E0 per atomic number from isolated-atom frames (the lowest energy where there are several, e.g. spins)."""
    out: dict[int, float] = {}
    for a in frames:
        if is_isolated_atom(a):
            z, e = int(a.numbers[0]), float(a.info["REF_energy"])
            out[z] = min(e, out.get(z, e))
    return out


def fit_e0s(frames: Sequence[Atoms], zs: Sequence[int]) -> tuple[dict[int, float], bool]:
    """Least-squares E0s (eV) from total energies and element counts; second value True if underdetermined."""
    zs = list(zs)
    counts = np.array([[np.sum(a.numbers == z) for z in zs] for a in frames], float)
    energies = np.array([float(a.info["REF_energy"]) for a in frames])
    sol, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    rank = np.linalg.matrix_rank(counts)
    return {z: float(e) for z, e in zip(zs, sol)}, bool(rank < len(zs))


def _e0s_text(e0: dict[int, float]) -> str:
    return "{" + ", ".join(f"{z}: {e0[z]!r}" for z in sorted(e0)) + "}"


def _e0s_argument(config: TrainConfig, train_frames, zs, isolated: dict[int, float]
                  ) -> tuple[str, dict[str, float], str, list[str]]:
    """(--E0s value, E0s per symbol or {} when mace decides, description, flags).

    E0s are always passed explicitly and isolated-atom frames never reach mace-torch's files: mace would
    otherwise take E0s from such frames silently, whatever --E0s says.
    """
    flags: list[str] = []
    if isinstance(config.e0s, dict):
        unknown = [s for s in config.e0s if s not in _Z]
        if unknown:
            raise InputError(f"E0s given for unknown element(s) {', '.join(unknown)}")
        lacking = [chemical_symbols[z] for z in zs if chemical_symbols[z] not in config.e0s]
        if lacking:
            raise InputError(f"explicit E0s lack element(s) {', '.join(lacking)} of the dataset; give one per element")
        e0 = {_Z[s]: float(v) for s, v in config.e0s.items()}
        return _e0s_text(e0), {chemical_symbols[z]: e0[z] for z in sorted(e0)}, "given explicitly", flags
    method = E0sMethod(config.e0s)
    if method is E0sMethod.AUTO:
        method = E0sMethod.ISOLATED if set(zs) <= set(isolated) else E0sMethod.AVERAGE
    if method is E0sMethod.ISOLATED:
        lacking = [chemical_symbols[z] for z in zs if z not in isolated]
        if lacking:
            raise InputError(f"E0s 'isolated': the dataset has no isolated-atom frame (config_type "
                             f"{ISOLATED_CONFIG_TYPE!r}) of {', '.join(lacking)}; label them or use E0s 'average'")
        e0 = {z: isolated[z] for z in zs}
        return _e0s_text(e0), {chemical_symbols[z]: e0[z] for z in zs}, "isolated-atom frames of the dataset", flags
    if method is E0sMethod.AVERAGE:
        e0, under = fit_e0s(train_frames, zs)
        if under:
            flags.append("e0s_underdetermined")
        return _e0s_text(e0), {chemical_symbols[z]: e0[z] for z in sorted(e0)}, "least squares on the training split", flags
    if config.foundation is None:
        raise InputError(f"E0s method {method.value!r} needs a foundation model")
    return method.value, {}, f"{method.value} (mace-torch, from the foundation model)", flags


# ---------------------------------------------------------------------------------------------------
# mace-torch's command line


_MANAGED = {
    "name", "seed", "work_dir", "model_dir", "log_dir", "checkpoints_dir", "results_dir", "train_file", "valid_file",
    "test_file", "energy_key", "forces_key", "stress_key", "E0s", "foundation_model", "multiheads_finetuning",
    "pt_train_file", "device", "default_dtype",
}


def _flag(name: str, value) -> list[str]:
    if isinstance(value, bool):
        return [f"--{name}", "True" if value else "False"]
    return [f"--{name}", str(value)]


def _scratch_args(config: TrainConfig, ctx: dict) -> list[str]:
    a = config.architecture
    args = [
        *_flag("model", a.model), *_flag("hidden_irreps", a.hidden_irreps), *_flag("r_max", a.r_max_A),
        *_flag("num_interactions", a.num_interactions), *_flag("max_ell", a.max_ell),
        *_flag("correlation", a.correlation), *_flag("num_radial_basis", a.num_radial_basis),
        *_flag("num_cutoff_basis", a.num_cutoff_basis), *_flag("MLP_irreps", a.mlp_irreps),
        *_flag("radial_MLP", a.radial_mlp), *_flag("scaling", a.scaling),
    ]
    if a.pair_repulsion:
        args.append("--pair_repulsion")
    return args


def _foundation_args(config: TrainConfig, ctx: dict) -> list[str]:
    args = [*_flag("model", "MACE"), *_flag("foundation_model", ctx["foundation_file"])]
    if config.foundation_head:
        args += _flag("foundation_head", config.foundation_head)
    if config.keep_foundation_elements:
        args += _flag("foundation_model_elements", True)
    return args


def _naive_args(config: TrainConfig, ctx: dict) -> list[str]:
    return _foundation_args(config, ctx) + _flag("multiheads_finetuning", False)


def _multihead_args(config: TrainConfig, ctx: dict) -> list[str]:
    args = _foundation_args(config, ctx) + _flag("multiheads_finetuning", True)
    args += _flag("pt_train_file", ctx["replay_file"])
    args += _flag("num_samples_pt", config.num_samples_pt) + _flag("weight_pt_head", config.weight_pt_head)
    if config.pseudolabel_replay:
        args += _flag("pseudolabel_replay", True)
    return args


MODE_ARGS = {FinetuneMode.SCRATCH: _scratch_args, FinetuneMode.NAIVE: _naive_args,
             FinetuneMode.MULTIHEAD: _multihead_args}


def mace_arguments(config: TrainConfig, mode: FinetuneMode, *, name: str, work_dir: Path, model_dir: Path,
                   splits: dict[str, Path], e0s: str, loss: Loss, device: str, foundation_file: Path | None = None,
                   replay_file: Path | None = None) -> list[str]:
    """The argument list for ``mace.cli.run_train`` (every flag explicit, so the run is reproducible)."""
    clash = sorted(set(config.extra_mace_args) & _MANAGED)
    if clash:
        raise InputError(f"extra mace-torch flag(s) {', '.join(clash)} are set by ionscreen; use the TrainConfig field")
    lr, ema, ema_decay, mh_extra = config.lr, config.ema, config.ema_decay, []
    if mode is FinetuneMode.MULTIHEAD:
        loss = Loss.UNIVERSAL  # mace-torch uses this loss for multihead fine-tuning whatever is asked
        if {"lr", "ema", "ema_decay"} & config.model_fields_set:
            mh_extra = _flag("force_mh_ft_lr", True)  # the user's optimiser settings, not mace's overrides
        else:  # mace-torch's multihead defaults, written out so the recorded flags are the ones used
            lr, ema, ema_decay = 1e-4, True, 0.99999
    args = [
        *_flag("name", name), *_flag("seed", config.seed), *_flag("work_dir", work_dir),
        *_flag("model_dir", model_dir), *_flag("train_file", splits["train"]), *_flag("valid_file", splits["valid"]),
    ]
    if "test" in splits:
        args += _flag("test_file", splits["test"])
    args += [
        *_flag("energy_key", "REF_energy"), *_flag("forces_key", "REF_forces"), *_flag("stress_key", "REF_stress"),
        *_flag("E0s", e0s), *_flag("loss", loss.value),
        *_flag("energy_weight", config.energy_weight), *_flag("forces_weight", config.forces_weight),
        *_flag("stress_weight", config.stress_weight), *_flag("max_num_epochs", config.max_num_epochs),
        *_flag("batch_size", config.batch_size), *_flag("valid_batch_size", config.valid_batch_size),
        *_flag("lr", lr), *_flag("weight_decay", config.weight_decay), *_flag("patience", config.patience),
        *_flag("scheduler_patience", config.scheduler_patience), *_flag("eval_interval", config.eval_interval),
        *_flag("clip_grad", config.clip_grad if config.clip_grad is not None else "None"),
        *_flag("device", device), *_flag("default_dtype", config.default_dtype),
        *_flag("error_table", "PerAtomMAE"), *_flag("plot", False), *_flag("pin_memory", device != "cpu"),
        "--save_cpu", "--keep_checkpoints",  # ionscreen prunes them (prune_checkpoints): a kill never leaves none
    ]
    if config.stage_two:
        args += ["--stage_two", *_flag("stage_two_lr", config.stage_two_lr),
                 *_flag("stage_two_energy_weight", config.stage_two_energy_weight),
                 *_flag("stage_two_forces_weight", config.stage_two_forces_weight)]
        if config.start_stage_two is not None:
            args += _flag("start_stage_two", config.start_stage_two)
    if ema:
        args += ["--ema", *_flag("ema_decay", ema_decay)]
    ctx = {"foundation_file": foundation_file, "replay_file": replay_file}
    args += MODE_ARGS[mode](config, ctx) + mh_extra
    for key, value in config.extra_mace_args.items():
        args += [f"--{key.lstrip('-')}"] + ([str(value)] if str(value) != "" else [])
    return args


def parse_mace_arguments(argv: list[str]):
    """mace-torch's parser on ``argv``; its usage errors become InputError instead of exiting."""
    from mlip._mace import import_mace

    import_mace()
    from mace.tools import build_default_arg_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return build_default_arg_parser().parse_args(argv)
    except SystemExit as exc:
        raise InputError(f"mace-torch rejected the training arguments: {err.getvalue().strip()}") from exc


def _args_as_params(argv: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    i = 0
    while i < len(argv):
        key = argv[i].lstrip("-")
        if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            params[key] = argv[i + 1]
            i += 2
        else:
            params[key] = "True"
            i += 1
    return params


# ---------------------------------------------------------------------------------------------------
# mace's per-epoch results file -> metrics


_EVAL_KEYS = {  # mace key -> (metric name, factor to our unit)
    "loss": ("loss", 1.0),
    "mae_e_per_atom": ("energy_mae_meV_atom", 1000.0),
    "rmse_e_per_atom": ("energy_rmse_meV_atom", 1000.0),
    "mae_f": ("force_mae_meV_A", 1000.0),
    "rmse_f": ("force_rmse_meV_A", 1000.0),
    "mae_stress": ("stress_mae_meV_A3", 1000.0),
    "rmse_stress": ("stress_rmse_meV_A3", 1000.0),
}


def epoch_metrics(lines: Sequence[str], *, final: bool) -> dict[int, dict[str, float]]:
    """Metrics per step (epochs completed: 0 = before training) from mace's JSON-lines results file.

    ``train_loss`` is the mean of the epoch's optimiser steps; ``valid_*`` come from the validation after
    the epoch (``valid_<head>_*`` for heads other than 'Default'). Unless ``final``, only epochs known to
    be complete (a later epoch has started) are returned.
    """
    opt: dict[int, list[float]] = defaultdict(list)
    opt_time: dict[int, float] = defaultdict(float)
    evals: dict[int, dict[str, float]] = defaultdict(dict)
    last_epoch = -1
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written
        epoch = rec.get("epoch")
        step = 0 if epoch is None else int(epoch) + 1
        last_epoch = max(last_epoch, -1 if epoch is None else int(epoch))
        if rec.get("mode") == "opt":
            if rec.get("loss") is not None:
                opt[step].append(float(rec["loss"]))
            opt_time[step] += float(rec.get("time") or 0.0)
        elif rec.get("mode") == "eval":
            head = rec.get("head", "Default")
            prefix = "valid_" if head == "Default" else f"valid_{head}_"
            for key, (metric, factor) in _EVAL_KEYS.items():
                value = rec.get(key)
                if value is not None and np.isfinite(value):
                    evals[step][prefix + metric] = float(value) * factor
    out: dict[int, dict[str, float]] = {}
    for step in sorted(set(opt) | set(evals)):
        if not final and step > last_epoch:  # the running epoch (step = last_epoch + 1) may grow
            continue
        m = dict(evals.get(step, {}))
        if opt.get(step):
            m["train_loss"] = float(np.mean(opt[step]))
            m["epoch_time_s"] = opt_time[step]
        out[step] = m
    return out


def merged_epoch_metrics(segments: Sequence[tuple[Sequence[str], int | None]]) -> dict[int, dict[str, float]]:
    """Metrics per step of a run trained in segments: (results lines, restart epoch or None for the first).

    mace-torch restarts from the checkpoint of epoch ``e`` by training epoch ``e`` again, so a segment
    restarted at ``e`` replaces every step after ``e`` (step = epochs completed) and its own step 0 (the
    validation of the restored weights) is dropped.
    """
    out: dict[int, dict[str, float]] = {}
    for lines, start in segments:
        steps = epoch_metrics(lines, final=True)
        if start is not None:
            out = {s: m for s, m in out.items() if s <= start}
            steps = {s: m for s, m in steps.items() if s > start}
        out.update(steps)
    return out


def _checkpoints(checkpoints_dir: Path) -> list[tuple[int, Path]]:
    """mace-torch's checkpoints in ``checkpoints_dir`` (stage-two ones included) as (epoch, path), newest first."""
    found = [(int(m.group(1)), p) for p in checkpoints_dir.glob("*.pt") if (m := _CHECKPOINT_RE.search(p.name))]
    return sorted(found, reverse=True)


def prune_checkpoints(checkpoints_dir: Path, keep: int = 2) -> list[Path]:
    """Delete all but the ``keep`` newest checkpoints of each stage; the files deleted.

    Without ``--keep_checkpoints`` mace-torch deletes the old checkpoint before it writes the new one, so a
    kill during the write leaves no complete one; with it, it never deletes any. Keeping the two newest
    means one is always complete.
    """
    stages: dict[bool, list[Path]] = defaultdict(list)
    for _, path in _checkpoints(checkpoints_dir):
        stages[path.name.endswith("_swa.pt")].append(path)
    removed = []
    for paths in stages.values():
        for path in paths[keep:]:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def complete_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a complete torch archive (every member's CRC checks), without unpickling it."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError):
        return False


def set_aside_incomplete_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Move the newest checkpoints that are incomplete (a kill during the write) into ``unreadable/``, until the
    newest left is complete, so that mace-torch restarts from it instead of silently from scratch; the files moved."""
    moved = []
    for _, path in _checkpoints(checkpoints_dir):
        if complete_checkpoint(path):
            break
        aside = checkpoints_dir / "unreadable"
        aside.mkdir(exist_ok=True)
        moved.append(path.rename(aside / path.name))
    return moved


class _MetricsFollower:
    """While mace trains, logs its per-epoch metrics to MLflow (polling its results file, in batches) and prunes
    its checkpoints (two newest kept)."""

    def __init__(self, client, run_id: str, results_dir: Path, interval_s: float = METRICS_POLL_S,
                 logged: set[int] | None = None, checkpoints_dir: Path | None = None):
        self.client, self.run_id, self.results_dir, self.interval_s = client, run_id, results_dir, interval_s
        self.checkpoints_dir = checkpoints_dir
        self.logged: set[int] = set(logged or ())  # steps already in MLflow (a resumed run's earlier epochs)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mace-metrics", daemon=True)
        self.n_logged = 0

    def _lines(self) -> list[str]:
        files = sorted(self.results_dir.glob("*_train.txt"))
        return files[0].read_text().splitlines() if files else []

    def flush(self, final: bool = False) -> dict[int, dict[str, float]]:
        from mlflow.entities import Metric

        steps = epoch_metrics(self._lines(), final=final)
        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for step, m in steps.items() if step not in self.logged
                   for key, value in m.items()]
        for start in range(0, len(metrics), 1000):  # MLflow's batch limit
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])
        self.logged.update(steps)
        self.n_logged += len(metrics)
        return steps

    def _prune(self) -> None:
        if self.checkpoints_dir is not None:
            prune_checkpoints(self.checkpoints_dir)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._prune()
                self.flush()
            except Exception as err:  # never let progress logging kill a training run
                log.warning("could not log training progress to MLflow yet: %s", err)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._prune()


@contextlib.contextmanager
def _mace_process_state(sink):
    """Run mace-torch in this process without leaving its global changes behind.

    mace's run() sets the torch default dtype, seeds the global RNGs, adds handlers to the root logger
    (one on stdout) and sets it to DEBUG; its dependencies warn freely. All of that is undone here and
    its console output goes to ``sink`` (mace writes its own log file too).
    """
    import torch

    root = logging.getLogger()
    level, handlers, filters = root.level, list(root.handlers), list(root.filters)
    dtype = torch.get_default_dtype()
    np_state = np.random.get_state()
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings(record=True), \
            contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        try:
            yield
        finally:
            for h in list(root.handlers):
                if h not in handlers:
                    root.removeHandler(h)
                    h.close()
            root.filters[:] = filters
            root.setLevel(level)
            torch.set_default_dtype(dtype)
            np.random.set_state(np_state)


def run_mace(argv: list[str], log_dir: Path) -> None:
    """``mace.cli.run_train.run`` on ``argv`` in this process; TrainingFailed with mace's log tail on error."""
    from mlip._mace import import_mace

    args = parse_mace_arguments(argv)
    import_mace()
    from mace.cli.run_train import run

    sink = io.StringIO()
    try:
        with _mace_process_state(sink):
            run(args)
    except (KeyboardInterrupt, InputError):
        raise
    except BaseException as err:  # mace raises bare AssertionError/ValueError/KeyError/SystemExit
        logs = sorted(log_dir.glob("*.log")) if log_dir.exists() else []
        text = next((p.read_text() for p in logs if not p.name.endswith("_debug.log")), sink.getvalue())
        tail = "\n".join(text.strip().splitlines()[-15:])
        raise TrainingFailed(
            f"mace-torch training failed: {type(err).__name__}: {err}\nlast lines of its log ({log_dir}):\n{tail}"
        ) from err


# ---------------------------------------------------------------------------------------------------
# The training run


def _resolve_mode(config: TrainConfig) -> FinetuneMode:
    mode = config.mode
    if mode is None:
        if config.foundation is None:
            return FinetuneMode.SCRATCH
        return FinetuneMode.MULTIHEAD if config.replay_file else FinetuneMode.NAIVE
    if mode is FinetuneMode.SCRATCH and config.foundation is not None:
        raise InputError("mode 'scratch' takes no foundation model; drop --foundation or choose naive/multihead")
    if mode is not FinetuneMode.SCRATCH and config.foundation is None:
        raise InputError(f"fine-tuning mode {mode.value!r} needs a foundation model (--foundation REF)")
    if mode is FinetuneMode.MULTIHEAD and not config.replay_file:
        raise InputError(
            "multihead replay fine-tuning needs replay data: a labelled extxyz (REF_energy, REF_forces) of "
            "configurations like those the foundation model was trained on (--replay-file); "
            "or use mode 'naive'"
        )
    if mode is FinetuneMode.NAIVE and config.replay_file:
        raise InputError("a replay file is only used by multihead fine-tuning; drop it or choose mode 'multihead'")
    return mode


def _resolve_device(device: str) -> str:
    from mlip.calculators import resolve_device

    dev = resolve_device(device)
    if dev.startswith("cuda:"):
        raise InputError(f"mace-torch trains on 'cuda' (the first visible GPU); select {dev} with "
                         "CUDA_VISIBLE_DEVICES instead")
    return dev


def _private_copy(loaded, dest: Path) -> Path:
    """Copy a trusted model file for mace to load, and prove the copy is the trusted content."""
    from mlip.trust import sha256_file

    shutil.copyfile(loaded.path, dest)
    if sha256_file(dest) != loaded.sha256:
        dest.unlink()
        raise InputError(f"{loaded.path} changed while it was being copied for training; try again")
    return dest


def _check_replay(path: str, foundation) -> Path:
    """The replay file, checked: readable, every frame labelled, elements inside the foundation model."""
    from ase.io import read

    src = Path(path)
    if not src.is_file():
        raise InputError(f"replay file {src} does not exist")
    try:
        frames = read(src, index=":")
    except Exception as err:
        raise InputError(f"replay file {src} is not readable extxyz: {err}") from err
    if not frames:
        raise InputError(f"replay file {src} has no frames")
    unlabelled = [i for i, a in enumerate(frames) if "REF_energy" not in a.info or "REF_forces" not in a.arrays]
    if unlabelled:
        raise InputError(
            f"replay file {src}: frame(s) {', '.join(map(str, unlabelled[:5]))} have no REF_energy/REF_forces; "
            "mace-torch gives unlabelled replay frames zero weight. Label them (with the foundation model's DFT "
            "method, or any labels plus --pseudolabel-replay to relabel with the foundation model)."
        )
    check_foundation_covers(foundation, frames, f"replay file {src}")
    return src


def write_split_files(split_frames: dict[str, list[Atoms]], out_dir: Path) -> dict[str, Path]:
    """train/valid/test extxyz for mace-torch (non-empty splits only), labels under the REF_* keys."""
    from ase.io import write

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, frames in split_frames.items():
        if frames:
            paths[split] = out_dir / f"{split}.xyz"
            write(paths[split], frames, format="extxyz", columns=["symbols", "positions", "REF_forces"])
    return paths


def _log_params(client, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k[:250], str(v)[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start:start + 100])


def _mace_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("mace-torch")
    except metadata.PackageNotFoundError:
        return "unknown"


def _now_utc() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


# Phases of a run, in the order train() calls them. The dataclasses carry what one phase hands the next.

_PATH_ARGS = ("work_dir", "model_dir", "train_file", "valid_file", "test_file", "foundation_model", "pt_train_file")


@dataclass
class _Inputs:
    """The checked inputs of a run: config, mode, device, the dataset's splits and the foundation model."""

    config: TrainConfig
    mode: FinetuneMode
    device: str
    dataset_dir: Path
    ds: Dataset
    isolated: dict[int, float]  # E0 references from isolated-atom frames, which are in no split below
    split_frames: dict[str, list[Atoms]]
    foundation: LoadedModel | None
    replay_src: Path | None

    @property
    def n(self) -> dict[str, int]:
        """Frames per split."""
        return {k: len(v) for k, v in self.split_frames.items()}


@dataclass
class _Workspace:
    """The run's output directory and the files written there for mace-torch to read."""

    out_dir: Path
    work_dir: Path  # mace-torch's work_dir: logs, results, checkpoints
    splits: dict[str, Path]
    foundation_file: Path | None
    replay_path: Path | None
    replay_sha: str | None


@dataclass
class _MacePlan:
    """mace-torch's argument list and the E0s it was given."""

    argv: list[str]
    e0s_eV: dict[str, float]
    e0s_method: str
    flags: list[str]


@dataclass
class _Run:
    """Everything fixed before mace-torch starts, with the MLflow run that records it."""

    name: str
    settings: Settings
    inputs: _Inputs
    work: _Workspace
    plan: _MacePlan
    client: MlflowClient
    experiment_id: str
    run_id: str


@dataclass
class _Fit:
    """What mace-torch's training loop reported."""

    epochs_run: int
    best_valid: dict[str, float]
    flags: list[str]


@dataclass
class _Trained:
    """The model file mace-torch wrote (now trusted), its variants and the model loaded."""

    path: Path
    sha256: str
    variants: dict[str, Path]
    loaded: LoadedModel


@dataclass
class _Evaluation:
    """Errors of the trained model on the test split (the valid split when there is no test split)."""

    split: str
    report: EvaluationReport
    report_path: Path
    plots: dict[str, Path]
    final_metrics: dict[str, float]
    flags: list[str]

    @property
    def test_report(self) -> EvaluationReport | None:
        """The report when it is on the test split, else None."""
        return self.report if self.split == "test" else None


def _check_names(name: str, register: str | None, alias: str | None) -> None:
    """InputError unless the model name, registered name and alias are usable."""
    if not _NAME_RE.match(name):
        raise InputError(f"model name {name!r}: use letters, digits, '.', '_' and '-' (start with a letter or digit)")
    if register is not None and not _NAME_RE.match(register):
        raise InputError(f"registered model name {register!r}: use letters, digits, '.', '_' and '-'")
    if alias is not None and register is None:
        raise InputError("an alias needs --register NAME")


def _apply_overrides(config: TrainConfig | None, *, foundation: str | None, mode: FinetuneMode | str | None,
                     replay_file: str | Path | None) -> TrainConfig:
    """The config with the given foundation, mode and replay file written over its fields."""
    updates = {k: v for k, v in {"foundation": foundation, "mode": FinetuneMode(mode) if mode else None,
                                 "replay_file": str(replay_file) if replay_file else None}.items() if v is not None}
    return (config or TrainConfig()).model_copy(update=updates)


def _load_inputs(dataset_dir: str | Path, config: TrainConfig, settings: Settings) -> _Inputs:
    """Resolve mode and device, then load and check the dataset's splits, the foundation model and replay file."""
    mode = _resolve_mode(config)
    device = _resolve_device(config.device)
    dataset_dir = Path(dataset_dir)
    ds, isolated, split_frames = _load_splits(dataset_dir, config.batch_size)
    foundation_loaded, replay_src = _load_foundation(config, mode, settings, split_frames, dataset_dir)
    return _Inputs(config=config, mode=mode, device=device, dataset_dir=dataset_dir, ds=ds, isolated=isolated,
                   split_frames=split_frames, foundation=foundation_loaded, replay_src=replay_src)


def _load_splits(dataset_dir: Path, batch_size: int) -> tuple[Dataset, dict[int, float], dict[str, list[Atoms]]]:
    """The dataset, its isolated-atom E0s and its splits without isolated atoms, checked to be trainable."""
    from training.data import Split, load_dataset

    ds = load_dataset(dataset_dir)
    isolated = isolated_e0s(ds.frames)  # references for E0s, not training or test frames
    split_frames = {s.value: [a for a in ds.split(s) if not is_isolated_atom(a)] for s in Split}
    n = {k: len(v) for k, v in split_frames.items()}
    if n["train"] == 0 or n["valid"] == 0:
        raise InputError(f"{dataset_dir}: training needs frames in the train and valid splits, it has {n}; "
                         "import more frames or use a dataset with other split fractions")
    if n["train"] < batch_size:
        raise InputError(f"{dataset_dir}: {n['train']} training frames is fewer than the batch size "
                         f"{batch_size} (mace-torch would take no step); lower batch_size")
    train_z = _elements(split_frames["train"])
    for s in ("valid", "test"):
        extra = sorted(_elements(split_frames[s]) - train_z)
        if extra:
            holding = [a for a in split_frames[s] if set(a.numbers.tolist()) & set(extra)]
            raise InputError(
                f"{dataset_dir}: element(s) {', '.join(chemical_symbols[z] for z in extra)} occur in the {s} split "
                f"({_frame_names(holding)}) but not in the train split; the model cannot learn them"
            )
    return ds, isolated, split_frames


def _load_foundation(config: TrainConfig, mode: FinetuneMode, settings: Settings,
                     split_frames: dict[str, list[Atoms]], dataset_dir: Path) -> tuple[LoadedModel | None, Path | None]:
    """The foundation model (trusted, covering every element of the dataset) and the checked replay file, if used."""
    from mlip.loader import load_model

    foundation_loaded = replay_src = None
    if mode is not FinetuneMode.SCRATCH:
        foundation_loaded = load_model(config.foundation, settings)
        all_frames = [a for v in split_frames.values() for a in v]
        check_foundation_covers(foundation_loaded, all_frames, f"dataset {dataset_dir}")
    if mode is FinetuneMode.MULTIHEAD:
        replay_src = _check_replay(config.replay_file, foundation_loaded)
    return foundation_loaded, replay_src


def _out_dir(settings: Settings, name: str, out_dir: str | Path | None) -> Path:
    """The run's output directory, absolute: ``out_dir`` or a new one under $IONSCREEN_HOME/training/NAME/."""
    if out_dir is None:
        stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        out_dir = settings.home / "training" / name / stamp
    return Path(out_dir).resolve()


def _prepare_workspace(inputs: _Inputs, out_dir: Path) -> _Workspace:
    """Write the split files and private copies of foundation model and replay into the (empty) output directory."""
    from mlip.trust import sha256_file

    out_dir.mkdir(parents=True, exist_ok=True)
    data_dir, work_dir = out_dir / "data", out_dir / "mace"
    splits = write_split_files(inputs.split_frames, data_dir)

    foundation_file = replay_path = replay_sha = None
    if inputs.foundation is not None:
        foundation_file = _private_copy(inputs.foundation, data_dir / "foundation.model")
    if inputs.replay_src is not None:
        replay_path = data_dir / "replay.xyz"
        shutil.copyfile(inputs.replay_src, replay_path)
        replay_sha = sha256_file(replay_path)
    return _Workspace(out_dir=out_dir, work_dir=work_dir, splits=splits, foundation_file=foundation_file,
                      replay_path=replay_path, replay_sha=replay_sha)


def _plan_mace_run(inputs: _Inputs, work: _Workspace, name: str) -> _MacePlan:
    """E0s, loss and mace-torch's argument list, checked by mace's parser before an MLflow run exists."""
    config, train_frames = inputs.config, inputs.split_frames["train"]
    zs = sorted(_elements(train_frames))
    e0s_arg, e0s_eV, e0s_method, flags = _e0s_argument(config, train_frames, zs, inputs.isolated)
    loss = config.loss
    if loss is Loss.AUTO:
        loss = Loss.STRESS if all("REF_stress" in a.info for a in train_frames) else Loss.WEIGHTED
    argv = mace_arguments(config, inputs.mode, name=name, work_dir=work.work_dir, model_dir=work.out_dir,
                          splits=work.splits, e0s=e0s_arg, loss=loss, device=inputs.device,
                          foundation_file=work.foundation_file, replay_file=work.replay_path)
    parse_mace_arguments(argv)  # reject bad flags before an MLflow run exists
    return _MacePlan(argv=argv, e0s_eV=e0s_eV, e0s_method=e0s_method, flags=flags)


def _start_mlflow_run(name: str, settings: Settings, inputs: _Inputs, work: _Workspace, plan: _MacePlan,
                      experiment: str) -> _Run:
    """Create the run's MLflow run (in ``experiment``), tagged with mode, dataset, code and foundation model."""
    from mlip import registry as mlip_registry
    from mlip.version import code_version
    from training.registry import ensure_experiment

    client = mlip_registry.client(settings)
    exp_id = ensure_experiment(client, experiment, settings)
    tags = {
        "ionscreen.kind": "training", "ionscreen.mode": inputs.mode.value, "ionscreen.dataset_hash": inputs.ds.hash,
        "ionscreen.code_version": code_version(), "mace_version": _mace_version(),
    }
    if inputs.foundation is not None:
        tags["ionscreen.foundation_sha256"] = inputs.foundation.sha256
    run = client.create_run(exp_id, run_name=name, tags=tags)
    return _Run(name=name, settings=settings, inputs=inputs, work=work, plan=plan, client=client,
                experiment_id=exp_id, run_id=run.info.run_id)


@contextlib.contextmanager
def _terminated_on_exit(run: _Run):
    """End the MLflow run on leaving: FINISHED, KILLED on KeyboardInterrupt, FAILED on any other exception."""
    status = "FAILED"
    try:
        yield
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        run.client.set_terminated(run.run_id, status)


def _log_run_inputs(run: _Run) -> None:
    """Log the run's parameters and the dataset manifest to MLflow, and write ``mace_args.json``."""
    inputs, plan, m = run.inputs, run.plan, run.inputs.ds.manifest
    n = inputs.n
    params = {f"mace.{k}": v for k, v in _args_as_params(plan.argv).items() if k not in _PATH_ARGS}
    params.update({
        "ionscreen.mode": inputs.mode.value, "ionscreen.name": run.name,
        "dataset.dir": str(inputs.dataset_dir.resolve()), "dataset.hash": inputs.ds.hash,
        "dataset.n_frames": m.n_frames, "dataset.n_atoms": m.n_atoms,
        "dataset.n_train": n["train"], "dataset.n_valid": n["valid"], "dataset.n_test": n["test"],
        "dataset.n_isolated_atoms": sum(1 for a in inputs.ds.frames if is_isolated_atom(a)),
        "dataset.elements": ",".join(m.element_atom_counts), "dataset.split_seed": m.split.seed,
        "e0s.method": plan.e0s_method, **{f"e0s.{k}_eV": f"{v:.8f}" for k, v in plan.e0s_eV.items()},
    })
    if inputs.foundation is not None:
        params.update({"foundation.ref": inputs.foundation.ref, "foundation.sha256": inputs.foundation.sha256,
                       "foundation.elements": ",".join(inputs.foundation.elements)})
    if run.work.replay_path is not None:
        params.update({"replay.file": str(inputs.config.replay_file), "replay.sha256": run.work.replay_sha})
    _log_params(run.client, run.run_id, params)
    run.client.log_artifact(run.run_id, str(inputs.dataset_dir / "manifest.json"), artifact_path="dataset")
    (run.work.out_dir / "mace_args.json").write_text(json.dumps(run.plan.argv, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------------
# Resuming: the same command with the same --out continues an unfinished run from its last checkpoint


def _request(name: str, inputs: _Inputs, experiment: str, register: str | None, alias: str | None,
             description: str) -> dict:
    """What decides a run besides where it is written: a resume must ask for exactly this again."""
    return {"name": name, "dataset_hash": inputs.ds.hash, "config": inputs.config.model_dump(mode="json"),
            "foundation_sha256": inputs.foundation.sha256 if inputs.foundation is not None else None,
            "replay_file_sha256": _sha256_or_none(inputs.replay_src),
            "experiment": experiment, "register": register, "alias": alias, "description": description}


def _sha256_or_none(path: Path | None) -> str | None:
    from mlip.trust import sha256_file

    return sha256_file(path) if path is not None else None


def _differences(saved: dict, request: dict) -> list[str]:
    """The request's fields (``config.FIELD`` for the training config) that differ from the saved run's."""
    out = []
    for key, value in request.items():
        if key == "config":
            a, b = saved.get("config", {}), value
            out += [f"config.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif saved.get(key) != value:
            out.append(key)
    return out


def _unfinished_run(out_dir: Path, request: dict) -> dict | None:
    """The saved state of the unfinished run in ``out_dir`` asked for again by ``request``; None when it is empty.

    InputError when the run there finished, when it was started with other settings (named), or when the
    directory holds something that is not a resumable run.
    """
    if (out_dir / RESULT_FILE).exists():
        raise InputError(f"{out_dir}: the training run there finished ({RESULT_FILE}); give a new --out to train again")
    state_path = out_dir / STATE_FILE
    if not state_path.exists():
        if any(p.name != LOCK_FILE for p in out_dir.iterdir()):
            raise InputError(f"output directory {out_dir} is not empty and holds no training run to resume "
                             f"(no {STATE_FILE}); give a new --out")
        return None
    try:
        state = json.loads(state_path.read_text())
        saved = state["request"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"{state_path}: unreadable ({err}); the run cannot be resumed, give a new --out") from err
    diff = _differences(saved, request)
    if diff:
        raise InputError(f"{out_dir} holds an unfinished training run started with other settings "
                         f"({', '.join(diff)} {'differs' if len(diff) == 1 else 'differ'}); repeat its command to "
                         "resume it, or give a new --out")
    return state


def _write_state(run: _Run, request: dict) -> dict:
    """Save what a resume needs (the request, the MLflow run, mace's arguments, the workspace's files)."""
    work = run.work
    state = {
        "format": 1, "request": request, "mlflow_run_id": run.run_id, "mlflow_experiment_id": run.experiment_id,
        "argv": run.plan.argv, "e0s_eV": run.plan.e0s_eV, "e0s_method": run.plan.e0s_method,
        "plan_flags": run.plan.flags, "splits": {k: str(v) for k, v in work.splits.items()},
        "foundation_file": str(work.foundation_file) if work.foundation_file else None,
        "replay_path": str(work.replay_path) if work.replay_path else None, "replay_sha256": work.replay_sha,
        "resumed_from_epochs": [],
    }
    atomic_write_json(work.out_dir / STATE_FILE, state)
    return state


def latest_checkpoint_epoch(checkpoints_dir: Path) -> int | None:
    """The epoch of the newest checkpoint mace-torch saved (stage-two ones included), None if there is none."""
    found = _checkpoints(checkpoints_dir)
    return found[0][0] if found else None


def _reopen_run(state: dict, inputs: _Inputs, settings: Settings, name: str, out_dir: Path) -> _Run:
    """The unfinished run of ``state`` with its workspace checked and its MLflow run set running again."""
    from mlflow.exceptions import MlflowException

    from mlip import registry as mlip_registry

    splits = {k: Path(v) for k, v in state["splits"].items()}
    files = [*splits.values(), *(Path(state[k]) for k in ("foundation_file", "replay_path") if state.get(k))]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise InputError(f"{out_dir}: {', '.join(missing)} missing; the run cannot be resumed, give a new --out")
    foundation_file = Path(state["foundation_file"]) if state.get("foundation_file") else None
    replay_path = Path(state["replay_path"]) if state.get("replay_path") else None
    # mace-torch loads the foundation copy as code: it must still be the trusted file, and the replay data unchanged
    expected = [(foundation_file, inputs.foundation.sha256 if inputs.foundation is not None else None),
                (replay_path, state.get("replay_sha256"))]
    for path, sha in expected:
        if path is not None and _sha256_or_none(path) != sha:
            raise InputError(f"{path} changed since the run started; the run cannot be resumed, give a new --out")
    work = _Workspace(out_dir=out_dir, work_dir=out_dir / "mace", splits=splits, foundation_file=foundation_file,
                      replay_path=replay_path, replay_sha=state.get("replay_sha256"))
    plan = _MacePlan(argv=list(state["argv"]), e0s_eV=state["e0s_eV"], e0s_method=state["e0s_method"],
                     flags=list(state["plan_flags"]))
    client = mlip_registry.client(settings)
    run_id = state["mlflow_run_id"]
    try:
        client.get_run(run_id)
    except MlflowException as err:
        raise InputError(f"{out_dir}: its MLflow run {run_id} is not in the tracking store "
                         f"{mask_password(settings.mlflow_tracking_uri)}; resume with the store it was started with"
                         ) from err
    client.update_run(run_id, status="RUNNING")
    return _Run(name=name, settings=settings, inputs=inputs, work=work, plan=plan, client=client,
                experiment_id=state["mlflow_experiment_id"], run_id=run_id)


def _record_resume(run: _Run, state: dict) -> None:
    """Set cut-short checkpoints and the earlier segments' results aside; note the restart epoch in the state and
    in MLflow."""
    work_dir = run.work.work_dir
    for path in set_aside_incomplete_checkpoints(work_dir / "checkpoints"):
        log.warning("%s is incomplete (the process was killed while writing it); set aside, not resumed from", path)
    epoch = latest_checkpoint_epoch(work_dir / "checkpoints")
    start = 0 if epoch is None else epoch
    resumed = [*state.get("resumed_from_epochs", []), start]
    aside = work_dir / "results" / f"before-resume-{len(resumed)}"
    for f in sorted((work_dir / "results").glob("*_train.txt")):
        aside.mkdir(parents=True, exist_ok=True)
        f.rename(aside / f.name)
    state["resumed_from_epochs"] = resumed
    atomic_write_json(run.work.out_dir / STATE_FILE, state)
    run.client.set_tag(run.run_id, "ionscreen.resumed_from_epochs", ",".join(map(str, resumed)))
    log.info("resuming training in %s from the checkpoint of epoch %s", run.work.out_dir, epoch)


def _segments(results_dir: Path, resumed_from_epochs: Sequence[int]) -> list[tuple[list[str], int | None]]:
    """Each training segment's results lines with the epoch it restarted from (None for the first)."""
    def lines(d: Path) -> list[str]:
        return [ln for f in sorted(d.glob("*_train.txt")) for ln in f.read_text().splitlines()]

    dirs = [results_dir / f"before-resume-{k}" for k in range(1, len(resumed_from_epochs) + 1)] + [results_dir]
    starts: list[int | None] = [None, *resumed_from_epochs]
    return [(lines(d), start) for d, start in zip(dirs, starts)]


def _log_missing_steps(run: _Run, steps: dict[int, dict[str, float]]) -> None:
    """Log the metrics of ``steps`` that the MLflow run lacks (a killed process may not have logged its last ones)."""
    from mlflow.entities import Metric

    keys = {k for m in steps.values() for k in m}
    have = {k: {m.step for m in run.client.get_metric_history(run.run_id, k)} for k in keys}
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, step) for step, m in sorted(steps.items()) for k, v in m.items()
               if step not in have[k]]
    for start in range(0, len(metrics), 1000):  # MLflow's batch limit
        run.client.log_batch(run.run_id, metrics=metrics[start:start + 1000])


def _train_following_metrics(run: _Run, metrics_poll_s: float, resumed_from_epochs: Sequence[int] = ()) -> _Fit:
    """Run mace-torch (from its last checkpoint when resumed), logging per-epoch metrics to MLflow as they appear;
    the epochs run and best valid errors over every segment."""
    work_dir = run.work.work_dir
    argv = run.plan.argv + (["--restart_latest"] if resumed_from_epochs else [])
    logged: set[int] = set()
    if resumed_from_epochs:  # the earlier segments' steps up to the restart stay: into MLflow if they are not yet
        earlier = merged_epoch_metrics(_segments(work_dir / "results", resumed_from_epochs)[:-1])
        kept = {s: m for s, m in earlier.items() if s <= resumed_from_epochs[-1]}
        _log_missing_steps(run, kept)
        logged = set(kept)
    with _MetricsFollower(run.client, run.run_id, work_dir / "results", interval_s=metrics_poll_s,
                          logged=logged, checkpoints_dir=work_dir / "checkpoints") as follower:
        run_mace(argv, work_dir / "logs")
    follower.flush(final=True)
    steps = merged_epoch_metrics(_segments(work_dir / "results", resumed_from_epochs))
    epochs_run = max((s for s in steps if s > 0), default=0)
    best_valid = {}
    for key in ("valid_energy_mae_meV_atom", "valid_force_mae_meV_A"):
        values = [v[key] for s, v in steps.items() if s > 0 and key in v]
        if values:
            best_valid[key] = float(min(values))
    flags = ["stopped_early"] if epochs_run < run.inputs.config.max_num_epochs else []
    return _Fit(epochs_run=epochs_run, best_valid=best_valid, flags=flags)


def _collect_model(run: _Run) -> _Trained:
    """The model file mace-torch wrote and its variants; the model is added to the trust store and loaded."""
    from mlip.loader import load_model
    from mlip.trust import TrustStore, sha256_file

    name, out_dir = run.name, run.work.out_dir
    base = f"{name}_stagetwo" if run.inputs.config.stage_two else name
    model_path = out_dir / f"{base}.model"
    if not model_path.is_file():
        raise TrainingFailed(f"mace-torch finished without writing {model_path}; see {run.work.work_dir / 'logs'}")
    variants = {p.stem.removeprefix(name).lstrip("_") or "model": p for p in sorted(out_dir.glob(f"{name}*.model"))}
    model_sha = sha256_file(model_path)
    TrustStore(run.settings.trust_store_path).add(
        model_sha, source="trained", path=model_path, ref=str(model_path),
        note=f"trained by ionscreen: MLflow run {run.run_id}, dataset {run.inputs.ds.hash[:12]}",
    )
    loaded = load_model(model_path, run.settings)
    return _Trained(path=model_path, sha256=model_sha, variants=variants, loaded=loaded)


def _evaluate(run: _Run, trained: _Trained, epochs_run: int) -> _Evaluation:
    """Evaluate the model on the test split (or valid), write the report and parity plots, log final metrics."""
    from training.evaluate import evaluate_frames, parity_plots

    inputs, n = run.inputs, run.inputs.n
    eval_split = "test" if n["test"] else "valid"
    flags = [] if n["test"] else ["no_test_split"]
    report, pred = evaluate_frames(trained.loaded, inputs.split_frames[eval_split], dataset_dir=str(inputs.dataset_dir),
                                   dataset_hash=inputs.ds.hash, split=eval_split, device=inputs.device)
    if eval_split == "test" and n["test"] < 10:
        flags.append("few_test_frames")
    eval_dir = run.work.out_dir / "evaluation"
    eval_dir.mkdir(exist_ok=True)
    report_path = eval_dir / f"{eval_split}.json"
    report_path.write_text(report.model_dump_json(indent=1) + "\n")
    plots = parity_plots(inputs.split_frames[eval_split], pred, eval_dir,
                         title=f"{run.name}: {eval_split} split ({report.n_frames} frames)", report=report)
    prefix = "test" if eval_split == "test" else "final_valid"
    final_metrics = {}
    for key in ("energy_mae_meV_atom", "energy_rmse_meV_atom", "force_mae_meV_A", "force_rmse_meV_A",
                "stress_mae_meV_A3", "stress_rmse_meV_A3"):
        est = getattr(report.overall, key)
        if est is not None:
            final_metrics[f"{prefix}_{key}"] = est.value
    for el, es in report.per_element.items():
        if es.force_mae_meV_A is not None:
            final_metrics[f"{prefix}_force_mae_meV_A.{el}"] = es.force_mae_meV_A.value
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    run.client.log_batch(run.run_id, metrics=[Metric(k, v, now, epochs_run) for k, v in final_metrics.items()])
    return _Evaluation(split=eval_split, report=report, report_path=report_path, plots=plots,
                       final_metrics=final_metrics, flags=flags)


def _model_card(run: _Run, fit: _Fit, trained: _Trained, evaluation: _Evaluation, flags: list[str]) -> ModelCard:
    """The model card: provenance, architecture, hyperparameters, E0s, dataset, training and test errors."""
    from mlip.version import code_version
    from training.modelcard import DatasetSummary, ModelCard

    inputs, loaded, foundation_loaded = run.inputs, trained.loaded, run.inputs.foundation
    mode, m = inputs.mode, inputs.ds.manifest
    arch = {"model class": loaded.model_class, "r_max (Å)": f"{loaded.r_max_A:g}"}
    hp = _args_as_params(run.plan.argv)
    for key in ("hidden_irreps", "num_interactions", "max_ell", "correlation", "num_radial_basis",
                "MLP_irreps", "radial_MLP"):
        if key in hp and mode is FinetuneMode.SCRATCH:
            arch[key] = hp[key]
    if mode is not FinetuneMode.SCRATCH:
        arch["architecture"] = f"from the foundation model {foundation_loaded.ref}"
    return ModelCard(
        name=run.name, created_utc=_now_utc(), model_file=trained.path.name, model_sha256=trained.sha256,
        elements=list(loaded.elements), n_params=loaded.n_params, dtype=loaded.dtype, r_max_A=loaded.r_max_A,
        heads=list(loaded.heads), mode=mode.value,
        foundation_ref=foundation_loaded.ref if foundation_loaded else None,
        foundation_sha256=foundation_loaded.sha256 if foundation_loaded else None,
        replay_file=str(inputs.config.replay_file) if run.work.replay_path else None,
        architecture=arch, hyperparameters={k: v for k, v in hp.items() if k not in _PATH_ARGS},
        e0s_eV=run.plan.e0s_eV, e0s_method=run.plan.e0s_method,
        dataset=DatasetSummary(
            path=str(inputs.dataset_dir), dataset_hash=inputs.ds.hash, n_frames=m.n_frames, n_atoms=m.n_atoms,
            split_counts=m.split_counts, element_atom_counts=m.element_atom_counts,
            config_type_counts=m.config_type_counts, split_group_by=m.split.group_by,
            sources=[f"{Path(s.file).name} ({s.format}, {s.n_accepted} frames accepted)" for s in m.sources],
        ),
        epochs_run=fit.epochs_run, best_valid=fit.best_valid, test=evaluation.test_report,
        flags=flags, mlflow_run_id=run.run_id, mlflow_tracking_uri=mask_password(run.settings.mlflow_tracking_uri),
        mace_version=_mace_version(), ionscreen_version=code_version(), intended_use=inputs.config.intended_use,
    )


def _register_version(run: _Run, trained: _Trained, evaluation: _Evaluation, card: ModelCard,
                      register: str | None, alias: str | None, description: str) -> tuple[str | None, str | None]:
    """With ``register``, a new registry version (and alias) of the model, named on the card; the two URIs or None."""
    from training.registry import register_model

    if register is None:
        return None, None
    extra_tags = {"ionscreen.dataset_hash": run.inputs.ds.hash, "ionscreen.training_run": run.run_id,
                  "ionscreen.mode": run.inputs.mode.value}
    for key, value in evaluation.final_metrics.items():
        if "." not in key:
            extra_tags[f"ionscreen.{key}"] = f"{value:.3f}"
    version = register_model(trained.path, register, run.settings, alias=alias, run_id=run.run_id,
                             description=description or f"trained by ionscreen on dataset {run.inputs.ds.hash[:12]}",
                             extra_tags=extra_tags)
    registered = f"models:/{version.name}/{version.version}"
    registered_alias = f"models:/{version.name}@{alias}" if alias else None
    card.registered_as = registered_alias or registered
    return registered, registered_alias


def _write_model_card(card: ModelCard, out_dir: Path) -> Path:
    """Write the card as ``model_card.md`` and ``model_card.json``; the Markdown file's path."""
    from training.modelcard import render_markdown

    card_path = out_dir / "model_card.md"
    card_path.write_text(render_markdown(card))
    (out_dir / "model_card.json").write_text(card.model_dump_json(indent=1) + "\n")
    return card_path


def _log_artifacts(run: _Run, trained: _Trained, evaluation: _Evaluation, card_path: Path) -> None:
    """Log the model and its variants, card, plots, evaluation, mace arguments and mace's logs to MLflow."""
    client, run_id, out_dir, work_dir = run.client, run.run_id, run.work.out_dir, run.work.work_dir
    client.log_artifact(run_id, str(trained.path), artifact_path="model")
    for path in trained.variants.values():
        if path != trained.path:
            client.log_artifact(run_id, str(path), artifact_path="model-variants")
    client.log_artifact(run_id, str(card_path))
    client.log_artifact(run_id, str(out_dir / "model_card.json"))
    for path in evaluation.plots.values():
        client.log_artifact(run_id, str(path), artifact_path="plots")
    client.log_artifact(run_id, str(evaluation.report_path), artifact_path="evaluation")
    client.log_artifact(run_id, str(out_dir / "mace_args.json"), artifact_path="mace")
    for sub in ("logs", "results"):
        if (work_dir / sub).is_dir():
            client.log_artifacts(run_id, str(work_dir / sub), artifact_path=f"mace/{sub}")


def _write_result(run: _Run, fit: _Fit, trained: _Trained, evaluation: _Evaluation, card: ModelCard,
                  card_path: Path, registered: str | None, registered_alias: str | None, flags: list[str],
                  t_start: float, resumed_from_epochs: Sequence[int] = ()) -> TrainingResult:
    """The :class:`TrainingResult`, written as ``training_result.json`` and logged with the wall time."""
    from mlip.version import code_version

    inputs = run.inputs
    result = TrainingResult(
        name=run.name, mode=inputs.mode, out_dir=str(run.work.out_dir), model_path=str(trained.path),
        model_sha256=trained.sha256, model_files={k: str(v) for k, v in trained.variants.items()},
        model_card_path=str(card_path), dataset_dir=str(inputs.dataset_dir), dataset_hash=inputs.ds.hash,
        split_counts=inputs.n, foundation_ref=card.foundation_ref, foundation_sha256=card.foundation_sha256,
        e0s_eV=run.plan.e0s_eV, epochs_run=fit.epochs_run, wall_time_s=time.time() - t_start,
        resumed_from_epochs=list(resumed_from_epochs),
        test=evaluation.test_report, mlflow_run_id=run.run_id, mlflow_experiment_id=run.experiment_id,
        mlflow_tracking_uri=mask_password(run.settings.mlflow_tracking_uri), registered=registered,
        registered_alias=registered_alias, mace_args=run.plan.argv, flags=flags,
        code_version=code_version(), mace_version=_mace_version(),
    )
    result_path = run.work.out_dir / RESULT_FILE
    result_path.write_text(result.model_dump_json(indent=1) + "\n")
    run.client.log_artifact(run.run_id, str(result_path))
    run.client.log_metric(run.run_id, "wall_time_s", result.wall_time_s)
    return result


def train(
    dataset_dir: str | Path,
    settings: Settings | None = None,
    *,
    name: str,
    config: TrainConfig | None = None,
    foundation: str | None = None,
    mode: FinetuneMode | str | None = None,
    replay_file: str | Path | None = None,
    out_dir: str | Path | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    register: str | None = None,
    alias: str | None = None,
    description: str = "",
    metrics_poll_s: float = METRICS_POLL_S,
) -> TrainingResult:
    """Train a MACE potential on the dataset at ``dataset_dir`` with mace-torch, tracked as one MLflow run.

    From scratch by default; with ``foundation`` (a model reference, trusted) by naive fine-tuning, or
    by multihead replay fine-tuning when ``replay_file`` is given. ``foundation``, ``mode`` and
    ``replay_file`` override the fields of ``config``. With ``register`` the model becomes a new version
    of that registered model (and ``alias`` points at it).

    When ``out_dir`` holds an unfinished run of the same request (killed, interrupted or failed), it is
    resumed from mace-torch's newest complete checkpoint in the same MLflow run; a finished run, one started
    with other settings, or one another process is training is refused (InputError).
    """
    t_start = time.time()
    settings = settings or load_settings()
    _check_names(name, register, alias)
    config = _apply_overrides(config, foundation=foundation, mode=mode, replay_file=replay_file)
    inputs = _load_inputs(dataset_dir, config, settings)
    out = _out_dir(settings, name, out_dir)
    request = _request(name, inputs, experiment, register, alias, description)
    with exclusive_or_refuse(out / LOCK_FILE, f"{out}: another process is training there (it holds {LOCK_FILE}); "
                             "wait for it to end, or give another --out"):
        state = _unfinished_run(out, request)
        if state is None:
            work = _prepare_workspace(inputs, out)
            run = _start_mlflow_run(name, settings, inputs, work, _plan_mace_run(inputs, work, name), experiment)
        else:
            run = _reopen_run(state, inputs, settings, name, out)
        with _terminated_on_exit(run):
            if state is None:
                _log_run_inputs(run)
                state = _write_state(run, request)
            else:
                _record_resume(run, state)
            return _train_and_finish(run, state["resumed_from_epochs"], metrics_poll_s, register, alias,
                                     description, t_start)


def _train_and_finish(run: _Run, resumed_from_epochs: list[int], metrics_poll_s: float, register: str | None,
                      alias: str | None, description: str, t_start: float) -> TrainingResult:
    """Train (from the last checkpoint when resumed), evaluate, register and write the result."""
    fit = _train_following_metrics(run, metrics_poll_s, resumed_from_epochs)
    trained = _collect_model(run)
    evaluation = _evaluate(run, trained, fit.epochs_run)
    flags = sorted(set(run.plan.flags + fit.flags + evaluation.flags + (["resumed"] if resumed_from_epochs else [])))
    card = _model_card(run, fit, trained, evaluation, flags)
    # registered before the card is written, so that the card names the version
    registered, registered_alias = _register_version(run, trained, evaluation, card, register, alias, description)
    card_path = _write_model_card(card, run.work.out_dir)
    _log_artifacts(run, trained, evaluation, card_path)
    return _write_result(run, fit, trained, evaluation, card, card_path, registered, registered_alias, flags,
                         t_start, resumed_from_epochs)
