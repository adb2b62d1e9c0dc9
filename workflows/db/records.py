"""Typed rows that go into and come out of the ``Store``: validated inputs (``CandidateRow``, ``ResultRow``)
and read-only snapshots of jobs, tasks and candidates.

Inputs are validated here, before any SQL runs, so a bad row is an ``InputError`` naming the field and the
database is left as it was.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from mlip.errors import InputError
from workflows.db.models import (
    INTERVAL_COLUMNS,
    SUMMARY_COLUMNS,
    JobStatus,
    Stage,
    TaskState,
)

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def check_sha256(value: str, what: str) -> str:
    if not isinstance(value, str) or not _HEX64.match(value):
        raise ValueError(f"{what} must be 64 lower-case hex digits (a SHA-256), got {value!r}")
    return value


def validation_error(kind: str, err: ValidationError) -> InputError:
    """Turn pydantic's error list into one InputError that names each bad field."""
    problems = []
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"]) or kind
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        problems.append(f"{where}: {message}")
    return InputError(f"invalid {kind}: " + "; ".join(problems))


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CandidateRow(_Input):
    """A candidate as stored: identity (structure hash), what it is, and its CIF text."""

    structure_hash: str = Field(description="SHA-256 of the canonical structure (screening.candidates.identity)")
    name: str = Field(min_length=1)
    formula: str = Field(min_length=1, description="reduced formula of the ordered cell")
    working_ion: str = Field(min_length=1, max_length=3, description="element symbol of the mobile ion")
    working_ion_charge: int = Field(description="formal charge of the working ion (e)")
    kind: str = Field(min_length=1, max_length=32, description="electrolyte or cathode_host")
    n_atoms: int = Field(gt=0, description="atoms in the stored (ordered) cell")
    cif: str | None = Field(None, description="CIF text of the ordered cell, with the ionscreen metadata line")
    metadata_json: dict[str, Any] = Field(default_factory=dict, description="Candidate metadata (no structure)")

    @field_validator("structure_hash")
    @classmethod
    def _hash(cls, value: str) -> str:
        return check_sha256(value, "structure_hash")


class _ResultRow(_Input):
    """The numbers of one finished task plus provenance; the unit of each number is in its name.

    The numbers are the columns of the stage's result summary (``screening.summaries``; ``SUMMARY_COLUMNS``), added
    to :class:`ResultRow` below. Intervals are 95 % confidence intervals (``_ci95_lo`` ≤ ``_ci95_hi``). A number that
    was not obtained is None (never NaN); why it is missing is said by ``flags`` and the result document.
    """

    task_key: str = Field(description="sha256(candidate hash + stage + protocol hash + model sha256)")
    candidate_id: int
    stage: Stage
    structure_hash: str
    protocol_json: dict[str, Any] | None = Field(None, description="the protocol as data")
    protocol_hash: str
    model_ref: str = Field(min_length=1, description="model reference as given (path, bundled:, models:/...)")
    model_sha256: str
    code_version: str = Field(min_length=1)
    seed: int | None = None
    mlflow_run_id: str | None = Field(None, max_length=64)
    document_path: str | None = Field(None, description="result document, relative to IONSCREEN_HOME")
    flags: list[str] = Field(default_factory=list, description="quality flags (not_diffusive, few_hops, ...)")

    @field_validator("task_key", "structure_hash", "protocol_hash", "model_sha256")
    @classmethod
    def _hashes(cls, value: str, info) -> str:
        return check_sha256(value, info.field_name)

    @field_validator("protocol_json", mode="before")
    @classmethod
    def _protocol(cls, value: Any) -> Any:
        if isinstance(value, str):  # accept the protocol already serialised as JSON text
            try:
                value = json.loads(value)
            except json.JSONDecodeError as err:
                raise ValueError(f"is not valid JSON: {err}") from None
        return value

    @field_validator("flags")
    @classmethod
    def _flags(cls, value: list[str]) -> list[str]:
        if any(not flag for flag in value):
            raise ValueError("flags must be non-empty strings")
        return value

    @field_validator("document_path")
    @classmethod
    def _relative(cls, value: str | None) -> str | None:
        if value is not None and (PurePosixPath(value).is_absolute() or PureWindowsPath(value).is_absolute()):
            raise ValueError(f"must be relative to IONSCREEN_HOME so the database moves with it, got {value!r}")
        return value

    @model_validator(mode="after")
    def _numbers(self) -> "_ResultRow":
        for name, value in self:
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{name} is {value}; store None for a number that was not obtained")
        for _, lo, hi in INTERVAL_COLUMNS:
            low, high = getattr(self, lo), getattr(self, hi)
            if low is not None and high is not None and low > high:
                raise ValueError(f"{lo} ({low}) is above {hi} ({high})")
        converged, total = getattr(self, "n_hops_converged"), getattr(self, "n_hops_total")
        if converged is not None and total is not None and converged > total:
            raise ValueError(f"n_hops_converged ({converged}) exceeds n_hops_total ({total})")
        return self


ResultRow = create_model(
    "ResultRow", __base__=_ResultRow, __module__=__name__,
    **{name: (kind | None, Field(None, ge=0) if kind is int else None) for name, kind in SUMMARY_COLUMNS.items()},
)


class _Snapshot(BaseModel):
    model_config = ConfigDict(from_attributes=True, frozen=True)


class JobRecord(_Snapshot):
    """A job as stored (a snapshot; change it through the Store)."""

    id: str = Field(description="uuid4 hex")
    name: str
    spec_json: dict[str, Any] = Field(description="the job spec as data")
    spec_hash: str
    plan_json: dict[str, Any] | None = Field(None, description="the typed plan as data (None: planned before 0.2)")
    model_ref: str
    model_sha256: str | None
    status: JobStatus
    created_utc: datetime
    updated_utc: datetime
    mlflow_run_id: str | None
    error: str | None
    driver_pid: int | None
    driver_host: str | None
    submitted_by: str | None = Field(None, description="API token name, or user@host for the command line")


class TaskRecord(_Snapshot):
    """A task as stored (a snapshot)."""

    id: int
    job_id: str
    candidate_id: int
    stage: Stage
    task_key: str
    state: TaskState
    attempts: int = Field(description="times the task was claimed (started)")
    error: str | None
    workdir: str | None
    progress_json: dict[str, Any] | None
    started_utc: datetime | None
    finished_utc: datetime | None
    worker: str | None
    reused_result: bool = Field(description="done by reusing a result computed earlier for the same task_key")
    node: str | None = Field(None, description="the Ray node of the latest attempt")
    attempts_json: list[dict[str, Any]] | None = Field(None, description="every attempt: node, worker, times, outcome")


class CandidateRecord(_Snapshot):
    """A candidate as stored (a snapshot)."""

    id: int
    structure_hash: str
    name: str
    formula: str
    working_ion: str
    working_ion_charge: int
    kind: str
    n_atoms: int
    cif: str | None
    metadata_json: dict[str, Any]
    created_utc: datetime


__all__ = [
    "CandidateRecord",
    "CandidateRow",
    "JobRecord",
    "ResultRow",
    "TaskRecord",
    "check_sha256",
    "validation_error",
]
