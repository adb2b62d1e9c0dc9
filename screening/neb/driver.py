"""NEB over the hops of a structure: endpoints → band → result documents, files and percolation.

Plain functions: ``neb_for_endpoints`` (any two endpoint structures), ``neb_for_hop`` (one hop of a
hop network) and ``neb_for_structure`` (every distinct hop + percolation barriers). The engine is
any ASE calculator or a batched evaluator (:class:`mlip.backends.BatchedEvaluator`); ``neb_engine_for``
asks a loaded model's backend for the best it has. No Ray, no CLI here.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from mlip.errors import SimulationFailed
from screening.neb.band import BandOutcome, NebParameters, PathConvention, run_band
from screening.neb.hops import Hop, HopNetwork, Mechanism, find_hops
from screening.neb.percolation import WeightedEdge, percolation_barriers
from screening.neb.results import (
    NebFlag,
    NebHopResult,
    NebStructureResult,
    PercolationFlag,
    PercolationResult,
    Provenance,
    parameters_hash,
)
from screening.neb.supercell import HopTooLongError, build_endpoints

log = logging.getLogger(__name__)

SUMMARY_FILE = "neb_summary.json"


def neb_engine_for(loaded, device: str = "auto"):
    """The NEB engine for a :class:`mlip.loader.LoadedModel`, from its family's backend: the batched evaluator
    (images evaluated together, float64) when the family has one, else its ASE calculator for the NEB task."""
    from mlip.calculators import Task

    engine = loaded.backend.batched_evaluator(loaded, device=device, dtype="float64")
    return engine if engine is not None else loaded.calculator(task=Task.NEB, device=device)


def describe_engine(engine) -> dict:
    """Provenance facts about the engine: class name, and model reference and hash where the engine knows them."""
    from mlip.backends import BatchedEvaluator

    if isinstance(engine, BatchedEvaluator):
        return {"calculator": type(engine).__name__, "model_ref": engine.model_ref,
                "model_sha256": engine.model_sha256, "device": engine.device, "dtype": engine.dtype}
    info = {"calculator": type(engine).__name__,
            "model_ref": getattr(engine, "ionscreen_model_ref", None),
            "model_sha256": getattr(engine, "ionscreen_model_sha256", None)}
    dtype = getattr(engine, "default_dtype", None)
    if dtype:
        info["dtype"] = str(dtype)
    return info


def make_provenance(engine, parameters: dict, batch_choice=None) -> Provenance:
    from mlip.version import code_version

    return Provenance(
        **describe_engine(engine),
        batch_size=batch_choice.batch_size if batch_choice is not None else None,
        batch_size_source=batch_choice.source if batch_choice is not None else None,
        parameters=parameters,
        parameters_sha256=parameters_hash(parameters),
        code_version=code_version(),
    )


def _writable(atoms):
    """A copy with its computed energy/forces and only the info entries extxyz can store."""
    from ase.calculators.singlepoint import SinglePointCalculator

    copy = atoms.copy()
    copy.info = {k: v for k, v in atoms.info.items() if isinstance(v, (str, int, float, bool))}
    copy.calc = SinglePointCalculator(copy, energy=atoms.get_potential_energy(),
                                      forces=atoms.get_forces(apply_constraint=False))
    return copy


def _write_outputs(outcome: BandOutcome, out_dir: Path, name: str, title: str) -> dict[str, str]:
    import ase.io

    from screening.neb.plots import plot_profile

    out_dir.mkdir(parents=True, exist_ok=True)
    energies = outcome.energies_eV
    rel = energies - energies[0]
    profile = {
        "reaction_coordinate_A": outcome.reaction_coordinate_A.tolist(),
        "energy_eV": energies.tolist(),
        "energy_relative_eV": rel.tolist(),
        "fit_reaction_coordinate_A": outcome.fit_reaction_coordinate_A.tolist(),
        "fit_energy_relative_eV": outcome.fit_energies_rel_eV.tolist(),
        "converged": outcome.converged,
        "max_force_eV_A": outcome.max_force_eV_A,
    }
    profile_file = out_dir / f"{name}.profile.json"
    profile_file.write_text(json.dumps(profile, indent=1))
    band_file = out_dir / f"{name}.band.extxyz"
    ase.io.write(band_file, [_writable(atoms) for atoms in outcome.images], format="extxyz")
    plot_file = plot_profile(out_dir / f"{name}.png", outcome.reaction_coordinate_A, rel,
                             fit_reaction_coordinate_A=outcome.fit_reaction_coordinate_A,
                             fit_energies_rel_eV=outcome.fit_energies_rel_eV, title=title,
                             converged=outcome.converged)
    return {"profile_file": str(profile_file), "band_file": str(band_file), "plot_file": str(plot_file)}


def neb_for_endpoints(
    initial,
    final,
    engine,
    params: NebParameters | None = None,
    *,
    name: str = "band",
    out_dir: str | Path | None = None,
    moving_index: int | None = None,
    home: str | Path | None = None,
    extra: dict | None = None,
    path: PathConvention = PathConvention.MINIMUM_IMAGE,
) -> NebHopResult:
    """Climbing-image NEB between two ASE Atoms; barriers only when converged (else flagged, None).

    ``extra`` holds hop facts for the document (hop_label, ion, hop_length_A, ...). ``path``: see
    :func:`run_band` (recorded in the parameters when it is not the default).
    A calculation that fails numerically (:class:`SimulationFailed`) gives a ``neb_failed`` result.
    """
    params = params or NebParameters()
    parameters = params.model_dump(mode="json")
    path = PathConvention(path)
    if path is not PathConvention.MINIMUM_IMAGE:  # only then: the default's parameter hash stays what it was
        parameters["path"] = str(path)
    extra = dict(extra or {})
    if "hop_length_A" not in extra and moving_index is not None:
        extra["hop_length_A"] = float(np.linalg.norm(final.positions[moving_index] - initial.positions[moving_index]))
    began = time.perf_counter()
    try:
        outcome = run_band(initial, final, engine, params, moving_index=moving_index, home=home, path=path)
    except SimulationFailed as err:
        return NebHopResult(name=name, fmax_eV_A=params.fmax_eV_A, n_images=params.n_images, n_atoms=len(initial),
                            flags=[NebFlag.NEB_FAILED], message=str(err),
                            wall_time_s=time.perf_counter() - began,
                            provenance=make_provenance(engine, parameters), **extra)
    files = {}
    if out_dir is not None:
        title = f"{name}: " + (f"barrier {outcome.barrier_forward_eV:.3f} eV" if outcome.converged
                               else "NOT converged")
        files = _write_outputs(outcome, Path(out_dir), name, title)
    converged = outcome.converged
    forward_interval, backward_interval = outcome.barrier_intervals_eV()
    return NebHopResult(
        name=name,
        barrier_forward_eV=outcome.barrier_forward_eV if converged else None,
        barrier_backward_eV=outcome.barrier_backward_eV if converged else None,
        barrier_forward_interval_eV=forward_interval if converged else None,
        barrier_backward_interval_eV=backward_interval if converged else None,
        energy_initial_eV=float(outcome.energies_eV[0]),
        energy_final_eV=float(outcome.energies_eV[-1]),
        converged=converged,
        max_force_eV_A=outcome.max_force_eV_A,
        fmax_eV_A=params.fmax_eV_A,
        n_images=params.n_images,
        steps=outcome.steps,
        endpoint_steps=list(outcome.endpoint_steps),
        n_atoms=len(initial),
        flags=[NebFlag(flag) for flag in outcome.flags],
        wall_time_s=time.perf_counter() - began,
        provenance=make_provenance(engine, parameters, outcome.batch_choice),
        **files,
        **extra,
    )


def _hop_facts(hop: Hop, mechanism: Mechanism) -> dict:
    return {"hop_label": hop.label, "ion": hop.ion, "mechanism": str(mechanism), "hop_length_A": hop.length_A,
            "multiplicity": hop.multiplicity, "start_frac": list(hop.start_frac), "end_frac": list(hop.end_frac)}


def neb_for_hop(
    network: HopNetwork,
    hop: Hop,
    engine,
    params: NebParameters | None = None,
    *,
    out_dir: str | Path | None = None,
    home: str | Path | None = None,
) -> NebHopResult:
    """NEB of one hop of ``network`` in a supercell with lattice vectors >= ``params.min_length_A``.

    Raises :class:`HopTooLongError` (an InputError) when the hop does not fit that supercell.
    """
    params = params or NebParameters()
    endpoints = build_endpoints(network.structure, hop, min_length_A=params.min_length_A,
                                mechanism=network.mechanism, max_atoms=params.max_atoms)
    result = neb_for_endpoints(endpoints.initial, endpoints.final, engine, params, name=f"hop{hop.label}",
                               out_dir=out_dir, moving_index=endpoints.moving_index, home=home,
                               extra=_hop_facts(hop, network.mechanism))
    result.supercell_repeats = list(endpoints.repeats)
    result.supercell_min_width_A = endpoints.min_width_A
    return result


def percolation_from_hops(network: HopNetwork, results: Sequence[NebHopResult]) -> PercolationResult:
    """Percolation barriers of the network, each hop class weighted by its converged barrier.

    The intervals repeat the calculation with every hop at the low, then the high, end of its
    barrier interval.
    """
    by_label = {r.hop_label: r for r in results if r.hop_label is not None and r.percolation_barrier_eV is not None}
    flags = []
    if any(hop.label not in by_label for hop in network.distinct):
        flags.append(PercolationFlag.INCOMPLETE_HOPS)
    if any(r.flags for r in by_label.values()):
        flags.append(PercolationFlag.USES_FLAGGED_HOPS)

    def thresholds(weight):
        edges = [WeightedEdge(e.u, e.v, e.image, weight(by_label[e.label]), e.label)
                 for e in network.edges if e.label in by_label]
        return percolation_barriers(network.n_sites, edges), len(edges)

    central, n_edges = thresholds(lambda r: r.percolation_barrier_eV)
    if n_edges == 0:
        flags.append(PercolationFlag.NO_HOPS)
    low, _ = thresholds(lambda r: (r.percolation_barrier_interval_eV or (r.percolation_barrier_eV,) * 2)[0])
    high, _ = thresholds(lambda r: (r.percolation_barrier_interval_eV or (r.percolation_barrier_eV,) * 2)[1])

    def interval(dim):
        lo, hi = (getattr(t, f"barrier_{dim}d_eV") for t in (low, high))
        return None if lo is None or hi is None else (lo, hi)

    return PercolationResult(
        barrier_1d_eV=central.barrier_1d_eV, barrier_2d_eV=central.barrier_2d_eV,
        barrier_3d_eV=central.barrier_3d_eV, barrier_1d_interval_eV=interval(1),
        barrier_2d_interval_eV=interval(2), barrier_3d_interval_eV=interval(3),
        hop_labels_1d=list(central.labels_1d), hop_labels_2d=list(central.labels_2d),
        hop_labels_3d=list(central.labels_3d), flags=flags,
    )


def neb_for_structure(
    structure,
    ion: str,
    engine,
    params: NebParameters | None = None,
    *,
    insertion_sites_frac: Sequence[Sequence[float]] | None = None,
    max_hop_length_A: float | None = None,
    max_hops: int | None = None,
    mechanism: Mechanism | str | None = None,
    out_dir: str | Path | None = None,
    home: str | Path | None = None,
    progress: Callable[[int, int, NebHopResult], None] | None = None,
) -> NebStructureResult:
    """NEB of every symmetry-distinct hop of ``ion`` in ``structure`` (shortest first) + percolation.

    Hops that do not fit the supercell are reported with ``hop_too_long``; hops beyond ``max_hops``
    with ``not_computed``. Writes ``neb_summary.json`` and per-hop files when ``out_dir`` is given.
    """
    from mlip.backends import BatchedEvaluator

    params = params or NebParameters()
    network = find_hops(structure, ion, insertion_sites_frac=insertion_sites_frac,
                        max_hop_length_A=max_hop_length_A, mechanism=mechanism)
    if isinstance(engine, BatchedEvaluator):
        engine.check_elements([_ase_numbers(network.structure)])
    results: list[NebHopResult] = []
    for i, hop in enumerate(network.distinct):
        facts = _hop_facts(hop, network.mechanism)
        if max_hops is not None and i >= max_hops:
            result = NebHopResult(name=f"hop{hop.label}", fmax_eV_A=params.fmax_eV_A, n_images=params.n_images,
                                  flags=[NebFlag.NOT_COMPUTED], message=f"beyond max_hops={max_hops}", **facts)
        else:
            try:
                result = neb_for_hop(network, hop, engine, params, out_dir=out_dir, home=home)
            except HopTooLongError as err:
                result = NebHopResult(name=f"hop{hop.label}", fmax_eV_A=params.fmax_eV_A, n_images=params.n_images,
                                      flags=[NebFlag.HOP_TOO_LONG], message=str(err), **facts)
        results.append(result)
        if progress is not None:
            progress(i, len(network.distinct), result)
    percolation = percolation_from_hops(network, results)
    parameters = {
        **params.model_dump(mode="json"),
        "ion": network.ion,
        "mechanism": str(network.mechanism),
        "max_hop_length_A": network.max_hop_length_A,
        "max_hops": max_hops,
        "insertion_sites_frac": [list(s) for s in network.insertion_sites_frac] if network.insertion_sites_frac else None,
    }
    batch_choice = next((r.provenance for r in results if r.provenance and r.provenance.batch_size), None)
    provenance = make_provenance(engine, parameters)
    if batch_choice is not None:
        provenance.batch_size, provenance.batch_size_source = batch_choice.batch_size, batch_choice.batch_size_source
    document = NebStructureResult(
        formula=structure.composition.reduced_formula, ion=network.ion, mechanism=str(network.mechanism),
        max_hop_length_A=network.max_hop_length_A, n_ion_sites=network.n_sites,
        n_distinct_hops=len(network.distinct), hops=results, percolation=percolation, provenance=provenance,
    )
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / SUMMARY_FILE).write_text(document.model_dump_json(indent=2))
    return document


class _NumbersOnly:
    """Just enough of an Atoms for an element-coverage check."""

    def __init__(self, numbers):
        self.numbers = np.asarray(numbers)


def _ase_numbers(structure) -> _NumbersOnly:
    return _NumbersOnly([site.specie.Z for site in structure])
