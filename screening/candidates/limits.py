"""Bounds on structure files and the structures read from them, checked before any expensive step (the cells built
from them are bounded in :mod:`screening.cells`).

pymatgen's CIF reader and its bond-valence analysis grow faster than linearly with the number of sites (a
100,800-atom CIF would run for hours), and ASE's xyz/POSCAR readers trust the atom count in the header (a
one-line header claiming 10^12 atoms loops forever). So a file is checked in order of cost: its size, then
the site count its header or CIF loops imply (counted here without pymatgen's quadratic merge), then, once
parsed, the exact count, the cell and the shortest distance. Every refusal is an ``InputError`` that names
the file and the limit.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from mlip.errors import InputError
from screening.cells import cell_heights_A

#: A unit cell of 2,000 sites is a few hundred kB in any format; a larger file is not one crystal's cell.
MAX_STRUCTURE_FILE_BYTES = 8 * 1024 * 1024
#: Sites of the input cell (after applying the CIF's symmetry). pymatgen parses 2,000 sites in ~1.5 s.
MAX_INPUT_SITES = 2000
#: Bond-valence analysis takes ~4 s at 324 sites and ~1 min at 1,500 (and recurses once per distinct site);
#: above this, oxidation states must be given explicitly.
MAX_BOND_VALENCE_SITES = 500
#: Two atoms (of fully occupied sites) closer than this are an error in the file, not chemistry (H2: 0.74 Å).
MIN_INTERATOMIC_DISTANCE_A = 0.5
#: Longest lattice vector of an input cell, Å (cells are a few to a few tens of Å; vacuum slabs ~100 Å).
MAX_INPUT_CELL_LENGTH_A = 1000.0
#: Farthest a site may lie from the cell, in cells (unwrapped MD frames drift a few cells; 10^16 is junk that
#: makes a neighbour search allocate a grid spanning it).
MAX_FRACTIONAL_COORDINATE = 1000.0
#: CIF atom_site rows x symmetry operations examined when counting a CIF's sites.
MAX_CIF_GENERATED_POSITIONS = 200_000
#: pymatgen's CIF reader compares every generated position with the sites found so far: its time grows as
#: (rows x symmetry operations) x sites, ~0.35 µs per pair on one core (2,000 P1 rows: 4e6, 1.4 s). A CIF
#: above this bound (~7 s of parsing) is refused; real unit cells stay far below it.
MAX_CIF_PARSE_WORK = 20_000_000


_INT = re.compile(r"[+-]?[0-9]+")


def check_structure_file(path: Path, fmt: str) -> None:
    """Refuse a structure file before it is parsed: more than ``MAX_STRUCTURE_FILE_BYTES``, empty, or a header
    (POSCAR counts, xyz frame counts, CIF atom_site rows under their symmetry) implying more than
    ``MAX_INPUT_SITES`` sites (``screening.structio.read_structure`` calls this, then parses). ``fmt`` is a
    ``screening.structio.StructureFormat`` value (cif, poscar, extxyz): structio imports this module, not the
    reverse."""
    size = path.stat().st_size
    if size > MAX_STRUCTURE_FILE_BYTES:
        raise InputError(f"{path} is {size:,} bytes, more than the {MAX_STRUCTURE_FILE_BYTES:,} bytes a structure "
                         "file may have (MAX_STRUCTURE_FILE_BYTES); give one unit cell")
    if size == 0:
        raise InputError(f"{path} is empty: no atoms")
    text = path.read_bytes().decode("utf-8", errors="replace")
    {"cif": _precheck_cif, "poscar": _precheck_poscar, "extxyz": _precheck_xyz}[str(fmt)](text, path)


def check_input_structure(structure, source: str) -> None:
    """Refuse a structure with no atoms, more than ``MAX_INPUT_SITES`` sites, a cell that is not finite and
    three-dimensional, or fully occupied sites closer than ``MIN_INTERATOMIC_DISTANCE_A``.

    Partially occupied sites may lie closer (split sites of a disordered CIF); ordering decides which are
    occupied, and the ordered cell is checked again (``builder.candidate_from_structure``).
    """
    n = len(structure)
    if n == 0:
        raise InputError(f"{source} has no atoms")
    if n > MAX_INPUT_SITES:
        raise InputError(f"{source} has {n:,} sites, more than the {MAX_INPUT_SITES:,} an input cell may have "
                         "(MAX_INPUT_SITES); give the unit cell, not a supercell")
    matrix = np.asarray(structure.lattice.matrix, dtype=float)
    frac = np.asarray(structure.frac_coords, dtype=float)
    if not (np.all(np.isfinite(matrix)) and np.all(np.isfinite(frac))):
        raise InputError(f"{source}: the cell or the coordinates are not finite numbers")
    far = np.abs(frac).max(axis=1)
    if far.max() > MAX_FRACTIONAL_COORDINATE:
        i = int(np.argmax(far))
        raise InputError(f"{source}: site {i} lies {far[i]:.3g} cells from the origin, more than "
                         f"{MAX_FRACTIONAL_COORDINATE:g} (MAX_FRACTIONAL_COORDINATE); wrap the coordinates into the cell")
    lengths = np.linalg.norm(matrix, axis=1)
    if lengths.max() > MAX_INPUT_CELL_LENGTH_A:
        raise InputError(f"{source}: a lattice vector is {lengths.max():.4g} Å long, more than "
                         f"{MAX_INPUT_CELL_LENGTH_A:g} Å (MAX_INPUT_CELL_LENGTH_A)")
    try:
        heights = cell_heights_A(matrix)
    except InputError as err:
        raise InputError(f"{source}: {err}") from err
    if heights.min() < MIN_INTERATOMIC_DISTANCE_A:
        raise InputError(f"{source}: the cell is {heights.min():.3g} Å thick, so every atom is closer than "
                         f"{MIN_INTERATOMIC_DISTANCE_A} Å (MIN_INTERATOMIC_DISTANCE_A) to its own periodic image")
    _check_distances(structure, source)


def _check_distances(structure, source: str) -> None:
    full = np.array([site.species.num_atoms >= 1 - 1e-3 for site in structure])
    if full.sum() == 0:
        return
    center, point, _, distance = wrapped_into_cell(structure).get_neighbor_list(MIN_INTERATOMIC_DISTANCE_A)
    close = full[center] & full[point] & (distance < MIN_INTERATOMIC_DISTANCE_A)
    if np.any(close):
        k = int(np.argmin(np.where(close, distance, np.inf)))
        i, j = int(center[k]), int(point[k])
        what = "its own periodic image" if i == j else f"site {j} ({structure[j].species.formula})"
        raise InputError(f"{source}: site {i} ({structure[i].species.formula}) is {distance[k]:.3f} Å from {what}, "
                         f"closer than {MIN_INTERATOMIC_DISTANCE_A} Å (MIN_INTERATOMIC_DISTANCE_A): overlapping atoms")


def wrapped_into_cell(structure):
    """A copy with every fractional coordinate in [0, 1): pymatgen's neighbour searches (bond valence, the
    distance checks) allocate a grid spanning every position they are given."""
    from pymatgen.core import Structure

    return Structure(structure.lattice, [site.species for site in structure], np.mod(structure.frac_coords, 1.0),
                     site_properties=structure.site_properties, properties=dict(structure.properties))


def check_ordered_distances(structure, source: str) -> None:
    """Refuse an ordered cell with two atoms closer than ``MIN_INTERATOMIC_DISTANCE_A``."""
    _check_distances(structure, source)


def _too_many(path: Path, count: int, what: str) -> InputError:
    return InputError(f"{path} {what} {count:,} sites, more than the {MAX_INPUT_SITES:,} an input cell may have "
                      "(MAX_INPUT_SITES); give the unit cell, not a supercell")


# ---------------------------------------------------------------------------------------------- prechecks
def _precheck_poscar(text: str, path: Path) -> None:
    """The atom counts line (line 6, or 7 after the element symbols of VASP 5) before ASE allocates them."""
    lines = text.splitlines()
    for line in lines[5:7]:
        counts = _ints(line.split()[:200])
        if counts is None:
            continue
        if any(c < 0 for c in counts):
            raise InputError(f"{path}: negative atom count in {line.strip()[:80]!r}")
        total = sum(counts)
        if total == 0:
            raise InputError(f"{path} has no atoms (counts line {line.strip()[:80]!r})")
        if total > MAX_INPUT_SITES:
            raise _too_many(path, total, "states")
        return


def _precheck_xyz(text: str, path: Path) -> None:
    """Every frame header (atom count), as ASE's frame scan reads them, before ASE loops over them."""
    lines = text.splitlines()
    i = frames = 0
    while i < len(lines) and lines[i].strip():
        counts = _ints(lines[i].split())
        if counts is None or len(counts) != 1:
            raise InputError(f"{path}:{i + 1}: expected the atom count of an xyz frame, got {lines[i].strip()[:80]!r}")
        n = counts[0]
        if n < 0:
            raise InputError(f"{path}:{i + 1}: negative atom count {n}")
        if n > MAX_INPUT_SITES:
            raise _too_many(path, n, f"frame {frames} states")
        frames += 1
        i += 2 + n
        while i < len(lines) and lines[i].lstrip().startswith("VEC"):
            i += 1
    if frames == 0:
        raise InputError(f"{path} has no atoms (no xyz frame)")


def _ints(tokens: list[str]) -> list[int] | None:
    if not tokens or not all(_INT.fullmatch(t) for t in tokens):
        return None
    if any(len(t) > 18 for t in tokens):  # int() of thousands of digits is refused by Python; far too many anyway
        return [10**18]
    return [int(t) for t in tokens]


def _precheck_cif(text: str, path: Path) -> None:
    """Count the distinct positions the CIF's atom_site rows generate under its symmetry operations (what
    pymatgen's reader will merge into sites, at quadratic cost) and refuse more than ``MAX_INPUT_SITES``."""
    import warnings

    from pymatgen.io.cif import CifFile, CifParser

    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            blocks = list(CifFile.from_str(text).data.values())
            positions = [_cif_block_rows(block, path) for block in blocks]
            if sum(len(p) for p in positions) == 0:
                return  # no atom_site coordinates: pymatgen reports that it found no structure
            parser = CifParser.from_str(text)
            total = work = 0
            for block, rows in zip(blocks, positions):
                if not len(rows):
                    continue
                ops = parser.get_symops(block)
                sites = _cif_block_sites(rows, ops, path)
                total += sites
                work += len(rows) * max(len(ops), 1) * sites
                if total > MAX_INPUT_SITES:
                    raise _too_many(path, total, "generates")
                if work > MAX_CIF_PARSE_WORK:
                    raise InputError(f"{path}: reading it means comparing {work:,} pairs of positions ({len(rows):,} "
                                     f"atom_site rows x {len(ops)} symmetry operations x {sites:,} sites), more "
                                     f"than {MAX_CIF_PARSE_WORK:,} (MAX_CIF_PARSE_WORK); give fewer rows")
    except InputError:
        raise
    except Exception as err:  # pymatgen's CIF reader raises anything from ValueError to KeyError
        raise InputError(f"could not read a structure from {path}: {type(err).__name__}: {err}") from err


def _cif_block_rows(block, path: Path) -> np.ndarray:
    """Fractional coordinates of a data block's atom_site rows (rows without numbers left out)."""
    from pymatgen.io.cif import str2float

    columns = [block.data.get(f"_atom_site_fract_{x}") for x in "xyz"]
    if any(c is None for c in columns):
        return np.zeros((0, 3))
    columns = [[c] if isinstance(c, str) else list(c) for c in columns]
    rows = min(len(c) for c in columns)
    if rows > MAX_INPUT_SITES * 8:  # pymatgen merges rows at one position (mixed sites), never this many
        raise InputError(f"{path} has {rows:,} atom_site rows, more than {MAX_INPUT_SITES * 8:,} (8 x MAX_INPUT_SITES, "
                         f"an input cell may have {MAX_INPUT_SITES:,} sites); give the unit cell, not a supercell")
    coords = []
    for k in range(rows):
        try:
            coords.append([str2float(columns[a][k]) for a in range(3)])
        except (ValueError, TypeError, IndexError):
            continue
    out = np.asarray(coords, dtype=float).reshape(-1, 3)
    return out[np.all(np.isfinite(out), axis=1)]


def _cif_block_sites(positions: np.ndarray, ops, path: Path) -> int:
    """Distinct positions (on a 0.001 grid) generated by ``ops`` from ``positions``."""
    generated = len(positions) * max(len(ops), 1)
    if generated > MAX_CIF_GENERATED_POSITIONS:
        raise InputError(f"{path}: {len(positions):,} atom_site rows x {len(ops):,} symmetry operations generate "
                         f"{generated:,} positions, more than {MAX_CIF_GENERATED_POSITIONS:,} "
                         "(MAX_CIF_GENERATED_POSITIONS); give the unit cell, not a supercell")
    if not ops:
        return len(positions)
    rotations = np.array([op.rotation_matrix for op in ops], dtype=float).reshape(-1, 3, 3)
    translations = np.array([op.translation_vector for op in ops], dtype=float).reshape(-1, 3)
    images = np.einsum("kij,mj->mki", rotations, positions) + translations[None, :, :]
    images = np.nan_to_num(images - np.floor(images), nan=0.0, posinf=0.0, neginf=0.0)
    keys = np.round(images * 1000.0).astype(np.int64) % 1000
    return len(np.unique(keys.reshape(-1, 3), axis=0))
