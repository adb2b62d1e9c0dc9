"""Distinct hops (pymatgen-analysis-diffusion), NEB supercells and the hop-too-long error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mlip.errors import InputError
from screening.neb import (
    HopTooLongError,
    Mechanism,
    NebFlag,
    NebParameters,
    build_endpoints,
    find_hops,
    neb_for_structure,
    periodic_dimensionality,
)


@pytest.fixture(scope="module")
def lifepo4():
    import pymatgen.util
    from pymatgen.core import Structure

    path = Path(list(pymatgen.util.__path__)[0]) / "structures" / "LiFePO4.json"
    return Structure.from_dict(json.loads(path.read_text()))


@pytest.fixture(scope="module")
def lifepo4_hops(lifepo4):
    return find_hops(lifepo4, "Li")


def test_lifepo4_distinct_hops(lifepo4, lifepo4_hops):
    net = lifepo4_hops
    assert net.mechanism is Mechanism.VACANCY and net.n_sites == 4
    # olivine: the b-channel hop (3.03 Å) and the hop along a (one lattice vector, 4.74 Å)
    lengths = [round(hop.length_A, 2) for hop in net.distinct]
    assert lengths == [3.03, round(lifepo4.lattice.a, 2)]
    assert [hop.multiplicity for hop in net.distinct] == [4, 4]
    # every edge of the periodic graph has the length of its symmetry class
    by_label = {hop.label: hop.length_A for hop in net.distinct}
    frac = {i: site.frac_coords for i, site in enumerate(s for s in net.structure if s.specie.symbol == "Li")}
    for edge in net.edges:
        vec = frac[edge.v] + np.asarray(edge.image) - frac[edge.u]
        assert np.linalg.norm(lifepo4.lattice.get_cartesian_coords(vec)) == pytest.approx(by_label[edge.label], abs=1e-3)
    # the short hops alone form 1D channels; with the a-hop the network is 2D, never 3D
    short = [e for e in net.edges if e.label == net.distinct[0].label]
    assert periodic_dimensionality(net.n_sites, short) == 1
    assert periodic_dimensionality(net.n_sites, net.edges) == 2


def test_endpoints_vacancy_supercell(lifepo4, lifepo4_hops):
    hop = lifepo4_hops.distinct[0]
    ep = build_endpoints(lifepo4_hops.structure, hop, min_length_A=8.0)
    assert all(length >= 8.0 for length in ep.lattice_lengths_A)
    assert ep.repeats == (2, 2, 1)
    assert ep.n_atoms == len(lifepo4) * 4 - 1  # one Li site is the vacancy
    assert ep.initial.get_chemical_symbols() == ep.final.get_chemical_symbols()
    moved = np.linalg.norm(ep.final.positions - ep.initial.positions, axis=1)
    assert moved[ep.moving_index] == pytest.approx(hop.length_A, abs=1e-6)
    assert np.all(np.delete(moved, ep.moving_index) == 0)
    # the end site is empty in the initial state: nothing sits where the ion arrives
    end = ep.final.positions[ep.moving_index]
    others = ep.initial.copy()
    del others[ep.moving_index]
    others.append("X")
    others.positions[-1] = end
    assert others.get_distances(len(others) - 1, range(len(others) - 1), mic=True).min() > 1.0


def test_hop_too_long_is_a_clear_input_error(lifepo4_hops):
    long_hop = lifepo4_hops.distinct[1]  # 4.74 Å: a 2x supercell along a is only 9.49 Å wide
    with pytest.raises(HopTooLongError, match=r"longer than this supercell allows.*min_length_A >= ") as info:
        build_endpoints(lifepo4_hops.structure, long_hop, min_length_A=8.0)
    assert isinstance(info.value, InputError)
    suggested = float(str(info.value).split("min_length_A >= ")[1].split(",")[0])
    ep = build_endpoints(lifepo4_hops.structure, long_hop, min_length_A=suggested)
    assert long_hop.length_A < ep.min_width_A / 2


def test_empty_host_needs_insertion_sites_and_expands_them(lifepo4):
    host = lifepo4.copy()
    host.remove_species(["Li"])
    with pytest.raises(InputError, match="no Mg sites and no insertion site"):
        find_hops(host, "Mg")
    net = find_hops(host, "Mg", insertion_sites_frac=[[0.0, 0.0, 0.0]])
    assert net.mechanism is Mechanism.INTERSTITIAL
    assert len(net.insertion_sites_frac) == 4  # the 4a orbit of the olivine host
    ep = build_endpoints(net.structure, net.distinct[0], min_length_A=8.0, mechanism=net.mechanism)
    assert ep.initial.get_chemical_symbols().count("Mg") == 1
    assert ep.n_atoms == len(host) * 4 + 1
    with pytest.raises(InputError, match="already contains"):
        find_hops(lifepo4, "Li", insertion_sites_frac=[[0, 0, 0]])
    with pytest.raises(InputError, match="not a chemical element"):
        find_hops(lifepo4, "Xy")


def test_structure_run_flags_too_long_and_skipped_hops(lifepo4, tmp_path):
    """The structure driver keeps going past a hop that does not fit, and says so."""
    from ase.calculators.lj import LennardJones

    params = NebParameters(n_images=1, max_steps=0, relax_endpoints=False, min_length_A=8.0,
                           interpolation="linear")
    doc = neb_for_structure(lifepo4, "Li", LennardJones(sigma=1.0, rc=3.0), params, out_dir=tmp_path)
    flags = {hop.hop_label: hop.flags for hop in doc.hops}
    assert NebFlag.HOP_TOO_LONG in flags[doc.hops[1].hop_label]
    assert doc.hops[1].barrier_forward_eV is None and "min_length_A" in doc.hops[1].message
    assert doc.hops[0].steps == 0 and doc.hops[0].supercell_repeats == [2, 2, 1]
    assert (tmp_path / "neb_summary.json").is_file()
    skipped = neb_for_structure(lifepo4, "Li", LennardJones(sigma=1.0, rc=3.0), params, max_hops=0)
    assert all(hop.flags == [NebFlag.NOT_COMPUTED] for hop in skipped.hops)
    assert "incomplete_hops" in skipped.percolation.flags and skipped.percolation.barrier_1d_eV is None
