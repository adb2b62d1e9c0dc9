"""The Li⁺-vacancy hop barrier in Li2S, computed the same way with CP2K and with any model.

The cell is the one ``ionscreen neb Li2S.cif --min-length-A 6`` builds: the primitive antifluorite cell
(a = 5.70 Å) repeated 2×2×2, one Li removed (23 atoms). The shortest Li–Li hop (a/2 along ⟨100⟩) crosses the
shared edge of two S4 tetrahedra, and the hop's mirror symmetry puts its saddle on the plane half way. The
barrier is measured as in issue 16: the endpoint is relaxed with every atom free; the hopping Li is then put
at the midpoint of its site and the vacancy and held there while the rest relaxes; the barrier is the
energy difference. With the hopping Li fixed in all three directions this is an upper bound on the saddle
(it cannot leave the straight line), the same bound for every method, so CP2K and models compare like for
like. Cell fixed; BFGS to ``--fmax``.

CP2K (PBE/GTH, DZVP-MOLOPT-SR, 400/50 Ry, Fermi–Dirac 300 K, k-mesh ≥ 9 Å: the DZVP labels' settings; the
cell charged −1, a Li⁺ vacancy, see :data:`CP2K_CHARGE`) keeps one CP2K shell through each relaxation, every
SCF starting from the previous wavefunction. A CP2K step costs minutes on this machine, so with ``--prerelax
MODEL`` each relaxation starts from the structure that model relaxes to (the relaxed CP2K minimum does not
depend on where the relaxation starts, only the number of steps does), and stop at 0.1 eV/Å: a force f left
on a mode of stiffness k (≳ 2 eV/Å² here) leaves about f²/2k ≲ 3 meV in the energy::

    OMP_NUM_THREADS=1 python -m training.finetune.vacancy_barrier cp2k --prerelax bundled:lipscl-student \
        --fmax 0.1 --out training/datasets/lipscl-dzvp/barrier-cp2k
    python -m training.finetune.vacancy_barrier bundled:lipscl-student --out /tmp/barrier-student

Writes ``OUT/barrier.json`` (energies, barrier, steps, settings) and ``OUT/endpoint.extxyz``, ``OUT/midpoint.extxyz``
(the relaxed structures with their energies and forces). Relaxation trajectories go to ``OUT/*.traj``; a rerun
continues from the last structure of each.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from ase import Atoms

#: Charge of the CP2K cell: the vacancy of a Li⁺ ion, not of a neutral Li atom (which would leave a hole in
#: the S 3p band and an open shell, at twice the cost). CP2K adds the neutralising background; both states of
#: the hop carry it, so it cancels in the barrier. The models, which know no charge, see the same 23 atoms.
CP2K_CHARGE = -1

#: Antifluorite Li2S lattice constant used for every method (experimental, room temperature), Å.
LATTICE_A = 5.70


def vacancy_cell() -> tuple[Atoms, int, np.ndarray]:
    """The 23-atom cell with one Li vacancy, the index of the hopping Li, and the midpoint (Å) of its hop."""
    from ase.spacegroup import crystal
    from pymatgen.io.ase import AseAtomsAdaptor

    from screening.neb.hops import find_hops
    from screening.neb.supercell import build_endpoints

    primitive = crystal(["S", "Li"], basis=[(0, 0, 0), (0.25, 0.25, 0.25)], spacegroup=225,
                        cellpar=[LATTICE_A] * 3 + [90] * 3, primitive_cell=True)
    network = find_hops(AseAtomsAdaptor.get_structure(primitive), "Li", mechanism="vacancy")
    hop = network.distinct[0]
    ends = build_endpoints(network.structure, hop, min_length_A=6.0, mechanism="vacancy")
    initial, final, i = ends.initial, ends.final, ends.moving_index
    step = initial.cell.scaled_positions(final.positions[i:i + 1])[0] - initial.cell.scaled_positions(
        initial.positions[i:i + 1])[0]
    step -= np.round(step)  # the minimum image: the hop may cross the cell boundary
    midpoint = initial.positions[i] + 0.5 * initial.cell.cartesian_positions(step[None])[0]
    return initial, i, midpoint


def relax(atoms: Atoms, calc, fmax: float, steps: int, trajectory: Path, fixed: list[int]) -> tuple[Atoms, int]:
    from ase.constraints import FixAtoms
    from ase.io import Trajectory, read
    from ase.optimize import BFGS

    if trajectory.exists() and trajectory.stat().st_size > 0:
        try:  # continue from the last structure of an interrupted relaxation
            atoms.positions = read(str(trajectory), index=-1).positions
        except Exception:  # noqa: BLE001 - a torn last frame: start again
            pass
    atoms.set_constraint(FixAtoms(indices=fixed) if fixed else None)
    atoms.calc = calc
    with Trajectory(str(trajectory), "a", atoms) as traj:
        opt = BFGS(atoms, logfile="-", maxstep=0.1)
        opt.attach(traj)
        converged = opt.run(fmax=fmax, steps=steps)
    if not converged:
        raise RuntimeError(f"relaxation {trajectory.name} did not reach fmax {fmax} eV/Å in {steps} steps")
    return atoms, opt.nsteps


def make_calc(method: str, cell: Atoms, workdir: Path, charge: int = CP2K_CHARGE):
    """``(calculator, description)`` for ``cp2k`` or a model reference; ``cell`` gives CP2K its spin state
    and k-mesh."""
    if method == "cp2k":
        from training.label import Basis, CP2KSettings, Cp2kLabeller, cp2k_calculator, cp2k_version

        settings = CP2KSettings(basis=Basis.DZVP, cutoff_Ry=400.0, rel_cutoff_Ry=50.0, kpoint_min_length_A=9.0)
        charged = cell.copy()
        charged.info["charge"] = charge
        calc, (_, multiplicity), mesh = cp2k_calculator(charged, settings, workdir, stress=False)
        return calc, {"method": "cp2k", "charge": charge, "multiplicity": multiplicity, "version": cp2k_version(),
                      "settings": settings.model_dump(mode="json"),
                      "level_of_theory": Cp2kLabeller(settings).level_of_theory, "kpoint_mesh": list(mesh)}
    from mlip.calculators import Task, make_calculator
    from mlip.config import load_settings
    from mlip.loader import load_model

    loaded = load_model(method, load_settings())
    return make_calculator(loaded, task=Task.RELAX, device="cpu"), {
        "method": method, "model_sha256": loaded.sha256, "family": loaded.family}


def check_scf(output: Path) -> None:
    """Refuse a CP2K barrier if any SCF along either relaxation failed to converge: its forces steered BFGS
    and its energy may be the one reported."""
    from mlip.errors import SimulationFailed
    from training.label import scf_failures

    text = output.read_text(errors="replace") if output.exists() else ""
    if not text:
        raise SimulationFailed(f"{output}: no CP2K output to check the SCF convergence of")
    failed = scf_failures(text)
    if failed:
        raise SimulationFailed(f"{output}: {failed} SCF run(s) did not converge during the relaxations; "
                               "the barrier is not reported (raise max_scf or change the smearing, then rerun)")


def measure(method: str, out: Path, fmax: float = 0.02, steps: int = 200, prerelax: str | None = None,
            charge: int = CP2K_CHARGE) -> dict:
    from ase.io import write

    out.mkdir(parents=True, exist_ok=True)
    cell, moving, midpoint = vacancy_cell()
    start_end = start_mid = None
    if prerelax is not None:
        first = measure(prerelax, out / "prerelax", fmax=min(fmax, 0.02), steps=steps)
        start_end, start_mid = (first["positions_endpoint_A"], first["positions_midpoint_A"])
    calc, about = make_calc(method, cell, out / "work", charge)
    if prerelax is not None:
        about.update(prerelax=prerelax, prerelax_barrier_eV=first["barrier_eV"])
    began = time.perf_counter()
    try:
        start = cell.copy()
        if start_end is not None:
            start.positions = start_end
        endpoint, n_end = relax(start, calc, fmax, steps, out / "endpoint.traj", fixed=[])
        e_end = float(endpoint.get_potential_energy())
        write(out / "endpoint.extxyz", endpoint)
        mid = endpoint.copy()
        if start_mid is not None:
            mid.positions = start_mid
        mid.positions[moving] = midpoint
        mid, n_mid = relax(mid, calc, fmax, steps, out / "midpoint.traj", fixed=[moving])
        e_mid = float(mid.get_potential_energy())
        write(out / "midpoint.extxyz", mid)
    finally:
        if hasattr(calc, "close"):
            calc.close()
    if method == "cp2k":
        check_scf(out / "work" / "cp2k.out")
    doc = {**about, "n_atoms": len(cell), "lattice_A": LATTICE_A, "moving_index": moving,
           "fmax_eV_A": fmax, "endpoint_energy_eV": e_end, "midpoint_energy_eV": e_mid,
           "barrier_eV": e_mid - e_end, "steps_endpoint": n_end, "steps_midpoint": n_mid,
           "wall_s": round(time.perf_counter() - began, 1),
           "positions_endpoint_A": endpoint.positions.tolist(), "positions_midpoint_A": mid.positions.tolist()}
    (out / "barrier.json").write_text(json.dumps(doc, indent=1) + "\n")
    return doc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("method", help="'cp2k' or a model reference (bundled:lipscl-student, chgnet:0.3.0, ...)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--fmax", type=float, default=0.02, help="eV/Å")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--prerelax", help="start each relaxation where this model's ends (for CP2K)")
    parser.add_argument("--charge", type=int, default=CP2K_CHARGE,
                        help="CP2K cell charge: -1 a Li+ vacancy (default), 0 a neutral Li vacancy (a hole, open shell)")
    args = parser.parse_args(argv)
    doc = measure(args.method, args.out, args.fmax, args.steps, args.prerelax, args.charge)
    print(f"{args.method}: Li2S vacancy-hop barrier (hopping Li fixed at the midpoint) {doc['barrier_eV']:.3f} eV "
          f"({doc['steps_endpoint']} + {doc['steps_midpoint']} BFGS steps, {doc['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
