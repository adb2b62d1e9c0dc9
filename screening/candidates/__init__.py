"""Candidate structures: the cited built-in library, import with ordering of partial occupancies, variants
(insertion, substitution, doping), explicit oxidation states and a stable structure hash.

Plain functions and pydantic documents; no Ray, no CLI (see ``workflows.cli.candidates``).
"""

from screening.candidates.builder import build_candidate, candidate_from_structure, import_file
from screening.candidates.candidate import Candidate, ExportFormat
from screening.candidates.identity import structure_hash
from screening.candidates.library import CandidateKind, LibraryEntry, entry_names, get_entry, load_library
from screening.candidates.ordering import OrderingMethod, OrderingRecord, order_structure
from screening.candidates.oxidation import ion_charge
from screening.candidates.variants import dope, insert_ions, substitute_working_ion

__all__ = [
    "Candidate",
    "CandidateKind",
    "ExportFormat",
    "LibraryEntry",
    "OrderingMethod",
    "OrderingRecord",
    "build_candidate",
    "candidate_from_structure",
    "dope",
    "entry_names",
    "get_entry",
    "import_file",
    "insert_ions",
    "ion_charge",
    "load_library",
    "order_structure",
    "structure_hash",
    "substitute_working_ion",
]
