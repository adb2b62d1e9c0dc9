"""Typed summaries of result documents: the few numbers (each with its interval and unit) that rank a candidate.

A transport or NEB result document says everything; its :meth:`summary` says what a candidate is ranked by.
:func:`screening.ranking.rank` takes :class:`Screened` candidates (identity + summaries). The database stores a
summary as flat columns derived from its fields (:meth:`Summary.columns`): a measured quantity ``x_<unit>`` with an
interval becomes ``x_<unit>``, ``x_ci95_lo_<unit>`` and ``x_ci95_hi_<unit>`` — so a new property is one field here
plus a migration that adds its columns.
"""

from __future__ import annotations

import math
import typing
from typing import Any, ClassVar, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from screening.stages import Stage

#: Unit suffixes of summary fields (the unit is part of every name at the boundary).
UNITS = ("mS_cm", "cm2_s", "eV")


class Interval(NamedTuple):
    """A 95% interval (lo ≤ hi) in the unit of the quantity it belongs to."""

    lo: float
    hi: float


class Measured(BaseModel):
    """A number with its 95% interval. ``value`` None with an interval (0, hi) is an upper bound only."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    value: float | None = None
    ci95: Interval | None = None

    @field_validator("ci95", mode="before")
    @classmethod
    def _pair(cls, value):
        return None if value is None or any(v is None for v in value) else Interval(*map(float, value))

    @model_validator(mode="after")
    def _finite(self):
        numbers = [self.value] + (list(self.ci95) if self.ci95 else [])
        if any(n is not None and not math.isfinite(n) for n in numbers):
            raise ValueError("a measured number is finite or absent (None), never NaN or infinite")
        if self.ci95 is not None and self.ci95.lo > self.ci95.hi:
            raise ValueError(f"interval lower end {self.ci95.lo} is above its upper end {self.ci95.hi}")
        return self

    @property
    def lo(self) -> float | None:
        return None if self.ci95 is None else self.ci95.lo

    @property
    def hi(self) -> float | None:
        return None if self.ci95 is None else self.ci95.hi


def _split_unit(name: str) -> tuple[str, str]:
    for unit in UNITS:
        if name.endswith("_" + unit):
            return name[: -len(unit) - 1], unit
    raise ValueError(f"summary field {name!r} does not end with a unit ({', '.join(UNITS)})")


class Summary(BaseModel):
    """Base of the per-stage summaries: fields are ``Measured`` (with interval) or plain numbers; plus flags."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    stage: ClassVar[Stage]

    flags: list[str] = Field(default_factory=list, description="Quality flags of the result.")

    @classmethod
    def _measured_fields(cls) -> list[str]:
        return [n for n, f in cls.model_fields.items() if f.annotation is Measured]

    @classmethod
    def column_types(cls) -> dict[str, type]:
        """Database column name → Python type (float or int), in field order; flags are stored apart."""
        out: dict[str, type] = {}
        for name, f in cls.model_fields.items():
            if name == "flags":
                continue
            if f.annotation is Measured:
                stem, unit = _split_unit(name)
                out |= {name: float, f"{stem}_ci95_lo_{unit}": float, f"{stem}_ci95_hi_{unit}": float}
            else:
                args = [a for a in typing.get_args(f.annotation) if a is not type(None)] or [f.annotation]
                out[name] = args[0]
        return out

    @classmethod
    def interval_columns(cls) -> list[tuple[str, str, str]]:
        """(value, lo, hi) column names of every measured field."""
        out = []
        for name in cls._measured_fields():
            stem, unit = _split_unit(name)
            out.append((name, f"{stem}_ci95_lo_{unit}", f"{stem}_ci95_hi_{unit}"))
        return out

    def columns(self) -> dict[str, Any]:
        """The summary as database columns (see :meth:`column_types`) plus ``flags``."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, Measured):
                name_value, name_lo, name_hi = next(t for t in self.interval_columns() if t[0] == name)
                out |= {name_value: value.value, name_lo: value.lo, name_hi: value.hi}
            else:
                out[name] = list(value) if name == "flags" else value
        return out

    @classmethod
    def from_columns(cls, row: typing.Mapping[str, Any]) -> "Summary":
        """A summary back from database columns (missing columns read as absent numbers)."""
        data: dict[str, Any] = {"flags": [str(f) for f in (row.get("flags") or [])]}
        measured = {t[0]: t for t in cls.interval_columns()}
        for name in cls.model_fields:
            if name == "flags":
                continue
            if name in measured:
                _, lo, hi = measured[name]
                data[name] = Measured(value=row.get(name), ci95=(row.get(lo), row.get(hi)))
            else:
                data[name] = row.get(name)
        return cls.model_validate(data)


class TransportSummary(Summary):
    """MD transport: the Arrhenius extrapolation to 300 K, and what the MD temperatures themselves gave."""

    stage: ClassVar[Stage] = Stage.TRANSPORT

    conductivity_300K_mS_cm: Measured = Field(default_factory=Measured, description="σ at 300 K, mS/cm.")
    diffusivity_300K_cm2_s: Measured = Field(default_factory=Measured, description="Tracer D* at 300 K, cm²/s.")
    activation_energy_eV: Measured = Field(default_factory=Measured, description="Arrhenius activation energy, eV.")
    haven_ratio_mean: float | None = Field(None, description="Mean Haven ratio over the MD temperatures.")
    max_temperature_conductivity_mS_cm: float | None = Field(None, description="σ at the hottest MD temperature, mS/cm.")


class NebSummary(Summary):
    """NEB: the lowest converged barrier and the barriers at which hops percolate in 1, 2 and 3 dimensions."""

    stage: ClassVar[Stage] = Stage.NEB

    migration_barrier_eV: float | None = Field(None, description="Lowest converged hop barrier, eV.")
    percolation_1d_eV: Measured = Field(default_factory=Measured, description="1D percolation barrier, eV, with "
                                        "the interval from the NEB numerical uncertainty of the hops at threshold.")
    percolation_2d_eV: Measured = Field(default_factory=Measured, description="2D percolation barrier, eV.")
    percolation_3d_eV: Measured = Field(default_factory=Measured, description="3D percolation barrier, eV.")
    n_hops_converged: int | None = Field(None, ge=0)
    n_hops_total: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _hops(self):
        if None not in (self.n_hops_converged, self.n_hops_total) and self.n_hops_converged > self.n_hops_total:
            raise ValueError(f"n_hops_converged ({self.n_hops_converged}) exceeds n_hops_total ({self.n_hops_total})")
        return self


SUMMARIES: dict[Stage, type[Summary]] = {Stage.TRANSPORT: TransportSummary, Stage.NEB: NebSummary}


class Screened(BaseModel):
    """One candidate as the ranking sees it: who it is and the summaries of its results (one per stage)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    structure_hash: str
    name: str | None = None
    formula: str | None = None
    kind: str | None = None
    working_ion: str | None = None
    transport: TransportSummary | None = None
    neb: NebSummary | None = None

    @property
    def flags(self) -> list[str]:
        """Flags of every summary, in first-seen order."""
        return list(dict.fromkeys(f for s in (self.transport, self.neb) if s is not None for f in s.flags))

    @property
    def stages(self) -> list[Stage]:
        return [s.stage for s in (self.transport, self.neb) if s is not None]

    def columns(self) -> dict[str, Any]:
        """Identity and every summary's columns, flat (for tables and exports)."""
        out = self.model_dump(include={"structure_hash", "name", "formula", "kind", "working_ion"})
        for summary in (self.transport, self.neb):
            if summary is not None:
                out |= {k: v for k, v in summary.columns().items() if k != "flags"}
        out["flags"] = self.flags
        return out
