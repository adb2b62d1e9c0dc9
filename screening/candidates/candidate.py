"""The ``Candidate`` document: an ordered, oxidation-state-decorated structure with its identity and provenance.

Exports to CIF (with the metadata in a leading comment so ``from_cif`` restores it), POSCAR and extxyz.
"""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator

from mlip.errors import InputError
from screening.candidates.library import CandidateKind, Source
from screening.candidates.ordering import OrderingRecord

CIF_METADATA_PREFIX = "# ionscreen-candidate: "


class Candidate(BaseModel):
    """One structure to screen: what it is, how it was made, and its identity."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str = Field(description="library name or user-given name")
    formula: str = Field(description="reduced formula of the ordered cell")
    working_ion: str = Field(description="element symbol of the mobile ion")
    working_ion_charge: int = Field(description="stated formal charge of the working ion (e)")
    kind: CandidateKind
    structure: Any = Field(description="ordered pymatgen Structure with oxidation states on every species")
    source: Source | None = Field(None, description="citation of the crystallographic data")
    ordering: OrderingRecord | None = Field(None, description="how partial occupancies were ordered")
    structure_hash: str = Field(description="SHA-256 of the canonical form (screening.candidates.identity)")
    spacegroup: str | None = Field(None, description="cited space group of the parent (idealised) structure")
    insertion_sites_frac: list[list[float]] = Field(
        default_factory=list, description="fractional coordinates (this cell) of empty sites the working ion can take"
    )
    variant_of: str | None = Field(None, description="structure hash of the candidate this one was derived from")
    history: list[dict] = Field(default_factory=list, description="transformations applied (substitution, doping, insertion)")

    @field_validator("structure")
    @classmethod
    def _check_structure(cls, value):
        from pymatgen.core import Structure

        if isinstance(value, dict):
            value = Structure.from_dict(value)
        if not isinstance(value, Structure):
            raise InputError("Candidate.structure must be a pymatgen Structure")
        if not value.is_ordered:
            raise InputError("Candidate.structure must be ordered; order it with screening.candidates.ordering first")
        return value

    @field_serializer("structure")
    def _dump_structure(self, value):
        return value.as_dict()

    @property
    def n_atoms(self) -> int:
        return len(self.structure)

    def metadata(self) -> dict:
        """Everything but the structure, JSON-ready."""
        return self.model_dump(mode="json", exclude={"structure"})

    # ------------------------------------------------------------------ files
    def to_cif_text(self) -> str:
        """CIF text with the metadata in a leading comment line (:meth:`from_cif_text` restores it)."""
        from pymatgen.io.cif import CifWriter

        return CIF_METADATA_PREFIX + json.dumps(self.metadata(), separators=(",", ":")) + "\n" + str(CifWriter(self.structure))

    def to_cif(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_cif_text())
        return path

    def to_poscar(self, path: str | Path) -> Path:
        from pymatgen.io.vasp import Poscar

        path = Path(path)
        Poscar(self.structure, comment=f"{self.name} {self.formula} hash={self.structure_hash[:16]}").write_file(path)
        return path

    def to_extxyz(self, path: str | Path) -> Path:
        import ase.io
        from pymatgen.io.ase import AseAtomsAdaptor

        path = Path(path)
        atoms = AseAtomsAdaptor.get_atoms(self.structure.copy())
        atoms.set_initial_charges([float(getattr(site.specie, "oxi_state", 0.0) or 0.0) for site in self.structure])
        atoms.info.update({"name": self.name, "structure_hash": self.structure_hash, "working_ion": self.working_ion})
        ase.io.write(path, atoms, format="extxyz")
        return path

    def export(self, path: str | Path, fmt: "ExportFormat | str") -> Path:
        fmt = ExportFormat(fmt)
        return {ExportFormat.cif: self.to_cif, ExportFormat.poscar: self.to_poscar, ExportFormat.extxyz: self.to_extxyz}[
            fmt
        ](path)

    @classmethod
    def from_cif(cls, path: str | Path) -> "Candidate":
        """Read a CIF written by :meth:`to_cif` (metadata restored). A CIF from elsewhere is a new candidate:
        ``screening.candidates.import_file`` (``ionscreen candidates import``) orders and identifies it."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"CIF {path} does not exist")
        return cls.from_cif_text(path.read_text(errors="replace"), source=str(path))

    @classmethod
    def from_cif_text(cls, text: str, *, source: str = "CIF") -> "Candidate":
        """A candidate from the text :meth:`to_cif_text` wrote (no file in between)."""
        from pymatgen.core import Structure

        first, _, body = text.partition("\n")
        if not first.startswith(CIF_METADATA_PREFIX):
            raise InputError(f"{source}: no ionscreen metadata line; import a plain CIF with `ionscreen candidates import`")
        try:
            meta = json.loads(first[len(CIF_METADATA_PREFIX):])
        except json.JSONDecodeError as err:
            raise InputError(f"{source}: the ionscreen metadata line is not valid JSON") from err
        try:
            structure = Structure.from_str(body, fmt="cif")
        except Exception as err:  # the CIF parser raises anything from ValueError to IndexError
            raise InputError(f"could not read a structure from {source}: {err}") from err
        return cls.model_validate({**meta, "structure": structure})


class ExportFormat(enum.StrEnum):
    """File formats a candidate can be written in."""

    cif = "cif"
    poscar = "poscar"
    extxyz = "extxyz"
