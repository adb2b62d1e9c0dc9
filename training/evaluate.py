"""Errors of a MACE model against a labelled dataset split: overall, per element and per config type,
with bootstrap intervals, parity plots, and the side-by-side comparison of two models.

Predictions go through mace-torch's own data pipeline (``config_from_atoms`` → ``AtomicData`` →
batch), several frames per model call, with stress where the frame is a 3-D periodic cell. Error
conventions follow mace-torch's tables: energy per atom (|ΔE|/N per frame, averaged over frames),
forces per Cartesian component, stress per Voigt component.
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols
from pydantic import BaseModel, Field

from mlip._mace import import_mace
from mlip.config import Settings, load_settings
from mlip.errors import InputError, ModelDomainError, SimulationFailed

ENERGY_KEY, FORCES_KEY, STRESS_KEY = "REF_energy", "REF_forces", "REF_stress"
MEV = 1000.0
N_BOOTSTRAP = 1000
FEW_FRAMES = 10  # fewer frames than this in a group: its errors are flagged as rough


ISOLATED_CONFIG_TYPE = "IsolatedAtom"  # mace-torch's marker for isolated-atom reference frames


def is_isolated_atom(atoms: Atoms) -> bool:
    """A one-atom frame marked as mace-torch marks isolated-atom references (E0s, not test data)."""
    return len(atoms) == 1 and str(atoms.info.get("config_type")) == ISOLATED_CONFIG_TYPE


class Flag(str, enum.Enum):
    FEW_FRAMES = "few_frames"  # under FEW_FRAMES frames: intervals are wide, the errors rough
    NO_STRESS_LABELS = "no_stress_labels"  # no frame of the split has a reference stress
    EMPTY_SPLIT = "empty_split"


# ---------------------------------------------------------------------------------------------------
# Result documents


class Estimate(BaseModel):
    """An error with its 95% bootstrap interval (frames resampled with replacement)."""

    value: float
    ci95_low: float | None = Field(None, description="2.5th percentile of the bootstrap distribution (None: under 2 frames).")
    ci95_high: float | None = Field(None, description="97.5th percentile of the bootstrap distribution.")


class ErrorSet(BaseModel):
    """Errors of one group of frames (all, one config type) or of one element's atoms."""

    n_frames: int = Field(description="Frames in the group (for an element: frames containing it).")
    n_atoms: int = Field(description="Atoms in the group (for an element: atoms of that element).")
    n_stress_frames: int = Field(0, description="Frames with a reference stress.")
    energy_mae_meV_atom: Estimate | None = Field(None, description="Mean over frames of |E_model - E_ref| / N_atoms, meV/atom. None for element rows.")
    energy_rmse_meV_atom: Estimate | None = Field(None, description="Root mean square over frames of (E_model - E_ref) / N_atoms, meV/atom.")
    force_mae_meV_A: Estimate | None = Field(None, description="Mean |ΔF| over Cartesian force components, meV/Å.")
    force_rmse_meV_A: Estimate | None = Field(None, description="Root mean square ΔF over Cartesian force components, meV/Å.")
    stress_mae_meV_A3: Estimate | None = Field(None, description="Mean |Δσ| over Voigt stress components, meV/Å³ (1 meV/Å³ = 0.1602 GPa).")
    stress_rmse_meV_A3: Estimate | None = Field(None, description="Root mean square Δσ over Voigt stress components, meV/Å³.")


class EvaluationReport(BaseModel):
    """A model's errors on one split of a dataset."""

    model_ref: str
    model_sha256: str
    dataset_dir: str
    dataset_hash: str
    split: str
    head: str = Field(description="Model head evaluated.")
    dtype: str
    n_frames: int
    n_atoms: int
    overall: ErrorSet
    per_element: dict[str, ErrorSet] = Field(description="Force errors on the atoms of each element.")
    per_config_type: dict[str, ErrorSet]
    flags: list[str] = Field(default_factory=list)


class ComparisonRow(BaseModel):
    kind: str = Field(description="'overall', 'element' or 'config_type'.")
    group: str
    a: ErrorSet
    b: ErrorSet


class ComparisonReport(BaseModel):
    """Two models evaluated on the same frames."""

    model_a: str
    model_b: str
    model_a_sha256: str
    model_b_sha256: str
    dataset_dir: str
    dataset_hash: str
    split: str
    n_frames: int
    rows: list[ComparisonRow]
    evaluations: list[EvaluationReport]


# ---------------------------------------------------------------------------------------------------
# Predictions


@dataclass
class Predictions:
    """Model outputs for a list of frames, in ASE units (eV, eV/Å, eV/Å³ Voigt, ASE sign)."""

    energies_eV: np.ndarray  # (n_frames,)
    forces_eV_A: list[np.ndarray]  # (n_atoms_i, 3) each
    stresses_eV_A3: np.ndarray  # (n_frames, 6); NaN rows for frames without a 3-D periodic cell


def choose_head(heads: Sequence[str], requested: str | None = None) -> str:
    """``requested`` if given; otherwise 'Default' (the fine-tuned head of a multihead model) or the only head."""
    heads = list(heads)
    if requested is not None:
        if requested not in heads:
            raise InputError(f"model has no head {requested!r}; its heads are {', '.join(heads)}")
        return requested
    if "Default" in heads:
        return "Default"
    if len(heads) == 1:
        return heads[0]
    raise InputError(f"model has several heads ({', '.join(heads)}) and none is 'Default'; choose one")


def _periodic_3d(atoms: Atoms) -> bool:
    return bool(np.all(atoms.pbc)) and atoms.cell.rank == 3


def predict(
    module,
    frames: Sequence[Atoms],
    *,
    head: str | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    dtype: str = "float64",
) -> Predictions:
    """Energies, forces and (3-D periodic frames) stresses of ``frames`` from a MACE ``module``."""
    import_mace()
    import torch
    from mace import data as mace_data
    from mace.tools import torch_geometric, torch_tools, utils

    if dtype not in ("float32", "float64"):
        raise InputError(f"dtype must be float32 or float64, got {dtype!r}")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    torch_dtype = getattr(torch, dtype)
    model = copy.deepcopy(module).to(device=device, dtype=torch_dtype)  # caller's module untouched
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    heads = list(getattr(model, "heads", None) or ["Default"])
    head = choose_head(heads, head)
    zs = [int(z) for z in model.atomic_numbers]
    missing = sorted({int(z) for a in frames for z in a.numbers} - set(zs))
    if missing:
        raise ModelDomainError(
            f"model does not cover element(s) {', '.join(chemical_symbols[z] for z in missing)} of the frames; "
            f"it covers {', '.join(chemical_symbols[z] for z in zs)}"
        )
    z_table = utils.AtomicNumberTable(zs)
    r_max = float(model.r_max)
    keyspec = mace_data.KeySpecification()

    n = len(frames)
    energies = np.zeros(n)
    forces: list[np.ndarray] = [np.zeros((0, 3))] * n
    stresses = np.full((n, 6), np.nan)
    # frames with and without a 3-D cell go in separate batches: stress needs a volume
    groups = {True: [], False: []}
    for i, a in enumerate(frames):
        groups[_periodic_3d(a)].append(i)
    for periodic, indices in groups.items():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            bare = [Atoms(numbers=frames[i].numbers, positions=frames[i].positions, cell=frames[i].cell,
                          pbc=frames[i].pbc) for i in chunk]
            with torch_tools.default_dtype(dtype):
                graphs = [
                    mace_data.AtomicData.from_config(
                        mace_data.config_from_atoms(a, key_specification=keyspec, head_name=head),
                        z_table=z_table, cutoff=r_max, heads=heads)
                    for a in bare
                ]
            batch = torch_geometric.Batch.from_data_list(graphs).to(device)
            out = model(batch.to_dict(), compute_force=True, compute_stress=periodic, training=False)
            e = out["energy"].detach().cpu().numpy().astype(np.float64)
            f = out["forces"].detach().cpu().numpy().astype(np.float64)
            ptr = batch["ptr"].cpu().numpy()
            s = out["stress"].detach().cpu().numpy().astype(np.float64) if periodic and out.get("stress") is not None else None
            for k, i in enumerate(chunk):
                energies[i] = e[k]
                forces[i] = f[ptr[k]:ptr[k + 1]].copy()
                if s is not None:
                    m = s[k]
                    stresses[i] = [m[0, 0], m[1, 1], m[2, 2], m[1, 2], m[0, 2], m[0, 1]]
    if not (np.all(np.isfinite(energies)) and all(np.all(np.isfinite(x)) for x in forces)):
        raise SimulationFailed("the model returned non-finite energies or forces on the dataset (atoms too close?)")
    return Predictions(energies, forces, stresses)


# ---------------------------------------------------------------------------------------------------
# Errors


@dataclass
class _FrameStats:
    """Per-frame sums from which every error of a group (and its bootstrap) follows."""

    e_err: np.ndarray  # (n,) signed energy error per atom, meV/atom; NaN where not used
    f_abs: np.ndarray  # (n,) sum |ΔF| over the group's components in the frame, meV/Å
    f_sq: np.ndarray
    f_cnt: np.ndarray  # (n,) number of force components
    s_abs: np.ndarray
    s_sq: np.ndarray
    s_cnt: np.ndarray
    n_atoms: np.ndarray


def _estimate(num_fn, idx_weights: np.ndarray | None, n: int) -> Estimate | None:
    value = num_fn(np.ones(n))
    if value is None or not np.isfinite(value):
        return None
    if idx_weights is None:
        return Estimate(value=float(value))
    boot = num_fn(idx_weights)
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return Estimate(value=float(value))
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return Estimate(value=float(value), ci95_low=float(lo), ci95_high=float(hi))


def _error_set(st: _FrameStats, *, with_energy: bool, n_atoms_group: int, seed: int = 0) -> ErrorSet:
    n = len(st.f_cnt)
    weights = None
    if n >= 2:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, n, size=(N_BOOTSTRAP, n))
        weights = np.stack([np.bincount(row, minlength=n) for row in idx]).astype(float)

    def ratio(num, den, root=False):
        def fn(w):
            w = np.atleast_2d(w)
            with np.errstate(invalid="ignore", divide="ignore"):
                r = (w @ num) / (w @ den)
            r = np.sqrt(r) if root else r
            return r[0] if r.shape[0] == 1 else r
        return fn

    out = ErrorSet(n_frames=n, n_atoms=n_atoms_group, n_stress_frames=int(np.sum(st.s_cnt > 0)))
    if n == 0:
        return out
    if with_energy:
        ones = np.ones(n)
        out.energy_mae_meV_atom = _estimate(ratio(np.abs(st.e_err), ones), weights, n)
        out.energy_rmse_meV_atom = _estimate(ratio(st.e_err ** 2, ones, root=True), weights, n)
    if st.f_cnt.sum() > 0:
        out.force_mae_meV_A = _estimate(ratio(st.f_abs, st.f_cnt), weights, n)
        out.force_rmse_meV_A = _estimate(ratio(st.f_sq, st.f_cnt, root=True), weights, n)
    if st.s_cnt.sum() > 0:
        has = st.s_cnt > 0
        sub_w = weights[:, has] if weights is not None and has.sum() >= 2 else None
        out.stress_mae_meV_A3 = _estimate(ratio(st.s_abs[has], st.s_cnt[has]), sub_w, int(has.sum()))
        out.stress_rmse_meV_A3 = _estimate(ratio(st.s_sq[has], st.s_cnt[has], root=True), sub_w, int(has.sum()))
    return out


def _stats(frames: Sequence[Atoms], pred: Predictions, element: int | None = None) -> _FrameStats:
    """Per-frame error sums; with ``element``, forces of that element's atoms only (no energy/stress use)."""
    n = len(frames)
    st = _FrameStats(*(np.zeros(n) for _ in range(8)))
    for i, a in enumerate(frames):
        mask = np.ones(len(a), bool) if element is None else (a.numbers == element)
        df = (pred.forces_eV_A[i] - np.asarray(a.arrays[FORCES_KEY]))[mask] * MEV
        st.f_abs[i], st.f_sq[i], st.f_cnt[i] = np.abs(df).sum(), (df ** 2).sum(), df.size
        st.n_atoms[i] = mask.sum()
        st.e_err[i] = (pred.energies_eV[i] - float(a.info[ENERGY_KEY])) / len(a) * MEV
        ref_s = a.info.get(STRESS_KEY)
        if element is None and ref_s is not None and np.all(np.isfinite(pred.stresses_eV_A3[i])):
            ds = (pred.stresses_eV_A3[i] - np.asarray(ref_s, float).reshape(-1)[:6]) * MEV
            st.s_abs[i], st.s_sq[i], st.s_cnt[i] = np.abs(ds).sum(), (ds ** 2).sum(), ds.size
    return st


def error_tables(frames: Sequence[Atoms], pred: Predictions) -> tuple[ErrorSet, dict[str, ErrorSet], dict[str, ErrorSet]]:
    """(overall, per element, per config type) errors of ``pred`` against the frames' REF_* labels."""
    frames = list(frames)
    overall = _error_set(_stats(frames, pred), with_energy=True, n_atoms_group=sum(len(a) for a in frames))
    per_element = {}
    for z in sorted({int(z) for a in frames for z in a.numbers}):
        idx = [i for i, a in enumerate(frames) if z in a.numbers]
        sub = [frames[i] for i in idx]
        sub_pred = _subset(pred, idx)
        per_element[chemical_symbols[z]] = _error_set(
            _stats(sub, sub_pred, element=z), with_energy=False,
            n_atoms_group=int(sum(np.sum(a.numbers == z) for a in sub)))
    per_config = {}
    for ct in sorted({str(a.info.get("config_type", "Default")) for a in frames}):
        idx = [i for i, a in enumerate(frames) if str(a.info.get("config_type", "Default")) == ct]
        sub = [frames[i] for i in idx]
        per_config[ct] = _error_set(_stats(sub, _subset(pred, idx)), with_energy=True,
                                    n_atoms_group=sum(len(a) for a in sub))
    return overall, per_element, per_config


def _subset(pred: Predictions, idx: list[int]) -> Predictions:
    return Predictions(pred.energies_eV[idx], [pred.forces_eV_A[i] for i in idx], pred.stresses_eV_A3[idx])


def _check_labels(frames: Sequence[Atoms], where: str) -> None:
    for i, a in enumerate(frames):
        if ENERGY_KEY not in a.info or FORCES_KEY not in a.arrays:
            raise InputError(f"{where}: frame {i} has no {ENERGY_KEY}/{FORCES_KEY} labels; evaluate labelled data only")


def evaluate_frames(loaded, frames: Sequence[Atoms], *, dataset_dir: str = "", dataset_hash: str = "",
                    split: str = "", head: str | None = None, device: str = "cpu", dtype: str = "float64",
                    batch_size: int = 8) -> tuple[EvaluationReport, Predictions]:
    """Evaluate a :class:`mlip.loader.LoadedModel` on labelled frames."""
    frames = list(frames)
    _check_labels(frames, dataset_dir or "frames")
    loaded.check_elements({int(z) for a in frames for z in a.numbers}, what=f"{split or 'evaluation'} frames")
    head = choose_head(loaded.heads, head)
    pred = predict(loaded.module, frames, head=head, batch_size=batch_size, device=device, dtype=dtype)
    overall, per_element, per_config = error_tables(frames, pred)
    flags = []
    if not frames:
        flags.append(Flag.EMPTY_SPLIT.value)
    elif len(frames) < FEW_FRAMES:
        flags.append(Flag.FEW_FRAMES.value)
    if frames and not any(STRESS_KEY in a.info for a in frames):
        flags.append(Flag.NO_STRESS_LABELS.value)
    report = EvaluationReport(
        model_ref=loaded.ref, model_sha256=loaded.sha256, dataset_dir=str(dataset_dir), dataset_hash=dataset_hash,
        split=split, head=head, dtype=dtype, n_frames=len(frames), n_atoms=sum(len(a) for a in frames),
        overall=overall, per_element=per_element, per_config_type=per_config, flags=flags,
    )
    return report, pred


def _split_frames(dataset_dir: str | Path, split: str):
    from training.data import Split, load_dataset

    try:
        which = Split(split)
    except ValueError as err:
        raise InputError(f"unknown split {split!r}; use one of {', '.join(s.value for s in Split)}") from err
    ds = load_dataset(dataset_dir)
    frames = [a for a in ds.split(which) if not is_isolated_atom(a)]  # E0 references, not tests of a model
    if not frames:
        raise InputError(f"the {which.value} split of {dataset_dir} is empty ({ds.manifest.split_counts}); "
                         "choose another split")
    return ds, frames


def evaluate_model(ref, dataset_dir: str | Path, *, split: str = "test", settings: Settings | None = None,
                   device: str = "cpu", dtype: str = "float64", head: str | None = None,
                   batch_size: int = 8) -> tuple[EvaluationReport, Predictions, list[Atoms]]:
    """Load ``ref`` through the model layer (trust rules apply) and evaluate it on a dataset split."""
    from mlip.loader import load_model

    settings = settings or load_settings()
    ds, frames = _split_frames(dataset_dir, split)
    loaded = load_model(ref, settings)
    report, pred = evaluate_frames(loaded, frames, dataset_dir=str(dataset_dir), dataset_hash=ds.hash,
                                   split=split, head=head, device=device, dtype=dtype, batch_size=batch_size)
    return report, pred, frames


def compare_models(ref_a, ref_b, dataset_dir: str | Path, *, split: str = "test", settings: Settings | None = None,
                   device: str = "cpu", dtype: str = "float64", batch_size: int = 8) -> ComparisonReport:
    """Evaluate two models on the same split; rows per element and per config type side by side."""
    from mlip.loader import load_model

    settings = settings or load_settings()
    ds, frames = _split_frames(dataset_dir, split)
    loaded = [load_model(r, settings) for r in (ref_a, ref_b)]
    for lm in loaded:  # both checked before either is evaluated
        lm.check_elements({int(z) for a in frames for z in a.numbers}, what=f"{split} split of {dataset_dir}")
    reports = [evaluate_frames(lm, frames, dataset_dir=str(dataset_dir), dataset_hash=ds.hash, split=split,
                               device=device, dtype=dtype, batch_size=batch_size)[0] for lm in loaded]
    a, b = reports
    rows = [ComparisonRow(kind="overall", group="all", a=a.overall, b=b.overall)]
    rows += [ComparisonRow(kind="element", group=el, a=a.per_element[el], b=b.per_element[el]) for el in a.per_element]
    rows += [ComparisonRow(kind="config_type", group=ct, a=a.per_config_type[ct], b=b.per_config_type[ct])
             for ct in a.per_config_type]
    return ComparisonReport(
        model_a=a.model_ref, model_b=b.model_ref, model_a_sha256=a.model_sha256, model_b_sha256=b.model_sha256,
        dataset_dir=str(dataset_dir), dataset_hash=ds.hash, split=split, n_frames=len(frames), rows=rows,
        evaluations=reports,
    )


# ---------------------------------------------------------------------------------------------------
# Parity plots (matplotlib's object API: no pyplot, no global backend switch)


def _parity_axes(ax, x, y, label, unit, colors=None, legend=None):
    lo = float(min(np.min(x), np.min(y))) if len(x) else 0.0
    hi = float(max(np.max(x), np.max(y))) if len(x) else 1.0
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.6", lw=1, zorder=0)
    if colors is None:
        ax.scatter(x, y, s=8, alpha=0.7)
    else:
        for key, mask in colors.items():
            ax.scatter(x[mask], y[mask], s=6, alpha=0.6, label=key)
        if legend:
            ax.legend(loc="upper left", fontsize=8, markerscale=2)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal")
    ax.set_xlabel(f"reference {label} ({unit})")
    ax.set_ylabel(f"model {label} ({unit})")


def parity_plots(frames: Sequence[Atoms], pred: Predictions, out_dir: str | Path, *, title: str = "",
                 report: EvaluationReport | None = None) -> dict[str, Path]:
    """PNG parity plots (energy per atom, force components by element, stress if labelled) in ``out_dir``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = list(frames)
    paths: dict[str, Path] = {}

    def save(fig, key):
        FigureCanvasAgg(fig)
        path = out_dir / f"parity_{key}.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        paths[key] = path

    def subtitle(est, unit):
        return "" if est is None else f"MAE {est.value:.1f} {unit}"

    n_atoms = np.array([len(a) for a in frames], float)
    e_ref = np.array([float(a.info[ENERGY_KEY]) for a in frames]) / n_atoms
    e_mod = pred.energies_eV / n_atoms
    fig = Figure(figsize=(4.6, 4.6))
    ax = fig.add_subplot()
    _parity_axes(ax, e_ref, e_mod, "energy", "eV/atom")
    ax.set_title(f"{title}\n{subtitle(report.overall.energy_mae_meV_atom, 'meV/atom') if report else ''}".strip(), fontsize=9)
    save(fig, "energy")

    f_ref = np.concatenate([np.asarray(a.arrays[FORCES_KEY]).reshape(-1) for a in frames])
    f_mod = np.concatenate([f.reshape(-1) for f in pred.forces_eV_A])
    z = np.concatenate([np.repeat(a.numbers, 3) for a in frames])
    colors = {chemical_symbols[k]: z == k for k in sorted(set(z.tolist()))}
    fig = Figure(figsize=(4.6, 4.6))
    ax = fig.add_subplot()
    _parity_axes(ax, f_ref, f_mod, "force component", "eV/Å", colors=colors, legend=True)
    ax.set_title(f"{title}\n{subtitle(report.overall.force_mae_meV_A, 'meV/Å') if report else ''}".strip(), fontsize=9)
    save(fig, "forces")

    has = [i for i, a in enumerate(frames) if STRESS_KEY in a.info and np.all(np.isfinite(pred.stresses_eV_A3[i]))]
    if has:
        s_ref = np.concatenate([np.asarray(frames[i].info[STRESS_KEY], float).reshape(-1)[:6] for i in has])
        s_mod = pred.stresses_eV_A3[has].reshape(-1)
        fig = Figure(figsize=(4.6, 4.6))
        ax = fig.add_subplot()
        _parity_axes(ax, s_ref * MEV, s_mod * MEV, "stress component", "meV/Å³")
        ax.set_title(f"{title}\n{subtitle(report.overall.stress_mae_meV_A3, 'meV/Å³') if report else ''}".strip(), fontsize=9)
        save(fig, "stress")
    return paths
