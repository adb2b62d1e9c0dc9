"""Uncertainty-aware ranking of screened candidates: one documented score per candidate from its result summaries.

The score is a weighted sum of standardised components, each taken at the *pessimistic* end of its interval,
minus penalties for quality flags::

    score = w_σ · z_σ + w_Ea · z_Ea + w_barrier · z_barrier − w_flags · Σ_flags penalty(flag)

Components (higher z is better; each z is in units of a fixed physical scale, so a candidate's score does not
depend on which other candidates are in the job and scores are comparable across jobs):

* ``conductivity``: z_σ = log10(σ_lo / 1 mS/cm), σ_lo the LOWER end of the 95% interval of σ(300 K)
  (``TransportSummary.conductivity_300K_mS_cm``; an upper bound alone has σ_lo = 0). One unit = one decade. A lower bound ≤ 0 (an interval consistent with
  no conduction) counts as ``CONDUCTIVITY_FLOOR_mS_cm``. A point value without its interval is not used: the
  component counts as missing (a number without uncertainty is not ranked as if it were certain).
* ``activation_energy``: z_Ea = (0.3 eV − Ea_hi) / 0.1 eV, Ea_hi the UPPER end of the 95% interval of the
  Arrhenius activation energy (``TransportSummary.activation_energy_eV``).
* ``migration_barrier``: z_b = (0.5 eV − b_eff) / 0.1 eV, with the effective percolating barrier
  b_eff = min over the dimensionalities that percolate of (barrier_d + penalty_d): 3D with no penalty, 2D with
  ``RankingWeights.penalty_2d_eV`` (default 0.15 eV), 1D with ``penalty_1d_eV`` (default 0.30 eV). A 1D channel
  is blocked by a single defect or antisite (olivine FePO4 is the textbook case) and a 2D network by stacking
  faults, so a lower-dimensional path must be clearly lower to win. barrier_d is the upper end of the NEB
  numerical interval of ``NebSummary.percolation_<d>d_eV`` when it has one, else the threshold itself. A single hop
  that does not percolate (``migration_barrier_eV`` alone) is not a long-range path: the component counts as
  missing. This component matters most for cathode hosts, whose MD
  at dilute insertion rarely sees hops; it applies wherever NEB ran.

A component applies to the ranking when at least one candidate has a value for it (or when the caller names it).
**Missing values**: a candidate without a usable value for an applicable component gets the worst observed z of that
component minus ``RankingWeights.missing_margin`` (default 1 unit), so it ranks after every candidate that has the
value in that component; the component name is listed in its ``missing`` and the reason in its notes.

**Flags** (union over the candidate's summaries) subtract ``w_flags × FLAG_PENALTIES[flag]`` each (see the table
below; an unknown flag costs ``UNKNOWN_FLAG_PENALTY``). Flags that mean the number itself cannot be trusted
(``unstable_md``, ``framework_melted``, ``neb_failed``) cost as much as several decades of σ; flags that mean
the number is uncertain (``not_diffusive``, ``neb_not_converged``, ``few_temperatures``) cost about one unit.

**Model disagreement** (job spec ``agreement_model``: the same stages run with a second model). For each candidate,
:func:`model_agreement` compares the second model's summaries with the primary model's:

* ``model_disagreement_log10_sigma`` = |log10 σ₁(300 K) − log10 σ₂(300 K)|, in decades, from the two estimates;
* ``model_disagreement_barrier_eV`` = |b₁ − b₂|, eV, b the effective percolating barrier of each model as the
  ``migration_barrier`` component defines it (lowest of barrier_d + penalty_d) but from the thresholds themselves,
  not their interval ends (two estimates are compared, not two pessimistic bounds).

Bounds are not numbers: each figure comes with its :class:`AgreementBasis`. When one model gives only an upper bound
u (σ with no estimate, interval (0, u); NEB thresholds flagged ``not_computed`` or ``incomplete_hops``) and the
other an estimate x above it, the models differ by *at least* f(x) − f(u) (basis ``at_least``); an estimate at or
below the other's bound does not contradict it, and two bounds say nothing: no figure (``consistent_bound``,
``bounds_only``), never an invented one. ``RankingWeights.disagreement`` (default 0: reported, not ranked) subtracts
``w_disagreement × (Δlog10σ / 1 decade + Δb / 0.1 eV)`` from the score, the same units as the components (one
decade or 0.1 eV = one unit), over the figures that exist (an ``at_least`` figure counts as itself). A figure that
does not exist costs nothing and is noted: the penalty is evidence against a candidate, not an imputed value.
Whether a pair of models' disagreement tracks their error is measured, not assumed: ``ionscreen validate A B``
reports spread versus error on each set (``workflows.validate.spread_versus_error``).

**Ties**: scores equal to 1e-9 are ordered by structure hash (then name), and noted. Pure functions over
:class:`screening.summaries.Screened` candidates; no DB, no column names.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mlip.errors import InputError
from screening.summaries import Screened

CONDUCTIVITY_REFERENCE_mS_cm = 1.0  # z_σ = 0 here; one unit per decade
CONDUCTIVITY_FLOOR_mS_cm = 1e-10  # a lower bound at or below zero counts as this
ACTIVATION_ENERGY_REFERENCE_eV = 0.3
ACTIVATION_ENERGY_SCALE_eV = 0.1
BARRIER_REFERENCE_eV = 0.5
BARRIER_SCALE_eV = 0.1
TIE_DECIMALS = 9

#: Penalty per quality flag, in score units (one unit = one decade of σ or 0.1 eV), before ``flag_penalty``.
FLAG_PENALTIES: dict[str, float] = {
    # transport (screening.transport.results.Flag)
    "unstable_md": 3.0,  # atoms too close / exploding / NaN: the numbers may be artefacts
    "framework_melted": 3.0,  # the framework diffuses: σ describes a melt, not the solid
    "framework_disordered": 0.25,  # rotating polyanions or site disorder: a solid still, perhaps not the one intended
    "not_diffusive": 1.0,  # the run never reached the diffusive regime at some temperature: D is a bound there
    "upper_bound": 0.0,  # the number is a bound; its interval starts at zero, which already ranks it pessimistically
    "partly_diffusive": 0.25,  # diffusive along some axes only (a 1D/2D conductor, or caged axes within the run)
    "few_temperatures": 1.0,  # fewer than two usable temperatures: no Arrhenius fit behind σ(300 K) / Ea
    "non_arrhenius": 0.5,  # points scatter beyond their errors around the line: the 300 K extrapolation is shaky
    "few_hops": 0.5,  # too few distinct hops for good statistics
    "short_run": 0.5,  # interval wider than the protocol accepts (the bounds already carry most of this)
    "thermostat_off": 0.5,  # mean temperature off target: the Arrhenius abscissa is off
    "target_not_met": 0.25,  # adaptive run spent its budget before its precision target
    # NEB (screening.neb.results.NebFlag, PercolationFlag)
    "neb_failed": 3.0,  # a hop calculation raised; nothing computed for it
    "neb_not_converged": 1.0,  # band force above tolerance: the barrier is uncertain beyond its interval
    "endpoint_not_converged": 0.5,
    "endpoint_drifted": 0.5,  # the moving ion left its site: the hop may not be the one intended
    "intermediate_minimum": 0.25,  # the path holds another minimum: the barrier is of a composite hop
    "hop_too_long": 0.5,  # a hop did not fit the supercell: the network may be incomplete
    "not_computed": 0.25,  # hops skipped (max_hops): thresholds are upper bounds
    "incomplete_hops": 0.25,
    "uses_flagged_hops": 0.5,
    "no_hops": 1.0,
}
UNKNOWN_FLAG_PENALTY = 0.5
#: Largest value of any ``RankingWeights`` field (weights, penalties in eV, margin).
MAX_RANKING_WEIGHT = 1000.0
#: Every ``RankingWeights`` field: non-negative and at most ``MAX_RANKING_WEIGHT``.
Weight = Annotated[float, Field(ge=0, le=MAX_RANKING_WEIGHT)]


#: NEB flags that make the percolation thresholds upper bounds (hops left out of the network).
NEB_UPPER_BOUND_FLAGS = frozenset({"not_computed", "incomplete_hops"})


class Component(enum.StrEnum):
    CONDUCTIVITY = "conductivity"
    ACTIVATION_ENERGY = "activation_energy"
    MIGRATION_BARRIER = "migration_barrier"


class RankingWeights(BaseModel):
    """Weights of the score components and the dimensional penalties of percolating paths (job spec ``ranking:``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    conductivity: Weight = Field(1.0, description="Weight per decade of the σ(300 K) lower bound.")
    activation_energy: Weight = Field(1.0, description="Weight per 0.1 eV of the Ea upper bound (lower is better).")
    migration_barrier: Weight = Field(1.0, description="Weight per 0.1 eV of the effective percolating barrier.")
    flag_penalty: Weight = Field(1.0, description="Multiplier of the per-flag penalties (0: ignore flags).")
    penalty_2d_eV: Weight = Field(0.15, description="Added to a 2D percolation barrier before comparing, eV.")
    penalty_1d_eV: Weight = Field(0.30, description="Added to a 1D percolation barrier before comparing, eV.")
    missing_margin: Weight = Field(1.0, description="A missing component scores this far below the worst observed.")
    disagreement: Weight = Field(0.0, description="Weight per unit of disagreement with the job's agreement_model "
                                 "(one decade of σ(300 K), 0.1 eV of barrier); 0: reported, not ranked.")

    @model_validator(mode="after")
    def _sane(self):
        if self.penalty_1d_eV < self.penalty_2d_eV:
            raise ValueError("penalty_1d_eV must be at least penalty_2d_eV (a 1D path is no better than a 2D one)")
        if not any(getattr(self, c.value) > 0 for c in Component):
            raise ValueError("at least one of conductivity, activation_energy, migration_barrier must have weight > 0")
        return self


class AgreementBasis(enum.StrEnum):
    """What a model-disagreement figure rests on (see the module docstring)."""

    ESTIMATES = "estimates"  # both models give an estimate: the figure is their difference
    AT_LEAST = "at_least"  # one gives only an upper bound, below the other's estimate: they differ by at least the figure
    CONSISTENT_BOUND = "consistent_bound"  # one gives only an upper bound, at or above the other's estimate: no figure
    BOUNDS_ONLY = "bounds_only"  # both give only upper bounds: no figure
    MISSING = "missing"  # a model has no number for the quantity: no figure


class ModelAgreement(BaseModel):
    """How far the job's second model (``agreement_model``) is from its primary model for one candidate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_disagreement_log10_sigma: float | None = Field(
        None, ge=0, description="|log10 σ₁(300 K) − log10 σ₂(300 K)|, decades (None: no figure; see the basis).")
    model_disagreement_log10_sigma_basis: AgreementBasis | None = Field(
        None, description="What the σ figure rests on; None when neither model ran transport.")
    model_disagreement_barrier_eV: float | None = Field(
        None, ge=0, description="|b₁ − b₂| of the effective percolating barriers, eV (None: no figure).")
    model_disagreement_barrier_basis: AgreementBasis | None = Field(
        None, description="What the barrier figure rests on; None when neither model ran NEB.")
    agreement_model_flags: list[str] = Field(default_factory=list,
                                             description="Quality flags of the second model's results.")
    notes: list[str] = Field(default_factory=list, description="How each figure was obtained, or why there is none.")

    def units(self) -> float:
        """The disagreement in score units: decades of σ plus barrier difference / 0.1 eV, over existing figures."""
        total = 0.0
        if self.model_disagreement_log10_sigma is not None:
            total += self.model_disagreement_log10_sigma
        if self.model_disagreement_barrier_eV is not None:
            total += self.model_disagreement_barrier_eV / BARRIER_SCALE_eV
        return total

    def figures_text(self) -> str:
        """``Δlog10σ/Δbarrier`` for tables: a number, ≥number (at least), 'bound' (bounds only, no figure) or —."""
        def one(value: float | None, basis: AgreementBasis | None) -> str:
            if value is not None:
                return ("≥" if basis is AgreementBasis.AT_LEAST else "") + f"{value:.2f}"
            return "bound" if basis in (AgreementBasis.CONSISTENT_BOUND, AgreementBasis.BOUNDS_ONLY) else "—"

        return (f"{one(self.model_disagreement_log10_sigma, self.model_disagreement_log10_sigma_basis)}/"
                f"{one(self.model_disagreement_barrier_eV, self.model_disagreement_barrier_basis)}")

    def columns(self) -> dict[str, Any]:
        """The figures and their bases, flat (for tables and exports)."""
        return {
            "model_disagreement_log10_sigma": self.model_disagreement_log10_sigma,
            "model_disagreement_log10_sigma_basis": self.model_disagreement_log10_sigma_basis,
            "model_disagreement_barrier_eV": self.model_disagreement_barrier_eV,
            "model_disagreement_barrier_basis": self.model_disagreement_barrier_basis,
        }


class ComponentScore(BaseModel):
    """One component of one candidate's score."""

    model_config = ConfigDict(extra="forbid")

    component: Component
    raw: float | None = Field(description="The bound used, in `unit` (None when missing).")
    unit: str
    standardised: float = Field(description="z in score units, higher is better (imputed when missing).")
    weight: float
    contribution: float = Field(description="weight × standardised.")
    imputed: bool = Field(description="True when the value was missing and the worst observed minus a margin was used.")
    detail: str = Field("", description="Which column / dimensionality was used, or why it is missing.")


class RankedRow(BaseModel):
    """A candidate's place in the ranking, with every term of its score."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(description="1 = best.")
    score: float
    structure_hash: str
    name: str | None = None
    formula: str | None = None
    kind: str | None = None
    working_ion: str | None = None
    components: dict[str, ComponentScore] = Field(description="Per applicable component.")
    flag_penalties: dict[str, float] = Field(description="Per flag: penalty subtracted from the score (weighted).")
    flags: list[str]
    missing: list[str] = Field(description="Applicable components without a usable value (imputed).")
    notes: list[str]
    values: dict[str, Any] = Field(description="The candidate's identity and summary columns, flat.")
    agreement: ModelAgreement | None = Field(None, description="Disagreement with the job's agreement_model "
                                             "(None: the job has no second model).")
    disagreement_penalty: float = Field(0.0, description="weight × disagreement units, subtracted from the score.")

    @property
    def contributions(self) -> dict[str, float]:
        """Signed additive terms of the score: one per component, ``flags`` (≤ 0), and ``model_disagreement``
        (≤ 0) when the job has a second model."""
        out = {name: c.contribution for name, c in self.components.items()}
        out["flags"] = -sum(self.flag_penalties.values())
        if self.agreement is not None:
            out["model_disagreement"] = -self.disagreement_penalty
        return out

    def table_row(self) -> dict[str, Any]:
        """A flat dict for CSV / terminal tables (intervals as lo/hi, lists joined by ';')."""
        v = self.values
        row: dict[str, Any] = {
            "rank": self.rank,
            "name": self.name,
            "formula": self.formula,
            "kind": self.kind,
            "working_ion": self.working_ion,
            "score": round(self.score, 4),
            "conductivity_300K_mS_cm": v.get("conductivity_300K_mS_cm"),
            "conductivity_300K_ci95_lo_mS_cm": v.get("conductivity_300K_ci95_lo_mS_cm"),
            "conductivity_300K_ci95_hi_mS_cm": v.get("conductivity_300K_ci95_hi_mS_cm"),
            "activation_energy_eV": v.get("activation_energy_eV"),
            "activation_energy_ci95_lo_eV": v.get("activation_energy_ci95_lo_eV"),
            "activation_energy_ci95_hi_eV": v.get("activation_energy_ci95_hi_eV"),
            "percolation_1d_eV": v.get("percolation_1d_eV"),
            "percolation_2d_eV": v.get("percolation_2d_eV"),
            "percolation_3d_eV": v.get("percolation_3d_eV"),
        }
        if self.agreement is not None:
            row |= {k: getattr(v, "value", v) for k, v in self.agreement.columns().items()}
        for name, value in self.contributions.items():
            row[f"contribution_{name}"] = round(value, 4)
        row["flags"] = ";".join(self.flags)
        row["missing"] = ";".join(self.missing)
        row["notes"] = ";".join(self.notes)
        row["structure_hash"] = self.structure_hash
        return row


# ---------------------------------------------------------------------------------------------- components
@dataclass(frozen=True)
class _Observation:
    raw: float | None
    z: float | None  # None: missing
    detail: str


def _unranked(quantity, name: str) -> _Observation:
    """A quantity without a 95% interval is not ranked; say whether it is missing or only a point value."""
    if quantity is not None and quantity.value is not None:
        return _Observation(None, None, f"{name} has no 95% interval; a point value is not ranked")
    return _Observation(None, None, f"no {name}")


def _conductivity(c: Screened, weights: RankingWeights) -> _Observation:
    sigma = c.transport.conductivity_300K_mS_cm if c.transport else None
    if sigma is None or sigma.ci95 is None:
        return _unranked(sigma, "σ(300 K)")
    lo = sigma.lo
    used = max(lo, CONDUCTIVITY_FLOOR_mS_cm)
    detail = "σ(300 K) 95% lower bound"
    if lo <= CONDUCTIVITY_FLOOR_mS_cm:
        detail += f" ≤ floor, counted as {CONDUCTIVITY_FLOOR_mS_cm:g} mS/cm"
    return _Observation(lo, math.log10(used / CONDUCTIVITY_REFERENCE_mS_cm), detail)


def _activation_energy(c: Screened, weights: RankingWeights) -> _Observation:
    ea = c.transport.activation_energy_eV if c.transport else None
    if ea is None or ea.ci95 is None:
        return _unranked(ea, "Ea")
    return _Observation(ea.hi, (ACTIVATION_ENERGY_REFERENCE_eV - ea.hi) / ACTIVATION_ENERGY_SCALE_eV,
                        "Ea 95% upper bound")


def _migration_barrier(c: Screened, weights: RankingWeights) -> _Observation:
    penalties = {3: 0.0, 2: weights.penalty_2d_eV, 1: weights.penalty_1d_eV}
    best: tuple[float, int, float, str] | None = None
    neb = c.neb
    for dim in (3, 2, 1):
        measured = getattr(neb, f"percolation_{dim}d_eV") if neb else None
        if measured is None:
            continue
        barrier, which = (measured.hi, "upper bound") if measured.ci95 is not None else (measured.value, "threshold")
        if barrier is None:
            continue
        effective = barrier + penalties[dim]
        if best is None or effective < best[0] - 1e-12:
            best = (effective, dim, barrier, which)
    if best is None:
        if neb is not None and neb.migration_barrier_eV is not None:
            return _Observation(None, None, "no percolating path (single-hop barrier only)")
        return _Observation(None, None, "no NEB barrier")
    effective, dim, barrier, which = best
    detail = f"{dim}D percolation {which} {barrier:.3f} eV"
    if penalties[dim]:
        detail += f" + {penalties[dim]:.2f} eV ({dim}D penalty)"
    return _Observation(effective, (BARRIER_REFERENCE_eV - effective) / BARRIER_SCALE_eV, detail)


_COMPONENTS: dict[Component, tuple[Callable[[Screened, RankingWeights], _Observation], str]] = {
    Component.CONDUCTIVITY: (_conductivity, "mS/cm"),
    Component.ACTIVATION_ENERGY: (_activation_energy, "eV"),
    Component.MIGRATION_BARRIER: (_migration_barrier, "eV"),
}


# ---------------------------------------------------------------------------------------------- model agreement
@dataclass(frozen=True)
class _Side:
    """One model's number for a quantity, on the scale it is compared on (log10 σ, or eV)."""

    number: float | None
    bound: bool = False  # the number is only an upper bound
    text: str = ""  # the number as read, for notes; or why there is none


def _sigma_side(c: Screened | None) -> _Side | None:
    if c is None or c.transport is None:
        return None
    sigma = c.transport.conductivity_300K_mS_cm
    if sigma.value is not None:
        if sigma.value > 0:
            return _Side(math.log10(sigma.value), text=f"{sigma.value:.3g} mS/cm")
        return _Side(None, text=f"σ(300 K) = {sigma.value:g} mS/cm is not positive")
    if sigma.ci95 is not None and sigma.hi > 0:
        return _Side(math.log10(sigma.hi), bound=True, text=f"≤ {sigma.hi:.3g} mS/cm")
    return _Side(None, text="no σ(300 K)")


def _barrier_side(c: Screened | None, weights: RankingWeights) -> _Side | None:
    if c is None or c.neb is None:
        return None
    penalties = {3: 0.0, 2: weights.penalty_2d_eV, 1: weights.penalty_1d_eV}
    best: tuple[float, int, float] | None = None
    for dim in (3, 2, 1):
        threshold = getattr(c.neb, f"percolation_{dim}d_eV").value
        if threshold is not None and (best is None or threshold + penalties[dim] < best[0] - 1e-12):
            best = (threshold + penalties[dim], dim, threshold)
    if best is None:
        return _Side(None, text="no percolating path")
    bound = bool(NEB_UPPER_BOUND_FLAGS & set(c.neb.flags))
    text = f"{'≤ ' if bound else ''}{best[0]:.3f} eV ({best[1]}D {best[2]:.3f} eV + {penalties[best[1]]:.2f})"
    return _Side(best[0], bound=bound, text=text)


def _compare(first: _Side | None, second: _Side | None, what: str, unit: str
             ) -> tuple[float | None, AgreementBasis | None, str | None]:
    """(figure, basis, note) for one quantity: ``first`` from the primary model, ``second`` from the other."""
    if first is None and second is None:
        return None, None, None
    if first is None or first.number is None or second is None or second.number is None:
        which = [name for name, side in (("primary", first), ("agreement", second))
                 if side is None or side.number is None]
        why = "; ".join(f"{name} model: {side.text if side is not None else 'no result'}"
                        for name, side in (("primary", first), ("agreement", second)) if name in which)
        return None, AgreementBasis.MISSING, f"{what}: no figure ({why})"
    pair = f"primary {first.text}, agreement {second.text}"
    if not first.bound and not second.bound:
        return abs(first.number - second.number), AgreementBasis.ESTIMATES, None
    if first.bound and second.bound:
        return None, AgreementBasis.BOUNDS_ONLY, f"{what}: both models give only upper bounds ({pair}); no figure"
    estimate, bound = (second, first) if first.bound else (first, second)
    if estimate.number > bound.number:
        gap = estimate.number - bound.number
        return gap, AgreementBasis.AT_LEAST, f"{what}: an estimate above the other model's upper bound ({pair}): " \
                                             f"at least {gap:.3g} {unit} apart"
    return None, AgreementBasis.CONSISTENT_BOUND, (f"{what}: one model gives only an upper bound, at or above the "
                                                   f"other's estimate ({pair}); consistent, no figure")


def model_agreement(primary: Screened, second: Screened | None, weights: RankingWeights | None = None
                    ) -> ModelAgreement:
    """The disagreement between a candidate's summaries under the primary model and under the second model (None:
    the second model has no result for it). See the module docstring for the figures and their bases."""
    weights = weights or RankingWeights()
    sigma, sigma_basis, sigma_note = _compare(_sigma_side(primary), _sigma_side(second), "σ(300 K)", "decades")
    barrier, barrier_basis, barrier_note = _compare(_barrier_side(primary, weights), _barrier_side(second, weights),
                                                    "percolating barrier", "eV")
    return ModelAgreement(
        model_disagreement_log10_sigma=sigma, model_disagreement_log10_sigma_basis=sigma_basis,
        model_disagreement_barrier_eV=barrier, model_disagreement_barrier_basis=barrier_basis,
        agreement_model_flags=second.flags if second is not None else [],
        notes=[n for n in (sigma_note, barrier_note) if n])


def flag_penalty(flag: str) -> float:
    """Unweighted penalty of one flag (``FLAG_PENALTIES``, else ``UNKNOWN_FLAG_PENALTY``)."""
    return FLAG_PENALTIES.get(flag, UNKNOWN_FLAG_PENALTY)


# ---------------------------------------------------------------------------------------------- ranking
def rank(
    candidates: Sequence[Screened],
    weights: RankingWeights | None = None,
    components: Iterable[Component | str] | None = None,
    *,
    second: Mapping[str, Screened] | None = None,
) -> list[RankedRow]:
    """Rank screened candidates (identity + result summaries), best first.

    ``components`` names the components that apply (e.g. from the job's stages); by default every component
    with at least one value among the candidates applies. ``second``: the same candidates' summaries under a second
    model, by structure hash (a candidate absent from it has no second result); given, every row carries its
    :class:`ModelAgreement` and the ``disagreement`` penalty applies. See the module docstring for the score.
    """
    weights = weights or RankingWeights()
    seen: set[str] = set()
    for c in candidates:
        if c.structure_hash in seen:
            raise InputError(f"candidate {c.structure_hash[:12]} is given twice; rank the results of one job at a time")
        seen.add(c.structure_hash)
    if not candidates:
        return []
    observations = {c.structure_hash: {k: _COMPONENTS[k][0](c, weights) for k in Component} for c in candidates}
    if components is None:
        applicable = [k for k in Component if any(obs[k].z is not None for obs in observations.values())]
    else:
        applicable = [Component(k) for k in components]
    worst: dict[Component, float | None] = {}
    for k in applicable:
        observed = [obs[k].z for obs in observations.values() if obs[k].z is not None]
        worst[k] = min(observed) if observed else None

    scored: list[tuple[float, str, str, RankedRow]] = []
    for c in candidates:
        key = c.structure_hash
        parts: dict[str, ComponentScore] = {}
        missing: list[str] = []
        notes: list[str] = []
        for k in applicable:
            obs = observations[key][k]
            weight = float(getattr(weights, k.value))
            if obs.z is None:
                missing.append(k.value)
                notes.append(f"{k.value} missing: {obs.detail}")
                if worst[k] is None:
                    z = 0.0  # nobody has it: the same for every candidate, so it does not change the order
                    detail = f"{obs.detail}; no candidate has this component"
                else:
                    z = worst[k] - weights.missing_margin
                    detail = f"{obs.detail}; imputed as worst observed − {weights.missing_margin:g}"
                parts[k.value] = ComponentScore(component=k, raw=None, unit=_COMPONENTS[k][1], standardised=z,
                                                weight=weight, contribution=weight * z, imputed=True, detail=detail)
            else:
                parts[k.value] = ComponentScore(component=k, raw=obs.raw, unit=_COMPONENTS[k][1], standardised=obs.z,
                                                weight=weight, contribution=weight * obs.z, imputed=False,
                                                detail=obs.detail)
        flags = c.flags
        penalties = {f: weights.flag_penalty * flag_penalty(f) for f in flags}
        for f in flags:
            if f not in FLAG_PENALTIES:
                notes.append(f"unknown flag {f!r} penalised {UNKNOWN_FLAG_PENALTY:g}")
        agreement = None if second is None else model_agreement(c, second.get(key), weights)
        disagreement = 0.0
        if agreement is not None and weights.disagreement > 0:
            disagreement = weights.disagreement * agreement.units()
            a = agreement
            for what, figure, basis in (("σ(300 K)", a.model_disagreement_log10_sigma, a.model_disagreement_log10_sigma_basis),
                                        ("barrier", a.model_disagreement_barrier_eV, a.model_disagreement_barrier_basis)):
                if basis is not None and figure is None:
                    notes.append(f"model disagreement in {what} not penalised: no figure ({basis.value})")
        score = sum(p.contribution for p in parts.values()) - sum(penalties.values()) - disagreement
        ranked = RankedRow(rank=0, score=score, structure_hash=key, name=c.name, formula=c.formula, kind=c.kind,
                           working_ion=c.working_ion, components=parts, flag_penalties=penalties, flags=flags,
                           missing=missing, notes=notes, values=c.columns(), agreement=agreement,
                           disagreement_penalty=disagreement)
        scored.append((-round(score, TIE_DECIMALS), key, ranked.name or "", ranked))

    scored.sort(key=lambda t: t[:3])
    by_score: dict[float, list[RankedRow]] = {}
    for neg, _, _, ranked in scored:
        by_score.setdefault(neg, []).append(ranked)
    out = []
    for i, (neg, key, _, ranked) in enumerate(scored):
        tied = [r.name or r.structure_hash[:12] for r in by_score[neg] if r.structure_hash != key]
        if tied:
            ranked.notes.append(f"tied on score with {', '.join(tied)}; ordered by structure hash")
        ranked.rank = i + 1
        out.append(ranked)
    return out
