"""Which model files ionscreen is willing to unpickle.

mace-torch sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` on import, so ``torch.load`` of a ``.model``
file runs whatever the pickle says. ionscreen therefore loads a file only if its SHA-256 is
trusted: shipped in the package (bundled manifest), registered through ionscreen, downloaded by
ionscreen from the official foundation-model URL, or trusted explicitly by the user
(``ionscreen models trust FILE``). The trust store is a small JSON file in the data directory,
written atomically under a lock so concurrent workers never corrupt it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mlip.errors import ConfigError
from mlip.util import atomic_write_text, file_lock

_CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class TrustEntry:
    """One trusted hash, where it was seen, why it is trusted, and what the model is."""

    sha256: str
    source: str  # "user", "registered", "downloaded"
    paths: list[str] = field(default_factory=list)
    refs: list[str] = field(default_factory=list)
    added_utc: str = ""
    note: str = ""
    metadata: dict = field(default_factory=dict)


class TrustStore:
    """The JSON trust store at ``path`` (usually ``$IONSCREEN_HOME/trusted_models.json``)."""

    VERSION = 1

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def _locked(self):
        return file_lock(self.path.with_suffix(".lock"))

    def _read(self) -> dict[str, TrustEntry]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
            entries = data["entries"]
            return {sha: TrustEntry(**entry) for sha, entry in entries.items()}
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ConfigError(
                f"trust store {self.path} is unreadable ({err}); it was not modified. "
                "Fix or move the file, then trust your models again."
            ) from err

    def _write(self, entries: dict[str, TrustEntry]) -> None:
        payload = {
            "version": self.VERSION,
            "entries": {sha: asdict(e) for sha, e in sorted(entries.items())},
        }
        atomic_write_text(self.path, json.dumps(payload, indent=2))

    def entries(self) -> list[TrustEntry]:
        return list(self._read().values())

    def get(self, sha256: str) -> TrustEntry | None:
        return self._read().get(sha256)

    def is_trusted(self, sha256: str) -> bool:
        return sha256 in self._read()

    def add(
        self,
        sha256: str,
        *,
        source: str,
        path: str | Path | None = None,
        ref: str | None = None,
        note: str = "",
        metadata: dict | None = None,
    ) -> TrustEntry:
        """Trust ``sha256`` (idempotent: re-adding merges paths, refs and metadata)."""
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
        with self._locked():
            entries = self._read()
            entry = entries.get(sha256) or TrustEntry(
                sha256=sha256,
                source=source,
                added_utc=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                note=note,
            )
            if path is not None and str(Path(path).resolve()) not in entry.paths:
                entry.paths.append(str(Path(path).resolve()))
            if ref is not None and ref not in entry.refs:
                entry.refs.append(ref)
            if metadata:
                entry.metadata.update(metadata)
            entries[sha256] = entry
            self._write(entries)
            return entry

    def update_metadata(self, sha256: str, metadata: dict) -> None:
        with self._locked():
            entries = self._read()
            if sha256 in entries:
                entries[sha256].metadata.update(metadata)
                self._write(entries)

    def remove(self, sha256: str) -> bool:
        with self._locked():
            entries = self._read()
            if sha256 not in entries:
                return False
            del entries[sha256]
            self._write(entries)
            return True
