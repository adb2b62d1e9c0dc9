"""Element coverage, the calculator factory (device, dtype) and the physics of what it returns."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from mlip.calculators import Task, make_calculator, resolve_device
from mlip.errors import InputError, ModelDomainError
from mlip.loader import trust
from mlip.testing import numerical_force


@pytest.fixture
def loaded(tiny_model_copy, settings):
    return trust(str(tiny_model_copy), settings)


def _li2s(displace=0.0, seed=0):
    from ase.spacegroup import crystal

    atoms = crystal(["S", "Li"], [(0, 0, 0), (0.25, 0.25, 0.25)], spacegroup=225, cellpar=[5.71, 5.71, 5.71, 90, 90, 90])
    if displace:
        atoms.positions += np.random.default_rng(seed).normal(0, displace, atoms.positions.shape)
    return atoms


def test_check_elements_names_missing(loaded):
    loaded.check_elements(["Li", "S"])
    loaded.check_elements([3, 16, 17])
    with pytest.raises(ModelDomainError, match=r"Fe, Zr") as info:
        loaded.check_elements(["Li", "Fe", "Zr", "S"])
    assert "covers Li, P, S, Cl" in str(info.value)
    with pytest.raises(InputError, match="Xx"):
        loaded.check_elements(["Xx"])


def test_calculator_refuses_uncovered_structure_before_computing(loaded):
    atoms = bulk("Fe", "bcc", a=2.87, cubic=True)
    atoms.calc = loaded.calculator(task="single_point")
    with pytest.raises(ModelDomainError, match="Fe"):
        atoms.get_potential_energy()
    assert atoms.calc.results == {}


def test_dtype_follows_task_and_leaves_model_untouched(loaded):
    import torch

    md = make_calculator(loaded, task=Task.MD)
    relax = make_calculator(loaded, task=Task.RELAX)
    assert next(md.models[0].parameters()).dtype == torch.float32
    assert next(relax.models[0].parameters()).dtype == torch.float64
    assert next(loaded.module.parameters()).dtype == torch.float64
    forced = make_calculator(loaded, task=Task.NEB, dtype="float32")
    assert next(forced.models[0].parameters()).dtype == torch.float32
    with pytest.raises(InputError):
        make_calculator(loaded, dtype="float16")


def test_device_resolution():
    import torch

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(InputError):
        resolve_device("tpu")


def test_forces_are_minus_energy_gradient(loaded):
    atoms = _li2s(displace=0.05, seed=3)
    atoms.calc = make_calculator(loaded, task=Task.SINGLE_POINT)
    forces = atoms.get_forces()
    for i, k in [(0, 0), (3, 1), (7, 2)]:
        assert numerical_force(atoms, i, k, h_A=1e-4) == pytest.approx(forces[i, k], abs=1e-6)


def test_energy_invariant_under_rotation_and_forces_equivariant(loaded):
    from scipy.spatial.transform import Rotation

    atoms = _li2s(displace=0.05, seed=5)
    atoms.calc = make_calculator(loaded, task=Task.SINGLE_POINT)
    e0, f0 = atoms.get_potential_energy(), atoms.get_forces()
    rot = Rotation.from_euler("xyz", [0.3, -1.1, 0.7]).as_matrix()
    rotated = Atoms(atoms.numbers, positions=atoms.positions @ rot.T, cell=atoms.cell.array @ rot.T, pbc=True)
    rotated.calc = atoms.calc
    assert rotated.get_potential_energy() == pytest.approx(e0, abs=1e-8)
    np.testing.assert_allclose(rotated.get_forces(), f0 @ rot.T, atol=1e-8)
