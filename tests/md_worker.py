"""Run one MD segment in its own process (so a test can SIGKILL it mid-run). Args: MODEL WORKDIR."""

import sys

from ase.spacegroup import crystal

from mlip.loader import load_model
from screening.transport.md import MDSegment, run_md
from screening.transport.protocol import Thermostat

SEGMENT = MDSegment(
    temperature_K=600.0,
    timestep_fs=2.0,
    equilibration_steps=40,
    production_steps=600,
    sample_every_steps=4,
    checkpoint_every_steps=40,
    thermostat=Thermostat.BUSSI,
    equilibration_thermostat=Thermostat.LANGEVIN,
    thermostat_time_constant_fs=100.0,
    seed=42,
    mobile_symbol="Li",
)


def li2s_cell():
    atoms = crystal(["S", "Li"], [(0, 0, 0), (0.25, 0.25, 0.25)], spacegroup=225, cellpar=[5.71] * 3 + [90] * 3)
    return atoms * (2, 2, 1)


if __name__ == "__main__":
    model_path, workdir = sys.argv[1], sys.argv[2]
    atoms = li2s_cell()
    atoms.calc = load_model(model_path).calculator(task="md")
    outcome = run_md(atoms, SEGMENT, workdir)
    print(outcome.status.value, outcome.steps_done, outcome.frames, outcome.resumed_from_step)
