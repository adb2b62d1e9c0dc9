"""NEB from two given endpoint structures: read them, check that they are one hop of one atom, choose that atom.

The band itself is :func:`screening.neb.neb_for_endpoints`; this module decides whether two structures are a
valid pair of endpoints and which atom moves, and refuses with an :class:`EndpointError` that names the files,
the atoms and the limit. By default the moving atom is the single atom that moves the most between the endpoints
(its displacement taken as the shortest periodic image); ``moving_index`` overrides the choice.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from mlip.errors import InputError
from screening.neb.band import NebParameters, PathConvention
from screening.neb.results import NebHopResult

#: The longest hop accepted, Å: the longest in a set of 558 published DFT NEB hops (Devi et al. 2024,
#: screening/validation/data/migration-barriers) is 8.95 Å; a longer displacement is two hops or a wrong pair.
MAX_HOP_LENGTH_A = 10.0
#: The moving atom must move at least this far, Å: less is the same site twice.
MIN_HOP_LENGTH_A = 0.5
#: Every other atom may move at most this far between the endpoints, Å: relaxed endpoints of one hop differ by a
#: few tenths of an Å around the moving ion; more means a second atom hops (or the structures are not one pair).
MAX_HOST_DISPLACEMENT_A = 1.0
#: The result document of ``ionscreen neb --endpoints`` in its output directory.
ENDPOINTS_SUMMARY_FILE = "neb_endpoints.json"
#: Cells that differ by less than this (Å, per lattice-vector component) are the same cell written twice.
CELL_TOLERANCE_A = 1e-3


class EndpointError(InputError):
    """Two structures are not the endpoints of one hop (atoms, order, cell, distance or overlap)."""


@dataclasses.dataclass(frozen=True)
class EndpointPair:
    """Two checked endpoint structures (ASE Atoms, same atoms, same order, same cell) and the atom that moves."""

    initial: object  # ase.Atoms
    final: object  # ase.Atoms (the initial cell, exactly)
    moving_index: int
    moving_symbol: str
    hop_length_A: float  # straight-line displacement of the moving atom along the path convention
    moving_index_chosen: bool  # True: the atom that moves the most; False: given by the caller
    runner_up_index: int | None  # the atom that moves second most
    runner_up_displacement_A: float
    names: tuple[str, str]
    path: PathConvention

    def describe_choice(self) -> str:
        """One line that says which atom moves, how far, and why it was chosen."""
        how = "moves the most between the endpoints" if self.moving_index_chosen else "was given as the moving atom"
        text = f"atom {self.moving_index} ({self.moving_symbol}) {how}: {self.hop_length_A:.2f} Å ({self.path} path)"
        if self.runner_up_index is not None:
            text += f"; next atom {self.runner_up_index} moves {self.runner_up_displacement_A:.2f} Å"
        return text


def read_endpoint(path: str | Path):
    """One endpoint structure file as ASE Atoms in the file's atom order, refused with the file's name when it is
    unreadable, out of bounds (:func:`screening.structio.read_structure`) or partially occupied."""
    from pymatgen.io.ase import AseAtomsAdaptor

    from screening.structio import read_structure

    structure = read_structure(path)
    if not structure.is_ordered:
        raise EndpointError(f"{path} has partially occupied sites; an NEB endpoint must be ordered (one atom per site)")
    return AseAtomsAdaptor.get_atoms(structure)


def _symbol_list(atoms) -> list[str]:
    return list(atoms.get_chemical_symbols())


def _check_same_atoms(initial, final, names: tuple[str, str]) -> None:
    a, b = names
    if len(initial) != len(final):
        raise EndpointError(f"{a} has {len(initial)} atoms and {b} has {len(final)}: the endpoints must hold the "
                            "same atoms in the same order")
    differ = np.flatnonzero(initial.numbers != final.numbers)
    if len(differ):
        k = int(differ[0])
        same_set = sorted(initial.numbers.tolist()) == sorted(final.numbers.tolist())
        why = ("the same atoms in a different order; write both files with one atom order" if same_set
               else f"{initial.get_chemical_formula()} and {final.get_chemical_formula()} are different compositions")
        raise EndpointError(f"atom {k} is {_symbol_list(initial)[k]} in {a} but {_symbol_list(final)[k]} in {b} "
                            f"({len(differ)} atoms differ): {why}")


def _check_same_cell(initial, final, names: tuple[str, str]) -> None:
    a, b = names
    if np.any(initial.pbc != final.pbc):
        raise EndpointError(f"{a} is periodic along {initial.pbc.tolist()} but {b} along {final.pbc.tolist()}: "
                            "the endpoints must share the cell")
    difference = float(np.abs(initial.cell.array - final.cell.array).max())
    if not math.isfinite(difference) or difference > CELL_TOLERANCE_A:
        la, lb = initial.cell.cellpar(), final.cell.cellpar()
        raise EndpointError(
            f"the cells of {a} (a b c = {la[0]:.4f} {la[1]:.4f} {la[2]:.4f} Å, angles {la[3]:.2f} {la[4]:.2f} "
            f"{la[5]:.2f}°) and {b} ({lb[0]:.4f} {lb[1]:.4f} {lb[2]:.4f} Å, {lb[3]:.2f} {lb[4]:.2f} {lb[5]:.2f}°) "
            f"differ by up to {difference:.4g} Å, more than {CELL_TOLERANCE_A:g} Å (CELL_TOLERANCE_A): NEB runs at a "
            "fixed cell, so both endpoints need the same one")


def _check_no_overlap(atoms, name: str) -> None:
    from ase.data import covalent_radii
    from ase.neighborlist import neighbor_list

    from screening.transport.md import OVERLAP_FRACTION

    radii = covalent_radii[atoms.numbers]
    i, j, d = neighbor_list("ijd", atoms, float(2 * OVERLAP_FRACTION * radii.max()) + 1e-6)
    if len(d) == 0:
        return
    relative = d / (radii[i] + radii[j])
    k = int(np.argmin(relative))
    if relative[k] < OVERLAP_FRACTION:
        symbols = _symbol_list(atoms)
        raise EndpointError(
            f"{name}: atoms {i[k]} ({symbols[i[k]]}) and {j[k]} ({symbols[j[k]]}) are {d[k]:.3f} Å apart, less than "
            f"{OVERLAP_FRACTION} × the sum of their covalent radii ({radii[i[k]] + radii[j[k]]:.2f} Å): overlapping atoms")


def _check_moving_atom_free(atoms, index: int, name: str) -> None:
    from ase.constraints import FixAtoms

    for constraint in atoms.constraints:
        if isinstance(constraint, FixAtoms) and index in set(int(x) for x in constraint.get_indices()):
            raise EndpointError(f"{name} fixes atom {index}, the moving atom; it must be free to relax and to hop")


def check_endpoint_pair(
    initial,
    final,
    *,
    names: tuple[str, str] = ("the initial structure", "the final structure"),
    moving_index: int | None = None,
    ion: str | None = None,
    path: PathConvention | str = PathConvention.MINIMUM_IMAGE,
    max_hop_length_A: float = MAX_HOP_LENGTH_A,
    max_host_displacement_A: float = MAX_HOST_DISPLACEMENT_A,
) -> EndpointPair:
    """Check that ``initial`` and ``final`` (ASE Atoms) are the endpoints of one hop and find the atom that moves.

    Same atoms in the same order, the same cell (within ``CELL_TOLERANCE_A``), no overlapping atoms, the moving
    atom (``moving_index``, or else the one that moves the most) displaced between ``MIN_HOP_LENGTH_A`` and
    ``max_hop_length_A``, of element ``ion`` when given and not fixed; every other atom displaced at most
    ``max_host_displacement_A`` (shortest image). ``names`` name the two structures (file names) in errors.
    """
    from ase.geometry import find_mic

    path = PathConvention(path)
    a, b = names
    if not (0 < max_hop_length_A <= 100.0):
        raise EndpointError(f"max_hop_length_A must be in (0, 100] Å, got {max_hop_length_A}")
    if not (0 <= max_host_displacement_A <= 100.0):
        raise EndpointError(f"max_host_displacement_A must be in [0, 100] Å, got {max_host_displacement_A}")
    if len(initial) == 0:
        raise EndpointError(f"{a} has no atoms")
    _check_same_atoms(initial, final, names)
    _check_same_cell(initial, final, names)
    for atoms, name in ((initial, a), (final, b)):
        if not np.all(np.isfinite(atoms.positions)):
            raise EndpointError(f"{name}: the coordinates are not finite numbers")
        _check_no_overlap(atoms, name)

    initial, final = initial.copy(), final.copy()
    final.set_cell(initial.cell, scale_atoms=False)  # the same cell exactly (run_band compares to 1e-6)
    step = final.positions - initial.positions
    shortest = find_mic(step, initial.cell, initial.pbc)[0]
    distances = np.linalg.norm(shortest, axis=1)
    symbols = _symbol_list(initial)
    chosen = moving_index is None
    if chosen:
        moving_index = int(np.argmax(distances))
    elif not (0 <= moving_index < len(initial)):
        raise EndpointError(f"moving index {moving_index} is out of range: {a} has {len(initial)} atoms "
                            f"(indices 0 to {len(initial) - 1})")
    moving_index = int(moving_index)
    hop = step[moving_index] if path is PathConvention.AS_GIVEN else shortest[moving_index]
    hop_length = float(np.linalg.norm(hop))
    others = np.delete(np.arange(len(initial)), moving_index)
    runner_up = int(others[np.argmax(distances[others])]) if len(others) else None
    runner_up_distance = float(distances[runner_up]) if runner_up is not None else 0.0
    which = "the atom that moves the most" if chosen else "the given moving atom"

    if ion is not None and symbols[moving_index] != ion:
        raise EndpointError(f"{which}, atom {moving_index}, is {symbols[moving_index]} "
                            f"({distances[moving_index]:.2f} Å between {a} and {b}), not the ion {ion}; "
                            "give the index of the hopping ion with --moving-index")
    if hop_length < MIN_HOP_LENGTH_A:
        raise EndpointError(f"{which}, atom {moving_index} ({symbols[moving_index]}), moves only {hop_length:.3f} Å "
                            f"between {a} and {b}, less than {MIN_HOP_LENGTH_A} Å (MIN_HOP_LENGTH_A): the endpoints "
                            "are the same site, not a hop")
    if hop_length > max_hop_length_A:
        raise EndpointError(f"atom {moving_index} ({symbols[moving_index]}) moves {hop_length:.2f} Å between {a} and "
                            f"{b} ({path} path), further than one hop: the limit is {max_hop_length_A:g} Å "
                            "(--max-hop-length-A)")
    if runner_up is not None and runner_up_distance > max_host_displacement_A:
        raise EndpointError(f"besides atom {moving_index} ({symbols[moving_index]}, {hop_length:.2f} Å), atom "
                            f"{runner_up} ({symbols[runner_up]}) moves {runner_up_distance:.2f} Å between {a} and {b}, "
                            f"more than {max_host_displacement_A:g} Å (--max-host-displacement-A): one hop moves one "
                            "atom; check that the files are two states of one structure")
    for atoms, name in ((initial, a), (final, b)):
        _check_moving_atom_free(atoms, moving_index, name)
    return EndpointPair(initial=initial, final=final, moving_index=moving_index, moving_symbol=symbols[moving_index],
                        hop_length_A=hop_length, moving_index_chosen=chosen, runner_up_index=runner_up,
                        runner_up_displacement_A=runner_up_distance, names=(a, b), path=path)


def neb_for_endpoint_pair(
    pair: EndpointPair,
    engine,
    params: NebParameters | None = None,
    *,
    name: str = "band",
    out_dir: str | Path | None = None,
    home: str | Path | None = None,
) -> NebHopResult:
    """Climbing-image NEB of a checked pair (:func:`check_endpoint_pair`): endpoints relaxed with the moving atom
    free, IDPP band, improved-tangent CI-NEB; see :func:`screening.neb.neb_for_endpoints`."""
    from screening.neb.driver import neb_for_endpoints

    extra = {"ion": pair.moving_symbol, "moving_index": pair.moving_index, "hop_length_A": pair.hop_length_A}
    return neb_for_endpoints(pair.initial, pair.final, engine, params, name=name, out_dir=out_dir,
                             moving_index=pair.moving_index, home=home, extra=extra, path=pair.path)
