"""Job spec: YAML round trip, errors that name key path and file line, candidates built with per-item failures."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from mlip.errors import InputError
from workflows.jobs.spec import JobSpec, JobSpecError, Stage, build_candidates, load_job_spec

GOOD = """\
name: lipscl-demo
model: models/tiny.model
working_ion: Li
candidates:
  - library: Li2S
  - library: Li3N
    name: nitride
  - file: structures/li2s.cif
    name: my-li2s
    oxidation: {Li: 1, S: -2}
  - substitute: {library: Li2S, to: Na}
  - dope: {library: Li2S, site: S, dopant: Cl, fraction: 0.25, dopant_oxidation: -1}
transport:
  preset: quick
  overrides: {temperatures_K: [600, 800, 1000], production_ps: 5}
neb:
  min_length_A: 8
  fmax_eV_A: 0.05
  n_images: 5
  max_hops: 3
ranking:
  conductivity: 1.0
  activation_energy: 0.5
resources:
  workers: 2
  max_in_flight: 4
"""


def _line_of(text: str, needle: str) -> int:
    """1-based line of the first line containing ``needle``."""
    for i, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return i
    raise AssertionError(f"{needle!r} not in the job text")


@pytest.fixture
def jobdir(tmp_path) -> Path:
    """A job directory with a dummy model file and a real Li2S CIF (from the library)."""
    from screening.candidates import build_candidate

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny.model").write_bytes(b"not loaded by the spec")
    (tmp_path / "structures").mkdir()
    build_candidate("Li2S").structure.to(filename=str(tmp_path / "structures" / "li2s.cif"))
    return tmp_path


def _write(jobdir: Path, text: str, name: str = "job.yaml") -> Path:
    path = jobdir / name
    path.write_text(text)
    return path


def _error(jobdir: Path, text: str) -> JobSpecError:
    with pytest.raises(JobSpecError) as info:
        load_job_spec(_write(jobdir, text))
    assert isinstance(info.value, InputError)
    return info.value


def _only_problem(err: JobSpecError):
    assert len(err.problems) == 1, str(err)
    return err.problems[0]


# ------------------------------------------------------------------------------------------------ round trip
def test_round_trip_and_derived_objects(jobdir, tmp_path_factory):
    from screening.neb.band import NebParameters
    from screening.transport.protocol import preset

    spec = load_job_spec(_write(jobdir, GOOD))
    assert spec.model == str((jobdir / "models" / "tiny.model").resolve())
    assert spec.candidates[2].file == str((jobdir / "structures" / "li2s.cif").resolve())
    assert spec.stages == [Stage.TRANSPORT, Stage.NEB]

    protocol = spec.transport_protocol()
    assert protocol == preset("quick", temperatures_K=(600, 800, 1000), production_ps=5)
    assert protocol.hash == spec.protocol_hash("transport")
    params = spec.neb_parameters()
    assert isinstance(params, NebParameters) and not isinstance(params, JobSpec)
    assert (params.n_images, params.fmax_eV_A, params.min_length_A) == (5, 0.05, 8.0)
    assert spec.neb.driver_options() == {"max_hops": 3, "max_hop_length_A": None, "mechanism": None}
    assert spec.ranking.activation_energy == 0.5 and spec.ranking.migration_barrier == 1.0
    assert spec.resources.in_flight_limit == 4

    # YAML written by the spec loads back, from another directory, to the same spec and hash.
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    again = load_job_spec(_write(elsewhere, spec.to_yaml()))
    assert again == spec and again.spec_hash == spec.spec_hash
    # JSON (as stored in the job table) too.
    from_json = JobSpec.model_validate_json(json.dumps(spec.model_dump(mode="json")))
    assert from_json.spec_hash == spec.spec_hash
    # The hash sees changes that matter.
    changed = load_job_spec(_write(jobdir, GOOD.replace("production_ps: 5", "production_ps: 6"), "job2.yaml"))
    assert changed.spec_hash != spec.spec_hash
    assert changed.protocol_hash("transport") != spec.protocol_hash("transport")
    assert changed.protocol_hash("neb") == spec.protocol_hash("neb")


def test_preset_shorthand_and_neb_only(jobdir):
    text = GOOD.replace("transport:\n  preset: quick\n  overrides: {temperatures_K: [600, 800, 1000], production_ps: 5}\n",
                        "transport: quick\n")
    spec = load_job_spec(_write(jobdir, text))
    assert spec.transport_protocol().name == "quick"
    neb_only = text.replace("transport: quick\n", "")
    spec = load_job_spec(_write(jobdir, neb_only))
    assert spec.transport_protocol() is None and spec.stages == [Stage.NEB]


# ------------------------------------------------------------------------------------------------ key / line errors
def test_unknown_key_names_key_path_and_line(jobdir):
    text = GOOD.replace("  - file: structures/li2s.cif", "  - libary: Li6PS5Cl\n  - file: structures/li2s.cif")
    problem = _only_problem(_error(jobdir, text))
    assert problem.path == "candidates[2].libary"
    assert problem.line == _line_of(text, "libary")
    assert "unknown key" in problem.message and "'library'" in problem.message
    rendered = str(_error(jobdir, text))
    assert f"job.yaml:{problem.line}: candidates[2].libary" in rendered


def test_unknown_top_level_and_nested_keys(jobdir):
    text = GOOD.replace("resources:\n", "resorces:\n  gpus: 1\nresources:\n").replace(
        "  fmax_eV_A: 0.05\n", "  fmax_eV_A: 0.05\n  fmax: 0.1\n")
    err = _error(jobdir, text)
    by_path = {p.path: p for p in err.problems}
    assert set(by_path) == {"resorces", "neb.fmax"}
    assert by_path["resorces"].line == _line_of(text, "resorces")
    assert by_path["neb.fmax"].line == _line_of(text, "  fmax: 0.1")
    assert "did you mean 'resources'" in by_path["resorces"].message


def test_wrong_type_names_key_and_line(jobdir):
    text = GOOD.replace("  workers: 2", "  workers: many")
    problem = _only_problem(_error(jobdir, text))
    assert problem.path == "resources.workers" and problem.line == _line_of(text, "workers: many")
    assert "integer" in problem.message and "'many'" in problem.message

    text = GOOD.replace("  - library: Li3N\n", "  - library: [Li3N]\n")
    problem = _only_problem(_error(jobdir, text))
    assert problem.path == "candidates[1].library" and problem.line == _line_of(text, "[Li3N]")


def test_missing_structure_file_names_the_path(jobdir):
    text = GOOD.replace("structures/li2s.cif", "structures/nope.cif")
    problem = _only_problem(_error(jobdir, text))
    assert problem.path == "candidates[2].file" and problem.line == _line_of(text, "nope.cif")
    assert str(jobdir / "structures" / "nope.cif") in problem.message


@pytest.mark.parametrize(
    "ref, words",
    [
        ("foo:bar", "unknown model reference scheme"),
        ("models:/demo@", "malformed registry reference"),
        ("bundled:no-such-model", "no bundled model named"),
        ("models/missing.model", "does not exist"),
    ],
)
def test_bad_model_reference(jobdir, ref, words):
    text = GOOD.replace("model: models/tiny.model", f"model: {ref}")
    problem = _only_problem(_error(jobdir, text))
    assert problem.path == "model" and problem.line == 2
    assert words in problem.message


def test_valid_model_reference_forms(jobdir):
    for ref in ("mace-mp:small", "models:/lipscl@champion", "models:/lipscl/3"):
        spec = load_job_spec(_write(jobdir, GOOD.replace("model: models/tiny.model", f"model: {ref}")))
        assert spec.model == ref


def test_bad_protocol_override_names_the_field(jobdir):
    text = GOOD.replace("production_ps: 5", "production_ps: -5, bogus_fs: 1")
    err = _error(jobdir, text)
    by_path = {p.path: p for p in err.problems}
    assert set(by_path) == {"transport.overrides.production_ps", "transport.overrides.bogus_fs"}
    assert "production_ps" in by_path["transport.overrides.production_ps"].message
    assert "greater than 0" in by_path["transport.overrides.production_ps"].message
    assert "unknown transport protocol field" in by_path["transport.overrides.bogus_fs"].message
    assert all(p.line == _line_of(text, "bogus_fs") for p in err.problems)

    # A rule across fields (sample interval shorter than the time step) points at the overrides.
    text = GOOD.replace("production_ps: 5", "sample_interval_fs: 1")
    problem = _only_problem(_error(jobdir, text))
    assert problem.path == "transport.overrides" and "sample_interval_fs must be at least timestep_fs" in problem.message

    problem = _only_problem(_error(jobdir, GOOD.replace("preset: quick", "preset: fast")))
    assert problem.path == "transport.preset" and "quick" in problem.message


def test_bad_neb_field_and_resources(jobdir):
    text = GOOD.replace("n_images: 5", "n_images: 0")
    problem = _only_problem(_error(jobdir, text))
    assert problem.path == "neb.n_images" and problem.line == _line_of(text, "n_images: 0")

    text = GOOD.replace("max_in_flight: 4", "max_in_flight: 1")
    problem = _only_problem(_error(jobdir, text))
    assert problem.path == "resources.max_in_flight" and "at least workers" in problem.message


def test_candidate_rules(jobdir, unbuildable_library_entry):
    # Not buildable, electrolyte with n_ions, two sources in one item.
    text = GOOD.replace("  - library: Li2S\n", (
        f"  - library: {unbuildable_library_entry}\n  - library: Li2S\n    n_ions: 2\n  - library: Li2S\n    file: structures/li2s.cif\n"), 1)
    err = _error(jobdir, text)
    by_path = {p.path: p for p in err.problems}
    assert set(by_path) == {"candidates[0].library", "candidates[1].n_ions", "candidates[2].file"}
    assert "cannot be built" in by_path["candidates[0].library"].message
    assert "cathode hosts only" in by_path["candidates[1].n_ions"].message
    assert "only one of" in by_path["candidates[2].file"].message
    assert by_path["candidates[1].n_ions"].line == _line_of(text, "n_ions: 2")

    # A structure file needs a working ion, from the item or the top level.
    text = GOOD.replace("working_ion: Li\n", "")
    problem = _only_problem(_error(jobdir, text))
    assert problem.path == "candidates[2].ion" and problem.line == _line_of(text, "- file: structures/li2s.cif")


def test_at_least_one_stage_and_yaml_problems(jobdir):
    text = GOOD.split("transport:")[0] + "resources:\n  workers: 1\n"
    problem = _only_problem(_error(jobdir, text))
    assert "transport" in problem.message and "neb" in problem.message

    text = GOOD.replace("  workers: 2\n", "  workers: 2\n  workers: 3\n")
    problem = _only_problem(_error(jobdir, text))
    assert problem.path == "resources.workers" and problem.line == _line_of(text, "workers: 3")
    assert "duplicate key" in problem.message

    text = GOOD.replace("  - library: Li3N", "  - library: [Li3N")
    problem = _only_problem(_error(jobdir, text))
    assert "YAML syntax" in problem.message and problem.line is not None

    with pytest.raises(InputError, match="does not exist"):
        load_job_spec(jobdir / "absent.yaml")


# ------------------------------------------------------------------------------------------------ building
@pytest.mark.filterwarnings("ignore::UserWarning")  # pymatgen's complaints about the garbage CIF
def test_bad_candidate_among_good_ones(jobdir):
    (jobdir / "structures" / "garbage.cif").write_text("data_x\n_this is not a structure\n")
    text = textwrap.dedent("""\
        name: mixed
        model: models/tiny.model
        candidates:
          - library: Li2S
          - file: structures/garbage.cif
            ion: Li
          - library: Li3N
          - library: Li2S
            name: same-again
        neb: {max_hops: 1}
        """)
    spec = load_job_spec(_write(jobdir, text))
    candidates, failures = build_candidates(spec)
    assert [c.formula for c in candidates] == ["Li2S", "Li3N"]  # the repeated Li2S is kept once
    assert len({c.structure_hash for c in candidates}) == 2
    assert len(failures) == 1
    failure = failures[0]
    assert failure.index == 1 and failure.item == "candidates[1]" and "garbage.cif" in failure.label
    assert failure.error_type == "InputError" and failure.error


def test_variants_names_and_model_domain(jobdir):
    spec = load_job_spec(_write(jobdir, GOOD))
    candidates, failures = build_candidates(spec, allowed_elements={"Li", "S", "N", "Cl"})
    # my-li2s is the same structure as the Li2S entry, so it is kept once (first wins); the Na substitution
    # contains Na, which this "model" does not cover: it alone fails, with a domain error.
    assert [c.name for c in candidates] == ["Li2S", "nitride", "Li2S[Cl@S 0.25]"]
    assert [(f.index, f.error_type) for f in failures] == [(3, "ModelDomainError")]
    assert "Na" in failures[0].error
    doped = candidates[2]
    assert doped.structure.composition["Cl"] > 0 and doped.history[-1]["op"] == "dope"
    assert doped.variant_of == candidates[0].structure_hash

    everything, none_failed = build_candidates(spec)
    assert none_failed == [] and "Li2S[Li->Na]" in [c.name for c in everything]
    assert next(c for c in everything if c.name == "Li2S[Li->Na]").working_ion == "Na"
