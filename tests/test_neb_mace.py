"""NEB with a tiny MACE model (batched images): flags, provenance, files, and the `neb` command."""

from __future__ import annotations

import json

import pytest

from mlip.batched import BatchedMACE
from mlip.loader import trust
from screening.neb import NebFlag, NebParameters, neb_for_structure
from screening.neb.results import parameters_hash


@pytest.fixture
def li2s():
    """Antifluorite Li2S, primitive cell (3 atoms): a 2x2x2 supercell (23 atoms with the vacancy) fits the hop."""
    from pymatgen.core import Lattice, Structure

    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.71), ["S", "Li"],
                                     [[0, 0, 0], [0.25, 0.25, 0.25]]).get_primitive_structure()


@pytest.fixture
def loaded(tiny_model_copy, settings):
    return trust(str(tiny_model_copy), settings)


def test_tiny_mace_neb_runs_with_flags_and_provenance(li2s, loaded, settings, tmp_path):
    engine = BatchedMACE.from_loaded(loaded, device="cpu", dtype="float64")
    params = NebParameters(n_images=3, min_length_A=6.5, max_steps=40)
    doc = neb_for_structure(li2s, "Li", engine, params, out_dir=tmp_path, home=settings.home)

    assert doc.n_distinct_hops == 1 and doc.n_ion_sites == 2 and doc.mechanism == "vacancy"
    hop = doc.hops[0]
    assert hop.hop_length_A == pytest.approx(5.71 / 2, abs=1e-3)
    assert hop.n_atoms == 23 and hop.supercell_repeats == [2, 2, 2] and hop.n_images == 3
    assert set(hop.flags) <= set(NebFlag)
    assert hop.converged == (hop.flags == [])
    assert (hop.barrier_forward_eV is not None) == hop.converged
    if hop.converged:
        assert hop.max_force_eV_A <= params.fmax_eV_A
        assert hop.barrier_forward_eV == pytest.approx(hop.barrier_backward_eV, abs=0.02)  # equivalent sites
        assert doc.percolation.barrier_3d_eV == pytest.approx(hop.percolation_barrier_eV)  # fcc Li sublattice
    prov = hop.provenance
    assert prov.model_sha256 == loaded.sha256 and prov.model_ref == loaded.ref
    assert prov.calculator == "BatchedMACE" and prov.dtype == "float64" and prov.device == "cpu"
    assert prov.batch_size_source == "measured" and 1 <= prov.batch_size <= 3
    assert prov.parameters_sha256 == parameters_hash(prov.parameters)
    assert prov.parameters["fmax_eV_A"] == 0.05 and prov.code_version
    profile = json.loads((tmp_path / "hop0.profile.json").read_text())
    assert len(profile["energy_eV"]) == 5 and len(profile["reaction_coordinate_A"]) == 5
    assert (tmp_path / "hop0.png").stat().st_size > 1000
    summary = json.loads((tmp_path / "neb_summary.json").read_text())
    assert summary["provenance"]["model_sha256"] == loaded.sha256
    # the batched engine really batched: fewer model calls than structures evaluated
    assert engine.n_structures_evaluated > engine.n_model_calls


def test_tiny_mace_step_budget_gives_not_converged(li2s, loaded, settings):
    engine = BatchedMACE.from_loaded(loaded, device="cpu", dtype="float64")
    params = NebParameters(n_images=3, min_length_A=6.5, fmax_eV_A=1e-6, max_steps=1, batch_size=3,
                           endpoint_max_steps=2)
    doc = neb_for_structure(li2s, "Li", engine, params, home=settings.home)
    hop = doc.hops[0]
    assert NebFlag.NEB_NOT_CONVERGED in hop.flags and not hop.converged
    assert hop.barrier_forward_eV is None and hop.max_force_eV_A > 1e-6
    assert hop.provenance.batch_size == 3 and hop.provenance.batch_size_source == "configured"
    assert doc.percolation.barrier_1d_eV is None and "incomplete_hops" in doc.percolation.flags


def test_neb_command_json(li2s, loaded, tmp_path):
    from typer.testing import CliRunner

    from workflows.cli.neb import app

    cif = tmp_path / "li2s.cif"
    li2s.to(filename=str(cif))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [str(cif), "--ion", "Li", "--model", str(loaded.path), "--min-length-A", "6.5",
                                      "--images", "3", "--batch-size", "3", "--max-steps", "20", "--out", str(out),
                                      "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["ion"] == "Li" and len(doc["hops"]) == 1
    assert doc["hops"][0]["provenance"]["model_sha256"] == loaded.sha256
    assert (out / "neb_summary.json").is_file()

    table = CliRunner().invoke(app, [str(cif), "--ion", "Li", "--model", str(loaded.path), "--min-length-A", "6.5",
                                     "--images", "3", "--batch-size", "3", "--max-steps", "20", "--max-hops", "0",
                                     "--out", str(out)])
    assert table.exit_code == 0, table.output
    assert "not_computed" in table.stdout and "percolation barrier (eV): 1D -" in table.stdout


def test_neb_command_clear_errors(li2s, loaded, tmp_path):
    from typer.testing import CliRunner

    from mlip.errors import InputError
    from workflows.cli.neb import app

    host = li2s.copy()
    host.remove_species(["Li"])
    cif = tmp_path / "host.cif"
    host.to(filename=str(cif))
    result = CliRunner().invoke(app, [str(cif), "--ion", "Li", "--model", str(loaded.path)])
    assert isinstance(result.exception, InputError) and "insertion site" in str(result.exception)
    result = CliRunner().invoke(app, [str(cif), "--ion", "Li", "--model", str(loaded.path),
                                      "--insertion-site", "0.25,0.25"])
    assert isinstance(result.exception, InputError) and "three fractional coordinates" in str(result.exception)
