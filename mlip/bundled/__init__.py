"""Models shipped inside the ionscreen package (``bundled:<name>``).

``manifest.json`` beside this file lists each model's file, SHA-256 and card. The manifest is part
of the installed code, so its hashes are trusted exactly as much as the code itself; a file whose
hash differs from its manifest entry is refused as corrupted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from mlip.errors import ModelNotFoundError

BUNDLED_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class BundledModel:
    name: str
    path: Path
    sha256: str
    description: str = ""
    card: str | None = None
    metadata: dict = field(default_factory=dict)


def manifest(directory: Path | None = None) -> dict[str, BundledModel]:
    directory = directory or BUNDLED_DIR
    path = directory / "manifest.json"
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    out = {}
    for name, entry in data.get("models", {}).items():
        out[name] = BundledModel(
            name=name,
            path=directory / entry["file"],
            sha256=entry["sha256"],
            description=entry.get("description", ""),
            card=entry.get("card"),
            metadata=entry.get("metadata", {}),
        )
    return out


def get(name: str, directory: Path | None = None) -> BundledModel:
    models = manifest(directory)
    if name not in models:
        known = ", ".join(f"bundled:{n}" for n in sorted(models)) or "none"
        raise ModelNotFoundError(f"no bundled model named {name!r}; bundled models: {known}")
    return models[name]
