"""The data card of a distillation dataset: where every frame came from, who labelled it, how it is split.

Every frame of a distillation dataset carries its origin in its info (``source``: the sampling step,
``host``: the structure or teacher trajectory, ``kind``, ``temperature_K``, ``sampled_from``, seeds) and its
labeller (``teacher_model_ref``, ``teacher_model_sha256``, or the level of theory); this groups them into one table
per origin, with the split each group went to, so a reader can trace any frame back to the command that made it.

    python -m training.distill.data_card --dataset training/datasets/lipscl-student \\
        --errors errors.json --status "..." --out training/datasets/lipscl-student/DATA_CARD.md
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path


def _origin(atoms) -> tuple[str, str, str]:
    info = atoms.info
    source = str(info.get("source", info.get("config_type", "?")))
    host = str(info.get("host", info.get("base", "?")))
    kind = str(info.get("kind", info.get("config_type", "?")))
    return source, host, kind


def render(dataset_dir: Path, errors: dict | None = None, status: str | None = None) -> str:
    from training.data import load_dataset
    from training.demo.data_card import header_lines, source_lines, splits_elements_errors_lines

    ds = load_dataset(dataset_dir)
    m = ds.manifest
    split_of = {}
    for split in ("train", "valid", "test"):
        for atoms in ds.split(split):
            split_of[id(atoms)] = split
    lines = header_lines(dataset_dir, m)
    labellers = Counter((a.info.get("teacher_model_ref") or a.info.get("level_of_theory") or "?",
                         str(a.info.get("teacher_model_sha256", ""))[:12]) for a in ds.frames)
    lines += [f"- labelled by: {ref}" + (f" (sha256 {sha}…)" if sha else "") + f": {n} frames"
              for (ref, sha), n in labellers.items()]
    lines.append("")
    if status:
        lines += ["## Status", "", status, ""]
    lines += ["## Where every frame came from", "",
              "One row per (source, host, kind); `host` is the structure, or for MD the trajectory (`cell@T`). "
              "A dataset split by host keeps every frame of a row in one split.", "",
              "| source | host | kind | frames | atoms per frame | T (K) | split |", "|---|---|---|---|---|---|---|"]
    rows: dict[tuple[str, str, str], dict] = defaultdict(lambda: {"n": 0, "sizes": set(), "T": set(), "splits": set()})
    for atoms in ds.frames:
        row = rows[_origin(atoms)]
        row["n"] += 1
        row["sizes"].add(len(atoms))
        if "temperature_K" in atoms.info:
            row["T"].add(int(round(float(atoms.info["temperature_K"]))))
        row["splits"].add(split_of.get(id(atoms), "?"))
    for (source, host, kind), row in sorted(rows.items()):
        temps = ", ".join(map(str, sorted(row["T"]))) or "-"
        lines.append(f"| {source} | {host} | {kind} | {row['n']} | {', '.join(map(str, sorted(row['sizes'])))} "
                     f"| {temps} | {', '.join(sorted(row['splits']))} |")
    lines += splits_elements_errors_lines(m, errors)
    lines += source_lines(m)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--errors", type=Path, default=None, help="JSON with the test errors to report")
    ap.add_argument("--status", default=None)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    errors = json.loads(args.errors.read_text()) if args.errors else None
    args.out.write_text(render(args.dataset, errors, args.status))
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
