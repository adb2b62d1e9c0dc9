"""Run a batch of MD segments on the lean engine in its own process (a test SIGKILLs it). Args: MODEL WORKDIR [DTYPE].

Also the engine tests' shared helpers: small cells and a model on a pretend device that holds few atoms.
"""

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from md_worker import SEGMENT, li2s_cell
from mlip.engine import BatchTooLarge, LeanMACE
from mlip.loader import load_model
from screening.transport.batch_md import MDJob, run_md_batch

# three systems that differ in size, temperature, seed and thermostat
SEGMENTS = [
    replace(SEGMENT, production_steps=480, checkpoint_every_steps=40),
    replace(SEGMENT, production_steps=360, checkpoint_every_steps=80, temperature_K=800.0, seed=7),
    replace(SEGMENT, production_steps=480, checkpoint_every_steps=40, temperature_K=500.0,
            thermostat=SEGMENT.equilibration_thermostat, seed=3),
]


def unit_cell():
    cell = li2s_cell()[:12]  # one conventional antifluorite cell
    cell.set_cell(np.diag([5.71, 5.71, 5.71]))
    return cell


def structures():
    rattled = unit_cell()
    rattled.rattle(0.05, seed=2)
    double = unit_cell() * (2, 1, 1)
    return [unit_cell(), double, rattled]


class SmallDeviceMACE(LeanMACE):
    """A model on a pretend device that holds ``limit`` atoms: larger batches raise BatchTooLarge, as an OOM would."""

    def __init__(self, module, *, limit: int, **kwargs):
        super().__init__(module, **kwargs)
        self.limit = limit

    def forward(self, graph, edge_index, shifts):
        if graph.n_atoms > self.limit:
            raise BatchTooLarge(f"out of memory on {graph.n_atoms} atoms (the test device holds {self.limit})")
        return super().forward(graph, edge_index, shifts)


def jobs(workdir) -> list[MDJob]:
    return [MDJob(atoms, seg, Path(workdir) / f"system{k}") for k, (atoms, seg) in enumerate(zip(structures(), SEGMENTS))]


if __name__ == "__main__":
    model_path, workdir = sys.argv[1], sys.argv[2]
    dtype = sys.argv[3] if len(sys.argv) > 3 else "float32"
    model = LeanMACE.from_loaded(load_model(model_path), device="cpu", dtype=dtype)
    for outcome in run_md_batch(jobs(workdir), model):
        print(outcome.status.value, outcome.steps_done, outcome.frames, outcome.resumed_from_step)
