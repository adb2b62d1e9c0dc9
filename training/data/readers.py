"""Read labelled DFT frames (energy, forces, stress in ASE units) from VASP, CP2K, extxyz and ASE databases.

ASE's readers do the parsing and the unit conversion where they exist (vasprun.xml and OUTCAR: kBar →
eV/Å³ with VASP's sign flipped to ASE's). We add what they leave out: a truncated vasprun.xml or OUTCAR is
an error here (ASE silently returns the frames before the cut), and CP2K's MD output (positions, forces
and cell files in atomic units) is read by a small reader of our own because ASE has none.
"""

from __future__ import annotations

import enum
import gzip
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.units import Bohr, Hartree, _aut, bar, second

from mlip.errors import InputError


class EnergyKind(str, enum.Enum):
    """Which DFT energy becomes REF_energy. 'free' is consistent with the forces (the default)."""

    FREE = "free"  # Mermin free energy (VASP TOTEN / e_fr_energy), the energy the forces derive from
    SIGMA0 = "sigma0"  # VASP's energy extrapolated to zero smearing


class Format(str, enum.Enum):
    VASP_XML = "vasprun"
    VASP_OUTCAR = "outcar"
    EXTXYZ = "extxyz"
    ASE_DB = "ase-db"
    CP2K_MD = "cp2k-md"
    LABEL_DIR = "label-dir"  # output directory of `ionscreen label` (frames/<hash>.extxyz), even mid-run


@dataclass
class RawFrame:
    """One frame as read, before validation. Labels are in ASE units or None when absent."""

    atoms: Atoms
    energy: float | None
    forces: np.ndarray | None
    stress: np.ndarray | None  # Voigt (6,), ASE order and sign, eV/Å³
    source_file: str
    source_frame: int
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ReadOptions:
    energy_kind: EnergyKind = EnergyKind.FREE
    energy_key: str | None = None  # extxyz/db: info key; None = REF_energy, then the calculator's energy
    forces_key: str | None = None
    stress_key: str | None = None
    allow_incomplete: bool = False  # accept truncated VASP output (frames before the cut)


def detect_format(path: Path) -> Format:
    if path.is_dir():
        if (path / "run.json").exists() and (path / "frames").is_dir():
            return Format.LABEL_DIR
        raise InputError(f"{path} is a directory but not the output of `ionscreen label` (no run.json/frames/)")
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith(".xml") or name.startswith("vasprun"):
        return Format.VASP_XML
    if name.startswith("outcar"):
        return Format.VASP_OUTCAR
    if name.endswith((".xyz", ".extxyz")):
        if re.search(r"-pos-\d+\.xyz$", name):
            return Format.CP2K_MD
        return Format.EXTXYZ
    if name.endswith((".db", ".sqlite")):
        return Format.ASE_DB
    raise InputError(
        f"cannot tell the format of {path} from its name; known: vasprun*.xml, OUTCAR*, *.xyz/*.extxyz "
        "(extended XYZ), *-pos-1.xyz (CP2K MD), *.db (ASE database). Pass the format explicitly."
    )


def _opener(path: Path) -> Callable:
    return gzip.open if path.name.endswith(".gz") else open


def _tail_text(path: Path, n_bytes: int = 4096) -> str:
    if path.name.endswith(".gz"):
        with gzip.open(path, "rt", errors="replace") as fh:
            text = fh.read()
        return text[-n_bytes:]
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(max(0, size - n_bytes))
        return fh.read().decode(errors="replace")


def _read_images(path: Path, fmt: str, what: str) -> list[Atoms]:
    """Every frame of ``path`` read by ASE as ``fmt``; a file ASE cannot parse is an InputError naming it."""
    from ase.io import read

    try:
        return read(str(path), index=":", format=fmt)
    except Exception as err:
        raise InputError(f"{path}: cannot parse {what}: {type(err).__name__}: {err}") from err


def _vasp_xml(path: Path, opts: ReadOptions) -> list[RawFrame]:
    import xml.etree.ElementTree as ET

    complete = _tail_text(path).rstrip().endswith("</modeling>")
    if not complete and not opts.allow_incomplete:
        raise InputError(
            f"{path}: vasprun.xml is cut off (no closing </modeling> tag): the run was killed or the file "
            "is truncated. Nothing from it was imported. Re-run/copy it completely, or pass "
            "--allow-incomplete to import the frames before the cut."
        )
    if complete:
        try:  # well-formed everywhere, not just at the end
            with _opener(path)(path, "rb") as fh:
                for _ in ET.iterparse(fh):
                    pass
        except ET.ParseError as err:
            raise InputError(f"{path}: vasprun.xml is not well-formed XML ({err}); nothing imported") from err
    return [_from_calc(a, path, i, opts) for i, a in enumerate(_read_images(path, "vasp-xml", "vasprun.xml"))]


def _vasp_outcar(path: Path, opts: ReadOptions) -> list[RawFrame]:
    tail = _tail_text(path, 20000)
    if "General timing and accounting" not in tail and not opts.allow_incomplete:
        raise InputError(
            f"{path}: OUTCAR has no final timing section, so VASP did not finish (killed or still running) or "
            "the file is truncated. Nothing from it was imported. Pass --allow-incomplete to import the "
            "completed ionic steps."
        )
    return [_from_calc(a, path, i, opts) for i, a in enumerate(_read_images(path, "vasp-out", "OUTCAR"))]


def _from_calc(atoms: Atoms, path: Path, index: int, opts: ReadOptions) -> RawFrame:
    calc = atoms.calc
    results = dict(calc.results) if calc is not None else {}
    if opts.energy_kind is EnergyKind.FREE:
        energy = results.get("free_energy", results.get("energy"))
    else:
        energy = results.get("energy")
    forces = results.get("forces")
    stress = results.get("stress")
    clean = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    return RawFrame(clean, _f(energy), _arr(forces), _voigt(stress), str(path), index,
                    {"energy_kind": opts.energy_kind.value})


def _f(x) -> float | None:
    return None if x is None else float(np.asarray(x, dtype=float).reshape(()))


def _arr(x) -> np.ndarray | None:
    return None if x is None else np.array(x, dtype=float)


def _voigt(stress) -> np.ndarray | None:
    if stress is None:
        return None
    s = np.asarray(stress, dtype=float)
    if s.shape == (6,):
        return s
    if s.size == 9:
        m = s.reshape(3, 3)
        return np.array([m[0, 0], m[1, 1], m[2, 2], m[1, 2], m[0, 2], m[0, 1]])
    raise ValueError(f"stress has shape {s.shape}; expected 6 (Voigt) or 9 (3x3) components")


_INFO_KEEP = (str, int, float, bool, np.integer, np.floating)


def _from_labelled_atoms(atoms: Atoms, path: Path, index: int, opts: ReadOptions) -> RawFrame:
    results = dict(atoms.calc.results) if atoms.calc is not None else {}
    info = dict(atoms.info)

    def pick(key: str | None, default_keys: tuple[str, ...], calc_key: str, where: dict):
        if key is not None:
            return where.get(key, results.get(key) if key == calc_key else None)
        for k in default_keys:
            if k in where:
                return where[k]
        if calc_key == "energy" and opts.energy_kind is EnergyKind.FREE and "free_energy" in results:
            return results["free_energy"]
        return results.get(calc_key)

    energy = pick(opts.energy_key, ("REF_energy",), "energy", info)
    forces = pick(opts.forces_key, ("REF_forces",), "forces", atoms.arrays)
    stress = pick(opts.stress_key, ("REF_stress",), "stress", info)
    label_keys = {"REF_energy", "REF_stress", opts.energy_key, opts.stress_key, "energy", "stress", "free_energy"}
    keep = {k: v for k, v in info.items() if k not in label_keys and isinstance(v, _INFO_KEEP)}
    clean = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    try:
        stress_v = _voigt(stress)
    except ValueError as err:
        raise InputError(f"{path}, frame {index}: {err}") from err
    return RawFrame(clean, _f(energy) if energy is not None else None, _arr(forces), stress_v, str(path), index, keep)


def _extxyz(path: Path, opts: ReadOptions) -> list[RawFrame]:
    images = _read_images(path, "extxyz", "extended XYZ")
    return [_from_labelled_atoms(a, path, i, opts) for i, a in enumerate(images)]


def _ase_db(path: Path, opts: ReadOptions) -> list[RawFrame]:
    from ase.db import connect

    frames = []
    try:
        db = connect(str(path))
        rows = list(db.select())
    except Exception as err:
        raise InputError(f"{path}: cannot open ASE database: {err}") from err
    for i, row in enumerate(rows):
        atoms = row.toatoms(add_additional_information=False)
        atoms.info.update({k: v for k, v in row.key_value_pairs.items()})
        atoms.info["db_id"] = row.id
        frames.append(_from_labelled_atoms(atoms, path, i, opts))
    return frames


# --- CP2K MD output: PROJECT-pos-1.xyz (Å; comment "E = <Hartree>"), PROJECT-frc-1.xyz (Hartree/Bohr),
# PROJECT-1.cell (Å, one row per step), optional PROJECT-1.stress (bar) and PROJECT-vel-1.xyz (Bohr/a.u. time).
# Checked against CP2K 2023.1: the .stress file is the total pressure tensor, positive when compressed,
# *including* the kinetic part sum(m v v^T)/V; the DFT (virial) stress is that minus the kinetic part,
# with ASE's sign flipped. Without velocities the virial stress is unknown, so the stress is left out.

_CP2K_COMMENT = re.compile(r"i\s*=\s*(\d+).*?E\s*=\s*(-?[\d.]+(?:[Ee][-+]?\d+)?)")


def _cp2k_xyz_blocks(path: Path) -> list[tuple[int, float | None, list[str], np.ndarray]]:
    blocks = []
    with _opener(path)(path, "rt") as fh:
        lines = fh.read().splitlines()
    k = 0
    while k < len(lines):
        if not lines[k].strip():
            k += 1
            continue
        try:
            n = int(lines[k].split()[0])
        except ValueError as err:
            raise InputError(f"{path}: line {k + 1} should hold an atom count, found {lines[k]!r}") from err
        if k + 2 + n > len(lines):
            raise InputError(f"{path}: frame {len(blocks)} is cut off (file truncated); nothing imported")
        m = _CP2K_COMMENT.search(lines[k + 1])
        step = int(m.group(1)) if m else len(blocks)
        energy = float(m.group(2)) if m else None
        rows = [lines[k + 2 + j].split() for j in range(n)]
        try:
            symbols = [r[0] for r in rows]
            xyz = np.array([[float(v) for v in r[1:4]] for r in rows])
        except (IndexError, ValueError) as err:
            raise InputError(f"{path}: frame {len(blocks)} has a malformed atom line: {err}") from err
        blocks.append((step, energy, symbols, xyz))
        k += 2 + n
    return blocks


def _cp2k_table(path: Path, n_cols: int) -> dict[int, np.ndarray]:
    out = {}
    with _opener(path)(path, "rt") as fh:
        for line in fh:
            if line.lstrip().startswith("#") or not line.strip():
                continue
            parts = line.split()
            if len(parts) < n_cols + 2:
                raise InputError(f"{path}: line {line.strip()!r} has too few columns")
            out[int(parts[0])] = np.array([float(v) for v in parts[2:2 + n_cols]])
    return out


def _cp2k_md(path: Path, opts: ReadOptions) -> list[RawFrame]:
    stem = re.sub(r"-pos-(\d+)\.xyz(\.gz)?$", "", path.name)
    run = re.search(r"-pos-(\d+)\.xyz", path.name).group(1)
    frc = path.with_name(f"{stem}-frc-{run}.xyz")
    cell_file = path.with_name(f"{stem}-{run}.cell")
    stress_file = path.with_name(f"{stem}-{run}.stress")
    vel_file = path.with_name(f"{stem}-vel-{run}.xyz")
    if not frc.exists():
        raise InputError(f"{path}: CP2K forces file {frc.name} not found next to it (print FORCES in MOTION/PRINT)")
    if not cell_file.exists():
        raise InputError(f"{path}: CP2K cell file {cell_file.name} not found next to it (print CELL in MOTION/PRINT)")
    pos_blocks = _cp2k_xyz_blocks(path)
    frc_blocks = {b[0]: b for b in _cp2k_xyz_blocks(frc)}
    cells = _cp2k_table(cell_file, 9)
    stresses = _cp2k_table(stress_file, 9) if stress_file.exists() else {}
    velocities = {b[0]: b for b in _cp2k_xyz_blocks(vel_file)} if vel_file.exists() else {}
    frames = []
    for i, (step, energy_ha, symbols, xyz) in enumerate(pos_blocks):
        atoms = Atoms(symbols, positions=xyz, pbc=True)
        if step in cells:
            atoms.cell = cells[step].reshape(3, 3)
        else:
            raise InputError(f"{path}, frame {i} (step {step}): no cell for this step in {cell_file.name}")
        fb = frc_blocks.get(step)
        forces = None if fb is None else fb[3] * (Hartree / Bohr)
        if fb is not None and energy_ha is None:
            energy_ha = fb[1]
        stress = None
        info: dict = {"cp2k_step": step}
        if step in stresses and step in velocities:
            v = velocities[step][3] * (Bohr / (_aut * second))
            kinetic = np.einsum("i,ij,ik->jk", atoms.get_masses(), v, v) / atoms.get_volume()
            stress = _voigt(-(stresses[step].reshape(3, 3) * bar - kinetic))
        elif step in stresses:
            info["stress_note"] = "CP2K stress left out: no velocities file to remove its kinetic part"
        frames.append(RawFrame(atoms, None if energy_ha is None else energy_ha * Hartree, forces, stress,
                               str(path), i, info))
    return frames


def _label_dir(path: Path, opts: ReadOptions) -> list[RawFrame]:
    """Every frame labelled so far in an `ionscreen label` output directory (sorted by hash: stable)."""
    from ase.io import read

    frames = []
    for i, f in enumerate(sorted((path / "frames").glob("*.extxyz"))):
        try:
            atoms = read(str(f), index=0, format="extxyz")
        except Exception as err:
            raise InputError(f"{f}: cannot parse labelled frame: {err}") from err
        raw = _from_labelled_atoms(atoms, f, 0, opts)
        raw.source_file = str(path)
        raw.source_frame = i
        raw.info["label_file"] = f.name
        frames.append(raw)
    return frames


READERS: dict[Format, Callable[[Path, ReadOptions], list[RawFrame]]] = {
    Format.VASP_XML: _vasp_xml,
    Format.VASP_OUTCAR: _vasp_outcar,
    Format.EXTXYZ: _extxyz,
    Format.ASE_DB: _ase_db,
    Format.CP2K_MD: _cp2k_md,
    Format.LABEL_DIR: _label_dir,
}


def read_frames(path: str | Path, fmt: Format | None = None, opts: ReadOptions | None = None) -> list[RawFrame]:
    """Every frame of ``path`` with its labels; InputError (naming the file) when the file is unusable."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist")
    fmt = fmt or detect_format(path)
    if path.is_dir() != (fmt is Format.LABEL_DIR):
        raise InputError(f"{path}: format {fmt.value} expects a {'directory' if path.is_dir() else 'file'}")
    return READERS[fmt](path, opts or ReadOptions())
