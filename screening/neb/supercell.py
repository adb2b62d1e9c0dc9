"""NEB endpoint structures for one hop: a supercell with every lattice vector >= a minimum length.

The supercell is a diagonal repetition of the unit cell. The moving ion is the last atom of both
endpoints and its final position is the unwrapped start position plus the hop vector, so the band
follows the hop itself and not a periodic image of it. A hop longer than half the smallest
supercell width is refused: its minimum image would be ambiguous and the moving ion would meet its
own periodic image.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from mlip.errors import InputError
from screening.cells import cell_heights_A, check_supercell_atoms
from screening.neb.hops import Hop, Mechanism

# Fractional-coordinate tolerance (in Å) for finding an ion site in the supercell.
_SITE_TOL_A = 0.05


class HopTooLongError(InputError):
    """The hop does not fit the supercell (longer than half its smallest width)."""


@dataclasses.dataclass
class NebEndpoints:
    """Initial and final structures (ASE Atoms, same atom order) of one hop in its supercell."""

    initial: object  # ase.Atoms
    final: object  # ase.Atoms
    moving_index: int
    repeats: tuple[int, int, int]
    lattice_lengths_A: tuple[float, float, float]
    min_width_A: float  # smallest distance between opposite faces of the supercell
    hop: Hop
    mechanism: Mechanism

    @property
    def n_atoms(self) -> int:
        return len(self.initial)


def supercell_repeats(lattice_lengths_A, min_length_A: float) -> tuple[int, int, int]:
    if min_length_A <= 0:
        raise InputError(f"min_length_A must be positive, got {min_length_A}")
    return tuple(max(1, math.ceil(min_length_A / length - 1e-9)) for length in lattice_lengths_A)


def neb_supercell_repeats(structure, min_length_A: float, *, max_atoms: int | None = None,
                          what: str | None = None) -> tuple[int, int, int]:
    """Repeats of the NEB supercell of ``structure``, refused when it would hold more than ``max_atoms`` atoms
    (default, and at most, ``MAX_SIMULATION_ATOMS``; ``what`` names the supercell in the message)."""
    reps = supercell_repeats(structure.lattice.abc, min_length_A)
    what = what or f"the NEB supercell of {structure.composition.reduced_formula} (min_length_A = {min_length_A:g} Å)"
    check_supercell_atoms(len(structure), reps, what=what, max_atoms=max_atoms)
    return reps


def min_length_for_hop(lattice, hop_length_A: float, start_A: float) -> float:
    """The smallest ``min_length_A`` (in 0.5 Å steps from ``start_A``) whose supercell fits the hop."""
    length = start_A
    lengths = np.asarray(lattice.abc)
    for _ in range(200):
        reps = supercell_repeats(lengths, length)
        if hop_length_A < 0.5 * cell_heights_A(lattice.matrix * np.asarray(reps)[:, None]).min() - 1e-3:
            return length
        length += 0.5
    return length


def build_endpoints(
    structure,
    hop: Hop,
    *,
    min_length_A: float = 8.0,
    mechanism: Mechanism | str = Mechanism.VACANCY,
    max_atoms: int | None = None,
) -> NebEndpoints:
    """Endpoints of ``hop`` in a supercell of ``structure`` (the structure holding the ion sites).

    Vacancy mechanism: all other ion sites stay occupied and the end site is empty in the initial
    state. Interstitial mechanism: all ion sites are removed and only the moving ion is placed.
    A supercell of more than ``max_atoms`` atoms (default, and at most, ``MAX_SIMULATION_ATOMS``) is refused.
    """
    from pymatgen.io.ase import AseAtomsAdaptor

    mechanism = Mechanism(mechanism)
    lattice = structure.lattice
    reps = neb_supercell_repeats(structure, min_length_A, max_atoms=max_atoms)
    sc_matrix = lattice.matrix * np.asarray(reps)[:, None]
    widths = cell_heights_A(sc_matrix)
    if not hop.length_A < 0.5 * widths.min() - 1e-3:
        needed = min_length_for_hop(lattice, hop.length_A, min_length_A)
        raise HopTooLongError(
            f"hop {hop.label} ({hop.ion}, {hop.length_A:.2f} Å) is longer than this supercell allows: "
            f"with min_length_A={min_length_A:g} the supercell {reps[0]}x{reps[1]}x{reps[2]} is only "
            f"{widths.min():.2f} Å wide, and a hop must be shorter than half that width (else the "
            f"moving ion meets its own periodic image). Use min_length_A >= {needed:g}, or exclude "
            f"hops this long (max_hop_length_A)."
        )

    supercell = structure.copy()
    supercell.make_supercell(list(reps))
    start_sc = np.asarray(hop.start_frac) / np.asarray(reps)
    end_sc = np.asarray(hop.end_frac) / np.asarray(reps)
    ion_indices = [i for i, site in enumerate(supercell) if site.specie.symbol == hop.ion]

    def find_site(frac) -> int:
        best, best_dist = -1, np.inf
        for i in ion_indices:
            diff = supercell[i].frac_coords - frac
            diff -= np.round(diff)
            dist = np.linalg.norm(supercell.lattice.get_cartesian_coords(diff))
            if dist < best_dist:
                best, best_dist = i, dist
        if best_dist > _SITE_TOL_A:
            raise InputError(
                f"no {hop.ion} site found at fractional position {np.round(frac, 4).tolist()} of the "
                f"supercell (closest is {best_dist:.3f} Å away); the hop does not belong to this structure"
            )
        return best

    start_index = find_site(start_sc)
    end_index = find_site(end_sc)
    if start_index == end_index:
        raise InputError(f"hop {hop.label} starts and ends on the same supercell site; raise min_length_A")
    if mechanism is Mechanism.VACANCY:
        remove = [end_index, start_index]
    else:
        remove = ion_indices
    supercell.remove_sites(sorted(set(remove)))

    initial = AseAtomsAdaptor.get_atoms(supercell)
    initial.info.clear()
    start_cart = supercell.lattice.get_cartesian_coords(start_sc)
    hop_vector = supercell.lattice.get_cartesian_coords(end_sc - start_sc)
    from ase import Atom

    initial.append(Atom(hop.ion, start_cart))
    initial.set_pbc(True)
    final = initial.copy()
    final.positions[-1] = start_cart + hop_vector
    for atoms in (initial, final):
        atoms.arrays.pop("magmoms", None)
        atoms.set_initial_magnetic_moments(None)
    return NebEndpoints(
        initial=initial, final=final, moving_index=len(initial) - 1, repeats=tuple(int(r) for r in reps),
        lattice_lengths_A=tuple(float(x) for x in np.linalg.norm(sc_matrix, axis=1)),
        min_width_A=float(widths.min()), hop=hop, mechanism=mechanism,
    )
