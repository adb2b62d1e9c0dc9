"""What a hostile user hands ionscreen: a model file whose unpickling runs code (it creates a marker file)."""

from __future__ import annotations

from pathlib import Path


class _Evil:
    """Unpickling this creates ``marker``: stands in for arbitrary code in a .model file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def evil_model(path: Path, marker: Path) -> Path:
    """A .model file at ``path`` that creates ``marker`` if anything ever unpickles it."""
    import torch

    torch.save(_Evil(str(marker)), path)
    return path
