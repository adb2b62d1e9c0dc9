"""SevenNet as a model family: the weights of the sevenn wheel (installed in a directory of their own, because
SevenNet needs e3nn >= 0.5 and MACE 0.4.4) load with no network, trusted only by their pinned SHA-256, and run in a
worker process; ionscreen's process never imports sevenn. The calculator is consistent (forces and stress are
derivatives of its energy), names elements it lacks, and fails clearly when its worker dies or the checkpoint is
not the checked one; NEB runs through the ASE path."""

from __future__ import annotations

import os
import signal
import sys

import numpy as np
import pytest
from ase import Atoms

from mlip.backends import BACKENDS, Capability
from mlip.backends.sevennet import DIR_ENV, WEIGHTS, SevennetCalculator, WorkerError, sevennet_dir
from mlip.errors import InputError, ModelDomainError, ModelNotFoundError, SimulationFailed, UntrustedModelError
from mlip.loader import load_model, trust
from mlip.refs import RefKind, parse_ref
from mlip.testing import numerical_force
from mlip.trust import TrustStore
from packaged import altered_copy, li2s, li2s_vacancy_hop, packaged_listing


@pytest.fixture(scope="module")
def sevennet_model():
    return load_model("sevennet:7net-0")


def test_sevennet_references_name_the_packaged_weights():
    for name in ("7net-0", "7net-l3i5"):
        ref = parse_ref(f"sevennet:{name}")
        assert ref.kind is RefKind.PACKAGED and ref.family == "sevennet" and ref.name == name
        assert parse_ref(ref.text) == ref
    with pytest.raises(InputError, match="sevennet:7net-0, sevennet:7net-l3i5"):
        parse_ref("sevennet:7net-omni")


@pytest.mark.parametrize("name", ["7net-0", "7net-l3i5"])
def test_sevennet_weights_load_without_network_and_without_a_worker(name, no_network, settings):
    loaded = load_model(f"sevennet:{name}", settings)
    weights = WEIGHTS[name]
    assert loaded.family == "sevennet" and loaded.sha256 == weights.sha256 and loaded.path == weights.path()
    assert str(loaded.path).startswith(str(sevennet_dir())) and loaded.module is None
    assert "pinned SHA-256 of the sevenn 0.13.0 release" in loaded.trusted_by and loaded.dtype == "float32"
    assert {"Li", "Na", "Mg", "Ca", "Zn", "Al", "O", "S", "Mn", "U"} <= set(loaded.elements)
    assert len(loaded.elements) == 89 and "Po" not in loaded.elements and loaded.r_max_A == 5.0
    assert loaded.backend.capabilities == {Capability.CALCULATOR} and loaded.backend.lean_md_engine(loaded) is None
    assert trust(f"sevennet:{name}", settings).sha256 == weights.sha256
    assert not TrustStore(settings.trust_store_path).is_trusted(weights.sha256)
    assert "sevenn" not in sys.modules  # describing a model starts no worker and imports nothing of SevenNet


def test_altered_or_missing_sevennet_weights_are_refused(tmp_path, monkeypatch, settings):
    weights = WEIGHTS["7net-0"]
    altered = altered_copy(weights.path(), tmp_path / "sevenn" / weights.relative_path)
    monkeypatch.setenv(DIR_ENV, str(tmp_path))
    with pytest.raises(UntrustedModelError, match=weights.sha256) as info:
        load_model("sevennet:7net-0", settings)
    assert "nothing was loaded" in str(info.value)
    altered.unlink()
    with pytest.raises(ModelNotFoundError, match="missing from the installed sevenn"):
        load_model("sevennet:7net-0", settings)
    monkeypatch.setenv(DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps --target .*nowhere -r .*sevennet-requirements"):
        load_model("sevennet:7net-0", settings)


def test_the_worker_unpickles_only_the_checked_bytes(tmp_path):
    """A file swapped after the loader's check (here: a calculator told another hash) is refused by the worker."""
    calc = SevennetCalculator(WEIGHTS["7net-0"].path(), "0" * 64, device="cpu", threads=1)
    calc.ionscreen_covered = frozenset(range(1, 95))
    atoms = li2s(primitive=True)
    atoms.calc = calc
    with pytest.raises(WorkerError, match="expected 0000.*nothing was loaded"):
        atoms.get_potential_energy()


@pytest.mark.parametrize("name", ["7net-0", "7net-l3i5"])
def test_each_checkpoint_is_what_the_loader_describes(name):
    """The loader describes a model without starting a worker; the worker's checkpoint agrees, and runs SevenNet's
    e3nn while this process keeps MACE's."""
    import e3nn

    loaded = load_model(f"sevennet:{name}")
    atoms = li2s(primitive=True)
    atoms.calc = loaded.calculator(task="single_point", device="cpu")
    assert np.isfinite(atoms.get_potential_energy())
    facts = atoms.calc.worker().facts
    assert tuple(facts["type_map"]) == loaded.atomic_numbers and facts["cutoff_A"] == loaded.r_max_A
    assert facts["n_params"] == loaded.n_params and facts["sevenn"] == "0.13.0"
    assert facts["e3nn"].startswith("0.5") and e3nn.__version__ == "0.4.4"
    atoms.calc.close()


def test_sevennet_forces_and_stress_are_derivatives_of_its_energy(sevennet_model):
    from ase.calculators.fd import calculate_numerical_stress

    atoms = li2s()
    atoms.positions += np.random.default_rng(3).normal(0, 0.08, atoms.positions.shape)
    atoms.calc = sevennet_model.calculator(task="md", device="cpu")
    forces, stress = atoms.get_forces(), atoms.get_stress()
    assert np.abs(forces).max() > 0.2  # rattled: the check is not 0 == 0
    for i, k in [(0, 0), (5, 1), (9, 2)]:  # float32 energies: finite differences resolve ~1e-2 eV/Å
        assert numerical_force(atoms, i, k, h_A=2e-3) == pytest.approx(forces[i, k], abs=1.5e-2)
    assert calculate_numerical_stress(atoms, eps=1e-3) == pytest.approx(stress, abs=3e-4)
    assert "sevenn" not in sys.modules
    assert atoms.calc.default_dtype == "float32" and atoms.calc.ionscreen_model_sha256 == sevennet_model.sha256
    polonium = Atoms("Po2", positions=[[0, 0, 0], [2.5, 0, 0]], cell=[5.0] * 3, pbc=True)
    polonium.calc = sevennet_model.calculator(task="single_point")
    with pytest.raises(ModelDomainError, match="Po"):
        polonium.get_potential_energy()
    assert polonium.calc._worker is None  # refused before any worker started
    with pytest.raises(InputError, match="no options"):
        sevennet_model.calculator(task="md", use_cueq=True)


def test_a_killed_worker_is_a_clear_error_and_a_new_calculator_recovers(sevennet_model):
    atoms = li2s(primitive=True)
    calc = sevennet_model.calculator(task="single_point", device="cpu")
    atoms.calc = calc
    energy = atoms.get_potential_energy()
    process = calc.worker().process
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    atoms.positions[0] += 0.05
    with pytest.raises(SimulationFailed, match="SevenNet worker exited"):
        atoms.get_potential_energy()
    atoms.positions[0] -= 0.05
    atoms.calc = sevennet_model.calculator(task="single_point", device="cpu")
    assert atoms.get_potential_energy() == pytest.approx(energy, abs=1e-4)
    worker = atoms.calc.worker().process
    atoms.calc.close()
    assert worker.poll() is not None  # closing the calculator stops its worker


def test_neb_command_with_sevennet_gives_the_li2s_vacancy_barrier(tmp_path):
    """The Li⁺-vacancy hop in a 23-atom Li2S cell through `ionscreen neb` and the ASE path: SevenNet-0 gave
    0.339 eV here (CHGNet 0.3.0 0.30; CP2K PBE/DZVP 0.327 for the neutral cell: README)."""
    hop, stderr = li2s_vacancy_hop(tmp_path, "sevennet:7net-0")
    assert "family sevennet has no batched evaluator" in stderr
    assert hop["barrier_forward_eV"] == pytest.approx(0.339, abs=0.03)
    prov = hop["provenance"]
    assert prov["model_ref"] == "sevennet:7net-0" and prov["model_sha256"] == WEIGHTS["7net-0"].sha256
    assert prov["calculator"] == "SevennetCalculator" and prov["dtype"] == "float32"


def test_models_list_shows_the_sevennet_weights(settings):
    packaged_listing(settings, "sevennet", WEIGHTS)
    assert "sevennet" in BACKENDS
