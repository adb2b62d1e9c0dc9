"""The protocol every validation set follows, so that ``ionscreen validate`` runs, resumes and reports
each set the same way.

A set lists its entries (each with a stable ``key``), runs one entry with a model and returns a
JSON-serialisable record, and turns the records into figures and plots. The runner (in ``workflows``)
owns the journal (one record per finished entry: re-running skips them), MLflow and the report; a set
knows only its physics and its statistics. No Ray, no CLI, no MLflow here.

What the runner (:mod:`workflows.validate`) adds: it checks ``entry.elements`` against the model first (an
uncovered entry is recorded as ``uncovered`` and never run), and hands ``summarise``/``plot`` the records with
``key`` and ``label`` of their entry added. Optional methods it uses when a set has them: ``fingerprint()``
(SHA-256 of the set's protocol and data: entries computed under another fingerprint are never reused),
``describe()`` (the set's parameters, for the report) and ``ranking(records)`` (entry key →
:class:`screening.validation.stats.RankValue`, a number or a bound, for the agreement between models).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Protocol, Sequence, runtime_checkable


class EntryStatus(enum.StrEnum):
    OK = "ok"  # a number (or a bound) to compare with the reference
    FAILED = "failed"  # the calculation failed; the record says why
    UNCOVERED = "uncovered"  # the model does not cover the entry's elements; not run, not counted


@dataclass(frozen=True)
class ValidationEntry:
    """One reference datum: ``key`` is stable across runs (the journal uses it), ``label`` is for people,
    ``data`` is the set's own (JSON-serialisable) description of the entry."""

    key: str
    label: str
    elements: frozenset[str]
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class RunContext:
    """What a set needs to run an entry with one model.

    ``calculator()`` gives a fresh ASE calculator for the model (task-appropriate dtype is the set's
    choice through ``calculator(task=...)``); ``loaded`` is the :class:`mlip.loader.LoadedModel`;
    ``workdir`` is this entry's own directory (checkpoints, trajectories, plots)."""

    model_ref: str
    model_sha256: str
    loaded: Any
    calculator: Callable[..., Any]
    device: str
    workdir: Path
    seed: int = 0


@runtime_checkable
class ValidationSet(Protocol):
    name: ClassVar[str]

    def entries(self, *, limit: int | None = None, full: bool = False) -> list[ValidationEntry]:
        """The entries to run: the default CPU subset, or every entry with ``full``; the first ``limit``
        of them (in a fixed, documented order) when ``limit`` is given."""

    def run_entry(self, entry: ValidationEntry, context: RunContext) -> dict[str, Any]:
        """Run one entry; return a JSON-serialisable record with at least ``status`` (an
        :class:`EntryStatus` value), and on failure an ``error`` string. Raises only on programming errors."""

    def summarise(self, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Figures over the finished records (JSON-serialisable; units in the key names)."""

    def plot(self, records: Sequence[Mapping[str, Any]], out_dir: Path, *, title: str) -> list[Path]:
        """PNG plots (parity, rank) written under ``out_dir``; returns their paths."""
