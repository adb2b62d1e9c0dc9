"""The built-in candidate library: cited crystallographic entries (data/library.yaml) and their structures.

Entries are data; this module only validates them and builds pymatgen structures with
``Structure.from_spacegroup`` in the cited setting, decorated with the entry's oxidation states.
"""

from __future__ import annotations

import enum
from functools import lru_cache
from importlib import resources
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mlip.errors import InputError

LIBRARY_FILE = "library.yaml"


class CandidateKind(enum.StrEnum):
    """What a candidate is screened as."""

    electrolyte = "electrolyte"
    cathode_host = "cathode_host"


class Verification(enum.StrEnum):
    """How sure the numbers of an entry are (see the header of data/library.yaml)."""

    db = "V-db"
    secondary = "V-2"
    derived = "derived"
    unverified = "U"


class QualityFlag(enum.StrEnum):
    """Known limitations of an entry's numbers, carried with every candidate built from it."""

    noised_coordinates = "noised_coordinates"  # framework free coordinates carry OBELiX's sigma=0.01 noise
    noised_mobile_sites = "noised_mobile_sites"  # only (partially occupied) mobile-ion sites carry that noise
    dft_structure = "dft_structure"  # lattice and coordinates from a DFT (GGA/GGA+U) relaxation, not experiment
    mixed_sources = "mixed_sources"  # lattice and coordinates come from different cited sources
    derived_coordinates = "derived_coordinates"  # some coordinates were constructed here (how: the entry's notes)
    assumed_occupancies = "assumed_occupancies"  # site occupancies chosen here, not refined (how: the entry's notes)


class EntryStatus(enum.StrEnum):
    """Whether an entry can be built."""

    ok = "ok"
    missing_coordinates = "missing_coordinates"


class RedoxMode(enum.StrEnum):
    """How a host takes the electrons of inserted ions."""

    localized = "localized"  # integer reduction steps on chosen atoms (lowest Ewald energy)
    delocalized = "delocalized"  # one fractional valence shared by every atom of the element


class Source(BaseModel):
    """Where an entry's numbers come from."""

    model_config = ConfigDict(extra="forbid")
    reference: str = Field(description="publication or structure type the numbers come from")
    file: str | None = Field(None, description="repository:path (or page) the numbers were read from")
    verification: Verification = Field(description="V-db, V-2, derived or U (unverified)")
    quality_flags: list[QualityFlag] = Field(
        default_factory=list, description="known limitations of the numbers (noised coordinates, DFT lattice, ...)"
    )
    checked: str | None = Field(
        None, description="how the numbers were checked against the cited file (what was compared, where the file is)"
    )


class SiteSpec(BaseModel):
    """One crystallographic site of the asymmetric unit."""

    model_config = ConfigDict(extra="forbid")
    label: str
    wyckoff: str = Field(description="Wyckoff letter with multiplicity, e.g. 16h, as cited")
    coords: tuple[float, float, float] = Field(description="fractional coordinates in the cited setting")
    occupancy: dict[str, float] | None = Field(None, description="element -> occupancy; None = the label's element, 1.0")
    note: str | None = None

    def species_occupancy(self) -> dict[str, float]:
        if self.occupancy:
            return dict(self.occupancy)
        element = "".join(ch for ch in self.label if ch.isalpha())
        return {element: 1.0}


class Redox(BaseModel):
    """The reducible element of a cathode host."""

    model_config = ConfigDict(extra="forbid")
    element: str
    mode: RedoxMode
    lowest_oxidation_state: float = Field(description="the host element is never reduced below this valence")


class OrderingSpec(BaseModel):
    """Cell in which partial occupancies are ordered."""

    model_config = ConfigDict(extra="forbid")
    cell: str = Field("conventional", pattern="^(conventional|primitive)$")
    supercell: tuple[int, int, int] = (1, 1, 1)


class Lattice(BaseModel):
    """Cited lattice parameters in Å and degrees; missing ones follow from the crystal system."""

    model_config = ConfigDict(extra="forbid")
    a: float
    b: float | None = None
    c: float | None = None
    alpha: float | None = None
    beta: float | None = None
    gamma: float | None = None


class LibraryEntry(BaseModel):
    """One built-in candidate as cited: space group, lattice, Wyckoff sites, occupancies, valences, source."""

    model_config = ConfigDict(extra="forbid")
    name: str
    kind: CandidateKind
    working_ion: str
    formula: str
    z: int = Field(description="formula units in the conventional cell")
    spacegroup: str = Field(description="space-group symbol passed to Structure.from_spacegroup (setting explicit)")
    spacegroup_number: int
    lattice: Lattice
    sites: list[SiteSpec]
    oxidation_states: dict[str, float]
    insertion_sites: list[SiteSpec] = Field(default_factory=list)
    redox: Redox | None = None
    ordered_composition: dict[str, int] | None = None
    ordering: OrderingSpec = Field(default_factory=OrderingSpec)
    status: EntryStatus = EntryStatus.ok
    source: Source
    notes: str | None = None

    def lattice_parameters(self) -> tuple[float, float, float, float, float, float]:
        """(a, b, c, alpha, beta, gamma) of the conventional cell, completed from the crystal system."""
        lat = self.lattice
        n = self.spacegroup_number
        a = lat.a
        if n >= 195:  # cubic
            return a, a, a, 90.0, 90.0, 90.0
        if 143 <= n <= 194:  # trigonal (hexagonal axes) and hexagonal
            return a, a, _required(lat.c, self, "c"), 90.0, 90.0, 120.0
        if 75 <= n <= 142:  # tetragonal
            return a, a, _required(lat.c, self, "c"), 90.0, 90.0, 90.0
        b, c = _required(lat.b, self, "b"), _required(lat.c, self, "c")
        if 16 <= n <= 74:  # orthorhombic
            return a, b, c, 90.0, 90.0, 90.0
        if 3 <= n <= 15:  # monoclinic, unique axis b
            return a, b, c, 90.0, _required(lat.beta, self, "beta"), 90.0
        return a, b, c, _required(lat.alpha, self, "alpha"), _required(lat.beta, self, "beta"), _required(
            lat.gamma, self, "gamma"
        )

    @property
    def buildable(self) -> bool:
        return self.status is EntryStatus.ok and bool(self.sites)


def _required(value: float | None, entry: LibraryEntry, name: str) -> float:
    if value is None:
        raise InputError(f"library entry {entry.name}: lattice parameter {name} is required for space group {entry.spacegroup}")
    return value


class Library(BaseModel):
    """The whole library file."""

    model_config = ConfigDict(extra="forbid")
    version: int
    entries: list[LibraryEntry]


@lru_cache(maxsize=1)
def load_library() -> Library:
    """Parse and validate the bundled library file (cached)."""
    import yaml

    text = resources.files("screening.candidates").joinpath("data", LIBRARY_FILE).read_text(encoding="utf-8")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml parses the file ~10x faster
    library = Library.model_validate(yaml.load(text, Loader=loader))  # noqa: S506 - a safe loader
    names = [e.name for e in library.entries]
    duplicated = {n for n in names if names.count(n) > 1}
    if duplicated:
        raise InputError(f"library has duplicated entry names: {sorted(duplicated)}")
    return library


def entry_names(buildable_only: bool = False) -> list[str]:
    return [e.name for e in load_library().entries if e.buildable or not buildable_only]


def get_entry(name: str) -> LibraryEntry:
    """Look an entry up by name (case-insensitive)."""
    for entry in load_library().entries:
        if entry.name.lower() == name.lower():
            return entry
    raise InputError(f"no built-in candidate named {name!r}; known: {', '.join(entry_names())}")


def _oxidized_species(occupancy: dict[str, float], oxidation_states: dict[str, float]) -> dict[Any, float]:
    from pymatgen.core import Species

    out = {}
    for element, occ in occupancy.items():
        if element not in oxidation_states:
            raise InputError(f"no oxidation state given for {element}")
        out[Species(element, oxidation_states[element])] = occ
    return out


def build_parent(entry: LibraryEntry):
    """The cited (possibly disordered) conventional cell, with oxidation states and a ``label`` site property."""
    from pymatgen.core import Lattice as PmgLattice
    from pymatgen.core import Structure

    if not entry.buildable:
        raise InputError(
            f"library entry {entry.name} cannot be built ({entry.status.value}): {entry.notes or 'no coordinates'}"
        )
    lattice = PmgLattice.from_parameters(*entry.lattice_parameters())
    species = [_oxidized_species(s.species_occupancy(), entry.oxidation_states) for s in entry.sites]
    coords = [list(s.coords) for s in entry.sites]
    labels = [s.label for s in entry.sites]
    structure = Structure.from_spacegroup(
        entry.spacegroup, lattice, species, coords, site_properties={"label": labels}, tol=1e-3
    )
    _check_multiplicities(entry, entry.sites, structure)
    return structure


def insertion_positions(entry: LibraryEntry) -> list[list[float]]:
    """Fractional coordinates (conventional cell) of every insertion site of a cathode host."""
    from pymatgen.core import Lattice as PmgLattice
    from pymatgen.core import Structure

    if not entry.insertion_sites:
        return []
    lattice = PmgLattice.from_parameters(*entry.lattice_parameters())
    dummy = Structure.from_spacegroup(
        entry.spacegroup,
        lattice,
        ["X0+"] * len(entry.insertion_sites),
        [list(s.coords) for s in entry.insertion_sites],
        site_properties={"label": [s.label for s in entry.insertion_sites]},
        tol=1e-3,
    )
    _check_multiplicities(entry, entry.insertion_sites, dummy)
    return [list(map(float, site.frac_coords)) for site in dummy]


def _check_multiplicities(entry: LibraryEntry, specs: list[SiteSpec], structure) -> None:
    """Each orbit must have the multiplicity its Wyckoff symbol states (catches a wrong setting)."""
    counts: dict[str, int] = {}
    for site in structure:
        counts[site.properties["label"]] = counts.get(site.properties["label"], 0) + 1
    for spec in specs:
        expected = int("".join(ch for ch in spec.wyckoff if ch.isdigit()))
        if counts.get(spec.label) != expected:
            raise InputError(
                f"library entry {entry.name}: site {spec.label} ({spec.wyckoff}) generates {counts.get(spec.label)} "
                f"positions in {entry.spacegroup}, expected {expected}; check the setting or the coordinates"
            )
