"""Read structure files (CIF, POSCAR/CONTCAR, extxyz) within bounds, with clear errors.

CIFs go through pymatgen so that partially occupied sites survive; the others through ASE. Every file is checked
before it is parsed (its size, the atom count its header or CIF loops imply) and after (sites, cell, overlapping
atoms), with the bounds of :mod:`screening.candidates.limits`, so no caller reads an unbounded file.
"""

from __future__ import annotations

import enum
from pathlib import Path

from mlip.errors import InputError


class StructureFormat(enum.StrEnum):
    CIF = "cif"
    POSCAR = "poscar"
    EXTXYZ = "extxyz"


#: ASE's reader of each format ASE reads (CIFs: pymatgen).
_ASE_FORMATS = {StructureFormat.POSCAR: "vasp", StructureFormat.EXTXYZ: "extxyz"}


def structure_format(path: Path) -> StructureFormat:
    """The format of a structure file, from its name (the formats we read; no guessing)."""
    name = path.name.lower()
    if name.endswith((".cif", ".mcif")):
        return StructureFormat.CIF
    if name.startswith(("poscar", "contcar")) or name.endswith((".vasp", ".poscar")):
        return StructureFormat.POSCAR
    if name.endswith((".xyz", ".extxyz")):
        return StructureFormat.EXTXYZ
    raise InputError(f"{path}: unknown structure file type; name it *.cif, POSCAR / CONTCAR / *.vasp, "
                     "or *.xyz / *.extxyz")


def read_structure(path: str | Path):
    """The pymatgen ``Structure`` (possibly disordered) of a CIF / POSCAR / extxyz file, refused early when it is
    too large, empty, not a finite periodic cell, or has overlapping atoms."""
    # Imported here: screening.candidates (whose package imports this module) holds the bounds.
    from screening.candidates.limits import check_input_structure, check_structure_file

    path = Path(path)
    if not path.is_file():
        raise InputError(f"structure file {path} does not exist")
    fmt = structure_format(path)
    check_structure_file(path, fmt)
    try:
        if fmt is StructureFormat.CIF:
            from pymatgen.core import Structure

            structure = Structure.from_file(str(path))
        else:
            import ase.io
            from pymatgen.io.ase import AseAtomsAdaptor

            atoms = ase.io.read(str(path), format=_ASE_FORMATS[fmt])
            if not atoms.pbc.all() or atoms.cell.rank < 3:
                raise InputError(f"{path} is not a periodic crystal (pbc={atoms.pbc.tolist()}, "
                                 f"cell rank {atoms.cell.rank})")
            structure = AseAtomsAdaptor.get_structure(atoms)
    except InputError:
        raise
    except Exception as err:  # parsers raise anything from ValueError to IndexError
        raise InputError(f"could not read a structure from {path}: {type(err).__name__}: {err}") from err
    check_input_structure(structure, str(path))
    return structure


def element_symbols(structure) -> list[str]:
    """Every element present in a (possibly disordered) structure, sorted by atomic number."""
    return [el.symbol for el in sorted(structure.composition.elements, key=lambda e: e.Z)]
