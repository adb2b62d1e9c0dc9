"""The lean MD engine for MACE: many systems advanced together on MACE's own forward, one model call per step.

Modules: :mod:`~mlip.engine.state` (the batched state), :mod:`~mlip.engine.integrators` (NVE, Bussi and
Langevin as pure step functions), :mod:`~mlip.engine.noise` (their random numbers, drawn ahead in blocks),
:mod:`~mlip.engine.neighbours` (skin neighbour lists and the graph tensors), :mod:`~mlip.engine.mace_model`
(the MACE adapter), :mod:`~mlip.engine.batch` (the batch that ties them together), plus faster convolution
kernels (:mod:`~mlip.engine.kernels`) and measured batch sizes / process layouts (:mod:`~mlip.engine.tuning`).
Many MD segments with checkpoints and frame logs: :func:`screening.transport.batch_md.run_md_batch`.

Why not torch-sim, whose layout this follows (``state.py``, ``integrators/``): its releases that know Bussi
thermostats need Python ≥ 3.12 (we run 3.11), the 3.11-compatible 0.3 rebuilds neighbour lists every step
and has no Bussi thermostat, and neither writes our frame log or checkpoints. Why not ASE: see
:mod:`~mlip.engine.mace_model`.

The model runs in float32 by default; positions, momenta and the integrators run in float64 (NVE drift in
float32 is bounded by ``NVE_DRIFT_BOUND_EV_PER_ATOM_PS``, checked by a test). The integrators are ASE's
``VelocityVerlet``, ``Bussi`` and ``Langevin`` drawing the same random numbers in the same order from a
per-system numpy generator, so a system's trajectory does not depend on the batch it runs in beyond
rounding: BLAS rounds a row's last bit differently depending on the matrix shape, so batch composition
leaves traces at 1e-16 relative (tests check 1e-11 Å after 25 steps). For bitwise resumption the batch
runner changes a batch's composition only at checkpoints of all its systems. On GPUs, atomic scatter-adds
make the last bits vary from run to run, so resumption there is statistical, not bitwise.
"""

from mlip.engine.batch import MDBatch, SystemSpec
from mlip.engine.integrators import NVE_DRIFT_BOUND_EV_PER_ATOM_PS, Integrator
from mlip.engine.mace_model import BatchTooLarge, LeanMACE
from mlip.engine.neighbours import DEFAULT_SKIN_A, GraphBatch

__all__ = ["LeanMACE", "MDBatch", "SystemSpec", "Integrator", "GraphBatch", "BatchTooLarge",
           "NVE_DRIFT_BOUND_EV_PER_ATOM_PS", "DEFAULT_SKIN_A"]
