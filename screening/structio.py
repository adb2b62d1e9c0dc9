"""Read structure files (CIF, POSCAR/CONTCAR, extxyz, ASE formats) with clear errors.

CIFs go through pymatgen so that partially occupied sites survive; everything else through ASE.
"""

from __future__ import annotations

from pathlib import Path

from mlip.errors import InputError


def read_structure(path: str | Path):
    """Return a pymatgen ``Structure`` (possibly disordered) read from ``path``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"structure file {path} does not exist")
    name = path.name.lower()
    try:
        if name.endswith((".cif", ".mcif")):
            from pymatgen.core import Structure

            return Structure.from_file(str(path))
        import ase.io
        from pymatgen.io.ase import AseAtomsAdaptor

        fmt = "vasp" if name.startswith(("poscar", "contcar")) or name.endswith(".vasp") else None
        atoms = ase.io.read(str(path), format=fmt)
    except InputError:
        raise
    except Exception as err:  # parsers raise anything from ValueError to IndexError
        raise InputError(f"could not read a structure from {path}: {err}") from err
    if not atoms.pbc.all() or atoms.cell.rank < 3:
        raise InputError(f"{path} is not a periodic crystal (pbc={atoms.pbc.tolist()}, cell rank {atoms.cell.rank})")
    return AseAtomsAdaptor.get_structure(atoms)


def element_symbols(structure) -> list[str]:
    """Every element present in a (possibly disordered) structure, sorted by atomic number."""
    return [el.symbol for el in sorted(structure.composition.elements, key=lambda e: e.Z)]
