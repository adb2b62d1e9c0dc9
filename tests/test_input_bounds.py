"""Bounds on what users hand us: job files (YAML size, depth, aliases), protocol and job-spec values, structure
files (size, sites, overlapping atoms, empty cells) and the supercells a job implies. Each test is a finding of
a security review that the code before these bounds accepted, hung on, or crashed on."""

from __future__ import annotations

import math
import re
import time
import warnings
from pathlib import Path

import pytest
import yaml

from mlip.errors import InputError
from screening.candidates import build_candidate, import_file
from screening.candidates.limits import (
    MAX_BOND_VALENCE_SITES,
    MAX_INPUT_SITES,
    MAX_STRUCTURE_FILE_BYTES,
    MIN_INTERATOMIC_DISTANCE_A,
)
from screening.cells import MAX_SIMULATION_ATOMS
from screening.neb.band import NebParameters
from screening.transport.protocol import make_protocol, preset
from workflows.jobs.spec import JobSpecError, build_candidates, load_job_spec, parse_job_spec
from workflows.jobs.spec.parse import MAX_JOB_FILE_BYTES, MAX_YAML_DEPTH
from workflows.jobs.spec.schema import MAX_CANDIDATES

warnings.filterwarnings("ignore", message=".*fractional coordinates.*")

JOB = """\
name: bounds
model: mace-mp:small
working_ion: Li
candidates:
  - library: Li2S
transport:
  preset: quick
"""


def _problem(err: JobSpecError, path: str | None = None):
    if path is None:
        assert len(err.problems) == 1, str(err)
        return err.problems[0]
    found = [p for p in err.problems if p.path == path or p.path.startswith((path + "[", path + "."))]
    assert found, str(err)
    return found[0]


def _spec_error(text: str) -> JobSpecError:
    with pytest.raises(JobSpecError) as info:
        parse_job_spec(text, source="job.yaml")
    return info.value


# ---------------------------------------------------------------------------------------------- YAML
BILLION_LAUGHS = """\
a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
"""


def test_alias_bomb_is_refused_at_once_with_its_line():
    start = time.perf_counter()
    err = _spec_error(BILLION_LAUGHS)
    assert time.perf_counter() - start < 1.0
    problem = _problem(err)
    assert problem.line == 1 and "anchors and aliases" in problem.message and "job.yaml:1" in str(err)


def test_any_anchor_or_alias_is_refused_with_its_line():
    text = JOB.replace("  preset: quick\n", "  preset: &p quick\n")
    assert _problem(_spec_error(text)).line == JOB.splitlines().index("  preset: quick") + 1
    text = JOB + "neb: {min_length_A: 8}\nresources: {workers: 2, max_in_flight: *w}\n"
    problem = _problem(_spec_error(text))
    assert problem.line == text.count("\n") and "*w" in problem.message


@pytest.mark.parametrize("text", [
    "[" * 100_000 + "]" * 100_000,  # JSON lists, 100,000 deep
    "a: " + "{a: " * 100_000 + "1" + "}" * 100_000,  # YAML flow mappings, 100,000 deep (over the size bound too)
    '{"a": ' * 80_000 + "1" + "}" * 80_000,  # JSON objects
    "".join(" " * i + "- \n" for i in range(0, 2 * 100, 2)) + " " * 200 + "1\n",  # block lists 100 deep
])
def test_deep_nesting_is_an_input_error_not_a_recursion_error(text):
    err = _spec_error(text)
    message = str(err)
    assert f"{MAX_YAML_DEPTH} levels" in message or f"{MAX_JOB_FILE_BYTES:,}" in message


def test_depth_limit_is_exact_and_named():
    ok = "x: " + "[" * (MAX_YAML_DEPTH - 1) + "]" * (MAX_YAML_DEPTH - 1) + "\n"
    err = _spec_error(ok)  # within the depth bound: only schema problems (unknown key x, missing keys)
    assert not any("levels" in p.message for p in err.problems)
    deep = "x: " + "[" * MAX_YAML_DEPTH + "]" * MAX_YAML_DEPTH + "\n"
    problem = _problem(_spec_error(deep))
    assert problem.line == 1 and f"{MAX_YAML_DEPTH} levels" in problem.message and "MAX_YAML_DEPTH" in problem.message


def test_oversized_job_files_are_refused_naming_the_limit(tmp_path):
    big = JOB + "#" + "x" * MAX_JOB_FILE_BYTES + "\n"
    assert f"{MAX_JOB_FILE_BYTES:,}" in _problem(_spec_error(big)).message
    path = tmp_path / "big.yaml"
    path.write_text(big)
    with pytest.raises(JobSpecError, match="MAX_JOB_FILE_BYTES") as info:
        load_job_spec(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("value", ["9" * 5000, "2001-13-45"])
def test_scalars_python_cannot_convert_are_input_errors(value):
    assert "YAML value" in _problem(_spec_error(JOB + f"extra: {value}\n")).message


def test_presets_file_and_hashes_are_unchanged():
    """A preset's hash decides which stored results count as done: it may change only on purpose. Last changed
    by the polyanion-rotation rule of the framework criterion (analysis.polyanion_rotation): results flagged
    framework_melted by the growth rule alone are redone."""
    assert preset("quick").hash == "a8b68be354078785f63d8189ac171fc6bf3f7fcf092742832f62cab61f1b752e"
    assert preset("standard").hash == "18824e9cf3be4383db7f41b1a765c57425dca0ee9a2af75244a3448aadbc882e"


# ---------------------------------------------------------------------------------------------- protocol values
_VALID = {"temperatures_K": (600.0,), "timestep_fs": 2.0, "equilibration_ps": 0.1, "production_ps": 1.0,
          "sample_interval_fs": 10.0, "supercell_min_length_A": 8.0}


@pytest.mark.parametrize("field, value", [
    ("temperatures_K", (1.0e9,)),
    ("temperatures_K", (math.inf,)),
    ("temperatures_K", (math.nan,)),
    ("temperatures_K", (10.0,)),
    ("temperatures_K", tuple(300.0 + 10 * i for i in range(33))),
    ("production_ps", 1.0e9),
    ("production_ps", math.inf),
    ("equilibration_ps", 1.0e9),
    ("sample_interval_fs", 1.0e9),
    ("checkpoint_interval_ps", 1.0e9),
    ("thermostat_time_constant_fs", math.inf),
    ("supercell_min_length_A", 1.0e6),
    ("supercell_min_length_A", math.nan),
    ("relax_fmax_eV_A", math.inf),
    ("relax_max_steps", 10**9),
    ("timestep_fs", 1e-4),
    ("seed", 2**63),
    ("analysis", {"hop_distance_A": math.inf}),
    ("analysis", {"fit_min_start_fs": math.nan}),
])
def test_protocol_values_out_of_bounds_are_refused(field, value):
    with pytest.raises(InputError, match=field):
        make_protocol(**{**_VALID, field: value})


def test_adaptive_budget_and_stored_frames_are_bounded():
    with pytest.raises(InputError, match="max_production_ps"):
        make_protocol(**_VALID, target_rel_half_width=0.1, extension_ps=1.0, max_production_ps=1.0e9)
    with pytest.raises(InputError, match="frames"):
        make_protocol(**{**_VALID, "production_ps": 10_000.0, "sample_interval_fs": 2.0})
    make_protocol(**{**_VALID, "seed": 2**63 - 1, "temperatures_K": (50.0, 5000.0)})  # the bounds themselves are valid


@pytest.mark.parametrize("yaml_value, path", [
    ("{temperatures_K: [.inf]}", "transport.overrides.temperatures_K"),
    ("{temperatures_K: [.nan]}", "transport.overrides.temperatures_K"),
    ("{temperatures_K: [1.0e+9]}", "transport.overrides.temperatures_K"),
    ("{production_ps: 1.0e+9}", "transport.overrides.production_ps"),
    ("{supercell_min_length_A: 1.0e+6}", "transport.overrides.supercell_min_length_A"),
    ("{seed: 9223372036854775808}", "transport.overrides.seed"),
])
def test_job_file_protocol_overrides_out_of_bounds_name_their_path(yaml_value, path):
    err = _spec_error(JOB + f"  overrides: {yaml_value}\n")
    assert _problem(err, path).line == JOB.count("\n") + 1


@pytest.mark.parametrize("extra, path", [
    ("neb: {n_images: 1000}", "neb.n_images"),
    ("neb: {max_steps: 1000000000}", "neb.max_steps"),
    ("neb: {fmax_eV_A: .inf}", "neb.fmax_eV_A"),
    ("neb: {fmax_eV_A: .nan}", "neb.fmax_eV_A"),
    ("neb: {min_length_A: 1.0e+6}", "neb.min_length_A"),
    ("neb: {max_atoms: 1000000}", "neb.max_atoms"),
    ("neb: {max_hops: 1000000}", "neb.max_hops"),
    ("neb: {max_hop_length_A: .inf}", "neb.max_hop_length_A"),
    ("resources: {gpus_per_worker: .inf}", "resources.gpus_per_worker"),
    ("resources: {max_in_flight: 1000000000}", "resources.max_in_flight"),
    ("ranking: {conductivity: .inf}", "ranking.conductivity"),
    ("ranking: {conductivity: 1.0e+9}", "ranking.conductivity"),
])
def test_job_file_stage_settings_out_of_bounds_name_their_path(extra, path):
    _problem(_spec_error(JOB + extra + "\n"), path)


@pytest.mark.parametrize("item, path", [
    ("{library: Li2S, seed: 9223372036854775808}", "candidates[0].seed"),
    ("{library: TiS2, n_ions: 100000}", "candidates[0].n_ions"),
    ("{file: s.cif, supercell: [100, 1, 1]}", "candidates[0].supercell[0]"),
    ("{file: s.cif, supercell: [0, 1, 1]}", "candidates[0].supercell[0]"),
    ("{file: s.cif, oxidation: {Li: .inf, S: -2}}", "candidates[0].oxidation.Li"),
    ("{file: s.cif, insertion_sites_frac: [[0, 0, 1.0e+9]]}", "candidates[0].insertion_sites_frac[0][2]"),
    ("{dope: {library: Li2S, site: S, dopant: Cl, fraction: 0.25, dopant_oxidation: .nan}}",
     "candidates[0].dope.dopant_oxidation"),
])
def test_candidate_values_out_of_bounds_name_their_path(tmp_path, item, path):
    (tmp_path / "s.cif").write_text("data_x\n")
    text = JOB.replace("  - library: Li2S\n", f"  - {item}\n")
    with pytest.raises(JobSpecError) as info:
        parse_job_spec(text, source="job.yaml", base_dir=tmp_path)
    _problem(info.value, path)


def test_candidates_per_job_are_bounded():
    text = JOB.replace("  - library: Li2S\n", "  - library: Li2S\n" * (MAX_CANDIDATES + 1))
    assert f"at most {MAX_CANDIDATES}" in _problem(_spec_error(text), "candidates").message


def test_existing_protocols_stay_valid():
    from protocols import short_protocol

    for values in (short_protocol(), short_protocol(temperatures_K=[500.0, 700.0], equilibration_ps=0.1,
                                                    production_ps=1.2, checkpoint_interval_ps=0.2,
                                                    supercell_min_length_A=5.5)):
        make_protocol(**values)
    NebParameters(n_images=3, min_length_A=6.5, fmax_eV_A=1e-6, max_steps=1, batch_size=3, endpoint_max_steps=2)


# ---------------------------------------------------------------------------------------------- implied supercells
def test_a_candidate_whose_md_supercell_is_too_large_fails_before_planning():
    text = JOB.replace("  - library: Li2S\n", "  - library: Li2S\n  - library: Li3N\n") + \
        "  overrides: {supercell_min_length_A: 60}\n"
    spec = parse_job_spec(text, source="job.yaml")
    built = build_candidates(spec)
    assert not built.candidates and len(built.failures) == 2
    failure = built.failures[0]
    assert failure.error_type == "InputError" and failure.item == "candidates[0]"
    assert "candidate Li2S" in failure.error and "11x11x11" in failure.error and "15,972 atoms" in failure.error
    assert f"{MAX_SIMULATION_ATOMS:,}" in failure.error
    small = build_candidates(parse_job_spec(JOB, source="job.yaml"))
    assert len(small.candidates) == 1 and not small.failures


def test_a_candidate_whose_neb_supercell_is_too_large_fails_before_planning():
    text = JOB.replace("transport:\n  preset: quick\n", "neb: {min_length_A: 60}\n")
    failure = build_candidates(parse_job_spec(text, source="job.yaml")).failures[0]
    assert "NEB supercell" in failure.error and "MAX_SIMULATION_ATOMS" in failure.error


def _too_large(err, *needles: str) -> None:
    message = str(err)
    assert "MAX_SIMULATION_ATOMS" in message and f"{MAX_SIMULATION_ATOMS:,}" in message, message
    assert all(needle in message for needle in needles), message


def test_supercells_are_bounded_wherever_they_are_built():
    """The bound held only for job files: make_supercell (ionscreen md, the job runner) and build_endpoints (ionscreen
    neb, default max_atoms=None) built supercells of any size."""
    from screening.cells import make_supercell
    from screening.neb import build_endpoints, find_hops
    from screening.transport.run import to_atoms

    li2s = build_candidate("Li2S").structure
    with pytest.raises(InputError) as info:
        make_supercell(to_atoms(li2s), 60.0)
    _too_large(info.value, "Li8S4", "11x11x11", "12 atoms", "15,972 atoms")
    assert len(make_supercell(to_atoms(li2s), 8.0)[0]) == 96
    network = find_hops(li2s, "Li")
    with pytest.raises(InputError) as info:
        build_endpoints(network.structure, network.distinct[0], min_length_A=60.0)
    _too_large(info.value, "NEB supercell", "11x11x11", "15,972 atoms")
    with pytest.raises(InputError, match=r"324 atoms, more than the 100 .*\(max_atoms = 100\)"):
        build_endpoints(network.structure, network.distinct[0], min_length_A=12.0, max_atoms=100)
    assert build_endpoints(network.structure, network.distinct[0], min_length_A=8.0, max_atoms=100).repeats == (2, 2, 2)


@pytest.fixture
def copper_cif(tmp_path) -> Path:
    from ase.build import bulk

    path = tmp_path / "Cu.cif"
    bulk("Cu", "fcc", a=3.61, cubic=True).write(path)
    return path


def test_md_and_neb_commands_refuse_a_supercell_above_the_bound(copper_cif, tmp_path):
    from typer.testing import CliRunner

    from workflows.cli import app

    values = preset("quick").model_dump(mode="json", exclude={"name"}) | {"supercell_min_length_A": 60.0}
    protocol = tmp_path / "big.yaml"
    protocol.write_text(yaml.safe_dump(values))
    runner = CliRunner()
    md = runner.invoke(app, ["md", str(copper_cif), "--model", "ase:emt", "--ion", "Cu", "--protocol", str(protocol),
                             "--device", "cpu", "--out", str(tmp_path / "md")])
    assert isinstance(md.exception, InputError), md.output
    _too_large(md.exception, "17x17x17", "19,652 atoms")
    early = runner.invoke(app, ["md", str(copper_cif), "--model", str(tmp_path / "absent.model"), "--ion", "Cu",
                                "--protocol", str(protocol), "--device", "cpu", "--out", str(tmp_path / "md2")])
    _too_large(early.exception, "17x17x17")  # refused before any model is looked up (or downloaded)
    neb = runner.invoke(app, ["neb", str(copper_cif), "--model", "ase:emt", "--ion", "Cu", "--min-length-A", "60",
                              "--device", "cpu", "--out", str(tmp_path / "neb")])
    assert isinstance(neb.exception, InputError), neb.output
    _too_large(neb.exception, "NEB supercell", "17x17x17", "19,652 atoms")


# ---------------------------------------------------------------------------------------------- stored text
@pytest.mark.parametrize("item, path", [
    ("  - {library: Li2S, name: \"Li\\0S\"}\n", "candidates[0].name"),
    ("  - {library: Li2S, \"na\\0me\": x}\n", "candidates[0]"),
])
def test_job_files_with_text_the_database_cannot_store_are_refused(tmp_path, item, path):
    """NUL was refused only by the web form; a job file given to the CLI reached PostgreSQL with it."""
    from typer.testing import CliRunner

    from workflows.cli import app

    job = tmp_path / "job.yaml"
    job.write_text(JOB.replace("  - library: Li2S\n", item))
    with pytest.raises(JobSpecError) as info:
        load_job_spec(job)
    problem = _problem(info.value, path)
    assert problem.path == path and problem.line == 5 and "NUL" in problem.message
    result = CliRunner().invoke(app, ["screen", str(job)])
    assert isinstance(result.exception, JobSpecError) and "cannot be stored" in str(result.exception)
    top = _problem(_spec_error(JOB.replace("name: bounds", 'name: "a\\0b"')), "name")
    assert top.line == 1 and "NUL" in top.message


# ---------------------------------------------------------------------------------------------- one bound, one place
def test_ranking_weights_carry_their_own_bounds():
    from pydantic import ValidationError

    from screening.ranking import MAX_RANKING_WEIGHT, RankingWeights

    for value in (math.inf, math.nan):
        with pytest.raises(ValidationError, match="conductivity"):
            RankingWeights(conductivity=value)
    with pytest.raises(ValidationError, match=f"(?s)conductivity.*less than or equal to {MAX_RANKING_WEIGHT:g}"):
        RankingWeights(conductivity=MAX_RANKING_WEIGHT * 1.001)
    assert RankingWeights(conductivity=MAX_RANKING_WEIGHT, penalty_1d_eV=MAX_RANKING_WEIGHT).conductivity == 1000.0
    problem = _problem(_spec_error(JOB + "ranking: {penalty_1d_eV: 1.0e+4}\n"), "ranking.penalty_1d_eV")
    assert f"{MAX_RANKING_WEIGHT:g}" in problem.message


def test_bounds_shared_by_transport_neb_and_job_files_agree():
    from screening.cells import MAX_SUPERCELL_LENGTH_A
    from screening.neb.band import MAX_FORCE_EV_A, MAX_OPTIMIZER_STEPS
    from screening.transport.protocol import MAX_SEED

    make_protocol(**{**_VALID, "seed": MAX_SEED, "supercell_min_length_A": MAX_SUPERCELL_LENGTH_A,
                     "relax_fmax_eV_A": MAX_FORCE_EV_A, "relax_max_steps": MAX_OPTIMIZER_STEPS})
    NebParameters(min_length_A=MAX_SUPERCELL_LENGTH_A, fmax_eV_A=MAX_FORCE_EV_A, max_steps=MAX_OPTIMIZER_STEPS)
    for field, value in (("seed", MAX_SEED + 1), ("supercell_min_length_A", MAX_SUPERCELL_LENGTH_A * 1.001),
                         ("relax_fmax_eV_A", MAX_FORCE_EV_A * 1.001), ("relax_max_steps", MAX_OPTIMIZER_STEPS + 1)):
        with pytest.raises(InputError, match=field):
            make_protocol(**{**_VALID, field: value})
    for field, value in (("min_length_A", MAX_SUPERCELL_LENGTH_A * 1.001), ("fmax_eV_A", MAX_FORCE_EV_A * 1.001),
                         ("max_steps", MAX_OPTIMIZER_STEPS + 1)):
        with pytest.raises(ValueError, match=field):
            NebParameters(**{field: value})
    parse_job_spec(JOB.replace("  - library: Li2S\n", f"  - {{library: Li2S, seed: {MAX_SEED}}}\n"), source="job.yaml")
    text = JOB.replace("  - library: Li2S\n", f"  - {{library: Li2S, seed: {MAX_SEED + 1}}}\n")
    assert str(MAX_SEED) in _problem(_spec_error(text), "candidates[0].seed").message


# ---------------------------------------------------------------------------------------------- structure files
def _p1_cif(n: int, spacing_A: float = 2.8) -> str:
    k = math.ceil((n / 2) ** (1 / 3))
    length = spacing_A * k
    lines = ["data_big", *(f"_cell_length_{x} {length}" for x in "abc"),
             *(f"_cell_angle_{x} 90" for x in ("alpha", "beta", "gamma")),
             "_symmetry_space_group_name_H-M 'P 1'", "loop_", "_symmetry_equiv_pos_as_xyz", "x,y,z",
             "loop_", "_atom_site_label", "_atom_site_type_symbol", "_atom_site_fract_x", "_atom_site_fract_y",
             "_atom_site_fract_z", "_atom_site_occupancy"]
    count = 0
    for i in range(k ** 3):
        a, b, c = i // (k * k), (i // k) % k, i % k
        for symbol, shift in (("Li", 0.0), ("Cl", 0.5)):
            if count < n:
                lines.append(f"{symbol}{count} {symbol} {(a + shift) / k:.6f} {(b + shift) / k:.6f} {(c + shift) / k:.6f} 1")
                count += 1
    return "\n".join(lines) + "\n"


def _refused_quickly(path: Path, match: str, seconds: float = 10.0, **options) -> InputError:
    start = time.perf_counter()
    with pytest.raises(InputError, match=match) as info:
        import_file(path, working_ion="Li", **options)
    assert time.perf_counter() - start < seconds
    assert str(path) in str(info.value)
    return info.value


@pytest.mark.timeout(60)
def test_a_huge_cif_is_refused_before_parsing_and_bond_valence(tmp_path):
    path = tmp_path / "huge.cif"
    path.write_text(_p1_cif(100_800))
    err = _refused_quickly(path, "MAX_INPUT_SITES")
    assert "100,800" in str(err)
    mid = tmp_path / "mid.cif"
    mid.write_text(_p1_cif(3000))
    assert "3,000 sites" in str(_refused_quickly(mid, "MAX_INPUT_SITES"))


@pytest.mark.timeout(60)
def test_a_cif_expanding_to_too_many_sites_by_symmetry_is_refused_before_parsing(tmp_path):
    from pymatgen.symmetry.groups import SpaceGroup

    ops = [op.as_xyz_str() for op in SpaceGroup("Fm-3m").symmetry_ops]
    rows = [f"Li{i} Li {0.01 + 0.004 * i:.4f} {0.02 + 0.003 * i:.4f} {0.03 + 0.002 * i:.4f} 1" for i in range(50)]
    text = "\n".join(["data_sym", *(f"_cell_length_{x} 30" for x in "abc"),
                      *(f"_cell_angle_{x} 90" for x in ("alpha", "beta", "gamma")),
                      "loop_", "_symmetry_equiv_pos_as_xyz", *(f"'{op}'" for op in ops),
                      "loop_", "_atom_site_label", "_atom_site_type_symbol", "_atom_site_fract_x",
                      "_atom_site_fract_y", "_atom_site_fract_z", "_atom_site_occupancy", *rows]) + "\n"
    path = tmp_path / "sym.cif"
    path.write_text(text)
    err = _refused_quickly(path, "MAX_INPUT_SITES", seconds=5.0)  # 50 rows x 192 operations: ~9,600 sites
    assert int(re.search(r"generates ([\d,]+) sites", str(err)).group(1).replace(",", "")) > 9000


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name, text", [
    ("POSCAR", "x\n1.0\n5 0 0\n0 5 0\n0 0 5\nLi\n100000000\nDirect\n0 0 0\n"),
    ("huge.xyz", '1000000000000\nLattice="5 0 0 0 5 0 0 0 5" Properties=species:S:1:pos:R:3 pbc="T T T"\nLi 0 0 0\n'),
])
def test_headers_claiming_huge_atom_counts_are_refused_before_reading(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    _refused_quickly(path, "MAX_INPUT_SITES", seconds=2.0)


@pytest.mark.parametrize("name, text", [
    ("POSCAR", "empty\n1.0\n5 0 0\n0 5 0\n0 0 5\nLi\n0\nDirect\n"),
    ("empty.xyz", '0\nLattice="5 0 0 0 5 0 0 0 5" Properties=species:S:1:pos:R:3 pbc="T T T"\n'),
    ("empty.cif", ("data_x\n_cell_length_a 5\n_cell_length_b 5\n_cell_length_c 5\n"
                   "_cell_angle_alpha 90\n_cell_angle_beta 90\n_cell_angle_gamma 90\n")),
    ("zero.vasp", ""),
])
def test_structures_without_atoms_are_refused(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    _refused_quickly(path, "no atoms|no structure|could not read|empty", seconds=5.0)


def test_zero_atom_poscar_says_no_atoms(tmp_path):
    path = tmp_path / "POSCAR"
    path.write_text("empty\n1.0\n5 0 0\n0 5 0\n0 0 5\nLi\n0\nDirect\n")
    _refused_quickly(path, "no atoms")


def test_overlapping_atoms_are_refused_naming_file_and_limit(tmp_path):
    path = tmp_path / "POSCAR"
    path.write_text("close\n1.0\n5 0 0\n0 5 0\n0 0 5\nLi S\n2 1\nCartesian\n0 0 0\n0.1 0 0\n2.5 2.5 2.5\n")
    err = _refused_quickly(path, "overlapping", oxidation_states={"Li": 1, "S": -2})
    assert "0.100 Å" in str(err) and f"{MIN_INTERATOMIC_DISTANCE_A} Å" in str(err)
    thin = tmp_path / "thin.xyz"
    thin.write_text('1\nLattice="0.3 0 0 0 5 0 0 0 5" Properties=species:S:1:pos:R:3 pbc="T T T"\nLi 0 0 0\n')
    assert "periodic image" in str(_refused_quickly(thin, "MIN_INTERATOMIC_DISTANCE_A"))
    nan = tmp_path / "nan.xyz"
    nan.write_text('1\nLattice="5 0 0 0 5 0 0 0 5" Properties=species:S:1:pos:R:3 pbc="T T T"\nLi nan 0 0\n')
    _refused_quickly(nan, "not finite")


def test_split_sites_of_a_disordered_cif_are_not_overlaps(tmp_path):
    """Partially occupied sites 0.2 Å apart are a disorder model: imported, and the ordered cell is clean."""
    from pymatgen.core import Lattice, Species, Structure

    split = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.7), [{Species("S", -2): 1.0}, {Species("Li", 1): 0.5}, {Species("Li", 1): 0.125}],
        [[0, 0, 0], [0.25, 0.25, 0.25], [0.27, 0.27, 0.27]])
    path = tmp_path / "split.cif"
    split.to(filename=str(path))
    cand = import_file(path, working_ion="Li", oxidation_states={"Li": 1, "S": -2})
    assert cand.n_atoms == 12 and cand.ordering.min_distance_A > MIN_INTERATOMIC_DISTANCE_A


def test_bond_valence_and_ordering_cells_are_bounded(tmp_path):
    li2s = build_candidate("Li2S").structure.copy()
    li2s.remove_oxidation_states()
    li2s.make_supercell([4, 4, 4])  # 768 sites: more than bond valence handles, fewer than an input cell may have
    assert MAX_BOND_VALENCE_SITES < len(li2s) <= MAX_INPUT_SITES
    path = tmp_path / "POSCAR"
    li2s.to(filename=str(path), fmt="poscar")
    _refused_quickly(path, "MAX_BOND_VALENCE_SITES", seconds=5.0)
    assert import_file(path, working_ion="Li", oxidation_states={"Li": 1, "S": -2}).n_atoms == 768
    small = tmp_path / "li2s.cif"
    build_candidate("Li2S").structure.to(filename=str(small))
    err = _refused_quickly(small, "MAX_SIMULATION_ATOMS", seconds=5.0, supercell=[8, 8, 8],
                           oxidation_states={"Li": 1, "S": -2})
    assert "6,144" in str(err)


def test_oversized_and_unknown_structure_files_are_refused(tmp_path):
    big = tmp_path / "big.cif"
    with big.open("w") as f:
        f.write("data_x\n")
        f.write(("#" + "x" * 1023 + "\n") * (MAX_STRUCTURE_FILE_BYTES // 1024 + 1))
    assert f"{MAX_STRUCTURE_FILE_BYTES:,}" in str(_refused_quickly(big, "MAX_STRUCTURE_FILE_BYTES", seconds=2.0))
    other = tmp_path / "li2s.traj"
    other.write_text("x")
    _refused_quickly(other, "unknown structure file type", seconds=2.0)


def test_cli_import_reports_the_refusal(tmp_path):
    from typer.testing import CliRunner

    from workflows.cli.candidates import app

    path = tmp_path / "POSCAR"
    path.write_text("empty\n1.0\n5 0 0\n0 5 0\n0 0 5\nLi\n0\nDirect\n")
    result = CliRunner().invoke(app, ["import", str(path), "--ion", "Li"])
    assert result.exit_code == 2 and "no atoms" in result.output


def test_job_file_bounds_survive_a_yaml_round_trip():
    spec = parse_job_spec(JOB, source="job.yaml")
    assert parse_job_spec(spec.to_yaml(), source="again.yaml").spec_hash == spec.spec_hash
    assert yaml.safe_load(spec.to_yaml())["transport"]["preset"] == "quick"


def test_a_lone_partial_site_that_rounds_to_a_vacancy_is_ordered(tmp_path):
    """Found by the fuzzer: a sublattice whose rounded count is all vacancies crashed pymatgen's enumeration
    with ``max() arg is an empty sequence`` (a ValueError that was not an InputError)."""
    from pymatgen.core import Species

    li2s = build_candidate("Li2S").structure.copy()
    li2s.remove_oxidation_states()
    li2s.add_oxidation_state_by_element({"Li": 1, "S": -2})
    index = next(i for i, site in enumerate(li2s) if site.specie.symbol == "Li")
    li2s.replace(index, {Species("Li", 1): 0.75})
    li2s.append({Species("Na", 1): 0.25}, li2s[index].frac_coords + [0.0, 0.0, 0.2])
    path = tmp_path / "lone.cif"
    li2s.to(filename=str(path))
    cand = import_file(path, working_ion="Li", oxidation_states={"Li": 1, "Na": 1, "S": -2})
    assert cand.n_atoms == 12 and "Na" not in cand.structure.composition


@pytest.mark.parametrize("text, needle", [
    (BILLION_LAUGHS, "anchors and aliases"),
    ("[" * 100_000 + "]" * 100_000, f"{MAX_YAML_DEPTH} levels"),
    (JOB + "extra: 2001-13-45\n", "YAML value"),
])
def test_the_pure_python_loader_enforces_the_same_bounds(monkeypatch, text, needle):
    """Where PyYAML was built without libyaml, the Python parser is used with the same checks."""
    from workflows.jobs.spec import parse as parse_module

    monkeypatch.setattr(parse_module, "_loader_class", lambda: yaml.SafeLoader)
    assert needle in _problem(_spec_error(text)).message
    spec = parse_job_spec(JOB, source="job.yaml")
    assert spec.transport_protocol().hash == preset("quick").hash
