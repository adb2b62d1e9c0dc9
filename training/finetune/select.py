"""The shipped Li–P–S–Cl configurations in the order to relabel them with CP2K PBE/DZVP-MOLOPT.

The SZV-labelled dataset behind ``bundled:lipscl-demo`` (``training/datasets/lipscl``) holds rattled, strained,
defective and MD configurations of Li2S, β-Li3PS4, Li6PS5Cl and LiCl. Relabelling them all at DZVP quality
costs minutes per frame on this machine (the 63 round-3 MD snapshots of the demo's own library cells,
``library:*``, many from the collapse of an early model's MD, are left out), so labelling runs over sessions and may stop anywhere: this writes
them so that every prefix of the file is a balanced set. Structures are taken in turns (two Li2S, two
β-Li3PS4, one Li6PS5Cl and one LiCl per turn: the cheap cells more often), each structure's frames in an
order fixed by their structure hash, so the file is the same on every run.

The relabelled frames keep their structure hashes, so a dataset built from them with the SZV dataset's split
seed puts every frame in the split it had there: DZVP test frames are the test frames of ``lipscl-demo``.

    python -m training.finetune.select training/datasets/lipscl training/datasets/lipscl-dzvp/structures.xyz
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from ase import Atoms

from training.data import load_dataset, split_fraction

#: Frames of each base structure per turn (Li2S_24 and β-Li3PS4_32 label several times faster than the
#: 52- and 64-atom cells).
TURN = (("Li2S", 2), ("beta-Li3PS4", 2), ("Li6PS5Cl", 1), ("LiCl", 1))

#: Seed of the order within each structure (not of any split).
ORDER_SEED = 16


def ordered_configurations(frames: list[Atoms]) -> list[Atoms]:
    """The periodic frames of ``frames`` (isolated atoms left out) in relabelling order, stripped to
    structure plus origin: the SZV labels are dropped, where each frame came from is kept."""
    by_base: dict[str, list[Atoms]] = defaultdict(list)
    for atoms in frames:
        config_type = str(atoms.info.get("config_type", ""))
        base = config_type.split(":")[0]
        if not atoms.pbc.all() or base not in dict(TURN):
            continue
        by_base[base].append(atoms)
    for base in by_base:
        by_base[base].sort(key=lambda a: split_fraction(a.info["structure_hash"], ORDER_SEED))
    out: list[Atoms] = []
    while any(by_base.values()):
        for base, n in TURN:
            for _ in range(n):
                if by_base[base]:
                    out.append(_bare(by_base[base].pop(0)))
    return out


def _bare(atoms: Atoms) -> Atoms:
    bare = Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=True)
    for key in ("config_type", "base", "kind", "round", "seed", "rattle_sigma_A"):
        if key in atoms.info:
            bare.info[key] = atoms.info[key]
    bare.info["szv_structure_hash"] = atoms.info["structure_hash"]
    bare.info["szv_split"] = atoms.info.get("split")
    return bare


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path, help="The SZV dataset (training/datasets/lipscl).")
    parser.add_argument("out", type=Path, help="extxyz file to write.")
    args = parser.parse_args(argv)
    from ase.io import write

    configs = ordered_configurations(load_dataset(args.dataset).frames)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write(args.out, configs, format="extxyz")
    counts: dict[str, int] = defaultdict(int)
    for a in configs:
        counts[a.info["config_type"].split(":")[0]] += 1
    print(f"{len(configs)} configurations → {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
