"""Batched MACE evaluation: equal to one-at-a-time MACECalculator, proxy calculators, batch-size choice."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.spacegroup import crystal

from mlip.batched import BatchedMACE, ImageGroup, choose_batch_size
from mlip.calculators import make_calculator
from mlip.errors import InputError, ModelDomainError
from mlip.loader import trust


@pytest.fixture
def loaded(tiny_model_copy, settings):
    return trust(str(tiny_model_copy), settings)


def _structures(seed=0):
    """Different sizes and compositions, seeded rattles (Li2S, Li3PS4-like fragment cell, LiCl)."""
    rng = np.random.default_rng(seed)
    li2s = crystal(["S", "Li"], [(0, 0, 0), (0.25, 0.25, 0.25)], spacegroup=225, cellpar=[5.71] * 3 + [90] * 3)
    licl = crystal(["Li", "Cl"], [(0, 0, 0), (0.5, 0.5, 0.5)], spacegroup=225, cellpar=[5.13] * 3 + [90] * 3)
    out = []
    for atoms in (li2s, li2s.repeat((2, 1, 1)), licl, li2s.repeat((1, 2, 2))):
        atoms = atoms.copy()
        atoms.positions += rng.normal(0.0, 0.08, atoms.positions.shape)
        out.append(atoms)
    out[1].numbers[3] = 15  # a P on an S site: mixed composition in one batch
    return out


def test_batched_equals_one_at_a_time_calculator(loaded):
    engine = BatchedMACE.from_loaded(loaded, device="cpu", dtype="float64")
    structures = _structures()
    batched = engine.evaluate(structures)
    assert engine.n_model_calls == 1 and engine.n_structures_evaluated == len(structures)
    calc = make_calculator(loaded, task="single_point", device="cpu", dtype="float64")
    for atoms, ev in zip(structures, batched):
        atoms = atoms.copy()
        atoms.calc = calc
        assert ev.energy_eV == pytest.approx(atoms.get_potential_energy(), abs=1e-6)
        assert ev.forces_eV_A.shape == (len(atoms), 3)
        np.testing.assert_allclose(ev.forces_eV_A, atoms.get_forces(), atol=1e-6)
    # another chunking gives the same numbers
    for a, b in zip(engine.evaluate_in_batches(structures, 3), batched):
        assert a.energy_eV == pytest.approx(b.energy_eV, abs=1e-9)
    assert engine.model_sha256 == loaded.sha256 and engine.model_ref == loaded.ref


def test_forces_are_minus_energy_gradient(loaded):
    engine = BatchedMACE.from_loaded(loaded, device="cpu", dtype="float64")
    atoms = _structures(seed=3)[2]
    force = engine.evaluate([atoms])[0].forces_eV_A
    h = 1e-4
    for i, k in [(0, 0), (3, 2), (5, 1)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[i, k] += h
        minus.positions[i, k] -= h
        e_plus, e_minus = (ev.energy_eV for ev in engine.evaluate([plus, minus]))
        assert -(e_plus - e_minus) / (2 * h) == pytest.approx(force[i, k], abs=1e-5)


def test_image_group_computes_stale_images_together(loaded):
    engine = BatchedMACE.from_loaded(loaded, device="cpu", dtype="float64")
    images = [a.copy() for a in _structures()[:3]]
    ImageGroup(engine, batch_size=3).attach(images)
    first = images[0].get_forces()
    assert engine.n_model_calls == 1 and engine.n_structures_evaluated == 3
    energies = [a.get_potential_energy() for a in images]  # already there: no new call
    assert engine.n_model_calls == 1
    images[0].positions[0, 0] += 0.05  # two of three images move
    images[2].positions[0, 0] += 0.05
    assert images[1].get_potential_energy() == energies[1]  # unchanged image: no call
    assert engine.n_model_calls == 1
    images[0].get_potential_energy()  # computes both stale images in one call
    assert engine.n_model_calls == 2 and engine.n_structures_evaluated == 5
    assert images[2].get_potential_energy() != pytest.approx(energies[2], abs=1e-9)
    assert engine.n_model_calls == 2
    images[0].positions[0, 0] -= 0.05
    reference = engine.evaluate([images[0]])[0]
    np.testing.assert_allclose(first, reference.forces_eV_A, atol=1e-12)


def test_neb_band_forces_equal_with_batched_proxies(loaded):
    """The NEB hook: a band on batched proxies gives the same NEB forces as per-image calculators."""
    from ase.mep import NEB

    start = _structures()[0]
    end = start.copy()
    end.positions[1] += [0.4, 0.2, 0.0]
    engine = BatchedMACE.from_loaded(loaded, device="cpu", dtype="float64")

    def band(batched: bool):
        images = [start.copy() for _ in range(4)] + [end.copy()]
        NEB(images, method="improvedtangent").interpolate()
        if batched:
            for atoms in (images[0], images[-1]):
                atoms.calc = engine.calculator()
            ImageGroup(engine, batch_size=3).attach(images[1:-1])
        else:
            calc = make_calculator(loaded, task="neb", device="cpu")
            for atoms in images:
                atoms.calc = calc
        neb = NEB(images, climb=True, method="improvedtangent", allow_shared_calculator=not batched)
        return neb.get_forces()

    calls = engine.n_model_calls
    np.testing.assert_allclose(band(True), band(False), atol=1e-8)
    assert engine.n_model_calls - calls == 3  # two endpoints + one call for the three moving images


def test_batch_size_is_measured_then_cached_or_configured(loaded, settings):
    engine = BatchedMACE.from_loaded(loaded, device="cpu", dtype="float64")
    images = _structures()[:2] + [_structures(seed=1)[0]]
    choice = choose_batch_size(engine, images, home=settings.home, repeats=1)
    assert choice.source == "measured" and set(choice.images_per_s) == {1, 2, 3}
    assert choice.batch_size == max(choice.images_per_s, key=choice.images_per_s.get)
    cache = json.loads((settings.home / "batch_size_cache.json").read_text())
    assert cache[choice.key]["batch_size"] == choice.batch_size
    assert loaded.sha256 in choice.key and "float64" in choice.key
    calls = engine.n_model_calls
    again = choose_batch_size(engine, images, home=settings.home)
    assert again.source == "cache" and again.batch_size == choice.batch_size
    assert engine.n_model_calls == calls  # nothing measured
    configured = choose_batch_size(engine, images, home=settings.home, configured=2)
    assert configured.source == "configured" and configured.batch_size == 2
    with pytest.raises(InputError):
        choose_batch_size(engine, images, home=settings.home, configured=0)


def test_uncovered_elements_are_refused_before_the_model_runs(loaded):
    from ase.build import bulk

    engine = BatchedMACE.from_loaded(loaded, device="cpu", dtype="float64")
    with pytest.raises(ModelDomainError, match="Fe"):
        engine.evaluate([_structures()[0], bulk("Fe", "bcc", a=2.87, cubic=True)])
    assert engine.n_model_calls == 0
