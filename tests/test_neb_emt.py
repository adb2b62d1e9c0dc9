"""NEB driver with ASE's EMT calculator: documented barriers, convergence flags, input checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import add_adsorbate, fcc100
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms

from mlip.errors import InputError
from screening.neb import NebFlag, NebParameters, neb_for_endpoints

# ASE's own regression value for this saddle, found with the dimer method (an independent
# saddle search): ase/test/test_dimer_method.py (ASE 3.29), `d_atoms.get_barrier_energy()` =
# 1.03733136918 eV for a Pt adatom on a frozen 2x2x1 Pt(100) slab, measured from the adatom in
# the hollow site at 1.611 Å height. The saddle is the bridge site between two hollows.
DIMER_SADDLE_ABOVE_REFERENCE_EV = 1.03733136918


def pt100_adatom():
    atoms = fcc100("Pt", size=(2, 2, 1), vacuum=10.0)
    add_adsorbate(atoms, "Pt", 1.611, "hollow")
    atoms.set_constraint(FixAtoms(mask=[atom.tag > 0 for atom in atoms]))
    final = atoms.copy()
    final.positions[-1, 1] += final.cell[1, 1] / 2  # the neighbouring hollow
    return atoms, final


def test_emt_saddle_reproduces_documented_dimer_value(tmp_path):
    initial, final = pt100_adatom()
    reference = initial.copy()
    reference.calc = EMT()
    e_reference = reference.get_potential_energy()

    result = neb_for_endpoints(initial, final, EMT(), NebParameters(n_images=5), moving_index=len(initial) - 1,
                               out_dir=tmp_path)

    assert result.converged and result.flags == []
    assert result.max_force_eV_A <= 0.05
    saddle = result.energy_initial_eV + result.barrier_forward_eV
    assert abs((saddle - e_reference) - DIMER_SADDLE_ABOVE_REFERENCE_EV) < 0.01
    # the two hollows are equivalent: forward and backward barriers agree
    assert result.barrier_forward_eV == pytest.approx(result.barrier_backward_eV, abs=1e-3)
    lo, hi = result.barrier_forward_interval_eV
    assert lo <= result.barrier_forward_eV <= hi
    assert result.provenance.calculator == "EMT" and result.provenance.model_sha256 is None
    assert len(result.provenance.parameters_sha256) == 64
    profile = json.loads((tmp_path / "band.profile.json").read_text())
    assert len(profile["energy_eV"]) == 7 and profile["reaction_coordinate_A"][0] == 0.0
    assert np.all(np.diff(profile["reaction_coordinate_A"]) > 0)
    # the hop is exactly half a cell vector (ambiguous minimum image): the band must still be one
    # continuous, symmetric path, so the force-interpolated profile is symmetric too
    energies = np.array(profile["energy_relative_eV"])
    np.testing.assert_allclose(energies, energies[::-1], atol=2e-3)
    np.testing.assert_allclose(profile["fit_energy_relative_eV"], profile["fit_energy_relative_eV"][::-1], atol=5e-3)
    assert (tmp_path / "band.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_emt_au_on_al100_matches_ase_tutorial_protocol():
    """Au adatom hollow→hollow on Al(100), the ASE NEB tutorial (ase-lib.org/tutorials/neb/diffusion.html).

    ASE's constraints tutorial quotes 0.35 eV for this barrier, but the current ASE EMT gives
    0.374 eV with the tutorial's own script; so the reference here is that script, run live
    (plain ASE NEB + NEBTools, as published), and our driver must agree with it within 0.01 eV.
    """
    from ase.mep import NEB, NEBTools
    from ase.optimize import BFGS, QuasiNewton

    slab = fcc100("Al", size=(2, 2, 3))
    add_adsorbate(slab, "Au", 1.7, "hollow")
    slab.center(axis=2, vacuum=4.0)
    mask = slab.get_tags() > 1
    slab.set_constraint(FixAtoms(mask=mask))
    start = slab.copy()
    end = slab.copy()
    end[-1].x += end.get_cell()[0, 0] / 2

    # the tutorial's protocol
    a, b = start.copy(), end.copy()
    for atoms in (a, b):
        atoms.calc = EMT()
        QuasiNewton(atoms, logfile=None).run(fmax=0.05)
    images = [a] + [a.copy() for _ in range(3)] + [b]
    for image in images[1:-1]:
        image.calc = EMT()
    neb = NEB(images, method="improvedtangent")
    neb.interpolate()
    BFGS(neb, logfile=None).run(fmax=0.05)
    tutorial_barrier, _ = NEBTools(images).get_barrier()

    result = neb_for_endpoints(start, end, EMT(), NebParameters(n_images=3), moving_index=len(start) - 1)
    assert result.converged and result.max_force_eV_A <= 0.05
    assert abs(result.barrier_forward_eV - tutorial_barrier) < 0.01
    assert 0.3 < result.barrier_forward_eV < 0.45


def test_step_budget_exhausted_gives_flag_and_no_number(tmp_path):
    initial, final = pt100_adatom()
    result = neb_for_endpoints(initial, final, EMT(), NebParameters(n_images=5, max_steps=2), out_dir=tmp_path)
    assert not result.converged
    assert NebFlag.NEB_NOT_CONVERGED in result.flags
    assert result.barrier_forward_eV is None and result.barrier_backward_eV is None
    assert result.barrier_forward_interval_eV is None
    assert result.max_force_eV_A > 0.05
    assert result.steps <= 2
    assert json.loads((tmp_path / "band.profile.json").read_text())["converged"] is False


def test_endpoint_budget_exhausted_is_flagged():
    initial, final = pt100_adatom()
    initial.positions[-1, 2] += 0.4  # far from the relaxed height
    params = NebParameters(n_images=3, endpoint_max_steps=1)
    result = neb_for_endpoints(initial, final, EMT(), params)
    assert NebFlag.ENDPOINT_NOT_CONVERGED in result.flags
    assert not result.converged and result.barrier_forward_eV is None


def test_mismatched_endpoints_are_refused():
    initial, final = pt100_adatom()
    with pytest.raises(InputError, match="same atoms"):
        neb_for_endpoints(initial, final[:-1], EMT())
    other = final.copy()
    other.set_cell(other.cell * 1.01, scale_atoms=True)
    with pytest.raises(InputError, match="cell"):
        neb_for_endpoints(initial, other, EMT())
    with pytest.raises(InputError, match="engine"):
        neb_for_endpoints(initial, final, "EMT")


def test_endpoint_that_is_not_a_minimum_is_flagged_as_drifted():
    initial, final = pt100_adatom()
    # just short of the bridge site (the saddle): relaxing slides the adatom back into its hollow
    initial.positions[-1, 1] += initial.cell[1, 1] / 4 - 0.15
    result = neb_for_endpoints(initial, final, EMT(), NebParameters(n_images=3, max_steps=50),
                               moving_index=len(initial) - 1)
    assert NebFlag.ENDPOINT_DRIFTED in result.flags
