"""Fuzzing what users hand us: job files and structure files. Whatever the text, the only exception is the
project's ``InputError`` (or a subclass) — never a ``RecursionError``, ``KeyError``, ``OSError`` or a hang.

Seeded (``derandomize=True``) so CI sees the same examples every run; about a minute on two cores.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlip.errors import InputError
from screening.candidates import build_candidate, import_file
from workflows.jobs.spec import parse_job_spec


def fuzz_settings(examples: int):
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


def _only_input_errors(call):
    """Run ``call``; an InputError is an accepted outcome, any other exception fails the test."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return call()
    except InputError:
        return None


# ---------------------------------------------------------------------------------------------- job files
SKELETONS = [
    {"name": "fuzz", "model": "mace-mp:small", "working_ion": "Li",
     "candidates": [{"library": "Li2S"}, {"library": "Li3N", "name": "nitride"}],
     "transport": {"preset": "quick", "overrides": {"temperatures_K": [600, 800], "production_ps": 5}}},
    {"name": "fuzz-files", "model": "bundled:none", "working_ion": "Li",
     "candidates": [{"file": "li2s.cif", "oxidation": {"Li": 1, "S": -2}, "supercell": [1, 1, 1]},
                    {"substitute": {"library": "Li2S", "to": "Na"}},
                    {"dope": {"library": "Li2S", "site": "S", "dopant": "Cl", "fraction": 0.25, "dopant_oxidation": -1}}],
     "neb": {"min_length_A": 8, "fmax_eV_A": 0.05, "n_images": 5, "max_hops": 3},
     "ranking": {"conductivity": 1.0, "activation_energy": 0.5},
     "resources": {"workers": 2, "max_in_flight": 4, "gpus_per_worker": 0.5, "device": "cuda"}},
    {"name": "fuzz-host", "model": "models/tiny.model",
     "candidates": [{"library": "TiS2", "ion": "Mg", "n_ions": 1, "seed": 3}],
     "transport": {"overrides": {"temperatures_K": [700], "timestep_fs": 2.0, "equilibration_ps": 0.1,
                                 "production_ps": 1.0, "sample_interval_fs": 10.0, "supercell_min_length_A": 8.0,
                                 "analysis": {"n_blocks": 4, "min_hops": 1},
                                 "target_rel_half_width": 0.2, "max_production_ps": 4.0, "extension_ps": 1.0}}},
]

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 2**63, 2**63 - 1, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1.0e9, 1.0e-300, -0.0, 5000.0, 5000.0001, 49.9]),
    st.text(max_size=30),
    st.sampled_from(["Li", "Na", "Mg", "Xx", "auto", "quick", "standard", "Li2S", "TiS2", "~nobody/x", "a" * 300,
                     "../../etc/passwd", "li2s.cif", "models:/m@a", "mace-mp:", "bundled:none", "\x00", "2001-13-45"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                      max_leaves=12)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*prefix, i))


def _parent(root, path):
    node = root
    for part in path[:-1]:
        node = node[part]
    return node


@st.composite
def mutated_specs(draw):
    """A valid skeleton with a few values replaced, keys deleted, added or renamed."""
    spec = copy.deepcopy(draw(st.sampled_from(SKELETONS)))
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(spec) if p]
        path = draw(st.sampled_from(paths))
        parent = _parent(spec, path)
        action = draw(st.sampled_from(["replace", "replace", "delete", "add", "rename"]))
        if action == "replace":
            parent[path[-1]] = draw(values)
        elif action == "delete":
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=20))] = draw(values)
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(st.text(max_size=20))] = parent.pop(path[-1])
    return spec


def _dump(spec, style: str) -> str:
    if style == "json":
        return json.dumps(spec, allow_nan=True)
    return yaml.safe_dump(spec, default_flow_style=(style == "flow"), allow_unicode=True)


@pytest.fixture(scope="module")
def job_dir(tmp_path_factory) -> Path:
    """A job directory with a model file and a real Li2S CIF (for the file: candidates)."""
    directory = tmp_path_factory.mktemp("fuzz-job")
    (directory / "models").mkdir()
    (directory / "models" / "tiny.model").write_bytes(b"not loaded by the spec")
    build_candidate("Li2S").structure.to(filename=str(directory / "li2s.cif"))
    return directory


def _parse(text: str, job_dir: Path):
    return _only_input_errors(lambda: parse_job_spec(text, source="fuzz.yaml", base_dir=job_dir))


@fuzz_settings(500)
@given(text=st.text(max_size=400))
def test_job_spec_parser_on_random_text(job_dir, text):
    _parse(text, job_dir)


@fuzz_settings(300)
@given(data=st.binary(max_size=400), encoding=st.sampled_from(["utf-8", "latin-1", "utf-16"]))
def test_job_spec_parser_on_random_bytes(job_dir, data, encoding):
    _parse(data.decode(encoding, errors="replace"), job_dir)


@fuzz_settings(500)
@given(spec=mutated_specs(), style=st.sampled_from(["block", "flow", "json"]))
def test_job_spec_parser_on_mutated_specs(job_dir, spec, style):
    _parse(_dump(spec, style), job_dir)


@fuzz_settings(300)
@given(spec=st.sampled_from(SKELETONS), data=st.data())
def test_job_spec_parser_on_mutated_text(job_dir, spec, data):
    text = _dump(spec, data.draw(st.sampled_from(["block", "flow", "json"])))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 8))
        insert = data.draw(st.one_of(st.text(max_size=8), st.sampled_from(
            ["&a ", "*a", "[", "{", "!!python/object:os.system", "!!binary", "- ", ": ", "\n  ", "? ", "<<: ", "%YAML 1.1\n",
             "---\n", "...", ".inf", ".nan", "1e999", "0x1F", "0o17", "!!float", "!!set", "'", '"', "#", "\t"])))
        text = text[:at] + insert + text[at + cut:]
    _parse(text, job_dir)


# ---------------------------------------------------------------------------------------------- structure files
@lru_cache(maxsize=1)
def _structure_texts() -> dict[str, str]:
    """Li2S (12 atoms) as CIF, POSCAR and extxyz, and a disordered CIF, to mutate."""
    from pymatgen.core import Lattice, Species, Structure

    cand = build_candidate("Li2S")
    plain = cand.structure.copy()
    plain.remove_oxidation_states()
    disordered = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.7), [{Species("S", -2): 1.0}, {Species("Li", 1): 0.75, Species("Na", 1): 0.25}],
        [[0, 0, 0], [0.25, 0.25, 0.25]])
    with tempfile.TemporaryDirectory(prefix="ionscreen-fuzz-") as name:
        directory = Path(name)
        plain.to(filename=str(directory / "li2s.cif"))
        plain.to(filename=str(directory / "POSCAR"), fmt="poscar")
        cand.to_extxyz(directory / "li2s.xyz")
        disordered.to(filename=str(directory / "disordered.cif"))
        return {f: (directory / f).read_text() for f in ("li2s.cif", "POSCAR", "li2s.xyz", "disordered.cif")}


numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(10**6), max_value=10**13).map(str),
    st.sampled_from(["0", "-0", "1e308", "-1e308", "1e-320", "nan", "inf", "-inf", "0.1", "0.0001", "100000",
                     "99999999999999999999", "1000000000000", "?", ".", "0.5(3)", "1.2e", "--1", ""]),
)


@st.composite
def mutated_structure_files(draw):
    """(file name, text): a real structure file with numbers, lines or characters changed."""
    base = draw(st.sampled_from(["li2s.cif", "POSCAR", "li2s.xyz", "disordered.cif"]))
    lines = _structure_texts()[base].splitlines()
    for _ in range(draw(st.integers(1, 5))):
        i = draw(st.integers(0, max(len(lines) - 1, 0)))
        action = draw(st.sampled_from(["number", "number", "number", "delete", "duplicate", "text", "truncate"]))
        if not lines:
            break
        if action == "number":
            tokens = lines[i].split()
            if tokens:
                j = draw(st.integers(0, len(tokens) - 1))
                tokens[j] = draw(numbers)
                lines[i] = " ".join(tokens)
        elif action == "delete":
            del lines[i]
        elif action == "duplicate":
            lines[i:i] = [lines[i]] * draw(st.integers(1, 50))
        elif action == "text":
            at = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:at] + draw(st.text(max_size=10)) + lines[i][at:]
        else:
            lines = lines[:i]
    name = {"li2s.cif": "fuzz.cif", "disordered.cif": "fuzz.cif", "POSCAR": "POSCAR", "li2s.xyz": "fuzz.xyz"}[base]
    return name, "\n".join(lines) + "\n"


def _import(name: str, text: str, oxidation: bool):
    with tempfile.TemporaryDirectory(prefix="ionscreen-fuzz-") as directory:
        path = Path(directory) / name
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        options = {"oxidation_states": {"Li": 1, "Na": 1, "S": -2}} if oxidation else {}
        return _only_input_errors(lambda: import_file(path, working_ion="Li", **options))


@fuzz_settings(250)
@given(mutated_structure_files(), st.booleans())
def test_structure_import_on_mutated_files(named, oxidation):
    _import(*named, oxidation)


@fuzz_settings(250)
@given(st.sampled_from(["fuzz.cif", "POSCAR", "fuzz.xyz", "CONTCAR", "fuzz.vasp"]),
       st.one_of(st.text(max_size=300), st.binary(max_size=300).map(lambda b: b.decode("latin-1"))))
def test_structure_import_on_random_text(name, text):
    _import(name, text, oxidation=False)


def test_the_fuzz_bases_import_cleanly(job_dir):
    """The unmutated bases are valid: the fuzzer starts from files that work."""
    texts = _structure_texts()
    cand = _import("li2s.cif", texts["li2s.cif"], oxidation=False)
    assert cand is not None and cand.n_atoms == 12
    assert _import("POSCAR", texts["POSCAR"], oxidation=True) is not None
    assert _import("fuzz.xyz", texts["li2s.xyz"], oxidation=False) is not None
    assert _import("fuzz.cif", texts["disordered.cif"], oxidation=True) is not None
    for spec in SKELETONS:
        try:
            parse_job_spec(_dump(spec, "block"), source="skeleton.yaml", base_dir=job_dir)
        except InputError as err:  # the skeletons may name a model that is not bundled; nothing else may fail
            assert "bundled" in str(err) and "fuzz-files" in spec["name"], str(err)


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_numbers_in_json_job_files_are_input_errors(job_dir, value):
    spec = copy.deepcopy(SKELETONS[0])
    spec["transport"]["overrides"]["production_ps"] = value
    with pytest.raises(InputError, match="production_ps"):
        parse_job_spec(json.dumps(spec), source="fuzz.json", base_dir=job_dir)
