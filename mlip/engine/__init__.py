"""The lean MD engine for MACE (:mod:`mlip.engine.core`), its faster convolution kernels
(:mod:`mlip.engine.kernels`) and measured batch sizes / process layouts (:mod:`mlip.engine.tuning`).
Many MD segments with checkpoints and frame logs: :func:`screening.transport.batch_md.run_md_batch`."""

from mlip.engine.core import (
    DEFAULT_SKIN_A,
    NVE_DRIFT_BOUND_EV_PER_ATOM_PS,
    BatchTooLarge,
    GraphBatch,
    Integrator,
    LeanMACE,
    MDBatch,
    SystemSpec,
)

__all__ = ["LeanMACE", "MDBatch", "SystemSpec", "Integrator", "GraphBatch", "BatchTooLarge",
           "NVE_DRIFT_BOUND_EV_PER_ATOM_PS", "DEFAULT_SKIN_A"]
