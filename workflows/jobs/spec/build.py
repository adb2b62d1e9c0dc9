"""The candidates a job file names, built into ``screening.candidates.Candidate`` documents (one failure at a time).

A candidate whose transport or NEB supercell would hold more than ``MAX_SIMULATION_ATOMS`` atoms
(``screening.cells``) is a failure here, before planning, rather than a task that exhausts a worker.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from screening.candidates.library import CandidateKind
from workflows.jobs.spec.schema import CandidateSpec, JobSpec, StructureSource

log = logging.getLogger(__name__)


class CandidateFailure(BaseModel):
    """A candidate of the job file that could not be built (the others still are)."""

    model_config = ConfigDict(extra="forbid")

    index: int = Field(description="Position in candidates: (0-based).")
    item: str = Field(description="Key path of the item, e.g. candidates[2].")
    label: str = Field(description="What the item asked for.")
    error_type: str
    error: str


class BuiltCandidates(NamedTuple):
    candidates: list  # list[screening.candidates.Candidate], in job-file order, duplicates dropped
    failures: list[CandidateFailure]


def _build_source(source: StructureSource, spec: JobSpec, seed: int):
    from screening.candidates import build_candidate, get_entry, import_file

    if source.library is not None:
        entry = get_entry(source.library)
        if entry.kind is CandidateKind.cathode_host:
            return build_candidate(entry.name, ion=source.ion or spec.working_ion, n_ions=source.n_ions, seed=seed)
        return build_candidate(entry.name, ion=source.ion, seed=seed)
    options: dict[str, Any] = {
        "working_ion": source.ion or spec.working_ion,
        "kind": source.kind or CandidateKind.electrolyte,
        "oxidation_states": source.oxidation,
        "seed": seed,
    }
    if source.supercell is not None:
        options["supercell"] = list(source.supercell)
    if source.insertion_sites_frac is not None:
        options["insertion_sites_frac"] = [list(s) for s in source.insertion_sites_frac]
    return import_file(source.file, **options)


def _build_item(item: CandidateSpec, spec: JobSpec):
    from screening.candidates import dope, substitute_working_ion

    if item.substitute is not None:
        sub = item.substitute
        base = _build_source(sub, spec, item.seed)
        cand = substitute_working_ion(base, sub.to, seed=item.seed)
        default = f"{base.name}[{base.working_ion}->{sub.to}]"
    elif item.dope is not None:
        d = item.dope
        base = _build_source(d, spec, item.seed)
        cand = dope(base, d.site, d.dopant, d.fraction, dopant_oxidation=d.dopant_oxidation,
                    compensate_with=d.compensate_with, seed=item.seed)
        default = f"{base.name}[{d.dopant}@{d.site} {d.fraction:g}]"
    else:
        cand = _build_source(item, spec, item.seed)
        default = cand.name
    name = item.name or default
    return cand if cand.name == name else cand.model_copy(update={"name": name})


def check_simulation_size(cand, spec: JobSpec) -> None:
    """Refuse a candidate whose transport or NEB supercell would hold more than ``MAX_SIMULATION_ATOMS`` atoms (or
    the NEB's ``max_atoms``), with the repeats and the bounds the stages themselves use."""
    from screening.cells import repeats_for_min_height
    from screening.neb.supercell import neb_supercell_repeats

    structure = cand.structure
    if spec.transport is not None:
        length = spec.transport.protocol().supercell_min_length_A
        repeats_for_min_height(structure.lattice.matrix, length, len(structure),
                               what=f"candidate {cand.name}: its transport supercell (supercell_min_length_A = {length:g} Å)")
    if spec.neb is not None:
        length = spec.neb.min_length_A
        neb_supercell_repeats(structure, length, max_atoms=spec.neb.max_atoms,
                              what=f"candidate {cand.name}: its NEB supercell (min_length_A = {length:g} Å)")


def iter_candidates(spec: JobSpec, allowed_elements: set[str] | None = None, *,
                    agreement_elements: set[str] | None = None) -> Iterator[Any]:
    """Build the candidates of ``spec`` one at a time, in job-file order: yields each built
    ``screening.candidates.Candidate`` or the ``CandidateFailure`` of an item that could not be built, so a caller
    that stores each one as it comes keeps no more than one structure in memory (``plan_job`` of 10,000 candidates).

    ``allowed_elements`` (e.g. a model's element symbols): candidates with other elements fail with a
    ModelDomainError message; ``agreement_elements`` the same for the job's ``agreement_model`` (a candidate is
    screened by both models or not at all); candidates whose supercells exceed ``MAX_SIMULATION_ATOMS`` fail with an
    InputError. Candidates with the same structure hash are yielded once (first one wins).
    """
    from mlip.errors import ModelDomainError

    seen: dict[str, int] = {}
    for i, item in enumerate(spec.candidates):
        try:
            cand = _build_item(item, spec)
            elements = {el.symbol for el in cand.structure.composition.elements}
            for covered, which, fix in ((allowed_elements, "the model", "a model"),
                                        (agreement_elements, "the agreement model", "an agreement_model")):
                outside = sorted(elements - set(covered)) if covered is not None else []
                if outside:
                    raise ModelDomainError(
                        f"{cand.name} contains {', '.join(outside)}, which {which} does not cover "
                        f"(it covers {', '.join(sorted(covered))}); use {fix} trained on these elements")
            check_simulation_size(cand, spec)
        except Exception as err:  # noqa: BLE001 - one bad candidate must not stop the others; the error is reported
            log.warning("candidates[%d] (%s) failed: %s", i, item.label, err)
            yield CandidateFailure(index=i, item=f"candidates[{i}]", label=item.label,
                                   error_type=type(err).__name__, error=str(err))
            continue
        if cand.structure_hash in seen:
            log.info("candidates[%d] is the same structure as candidates[%d]; kept once", i, seen[cand.structure_hash])
            continue
        seen[cand.structure_hash] = i
        yield cand


def build_candidates(spec: JobSpec, allowed_elements: set[str] | None = None, *,
                     agreement_elements: set[str] | None = None) -> BuiltCandidates:
    """Materialise every candidate of ``spec`` (all in memory: :func:`iter_candidates` builds them one at a time);
    a candidate that fails is reported and the others are built. The arguments are :func:`iter_candidates`'s."""
    built = []
    failures: list[CandidateFailure] = []
    for out in iter_candidates(spec, allowed_elements, agreement_elements=agreement_elements):
        (failures if isinstance(out, CandidateFailure) else built).append(out)
    return BuiltCandidates(built, failures)
