"""Synthetic trajectories with a known diffusivity, for testing the analysis."""

from __future__ import annotations

from dataclasses import dataclass

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


# --- caged, sparse hopping with a known long-time diffusivity -------------------------------------------------

_CUBIC_DIRECTIONS = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=float)
_TETRAHEDRON = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=float) / np.sqrt(3.0)


@dataclass(frozen=True)
class CagedHopping:
    """Ions that vibrate inside a cage of sub-sites, hop between lattice sites, often hop straight back,
    and sometimes hop in concerted pairs. Times in fs, lengths in Å.

    Each ion renews: it rests at its site for an exponential time (mean ``rest_fs``); then, with
    probability ``back_hop_probability``, it visits a neighbouring site for an exponential time
    (mean ``back_dwell_fs``) and returns (a correlated back-hop: no net displacement); otherwise it
    moves to a neighbouring site for good. Neighbours are the six of a simple cubic site lattice with
    spacing ``hop_A``. Paired ions (0-1, 2-3, ...) also share a Poisson process (rate
    ``pair_rate_per_fs``) of concerted hops that move both by the same vector. On top: a sub-site in
    a tetrahedral cage of radius ``cage_radius_A`` (re-drawn at rate ``cage_rate_per_fs``), an
    underdamped thermal vibration (``vibration_A`` per axis, period ``vibration_period_fs``, damping
    time ``vibration_damping_fs``: the MSD rises ballistically first, as in MD) and a drift of the
    whole cell.

    Long-time diffusivities (renewal-reward: displacements of successive renewals are independent
    with zero mean, and everything else is bounded):
    D* = (1 − p) a² / (6 (rest + p·dwell)) + f_pair · rate_pair · a² / 6 (whatever ``hop_axes``: a hop
    adds a² to the squared displacement; along a single axis, D_axis = 3 D*), and the collective
    D_σ = |Σ Δr|² / (6 N t) adds the pair term twice, since a concerted pair moves the sum by 2a.
    """

    rest_fs: float
    hop_A: float = 2.4
    back_hop_probability: float = 0.0
    back_dwell_fs: float = 300.0
    pair_rate_per_fs: float = 0.0
    cage_radius_A: float = 0.5
    cage_rate_per_fs: float = 1.0 / 300.0
    vibration_A: float = 0.15
    vibration_period_fs: float = 150.0
    vibration_damping_fs: float = 100.0
    drift_A: float = 0.02
    hop_axes: str = "xyz"  # hops along these axes only (e.g. "z": a one-dimensional channel)

    def _own_d(self) -> float:
        p = self.back_hop_probability
        return (1.0 - p) * self.hop_A**2 / (6.0 * (self.rest_fs + p * self.back_dwell_fs))

    def paired_fraction(self, n_ions: int) -> float:
        return 2 * (n_ions // 2) / n_ions if self.pair_rate_per_fs > 0 else 0.0

    def tracer_d_A2_fs(self, n_ions: int) -> float:
        return self._own_d() + self.paired_fraction(n_ions) * self.pair_rate_per_fs * self.hop_A**2 / 6.0

    def charge_d_A2_fs(self, n_ions: int) -> float:
        return self._own_d() + 2.0 * self.paired_fraction(n_ions) * self.pair_rate_per_fs * self.hop_A**2 / 6.0

    def hops_per_ion(self, duration_fs: float) -> float:
        """Expected net (not returned) hops per ion in ``duration_fs``."""
        p = self.back_hop_probability
        return duration_fs * ((1.0 - p) / (self.rest_fs + p * self.back_dwell_fs) + self.pair_rate_per_fs)

    def site_path(self, n_ions: int, times_fs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Site (plus back-hop excursion) displacement of each ion at ``times_fs``: (frames, ions, 3)."""
        p, a = self.back_hop_probability, self.hop_A
        directions = _CUBIC_DIRECTIONS[[i for i in range(6) if "xyz"[i // 2] in self.hop_axes]]
        end = float(times_fs[-1])
        burn = 10.0 * (self.rest_fs + p * self.back_dwell_fs)  # start from the stationary renewal phase
        out = np.zeros((len(times_fs), n_ions, 3))
        for ion in range(n_ions):
            change_t, change_v = [], []  # times at which the offset changes, and the new offset
            t, site = -burn, np.zeros(3)
            while t < end:
                t += rng.exponential(self.rest_fs)
                step = a * directions[rng.integers(len(directions))]
                if rng.random() < p:
                    change_t.append(t)
                    change_v.append(site + step)
                    t += rng.exponential(self.back_dwell_fs)
                    change_t.append(t)
                    change_v.append(site.copy())
                else:
                    site = site + step
                    change_t.append(t)
                    change_v.append(site.copy())
            idx = np.searchsorted(np.array(change_t), times_fs, side="right") - 1
            values = np.concatenate([np.zeros((1, 3)), np.array(change_v)])
            path = values[idx + 1]
            out[:, ion] = path - path[0]
        if self.pair_rate_per_fs > 0:
            for first in range(0, n_ions - 1, 2):
                n_events = rng.poisson(self.pair_rate_per_fs * end)
                event_t = np.sort(rng.uniform(0.0, end, n_events))
                jumps = a * directions[rng.integers(len(directions), size=n_events)]
                cum = np.concatenate([np.zeros((1, 3)), np.cumsum(jumps, axis=0)])
                moved = cum[np.searchsorted(event_t, times_fs, side="right")]
                out[:, first] += moved
                out[:, first + 1] += moved
        return out

    def trajectory(self, *, n_ions: int, n_frames: int, frame_dt_fs: float, seed: int):
        """Mobile positions (frames, ions, 3), times (fs) and the framework centroid (frames, 3)."""
        from scipy.signal import lfilter

        rng = np.random.default_rng(seed)
        times = np.arange(n_frames) * frame_dt_fs
        sites = self.site_path(n_ions, times, rng)
        # cage: a sub-site re-drawn (uniformly, possibly the same one) at Poisson times
        redraw = rng.random((n_frames, n_ions)) < -np.expm1(-self.cage_rate_per_fs * frame_dt_fs)
        redraw[0] = True
        choice = rng.integers(4, size=(n_frames, n_ions))
        last = np.maximum.accumulate(np.where(redraw, np.arange(n_frames)[:, None], 0), axis=0)
        cage = self.cage_radius_A * _TETRAHEDRON[np.take_along_axis(choice, last, axis=0)]
        # damped oscillator driven by noise, sampled exactly at the frames: an AR(2) process whose
        # stationary variance is vibration_A² per axis; a burn-in forgets the start
        r = np.exp(-frame_dt_fs / self.vibration_damping_fs)
        phi1, phi2 = 2 * r * np.cos(2 * np.pi * frame_dt_fs / self.vibration_period_fs), -r * r
        var_per_kick = (1 + phi2) * ((1 - phi2) ** 2 - phi1**2) / (1 - phi2)
        burn = int(10 * self.vibration_damping_fs / frame_dt_fs) + 2
        kicks = rng.normal(0.0, self.vibration_A * np.sqrt(var_per_kick), size=(n_frames + burn, n_ions, 3))
        vib = lfilter([1.0], [1.0, -phi1, -phi2], kicks, axis=0)[burn:]
        drift = np.concatenate([np.zeros((1, 3)), np.cumsum(rng.normal(0, self.drift_A, size=(n_frames - 1, 3)), axis=0)])
        origin = rng.uniform(0, 10, size=(1, n_ions, 3))
        mobile = origin + sites + cage + vib + drift[:, None, :]
        return mobile, times, drift


#: Caged-hopping regimes with 20 ions over 20 ps (frames 20 fs apart, like the LGPS AIMD), from ~0.4 net hops per ion
#: to ~27: back-hops half the time (excursions of 200-400 fs), a sub-site cage, vibration; the two busier regimes
#: also hop in concerted pairs, so D_σ ≠ D*. Shared by tests/test_diffusion_realistic.py and
#: benchmarks/diffusion_estimators.py.
CAGED_REGIMES = {
    "lgps-like": CagedHopping(rest_fs=25000, back_hop_probability=0.5, back_dwell_fs=400),
    "sparse": CagedHopping(rest_fs=8000, back_hop_probability=0.5, back_dwell_fs=400),
    "caged": CagedHopping(rest_fs=2000, back_hop_probability=0.5, back_dwell_fs=300, pair_rate_per_fs=1 / 40000),
    "moderate": CagedHopping(rest_fs=400, back_hop_probability=0.4, back_dwell_fs=200, pair_rate_per_fs=1 / 8000),
}
REGIME_IONS, REGIME_FRAMES, REGIME_FRAME_DT_FS = 20, 1000, 20.0
