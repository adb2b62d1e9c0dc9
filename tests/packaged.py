"""Helpers of the tests of packaged-weights families (``chgnet:``, ``sevennet:``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ase import Atoms


def li2s(*, primitive: bool = False) -> Atoms:
    """Antifluorite Li2S: the conventional cell (12 atoms) or the primitive one (3 atoms)."""
    from ase.spacegroup import crystal

    return crystal(["S", "Li"], basis=[(0, 0, 0), (0.25, 0.25, 0.25)], spacegroup=225,
                   cellpar=[5.70, 5.70, 5.70, 90, 90, 90], primitive_cell=primitive)


def altered_copy(source: Path, target: Path) -> Path:
    """``source`` copied to ``target`` with one byte flipped in the middle of the file (deep inside the weights)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    with target.open("r+b") as fh:
        fh.seek(target.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))
    return target


def li2s_vacancy_hop(tmp_path: Path, model_ref: str) -> tuple[dict, str]:
    """``ionscreen neb`` on Li2S (23-atom cell: the Li⁺-vacancy hop) with ``model_ref``, 3 images, ``--json``: the
    first hop's document and the command's stderr."""
    from ase.io import write
    from typer.testing import CliRunner

    from workflows.cli.neb import app

    write(tmp_path / "Li2S.cif", li2s(primitive=True))
    result = CliRunner().invoke(app, [str(tmp_path / "Li2S.cif"), "--ion", "Li", "--model", model_ref,
                                      "--min-length-A", "6.0", "--images", "3", "--max-steps", "80",
                                      "--device", "cpu", "--out", str(tmp_path / "neb"), "--json"])
    assert result.exit_code == 0, result.output
    hop = json.loads(result.stdout)["hops"][0]
    assert hop["converged"] and hop["n_atoms"] == 23 and hop["mechanism"] == "vacancy"
    return hop, result.stderr


def packaged_listing(settings, family: str, weights: dict) -> None:
    """``models list`` shows every packaged weight set of ``family``, trusted, with its hash and elements."""
    from mlip.catalog import list_models

    listing = {info.ref: info for info in list_models(settings)}
    for name, entry in weights.items():
        info = listing[f"{family}:{name}"]
        assert info.trusted and info.family == family and info.sha256 == entry.sha256
        assert {"Mg", "Zn"} <= set(info.elements) and info.dtype == "float32"
