"""What ionscreen computes per candidate: the stages of a screening job, one task each."""

from __future__ import annotations

import enum


class Stage(enum.StrEnum):
    TRANSPORT = "transport"  # MD at several temperatures: D*, σ, Ea with intervals (screening.transport)
    NEB = "neb"  # climbing-image NEB of the distinct hops: barriers and percolation (screening.neb)
