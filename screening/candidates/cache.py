"""On-disk cache of the ordered cells of library entries, so that listing and showing candidates does not re-run
the Ewald ordering (seconds per entry) in every new process.

A cached cell lives in ``$IONSCREEN_HOME/cache/candidates/<key>.json``; ``atom_counts.json`` beside it holds the
cell sizes that ``candidates list`` shows. The key is the SHA-256 of everything the ordered cell depends on: the
entry's data as validated (so an edited entry is ordered again), the seed, the ordering parameters, the source of
the modules that build and order it, and the versions of pymatgen, spglib and numpy (so a code or library change
invalidates the cache too). The cache is an optimisation only: an unreadable or stale file is ignored and rebuilt,
and a home that cannot be written to just means nothing is cached.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from mlip.util import atomic_write_text, canonical_sha256

#: Bump when the file layout changes.
CACHE_FORMAT = 1
CACHE_SUBDIR = ("cache", "candidates")
_CODE_MODULES = ("screening.candidates.library", "screening.candidates.ordering", "screening.candidates.builder")
_LIBRARIES = ("pymatgen-core", "pymatgen", "spglib", "numpy")


@lru_cache(maxsize=1)
def code_digest() -> str:
    """SHA-256 over the source of the modules that decide what an ordered cell looks like, and the versions of
    the libraries that do the symmetry and Ewald arithmetic."""
    import importlib
    from importlib import metadata

    digest = hashlib.sha256()
    for name in _CODE_MODULES:
        module = importlib.import_module(name)
        digest.update(name.encode())
        digest.update(Path(module.__file__).read_bytes())
    for package in _LIBRARIES:
        try:
            version = metadata.version(package)
        except metadata.PackageNotFoundError:
            version = "absent"
        digest.update(f"{package}=={version}".encode())
    return digest.hexdigest()


def cache_key(entry, seed: int, ordering_params: dict[str, Any]) -> str:
    """Key of one ordered cell: entry data, seed, ordering parameters, code digest and cache format."""
    payload = {
        "format": CACHE_FORMAT,
        "entry": entry.model_dump(mode="json"),
        "seed": seed,
        "ordering": ordering_params,
        "code": code_digest(),
    }
    return canonical_sha256(payload)


def cache_dir() -> Path:
    from mlip.config import load_settings

    return load_settings().home.joinpath(*CACHE_SUBDIR)


def cache_path(key: str) -> Path:
    return cache_dir() / f"{key}.json"


ATOM_COUNTS_FILE = "atom_counts.json"


def load_atom_count(key: str) -> int | None:
    """Atoms in the ordered cell with this key, if counted before (the index `candidates list` reads)."""
    try:
        value = json.loads((cache_dir() / ATOM_COUNTS_FILE).read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None


def store_atom_count(key: str, count: int) -> None:
    """Add one count to the index (read-modify-replace; a lost update only costs a recount)."""
    path = cache_dir() / ATOM_COUNTS_FILE
    try:
        counts = json.loads(path.read_text())
        if not isinstance(counts, dict):
            counts = {}
    except (OSError, ValueError):
        counts = {}
    counts[key] = int(count)
    with contextlib.suppress(OSError):  # a cache that cannot be written only costs a recount
        atomic_write_text(path, json.dumps(counts, sort_keys=True))


def load(key: str):
    """(ordered structure, OrderingRecord, insertion sites) stored under ``key``, or None."""
    from pymatgen.core import Structure

    from screening.candidates.ordering import OrderingRecord

    path = cache_path(key)
    try:
        data = json.loads(path.read_text())
        if data.get("format") != CACHE_FORMAT or data.get("key") != key:
            return None
        structure = Structure.from_dict(data["structure"])
        record = OrderingRecord.model_validate(data["record"])
        sites = [[float(x) for x in site] for site in data["insertion_sites_frac"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return structure, record, sites


def store(key: str, entry_name: str, structure, record, sites) -> Path | None:
    """Write one ordered cell atomically; returns the path, or None when the home cannot be written."""
    payload = {
        "format": CACHE_FORMAT,
        "key": key,
        "entry": entry_name,
        "structure": structure.as_dict(),
        "record": record.model_dump(mode="json"),
        "insertion_sites_frac": sites,
    }
    path = cache_path(key)
    try:
        atomic_write_text(path, json.dumps(payload, separators=(",", ":")))
    except (OSError, TypeError, ValueError):
        return None
    return path
