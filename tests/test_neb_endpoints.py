"""NEB from two given endpoint structures (`ionscreen neb --endpoints`): the textbook EMT barrier through the
function and the command, the moving-atom choice, the as-given path, and clear refusals of bad pairs."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from ase import Atoms
from ase.build import add_adsorbate, fcc100
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from typer.testing import CliRunner

from mlip.errors import InputError
from screening.neb import (
    EndpointError,
    NebParameters,
    PathConvention,
    check_endpoint_pair,
    neb_for_endpoint_pair,
)
from workflows.cli.neb import app

# ASE's NEB tutorial (Au adatom hollow -> hollow on Al(100), ase-lib.org/tutorials/neb/diffusion.html), run with
# the current ASE EMT: 0.374 eV (tests/test_neb_emt.py runs the tutorial's script live and pins our driver to it
# within 0.01 eV; the constraints tutorial quotes 0.35 eV from an older EMT).
TUTORIAL_BARRIER_EV = 0.374


def au_on_al100(periodic_z: bool = False):
    """The tutorial's endpoints; with ``periodic_z`` the cell is periodic along z too (a structure file holds a
    crystal): the 8 Å of vacuum exceed EMT's 5.9 Å neighbour radius, so nothing changes."""
    slab = fcc100("Al", size=(2, 2, 3))
    add_adsorbate(slab, "Au", 1.7, "hollow")
    slab.center(axis=2, vacuum=4.0)
    slab.set_constraint(FixAtoms(mask=slab.get_tags() > 1))
    slab.info.pop("adsorbate_info", None)
    if periodic_z:
        slab.pbc = True
    start, end = slab.copy(), slab.copy()
    end[-1].x += end.get_cell()[0, 0] / 2
    return start, end


def write_pair(tmp_path, initial, final, names=("initial.extxyz", "final.extxyz")):
    import ase.io

    paths = [tmp_path / name for name in names]
    for atoms, path in zip((initial, final), paths):
        ase.io.write(path, atoms, format="extxyz")
    return paths


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def tutorial_pair():
    start, end = au_on_al100()
    pair = check_endpoint_pair(start, end, names=("start", "end"))
    return pair, neb_for_endpoint_pair(pair, EMT(), NebParameters(n_images=3))


def test_function_reproduces_the_tutorial_barrier_and_chooses_the_adatom(tutorial_pair):
    from screening.neb.results import parameters_hash

    pair, result = tutorial_pair
    start = pair.initial
    assert pair.moving_index == len(start) - 1 and pair.moving_symbol == "Au" and pair.moving_index_chosen
    assert pair.hop_length_A == pytest.approx(start.cell[0, 0] / 2)
    assert pair.runner_up_displacement_A == 0.0
    assert "atom 12 (Au) moves the most" in pair.describe_choice()

    assert result.converged and result.flags == [] and result.max_force_eV_A <= 0.05
    assert abs(result.barrier_forward_eV - TUTORIAL_BARRIER_EV) < 0.01
    assert result.barrier_forward_eV == pytest.approx(result.barrier_backward_eV, abs=2e-3)  # equivalent hollows
    assert result.ion == "Au" and result.moving_index == 12
    assert result.hop_length_A == pytest.approx(pair.hop_length_A)
    assert result.endpoint_steps[0] > 0  # the endpoints were relaxed, the adatom free
    # minimum image is the default path: the parameters (and their hash) are those of any other NEB run
    assert result.provenance.parameters == NebParameters(n_images=3).model_dump(mode="json")
    assert result.provenance.parameters_sha256 == parameters_hash(NebParameters(n_images=3).model_dump(mode="json"))


def test_command_json_reproduces_the_tutorial_barrier(tmp_path, tutorial_pair):
    start, end = au_on_al100(periodic_z=True)
    first, second = write_pair(tmp_path, start, end)
    out = tmp_path / "out"
    result = invoke("--endpoints", first, second, "--model", "ase:emt", "--images", "3", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["converged"] and document["flags"] == []
    assert abs(document["barrier_forward_eV"] - TUTORIAL_BARRIER_EV) < 0.01
    assert document["ion"] == "Au" and document["moving_index"] == 12 and document["n_atoms"] == 13
    assert document["provenance"]["model_ref"] == "ase:emt" and document["provenance"]["model_sha256"]
    assert "atom 12 (Au) moves the most between the endpoints" in result.stderr
    # the same barrier as the function on the tutorial's slab (not periodic along z): the file changed nothing
    assert document["barrier_forward_eV"] == pytest.approx(tutorial_pair[1].barrier_forward_eV, abs=1e-4)
    assert json.loads((out / "neb_endpoints.json").read_text())["barrier_forward_eV"] == document["barrier_forward_eV"]
    assert (out / "band.png").read_bytes()[:4] == b"\x89PNG"
    assert len(json.loads((out / "band.profile.json").read_text())["energy_eV"]) == 5

    table = invoke("--endpoints", first, second, "--model", "ase:emt", "--images", "3", "--max-steps", "1",
                   "--moving-index", "12", "--ion", "Au", "--out", out)
    assert table.exit_code == 0, table.output
    assert "neb_not_converged" in table.stdout and "atom 12 (Au) hops 2.86 Å" in table.stdout
    assert "was given as the moving atom" in table.stderr


def test_as_given_path_follows_the_written_displacement():
    """The adatom written a whole cell vector away: the same site by the minimum image, one cell hop as given."""
    from screening.neb import run_band

    start, end = au_on_al100()
    a = start.cell[0, 0]
    end.positions[-1, 0] = start.positions[-1, 0] - a
    with pytest.raises(EndpointError, match="moves only 0.000 Å"):
        check_endpoint_pair(start, end)
    along = check_endpoint_pair(start, end, moving_index=12, path="as-given")
    assert along.hop_length_A == pytest.approx(a) and along.path is PathConvention.AS_GIVEN
    outcome = run_band(along.initial, along.final, EMT(), NebParameters(n_images=3, max_steps=0, relax_endpoints=False),
                       moving_index=12, path="as-given")
    x = [image.positions[12, 0] for image in outcome.images]
    np.testing.assert_allclose(np.diff(x), -a / 4, atol=0.05)  # evenly along the written path, not in place
    with pytest.raises(InputError, match="as-given path needs the index of the moving atom"):
        run_band(start, end, EMT(), path="as-given")
    result = neb_for_endpoint_pair(along, EMT(), NebParameters(n_images=3, max_steps=0, relax_endpoints=False))
    assert result.provenance.parameters["path"] == "as-given" and result.hop_length_A == pytest.approx(a)


@pytest.mark.parametrize("case, pattern", [
    ("order", r"atom 0 is Al in a.xyz but Au in b.xyz \(2 atoms differ\): the same atoms in a different order"),
    ("count", r"a.xyz has 13 atoms and b.xyz has 12: the endpoints must hold the same atoms in the same order"),
    ("composition", r"atom 12 is Au in a.xyz but Ag in b.xyz .*different compositions"),
    ("cell", r"the cells of a.xyz .* and b.xyz .* differ by up to 0.1375 Å, more than 0.001 Å \(CELL_TOLERANCE_A\)"),
    ("overlap", r"b.xyz: atoms 9 \(Al\) and 12 \(Au\) are 0.300 Å apart, less than 0.5 × the sum of their covalent radii"),
    ("host", r"atom 0 \(Al\) moves 1.50 Å between a.xyz and b.xyz, more than 1 Å \(--max-host-displacement-A\)"),
    ("same", r"the atom that moves the most, atom 0 \(Al\), moves only 0.000 Å between a.xyz and b.xyz, less than "
             r"0.5 Å \(MIN_HOP_LENGTH_A\): the endpoints are the same site, not a hop"),
    ("fixed", r"a.xyz fixes atom 12, the moving atom"),
])
def test_bad_pairs_are_refused_with_the_names_and_the_limit(case, pattern):
    start, end = au_on_al100()
    if case == "order":
        end = end[[12] + list(range(1, 12)) + [0]]
    elif case == "count":
        end = end[:-1]
    elif case == "composition":
        end[-1].symbol = "Ag"
    elif case == "cell":
        end.set_cell(end.cell * 1.01, scale_atoms=False)
    elif case == "overlap":
        below = int(np.argmin(np.linalg.norm(end.positions[:-1] - end.positions[-1], axis=1)))
        end.positions[-1] = end.positions[below] + [0, 0, 0.3]
    elif case == "host":
        end.positions[0, 2] -= 1.5
    elif case == "same":
        end = start.copy()
    elif case == "fixed":
        start.set_constraint(FixAtoms(indices=[12]))
    with pytest.raises(EndpointError, match=pattern):
        check_endpoint_pair(start, end, names=("a.xyz", "b.xyz"))


def test_hop_limits_and_the_moving_index():
    start, end = au_on_al100()
    with pytest.raises(EndpointError, match=r"moves 2.86 Å between a and b \(minimum-image path\), further than one "
                                            r"hop: the limit is 2 Å \(--max-hop-length-A\)"):
        check_endpoint_pair(start, end, names=("a", "b"), max_hop_length_A=2.0)
    # the default limit (10 Å) in a large empty box
    box = Atoms("Li2", positions=[[1, 1, 1], [15, 15, 15]], cell=[30, 30, 30], pbc=True)
    far = box.copy()
    far.positions[0, 0] += 11.0
    with pytest.raises(EndpointError, match=r"moves 11.00 Å .* the limit is 10 Å"):
        check_endpoint_pair(box, far)
    near = box.copy()
    near.positions[0, 0] += 3.0
    assert check_endpoint_pair(box, near).moving_index == 0
    with pytest.raises(EndpointError, match="moving index 13 is out of range: a has 13 atoms"):
        check_endpoint_pair(start, end, names=("a", "b"), moving_index=13)
    with pytest.raises(EndpointError, match=r"the given moving atom, atom 3, is Al .*not the ion Au"):
        check_endpoint_pair(start, end, moving_index=3, ion="Au")
    with pytest.raises(EndpointError, match=r"the atom that moves the most, atom 12, is Au .*not the ion Li"):
        check_endpoint_pair(start, end, ion="Li")
    assert issubclass(EndpointError, InputError)


def test_command_refuses_bad_input_naming_the_file(tmp_path):
    start, end = au_on_al100(periodic_z=True)
    first, second = write_pair(tmp_path, start, end)
    (bad_cell := end.copy()).set_cell(end.cell * 1.01, scale_atoms=False)
    _, other_cell = write_pair(tmp_path, start, bad_cell, names=("x.extxyz", "scaled.extxyz"))
    garbage = tmp_path / "garbage.extxyz"
    garbage.write_text("this is not\na structure\n")
    cases = [
        (["--endpoints", first, other_cell], rf"the cells of {first} .* and {other_cell} .* differ by up to"),
        (["--endpoints", first, second, "--max-hop-length-A", "2"], r"further than one hop: the limit is 2 Å"),
        (["--endpoints", first, garbage], rf"{garbage}:1: expected the atom count of an xyz frame"),
        (["--endpoints", first, tmp_path / "missing.extxyz"], r"missing.extxyz does not exist"),
        (["--endpoints", first, second, "--path", "sideways"], r"--path must be one of minimum-image, as-given"),
        (["--endpoints", first, second, "--min-length-A", "9"], r"--min-length-A only apply to a STRUCTURE"),
        ([first, "--ion", "Au", "--moving-index", "3"], r"--moving-index only apply to --endpoints"),
        ([first, "--endpoints", first, second], r"give either a STRUCTURE .* or --endpoints"),
        ([first], r"--ion is required with a STRUCTURE"),
    ]
    for args, pattern in cases:
        result = invoke(*args, "--model", "ase:emt")
        assert isinstance(result.exception, InputError), (args, result.output)
        assert re.search(pattern, str(result.exception)), str(result.exception)


def test_console_error_is_one_line_without_traceback(tmp_path):
    start, end = au_on_al100(periodic_z=True)
    first, second = write_pair(tmp_path, start, end[:-1])
    proc = subprocess.run([sys.executable, "-m", "workflows.cli", "neb", "--endpoints", str(first), str(second),
                           "--model", "ase:emt"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (f"error: {first} has 13 atoms and {second} has 12: the endpoints must hold the "
                                   "same atoms in the same order")
