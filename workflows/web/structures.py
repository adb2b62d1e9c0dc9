"""Structure files a candidate page offers: the stored CIF as is, POSCAR made from it, a plain CIF for the 3D viewer
(no oxidation-state labels, which the viewer would not recognise as elements), and safe download names."""

from __future__ import annotations

import enum
import functools
import re

from mlip.errors import InputError

_DOWNLOAD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}$")


class DownloadFormat(enum.StrEnum):
    cif = "cif"
    poscar = "poscar"


_MEDIA = {DownloadFormat.cif: "chemical/x-cif", DownloadFormat.poscar: "text/plain"}


def safe_stem(name: str) -> str:
    """A file-name stem from a candidate name (letters, digits, '.', '_', '-')."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")
    return stem[:100] or "candidate"


def download_format(filename: str) -> DownloadFormat:
    """The format a download name asks for: ``*.cif``, ``POSCAR``, ``*.vasp`` or ``*.poscar``.

    Anything else — path separators, '..', empty or odd characters — is an InputError: the name is only ever a label
    for the response, never a path, but a name that looks like a path is refused rather than silently cleaned.
    """
    if not isinstance(filename, str) or not _DOWNLOAD_NAME.match(filename) or ".." in filename:
        raise InputError(f"invalid download name {filename!r}: use NAME.cif, POSCAR, NAME.vasp or NAME.poscar "
                         "(letters, digits, '.', '_', '-')")
    lower = filename.lower()
    if lower.endswith(".cif"):
        return DownloadFormat.cif
    if lower == "poscar" or lower.endswith((".vasp", ".poscar")):
        return DownloadFormat.poscar
    raise InputError(f"invalid download name {filename!r}: the name must end in .cif, .vasp or .poscar, or be POSCAR")


def media_type(fmt: DownloadFormat) -> str:
    return _MEDIA[fmt]


@functools.lru_cache(maxsize=256)
def _structure(cif: str):
    from pymatgen.core import Structure

    return Structure.from_str(cif, fmt="cif")


@functools.lru_cache(maxsize=256)
def viewer_cif(cif: str) -> str:
    """The structure as plain CIF (element symbols only, P1) for 3Dmol.js."""
    from pymatgen.io.cif import CifWriter

    structure = _structure(cif).copy()
    structure.remove_oxidation_states()
    return str(CifWriter(structure))


def poscar_text(cif: str, comment: str) -> str:
    from pymatgen.io.vasp import Poscar

    structure = _structure(cif).copy()
    structure.remove_oxidation_states()
    return Poscar(structure, comment=comment).get_str()


def file_text(record, fmt: DownloadFormat) -> str:
    """The candidate's structure in ``fmt`` (the stored CIF keeps its ionscreen metadata line)."""
    if not record.cif:
        raise InputError(f"candidate {record.id} has no stored structure")
    if fmt is DownloadFormat.cif:
        return record.cif
    return poscar_text(record.cif, f"{record.name} {record.formula} hash={record.structure_hash[:16]}")


__all__ = ["DownloadFormat", "download_format", "file_text", "media_type", "safe_stem", "viewer_cif"]
