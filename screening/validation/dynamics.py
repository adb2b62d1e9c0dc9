"""The ``dynamics`` validation set: a model's tracer diffusivity at the state point of a reference ab-initio MD
trajectory, against the reference's own, both through the same estimator.

A conductivity set compares σ(300 K) with experiment after relaxation, supercells and an Arrhenius extrapolation;
when it disagrees, it does not say whether the model's energy surface or one of those steps is at fault. This set
asks the narrower question first: started from the reference's first frame (same atoms, same cell, so the same
density and composition), at the reference's temperature, does the model move the working ion as fast as DFT
does? Each entry runs the transport protocol at that one temperature, without relaxation and without a supercell
(:data:`BASE_PROTOCOL`: 2 fs steps, 1 ps of equilibration, production as long as the reference, at most
``CPU_PRODUCTION_PS`` in the CPU subset), and analyses both trajectories with :func:`analyze_frames` under the same
settings: the model's and the reference's D* come from one estimator, so estimator bias cancels in their ratio.

The figure per entry is log10(D*_model / D*_reference) with a 95% interval (each side's interval in log space,
added in quadrature on each side), "consistent" when that interval holds 0. A model with only an upper bound gives
an upper bound on the ratio; a reference with only a bound gives a lower bound.

Entries: the bundled AIMD (``data/aimd/``: Li10GeP2S12 at 600 K, 20 ps, 50 atoms) and any trajectory given as
``trajectories`` (``--trajectory``): an extended XYZ file with ``time_fs`` and ``temperature_K`` in each frame's
``info`` or a VASP ``vasprun.xml`` (POTIM and TEBEG = TEEND), with every atom
in every frame.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mlip.errors import InputError, IonscreenError
from mlip.trust import sha256_file
from screening.validation.base import EntryStatus, RunContext, ValidationEntry
from screening.validation.stats import RankValue, log10_errors, log10_ranking, rank_correlation

DATA_DIR = Path(__file__).resolve().parent / "data" / "aimd"
#: The bundled reference trajectories: key → file, working ion and where the trajectory comes from.
BUNDLED: dict[str, dict[str, str]] = {
    "aimd:lgps-600K": {
        "file": "lgps_600K.extxyz.gz", "ion": "Li",
        "source": "Li10GeP2S12 AIMD at 600 K, 20 ps (pymatgen-analysis-diffusion test data, BSD; data/aimd/README.md)",
    },
}
#: The model's MD: one temperature (the reference's), no relaxation, the reference's own cell (the minimum length
#: of 1 Å never repeats it). The analysis settings are those of the conductivity set's CPU protocol, applied to both
#: trajectories.
BASE_PROTOCOL: dict[str, Any] = {
    "name": "validation-dynamics",
    "timestep_fs": 2.0,
    "equilibration_ps": 1.0,
    "sample_interval_fs": 20.0,
    "checkpoint_interval_ps": 1.0,
    "supercell_min_length_A": 1.0,
    "relax": False,
    "analysis": {"n_blocks": 4, "fit_min_start_fs": 100.0, "min_hops": 10, "max_rel_half_width": 0.6},
}
#: Light atoms need a shorter step than 2 fs.
LIGHT_ELEMENTS_TIMESTEP_FS = {"H": 0.5, "He": 0.5}
CPU_PRODUCTION_PS = 10.0


def _read_first_frame(path: Path):
    """Frame 0 of a reference trajectory as ASE atoms (all atoms, wrapped into the cell)."""
    import ase.io

    from screening.transport.trajread import is_vasprun

    fmt = "vasp-xml" if is_vasprun(path) else None
    try:
        atoms = ase.io.read(str(path), index=0, format=fmt)
    except Exception as err:
        raise InputError(f"could not read a trajectory frame from {path}: {err}") from err
    if not all(atoms.pbc):
        raise InputError(f"{path}: frame 0 is not periodic in all three directions")
    atoms.wrap()
    atoms.calc = None
    return atoms


def _check_times(path: Path) -> None:
    """Refuse, before anything runs, an extended XYZ file whose frames do not state their time and temperature."""
    import ase.io

    from screening.transport.trajread import is_vasprun

    if is_vasprun(path):
        return  # vasprun.xml: POTIM and TEBEG, checked when it is read
    try:
        first = ase.io.read(str(path), index=slice(0, 2))
    except Exception as err:
        raise InputError(f"could not read a trajectory from {path}: {err}") from err
    if len(first) < 2:
        raise InputError(f"{path} holds one frame; a reference trajectory needs many")
    for key, unit in (("time_fs", "fs"), ("temperature_K", "K")):
        if any(key not in a.info for a in first):
            raise InputError(f"{path}: frames 0 and 1 must state {key} (in {unit}) in their info line; "
                             f"they hold {', '.join(sorted(first[0].info)) or 'nothing'}")


def _working_ion(path: Path, symbols: set[str], ion: str | None) -> str:
    from screening.candidates.oxidation import known_working_ions

    known = known_working_ions()
    if ion is not None:
        if ion not in known:
            raise InputError(f"ion {ion!r} is not a working ion; known: {', '.join(known)}")
        if ion not in symbols:
            raise InputError(f"{path} has no {ion} atoms (species: {', '.join(sorted(symbols))})")
        return ion
    present = sorted(symbols & set(known))
    if len(present) != 1:
        raise InputError(f"{path} holds {'no' if not present else 'several'} working ions "
                         f"({', '.join(present) or 'none of ' + ', '.join(known)}); name the mobile one with --ion")
    return present[0]


def _log_interval(value: float | None, ci: Sequence[float] | None) -> tuple[float, float, float] | None:
    """(log10 value, lower half-width, upper half-width) of a positive estimate with a positive interval."""
    if value is None or value <= 0 or not ci or ci[0] <= 0 or ci[1] <= 0:
        return None
    v = math.log10(value)
    return v, v - math.log10(ci[0]), math.log10(ci[1]) - v


def compare(model: Mapping[str, Any], reference: Mapping[str, Any]) -> dict[str, Any]:
    """log10(D*_model/D*_reference) with its 95% interval, or a bound on it, from two :func:`_side` records."""
    m = _log_interval(model.get("diffusivity_cm2_s"), model.get("diffusivity_ci95_cm2_s"))
    r = _log_interval(reference.get("diffusivity_cm2_s"), reference.get("diffusivity_ci95_cm2_s"))
    if m is not None and r is not None:
        value = m[0] - r[0]
        lo = value - math.hypot(m[1], r[2])
        hi = value + math.hypot(m[2], r[1])
        return {"log10_ratio": value, "log10_ratio_ci95": [lo, hi], "log10_ratio_bound": None,
                "consistent": lo <= 0.0 <= hi}
    m_ub, r_ub = model.get("diffusivity_upper_bound_cm2_s"), reference.get("diffusivity_upper_bound_cm2_s")
    if m is None and m_ub and r is not None:  # D_model < U and D_ref > its lower end: ratio < U / lower end
        bound = math.log10(m_ub) - (r[0] - r[1])
        return {"log10_ratio": None, "log10_ratio_ci95": None, "log10_ratio_bound": {"upper": bound},
                "consistent": bound >= 0.0}
    if r is None and r_ub and m is not None:  # D_ref < U: ratio > the model's lower end / U
        bound = (m[0] - m[1]) - math.log10(r_ub)
        return {"log10_ratio": None, "log10_ratio_ci95": None, "log10_ratio_bound": {"lower": bound},
                "consistent": bound <= 0.0}
    return {"log10_ratio": None, "log10_ratio_ci95": None, "log10_ratio_bound": None, "consistent": None}


def _side(result) -> dict[str, Any]:
    """What the comparison keeps of one side's :class:`TemperatureResult`."""
    return {
        "diffusivity_cm2_s": result.diffusivity_cm2_s,
        "diffusivity_ci95_cm2_s": list(result.diffusivity_ci95_cm2_s) if result.diffusivity_ci95_cm2_s else None,
        "diffusivity_upper_bound_cm2_s": result.diffusivity_upper_bound_cm2_s,
        "mean_temperature_K": result.mean_temperature_K,
        "n_hops": result.n_hops,
        "production_ps": result.production_ps,
        "n_frames": result.n_frames,
        "volume_A3": result.volume_A3,
        "flags": list(result.flags),
    }


class DynamicsSet:
    """Tracer diffusivity at a reference AIMD's state point (see the module docstring)."""

    name = "dynamics"
    #: The unit of :meth:`ranking`'s and :meth:`reference`'s values.
    value_unit = "log10 cm²/s"

    def __init__(self, trajectories: Sequence[str | Path] | None = None, ion: str | None = None, seed: int = 0):
        """``trajectories``: reference files to add to the bundled ones; ``ion``: their mobile ion (default: the
        one working ion each holds)."""
        self.seed = seed
        self._files: list[tuple[str, Path, str, str]] = []  # key, path, ion, source
        self._sha: dict[str, str] = {}  # key → the file's SHA-256
        for key, spec in BUNDLED.items():
            self._files.append((key, DATA_DIR / spec["file"], spec["ion"], spec["source"]))
            self._sha[key] = sha256_file(DATA_DIR / spec["file"])
        for given in trajectories or ():
            path = Path(given).expanduser()
            if not path.is_file():
                raise InputError(f"trajectory {path} does not exist or is not a file")
            _check_times(path)
            first = _read_first_frame(path)
            chosen = _working_ion(path, set(first.get_chemical_symbols()), ion)
            stem = path.name.split(".")[0] or "trajectory"
            sha = sha256_file(path)
            key = f"file:{stem}-{sha[:8]}"
            if key in self._sha:
                raise InputError(f"trajectory {path} is given twice")
            self._files.append((key, path.resolve(), chosen, f"{path.name} (given)"))
            self._sha[key] = sha

    def fingerprint(self) -> str:
        """The protocol, the ordering seed and every reference file's SHA-256 (an entry is the same computation only
        under all three)."""
        text = json.dumps({"protocol": BASE_PROTOCOL, "cpu_production_ps": CPU_PRODUCTION_PS, "seed": self.seed,
                           "files": self._sha, "ions": {k: ion for k, _, ion, _ in self._files}}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def describe(self) -> dict[str, Any]:
        return {"protocol": BASE_PROTOCOL, "cpu_production_ps": CPU_PRODUCTION_PS, "seed": self.seed,
                "references": [{"key": k, "source": s, "ion": ion, "sha256": self._sha[k]}
                               for k, _, ion, s in self._files]}

    def entries(self, *, limit: int | None = None, full: bool = False) -> list[ValidationEntry]:
        out = []
        for key, path, ion, source in self._files:
            atoms = _read_first_frame(path)
            out.append(ValidationEntry(
                key=key, label=f"{atoms.get_chemical_formula(mode='metal')} ({source.split(' (')[0]})",
                elements=frozenset(atoms.get_chemical_symbols()),
                data={"path": str(path), "sha256": self._sha[key], "ion": ion, "source": source,
                      "formula": atoms.get_chemical_formula(mode="metal"), "n_atoms": len(atoms),
                      "production_cap_ps": None if full else CPU_PRODUCTION_PS}))
        if limit is not None:
            if limit < 1:
                raise InputError(f"limit must be at least 1, got {limit}")
            out = out[:limit]
        return out

    def protocol_for(self, symbols: set[str], temperature_K: float, reference_ps: float, cap_ps: float | None):
        """The model's MD protocol for a reference at ``temperature_K`` with ``reference_ps`` of frames."""
        from screening.transport.protocol import make_protocol

        timestep = min([BASE_PROTOCOL["timestep_fs"], *(LIGHT_ELEMENTS_TIMESTEP_FS.get(s, math.inf) for s in symbols)])
        sample = BASE_PROTOCOL["sample_interval_fs"]
        ps = reference_ps if cap_ps is None else min(reference_ps, cap_ps)
        production = math.floor(ps * 1000.0 / sample + 1e-6) * sample / 1000.0
        if production <= 0:
            raise InputError(f"the reference covers {reference_ps:g} ps; at least {sample:g} fs is needed")
        return make_protocol(**{**BASE_PROTOCOL, "temperatures_K": [temperature_K], "timestep_fs": timestep,
                                "production_ps": production, "seed": self.seed})

    def run_entry(self, entry: ValidationEntry, context: RunContext) -> dict[str, Any]:
        from screening.candidates.oxidation import ion_charge
        from screening.transport.analysis import analyze_frames
        from screening.transport.protocol import AnalysisSettings
        from screening.transport.run import calculator_factory_for, run_transport
        from screening.transport.trajread import load_trajectory

        t0 = time.perf_counter()
        record: dict[str, Any] = {"status": EntryStatus.OK.value, **entry.data}
        path, ion = Path(entry.data["path"]), entry.data["ion"]
        try:
            if sha256_file(path) != entry.data["sha256"]:
                raise InputError(f"{path} changed since the set was read (SHA-256 differs)")
            loaded = load_trajectory(path, ion)
            charge = ion_charge(ion)
            analysis = AnalysisSettings(**BASE_PROTOCOL["analysis"])
            ref_result, _ = analyze_frames(loaded.frames, temperature_K=loaded.temperature_K, ion_charge=charge,
                                           settings=analysis)
            reference_ps = float(loaded.frames.times_fs[-1] - loaded.frames.times_fs[0]) / 1000.0
            start = _read_first_frame(path)
            protocol = self.protocol_for(set(start.get_chemical_symbols()), loaded.temperature_K, reference_ps,
                                         entry.data.get("production_cap_ps"))
        except IonscreenError as err:
            return {**record, "status": EntryStatus.FAILED.value, "stage": "reference",
                    "error": str(err).splitlines()[0][:500], "wall_s": time.perf_counter() - t0}
        record.update({"temperature_K": loaded.temperature_K, "reference_frame_dt_fs": loaded.frame_dt_fs,
                       "reference": _side(ref_result), "protocol_hash": protocol.hash,
                       "model_production_ps": protocol.production_ps})
        try:
            result = run_transport(start, calculator_factory_for(context.loaded, context.device), protocol,
                                   context.workdir / "transport", ion, charge=charge,
                                   model_ref=context.model_ref, model_sha256=context.model_sha256)
        except IonscreenError as err:
            return {**record, "status": EntryStatus.FAILED.value, "stage": "transport",
                    "error": str(err).splitlines()[0][:500], "wall_s": time.perf_counter() - t0}
        if result.n_atoms != len(start):
            raise AssertionError(f"the protocol repeated the reference cell ({len(start)} → {result.n_atoms} atoms)")
        model_side = _side(result.temperatures[0])
        record.update({"model": model_side, **compare(model_side, record["reference"]),
                       "md_engine": (result.provenance.md_engine or {}).get("md_engine"),
                       "wall_s": time.perf_counter() - t0})
        record["shown"] = _shown(record)
        if model_side["diffusivity_cm2_s"] is None and model_side["diffusivity_upper_bound_cm2_s"] is None:
            record.update(status=EntryStatus.FAILED.value, stage="analysis",
                          error="the model's run gave no D* and no bound (" + ", ".join(model_side["flags"]) + ")")
        return record

    # -- statistics -------------------------------------------------------------------------------------

    @staticmethod
    def ranking(records: Sequence[Mapping[str, Any]]) -> dict[str, RankValue]:
        """The model's log10 D* of every finished entry: the number, or its upper bound marked as one."""
        return log10_ranking(records, lambda r: (r.get("model") or {}).get("diffusivity_cm2_s"),
                             lambda r: (r.get("model") or {}).get("diffusivity_upper_bound_cm2_s"))

    @staticmethod
    def reference(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """log10 of the reference's D* where it is a number, in the units of :meth:`ranking`."""
        return {r["key"]: math.log10(r["reference"]["diffusivity_cm2_s"]) for r in records
                if (r.get("reference") or {}).get("diffusivity_cm2_s")}

    def summarise(self, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        counts = {s.value: sum(r.get("status") == s.value for r in records) for s in EntryStatus}
        ok = [r for r in records if r.get("status") == EntryStatus.OK.value]
        ratios = [r for r in ok if r.get("log10_ratio") is not None]
        bounded = [r for r in ok if r.get("log10_ratio") is None and r.get("log10_ratio_bound")]
        out: dict[str, Any] = {
            "n_entries": len(records), "n_ok": counts["ok"], "n_failed": counts["failed"],
            "n_uncovered": counts["uncovered"], "n_ratios": len(ratios), "n_ratio_bounds": len(bounded),
            "n_consistent": sum(r.get("consistent") is True for r in ok),
            "n_compared": sum(r.get("consistent") is not None for r in ok),
            "n_model_flagged": sum(bool((r.get("model") or {}).get("flags")) for r in ok),
        }
        values = np.array([r["log10_ratio"] for r in ratios])
        out["median_abs_log10_ratio"] = float(np.median(np.abs(values))) if len(values) else None
        out["geometric_mean_ratio"] = float(10 ** values.mean()) if len(values) else None
        out["per_entry"] = {r["key"]: {"log10_ratio": r.get("log10_ratio"), "ci95": r.get("log10_ratio_ci95"),
                                       "bound": r.get("log10_ratio_bound"), "consistent": r.get("consistent")}
                            for r in ok}
        err = log10_errors([r["reference"]["diffusivity_cm2_s"] for r in ratios],
                           [r["model"]["diffusivity_cm2_s"] for r in ratios])
        out["mae_log10_D_cm2_s"] = err.mae
        out["mean_signed_log10_D_cm2_s"] = err.mean_signed
        rho = rank_correlation([math.log10(r["reference"]["diffusivity_cm2_s"]) for r in ratios],
                               [math.log10(r["model"]["diffusivity_cm2_s"]) for r in ratios], seed=self.seed)
        out["spearman_rho"] = rho.as_dict()
        walls = [r["wall_s"] for r in records if r.get("wall_s") is not None]
        out["wall_s_total"] = float(sum(walls))
        out["rule"] = ("log10(D*_model/D*_reference) at the reference's temperature, cell and composition, both D* "
                       "from the same estimator; its interval adds the two log-space half-widths in quadrature; "
                       "consistent: the interval (or bound) allows a ratio of 1")
        return out

    def plot(self, records: Sequence[Mapping[str, Any]], out_dir: Path, *, title: str) -> list[Path]:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        ok = [r for r in records if r.get("status") == EntryStatus.OK.value
              and (r.get("reference") or {}).get("diffusivity_cm2_s")]
        fig = Figure(figsize=(5.2, 5.0))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        xs, ys = [], []
        for r in ok:
            ref, mod = r["reference"], r["model"]
            rx = _log_interval(ref["diffusivity_cm2_s"], ref["diffusivity_ci95_cm2_s"])
            if mod.get("diffusivity_cm2_s"):
                my = _log_interval(mod["diffusivity_cm2_s"], mod["diffusivity_ci95_cm2_s"])
                if rx is None or my is None:
                    continue
                ax.errorbar([rx[0]], [my[0]], xerr=[[rx[1]], [rx[2]]], yerr=[[my[1]], [my[2]]], fmt="o", ms=5,
                            capsize=2, color="C0")
                y = my[0]
            elif mod.get("diffusivity_upper_bound_cm2_s") and rx is not None:
                y = math.log10(mod["diffusivity_upper_bound_cm2_s"])
                ax.scatter([rx[0]], [y], marker="v", s=40, color="C3")
            else:
                continue
            xs.append(rx[0])
            ys.append(y)
            ax.annotate(f"{r.get('formula', r['key'])} {r.get('temperature_K', 0):.0f} K", (rx[0], y), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
        lims = [min([*xs, *ys, -8.0]) - 0.5, max([*xs, *ys, -4.0]) + 0.5]
        ax.plot(lims, lims, color="0.6", lw=1, zorder=0)
        for shift in (1, -1):
            ax.plot(lims, [lims[0] + shift, lims[1] + shift], color="0.85", lw=1, ls="--", zorder=0)
        ax.set_xlim(lims)
        ax.set_ylim(lims)
        ax.set_aspect("equal")
        ax.set_xlabel("reference (AIMD) log10 D* (cm²/s)")
        ax.set_ylabel("model log10 D* (cm²/s), same state point")
        ax.set_title(f"{title}\ntracer diffusivity at the AIMD state point ({len(xs)} entries; dashed: one decade; "
                     "▼ bound)", fontsize=9)
        path = out_dir / "dynamics_parity.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        return [path]


def _fmt_d(side: Mapping[str, Any]) -> str:
    if side.get("diffusivity_cm2_s"):
        lo, hi = side["diffusivity_ci95_cm2_s"]
        return f"{side['diffusivity_cm2_s']:.2g} [{lo:.2g}, {hi:.2g}]"
    if side.get("diffusivity_upper_bound_cm2_s"):
        return f"< {side['diffusivity_upper_bound_cm2_s']:.2g}"
    return "none"


def _shown(record: Mapping[str, Any]) -> str:
    text = f"D* {_fmt_d(record['model'])} cm²/s vs AIMD {_fmt_d(record['reference'])}"
    if record.get("log10_ratio") is not None:
        lo, hi = record["log10_ratio_ci95"]
        text += f"; ratio {10 ** record['log10_ratio']:.2g} [{10 ** lo:.2g}, {10 ** hi:.2g}]"
    elif record.get("log10_ratio_bound"):
        (side, b), = record["log10_ratio_bound"].items()
        text += f"; ratio {'<' if side == 'upper' else '>'} {10 ** b:.2g}"
    return text
