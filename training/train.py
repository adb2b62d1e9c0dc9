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
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers as _Z
from ase.data import chemical_symbols
from pydantic import BaseModel, ConfigDict, Field

from mlip.config import Settings, load_settings
from mlip.errors import InputError, ModelDomainError, SimulationFailed
from training.evaluate import ISOLATED_CONFIG_TYPE, EvaluationReport, is_isolated_atom

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "ionscreen-training"
METRICS_POLL_S = 15.0
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
    wall_time_s: float
    test: EvaluationReport | None = Field(None, description="Errors on the test split (None: no test frames).")
    mlflow_run_id: str
    mlflow_experiment_id: str
    mlflow_tracking_uri: str
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
        "--save_cpu",
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


class _MetricsFollower:
    """Logs per-epoch metrics to MLflow while mace trains (polling its results file), in batches."""

    def __init__(self, client, run_id: str, results_dir: Path, interval_s: float = METRICS_POLL_S):
        self.client, self.run_id, self.results_dir, self.interval_s = client, run_id, results_dir, interval_s
        self.logged: set[int] = set()
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

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.flush()
            except Exception as err:  # never let progress logging kill a training run
                log.warning("could not log training progress to MLflow yet: %s", err)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


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
    """
    from mlip import registry as mlip_registry
    from mlip.loader import load_model
    from mlip.trust import TrustStore
    from mlip.version import code_version
    from training.data import Split, load_dataset
    from training.evaluate import evaluate_frames, parity_plots
    from training.modelcard import DatasetSummary, ModelCard, render_markdown
    from training.registry import ensure_experiment, register_model

    t_start = time.time()
    settings = settings or load_settings()
    if not _NAME_RE.match(name):
        raise InputError(f"model name {name!r}: use letters, digits, '.', '_' and '-' (start with a letter or digit)")
    if register is not None and not _NAME_RE.match(register):
        raise InputError(f"registered model name {register!r}: use letters, digits, '.', '_' and '-'")
    if alias is not None and register is None:
        raise InputError("an alias needs --register NAME")
    updates = {k: v for k, v in {"foundation": foundation, "mode": FinetuneMode(mode) if mode else None,
                                 "replay_file": str(replay_file) if replay_file else None}.items() if v is not None}
    config = (config or TrainConfig()).model_copy(update=updates)
    mode = _resolve_mode(config)
    device = _resolve_device(config.device)

    # -- the data ------------------------------------------------------------------------------------
    dataset_dir = Path(dataset_dir)
    ds = load_dataset(dataset_dir)
    isolated = isolated_e0s(ds.frames)  # references for E0s, not training or test frames
    split_frames = {s.value: [a for a in ds.split(s) if not is_isolated_atom(a)] for s in Split}
    n = {k: len(v) for k, v in split_frames.items()}
    if n["train"] == 0 or n["valid"] == 0:
        raise InputError(f"{dataset_dir}: training needs frames in the train and valid splits, it has {n}; "
                         "import more frames or use a dataset with other split fractions")
    if n["train"] < config.batch_size:
        raise InputError(f"{dataset_dir}: {n['train']} training frames is fewer than the batch size "
                         f"{config.batch_size} (mace-torch would take no step); lower batch_size")
    train_z = _elements(split_frames["train"])
    for s in ("valid", "test"):
        extra = sorted(_elements(split_frames[s]) - train_z)
        if extra:
            holding = [a for a in split_frames[s] if set(a.numbers.tolist()) & set(extra)]
            raise InputError(
                f"{dataset_dir}: element(s) {', '.join(chemical_symbols[z] for z in extra)} occur in the {s} split "
                f"({_frame_names(holding)}) but not in the train split; the model cannot learn them"
            )
    all_frames = [a for v in split_frames.values() for a in v]

    # -- the foundation model (trusted, covering every element) -----------------------------------------
    foundation_loaded = replay_src = None
    if mode is not FinetuneMode.SCRATCH:
        foundation_loaded = load_model(config.foundation, settings)
        check_foundation_covers(foundation_loaded, all_frames, f"dataset {dataset_dir}")
    if mode is FinetuneMode.MULTIHEAD:
        replay_src = _check_replay(config.replay_file, foundation_loaded)

    # -- output directory ----------------------------------------------------------------------------
    if out_dir is None:
        stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        out_dir = settings.home / "training" / name / stamp
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and any(out_dir.iterdir()):
        raise InputError(f"output directory {out_dir} is not empty; give a new --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    data_dir, work_dir = out_dir / "data", out_dir / "mace"
    splits = write_split_files(split_frames, data_dir)

    foundation_file = replay_path = None
    replay_sha = None
    if foundation_loaded is not None:
        foundation_file = _private_copy(foundation_loaded, data_dir / "foundation.model")
    if replay_src is not None:
        from mlip.trust import sha256_file

        replay_path = data_dir / "replay.xyz"
        shutil.copyfile(replay_src, replay_path)
        replay_sha = sha256_file(replay_path)

    zs = sorted(train_z)
    e0s_arg, e0s_eV, e0s_method, flags = _e0s_argument(config, split_frames["train"], zs, isolated)
    loss = config.loss
    if loss is Loss.AUTO:
        loss = Loss.STRESS if all("REF_stress" in a.info for a in split_frames["train"]) else Loss.WEIGHTED
    argv = mace_arguments(config, mode, name=name, work_dir=work_dir, model_dir=out_dir, splits=splits,
                          e0s=e0s_arg, loss=loss, device=device, foundation_file=foundation_file,
                          replay_file=replay_path)
    parse_mace_arguments(argv)  # reject bad flags before an MLflow run exists

    # -- the MLflow run ------------------------------------------------------------------------------
    client = mlip_registry.client(settings)
    exp_id = ensure_experiment(client, experiment, settings)
    m = ds.manifest
    tags = {
        "ionscreen.kind": "training", "ionscreen.mode": mode.value, "ionscreen.dataset_hash": ds.hash,
        "ionscreen.code_version": code_version(), "mace_version": _mace_version(),
    }
    if foundation_loaded is not None:
        tags["ionscreen.foundation_sha256"] = foundation_loaded.sha256
    run = client.create_run(exp_id, run_name=name, tags=tags)
    run_id = run.info.run_id
    status = "FAILED"
    try:
        params = {f"mace.{k}": v for k, v in _args_as_params(argv).items()
                  if k not in ("work_dir", "model_dir", "train_file", "valid_file", "test_file",
                               "foundation_model", "pt_train_file")}
        params.update({
            "ionscreen.mode": mode.value, "ionscreen.name": name,
            "dataset.dir": str(dataset_dir.resolve()), "dataset.hash": ds.hash,
            "dataset.n_frames": m.n_frames, "dataset.n_atoms": m.n_atoms,
            "dataset.n_train": n["train"], "dataset.n_valid": n["valid"], "dataset.n_test": n["test"],
            "dataset.n_isolated_atoms": sum(1 for a in ds.frames if is_isolated_atom(a)),
            "dataset.elements": ",".join(m.element_atom_counts), "dataset.split_seed": m.split.seed,
            "e0s.method": e0s_method, **{f"e0s.{k}_eV": f"{v:.8f}" for k, v in e0s_eV.items()},
        })
        if foundation_loaded is not None:
            params.update({"foundation.ref": foundation_loaded.ref, "foundation.sha256": foundation_loaded.sha256,
                           "foundation.elements": ",".join(foundation_loaded.elements)})
        if replay_path is not None:
            params.update({"replay.file": str(config.replay_file), "replay.sha256": replay_sha})
        _log_params(client, run_id, params)
        client.log_artifact(run_id, str(dataset_dir / "manifest.json"), artifact_path="dataset")
        (out_dir / "mace_args.json").write_text(json.dumps(argv, indent=1) + "\n")

        # -- train -----------------------------------------------------------------------------------
        with _MetricsFollower(client, run_id, work_dir / "results", interval_s=metrics_poll_s) as follower:
            run_mace(argv, work_dir / "logs")
        steps = follower.flush(final=True)
        epochs_run = max((s for s in steps if s > 0), default=0)
        best_valid = {}
        for key in ("valid_energy_mae_meV_atom", "valid_force_mae_meV_A"):
            values = [v[key] for s, v in steps.items() if s > 0 and key in v]
            if values:
                best_valid[key] = float(min(values))
        if epochs_run < config.max_num_epochs:
            flags.append("stopped_early")

        # -- what mace wrote: the model and its variants ----------------------------------------------
        base = f"{name}_stagetwo" if config.stage_two else name
        model_path = out_dir / f"{base}.model"
        if not model_path.is_file():
            raise TrainingFailed(f"mace-torch finished without writing {model_path}; see {work_dir / 'logs'}")
        variants = {p.stem.removeprefix(name).lstrip("_") or "model": p for p in sorted(out_dir.glob(f"{name}*.model"))}
        from mlip.trust import sha256_file

        model_sha = sha256_file(model_path)
        TrustStore(settings.trust_store_path).add(
            model_sha, source="trained", path=model_path, ref=str(model_path),
            note=f"trained by ionscreen: MLflow run {run_id}, dataset {ds.hash[:12]}",
        )
        loaded = load_model(model_path, settings)

        # -- evaluation, plots, card ------------------------------------------------------------------
        eval_split = "test" if n["test"] else "valid"
        if not n["test"]:
            flags.append("no_test_split")
        report, pred = evaluate_frames(loaded, split_frames[eval_split], dataset_dir=str(dataset_dir),
                                       dataset_hash=ds.hash, split=eval_split, device=device)
        if eval_split == "test" and n["test"] < 10:
            flags.append("few_test_frames")
        eval_dir = out_dir / "evaluation"
        eval_dir.mkdir(exist_ok=True)
        (eval_dir / f"{eval_split}.json").write_text(report.model_dump_json(indent=1) + "\n")
        plots = parity_plots(split_frames[eval_split], pred, eval_dir,
                             title=f"{name}: {eval_split} split ({report.n_frames} frames)", report=report)
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
        client.log_batch(run_id, metrics=[Metric(k, v, now, epochs_run) for k, v in final_metrics.items()])

        arch = {"model class": loaded.model_class, "r_max (Å)": f"{loaded.r_max_A:g}"}
        hp = _args_as_params(argv)
        for key in ("hidden_irreps", "num_interactions", "max_ell", "correlation", "num_radial_basis",
                    "MLP_irreps", "radial_MLP"):
            if key in hp and mode is FinetuneMode.SCRATCH:
                arch[key] = hp[key]
        if mode is not FinetuneMode.SCRATCH:
            arch["architecture"] = f"from the foundation model {foundation_loaded.ref}"
        card = ModelCard(
            name=name, created_utc=_now_utc(), model_file=model_path.name, model_sha256=model_sha,
            elements=list(loaded.elements), n_params=loaded.n_params, dtype=loaded.dtype, r_max_A=loaded.r_max_A,
            heads=list(loaded.heads), mode=mode.value,
            foundation_ref=foundation_loaded.ref if foundation_loaded else None,
            foundation_sha256=foundation_loaded.sha256 if foundation_loaded else None,
            replay_file=str(config.replay_file) if replay_path else None,
            architecture=arch, hyperparameters={k: v for k, v in hp.items()
                                                if k not in ("work_dir", "model_dir", "train_file", "valid_file",
                                                             "test_file", "foundation_model", "pt_train_file")},
            e0s_eV=e0s_eV, e0s_method=e0s_method,
            dataset=DatasetSummary(
                path=str(dataset_dir), dataset_hash=ds.hash, n_frames=m.n_frames, n_atoms=m.n_atoms,
                split_counts=m.split_counts, element_atom_counts=m.element_atom_counts,
                config_type_counts=m.config_type_counts,
                sources=[f"{Path(s.file).name} ({s.format}, {s.n_accepted} frames accepted)" for s in m.sources],
            ),
            epochs_run=epochs_run, best_valid=best_valid, test=report if eval_split == "test" else None,
            flags=sorted(set(flags)), mlflow_run_id=run_id, mlflow_tracking_uri=settings.mlflow_tracking_uri,
            mace_version=_mace_version(), ionscreen_version=code_version(), intended_use=config.intended_use,
        )

        # -- registration (before the card is written, so the card names the version) ----------------
        registered = registered_alias = None
        if register is not None:
            extra_tags = {"ionscreen.dataset_hash": ds.hash, "ionscreen.training_run": run_id,
                          "ionscreen.mode": mode.value}
            for key, value in final_metrics.items():
                if "." not in key:
                    extra_tags[f"ionscreen.{key}"] = f"{value:.3f}"
            version = register_model(model_path, register, settings, alias=alias, run_id=run_id,
                                     description=description or f"trained by ionscreen on dataset {ds.hash[:12]}",
                                     extra_tags=extra_tags)
            registered = f"models:/{version.name}/{version.version}"
            registered_alias = f"models:/{version.name}@{alias}" if alias else None
            card.registered_as = registered_alias or registered
        card_path = out_dir / "model_card.md"
        card_path.write_text(render_markdown(card))
        (out_dir / "model_card.json").write_text(card.model_dump_json(indent=1) + "\n")

        # -- artifacts ---------------------------------------------------------------------------------
        client.log_artifact(run_id, str(model_path), artifact_path="model")
        for variant, path in variants.items():
            if path != model_path:
                client.log_artifact(run_id, str(path), artifact_path="model-variants")
        client.log_artifact(run_id, str(card_path))
        client.log_artifact(run_id, str(out_dir / "model_card.json"))
        for path in plots.values():
            client.log_artifact(run_id, str(path), artifact_path="plots")
        client.log_artifact(run_id, str(eval_dir / f"{eval_split}.json"), artifact_path="evaluation")
        client.log_artifact(run_id, str(out_dir / "mace_args.json"), artifact_path="mace")
        for sub in ("logs", "results"):
            if (work_dir / sub).is_dir():
                client.log_artifacts(run_id, str(work_dir / sub), artifact_path=f"mace/{sub}")

        result = TrainingResult(
            name=name, mode=mode, out_dir=str(out_dir), model_path=str(model_path), model_sha256=model_sha,
            model_files={k: str(v) for k, v in variants.items()}, model_card_path=str(card_path),
            dataset_dir=str(dataset_dir), dataset_hash=ds.hash, split_counts=n,
            foundation_ref=card.foundation_ref, foundation_sha256=card.foundation_sha256, e0s_eV=e0s_eV,
            epochs_run=epochs_run, wall_time_s=time.time() - t_start,
            test=report if eval_split == "test" else None, mlflow_run_id=run_id, mlflow_experiment_id=exp_id,
            mlflow_tracking_uri=settings.mlflow_tracking_uri, registered=registered,
            registered_alias=registered_alias, mace_args=argv, flags=sorted(set(flags)),
            code_version=code_version(), mace_version=_mace_version(),
        )
        result_path = out_dir / "training_result.json"
        result_path.write_text(result.model_dump_json(indent=1) + "\n")
        client.log_artifact(run_id, str(result_path))
        client.log_metric(run_id, "wall_time_s", result.wall_time_s)
        status = "FINISHED"
        return result
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        client.set_terminated(run_id, status)
