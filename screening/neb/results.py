"""Result documents of the NEB stage: one per hop, one per structure (pydantic, units in names).

Large data (the band's images, the energy profile) live in files referenced from here.
"""

from __future__ import annotations

import datetime as _dt
import enum
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mlip.util import canonical_sha256
from screening.provenance import Provenance as BaseProvenance
from screening.summaries import Measured, NebSummary


class NebFlag(enum.StrEnum):
    """Quality flags of a hop result; any flag means the number needs a human look."""

    NEB_NOT_CONVERGED = "neb_not_converged"  # band max force above fmax after the step budget
    ENDPOINT_NOT_CONVERGED = "endpoint_not_converged"  # an endpoint relaxation hit its step budget
    ENDPOINT_DRIFTED = "endpoint_drifted"  # the moving ion left its site while relaxing an endpoint
    INTERMEDIATE_MINIMUM = "intermediate_minimum"  # an image lies below both endpoints: not one hop
    HOP_TOO_LONG = "hop_too_long"  # the hop does not fit the supercell; nothing computed
    NEB_FAILED = "neb_failed"  # the calculation raised (e.g. non-finite forces); nothing computed
    NOT_COMPUTED = "not_computed"  # skipped (e.g. beyond --max-hops)


class PercolationFlag(enum.StrEnum):
    INCOMPLETE_HOPS = "incomplete_hops"  # some hop classes have no barrier: thresholds are upper bounds
    USES_FLAGGED_HOPS = "uses_flagged_hops"  # a hop with a barrier but a quality flag is in the network
    NO_HOPS = "no_hops"


def parameters_hash(parameters: dict) -> str:
    """SHA-256 of the parameters as canonical JSON (sorted keys)."""
    return canonical_sha256(json.loads(json.dumps(parameters, default=str)))  # enums and paths as their text


class Provenance(BaseProvenance):
    """Model and code (the base), plus the energy/force engine, its device and precision, and the NEB parameters."""

    model_config = ConfigDict(extra="ignore")  # NEB documents have always tolerated extra provenance keys
    calculator: str = Field(description="Name of the energy/force engine (ASE calculator class or batched MACE).")
    device: str | None = Field(None, description="Device the model ran on.")
    dtype: str | None = Field(None, description="Floating-point precision of the model evaluation.")
    batch_size: int | None = Field(None, description="Images per model call for the band (batched MACE only).")
    batch_size_source: str | None = Field(None, description="measured, cache or configured.")
    parameters: dict[str, Any] = Field(description="All NEB parameters, as data.")
    parameters_sha256: str = Field(description="SHA-256 of the canonical JSON of `parameters`.")
    created_utc: str = Field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))


class NebHopResult(BaseModel):
    """Climbing-image NEB of one hop."""

    name: str = Field(description="Identifier of this hop within its run (file stem of its outputs).")
    hop_label: int | None = Field(None, description="Symmetry class of the hop in the structure's hop network.")
    ion: str | None = Field(None, description="Working ion that moves.")
    moving_index: int | None = Field(None, description="Index of the moving atom in both endpoints (NEB from given endpoints).")
    mechanism: str | None = Field(None, description="vacancy or interstitial.")
    hop_length_A: float | None = Field(None, description="Straight-line start-to-end distance of the moving ion, Å.")
    multiplicity: int | None = Field(None, description="Hops of this symmetry class per unit cell.")
    start_frac: list[float] | None = Field(None, description="Start site, unit-cell fractional coordinates.")
    end_frac: list[float] | None = Field(None, description="End site (unwrapped), unit-cell fractional coordinates.")
    barrier_forward_eV: float | None = Field(
        None, description="Saddle energy minus initial-state energy, eV (climbing image). None unless converged.")
    barrier_backward_eV: float | None = Field(
        None, description="Saddle energy minus final-state energy, eV. None unless converged.")
    barrier_forward_interval_eV: tuple[float, float] | None = Field(
        None, description="Numerical interval of the forward barrier, eV: spans the climbing-image value and the "
                          "force-interpolated maximum of the profile (band resolution only; excludes model error).")
    barrier_backward_interval_eV: tuple[float, float] | None = Field(
        None, description="Numerical interval of the backward barrier, eV (as for the forward one).")
    energy_initial_eV: float | None = Field(None, description="Relaxed initial-state energy of the supercell, eV.")
    energy_final_eV: float | None = Field(None, description="Relaxed final-state energy of the supercell, eV.")
    converged: bool = Field(False, description="Band (and both endpoints) reached the force tolerance within budget.")
    max_force_eV_A: float | None = Field(None, description="Largest per-atom NEB force on the band at the end, eV/Å.")
    fmax_eV_A: float = Field(description="Force tolerance of the band, eV/Å.")
    n_images: int = Field(description="Number of moving images (endpoints excluded).")
    steps: int = Field(0, description="Optimizer steps taken on the band.")
    endpoint_steps: list[int] = Field(default_factory=list, description="Optimizer steps for the initial and final state.")
    n_atoms: int | None = Field(None, description="Atoms in the NEB supercell.")
    supercell_repeats: list[int] | None = Field(None, description="Repetitions of the unit cell along a, b, c.")
    supercell_min_width_A: float | None = Field(None, description="Smallest face-to-face width of the supercell, Å.")
    flags: list[NebFlag] = Field(default_factory=list, description="Quality flags; empty means none raised.")
    message: str | None = Field(None, description="Why a hop was not computed or failed, in words.")
    profile_file: str | None = Field(None, description="JSON file: reaction coordinate (Å) and energies (eV) of the images.")
    band_file: str | None = Field(None, description="extxyz file with the final band images.")
    plot_file: str | None = Field(None, description="PNG plot of the energy profile.")
    wall_time_s: float | None = Field(None, description="Wall time of this hop, s.")
    provenance: Provenance | None = None

    @property
    def percolation_barrier_eV(self) -> float | None:
        """Barrier to cross this hop in either direction (the larger of forward and backward), eV."""
        if self.barrier_forward_eV is None or self.barrier_backward_eV is None:
            return None
        return max(self.barrier_forward_eV, self.barrier_backward_eV)

    @property
    def percolation_barrier_interval_eV(self) -> tuple[float, float] | None:
        if self.barrier_forward_interval_eV is None or self.barrier_backward_interval_eV is None:
            return None
        (f_lo, f_hi), (b_lo, b_hi) = self.barrier_forward_interval_eV, self.barrier_backward_interval_eV
        return max(f_lo, b_lo), max(f_hi, b_hi)


class PercolationResult(BaseModel):
    """Lowest barrier at which the computed hops connect into a periodic 1D / 2D / 3D network."""

    barrier_1d_eV: float | None = Field(None, description="Lowest barrier giving a network periodic in 1 dimension, eV.")
    barrier_2d_eV: float | None = Field(None, description="Lowest barrier giving a 2D-periodic network, eV.")
    barrier_3d_eV: float | None = Field(None, description="Lowest barrier giving a 3D-periodic network, eV.")
    barrier_1d_interval_eV: tuple[float, float] | None = Field(
        None, description="1D threshold recomputed with every hop at the low / high end of its barrier interval, eV.")
    barrier_2d_interval_eV: tuple[float, float] | None = Field(None, description="As for 1D, eV.")
    barrier_3d_interval_eV: tuple[float, float] | None = Field(None, description="As for 1D, eV.")
    hop_labels_1d: list[int] = Field(default_factory=list, description="Hop classes in the network at the 1D threshold.")
    hop_labels_2d: list[int] = Field(default_factory=list, description="Hop classes in the network at the 2D threshold.")
    hop_labels_3d: list[int] = Field(default_factory=list, description="Hop classes in the network at the 3D threshold.")
    edge_barrier: str = Field(
        "max(forward, backward) per hop",
        description="Barrier assigned to a hop when growing the network (crossable both ways).")
    flags: list[PercolationFlag] = Field(default_factory=list)


class NebStructureResult(BaseModel):
    """NEB over every distinct hop of one structure, with percolation barriers."""

    formula: str = Field(description="Reduced formula of the structure as given.")
    ion: str = Field(description="Working ion.")
    mechanism: str = Field(description="vacancy or interstitial.")
    max_hop_length_A: float = Field(description="Hops up to this length were enumerated, Å.")
    n_ion_sites: int = Field(description="Ion sites in the unit cell (nodes of the hop network).")
    n_distinct_hops: int = Field(description="Symmetry-distinct hops found.")
    hops: list[NebHopResult]
    percolation: PercolationResult
    provenance: Provenance

    def summary(self) -> NebSummary:
        """What the candidate is ranked by: the lowest converged barrier and the percolation barriers with intervals."""
        converged = [h for h in self.hops if h.converged and h.barrier_forward_eV is not None]
        barriers = [max(h.barrier_forward_eV, h.barrier_backward_eV or h.barrier_forward_eV) for h in converged]
        p = self.percolation
        return NebSummary(
            migration_barrier_eV=min(barriers) if barriers else None,
            percolation_1d_eV=Measured(value=p.barrier_1d_eV, ci95=p.barrier_1d_interval_eV),
            percolation_2d_eV=Measured(value=p.barrier_2d_eV, ci95=p.barrier_2d_interval_eV),
            percolation_3d_eV=Measured(value=p.barrier_3d_eV, ci95=p.barrier_3d_interval_eV),
            n_hops_converged=len(converged),
            n_hops_total=len(self.hops),
            flags=sorted({str(f) for h in self.hops for f in h.flags} | {str(f) for f in p.flags}),
        )
