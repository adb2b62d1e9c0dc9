"""The CP2K/DZVP fine-tune's tools: which shipped configurations are relabelled in what order
(training/finetune/select.py), and the Li2S vacancy-hop barrier measured the same way for CP2K and models
(training/finetune/vacancy_barrier.py)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from training.data import load_dataset, structure_hash
from training.finetune.select import TURN, ordered_configurations
from mlip.errors import SimulationFailed
from training.finetune.vacancy_barrier import check_scf, measure, vacancy_cell

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shipped():
    return load_dataset(ROOT / "training/datasets/lipscl")


def test_relabelling_order_is_balanced_complete_and_keeps_each_frames_identity(shipped):
    configs = ordered_configurations(shipped.frames)
    again = ordered_configurations(load_dataset(ROOT / "training/datasets/lipscl").frames)
    assert [structure_hash(a) for a in configs] == [structure_hash(a) for a in again]  # deterministic
    by_hash = {a.info["structure_hash"]: a for a in shipped.frames}
    for atoms in configs:
        # the same structure (so the same split in a dataset with the SZV dataset's split seed), no SZV labels
        assert structure_hash(atoms) == atoms.info["szv_structure_hash"]
        assert atoms.info["szv_split"] == by_hash[atoms.info["szv_structure_hash"]].info["split"]
        assert atoms.calc is None and "REF_energy" not in atoms.info and "REF_forces" not in atoms.arrays
    bases = [a.info["config_type"].split(":")[0] for a in configs]
    expected = Counter(a.info["config_type"].split(":")[0] for a in shipped.frames
                       if a.info["config_type"].split(":")[0] in dict(TURN))
    assert Counter(bases) == expected and len(configs) == sum(expected.values())  # every one of them, once
    first_turns = Counter(bases[:6 * 10])  # any prefix of whole turns is balanced as TURN says
    assert first_turns == Counter({base: n * 10 for base, n in TURN})
    assert "IsolatedAtom" not in bases and all(a.pbc.all() for a in configs)


def test_the_vacancy_cell_is_the_neb_commands_23_atom_cell_with_the_midpoint_on_the_shared_edge():
    cell, moving, midpoint = vacancy_cell()
    assert len(cell) == 23 and cell.get_chemical_formula() == "Li15S8"
    probe = cell.copy()
    probe.positions[moving] = midpoint
    d = probe.get_distances(moving, range(len(probe)), mic=True)
    sulfur = np.sort(d[probe.numbers == 16])
    # half way between two tetrahedral sites: the centre of their shared S-S edge, a/(2√2) from both S
    assert sulfur[:2] == pytest.approx([5.70 / (2 * np.sqrt(2))] * 2, abs=1e-6)
    assert sulfur[2] > sulfur[1] + 0.5
    assert np.linalg.norm(midpoint - cell.positions[moving]) == pytest.approx(5.70 / 4, abs=1e-6)  # a/2 hop, halved


@pytest.fixture(scope="module")
def student_barrier(tmp_path_factory):
    out = tmp_path_factory.mktemp("student-barrier")
    return out, measure("bundled:lipscl-student", out, fmax=0.02, steps=200)


def test_midpoint_barrier_of_the_student_matches_its_teachers(student_barrier):
    """The student was distilled from CHGNet 0.3.0, whose barrier by this protocol is 0.302 eV (issue 16)."""
    out, doc = student_barrier
    assert doc["n_atoms"] == 23 and doc["family"] == "mace"
    assert doc["barrier_eV"] == pytest.approx(0.302, abs=0.05)
    assert (out / "barrier.json").exists() and (out / "midpoint.extxyz").exists()


def test_a_relaxation_started_where_another_ended_needs_no_steps_and_gives_the_same_barrier(tmp_path,
                                                                                         student_barrier):
    """--prerelax starts each relaxation from another model's relaxed structures (how the CP2K relaxations save
    their expensive steps); started from its own, a model is already relaxed."""
    _, alone = student_barrier
    again = measure("bundled:lipscl-student", tmp_path / "again", fmax=0.02, steps=200,
                    prerelax="bundled:lipscl-student")
    assert again["prerelax"] == "bundled:lipscl-student"
    assert again["prerelax_barrier_eV"] == pytest.approx(alone["barrier_eV"], abs=1e-6)
    assert again["steps_endpoint"] == 0 and again["steps_midpoint"] == 0
    assert again["barrier_eV"] == pytest.approx(alone["barrier_eV"], abs=1e-4)


def test_a_cp2k_barrier_with_an_unconverged_scf_is_refused(tmp_path):
    """Relaxations keep one CP2K shell, so every SCF of both relaxations is in one output; one that did not
    converge steered BFGS with wrong forces, and the barrier is not reported."""
    out = tmp_path / "cp2k.out"
    clean = "  *** SCF run converged in    14 steps ***\n" * 3
    out.write_text(clean)
    check_scf(out)  # converged throughout: accepted
    out.write_text(clean + "  *** SCF run NOT converged ***\n" + clean)
    with pytest.raises(SimulationFailed, match="1 SCF run"):
        check_scf(out)
    with pytest.raises(SimulationFailed, match="no CP2K output"):
        check_scf(tmp_path / "missing.out")
