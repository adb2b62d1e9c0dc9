"""The console script: help, models list/check/trust, with real exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def ionscreen(*args, env=None, check=False):
    proc = subprocess.run(
        [sys.executable, "-m", "workflows.cli", *args],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"ionscreen {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _write(path, text):
    path.write_text(text)
    return path


@pytest.fixture
def li2s_cif(tmp_path):
    from ase.io import write
    from ase.spacegroup import crystal

    atoms = crystal(["S", "Li"], [(0, 0, 0), (0.25, 0.25, 0.25)], spacegroup=225, cellpar=[5.71] * 3 + [90] * 3)
    write(tmp_path / "Li2S.cif", atoms)
    return tmp_path / "Li2S.cif"


@pytest.fixture
def llzo_like_poscar(tmp_path):
    from ase import Atoms
    from ase.io import write

    atoms = Atoms("Li2LaZrO2", scaled_positions=[(0, 0, 0), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), (0.75, 0.75, 0.75), (0.5, 0, 0), (0, 0.5, 0)], cell=[6, 6, 6], pbc=True)
    write(tmp_path / "POSCAR", atoms, format="vasp")
    return tmp_path / "POSCAR"


def test_help_lists_commands():
    out = ionscreen("--help", check=True).stdout
    for command in ("models", "config", "version"):
        assert command in out
    models_help = ionscreen("models", "--help", check=True).stdout
    for sub in ("list", "check", "trust", "untrust", "info", "download", "register", "promote"):
        assert sub in models_help


def test_models_check_covered_and_not_covered(tiny_model_copy, li2s_cif, llzo_like_poscar):
    untrusted = ionscreen("models", "check", str(tiny_model_copy), "--structure", str(li2s_cif))
    assert untrusted.returncode != 0 and "ionscreen models trust" in untrusted.stderr
    ionscreen("models", "trust", str(tiny_model_copy), check=True)
    ok = ionscreen("models", "check", str(tiny_model_copy), "--structure", str(li2s_cif), check=True)
    assert "covered" in ok.stdout
    bad = ionscreen("models", "check", str(tiny_model_copy), "--structure", str(llzo_like_poscar))
    assert bad.returncode == 1
    assert "La" in bad.stderr and "Zr" in bad.stderr and "O" in bad.stderr
    js = json.loads(ionscreen("models", "check", str(tiny_model_copy), "-s", str(llzo_like_poscar), "--json").stdout)
    assert js["missing"] == ["O", "Zr", "La"] and js["covered"] is False


def test_models_check_bad_structure_file(tiny_model_copy, tmp_path):
    ionscreen("models", "trust", str(tiny_model_copy), check=True)
    garbage = _write(tmp_path / "broken.cif", "data_x\n_cell_length_a 5\nloop_\n_atom_site_label\n")
    proc = ionscreen("models", "check", str(tiny_model_copy), "--structure", str(garbage))
    assert proc.returncode == 2 and "broken.cif" in proc.stderr
    proc = ionscreen("models", "check", str(tiny_model_copy), "--structure", str(tmp_path / "missing.cif"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_models_list_shows_every_kind(tiny_model_file, tiny_model_copy, tmp_path, settings):
    from mlip import foundation
    from mlip.trust import sha256_file

    # a trusted file, a registered model, and an untrusted pre-placed foundation file
    ionscreen("models", "trust", str(tiny_model_copy), check=True)
    ionscreen("models", "register", str(tiny_model_copy), "--name", "lipscl-tiny", "--alias", "production", check=True)
    other = tmp_path / "other.model"
    other.write_bytes(tiny_model_file.read_bytes())
    cached = foundation.expected_cache_path("small", settings.model_cache_dir)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(tiny_model_file.read_bytes() + b"\0")  # different hash, still untrusted
    listing = json.loads(ionscreen("models", "list", "--json", check=True).stdout)
    by_ref = {m["ref"]: m for m in listing}
    assert by_ref["models:/lipscl-tiny/1"]["aliases"] == ["models:/lipscl-tiny@production"]
    assert by_ref["models:/lipscl-tiny/1"]["elements"] == ["Li", "P", "S", "Cl"]
    assert by_ref["mace-mp:small"]["trusted"] is False and by_ref["mace-mp:small"]["sha256"] == sha256_file(cached)
    trusted_file = by_ref[str(tiny_model_copy.resolve())]
    assert trusted_file["sha256"] == sha256_file(tiny_model_copy)
    for m in (trusted_file, by_ref["models:/lipscl-tiny/1"]):
        assert m["n_params"] > 1000 and m["dtype"] == "float64"
    text = ionscreen("models", "list", check=True).stdout
    assert "UNTRUSTED" in text and "models:/lipscl-tiny@production" in text


def test_untrust_removes(tiny_model_copy):
    ionscreen("models", "trust", str(tiny_model_copy), check=True)
    ionscreen("models", "untrust", str(tiny_model_copy), check=True)
    proc = ionscreen("models", "info", str(tiny_model_copy))
    assert proc.returncode == 1 and "not trusted" in proc.stderr


def test_models_check_refuses_a_structure_without_atoms(tiny_model_copy, tmp_path):
    """A 0-atom POSCAR was reported as "covered" (every element of nothing is covered)."""
    ionscreen("models", "trust", str(tiny_model_copy), check=True)
    empty = _write(tmp_path / "POSCAR", "empty\n1.0\n5 0 0\n0 5 0\n0 0 5\nLi\n0\nDirect\n")
    proc = ionscreen("models", "check", str(tiny_model_copy), "--structure", str(empty))
    assert proc.returncode == 2 and "covered" not in proc.stdout
    assert "POSCAR" in proc.stderr and "atom" in proc.stderr
