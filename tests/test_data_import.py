"""Importing DFT data: VASP, CP2K, extxyz and ASE databases with known numbers, bad input, splits, hashes.

The VASP and CP2K files are written here by hand, with labels chosen by the test, in the layout the
programs print, so every conversion (kBar → eV/Å³, VASP's and CP2K's stress sign, Hartree → eV) is
checked against numbers known exactly.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write
from ase.data import atomic_masses
from ase.units import GPa, Bohr, Hartree, _aut, bar, second
from typer.testing import CliRunner

from mlip.errors import InputError
from training.data import (
    EnergyKind,
    ReadOptions,
    SplitSpec,
    ValidationLimits,
    import_files,
    load_dataset,
    read_frames,
    structure_hash,
)
from training.data import store as store_mod

EV_A3_PER_KBAR = 0.1 * GPa  # 1 kBar = 0.1 GPa; ase.units.GPa is in eV/Å³

@dataclass
class Step:
    cell: np.ndarray  # (3, 3) Å
    frac: np.ndarray  # (n, 3)
    forces: np.ndarray  # (n, 3) eV/Å
    stress_kB: np.ndarray  # (3, 3) VASP convention: kBar, positive = compressive (pressure)
    e_free: float  # TOTEN / e_fr_energy, eV
    e_sigma0: float  # energy(sigma->0), eV


def _v(rows) -> str:
    return "\n".join("    <v>" + " ".join(f"{x:16.8f}" for x in r) + " </v>" for r in np.atleast_2d(rows))


def vasprun_text(symbols: list[str], steps: list[Step]) -> str:
    species = list(dict.fromkeys(symbols))
    atoms_rows = "\n".join(f"    <rc><c>{s:2s}</c><c>{species.index(s) + 1:5d}</c></rc>" for s in symbols)
    first = steps[0]
    parts = [
        '<?xml version="1.0" encoding="ISO-8859-1"?>',
        "<modeling>",
        ' <generator><i name="program" type="string">vasp </i></generator>',
        " <incar><i name=\"ENCUT\">    520.00000000</i></incar>",
        " <kpoints>",
        '  <varray name="kpointlist" >',
        "    <v>       0.00000000       0.00000000       0.00000000 </v>",
        "  </varray>",
        '  <varray name="weights" >',
        "    <v>       1.00000000 </v>",
        "  </varray>",
        " </kpoints>",
        " <parameters></parameters>",
        " <atominfo>",
        f"  <atoms>{len(symbols)}</atoms>",
        '  <array name="atoms" >',
        '   <dimension dim="1">ion</dimension>',
        '   <field type="string">element</field>',
        '   <field type="int">atomtype</field>',
        "   <set>",
        atoms_rows,
        "   </set>",
        "  </array>",
        " </atominfo>",
        ' <structure name="initialpos" >',
        "  <crystal>",
        '   <varray name="basis" >',
        _v(first.cell),
        "   </varray>",
        "  </crystal>",
        '  <varray name="positions" >',
        _v(first.frac),
        "  </varray>",
        " </structure>",
    ]
    for st in steps:
        parts += [
            " <calculation>",
            "  <scstep>",
            "   <energy>",
            f'    <i name="e_fr_energy">{st.e_free:16.8f} </i>',
            f'    <i name="e_wo_entrp">{st.e_sigma0:16.8f} </i>',
            f'    <i name="e_0_energy">{st.e_sigma0:16.8f} </i>',
            "   </energy>",
            "  </scstep>",
            '  <structure>',
            "   <crystal>",
            '    <varray name="basis" >',
            _v(st.cell),
            "    </varray>",
            "   </crystal>",
            '   <varray name="positions" >',
            _v(st.frac),
            "   </varray>",
            "  </structure>",
            '  <varray name="forces" >',
            _v(st.forces),
            "  </varray>",
            '  <varray name="stress" >',
            _v(st.stress_kB),
            "  </varray>",
            "  <energy>",
            f'   <i name="e_fr_energy">{st.e_free:16.8f} </i>',
            f'   <i name="e_wo_entrp">{st.e_sigma0:16.8f} </i>',
            f'   <i name="e_0_energy">{st.e_sigma0:16.8f} </i>',
            "  </energy>",
            " </calculation>",
        ]
    last = steps[-1]
    parts += [
        ' <structure name="finalpos" >',
        "  <crystal>",
        '   <varray name="basis" >',
        _v(last.cell),
        "   </varray>",
        "  </crystal>",
        '  <varray name="positions" >',
        _v(last.frac),
        "  </varray>",
        " </structure>",
        "</modeling>",
    ]
    return "\n".join(parts) + "\n"


def write_vasprun(path: Path, symbols: list[str], steps: list[Step]) -> Path:
    path.write_text(vasprun_text(symbols, steps))
    return path


def outcar_text(symbols: list[str], steps: list[Step], complete: bool = True) -> str:
    species = list(dict.fromkeys(symbols))
    counts = [symbols.count(s) for s in species]
    lines = [" vasp.6.4.2 18Apr23 (build Jul 20 2023) complex", ""]
    for _ in range(2):  # VASP prints each POTCAR line twice
        lines += [f"   POTCAR:    PAW_PBE {s} 06Sep2000" for s in species]
    lines += [
        f"   ions per type =  {'  '.join(str(c) for c in counts)}",
        "   ISPIN  =      1    spin polarized calculation?",
        "   k-points           NKPTS =      1   k-points in BZ     NKDIM =      1   number of bands    NBANDS=     16",
        "",
        "  k-points in reciprocal lattice and weights: KPOINTS",
        "   0.00000000  0.00000000  0.00000000       1.000",
        "",
    ]
    for it, st in enumerate(steps):
        pos = st.frac @ st.cell
        s = st.stress_kB
        lines += [
            f"----------------------------------------- Iteration    {it + 1}(   1)  ---------------------------------------",
            "  FORCE on cell =-STRESS in cart. coord.  units (eV):",
            "  Direction    XX          YY          ZZ          XY          YZ          ZX",
            "  --------------------------------------------------------------------------------------",
            "  in kB  " + " ".join(f"{x:11.5f}" for x in (s[0, 0], s[1, 1], s[2, 2], s[0, 1], s[1, 2], s[2, 0])),
            "",
            " VOLUME and BASIS-vectors are now :",
            " -----------------------------------------------------------------------------",
            f"  volume of cell : {abs(np.linalg.det(st.cell)):12.2f}",
            "      direct lattice vectors                 reciprocal lattice vectors",
        ]
        rec = np.linalg.inv(st.cell).T
        for i in range(3):
            lines.append("   " + " ".join(f"{x:12.9f}" for x in st.cell[i]) + "   "
                         + " ".join(f"{x:12.9f}" for x in rec[i]))
        lines += [
            "",
            " POSITION                                       TOTAL-FORCE (eV/Angst)",
            " -----------------------------------------------------------------------------------",
        ]
        for p, f in zip(pos, st.forces):
            lines.append(" " + " ".join(f"{x:12.5f}" for x in p) + "    " + " ".join(f"{x:13.6f}" for x in f))
        lines += [
            " -----------------------------------------------------------------------------------",
            "",
            "  FREE ENERGIE OF THE ION-ELECTRON SYSTEM (eV)",
            "  ---------------------------------------------------",
            f"  free  energy   TOTEN  = {st.e_free:18.8f} eV",
            "",
            f"  energy  without entropy= {st.e_sigma0:18.8f}  energy(sigma->0) = {st.e_sigma0:18.8f}",
            "",
        ]
    if complete:
        lines += ["", " General timing and accounting informations for this job:",
                  " ========================================================", ""]
    return "\n".join(lines) + "\n"


def write_outcar(path: Path, symbols: list[str], steps: list[Step], complete: bool = True) -> Path:
    path.write_text(outcar_text(symbols, steps, complete))
    return path


def li_cl_steps(n: int, seed: int = 0) -> list[Step]:
    """n distinct 2-atom LiCl frames with arbitrary but known labels."""
    rng = np.random.default_rng(seed)
    steps = []
    for k in range(n):
        a = 5.13 * (1 + 0.01 * k)
        cell = np.array([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])
        frac = np.array([[0, 0, 0], [0.5, 0.5, 0.5]]) + rng.normal(0, 0.005, (2, 3))
        f = rng.normal(0, 0.3, 3)
        forces = np.array([f, -f])
        sym = rng.normal(0, 5, (3, 3))
        stress = 0.5 * (sym + sym.T) + np.diag([10.0, 20.0, 30.0])
        steps.append(Step(cell, frac, forces, stress, e_free=-7.1 - 0.01 * k, e_sigma0=-7.09 - 0.01 * k))
    return steps


def _expected_ase_stress(stress_kB: np.ndarray) -> np.ndarray:
    """VASP prints pressure-like stress in kBar; ASE's is the negative, in eV/Å³, Voigt xx yy zz yz xz xy."""
    s = -np.asarray(stress_kB) * EV_A3_PER_KBAR
    return np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])


def _files_state(ds: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in ds.iterdir() if not p.name.startswith(".")}


def _labelled(n: int, seed: int = 0, symbols: str = "LiCl") -> list[Atoms]:
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n):
        a = Atoms(symbols * 2, scaled_positions=[[0, 0, 0], [0.5, 0, 0], [0, 0.5, 0.5], [0.5, 0.5, 0.5]],
                  cell=np.diag([5.1, 5.1, 5.1]), pbc=True)
        a.positions += rng.normal(0, 0.05, a.positions.shape)
        f = rng.normal(0, 0.3, (len(a), 3))
        a.info["REF_energy"] = -14.2 + rng.normal(0, 0.05)
        a.arrays["REF_forces"] = f - f.mean(axis=0)
        a.info["REF_stress"] = rng.normal(0, 0.005, 6)
        a.info["config_type"] = "rattled"
        frames.append(a)
    return frames


# ---------------------------------------------------------------------------------------------------
# Formats, with known numbers


def test_vasprun_labels_units_and_stress_sign(tmp_path):
    steps = li_cl_steps(3)
    path = write_vasprun(tmp_path / "vasprun.xml", ["Li", "Cl"], steps)
    frames = read_frames(path)
    assert len(frames) == 3
    for st, fr in zip(steps, frames):
        assert fr.energy == pytest.approx(st.e_free, abs=1e-8)  # force-consistent free energy by default
        np.testing.assert_allclose(fr.forces, st.forces, atol=1e-8)
        np.testing.assert_allclose(fr.stress, _expected_ase_stress(st.stress_kB), rtol=1e-7, atol=1e-12)
        np.testing.assert_allclose(fr.atoms.cell.array, st.cell, atol=1e-8)
    # +10 kBar on xx (VASP: compressed) is -1 GPa = -0.0062415 eV/Å³ in ASE's convention
    assert frames[0].stress[0] == pytest.approx(-(steps[0].stress_kB[0, 0] / 10.0) / 160.21766208, rel=1e-6)
    sigma0 = read_frames(path, opts=ReadOptions(energy_kind=EnergyKind.SIGMA0))
    assert [f.energy for f in sigma0] == pytest.approx([s.e_sigma0 for s in steps], abs=1e-8)


def test_outcar_gives_the_same_labels_as_vasprun(tmp_path):
    steps = li_cl_steps(2)
    out = read_frames(write_outcar(tmp_path / "OUTCAR", ["Li", "Cl"], steps))
    xml = read_frames(write_vasprun(tmp_path / "vasprun.xml", ["Li", "Cl"], steps))
    assert len(out) == 2
    for a, b in zip(out, xml):
        assert a.energy == pytest.approx(b.energy, abs=1e-6)
        np.testing.assert_allclose(a.forces, b.forces, atol=1e-5)  # OUTCAR prints 6 decimals
        np.testing.assert_allclose(a.stress, b.stress, atol=1e-5 * EV_A3_PER_KBAR)
        np.testing.assert_allclose(a.atoms.positions, b.atoms.positions, atol=1e-4)


def test_ase_database_import(tmp_path):
    from ase.db import connect

    db_path = tmp_path / "frames.db"
    with connect(db_path) as db:
        for a in _labelled(3):
            e, f, s = a.info.pop("REF_energy"), a.arrays.pop("REF_forces"), a.info.pop("REF_stress")
            a.calc = SinglePointCalculator(a, energy=e, forces=f, stress=s)
            db.write(a, config_type="from_db")
    report = import_files([db_path], tmp_path / "ds")
    assert report.n_accepted == 3
    ds = load_dataset(tmp_path / "ds")
    assert {a.info["config_type"] for a in ds.frames} == {"from_db"}
    assert all(a.info["REF_stress"].shape == (6,) for a in ds.frames)


def _write_cp2k_md(tmp: Path, n_steps: int = 3, truncate: bool = False,
                   velocities: bool = True) -> tuple[Path, list[dict]]:
    """PROJECT-pos-1.xyz / -frc-1.xyz / -vel-1.xyz / -1.cell / -1.stress as CP2K's MOTION/PRINT writes them."""
    rng = np.random.default_rng(3)
    truth, pos_lines, frc_lines, vel_lines = [], [], [], []
    cell_lines = ["#   Step   Time [fs]       Ax [Angstrom]       Ay [Angstrom]       Az [Angstrom]       Bx [Angstrom]"
                  "       By [Angstrom]       Bz [Angstrom]       Cx [Angstrom]       Cy [Angstrom]       Cz [Angstrom]"
                  "      Volume [Angstrom^3]"]
    stress_lines = ["#   Step   Time [fs]   xx [bar]   xy [bar]   xz [bar]   yx [bar]   yy [bar]   yz [bar]   zx [bar]"
                    "   zy [bar]   zz [bar]"]
    for k in range(n_steps):
        cell = np.diag([5.13, 5.13, 5.13]) * (1 + 0.002 * k)
        pos = np.array([[0.0, 0.0, 0.0], [2.565, 0.0, 0.0]]) + rng.normal(0, 0.02, (2, 3))
        e_ha = -22.25 + 0.001 * k
        f_au = rng.normal(0, 0.01, (2, 3))
        p_bar = rng.normal(0, 2000, (3, 3))
        p_bar = 0.5 * (p_bar + p_bar.T)
        v_au = rng.normal(0, 1e-3, (2, 3))
        v = v_au * Bohr / (_aut * second)  # Å per ASE time unit
        masses = np.array([atomic_masses[3], atomic_masses[17]])
        kinetic = np.einsum("i,ij,ik->jk", masses, v, v) / np.linalg.det(cell)  # eV/Å³
        truth.append({"energy": e_ha * Hartree, "forces": f_au * Hartree / Bohr, "pressure_bar": p_bar,
                      "kinetic": kinetic})
        vel_lines += ["       2", f" i =        {k}, time =        {0.5 * k:.3f}, E =     {e_ha:.10f}"]
        vel_lines += [f"  {s}  {x[0]:.12e}  {x[1]:.12e}  {x[2]:.12e}" for s, x in zip(["Li", "Cl"], v_au)]
        pos_lines += ["       2", f" i =        {k}, time =        {0.5 * k:.3f}, E =     {e_ha:.10f}"]
        pos_lines += [f"  {s}  {x[0]:.10f}  {x[1]:.10f}  {x[2]:.10f}" for s, x in zip(["Li", "Cl"], pos)]
        frc_lines += ["       2", f" i =        {k}, time =        {0.5 * k:.3f}, E =     {e_ha:.10f}"]
        frc_lines += [f"  {s}  {x[0]:.10f}  {x[1]:.10f}  {x[2]:.10f}" for s, x in zip(["Li", "Cl"], f_au)]
        cell_lines.append(f"{k:8d} {0.5 * k:12.3f} " + " ".join(f"{v:18.10f}" for v in cell.ravel())
                          + f" {np.linalg.det(cell):18.10f}")
        stress_lines.append(f"{k:8d} {0.5 * k:12.3f} " + " ".join(f"{v:18.10f}" for v in p_bar.ravel()))
    if truncate:
        pos_lines = pos_lines[:-1]
    (tmp / "md-pos-1.xyz").write_text("\n".join(pos_lines) + "\n")
    (tmp / "md-frc-1.xyz").write_text("\n".join(frc_lines) + "\n")
    (tmp / "md-1.cell").write_text("\n".join(cell_lines) + "\n")
    (tmp / "md-1.stress").write_text("\n".join(stress_lines) + "\n")
    if velocities:
        (tmp / "md-vel-1.xyz").write_text("\n".join(vel_lines) + "\n")
    return tmp / "md-pos-1.xyz", truth


def test_cp2k_md_output_converted_from_atomic_units(tmp_path):
    pos, truth = _write_cp2k_md(tmp_path)
    frames = read_frames(pos)
    assert len(frames) == 3
    for fr, t in zip(frames, truth):
        assert fr.energy == pytest.approx(t["energy"], abs=1e-6)
        np.testing.assert_allclose(fr.forces, t["forces"], atol=1e-8)
        # CP2K's MD pressure tensor includes the kinetic part (checked against CP2K 2023.1 runs)
        p = -(t["pressure_bar"] * bar - t["kinetic"])
        expected = np.array([p[0, 0], p[1, 1], p[2, 2], p[1, 2], p[0, 2], p[0, 1]])
        np.testing.assert_allclose(fr.stress, expected, atol=1e-12)
        assert np.abs(t["kinetic"]).max() > 1e-6  # the kinetic part is not negligible in this test
    report = import_files([pos], tmp_path / "ds", config_type="aimd")
    assert report.n_accepted == 3


def test_cp2k_md_stress_dropped_without_velocities(tmp_path):
    pos, _ = _write_cp2k_md(tmp_path, velocities=False)
    frames = read_frames(pos)
    assert all(f.stress is None and "kinetic" in f.info["stress_note"] for f in frames)
    assert all(f.forces is not None for f in frames)


def test_cp2k_md_truncated_is_an_error(tmp_path):
    pos, _ = _write_cp2k_md(tmp_path, truncate=True)
    with pytest.raises(InputError, match=r"md-pos-1\.xyz.*cut off"):
        read_frames(pos)


def test_our_labelled_extxyz_keeps_provenance(tmp_path):
    frames = _labelled(2)
    for a in frames:
        a.info.update({"dft_code": "CP2K", "dft_basis": "SZV-MOLOPT-SR-GTH", "dft_cutoff_Ry": 400.0})
    write(tmp_path / "labelled.xyz", frames)
    import_files([tmp_path / "labelled.xyz"], tmp_path / "ds")
    ds = load_dataset(tmp_path / "ds")
    assert {a.info["dft_basis"] for a in ds.frames} == {"SZV-MOLOPT-SR-GTH"}
    assert sorted(a.info["source_frame"] for a in ds.frames) == [0, 1]
    assert {a.info["source_file"] for a in ds.frames} == {"labelled.xyz"}


def test_label_directory_import_even_mid_run(tmp_path):
    labels = tmp_path / "labels"
    (labels / "frames").mkdir(parents=True)
    (labels / "run.json").write_text("{}")
    frames = _labelled(3, seed=14)
    for a in frames:
        write(labels / "frames" / f"{structure_hash(a)}.extxyz", a)
    (labels / "frames" / ".half-written.extxyz.123.tmp").write_text("garbage")  # a write in progress
    report = import_files([labels], tmp_path / "ds")
    assert report.n_accepted == 3
    frames.append(_labelled(1, seed=15)[0])
    write(labels / "frames" / f"{structure_hash(frames[-1])}.extxyz", frames[-1])
    report = import_files([labels], tmp_path / "ds")  # the labelling went on: only the new frame is added
    assert report.n_accepted == 1 and len(report.duplicates) == 3


# ---------------------------------------------------------------------------------------------------
# Bad input: a clear error naming file and frame, nothing already imported lost


@pytest.fixture
def dataset(tmp_path) -> Path:
    write(tmp_path / "good.xyz", _labelled(5, seed=1))
    import_files([tmp_path / "good.xyz"], tmp_path / "ds")
    return tmp_path / "ds"


def _assert_unchanged(ds: Path, before: dict[str, bytes]) -> None:
    assert _files_state(ds) == before
    assert load_dataset(ds).manifest.n_frames == 5


def test_truncated_vasprun_names_file_and_imports_nothing(tmp_path, dataset):
    good = write_vasprun(tmp_path / "ok_vasprun.xml", ["Li", "Cl"], li_cl_steps(2, seed=5))
    text = vasprun_text(["Li", "Cl"], li_cl_steps(3, seed=6))
    cut = tmp_path / "vasprun.xml"
    cut.write_text(text[: int(len(text) * 0.7)])  # killed mid-write, inside the third <calculation>
    before = _files_state(dataset)
    with pytest.raises(InputError, match=r"vasprun\.xml: vasprun\.xml is cut off") as err:
        import_files([good, cut], dataset)
    assert str(cut) in str(err.value)
    _assert_unchanged(dataset, before)  # the good file in the same call was not imported either


def test_incomplete_outcar_names_file(tmp_path, dataset):
    path = write_outcar(tmp_path / "OUTCAR", ["Li", "Cl"], li_cl_steps(2), complete=False)
    before = _files_state(dataset)
    with pytest.raises(InputError, match=r"OUTCAR.*did not finish"):
        import_files([path], dataset)
    _assert_unchanged(dataset, before)
    assert len(read_frames(path, opts=ReadOptions(allow_incomplete=True))) == 2


def test_frame_without_forces_named(tmp_path, dataset):
    frames = _labelled(3, seed=2)
    del frames[1].arrays["REF_forces"]
    write(tmp_path / "noforces.xyz", frames)
    before = _files_state(dataset)
    with pytest.raises(InputError, match=r"noforces\.xyz, frame 1: no forces label"):
        import_files([tmp_path / "noforces.xyz"], dataset)
    _assert_unchanged(dataset, before)


@pytest.mark.parametrize("where", ["energy", "forces", "stress"])
def test_nan_label_named(tmp_path, dataset, where):
    frames = _labelled(3, seed=3)
    if where == "energy":
        frames[2].info["REF_energy"] = float("nan")
    elif where == "forces":
        frames[2].arrays["REF_forces"][1, 2] = np.nan
    else:
        frames[2].info["REF_stress"][0] = np.nan
    write(tmp_path / "nan.xyz", frames)
    before = _files_state(dataset)
    with pytest.raises(InputError, match=rf"nan\.xyz, frame 2: {where} .*(NaN|not finite)"):
        import_files([tmp_path / "nan.xyz"], dataset)
    _assert_unchanged(dataset, before)


def test_mixed_units_rejected_with_reason(tmp_path, dataset):
    frames = _labelled(4, seed=4)
    frames[0].arrays["REF_forces"] = np.zeros((4, 3))
    frames[0].arrays["REF_forces"][0, 0], frames[0].arrays["REF_forces"][1, 0] = 120.0, -120.0  # meV/Å
    frames[1].info["REF_stress"] = np.array([25.0, 30.0, 28.0, 1.0, 0.0, 0.5])  # kBar, not converted
    frames[2].info["REF_energy"] /= Hartree  # Hartree among eV frames of the same composition
    write(tmp_path / "mixed.xyz", frames)
    before = _files_state(dataset)
    with pytest.raises(InputError) as err:
        import_files([tmp_path / "mixed.xyz"], dataset)
    msg = str(err.value)
    assert "mixed.xyz, frame 0: largest force component 120 eV/Å" in msg and "meV/Å" in msg
    assert "mixed.xyz, frame 1: largest stress component 30 eV/Å³" in msg and "kBar" in msg
    assert "mixed.xyz, frame 2: energy per atom" in msg and "Hartree" in msg
    assert "frame 3" not in msg
    _assert_unchanged(dataset, before)
    # opting in imports the good frame and reports the others
    report = import_files([tmp_path / "mixed.xyz"], dataset, skip_invalid=True)
    assert report.n_accepted == 1 and [r.source_frame for r in report.rejected] == [0, 1, 2]
    assert load_dataset(dataset).manifest.n_frames == 6


def test_element_outside_allowed_set_named(tmp_path):
    frames = _labelled(2, seed=5) + _labelled(1, seed=6, symbols="NaCl")
    write(tmp_path / "na.xyz", frames)
    with pytest.raises(InputError, match=r"na\.xyz, frame 2: element\(s\) Na not in the allowed set"):
        import_files([tmp_path / "na.xyz"], tmp_path / "ds", limits=ValidationLimits(allowed_elements=("Li", "Cl")))
    assert not (tmp_path / "ds" / "manifest.json").exists()


def test_crash_while_writing_keeps_the_old_dataset(tmp_path, dataset, monkeypatch):
    write(tmp_path / "more.xyz", _labelled(3, seed=7))
    before = _files_state(dataset)
    real = store_mod.atomic_write_bytes

    def crash_on_manifest(path, data):
        if path.name == "manifest.json":
            raise OSError("disk full")
        return real(path, data)

    monkeypatch.setattr(store_mod, "atomic_write_bytes", crash_on_manifest)
    with pytest.raises(OSError):
        import_files([tmp_path / "more.xyz"], dataset)
    monkeypatch.undo()
    ds = load_dataset(dataset)  # still the old, consistent dataset (the orphan new frames file is unused)
    assert ds.manifest.n_frames == 5
    assert {k: v for k, v in _files_state(dataset).items() if k in before} == before
    assert import_files([tmp_path / "more.xyz"], dataset).manifest.n_frames == 8


def test_tampered_frames_file_detected(dataset):
    m = json.loads((dataset / "manifest.json").read_text())
    path = dataset / m["frames_file"]
    text = gzip.decompress(path.read_bytes()).decode().replace("rattled", "tampered", 1)
    path.write_bytes(gzip.compress(text.encode()))
    with pytest.raises(InputError, match="does not match the SHA-256"):
        load_dataset(dataset)


# ---------------------------------------------------------------------------------------------------
# Duplicates, splits, hashes, counts


def test_duplicates_removed_within_and_across_imports(tmp_path):
    frames = _labelled(4, seed=8)
    twin = frames[2].copy()
    twin.positions[0] += twin.cell[0]  # another periodic image, same structure
    twin = twin[[1, 0, 2, 3]]  # atoms in another order
    write(tmp_path / "a.xyz", frames + [twin])
    r1 = import_files([tmp_path / "a.xyz"], tmp_path / "ds")
    assert r1.n_accepted == 4 and len(r1.duplicates) == 1 and r1.duplicates[0].duplicate_of.endswith(":2")
    r2 = import_files([tmp_path / "a.xyz"], tmp_path / "ds")
    assert r2.n_accepted == 0 and len(r2.duplicates) == 5 and not r2.written
    assert r2.manifest.dataset_hash == r1.manifest.dataset_hash


def test_structure_hash_invariances():
    a = _labelled(1)[0]
    b = a[[3, 2, 1, 0]]
    b.positions[1] -= b.cell[2]
    assert structure_hash(a) == structure_hash(b)
    c = a.copy()
    c.positions[0, 0] += 1e-3
    assert structure_hash(c) != structure_hash(a)


def test_splits_deterministic_stable_on_append_and_order_independent(tmp_path):
    write(tmp_path / "a.xyz", _labelled(40, seed=9))
    write(tmp_path / "b.xyz", _labelled(40, seed=10))
    import_files([tmp_path / "a.xyz"], tmp_path / "ds1")
    splits_a = {x.info["structure_hash"]: x.info["split"] for x in load_dataset(tmp_path / "ds1").frames}
    r = import_files([tmp_path / "b.xyz"], tmp_path / "ds1")
    after = {x.info["structure_hash"]: x.info["split"] for x in load_dataset(tmp_path / "ds1").frames}
    assert all(after[k] == v for k, v in splits_a.items())  # appending moved nothing
    counts = r.manifest.split_counts
    assert sum(counts.values()) == 80 and counts["train"] > counts["valid"] > 0 and counts["test"] > 0
    import_files([tmp_path / "b.xyz", tmp_path / "a.xyz"], tmp_path / "ds2")
    ds2 = load_dataset(tmp_path / "ds2")
    assert ds2.hash == r.manifest.dataset_hash
    assert {x.info["structure_hash"]: x.info["split"] for x in ds2.frames} == after
    # another seed gives another split; changing the split of an existing dataset is refused
    import_files([tmp_path / "a.xyz"], tmp_path / "ds3", split=SplitSpec(seed=1))
    other = {x.info["structure_hash"]: x.info["split"] for x in load_dataset(tmp_path / "ds3").frames}
    assert other != splits_a
    with pytest.raises(InputError, match="would move existing frames"):
        import_files([tmp_path / "b.xyz"], tmp_path / "ds3", split=SplitSpec(seed=2))


def test_isolated_atoms_always_in_train(tmp_path):
    atoms = []
    for k, sym in enumerate(["Li", "P", "S", "Cl"] * 5):
        a = Atoms(sym, positions=[[6.0 + 0.01 * k, 6, 6]], cell=[12, 12, 12], pbc=True)
        a.info.update({"REF_energy": -100.0 - k * 1e-3, "config_type": "IsolatedAtom"})
        a.arrays["REF_forces"] = np.zeros((1, 3))
        atoms.append(a)
    write(tmp_path / "iso.xyz", atoms)
    m = import_files([tmp_path / "iso.xyz"], tmp_path / "ds", limits=ValidationLimits(max_energy_deviation_eV_atom=1.0)).manifest
    assert m.split_counts == {"train": 20, "valid": 0, "test": 0}  # mace-torch reads E0s from train only


def test_dataset_hash_tracks_content(tmp_path):
    frames = _labelled(3, seed=11)
    write(tmp_path / "x.xyz", frames)
    h1 = import_files([tmp_path / "x.xyz"], tmp_path / "d1").manifest.dataset_hash
    h2 = import_files([tmp_path / "x.xyz"], tmp_path / "d2").manifest.dataset_hash
    assert h1 == h2
    frames[0].info["REF_energy"] += 1e-3
    write(tmp_path / "y.xyz", frames)
    assert import_files([tmp_path / "y.xyz"], tmp_path / "d3").manifest.dataset_hash != h1
    assert import_files([tmp_path / "x.xyz"], tmp_path / "d4", config_type="other").manifest.dataset_hash != h1


def test_counts_and_split_files(tmp_path):
    write(tmp_path / "x.xyz", _labelled(10, seed=12))
    m = import_files([tmp_path / "x.xyz"], tmp_path / "ds").manifest
    assert m.element_atom_counts == {"Cl": 20, "Li": 20} and m.element_frame_counts == {"Cl": 10, "Li": 10}
    paths = load_dataset(tmp_path / "ds").write_splits(tmp_path / "mace")
    n = {k: len(read(p, index=":")) if p.stat().st_size else 0 for k, p in paths.items()}
    assert n == m.split_counts
    first = read(paths["train"], index=0)
    assert "REF_energy" in first.info and "REF_forces" in first.arrays and "REF_stress" in first.info


def test_cli_data_import_reports_counts_rejections_and_hash(tmp_path):
    from workflows.cli.training import app

    good = write_vasprun(tmp_path / "vasprun.xml", ["Li", "Cl"], li_cl_steps(3))
    frames = _labelled(2, seed=13)
    frames[1].info["REF_energy"] = float("nan")
    write(tmp_path / "bad.xyz", frames)
    runner = CliRunner()
    res = runner.invoke(app, ["data", "import", str(good), "--dataset", str(tmp_path / "ds"), "--config-type", "bulk"])
    assert res.exit_code == 0, res.output
    assert "3 accepted" in res.output and "Li: 3 atoms/3 frames" in res.output
    h = load_dataset(tmp_path / "ds").hash
    assert f"dataset hash   {h}" in res.output
    res = runner.invoke(app, ["data", "import", str(tmp_path / "bad.xyz"), "--dataset", str(tmp_path / "ds")])
    assert res.exit_code == 1 and "bad.xyz, frame 1: energy is nan" in res.output
    res = runner.invoke(app, ["data", "import", str(tmp_path / "bad.xyz"), "--dataset", str(tmp_path / "ds"),
                              "--skip-invalid"])
    assert res.exit_code == 0 and "1 rejected" in res.output and "rejected " in res.output
    res = runner.invoke(app, ["data", "show", str(tmp_path / "ds")])
    assert res.exit_code == 0 and "vasprun.xml [vasprun] 3/3 accepted" in res.output
