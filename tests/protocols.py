"""Transport protocols small enough for tests (about orchestration and plumbing, not physics)."""

from __future__ import annotations

import copy

_SHORT = {
    "temperatures_K": [600.0],
    "timestep_fs": 2.0,
    "equilibration_ps": 0.05,
    "production_ps": 0.3,
    "sample_interval_fs": 10.0,
    "checkpoint_interval_ps": 0.1,
    "supercell_min_length_A": 7.0,
    "relax_max_steps": 20,
    "analysis": {"n_blocks": 4, "fit_min_start_fs": 50.0, "min_hops": 1},
}


def short_protocol(**changes) -> dict:
    """A fresh dict of protocol fields (one temperature, 0.3 ps of production) with ``changes`` applied."""
    return {**copy.deepcopy(_SHORT), **changes}
