"""Ship a trained model as ``bundled:NAME``: copy it and its card into ``mlip/bundled`` and record it in the manifest.

The manifest entry carries the file's SHA-256 (the model layer trusts bundled files by it), the facts the
loader reports (elements, parameters, cutoff, heads, dtype), the dataset hash and the test-split errors,
re-computed here from the dataset's held-out test split (isolated-atom frames left out), so the figures
in the manifest are the ones ``tests/test_bundled_model.py`` checks. Usage, after ``ionscreen train``:

    python -m training.demo.bundle OUT_DIR --name lipscl-demo --dataset training/datasets/lipscl \
        --description "Demo MACE ..." [--errors-json errors.json]

``OUT_DIR`` is the training run's output directory (``<name>_stagetwo.model`` or ``<name>.model``,
``model_card.md``, ``model_card.json``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from pathlib import Path

BUNDLED = Path(__file__).resolve().parents[2] / "mlip" / "bundled"


def held_out_errors(loaded, dataset_dir: Path) -> dict:
    """Energy and force MAE on the dataset's test split (no isolated atoms), float64, by training.evaluate."""
    from training.data import load_dataset
    from training.evaluate import evaluate_frames, is_isolated_atom

    frames = [a for a in load_dataset(dataset_dir).split("test") if not is_isolated_atom(a)]
    report, _ = evaluate_frames(loaded, frames, dataset_dir=str(dataset_dir), split="test", dtype="float64")
    return {"energy_mae_meV_per_atom": round(report.overall.energy_mae_meV_atom.value, 3),
            "force_mae_meV_per_A": round(report.overall.force_mae_meV_A.value, 2), "n_test_frames": len(frames)}


def bundle(out_dir: Path, name: str, dataset_dir: Path, description: str, bundled: Path = BUNDLED) -> dict:
    candidates = [out_dir / f"{name}_stagetwo.model", out_dir / f"{name}.model"]
    model_file = next((p for p in candidates if p.is_file()), None)
    if model_file is None:
        raise SystemExit(f"no {name}_stagetwo.model or {name}.model in {out_dir}")
    card_json = json.loads((out_dir / "model_card.json").read_text())
    manifest_path = bundled / "manifest.json"
    manifest = json.loads(manifest_path.read_text())

    from mlip.loader import trust
    from mlip.config import load_settings

    loaded = trust(str(model_file), load_settings())  # a file we just trained: trusted for this evaluation
    errors = held_out_errors(loaded, dataset_dir)
    dataset_hash = json.loads((dataset_dir / "manifest.json").read_text())["dataset_hash"]
    if card_json.get("dataset_hash") not in (None, dataset_hash):
        raise SystemExit(f"{out_dir} was trained on dataset {card_json['dataset_hash'][:12]}, "
                         f"but {dataset_dir} is {dataset_hash[:12]}")
    sha = hashlib.sha256(model_file.read_bytes()).hexdigest()
    entry = {
        "file": f"{name}.model",
        "sha256": sha,
        "description": description,
        "card": f"{name}.md",
        "metadata": {
            "elements": list(loaded.elements),
            "atomic_numbers": [int(z) for z in loaded.atomic_numbers],
            "n_params": int(loaded.n_params),
            "dtype": loaded.dtype,
            "r_max_A": float(loaded.r_max_A),
            "model_class": type(loaded.module).__name__,
            "heads": list(loaded.heads),
            "dataset_hash": dataset_hash,
            "mlflow_run_id": card_json.get("mlflow_run_id"),
            "epochs_run": card_json.get("epochs_run"),
            "pair_repulsion": bool(getattr(loaded.module, "pair_repulsion", False)),
            "test_errors": errors,
        },
    }
    shutil.copyfile(model_file, bundled / f"{name}.model.tmp")
    os.replace(bundled / f"{name}.model.tmp", bundled / f"{name}.model")
    shutil.copyfile(out_dir / "model_card.md", bundled / f"{name}.md")
    manifest["models"][name] = entry
    tmp = manifest_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, manifest_path)
    return entry


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--description", required=True)
    parser.add_argument("--errors-json", type=Path, help="Also write the test-split errors here (for the data card).")
    args = parser.parse_args(argv)
    entry = bundle(args.out_dir, args.name, args.dataset, args.description)
    if args.errors_json:
        args.errors_json.write_text(json.dumps(entry["metadata"]["test_errors"], indent=1) + "\n")
    print(json.dumps(entry, indent=1))


if __name__ == "__main__":
    main()
