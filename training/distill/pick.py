"""Pick the snapshots of teacher MD worth labelling: farthest-point sampling per trajectory.

Teacher MD (``python -m training.demo.sample_md --model chgnet:0.3.0 ...``) samples the teacher's own
equilibrium distribution at each temperature, which is what the student must reproduce in screening MD. Its
trajectories are highly correlated frame to frame, so this keeps, per trajectory file, the first snapshot after
the warm-up and then the ``--per-file`` most diverse of the rest (the model-free descriptor of
``training.distill.sample_md``); with ``--vacancy-every K``, every K-th pick also gives a copy with one working
ion removed (vacancy NEB runs in such cells, and with hosts whose ion-to-anion ratios are all linked, only
off-stoichiometric frames pin the ion's own energy). Each picked frame gets ``source`` = ``teacher-md``, ``host`` = the trajectory
(``<base>@<T>K``, so that a dataset split by host keeps a trajectory in one split) and its parent's name, time
and temperature for the data card; it goes to ``ionscreen label --teacher`` next (which labels it again, so
that every frame carries the labeller's identity the same way).

    python -m training.distill.pick training/datasets/distill/teacher-md/*.extxyz --per-file 12 \\
        --skip-fs 200 --out training/datasets/distill/configs-teacher-md.xyz
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from ase.io import read, write

from training.distill.sample_md import descriptor, farthest_points


def vacancy_variant(atoms, ion: str, rng: np.random.Generator):
    """A copy of ``atoms`` with one ``ion`` (chosen by ``rng``) removed: the off-stoichiometric cells of vacancy
    NEB, and the only frames that pin the ion's energy when every host has the same ion-to-anion ratios."""
    sites = [i for i, s in enumerate(atoms.get_chemical_symbols()) if s == ion]
    out = atoms.copy()
    removed = int(rng.choice(sites))
    del out[removed]
    out.info.update({"kind": "md-vacancy", "removed_index": removed})
    return out


def pick(paths: list[Path], per_file: int, skip_fs: float, vacancy_every: int = 0, ion: str = "Li",
         seed: int = 0) -> list:
    frames_all = [(p, read(p, index=":")) for p in paths]
    elements = sorted({int(z) for _, frames in frames_all for a in frames for z in a.numbers})
    pair_index = {(a, c): k for k, (a, c) in enumerate((a, c) for a in elements for c in elements if a <= c)}
    picked = []
    rng = np.random.default_rng(seed)
    for path, frames in frames_all:
        kept = [a for a in frames if float(a.info.get("time_fs", 0.0)) >= skip_fs]
        if not kept:
            print(f"{path.name}: no frame after {skip_fs:g} fs; skipped")
            continue
        vectors = np.array([descriptor(a, pair_index) for a in kept])
        for k in farthest_points(vectors, per_file):
            atoms = kept[k].copy()
            temperature = float(atoms.info["temperature_K"])
            base = str(atoms.info.get("base", path.stem)).replace("library:", "")
            # config_type too: a parent built from a configuration file brings its own ("library:as-built")
            atoms.info.update({"source": "teacher-md", "config_type": "teacher-md", "host": f"{base}@{temperature:g}K",
                               "parent": base, "kind": "md", "sampled_from": path.name})
            picked.append(atoms)
            if vacancy_every and len(picked) % vacancy_every == 0:
                picked.append(vacancy_variant(atoms, ion, rng))
        print(f"{path.name}: {min(per_file, len(kept))} of {len(kept)} frames")
    return picked


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trajectories", nargs="+", type=Path)
    ap.add_argument("--per-file", type=int, default=12)
    ap.add_argument("--skip-fs", type=float, default=200.0, help="warm-up to leave out of each trajectory")
    ap.add_argument("--vacancy-every", type=int, default=0,
                    help="after every K-th picked frame, also a copy with one working ion removed (0: none)")
    ap.add_argument("--ion", default="Li")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    frames = pick(sorted(args.trajectories), args.per_file, args.skip_fs, args.vacancy_every, args.ion, args.seed)
    write(args.out, frames, format="extxyz")
    print(f"{args.out}: {len(frames)} configurations")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
