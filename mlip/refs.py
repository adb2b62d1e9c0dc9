"""Model reference strings and their parsed form.

A reference names a model in one of six ways:

* ``path/to/file.model`` — a file on disk;
* ``mace-mp:<name>`` — a MACE foundation model (``small``, ``medium``, ``medium-mpa-0``, ...);
* ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` — the MLflow model registry;
* ``bundled:<name>`` — a model shipped inside the ionscreen package;
* ``ase:<family>`` — a potential defined by code in ASE (``ase:emt``), no file involved;
* ``<family>:<name>`` — weights shipped inside an installed package (``chgnet:0.3.0``, ``chgnet:r2scan``,
  ``sevennet:7net-0``).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from pathlib import Path

from mlip.backends import BACKENDS, code_defined_families, packaged_families
from mlip.errors import InputError


class RefKind(enum.StrEnum):
    PATH = "path"
    FOUNDATION = "mace-mp"
    REGISTRY = "registry"
    BUNDLED = "bundled"
    ASE = "ase"  # the name is a code-defined family of mlip.backends
    PACKAGED = "packaged"  # weights shipped inside an installed package; ``family`` says whose


_REGISTRY_RE = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ModelRef:
    """A parsed model reference. ``text`` is the canonical string form."""

    kind: RefKind
    name: str
    alias: str | None = None
    version: int | None = None
    path: Path | None = None
    family: str | None = None  # PACKAGED only: the family whose package ships the weights

    @property
    def text(self) -> str:
        if self.kind is RefKind.PATH:
            return str(self.path)
        if self.kind is RefKind.FOUNDATION:
            return f"mace-mp:{self.name}"
        if self.kind is RefKind.BUNDLED:
            return f"bundled:{self.name}"
        if self.kind is RefKind.ASE:
            return f"ase:{self.name}"
        if self.kind is RefKind.PACKAGED:
            return f"{self.family}:{self.name}"
        if self.alias is not None:
            return f"models:/{self.name}@{self.alias}"
        return f"models:/{self.name}/{self.version}"

    def __str__(self) -> str:
        return self.text


def parse_ref(text: str | Path | ModelRef) -> ModelRef:
    """Parse a reference string; raises :class:`InputError` with the accepted forms on failure."""
    if isinstance(text, ModelRef):
        return text
    if isinstance(text, Path):
        return ModelRef(RefKind.PATH, name=text.name, path=text.expanduser().resolve())
    raw = str(text).strip()
    if not raw:
        raise InputError("empty model reference; " + _FORMS)
    if raw.startswith("models:"):
        m = _REGISTRY_RE.match(raw)
        if not m:
            raise InputError(f"malformed registry reference {raw!r}; " + _FORMS)
        version = m.group("version")
        return ModelRef(
            RefKind.REGISTRY,
            name=m.group("name"),
            alias=m.group("alias"),
            version=int(version) if version is not None else None,
        )
    if raw.startswith("ase:"):
        return _parse_code_ref(raw)
    family = raw.partition(":")[0]
    if family in packaged_families():
        return _parse_packaged_ref(raw, family)
    for prefix, kind in (("mace-mp:", RefKind.FOUNDATION), ("bundled:", RefKind.BUNDLED)):
        if raw.startswith(prefix):
            name = raw[len(prefix):]
            if not _NAME_RE.match(name):
                raise InputError(f"malformed model name {name!r} in {raw!r}; " + _FORMS)
            return ModelRef(kind, name=name)
    if re.match(r"^[a-z][a-z0-9+.-]*:(?!\\)", raw) and not re.match(r"^[A-Za-z]:[\\/]", raw):
        raise InputError(f"unknown model reference scheme in {raw!r}; " + _FORMS)
    path = Path(raw).expanduser().resolve()
    return ModelRef(RefKind.PATH, name=path.name, path=path)


def _parse_code_ref(raw: str) -> ModelRef:
    name = raw.removeprefix("ase:")
    known = code_defined_families()
    if name not in known:
        raise InputError(
            f"unknown ASE potential {name!r} in {raw!r}: ase: names a potential family defined by code; "
            f"known: {', '.join(f'ase:{family}' for family in known)} (all potential families: {', '.join(BACKENDS)})"
        )
    return ModelRef(RefKind.ASE, name=name)


def _parse_packaged_ref(raw: str, family: str) -> ModelRef:
    name = raw.removeprefix(f"{family}:")
    known = BACKENDS[family].packaged_weights()
    if name not in known:
        raise InputError(f"unknown {BACKENDS[family].label} weights {name!r} in {raw!r}; "
                         f"known: {', '.join(f'{family}:{n}' for n in known)}")
    return ModelRef(RefKind.PACKAGED, name=name, family=family)


_FORMS = (
    "use one of: path/to/file.model, mace-mp:<name> (e.g. mace-mp:small), "
    "models:/<name>@<alias>, models:/<name>/<version>, bundled:<name>, ase:<family> (e.g. ase:emt), "
    # every family with packaged weights, from the backends (as _parse_packaged_ref names them)
    + ", ".join(f"{family}:<name> ({', '.join(f'{family}:{name}' for name in BACKENDS[family].packaged_weights())})"
                for family in packaged_families())
)
