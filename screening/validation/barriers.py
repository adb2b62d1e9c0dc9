"""The ``barriers`` validation set: a model's climbing-image NEB barriers against published DFT NEB barriers.

Data: 558 hops of Li, Na, K, Rb, Mg, Ca, Sr, Zn and Al in electrode and electrolyte hosts, each as its two
endpoints with the DFT barrier (``data/migration-barriers``, MIT licence, Devi, Butler & Sai Gautam 2024; GGA or
GGA+U NEB from the literature and the Materials Project). The moving ion is atom 0 of both endpoints.

Each hop runs through :mod:`screening.neb.endpoints` (the code behind ``ionscreen neb --endpoints``): the endpoint
checks, both endpoints relaxed with the ion free, IDPP, improved-tangent CI-NEB. The band follows the ion's
displacement as written in the data (``as-given``): the files hold the first and last image of each publication's
interpolated band, whose raw displacement is the published path (in 37 hops another periodic image is as short or
shorter, and in three of them, Li7P3Se11, Na7P3S11 and Na7P3Se11, 1.5 Å shorter: a different hop).

The predicted barrier is the highest minus the lowest energy of the converged band (endpoints included): the
convention of the MLIP benchmark on this data (Bheemaguli, Xiao & Sai Gautam, Digital Discovery 2026; their
published NEB energies give max minus min), which is the larger of forward and backward unless an image lies below
both endpoints (flagged ``intermediate_minimum``). Forward and backward are recorded too. A band that does not
converge gives no number (flagged).

The default CPU subset (``entries()``) is chosen from the input alone, never from results: the hops of the seven
ions Li, Na, K, Mg, Ca, Zn, Al whose endpoints pass the checks and hold at most ``SUBSET_MAX_ATOMS`` atoms; per ion
ordered by (atoms, jid) with each host's first hop ahead of second hops in the same host; then taken in turn, one
per ion in that ion order, until ``SUBSET_SIZE``. ``entries(full=True)`` is every hop in file order.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import math
import re
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from mlip.errors import InputError, IonscreenError, ModelDomainError
from screening.neb.band import NebParameters, PathConvention
from screening.validation.base import EntryStatus, RunContext, ValidationEntry

DATA_DIR = Path(__file__).parent / "data" / "migration-barriers"
DATA_FILE = DATA_DIR / "train_endpoints.extxyz.gz"

#: A hop is a good conductor's when its barrier is below this, eV (the issue's cut-off; room-temperature fast ion
#: conduction needs roughly 0.5 eV or less).
GOOD_CONDUCTOR_CUTOFF_EV = 0.5
#: The ions of the default subset, in the order the subset takes them (monovalent first, then multivalent hosts).
SUBSET_IONS = ("Li", "Na", "K", "Mg", "Ca", "Zn", "Al")
#: Hops in the default subset (the issue asks for at least 40).
SUBSET_SIZE = 42
#: The largest endpoint cell in the default subset, atoms: the smallest cells of every ion (Al's smallest three
#: have 55 atoms). CHGNet 0.3.0 on one thread needs 15 s to 7 min of CPU per hop of this size (measured in
#: benchmarks/validate_barriers.py: 42 hops, 65 min of CPU on a shared machine).
SUBSET_MAX_ATOMS = 56

#: The NEB settings of this set, the same for every model (recorded in each record's provenance through the
#: parameters hash). Three images and 0.1 eV/Å keep a hop of ~50 atoms affordable on a CPU; the climbing image
#: still puts the top image on the saddle. 39 of the 42 subset hops converge within 200 steps with CHGNet.
VALIDATION_NEB = NebParameters(n_images=3, fmax_eV_A=0.1, max_steps=200, endpoint_fmax_eV_A=0.05,
                               endpoint_max_steps=150)


def host_name(sys_name: str) -> str:
    """The host of a hop: its system name without the trailing path number (``Li3OCl_2`` -> ``Li3OCl``)."""
    return re.sub(r"_\d+$", "", sys_name)


@functools.cache
def read_endpoint_frames(path: Path) -> tuple:
    """Every frame of a gzipped endpoint file (initial, final, initial, ...), read once per process; shared, so
    callers copy before they change a frame."""
    import io

    import ase.io

    # Decompressed first: ASE's extxyz reader seeks back to every frame, and a seek in a gzip stream decompresses
    # from the start (91 s instead of 2 s for this file).
    with gzip.open(path, "rt") as handle:
        text = handle.read()
    frames = ase.io.read(io.StringIO(text), index=":", format="extxyz")
    if len(frames) % 2:
        raise InputError(f"{path}: {len(frames)} frames, not pairs of initial and final endpoints")
    return tuple(frames)


@functools.cache
def _hop_table(path: Path) -> tuple[ValidationEntry, ...]:
    """Every hop of the data file in file order."""
    frames = read_endpoint_frames(path)
    entries = []
    for index in range(len(frames) // 2):
        initial, final = frames[2 * index], frames[2 * index + 1]
        info = initial.info
        jid, ion = int(info["jid"]), str(info["ion"])
        data = {
            "index": index,
            "jid": jid,
            "sys_name": str(info["sys_name"]),
            "host": host_name(str(info["sys_name"])),
            "crystal_class": str(info.get("crystal_class", "")),
            "ion": ion,
            "reference_barrier_eV": float(info["barrier_eV"]),
            "n_atoms": len(initial),
            "hop_length_A": float(np.linalg.norm(final.positions[0] - initial.positions[0])),
        }
        entries.append(ValidationEntry(key=f"{index:03d}-jid{jid}", label=f"{data['sys_name']} ({ion}, jid {jid})",
                                       elements=frozenset(initial.get_chemical_symbols()), data=data))
    return tuple(entries)


def _check_hop(path: Path, index: int, convention: PathConvention):
    """Hop ``index`` of the data file as a checked :class:`screening.neb.endpoints.EndpointPair` (moving atom 0,
    the data's ion); an ``EndpointError`` names what is wrong."""
    from screening.neb.endpoints import check_endpoint_pair

    initial, final = read_endpoint_frames(path)[2 * index: 2 * index + 2]
    key = _hop_table(path)[index].key
    return check_endpoint_pair(initial, final, names=(f"{key} initial", f"{key} final"), moving_index=0,
                               ion=str(initial.info["ion"]), path=convention)


@functools.cache
def input_error(path: Path, index: int, convention: PathConvention = PathConvention.AS_GIVEN) -> str | None:
    """Why the endpoint checks refuse hop ``index`` (e.g. the two hops of Na4MnAlP3O12 whose endpoints hold two
    Na atoms 0.014 Å apart), or None."""
    from screening.neb.endpoints import EndpointError

    try:
        _check_hop(path, index, convention)
    except EndpointError as err:
        return str(err)
    return None


def default_subset(hops: Sequence[ValidationEntry], *, size: int = SUBSET_SIZE, ions: Sequence[str] = SUBSET_IONS,
                   max_atoms: int = SUBSET_MAX_ATOMS, valid=lambda entry: True) -> list[ValidationEntry]:
    """The default CPU subset by the module's rule: hops of ``ions`` with at most ``max_atoms`` atoms that are
    ``valid`` (their endpoints pass the checks), per ion by (atoms, jid) with each host's first hop first, taken
    one per ion in turn up to ``size``."""
    queues = {}
    for ion in ions:
        hops_of_ion = sorted((h for h in hops if h.data["ion"] == ion and h.data["n_atoms"] <= max_atoms),
                             key=lambda h: (h.data["n_atoms"], h.data["jid"]))
        seen: set[str] = set()
        first, later = [], []
        for hop in hops_of_ion:
            (later if hop.data["host"] in seen else first).append(hop)
            seen.add(hop.data["host"])
        queues[ion] = first + later
    chosen: list[ValidationEntry] = []
    while len(chosen) < size and any(queues.values()):
        for ion in ions:
            while queues[ion] and len(chosen) < size:
                hop = queues[ion].pop(0)
                if valid(hop):  # checked lazily: only the hops the rule reaches
                    chosen.append(hop)
                    break
    return chosen


@functools.cache
def _file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _errors(pairs: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """MAE, RMSE, mean signed error (model minus DFT) and the good/poor classification share of (reference,
    predicted) pairs; None where there are none."""
    if not pairs:
        return {"n": 0, "mae_eV": None, "rmse_eV": None, "mean_signed_error_eV": None,
                "classified_correctly_share": None}
    reference, predicted = (np.array(column, dtype=float) for column in zip(*pairs))
    error = predicted - reference
    same_class = (reference < GOOD_CONDUCTOR_CUTOFF_EV) == (predicted < GOOD_CONDUCTOR_CUTOFF_EV)
    return {"n": len(pairs), "mae_eV": float(np.abs(error).mean()), "rmse_eV": float(np.sqrt((error ** 2).mean())),
            "mean_signed_error_eV": float(error.mean()), "classified_correctly_share": float(same_class.mean())}


class BarrierSet:
    """DFT NEB barriers from given endpoints (:class:`screening.validation.base.ValidationSet`)."""

    name: ClassVar[str] = "barriers"

    def __init__(self, data_file: str | Path = DATA_FILE, params: NebParameters = VALIDATION_NEB,
                 path: PathConvention = PathConvention.AS_GIVEN):
        self.data_file = Path(data_file).resolve()
        self.params = params
        self.path = PathConvention(path)

    def fingerprint(self) -> str:
        """What makes two runs of a hop the same computation: the data, the NEB settings and the path convention."""
        text = json.dumps({"data_sha256": _file_sha256(self.data_file), "neb": self.params.model_dump(mode="json"),
                           "path": str(self.path)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def describe(self) -> dict[str, Any]:
        return {"data": "558 DFT NEB hops with both endpoints (MIT; Devi, Butler & Sai Gautam, npj Comput. Mater. "
                        "2024), training split", "data_sha256": _file_sha256(self.data_file),
                "neb": self.params.model_dump(mode="json"), "path": str(self.path),
                "predicted_barrier": "highest minus lowest energy of the converged band (endpoints included), eV",
                "subset": f"{SUBSET_SIZE} hops of {', '.join(SUBSET_IONS)} with at most {SUBSET_MAX_ATOMS} atoms and "
                          "valid endpoints, smallest first (each host's first hop first), one per ion in turn",
                "classification_cutoff_eV": GOOD_CONDUCTOR_CUTOFF_EV}

    @staticmethod
    def ranking(records: Sequence[Mapping[str, Any]]) -> dict:
        """The predicted barrier of every hop that has one (for the agreement between models)."""
        from screening.validation.stats import RankValue

        return {r["key"]: RankValue(float(r["predicted_barrier_eV"])) for r in records
                if r.get("status") == EntryStatus.OK.value and r.get("predicted_barrier_eV") is not None}

    #: The unit of :meth:`ranking`'s and :meth:`reference`'s values.
    value_unit = "eV"

    @staticmethod
    def reference(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """The DFT barrier of every hop, eV, in the units of :meth:`ranking` (for the models' spread versus error)."""
        return {r["key"]: float(r["reference_barrier_eV"]) for r in records if r.get("reference_barrier_eV") is not None}

    # ------------------------------------------------------------------------------------------------ entries
    def entries(self, *, limit: int | None = None, full: bool = False) -> list[ValidationEntry]:
        """Every hop in file order (``full``) or the default CPU subset in its turn-by-ion order; the first
        ``limit`` of them."""
        hops = list(_hop_table(self.data_file))
        chosen = hops if full else default_subset(
            hops, valid=lambda entry: input_error(self.data_file, entry.data["index"], self.path) is None)
        if limit is not None:
            if limit < 0:
                raise InputError(f"limit must be zero or more, got {limit}")
            chosen = chosen[:limit]
        return chosen

    # ------------------------------------------------------------------------------------------------ running
    def run_entry(self, entry: ValidationEntry, context: RunContext) -> dict[str, Any]:
        """NEB of one hop with the context's model; a record with the DFT and the model barrier, flags and status."""
        from screening.neb.endpoints import neb_for_endpoint_pair

        data = entry.data
        record: dict[str, Any] = {
            "key": entry.key, "label": entry.label, "ion": data["ion"], "sys_name": data["sys_name"],
            "jid": data["jid"], "crystal_class": data["crystal_class"], "n_atoms": data["n_atoms"],
            "hop_length_A": data["hop_length_A"], "reference_barrier_eV": data["reference_barrier_eV"],
            "predicted_barrier_eV": None, "predicted_forward_eV": None, "predicted_backward_eV": None,
            "predicted_interval_eV": None, "converged": False, "flags": [], "steps": 0, "seconds": 0.0,
            "model_ref": context.model_ref, "model_sha256": context.model_sha256, "error": None,
        }
        missing = context.loaded.missing_elements(sorted(entry.elements))
        if missing:
            return {**record, "status": EntryStatus.UNCOVERED.value, "missing_elements": missing,
                    "error": f"model {context.model_ref} does not cover {', '.join(missing)}"}
        began = time.perf_counter()
        try:
            pair = _check_hop(self.data_file, int(data["index"]), self.path)
            result = neb_for_endpoint_pair(pair, self._engine(context), self.params, name="band",
                                           out_dir=context.workdir)
        except ModelDomainError as err:
            return {**record, "status": EntryStatus.UNCOVERED.value, "error": str(err),
                    "seconds": time.perf_counter() - began}
        except (IonscreenError, RuntimeError, ValueError, FloatingPointError, np.linalg.LinAlgError) as err:
            # InputError (bad endpoints) and failures inside the model's own code (torch, graph building)
            return {**record, "status": EntryStatus.FAILED.value, "error": f"{type(err).__name__}: {err}",
                    "seconds": time.perf_counter() - began}
        seconds = time.perf_counter() - began
        Path(context.workdir).mkdir(parents=True, exist_ok=True)
        (Path(context.workdir) / "neb_endpoints.json").write_text(result.model_dump_json(indent=1))
        flags = [str(flag) for flag in result.flags]
        record.update(converged=result.converged, flags=flags, steps=result.steps, seconds=seconds,
                      endpoint_steps=list(result.endpoint_steps),
                      predicted_forward_eV=_finite_or_none(result.barrier_forward_eV),
                      predicted_backward_eV=_finite_or_none(result.barrier_backward_eV),
                      parameters_sha256=result.provenance.parameters_sha256 if result.provenance else None)
        if "neb_failed" in flags:
            return {**record, "status": EntryStatus.FAILED.value, "error": result.message}
        record["shown"] = f"no barrier (DFT {data['reference_barrier_eV']:.3f} eV)"
        if result.barrier_forward_eV is not None and result.profile_file is not None:
            energies = json.loads(Path(result.profile_file).read_text())["energy_eV"]
            lowest, initial = min(energies), float(result.energy_initial_eV)
            record["predicted_barrier_eV"] = max(energies) - lowest
            record["shown"] = f"{record['predicted_barrier_eV']:.3f} eV (DFT {data['reference_barrier_eV']:.3f})"
            if result.barrier_forward_interval_eV is not None:
                record["predicted_interval_eV"] = [initial + e - lowest for e in result.barrier_forward_interval_eV]
        return {**record, "status": EntryStatus.OK.value}

    @staticmethod
    def _engine(context: RunContext):
        """The model's best NEB engine (batched images where its family has them), else the context's calculator."""
        from mlip.calculators import Task
        from screening.neb.driver import neb_engine_for

        if getattr(context.loaded, "backend", None) is not None:
            return neb_engine_for(context.loaded, device=context.device)
        return context.calculator(task=Task.NEB)

    # ------------------------------------------------------------------------------------------------ figures
    def summarise(self, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """MAE, RMSE and mean signed error (eV) of the model against DFT over the hops with a barrier, overall and
        per ion; the share classified correctly as good/poor conductor at ``GOOD_CONDUCTOR_CUTOFF_EV``; counts of
        failed, uncovered, flagged and unconverged hops. Flagged hops with a barrier count in the errors (they are
        also given without them, ``unflagged``)."""
        status = Counter(str(r.get("status")) for r in records)
        ok = [r for r in records if r.get("status") == EntryStatus.OK.value]
        numbered = [r for r in ok if r.get("predicted_barrier_eV") is not None]

        def pairs(rows):
            return [(float(r["reference_barrier_eV"]), float(r["predicted_barrier_eV"])) for r in rows]

        per_ion: dict[str, dict[str, Any]] = {}
        by_ion: dict[str, list] = defaultdict(list)
        for r in records:
            by_ion[str(r.get("ion"))].append(r)
        for ion in sorted(by_ion, key=lambda i: (SUBSET_IONS.index(i) if i in SUBSET_IONS else len(SUBSET_IONS), i)):
            rows = by_ion[ion]
            rows_numbered = [r for r in rows if r.get("status") == EntryStatus.OK.value
                             and r.get("predicted_barrier_eV") is not None]
            per_ion[ion] = {**_errors(pairs(rows_numbered)), "n_entries": len(rows),
                            "n_failed": sum(r.get("status") == EntryStatus.FAILED.value for r in rows),
                            "n_flagged": sum(bool(r.get("flags")) for r in rows if r.get("status") == EntryStatus.OK.value)}
        unflagged = [r for r in numbered if not r.get("flags")]
        overall = _errors(pairs(numbered))
        return {
            **overall,
            "n_entries": len(records),
            "n_ok": len(ok),
            "n_failed": status.get(EntryStatus.FAILED.value, 0),
            "n_uncovered": status.get(EntryStatus.UNCOVERED.value, 0),
            "n_flagged": sum(bool(r.get("flags")) for r in ok),
            "n_not_converged": sum(r.get("predicted_barrier_eV") is None for r in ok),
            "classification_cutoff_eV": GOOD_CONDUCTOR_CUTOFF_EV,
            "unflagged": _errors(pairs(unflagged)),
            "seconds_total": float(sum(float(r.get("seconds") or 0.0) for r in records)),
            "per_ion": per_ion,
        }

    def plot(self, records: Sequence[Mapping[str, Any]], out_dir: Path, *, title: str) -> list[Path]:
        """A parity plot (model against DFT barrier, coloured by ion; hollow markers: flagged) as a PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        rows = [r for r in records if r.get("status") == EntryStatus.OK.value and r.get("predicted_barrier_eV") is not None]
        figures = self.summarise(records)
        fig, ax = plt.subplots(figsize=(6.4, 5.0), dpi=120)
        ions = sorted({str(r["ion"]) for r in rows},
                      key=lambda i: (SUBSET_IONS.index(i) if i in SUBSET_IONS else len(SUBSET_IONS), i))
        colours = plt.get_cmap("tab10")
        top = max([GOOD_CONDUCTOR_CUTOFF_EV * 2] + [max(float(r["reference_barrier_eV"]), float(r["predicted_barrier_eV"]))
                                                    for r in rows]) * 1.05
        bottom = min([0.0] + [float(r["predicted_barrier_eV"]) for r in rows]) - 0.05
        ax.plot([bottom, top], [bottom, top], color="0.5", lw=1)
        ax.axvline(GOOD_CONDUCTOR_CUTOFF_EV, color="0.7", ls="--", lw=0.8)
        ax.axhline(GOOD_CONDUCTOR_CUTOFF_EV, color="0.7", ls="--", lw=0.8)
        for k, ion in enumerate(ions):
            mine = [r for r in rows if r["ion"] == ion]
            colour = colours(k % 10)
            for flagged in (False, True):
                pts = [r for r in mine if bool(r.get("flags")) == flagged]
                if not pts:
                    continue
                ax.scatter([r["reference_barrier_eV"] for r in pts], [r["predicted_barrier_eV"] for r in pts],
                           s=28, edgecolors=colour, facecolors="none" if flagged else colour,
                           label=None if flagged else f"{ion} ({len(mine)})")
        ax.set_xlim(bottom, top)
        ax.set_ylim(bottom, top)
        ax.set_xlabel("DFT barrier (eV)")
        ax.set_ylabel("model barrier (eV)")
        mae = figures["mae_eV"]
        ax.set_title(f"{title}\nMAE {mae:.3f} eV over {figures['n']} hops" if mae is not None
                     else f"{title}\nno converged barrier", fontsize=9)
        if rows:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), title="hollow: flagged",
                      title_fontsize=7)  # outside the axes: no point hidden
        fig.tight_layout()
        path = out_dir / "barriers_parity.png"
        fig.savefig(path)
        plt.close(fig)
        return [path]
