"""The OPTIMADE ``structures`` properties ionscreen serves: one registry entry per property that says what its value
is (for documents), how a filter on it becomes SQL over the candidate table (``candidate_summaries`` joined with its
candidate and its newest transport and NEB results), its type, unit and description (for ``/info/structures``).

A column-backed property is one labelled SQL expression: the same expression is selected for the document and
compared in filters, so a filter and the value a client sees cannot disagree. Properties derived from the formula
(reduced, anonymous and Hill formulas, element ratios) are pure functions of the ``formula`` column and are filtered
by evaluating them once per distinct formula; constants (``type``, ``dimension_types``, ...) are evaluated in Python.

Provider fields carry the prefix ``_ionscreen_``. OPTIMADE property names are lowercase identifiers (the filter
grammar accepts nothing else), so the units in the names are lowercased: ``_ionscreen_conductivity_300k_ms_cm`` is
σ(300 K) in mS/cm (``unit`` in ``/info/structures`` says ``mS/cm``), ``_ev`` is eV.
"""

from __future__ import annotations

import enum
import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from optimade.models import DataType
from optimade.models.utils import anonymize_formula
from sqlalchemy.orm import aliased

from workflows.db.models import Candidate, CandidateSummary, Result

PREFIX = "ionscreen"

S = CandidateSummary
C = Candidate
#: The summary row's newest transport and NEB results (outer joins: a row may have only one of them).
RT = aliased(Result, name="transport_result")
RN = aliased(Result, name="neb_result")


class Backing(enum.Enum):
    """How a property is filtered."""

    column = "column"  # an SQL expression (string, number, timestamp)
    element_set = "element_set"  # the ",Cl,Li,P,S," column: HAS-type queries in SQL
    flag_list = "flag_list"  # the JSON list of quality flags
    formula = "formula"  # a function of the formula column, evaluated per distinct formula
    constant = "constant"  # the same value for every entry
    not_queryable = "not_queryable"  # served, but a filter on it is answered 501


@dataclass(frozen=True)
class FormulaFields:
    """Composition fields of a formula (alphabetical element order, integer proportions)."""

    elements: tuple[str, ...]
    reduced: str
    anonymous: str
    hill: str
    ratios: tuple[float, ...]


@dataclass(frozen=True)
class StructureFields:
    """Cell and sites of a stored candidate (element symbols, oxidation states dropped), Å."""

    lattice_vectors: list[list[float]]
    cartesian_site_positions: list[list[float]]
    species_at_sites: list[str]
    elements: tuple[str, ...]


@dataclass(frozen=True)
class Entry:
    """What one structure document is made of: the SELECT's labelled row and what is derived from it."""

    row: Any  # a RowMapping of ENTRY_COLUMNS
    composition: FormulaFields
    structure: StructureFields
    candidate_url: str


@dataclass(frozen=True)
class Property:
    name: str
    type: DataType
    description: str
    backing: Backing
    value: Callable[[Entry], Any]
    sql: Any = None  # column / element_set / flag_list: the SQL expression
    length_sql: Any = None  # list properties: the SQL expression of ``LENGTH``
    set_size_sql: Any = None  # element_set / flag_list: number of distinct members (``HAS ONLY``)
    of_formula: Callable[[FormulaFields], Any] | None = None
    constant: Any = None
    unit: str | None = None
    item_type: DataType | None = None  # list properties: the type of the items
    sortable: bool = False
    provider: bool = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "provider", self.name.startswith(f"_{PREFIX}_"))


# ---------------------------------------------------------------------------------------------- composition
@functools.lru_cache(maxsize=8192)
def formula_fields(formula: str) -> FormulaFields:
    """Reduced, anonymous and Hill formulas and element ratios of a formula such as ``Mg(Mo3S4)6``."""
    from pymatgen.core import Composition

    amounts = {el.symbol: amount for el, amount in Composition(formula).element_composition.items() if amount}
    counts = {el: round(amount) for el, amount in amounts.items()}
    if any(abs(amounts[el] - n) > 1e-6 or n < 1 for el, n in counts.items()):
        raise ValueError(f"formula {formula!r} has non-integer proportions")
    divisor = functools.reduce(math.gcd, counts.values())
    counts = {el: n // divisor for el, n in counts.items()}
    elements = tuple(sorted(counts))

    def written(order) -> str:
        return "".join(f"{el}{counts[el] if counts[el] != 1 else ''}" for el in order)

    reduced = written(elements)
    hill_order = (["C"] + (["H"] if "H" in counts else []) if "C" in counts else []) + [
        el for el in elements if "C" not in counts or el not in ("C", "H")]
    total = sum(counts.values())
    return FormulaFields(elements, reduced, anonymize_formula(reduced), written(hill_order),
                         tuple(counts[el] / total for el in elements))


def structure_fields(cif: str) -> StructureFields:
    """The stored CIF as OPTIMADE cell and sites (cached: a candidate's CIF never changes)."""
    return _structure_fields(cif)


@functools.lru_cache(maxsize=2048)
def _structure_fields(cif: str) -> StructureFields:
    from pymatgen.core import Structure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "fractional coordinates rounded": the CIF was written from this structure
        structure = Structure.from_str(cif, fmt="cif")
    symbols = []
    for site in structure:
        # one whole atom of one element per site (a site may mix oxidation states of that element, e.g. Ti3+/Ti4+);
        # candidates are stored as ordered cells, so anything else is a corrupt row, not something to serve
        elements = site.species.element_composition
        if len(elements) != 1 or abs(sum(elements.values()) - 1) > 1e-6:
            raise ValueError(f"a stored candidate structure has a partially occupied site ({site.species})")
        symbols.append(next(iter(elements)).symbol)
    return StructureFields(
        lattice_vectors=structure.lattice.matrix.tolist(),
        cartesian_site_positions=structure.cart_coords.tolist(),
        species_at_sites=symbols,
        elements=tuple(sorted(set(symbols))),
    )


def species(entry: Entry) -> list[dict[str, Any]]:
    return [{"name": el, "chemical_symbols": [el], "concentration": [1.0]} for el in entry.structure.elements]


def utc_seconds(value: datetime | None) -> datetime | None:
    """A timestamp as served: UTC, whole seconds (filters compare against this, see filters.py)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).replace(microsecond=0)


# ---------------------------------------------------------------------------------------------- registry
#: ``id``: ``<candidate id>-<first 12 hex digits of the model's SHA-256>`` (one entry per candidate and model).
ID_SQL = sa.cast(S.candidate_id, sa.String) + "-" + sa.func.substr(S.model_sha256, 1, 12)
NELEMENTS_SQL = sa.func.length(S.elements) - sa.func.length(sa.func.replace(S.elements, ",", "")) - 1


def _row(name: str) -> Callable[[Entry], Any]:
    return lambda entry: entry.row[name]


def column(name: str, type_: DataType, sql, description: str, *, unit: str | None = None,
           value: Callable[[Entry], Any] | None = None) -> Property:
    return Property(name, type_, description, Backing.column, value or _row(name), sql=sql, unit=unit, sortable=True)


def provider(name: str, type_: DataType, sql, description: str, *, unit: str | None = None) -> Property:
    return column(f"_{PREFIX}_{name}", type_, sql, description, unit=unit)


def _measured(stem: str, sql_value, sql_lo, sql_hi, what: str, unit: str) -> list[Property]:
    suffix = {"mS/cm": "ms_cm", "eV": "ev"}[unit]
    return [
        provider(f"{stem}_{suffix}", DataType.FLOAT, sql_value, f"{what}, {unit}; null when not computed.", unit=unit),
        provider(f"{stem}_ci95_lo_{suffix}", DataType.FLOAT, sql_lo,
                 f"Lower end of the 95 % interval of {what}, {unit}.", unit=unit),
        provider(f"{stem}_ci95_hi_{suffix}", DataType.FLOAT, sql_hi,
                 f"Upper end of the 95 % interval of {what}, {unit}.", unit=unit),
    ]


def _candidate_url(entry: Entry) -> str:
    return entry.candidate_url


PROPERTIES: dict[str, Property] = {p.name: p for p in [
    column("id", DataType.STRING, ID_SQL,
           "An entry's ID: `<candidate id>-<first 12 hex digits of the model's SHA-256>`; one entry per candidate "
           "and model."),
    Property("type", DataType.STRING, "The name of the type of an entry: always `structures`.", Backing.constant,
             lambda entry: "structures", constant="structures"),
    column("last_modified", DataType.TIMESTAMP, S.updated_utc,
           "When the entry's numbers last changed (a newer result merged), UTC, whole seconds.",
           value=lambda entry: utc_seconds(entry.row["last_modified"])),
    Property("elements", DataType.LIST, "The chemical symbols of the elements present, alphabetical.",
             Backing.element_set, lambda entry: [e for e in entry.row["x_elements"].split(",") if e],
             sql=S.elements, length_sql=NELEMENTS_SQL, set_size_sql=NELEMENTS_SQL, item_type=DataType.STRING),
    column("nelements", DataType.INTEGER, NELEMENTS_SQL, "Number of different elements."),
    Property("elements_ratios", DataType.LIST, "Proportion of each element (order of `elements`), summing to 1.",
             Backing.formula, lambda entry: list(entry.composition.ratios),
             of_formula=lambda f: list(f.ratios), item_type=DataType.FLOAT),
    column("chemical_formula_descriptive", DataType.STRING, S.formula,
           "The candidate's formula as ionscreen stores it (pymatgen's reduced formula, e.g. `Li6PS5Cl`)."),
    Property("chemical_formula_reduced", DataType.STRING,
             "Element symbols in alphabetical order with integer proportions (1 omitted), e.g. `ClLi6PS5`.",
             Backing.formula, lambda entry: entry.composition.reduced, of_formula=lambda f: f.reduced),
    Property("chemical_formula_hill", DataType.STRING,
             "The reduced formula in Hill order (C, then H, then alphabetical).",
             Backing.formula, lambda entry: entry.composition.hill, of_formula=lambda f: f.hill),
    Property("chemical_formula_anonymous", DataType.STRING,
             "The reduced formula with elements replaced by A, B, C, ... in order of decreasing proportion.",
             Backing.formula, lambda entry: entry.composition.anonymous, of_formula=lambda f: f.anonymous),
    Property("dimension_types", DataType.LIST, "Periodicity along the three lattice vectors: bulk crystals, [1, 1, 1].",
             Backing.constant, lambda entry: [1, 1, 1], constant=[1, 1, 1], item_type=DataType.INTEGER),
    Property("nperiodic_dimensions", DataType.INTEGER, "Number of periodic dimensions: 3.", Backing.constant,
             lambda entry: 3, constant=3),
    Property("lattice_vectors", DataType.LIST, "The three lattice vectors of the stored cell, Å.",
             Backing.not_queryable, lambda entry: entry.structure.lattice_vectors, unit="Angstrom"),
    Property("cartesian_site_positions", DataType.LIST, "Cartesian positions of the sites, Å.",
             Backing.not_queryable, lambda entry: entry.structure.cartesian_site_positions, unit="Angstrom"),
    column("nsites", DataType.INTEGER, C.n_atoms, "Number of sites (atoms) in the stored cell."),
    Property("species", DataType.LIST, "One species per element; every site holds one atom (ordered cells).",
             Backing.not_queryable, species),
    Property("species_at_sites", DataType.LIST, "The species (element symbol) at each site.",
             Backing.element_set, lambda entry: entry.structure.species_at_sites,
             sql=S.elements, length_sql=C.n_atoms, set_size_sql=NELEMENTS_SQL, item_type=DataType.STRING),
    Property("structure_features", DataType.LIST, "Special features used: none (ordered cells, one atom per site).",
             Backing.constant, lambda entry: [], constant=[], item_type=DataType.STRING),
    # ---- ionscreen's fields: what the candidate is, its transport numbers, their uncertainty and provenance
    provider("name", DataType.STRING, S.name, "The candidate's name (e.g. `Li6PS5Cl`)."),
    provider("working_ion", DataType.STRING, S.working_ion, "The mobile ion screened, e.g. `Li`, `Na`, `Mg`."),
    provider("kind", DataType.STRING, S.kind, "`electrolyte` or `cathode_host`."),
    *_measured("conductivity_300k", S.conductivity_300K_mS_cm, S.conductivity_300K_ci95_lo_mS_cm,
               S.conductivity_300K_ci95_hi_mS_cm, "the ionic conductivity σ at 300 K (Arrhenius extrapolation of MD)",
               "mS/cm"),
    *_measured("activation_energy", S.activation_energy_eV, S.activation_energy_ci95_lo_eV,
               S.activation_energy_ci95_hi_eV, "the Arrhenius activation energy Ea", "eV"),
    provider("migration_barrier_ev", DataType.FLOAT, S.migration_barrier_eV,
             "Lowest converged NEB hop barrier, eV.", unit="eV"),
    *(p for d in (1, 2, 3) for p in _measured(
        f"percolation_{d}d", getattr(RN, f"percolation_{d}d_eV"), getattr(RN, f"percolation_{d}d_ci95_lo_eV"),
        getattr(RN, f"percolation_{d}d_ci95_hi_eV"),
        f"the migration barrier at which NEB hops percolate in {d}D", "eV")),
    provider("percolation_barrier_ev", DataType.FLOAT, S.percolation_barrier_eV,
             "The percolation threshold the ranking uses (lowest barrier plus a penalty below 3D), eV.", unit="eV"),
    provider("percolation_dimension", DataType.INTEGER, S.percolation_dimension,
             "1, 2 or 3: the dimensionality of `_ionscreen_percolation_barrier_ev`."),
    Property(f"_{PREFIX}_flags", DataType.LIST,
             "Quality flags of the numbers (e.g. `few_hops`, `not_diffusive`, `neb_not_converged`); empty when "
             "none. A number with flags is not ranked as if it were certain.", Backing.flag_list,
             lambda entry: list(entry.row["x_flags"] or []), sql=sa.cast(S.flags, sa.Text), length_sql=S.n_flags,
             set_size_sql=S.n_flags, item_type=DataType.STRING),
    provider("score", DataType.FLOAT, S.score,
             "Uncertainty-aware ranking score (default weights, comparable across jobs); higher is better."),
    provider("rank", DataType.INTEGER, S.rank, "Rank by score over the whole database, 1 = best."),
    provider("model_ref", DataType.STRING, S.model_ref, "The potential that computed the numbers (its reference)."),
    provider("model_sha256", DataType.STRING, S.model_sha256, "SHA-256 of the potential's file."),
    provider("transport_protocol_hash", DataType.STRING, RT.protocol_hash,
             "Hash of the MD transport protocol (as data) behind σ and Ea."),
    provider("neb_protocol_hash", DataType.STRING, RN.protocol_hash,
             "Hash of the NEB parameters behind the migration barriers."),
    provider("structure_hash", DataType.STRING, C.structure_hash, "The candidate's structure hash (its identity)."),
    Property(f"_{PREFIX}_candidate_url", DataType.STRING,
             "The candidate's page with this model's results (absolute when served by `ionscreen serve`, relative "
             "to the server root in an exported file).", Backing.not_queryable, _candidate_url),
]}

#: Columns selected for a document besides the column-backed properties.
EXTRA_COLUMNS = {
    "x_elements": S.elements,
    "x_formula": S.formula,
    "x_flags": S.flags,
    "x_candidate_id": S.candidate_id,
    "x_model_sha256": S.model_sha256,
    "x_cif": C.cif,
}

ENTRY_COLUMNS = [p.sql.label(p.name) for p in PROPERTIES.values() if p.backing is Backing.column] + [
    sql.label(name) for name, sql in EXTRA_COLUMNS.items()]


def _joined(*columns) -> sa.Select:
    # a candidate stored without its structure (cif NULL) is not an OPTIMADE structure: it is not served
    return (
        sa.select(*columns)
        .select_from(S)
        .join(C, C.id == S.candidate_id)
        .outerjoin(RT, RT.id == S.transport_result_id)
        .outerjoin(RN, RN.id == S.neb_result_id)
        .where(C.cif.is_not(None))
    )


def entry_source() -> sa.Select:
    """SELECT of every entry's columns: the candidate table joined with its candidate and newest results."""
    return _joined(*ENTRY_COLUMNS)


def count_source() -> sa.Select:
    """The number of entries (add filters with ``.where``): the same joins as :func:`entry_source`."""
    return _joined(sa.func.count())


#: Default order: best ranking score first (unranked last), then the table's id (stable pages).
DEFAULT_ORDER = (S.score.desc().nulls_last(), S.id)

__all__ = ["Backing", "C", "DEFAULT_ORDER", "ENTRY_COLUMNS", "Entry", "FormulaFields", "ID_SQL", "PREFIX",
           "PROPERTIES", "Property", "RN", "RT", "S", "StructureFields", "count_source", "entry_source",
           "formula_fields", "structure_fields", "utc_seconds"]
