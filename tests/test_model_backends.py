"""Potential families behind one protocol: the toy EMT family runs MD and NEB through the ASE fallbacks and says
so, MACE keeps its batched evaluator and lean engine, and a new family is one registry entry."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from ase import Atoms

from mlip.backends import BACKENDS, Capability, ModelBackend
from mlip.errors import InputError, ModelDomainError
from mlip.loader import load_model, trust
from mlip.refs import RefKind, parse_ref
from mlip.testing import numerical_force
from mlip.trust import TrustStore
from protocols import short_protocol

#: A tiny protocol: one temperature, 0.3 ps of production, a 2x2x2 cell of Cu3Au (32 atoms).
TINY = short_protocol()
FALLBACK = {"md_engine": "ase", "requested": "lean", "fallback": "family emt has no lean MD engine"}


def cu3au() -> Atoms:
    """L1₂ Cu3Au: every element has EMT parameters, and Cu is a working ion ionscreen knows (Cu⁺)."""
    return Atoms("AuCu3", scaled_positions=[(0, 0, 0), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)],
                 cell=[3.75] * 3, pbc=True)


@pytest.fixture
def cu3au_cif(tmp_path) -> Path:
    from ase.io import write

    write(tmp_path / "Cu3Au.cif", cu3au())
    return tmp_path / "Cu3Au.cif"


def ionscreen(*args):
    return subprocess.run([sys.executable, "-m", "workflows.cli", *args], capture_output=True, text=True,
                          env=os.environ, timeout=600)


def test_ase_references_name_the_known_families():
    ref = parse_ref("ase:emt")
    assert ref.kind is RefKind.ASE and ref.name == "emt" and ref.text == "ase:emt" and parse_ref(ref.text) == ref
    for bad in ("ase:nope", "ase:", "ase:mace"):  # mace is a family, but one of files, not of ASE code
        with pytest.raises(InputError, match="ase:emt") as info:
            parse_ref(bad)
        assert "mace" in str(info.value) and "emt" in str(info.value)
    with pytest.raises(InputError, match="ase:<family>"):
        parse_ref("s3://bucket/x.model")


def test_emt_is_a_code_defined_family(settings):
    import ase
    from ase.calculators import emt

    loaded = load_model("ase:emt", settings)
    assert loaded.family == "emt" and loaded.module is None and loaded.ref == "ase:emt"
    source = Path(emt.__file__).resolve()
    assert loaded.path == source
    assert loaded.sha256 == hashlib.sha256(source.read_bytes() + ase.__version__.encode()).hexdigest()
    assert set(loaded.elements) == set(emt.parameters) and {"Cu", "Ag", "Au", "O"} <= set(loaded.elements)
    assert loaded.metadata()["family"] == "emt" and "code" in loaded.trusted_by
    assert loaded.backend.capabilities == {Capability.CALCULATOR}
    assert loaded.backend.batched_evaluator(loaded) is None and loaded.backend.lean_md_engine(loaded) is None
    # trusted as code: `trust` changes nothing in the trust store
    assert trust("ase:emt", settings).sha256 == loaded.sha256
    assert not TrustStore(settings.trust_store_path).is_trusted(loaded.sha256)

    atoms = cu3au() * (2, 1, 1)
    atoms.positions += np.random.default_rng(0).normal(0, 0.05, atoms.positions.shape)
    atoms.calc = loaded.calculator(task="md")  # float32 asked, float64 computed: EMT is numpy
    forces = atoms.get_forces()
    for i, k in [(0, 0), (3, 1), (6, 2)]:
        assert numerical_force(atoms, i, k, h_A=1e-5) == pytest.approx(forces[i, k], abs=1e-6)
    iron = Atoms("Fe2", positions=[[0, 0, 0], [1.4, 1.4, 1.4]], cell=[2.87] * 3, pbc=True)
    iron.calc = loaded.calculator(task="single_point")
    with pytest.raises(ModelDomainError, match="Fe"):
        iron.get_potential_energy()
    with pytest.raises(InputError, match="no options"):
        loaded.calculator(task="md", use_cueq=True)


def test_mace_keeps_its_batched_evaluator_and_lean_engine(tiny_model_copy, settings):
    from mlip.batched import BatchedMACE
    from mlip.engine import LeanMACE
    from screening.neb.driver import neb_engine_for
    from screening.transport.run import calculator_factory_for

    loaded = trust(str(tiny_model_copy), settings)
    assert loaded.family == "mace" and loaded.metadata()["family"] == "mace"
    assert set(loaded.backend.capabilities) == set(Capability)
    engine = neb_engine_for(loaded, "cpu")
    assert isinstance(engine, BatchedMACE) and engine.model_sha256 == loaded.sha256 and engine.dtype == "float64"
    factory = calculator_factory_for(loaded, "cpu")
    assert factory.family == "mace" and isinstance(factory.lean("float32"), LeanMACE)
    assert type(loaded.calculator(task="neb", device="cpu")).__name__ == "CoverageCheckedMACECalculator"


def test_run_transport_with_emt_falls_back_and_says_so(settings, tmp_path):
    from screening.transport.protocol import make_protocol
    from screening.transport.run import calculator_factory_for, run_transport

    loaded = load_model("ase:emt", settings)
    stages = []
    protocol = make_protocol(**{**TINY, "relax": False})
    result = run_transport(cu3au(), calculator_factory_for(loaded, "cpu"), protocol, tmp_path / "lean", "Cu",
                           model_ref=loaded.ref, model_sha256=loaded.sha256,
                           progress=lambda stage, info: stages.append((stage, info)))
    assert result.provenance.md_engine == FALLBACK
    fallback = [info for stage, info in stages if stage == "fallback"]
    assert fallback == [{"requested": "lean", "md_engine": "ase", "reason": "family emt has no lean MD engine"}]
    assert result.temperatures[0].md_status == "completed" and result.n_atoms == 32
    # asking for ASE's dynamics is no fallback
    asked = make_protocol(**{**TINY, "relax": False, "md_engine": "ase"})
    result = run_transport(cu3au(), calculator_factory_for(loaded, "cpu"), asked, tmp_path / "ase", "Cu")
    assert result.provenance.md_engine == {"md_engine": "ase"}


def test_md_command_with_emt_runs_through_the_ase_fallback(cu3au_cif, tmp_path):
    (tmp_path / "proto.yaml").write_text(yaml.safe_dump(TINY))
    cmd = ["md", str(cu3au_cif), "--model", "ase:emt", "--ion", "Cu", "--protocol", str(tmp_path / "proto.yaml"),
           "--out", str(tmp_path / "out"), "--device", "cpu"]
    proc = ionscreen(*cmd)
    assert proc.returncode == 0, proc.stderr
    assert "[fallback]" in proc.stderr and "family emt has no lean MD engine" in proc.stderr
    assert "D* (cm²/s)" in proc.stdout and "ase:emt (emt)" in proc.stdout
    result = json.loads((tmp_path / "out/result.json").read_text())
    assert result["provenance"]["md_engine"] == FALLBACK
    assert result["provenance"]["model_ref"] == "ase:emt" and len(result["provenance"]["model_sha256"]) == 64
    assert result["temperatures"][0]["md_status"] == "completed" and result["working_ion"] == "Cu"
    again = ionscreen(*cmd, "--json")  # resumes; the fallback is still said, on stderr, under --json
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["provenance"]["md_engine"] == FALLBACK
    assert "family emt has no lean MD engine" in again.stderr


def test_neb_command_with_emt_uses_the_ase_calculator(cu3au_cif, tmp_path):
    from typer.testing import CliRunner

    from workflows.cli.neb import app

    out = tmp_path / "neb"
    result = CliRunner().invoke(app, [str(cu3au_cif), "--ion", "Cu", "--model", "ase:emt", "--min-length-A", "6.0",
                                      "--images", "3", "--max-steps", "60", "--device", "cpu", "--out", str(out),
                                      "--json"])
    assert result.exit_code == 0, result.output
    assert "family emt has no batched evaluator" in result.stderr
    doc = json.loads(result.stdout)
    assert doc["ion"] == "Cu" and doc["n_distinct_hops"] == 1
    hop = doc["hops"][0]
    assert hop["converged"] and 0 < hop["barrier_forward_eV"] < 3
    prov = hop["provenance"]
    assert prov["calculator"] == "CoverageCheckedEMT" and prov["model_ref"] == "ase:emt" and prov["dtype"] == "float64"
    assert prov["model_sha256"] == load_model("ase:emt").sha256 and prov["batch_size"] is None
    assert (out / "neb_summary.json").is_file()


def test_models_commands_show_the_family(cu3au_cif, tiny_model_copy, tmp_path):
    from typer.testing import CliRunner

    from workflows.cli import app

    runner = CliRunner()
    info = runner.invoke(app, ["models", "info", "ase:emt", "--json"])
    assert info.exit_code == 0, info.output
    data = json.loads(info.stdout)
    assert data["family"] == "emt" and data["capabilities"] == ["calculator"] and "Cu" in data["elements"]
    assert "family        emt" in runner.invoke(app, ["models", "info", "ase:emt"]).stdout
    check = runner.invoke(app, ["models", "check", "ase:emt", "--structure", str(cu3au_cif), "--json"])
    assert check.exit_code == 0, check.output
    covered = json.loads(check.stdout)
    assert covered["family"] == "emt" and covered["covered"] is True and covered["missing"] == []
    from ase.io import write

    write(tmp_path / "LiCu.cif", Atoms("LiCu", scaled_positions=[(0, 0, 0), (0.5, 0.5, 0.5)], cell=[3.0] * 3, pbc=True))
    not_covered = runner.invoke(app, ["models", "check", "ase:emt", "--structure", str(tmp_path / "LiCu.cif")])
    assert not_covered.exit_code == 1 and "(emt) lacks Li" in not_covered.stderr
    runner.invoke(app, ["models", "trust", str(tiny_model_copy)])
    mace = json.loads(runner.invoke(app, ["models", "info", str(tiny_model_copy), "--json"]).stdout)
    assert mace["family"] == "mace"
    assert set(mace["capabilities"]) == {"calculator", "batched_evaluator", "lean_md_engine"}
    listing = {m["ref"]: m for m in json.loads(runner.invoke(app, ["models", "list", "--json"]).stdout)}
    assert listing["ase:emt"]["family"] == "emt" and listing["ase:emt"]["trusted"] is True
    assert listing[str(tiny_model_copy.resolve())]["family"] == "mace"


class _LennardJonesBackend(ModelBackend):
    """A family added by one registry entry: ASE's Lennard-Jones for argon."""

    family = "lj"
    label = "Lennard-Jones"

    def code_source(self):
        from ase.calculators import lj

        from mlip.backends import CodeSource

        path = Path(lj.__file__)
        return CodeSource(path, hashlib.sha256(path.read_bytes()).hexdigest(), "ASE code (ase.calculators.lj)")

    def describe(self, resolved, module):
        from mlip.model import LoadedModel

        return LoadedModel(ref=resolved.ref.text, sha256=resolved.sha256, path=resolved.path, source=resolved.source,
                           trusted_by=resolved.trusted_by, module=None, atomic_numbers=(18,), n_params=2,
                           dtype="float64", r_max_A=8.5, model_class="LennardJones", family=self.family)

    def calculator(self, loaded, *, task, dtype, device="auto", **options):
        from ase.calculators.lj import LennardJones

        return LennardJones(sigma=3.4, epsilon=0.0104, rc=8.5)


def test_a_new_family_is_one_registry_entry(monkeypatch, settings):
    monkeypatch.setitem(BACKENDS, "lj", _LennardJonesBackend())
    loaded = load_model("ase:lj", settings)
    assert loaded.family == "lj" and loaded.elements == ("Ar",)
    argon = Atoms("Ar2", positions=[[0, 0, 0], [3.9, 0, 0]])
    argon.calc = loaded.calculator(task="relax")
    assert argon.get_potential_energy() < 0
    with pytest.raises(InputError, match="ase:lj"):
        parse_ref("ase:argon")


def test_a_screening_job_runs_end_to_end_with_a_calculator_only_family(cu3au_cif, settings):
    """A job with the toy family: planned (model pinned by its code's SHA-256), run on Ray workers through the ASE
    fallbacks for both stages, ranked; the transport result says which engine really ran."""
    import json as _json

    import ray
    import yaml

    from mlip.backends.emt import EmtBackend
    from workflows.db import Store
    from workflows.jobs.plan import plan_job
    from workflows.jobs.run import ranked, run_job
    from workflows.jobs.spec import load_job_spec

    job = cu3au_cif.parent / "emt-job.yaml"
    job.write_text(yaml.safe_dump({
        "name": "emt-toy", "model": "ase:emt", "working_ion": "Cu",
        "candidates": [{"file": "Cu3Au.cif", "oxidation": {"Cu": 1, "Au": -3}}],
        "transport": {"overrides": TINY}, "neb": {"max_hops": 1, "n_images": 3, "fmax_eV_A": 0.1, "max_steps": 60},
        "resources": {"workers": 1, "threads_per_worker": 1},
    }))
    store = Store.open(settings.db_url)
    try:
        planned = plan_job(load_job_spec(job), settings, store=store)
        assert planned.plan.model.sha256 == EmtBackend().code_source().sha256 and planned.n_tasks == 2
        summary = run_job(planned.job_id, settings)
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert summary.done == 2 and summary.failed == 0, summary.errors
    rows, others = ranked(store, planned.job_id)
    (row,) = rows
    assert not others and row.name and set(row.values) >= {"conductivity_300K_mS_cm", "percolation_3d_eV"}
    transport = next(r for r in store.results.for_job(planned.job_id) if r["stage"] == "transport")
    document = _json.loads((settings.home / transport["document_path"]).read_text())
    assert document["provenance"]["md_engine"] == FALLBACK and transport["model_sha256"] == planned.plan.model.sha256
