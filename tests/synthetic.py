"""Synthetic trajectories with a known diffusivity, for testing the analysis."""

from __future__ import annotations

import numpy as np


def random_walk(
    *,
    d_A2_fs: float,
    n_ions: int,
    n_frames: int,
    frame_dt_fs: float,
    seed: int,
    vibration_A: float = 0.3,
    lattice_hops_A: float | None = None,
    drift_A: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mobile positions (frames, ions, 3), times (fs) and a framework centroid (frames, 3).

    Ions random-walk with diffusivity ``d_A2_fs`` (Å²/fs) — Gaussian steps, or, with
    ``lattice_hops_A``, jumps of that length in random ±x/±y/±z directions at Poisson times — plus
    uncorrelated thermal vibration. A common drift (a random walk of the whole cell) is added to
    ions and framework alike, so only a drift-corrected analysis recovers D.
    """
    rng = np.random.default_rng(seed)
    if lattice_hops_A is None:
        steps = rng.normal(0.0, np.sqrt(2 * d_A2_fs * frame_dt_fs), size=(n_frames - 1, n_ions, 3))
    else:
        rate = 6 * d_A2_fs / lattice_hops_A**2  # hops per fs
        n_hops = rng.poisson(rate * frame_dt_fs, size=(n_frames - 1, n_ions))
        steps = np.zeros((n_frames - 1, n_ions, 3))
        for f, i in zip(*np.nonzero(n_hops)):
            for _ in range(n_hops[f, i]):
                axis = rng.integers(3)
                steps[f, i, axis] += lattice_hops_A * rng.choice([-1.0, 1.0])
    walk = np.concatenate([np.zeros((1, n_ions, 3)), np.cumsum(steps, axis=0)])
    sites = rng.uniform(0, 10, size=(1, n_ions, 3))
    drift = np.concatenate([np.zeros((1, 3)), np.cumsum(rng.normal(0, drift_A, size=(n_frames - 1, 3)), axis=0)])
    mobile = sites + walk + rng.normal(0, vibration_A, size=walk.shape) + drift[:, None, :]
    times = np.arange(n_frames) * frame_dt_fs
    return mobile, times, drift


def write_aimd_vasprun(path, symbols, cell, frac_frames, *, potim_fs: float, tebeg_K: float) -> None:
    """A minimal VASP MD vasprun.xml (POTIM, TEBEG; one ionic step per frame) that pymatgen parses."""
    def v(rows):
        return "\n".join("    <v>" + " ".join(f"{x:16.8f}" for x in r) + " </v>" for r in np.atleast_2d(rows))

    species = list(dict.fromkeys(symbols))
    atom_rows = "\n".join(f"    <rc><c>{s:2s}</c><c>{species.index(s) + 1:5d}</c></rc>" for s in symbols)
    type_rows = "\n".join(
        f"    <rc><c>{symbols.count(s):4d}</c><c>{s:2s}</c><c> 1.0</c><c> 1.0</c><c>  PAW_PBE {s} 01Jan2000</c></rc>"
        for s in species
    )

    def structure(frac, name=""):
        attr = f' name="{name}"' if name else ""
        return "\n".join([f" <structure{attr}>", "  <crystal>", '   <varray name="basis" >', v(cell), "   </varray>",
                          "  </crystal>", '  <varray name="positions" >', v(frac), "  </varray>", " </structure>"])

    parts = [
        '<?xml version="1.0" encoding="ISO-8859-1"?>', "<modeling>",
        ' <generator><i name="program" type="string">vasp </i><i name="version" type="string">6.4.2 </i></generator>',
        ' <incar><i name="IBRION">     0</i><i name="POTIM">   %.4f</i><i name="TEBEG">   %.4f</i></incar>' % (potim_fs, tebeg_K),
        " <kpoints>", '  <varray name="kpointlist" >', "    <v> 0.0 0.0 0.0 </v>", "  </varray>",
        '  <varray name="weights" >', "    <v> 1.0 </v>", "  </varray>", " </kpoints>",
        " <parameters>", '  <separator name="ionic" >',
        f'   <i name="POTIM">{potim_fs:16.8f}</i>', f'   <i name="TEBEG">{tebeg_K:16.8f}</i>',
        f'   <i name="TEEND">{tebeg_K:16.8f}</i>', '   <i type="int" name="IBRION">     0</i>',
        '   <i type="int" name="NELM">    60</i>', '   <i type="int" name="NSW">  %d</i>' % len(frac_frames),
        "  </separator>", " </parameters>",
        " <atominfo>", f"  <atoms>{len(symbols)}</atoms>", f"  <types>{len(species)}</types>",
        '  <array name="atoms" >', '   <dimension dim="1">ion</dimension>', '   <field type="string">element</field>',
        '   <field type="int">atomtype</field>', "   <set>", atom_rows, "   </set>", "  </array>",
        '  <array name="atomtypes" >', '   <dimension dim="1">type</dimension>', '   <field type="int">atomspertype</field>',
        '   <field type="string">element</field>', "   <field>mass</field>", "   <field>valence</field>",
        '   <field type="string">pseudopotential</field>', "   <set>", type_rows, "   </set>", "  </array>",
        " </atominfo>",
        structure(frac_frames[0], "initialpos"),
    ]
    for frac in frac_frames:
        parts += [" <calculation>", structure(frac), '  <varray name="forces" >', v(np.zeros((len(symbols), 3))),
                  "  </varray>", "  <energy>", '   <i name="e_fr_energy">      -1.00000000 </i>',
                  '   <i name="e_wo_entrp">      -1.00000000 </i>', '   <i name="e_0_energy">      -1.00000000 </i>',
                  "  </energy>", " </calculation>"]
    parts += [structure(frac_frames[-1], "finalpos"), "</modeling>"]
    with open(path, "w") as fh:
        fh.write("\n".join(parts) + "\n")
