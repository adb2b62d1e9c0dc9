"""The on-disk dataset: validated, de-duplicated, split frames in compressed extxyz plus a JSON manifest.

Layout of a dataset directory::

    manifest.json             hash, counts, splits, sources; names the current frames file
    frames-<hash12>.xyz.gz    every frame, labels under mace-torch's default keys (REF_energy,
                              REF_forces, REF_stress), with config_type, source_file, source_frame,
                              structure_hash, split and level_of_theory in the info

A dataset holds one level of theory (the labeller: CP2K settings, or an MLIP teacher's SHA-256) unless an
import explicitly allows a mix, which the manifest then counts per level.

An import writes a new frames file under a new name, then atomically replaces the manifest that points
to it, then removes the old frames file: a crash at any moment leaves the old or the new dataset,
never a mix, and a failed import leaves the dataset untouched.
"""

from __future__ import annotations

import enum
import gzip
import hashlib
import io
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from ase import Atoms
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mlip.errors import InputError
from mlip.util import atomic_write_bytes, exclusive_or_refuse
from training.data.hashing import split_fraction, structure_hash
from training.data.readers import (
    Format,
    RawFrame,
    ReadOptions,
    detect_format,
    read_frames,
)
from training.data.validate import (
    Problem,
    ValidationLimits,
    check_frame,
    composition_key,
    energy_outliers,
)

DATASET_FORMAT = "ionscreen-dataset-v1"
MANIFEST = "manifest.json"
ENERGY_KEY, FORCES_KEY, STRESS_KEY = "REF_energy", "REF_forces", "REF_stress"
DEFAULT_CONFIG_TYPE = "Default"
ISOLATED_ATOM = "IsolatedAtom"
# info keys the store owns; values from input files under these names are replaced
_OWN_KEYS = {ENERGY_KEY, STRESS_KEY, "config_type", "source_file", "source_frame", "source_sha256",
             "structure_hash", "split", "level_of_theory"}


def level_of_theory(info: dict, fmt: str | None = None) -> str:
    """The labeller of a frame: as ``ionscreen label`` records it, rebuilt from the ``dft_*`` keys of CP2K frames
    labelled before labellers were recorded, else the DFT code its file format implies, with settings not
    recorded (a VASP file says nothing reliable about its functional or cutoff)."""
    if info.get("level_of_theory"):
        return str(info["level_of_theory"])
    if "dft_settings_hash" in info:
        from training.label import cp2k_level_of_theory

        return cp2k_level_of_theory(info.get("dft_xc"), info.get("dft_pseudopotential"), info.get("dft_basis"),
                                    info.get("dft_cutoff_Ry", 0), info.get("dft_rel_cutoff_Ry", 0))
    code = {"vasprun": "VASP", "outcar": "VASP", "cp2k-md": "CP2K"}.get(fmt or "", UNSPECIFIED)
    return f"{code} (settings not recorded)"


#: Frames whose file names no labeller (plain extxyz or ASE databases): counted, but they do not make a mix.
UNSPECIFIED = "unspecified"


class Split(str, enum.Enum):
    TRAIN = "train"
    VALID = "valid"
    TEST = "test"


class SplitSpec(BaseModel):
    """Fractions and seed of the train/validation/test split. A frame's split depends only on its
    structure hash and the seed, so appending frames never moves an existing frame."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 0
    train: float = Field(0.8, ge=0, le=1)
    valid: float = Field(0.1, ge=0, le=1)
    test: float = Field(0.1, ge=0, le=1)
    group_by: str | None = Field(
        None, description="info key whose value keeps frames together: with 'host', every variant of one structure "
        "(rattles, strains, defects, MD snapshots) lands in one split, so test errors are on unseen structures. "
        "None: each frame by its own structure hash.")

    @model_validator(mode="after")
    def _sum_to_one(self):
        if abs(self.train + self.valid + self.test - 1.0) > 1e-9:
            raise ValueError(f"split fractions must sum to 1 (got {self.train}+{self.valid}+{self.test})")
        return self

    def assign(self, structure_hex: str, config_type: str | None = None, group: str | None = None) -> Split:
        """The split of a frame: by ``group`` (its ``group_by`` value) when given, else by its structure hash."""
        if config_type == ISOLATED_ATOM:
            return Split.TRAIN  # mace-torch takes E0s from IsolatedAtom frames of the training file only
        u = split_fraction(structure_hex if group is None else f"group:{group}", self.seed)
        if u < self.train:
            return Split.TRAIN
        if u < self.train + self.valid:
            return Split.VALID
        return Split.TEST


class SourceRecord(BaseModel):
    file: str = Field(description="Path as given at import.")
    sha256: str
    format: str
    config_type: str | None
    n_frames: int = Field(description="Frames in the file.")
    n_accepted: int
    n_duplicates: int
    n_rejected: int
    imported_at: str


class Manifest(BaseModel):
    format: str = DATASET_FORMAT
    dataset_hash: str = Field(description="SHA-256 over the sorted per-frame digests (structure + labels).")
    frames_file: str
    frames_sha256: str
    n_frames: int
    n_atoms: int
    element_atom_counts: dict[str, int] = Field(description="Atoms of each element over all frames.")
    element_frame_counts: dict[str, int] = Field(description="Frames containing each element.")
    config_type_counts: dict[str, int]
    level_of_theory_counts: dict[str, int] = Field(
        default_factory=dict, description="Frames per labeller (level of theory); more than one only if allowed.")
    split: SplitSpec
    split_counts: dict[str, int]
    keys: dict[str, str] = Field(default_factory=lambda: {"energy": ENERGY_KEY, "forces": FORCES_KEY,
                                                          "stress": STRESS_KEY})
    units: dict[str, str] = Field(default_factory=lambda: {"energy": "eV", "forces": "eV/Å",
                                                           "stress": "eV/Å³ (ASE sign, Voigt xx yy zz yz xz xy)"})
    sources: list[SourceRecord] = Field(default_factory=list)
    code_version: str = ""
    updated_at: str = ""


class Rejected(BaseModel):
    source_file: str
    source_frame: int
    reason: str


class Duplicate(BaseModel):
    source_file: str
    source_frame: int
    duplicate_of: str = Field(description="'dataset' (already stored) or 'file:frame' of this import.")
    energy_difference_eV: float | None = Field(None, description="Label difference to the kept frame, eV.")


class ImportReport(BaseModel):
    dataset_dir: str
    n_read: int
    n_accepted: int
    duplicates: list[Duplicate]
    rejected: list[Rejected]
    written: bool = Field(description="False when nothing changed (all duplicates) or the import was refused.")
    previous_hash: str | None
    manifest: Manifest


# ---------------------------------------------------------------------------------------------------
# Hashing of stored frames


def _quantised(x: np.ndarray, step: float) -> bytes:
    return np.rint(np.asarray(x, dtype=float) / step).astype(np.int64).tobytes()


def frame_digest(atoms: Atoms) -> str:
    """Digest of one stored frame: structure hash, labels (to 1e-6 eV, 1e-6 eV/Å, 1e-9 eV/Å³), config type."""
    h = hashlib.sha256()
    h.update(atoms.info["structure_hash"].encode())
    h.update(_quantised([atoms.info[ENERGY_KEY]], 1e-6))
    h.update(_quantised(atoms.arrays[FORCES_KEY], 1e-6))
    if STRESS_KEY in atoms.info:
        h.update(_quantised(atoms.info[STRESS_KEY], 1e-9))
    h.update(str(atoms.info.get("config_type", "")).encode())
    return h.hexdigest()


def dataset_hash(frames: Iterable[Atoms]) -> str:
    """Order-independent hash of a dataset's content."""
    h = hashlib.sha256(DATASET_FORMAT.encode())
    for d in sorted(frame_digest(a) for a in frames):
        h.update(d.encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------
# Reading and writing


def _to_text(frames: Sequence[Atoms]) -> str:
    from ase.io import write

    buf = io.StringIO()
    write(buf, list(frames), format="extxyz", columns=["symbols", "positions", FORCES_KEY])
    return buf.getvalue()


def _from_text(text: str) -> list[Atoms]:
    from ase.io import read

    if not text.strip():
        return []
    return read(io.StringIO(text), index=":", format="extxyz")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sha256_path(path: Path) -> str:
    """SHA-256 of a file, or of a directory's files (names and contents, sorted)."""
    if not path.is_dir():
        return _sha256_file(path)
    if (path / "frames").is_dir():  # a labelling directory: only the labelled frames are data
        path = path / "frames"
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        h.update(str(f.relative_to(path)).encode())
        h.update(_sha256_file(f).encode())
    return h.hexdigest()


def _gzip_bytes(text: str) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="") as gz:  # mtime=0: same bytes each time
        gz.write(text.encode())
    return buf.getvalue()


class Dataset:
    """A loaded dataset: frames (ASE Atoms with REF_* labels) and its manifest."""

    def __init__(self, path: Path, manifest: Manifest, frames: list[Atoms]):
        self.path = path
        self.manifest = manifest
        self.frames = frames

    @property
    def hash(self) -> str:
        return self.manifest.dataset_hash

    def split(self, which: Split | str) -> list[Atoms]:
        which = Split(which)
        return [a for a in self.frames if a.info.get("split") == which.value]

    def write_splits(self, out_dir: str | Path) -> dict[str, Path]:
        """train.xyz, valid.xyz, test.xyz (plain extxyz, mace-torch's default keys) in ``out_dir``."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {}
        for s in Split:
            p = out_dir / f"{s.value}.xyz"
            atomic_write_bytes(p, _to_text(self.split(s)).encode())
            paths[s.value] = p
        return paths


def load_dataset(path: str | Path, *, verify: bool = True) -> Dataset:
    """Load a dataset directory; InputError if it is missing or its frames file does not match the manifest."""
    path = Path(path)
    mpath = path / MANIFEST
    if not mpath.exists():
        raise InputError(f"{path} is not an ionscreen dataset (no {MANIFEST}); create one with `ionscreen data import`")
    try:
        manifest = Manifest.model_validate_json(mpath.read_text())
    except ValueError as err:
        raise InputError(f"{mpath} is not a valid dataset manifest: {err}") from err
    fpath = path / manifest.frames_file
    if not fpath.exists():
        raise InputError(f"{path}: frames file {manifest.frames_file} named in the manifest is missing")
    if verify and _sha256_file(fpath) != manifest.frames_sha256:
        raise InputError(f"{fpath} does not match the SHA-256 in {MANIFEST}: the dataset was modified outside "
                         "ionscreen or damaged")
    with gzip.open(fpath, "rt") as fh:
        frames = _from_text(fh.read())
    if verify and dataset_hash(frames) != manifest.dataset_hash:
        raise InputError(f"{path}: frames do not reproduce the dataset hash in {MANIFEST}")
    return Dataset(path, manifest, frames)


def _locked(path: Path):
    return exclusive_or_refuse(path / ".lock", f"another import is writing to {path}; try again when it has finished")


def _store_frame(raw: RawFrame, config_type: str | None, source_sha: str) -> Atoms:
    atoms = Atoms(numbers=raw.atoms.numbers, positions=raw.atoms.positions, cell=raw.atoms.cell,
                  pbc=raw.atoms.pbc)
    for k, v in raw.info.items():
        if k not in _OWN_KEYS and isinstance(v, (str, int, float, bool, np.integer, np.floating)):
            atoms.info[k] = v
    atoms.info[ENERGY_KEY] = float(raw.energy)
    if raw.stress is not None:
        atoms.info[STRESS_KEY] = np.asarray(raw.stress, dtype=float)
    atoms.arrays[FORCES_KEY] = np.asarray(raw.forces, dtype=float)
    atoms.info["config_type"] = config_type or str(raw.info.get("config_type", DEFAULT_CONFIG_TYPE))
    atoms.info["source_file"] = Path(raw.source_file).name
    atoms.info["source_sha256"] = source_sha[:16]
    atoms.info["source_frame"] = int(raw.source_frame)
    atoms.info["level_of_theory"] = raw.info["level_of_theory"]
    return atoms


def _canonical(frames: list[Atoms]) -> list[Atoms]:
    """Frames exactly as they will be read back from the file, so hashes computed now match later."""
    return _from_text(_to_text(frames))


def summarise(frames: list[Atoms], split: SplitSpec) -> dict:
    atom_counts: Counter = Counter()
    frame_counts: Counter = Counter()
    for a in frames:
        syms = a.get_chemical_symbols()
        atom_counts.update(syms)
        frame_counts.update(set(syms))
    return {
        "n_frames": len(frames),
        "n_atoms": int(sum(len(a) for a in frames)),
        "element_atom_counts": dict(sorted(atom_counts.items())),
        "element_frame_counts": dict(sorted(frame_counts.items())),
        "config_type_counts": dict(sorted(Counter(str(a.info.get("config_type")) for a in frames).items())),
        "level_of_theory_counts": dict(sorted(Counter(level_of_theory(a.info) for a in frames).items())),
        "split_counts": {s.value: sum(1 for a in frames if a.info.get("split") == s.value) for s in Split},
    }


def import_files(
    paths: Sequence[str | Path],
    dataset_dir: str | Path,
    *,
    config_type: str | None = None,
    fmt: Format | None = None,
    read_options: ReadOptions | None = None,
    limits: ValidationLimits | None = None,
    split: SplitSpec | None = None,
    skip_invalid: bool = False,
    allow_mixed_levels: bool = False,
) -> ImportReport:
    """Import DFT frames from ``paths`` into the dataset at ``dataset_dir`` (created if absent).

    A file that cannot be read (e.g. a truncated vasprun.xml) raises InputError and nothing is imported.
    Frames failing validation are listed with file, frame and reason; unless ``skip_invalid`` their
    presence also raises InputError and nothing is imported. Duplicates (same structure hash as a stored
    frame or an earlier frame of this import) are dropped and reported. Frames of more than one level of
    theory (labeller) in the dataset raise InputError, and nothing is imported, unless ``allow_mixed_levels``;
    frames that name no labeller (plain extxyz, ASE databases) are counted but never make a mix.
    """
    from mlip.version import code_version

    dataset_dir = Path(dataset_dir)
    limits = limits or ValidationLimits()
    opts = read_options or ReadOptions()
    if not paths:
        raise InputError("no files to import")
    with _locked(dataset_dir):
        existing: Dataset | None = None
        if (dataset_dir / MANIFEST).exists():
            existing = load_dataset(dataset_dir)
            if split is not None and split != existing.manifest.split:
                raise InputError(
                    f"{dataset_dir} was split with {existing.manifest.split.model_dump()}; a different split "
                    f"({split.model_dump()}) would move existing frames. Omit the split options or use a new dataset."
                )
            split = existing.manifest.split
        split = split or SplitSpec()
        old_frames = existing.frames if existing else []
        stored_hashes = {a.info["structure_hash"]: a for a in old_frames}
        existing_energies: dict[tuple, list[float]] = {}
        for a in old_frames:
            key = (level_of_theory(a.info), composition_key(a.get_chemical_symbols()))
            existing_energies.setdefault(key, []).append(
                a.info[ENERGY_KEY] / len(a))

        # 1. read every file first: a file-level error stops the import before anything is written
        per_file: list[tuple[Path, str, Format, list[RawFrame]]] = []
        for p in paths:
            p = Path(p)
            f = fmt or detect_format(p)
            raws = read_frames(p, f, opts)
            per_file.append((p, _sha256_path(p), f, raws))

        # levels first: a mix of labellers would otherwise surface as energy outliers, naming the symptom.
        # Each frame's level is settled once here (its file's format decides it for frames that name none).
        for _, _, f, raws in per_file:
            for raw in raws:
                raw.info["level_of_theory"] = level_of_theory(raw.info, f.value)
        incoming = [raw.info["level_of_theory"] for _, _, _, raws in per_file for raw in raws]
        _refuse_mixed_levels(old_frames, incoming, dataset_dir, allow_mixed_levels)

        # 2. validate frame by frame
        rejected: list[Problem] = []
        candidates: list[tuple[int, RawFrame, str, str]] = []  # (file index, raw, sha, format)
        for fi, (p, sha, f, raws) in enumerate(per_file):
            for raw in raws:
                reason = check_frame(raw, limits)
                if reason:
                    rejected.append(Problem(str(p), raw.source_frame, reason))
                else:
                    candidates.append((fi, raw, sha, f.value))
        levels = [(k, raw, raw.info["level_of_theory"]) for k, (_, raw, _, _) in enumerate(candidates)]
        outliers = energy_outliers(levels, existing_energies, limits)
        for k in sorted(outliers):
            raw = candidates[k][1]
            rejected.append(Problem(raw.source_file, raw.source_frame, outliers[k]))
        candidates = [c for k, c in enumerate(candidates) if k not in outliers]
        if rejected and not skip_invalid:
            shown = "\n  ".join(str(r) for r in rejected[:20])
            more = f"\n  ... and {len(rejected) - 20} more" if len(rejected) > 20 else ""
            raise InputError(
                f"{len(rejected)} frame(s) failed validation; nothing was imported into {dataset_dir}:\n  "
                f"{shown}{more}\nFix the input, or pass --skip-invalid to import only the valid frames."
            )

        # 3. canonicalise, hash, de-duplicate
        stored = _canonical([_store_frame(raw, config_type, sha) for _, raw, sha, _ in candidates])
        duplicates: list[Duplicate] = []
        new_frames: list[Atoms] = []
        seen_now: dict[str, tuple[str, int, float]] = {}
        counts = Counter()
        for (fi, raw, _, _), atoms in zip(candidates, stored):
            key = structure_hash(atoms)
            if key in stored_hashes:
                old = stored_hashes[key]
                duplicates.append(Duplicate(source_file=raw.source_file, source_frame=raw.source_frame,
                                            duplicate_of="dataset",
                                            energy_difference_eV=float(atoms.info[ENERGY_KEY] - old.info[ENERGY_KEY])))
                counts[(fi, "dup")] += 1
                continue
            if key in seen_now:
                f0, i0, e0 = seen_now[key]
                duplicates.append(Duplicate(source_file=raw.source_file, source_frame=raw.source_frame,
                                            duplicate_of=f"{f0}:{i0}",
                                            energy_difference_eV=float(atoms.info[ENERGY_KEY] - e0)))
                counts[(fi, "dup")] += 1
                continue
            seen_now[key] = (raw.source_file, raw.source_frame, atoms.info[ENERGY_KEY])
            atoms.info["structure_hash"] = key
            group = atoms.info.get(split.group_by) if split.group_by else None
            if split.group_by and group is None:
                raise InputError(f"{raw.source_file}, frame {raw.source_frame}: no '{split.group_by}' in its info, "
                                 f"which this dataset's split groups by; nothing was imported into {dataset_dir}")
            atoms.info["split"] = split.assign(key, atoms.info.get("config_type"),
                                               None if group is None else str(group)).value
            new_frames.append(atoms)
            counts[(fi, "ok")] += 1
        for p_rej in rejected:
            fi = next(i for i, pf in enumerate(per_file) if str(pf[0]) == p_rej.source_file)
            counts[(fi, "rej")] += 1

        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        sources = list(existing.manifest.sources) if existing else []
        for fi, (p, sha, f, raws) in enumerate(per_file):
            sources.append(SourceRecord(file=str(p), sha256=sha, format=f.value, config_type=config_type,
                                        n_frames=len(raws), n_accepted=counts[(fi, "ok")],
                                        n_duplicates=counts[(fi, "dup")], n_rejected=counts[(fi, "rej")],
                                        imported_at=now))
        all_frames = old_frames + new_frames
        previous_hash = existing.manifest.dataset_hash if existing else None
        report_rejected = [Rejected(source_file=r.source_file, source_frame=r.source_frame, reason=r.reason)
                           for r in rejected]
        if not new_frames and existing is not None:
            return ImportReport(dataset_dir=str(dataset_dir), n_read=sum(len(x[3]) for x in per_file),
                                n_accepted=0, duplicates=duplicates, rejected=report_rejected, written=False,
                                previous_hash=previous_hash, manifest=existing.manifest)

        # 4. write: new frames file under a new name, then the manifest, then drop the old frames file
        ds_hash = dataset_hash(all_frames)
        frames_name = f"frames-{ds_hash[:12]}.xyz.gz"
        data = _gzip_bytes(_to_text(all_frames))
        fpath = dataset_dir / frames_name
        atomic_write_bytes(fpath, data)
        manifest = Manifest(
            dataset_hash=ds_hash, frames_file=frames_name, frames_sha256=hashlib.sha256(data).hexdigest(),
            split=split, sources=sources, code_version=code_version(), updated_at=now,
            **summarise(all_frames, split),
        )
        atomic_write_bytes(dataset_dir / MANIFEST, (manifest.model_dump_json(indent=2) + "\n").encode())
        if existing and existing.manifest.frames_file != frames_name:
            (dataset_dir / existing.manifest.frames_file).unlink(missing_ok=True)
        return ImportReport(dataset_dir=str(dataset_dir), n_read=sum(len(x[3]) for x in per_file),
                            n_accepted=len(new_frames), duplicates=duplicates, rejected=report_rejected,
                            written=True, previous_hash=previous_hash, manifest=manifest)


def _refuse_mixed_levels(old: list[Atoms], new_levels: list[str], dataset_dir: Path, allowed: bool) -> None:
    if allowed:
        return
    before = Counter(level_of_theory(a.info) for a in old)
    now = Counter(new_levels)
    levels = before + now
    known = [level for level in levels if not level.startswith(UNSPECIFIED)]
    if len(known) > 1:
        lines = "\n  ".join(f"{level}: {before[level]} stored, {now[level]} in this import" for level in sorted(levels))
        raise InputError(
            f"this import would mix levels of theory in {dataset_dir}; nothing was imported:\n  {lines}\n"
            "Energies and forces of different labellers disagree, so a model trained on the mix learns neither. "
            "Use one dataset per labeller, or pass --allow-mixed-levels (e.g. for multihead fine-tuning with "
            "replay, where each level gets its own head)."
        )
