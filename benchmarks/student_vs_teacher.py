"""Student against teacher (and any other models), side by side: errors on held-out frames and NEB barriers.

1. Energy and force errors of every model against the labels of a dataset's test split (the teacher's own
   labels when the dataset is a distillation set: the teacher's row is then its float32 reproducibility), and
   of the frames grouped by their ``host`` (a teacher MD trajectory is ``<cell>@<T>K``).
2. Climbing-image NEB barriers of the first ``--hops`` symmetry-distinct Li hops (shortest first, vacancy
   mechanism) of each library structure (``HOST+ION``: a cathode host's hops of that ion through the empty
   framework, as a screening job's NEB runs them), every model on the same hop network, the same NEB settings, and the
   difference of each model from the first (the teacher).

    OMP_NUM_THREADS=2 python benchmarks/student_vs_teacher.py chgnet:0.3.0 bundled:lipscl-student \\
        bundled:lipscl-demo --dataset training/datasets/lipscl-student --structures Li2S beta-Li3PS4 Li6PS5Cl \\
        --hops 4 --out bench-student

Writes ``OUT/student_vs_teacher.json`` with every figure (after each structure); prints two tables. A model
that file already holds, measured with the same settings (dataset hash, split, hops, fmax, images) and the same
file (SHA-256), is not measured again: a new student is compared with the teacher without rerunning the teacher.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np


def frame_errors(loaded, frames) -> dict:
    """Errors through each model's own ASE calculator (float64 where the family has it), the path the
    ``frames`` validation set takes, with training.evaluate's conventions, overall and per ``host``."""
    from mlip.calculators import Task
    from training.evaluate import Predictions, error_tables

    calc = loaded.calculator(task=Task.SINGLE_POINT, dtype="float64")
    energies, forces = [], []
    for atoms in frames:
        a = atoms.copy()
        a.calc = calc
        energies.append(float(a.get_potential_energy()))
        forces.append(np.asarray(a.get_forces(), dtype=float))

    def errors(idx: list[int]) -> dict:
        pred = Predictions(np.array([energies[i] for i in idx]), [forces[i] for i in idx],
                           np.full((len(idx), 6), np.nan))
        overall, _, _ = error_tables([frames[i] for i in idx], pred)
        return {"energy_mae_meV_per_atom": overall.energy_mae_meV_atom.value,
                "force_mae_meV_per_A": overall.force_mae_meV_A.value, "n_frames": len(idx)}

    hosts = defaultdict(list)
    for i, atoms in enumerate(frames):
        hosts[str(atoms.info.get("host", "?"))].append(i)
    return {**errors(list(range(len(frames)))), "by_host": {h: errors(idx) for h, idx in sorted(hosts.items())}}


def barriers(loaded, name: str, hops: int, out: Path, fmax: float, images: int) -> list[dict]:
    from mlip.config import load_settings
    from screening.candidates import build_candidate
    from screening.neb import NebParameters, neb_for_structure
    from screening.neb.driver import neb_engine_for
    from workflows.jobs.tasks import neb_structure

    engine = neb_engine_for(loaded, device="cpu")
    params = NebParameters(n_images=images, fmax_eV_A=fmax)
    began = time.perf_counter()
    host, _, ion = name.partition("+")
    if ion:  # a cathode host, as a screening job runs its NEB: one ion through the empty framework
        structure, sites = neb_structure(build_candidate(host, ion=ion))
        doc = neb_for_structure(structure, ion, engine, params, insertion_sites_frac=sites, max_hops=hops,
                                out_dir=out, home=load_settings().home)
    else:
        doc = neb_for_structure(build_candidate(name).structure, "Li", engine, params, max_hops=hops,
                                mechanism="vacancy", out_dir=out, home=load_settings().home)
    wall = time.perf_counter() - began
    rows = []
    for hop in doc.hops:
        if "not_computed" in hop.flags:
            continue
        rows.append({"structure": name, "hop_label": hop.hop_label, "hop_length_A": hop.hop_length_A,
                     "barrier_eV": hop.barrier_forward_eV, "converged": hop.converged, "flags": list(hop.flags),
                     "n_atoms": hop.n_atoms})
    print(f"  {loaded.ref} {name}: {len(rows)} hop(s) in {wall:.0f} s", flush=True)
    return rows


def _earlier_entries(report_file: Path, settings_key: dict) -> dict:
    """Models already measured in ``report_file`` under the same settings (dataset hash, split, NEB settings)."""
    if not report_file.exists():
        return {}
    earlier = json.loads(report_file.read_text())
    if any(earlier.get(k) != v for k, v in settings_key.items()):
        print(f"  {report_file} was made with other settings: every model is measured again", flush=True)
        return {}
    return earlier.get("models", {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="model references; differences are to the first (the teacher)")
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--structures", nargs="*", default=["Li2S", "beta-Li3PS4", "Li6PS5Cl"])
    parser.add_argument("--hops", type=int, default=4, help="hops per structure (shortest first)")
    parser.add_argument("--fmax", type=float, default=0.05)
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench-student"))
    args = parser.parse_args()

    from mlip.config import load_settings
    from mlip.loader import load_model
    from training.data import load_dataset
    from training.evaluate import is_isolated_atom

    args.out.mkdir(parents=True, exist_ok=True)
    settings = load_settings()
    dataset = load_dataset(args.dataset)
    frames = [a for a in dataset.split(args.split) if not is_isolated_atom(a)]
    # a model measured before in OUT with the same settings (and the same file) is not measured again
    settings_key = {"dataset_hash": dataset.manifest.dataset_hash, "split": args.split, "hops": args.hops,
                    "fmax": args.fmax, "images": args.images}
    report_file = args.out / "student_vs_teacher.json"
    done = _earlier_entries(report_file, settings_key)
    report: dict = {"dataset": str(args.dataset), **settings_key, "models": {}}

    def save() -> None:  # the earlier entries stay in the file beside this run's
        report_file.write_text(json.dumps({**report, "models": {**done, **report["models"]}}, indent=1) + "\n")

    for ref in args.models:
        loaded = load_model(ref, settings)
        entry = done.get(ref)
        if entry is None or entry["sha256"] != loaded.sha256:
            entry = {"sha256": loaded.sha256, "family": loaded.family, "frames": frame_errors(loaded, frames),
                     "hops": []}
        else:
            print(f"  {ref}: frame errors from {report_file}", flush=True)
        # the file keeps every structure measured (hops or none); the tables show the requested ones
        measured = set(entry.setdefault("structures_done", []))
        for name in args.structures:
            if name in measured:
                print(f"  {ref} {name}: barriers from {report_file}", flush=True)
                continue
            entry["hops"] += barriers(loaded, name, args.hops, args.out / f"{loaded.sha256[:12]}-{name}",
                                      args.fmax, args.images)
            entry["structures_done"].append(name)
            report["models"][ref] = entry
            save()
        report["models"][ref] = entry
        save()

    print(f"\nErrors on {args.dataset} ({args.split}, {len(frames)} frames):")
    print(f"{'model':32s} {'E MAE meV/atom':>15s} {'F MAE meV/Å':>12s}")
    for ref, entry in report["models"].items():
        fr = entry["frames"]
        print(f"{ref:32s} {fr['energy_mae_meV_per_atom']:15.1f} {fr['force_mae_meV_per_A']:12.1f}")
    teacher = args.models[0]
    keyed = {ref: {(h["structure"], h["hop_label"]): h for h in e["hops"] if h["structure"] in args.structures}
             for ref, e in report["models"].items()}
    print(f"\nNEB barriers (eV; in brackets: minus {teacher}'s):")
    print(f"{'hop':28s} " + " ".join(f"{ref[:24]:>26s}" for ref in args.models))
    diffs = defaultdict(list)
    for key, hop in keyed[teacher].items():
        cells = []
        for ref in args.models:
            other = keyed[ref].get(key)
            b = other and other["barrier_eV"]
            if b is None:
                cells.append(f"{'-':>26s}")
                continue
            if ref != teacher and hop["barrier_eV"] is not None:
                diffs[ref].append(b - hop["barrier_eV"])
                cells.append(f"{b:12.3f} ({b - hop['barrier_eV']:+.3f})".rjust(26))
            else:
                cells.append(f"{b:26.3f}")
        print(f"{key[0]} hop {key[1]} ({hop['hop_length_A']:.2f} Å)".ljust(28) + " " + " ".join(cells))
    for ref, d in diffs.items():
        d = np.array(d)
        report["models"][ref]["barrier_vs_teacher"] = {"structures": list(args.structures), "n": len(d),
                                                       "mae_eV": float(np.mean(np.abs(d))),
                                                       "max_abs_eV": float(np.max(np.abs(d))),
                                                       "within_0.05_eV": int(np.sum(np.abs(d) <= 0.05))}
        print(f"{ref}: barrier MAE vs {teacher} {np.mean(np.abs(d)):.3f} eV, max {np.max(np.abs(d)):.3f} eV, "
              f"{int(np.sum(np.abs(d) <= 0.05))}/{len(d)} within 0.05 eV")
    save()


if __name__ == "__main__":
    main()
