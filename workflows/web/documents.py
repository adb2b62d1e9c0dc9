"""Result documents and the files next to them, as the candidate page needs them, confined to ``IONSCREEN_HOME``.

A result row names its document relative to ``IONSCREEN_HOME``; the document names its plots and profiles
relative to itself (transport) or by path (NEB). Every path is resolved and must stay inside the document's
directory, so neither a crafted URL nor a crafted row can make the server read another file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import ValidationError

from screening.neb.results import NebStructureResult
from screening.transport.results import TransportResult

#: Files the server hands out from a result's directory (plots and small JSON documents).
SERVED_SUFFIXES = {".png": "image/png", ".json": "application/json", ".svg": "image/svg+xml"}


class UnsafePath(ValueError):
    """A path that would leave its allowed directory (or names a kind of file the server does not hand out)."""


def inside(base: Path, relative: str | Path) -> Path:
    """``base / relative`` resolved, if it stays inside ``base`` (symlinks resolved too); else UnsafePath."""
    text = str(relative)
    if not text or "\x00" in text or "\\" in text:
        raise UnsafePath(f"not an acceptable file name: {text!r}")
    candidate = Path(relative)
    if candidate.is_absolute() or any(part == ".." for part in PurePosixPath(text).parts):
        raise UnsafePath(f"{text!r} leaves its directory")
    base = base.resolve()
    path = (base / candidate).resolve()
    if not path.is_relative_to(base):
        raise UnsafePath(f"{text!r} leaves its directory")
    return path


def _document_file(home: Path, document_path: str | None) -> Path | None:
    if not document_path:
        return None
    try:
        path = inside(home, document_path)
    except UnsafePath:
        return None
    return path if path.is_file() else None


def _relative_to_dir(directory: Path, reference: str | None) -> str | None:
    """A file a document references, as a path relative to the document's directory (None if outside/missing)."""
    if not reference:
        return None
    ref = Path(reference)
    directory = directory.resolve()
    try:
        path = ref.resolve() if ref.is_absolute() else inside(directory, reference)
    except UnsafePath:
        return None
    if ref.is_absolute() and not path.is_relative_to(directory):
        # NEB documents hold absolute paths; after IONSCREEN_HOME moved, the file is next to the document
        path = (directory / ref.name).resolve()
    if not path.is_relative_to(directory) or not path.is_file():
        return None
    return path.relative_to(directory).as_posix()


@dataclass
class TransportView:
    """What the page shows of a transport result document."""

    document: Any  # screening.transport.results.TransportResult
    directory: Path
    arrhenius_plot: str | None  # relative to directory
    msd_plots: list[tuple[float, str]] = field(default_factory=list)  # (temperature_K, relative path)


@dataclass
class NebView:
    document: Any  # screening.neb.results.NebStructureResult
    directory: Path
    hop_plots: dict[int, str] = field(default_factory=dict)  # hop index -> relative path of its PNG
    hop_profiles: dict[int, str] = field(default_factory=dict)  # hop index -> relative path of its profile JSON


def _load_document(home: Path, document_path: str | None, model):
    """The result document at ``document_path`` (under ``home``) as ``model``, and its directory; (None, None) if
    absent or unreadable (the page then shows the summary row only)."""
    path = _document_file(home, document_path)
    if path is None:
        return None, None
    try:
        return model.model_validate_json(path.read_text()), path.parent
    except (ValidationError, OSError, ValueError):
        return None, None


def load_transport(home: Path, document_path: str | None) -> TransportView | None:
    document, directory = _load_document(home, document_path, TransportResult)
    if document is None:
        return None
    view = TransportView(document, directory, _relative_to_dir(directory, document.arrhenius.plot))
    for t in document.temperatures:
        plot = _relative_to_dir(directory, t.msd_plot)
        if plot is not None:
            view.msd_plots.append((t.temperature_K, plot))
    return view


def load_neb(home: Path, document_path: str | None) -> NebView | None:
    document, directory = _load_document(home, document_path, NebStructureResult)
    if document is None:
        return None
    view = NebView(document, directory)
    for index, hop in enumerate(document.hops):
        plot = _relative_to_dir(directory, hop.plot_file)
        if plot is not None:
            view.hop_plots[index] = plot
        profile = _relative_to_dir(directory, hop.profile_file)
        if profile is not None:
            view.hop_profiles[index] = profile
    return view


def read_profile(view: NebView, index: int) -> dict[str, Any] | None:
    relative = view.hop_profiles.get(index)
    if relative is None:
        return None
    try:
        return json.loads(inside(view.directory, relative).read_text())
    except (OSError, ValueError, UnsafePath):
        return None


def result_file(home: Path, document_path: str | None, relative: str) -> tuple[Path, str]:
    """A file under a result document's directory, for download: (path, media type). UnsafePath / FileNotFoundError."""
    document = _document_file(home, document_path)
    if document is None:
        raise FileNotFoundError("the result has no document on this server")
    path = inside(document.parent, relative)
    media = SERVED_SUFFIXES.get(path.suffix.lower())
    if media is None:
        raise UnsafePath(f"only {', '.join(sorted(SERVED_SUFFIXES))} files are served")
    if not path.is_file():
        raise FileNotFoundError(relative)
    return path, media


__all__ = [
    "NebView",
    "SERVED_SUFFIXES",
    "TransportView",
    "UnsafePath",
    "inside",
    "load_neb",
    "load_transport",
    "read_profile",
    "result_file",
]
