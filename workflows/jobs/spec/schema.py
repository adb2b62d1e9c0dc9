"""The screening job file as a validated schema: candidates, stages (transport, NEB), ranking, resources.

Problems found while validating are raised as ``job_spec`` errors that carry their key paths
(:func:`keyed`, :func:`multi`), so :mod:`workflows.jobs.spec.parse` can name each one with its file line.
"""

from __future__ import annotations

import difflib
import enum
import re
import typing
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from mlip.errors import InputError
from mlip.util import canonical_sha256
from screening.candidates.library import CandidateKind
from screening.neb.band import NebParameters
from screening.neb.hops import Mechanism
from screening.ranking import RankingWeights
from screening.stages import Stage
from screening.transport.protocol import MAX_SEED, TransportProtocol

NAME_PATTERN = r"^[A-Za-z0-9._-]+$"

# Bounds of the job file's own fields (the protocol's are in screening.transport.protocol and
# screening.neb.band, the ranking's in screening.ranking, the seed's in screening.transport.protocol;
# structure sizes in screening.candidates.limits). Floats are finite everywhere.
MAX_CANDIDATES = 10_000  # candidates per job (each is built before planning; plan_job streams them)
MAX_NAME_LENGTH = 128
MAX_REFERENCE_LENGTH = 4096  # model reference, file path
MAX_INSERTED_IONS = 256  # n_ions of a cathode host
MAX_SUPERCELL_MULTIPLIER = 10  # each ordering-supercell multiplier (the cell's atoms are bounded too)
MAX_INSERTION_SITES = 256
MAX_OXIDATION_STATE = 8.0  # |formal charge| (OsO4: +8; N3-, C4-)
MAX_HOPS = 1000
MAX_HOP_LENGTH_A = 10.0  # ionic hops are 2-5 Å; a longer "hop" crosses several sites
MAX_GPUS_PER_WORKER = 64
MAX_IN_FLIGHT = 100_000
#: Text PostgreSQL cannot store: NUL, and lone UTF-16 surrogates (which UTF-8 cannot encode).
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")
_UNSTORABLE_MESSAGE = "text with a NUL character or an unpaired surrogate cannot be stored"


class Device(enum.StrEnum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


def _keyed(subloc: tuple, message: str) -> PydanticCustomError:
    """A validation error located ``subloc`` below the model that raises it (expanded by the formatter)."""
    return PydanticCustomError("job_spec", "{message}", {"message": message, "problems": [(tuple(subloc), message)]})


def _multi(problems: list[tuple[tuple, str]], summary: str) -> PydanticCustomError:
    text = summary + ": " + "; ".join(f"{'.'.join(map(str, loc)) or '(top)'}: {msg}" for loc, msg in problems)
    return PydanticCustomError("job_spec", "{message}", {"message": text, "problems": problems})


def unstorable_text(data: Any) -> list[tuple[tuple, str]]:
    """(key path, message) of each key and string of ``data`` the database cannot store; each container is
    visited once, so shared or cyclic values cannot multiply the work."""
    problems: list[tuple[tuple, str]] = []
    seen: set[int] = set()
    stack: list[tuple[Any, tuple]] = [(data, ())]
    while stack and len(problems) < 20:
        value, loc = stack.pop()
        if isinstance(value, str):
            if _UNSTORABLE.search(value):
                problems.append((loc, _UNSTORABLE_MESSAGE))
            continue
        if not isinstance(value, (dict, list, tuple)) or id(value) in seen:
            continue
        seen.add(id(value))
        for key, item in value.items() if isinstance(value, dict) else enumerate(value):
            if isinstance(key, str) and _UNSTORABLE.search(key):
                problems.append((loc, f"key {key!r}: {_UNSTORABLE_MESSAGE}"))
                continue
            stack.append((item, (*loc, key)))
    return sorted(problems, key=lambda p: tuple(map(str, p[0])))


def clean_message(msg: str) -> str:
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            return msg[len(prefix):]
    return msg


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _base_dir(info: ValidationInfo) -> Path:
    context = info.context or {}
    return Path(context.get("base_dir") or Path.cwd())


def _resolve(value: str, info: ValidationInfo) -> Path:
    """An absolute path; relative paths are relative to the job file's directory."""
    try:
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = _base_dir(info) / path
        return path.resolve()
    except (OSError, RuntimeError) as err:  # ~unknown-user, a symlink loop, a name the OS refuses
        raise ValueError(f"path {value!r} cannot be resolved: {err}") from err


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return False


def _check_ion(value: str | None) -> str | None:
    if value is None:
        return None
    from screening.candidates.oxidation import element_symbol, ion_charge

    symbol = element_symbol(value)
    ion_charge(symbol)  # InputError (a ValueError) for an ion without a stated charge
    return symbol


_Multiplier = Annotated[int, Field(ge=1, le=MAX_SUPERCELL_MULTIPLIER)]
_Fraction = Annotated[float, Field(ge=-1.0, le=1.0)]  # fractional coordinates of one cell


# ---------------------------------------------------------------------------------------------- candidates
class StructureSource(_Strict):
    """Where a structure comes from: a built-in library entry or a structure file (exactly one)."""

    _SOURCE_KEYS: typing.ClassVar[tuple[str, ...]] = ("library", "file")
    _FILE_ONLY: typing.ClassVar[tuple[str, ...]] = ("oxidation", "kind", "supercell", "insertion_sites_frac")

    library: str | None = Field(None, max_length=MAX_NAME_LENGTH,
                                description="Built-in entry name (`ionscreen candidates list`).")
    file: str | None = Field(None, min_length=1, max_length=MAX_REFERENCE_LENGTH,
                             description="CIF / POSCAR / extxyz, relative to the job file's directory.")
    ion: str | None = Field(None, max_length=8, description="Working ion (files; cathode hosts: the ion to insert).")
    n_ions: int | None = Field(None, ge=0, le=MAX_INSERTED_IONS,
                               description="Cathode hosts: ions to insert (default 1; 0 = empty host).")
    oxidation: dict[Annotated[str, Field(max_length=8)],
                    Annotated[float, Field(ge=-MAX_OXIDATION_STATE, le=MAX_OXIDATION_STATE)]] | None = Field(
        None, max_length=118, description="Files: explicit oxidation states per element.")
    kind: CandidateKind | None = Field(None, description="Files: electrolyte (default) or cathode_host.")
    supercell: tuple[_Multiplier, _Multiplier, _Multiplier] | None = Field(
        None, description="Files: ordering supercell (default: smallest neutral).")
    insertion_sites_frac: list[tuple[_Fraction, _Fraction, _Fraction]] | None = Field(
        None, max_length=MAX_INSERTION_SITES,
        description="Files: fractional coordinates of empty sites for the working ion (frameworks).")

    @field_validator("library")
    @classmethod
    def _known_entry(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from screening.candidates.library import get_entry

        entry = get_entry(value)  # InputError listing the known names
        if not entry.buildable:
            raise ValueError(f"library entry {entry.name} cannot be built yet ({entry.status.value})")
        return entry.name

    @field_validator("file")
    @classmethod
    def _existing_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        path = _resolve(value, info)
        if not _is_file(path):
            raise ValueError(f"structure file {path} does not exist")
        return str(path)

    @field_validator("ion")
    @classmethod
    def _ion(cls, value: str | None) -> str | None:
        return _check_ion(value)

    @model_validator(mode="after")
    def _one_source(self):
        present = [k for k in self._SOURCE_KEYS if getattr(self, k) is not None]
        if not present:
            raise _keyed((), f"give exactly one of: {', '.join(self._SOURCE_KEYS)}")
        if len(present) > 1:
            raise _keyed((present[1],), f"give only one of: {', '.join(self._SOURCE_KEYS)} (found {', '.join(present)})")
        self._check_options(present[0])
        return self

    def _check_options(self, source: str) -> None:
        if source == "library":
            from screening.candidates.library import get_entry

            entry = get_entry(self.library)
            for key in self._FILE_ONLY:
                if getattr(self, key) is not None:
                    raise _keyed((key,), f"{key} applies to structure files only, not to library entries")
            if entry.kind is CandidateKind.electrolyte:
                if self.n_ions is not None:
                    raise _keyed(("n_ions",), f"n_ions applies to cathode hosts only; {entry.name} is an electrolyte")
                if self.ion is not None and self.ion != entry.working_ion:
                    raise _keyed(("ion",), f"{entry.name} conducts {entry.working_ion}; to screen it with {self.ion} "
                                           f"use `substitute: {{library: {entry.name}, to: {self.ion}}}`")
        elif source == "file" and self.n_ions is not None:
            raise _keyed(("n_ions",), "n_ions applies to library cathode hosts only")

    @property
    def source_label(self) -> str:
        return f"library {self.library}" if self.library else f"file {self.file}"


class SubstituteSpec(StructureSource):
    """Working-ion substitution variant (``screening.candidates.substitute_working_ion``)."""

    to: str = Field(max_length=8, description="The new working ion (charge balance by vacancies).")

    @field_validator("to")
    @classmethod
    def _to_ion(cls, value: str) -> str:
        return _check_ion(value)


class DopeSpec(StructureSource):
    """Aliovalent doping variant (``screening.candidates.dope``)."""

    site: str = Field(max_length=8, description="Host element to replace partly.")
    dopant: str = Field(max_length=8, description="Dopant element.")
    fraction: float = Field(gt=0, le=1, description="Fraction of the host element replaced.")
    dopant_oxidation: float = Field(ge=-MAX_OXIDATION_STATE, le=MAX_OXIDATION_STATE,
                                    description="Stated oxidation state of the dopant (never guessed).")
    compensate_with: str | None = Field(None, max_length=8,
                                        description="Element whose vacancies compensate (default: the working ion).")


class CandidateSpec(StructureSource):
    """One item of ``candidates:``: exactly one of ``library``, ``file``, ``substitute``, ``dope``."""

    _SOURCE_KEYS: typing.ClassVar[tuple[str, ...]] = ("library", "file", "substitute", "dope")

    substitute: SubstituteSpec | None = None
    dope: DopeSpec | None = None
    name: str | None = Field(None, min_length=1, max_length=MAX_NAME_LENGTH,
                             description="Display name (default: entry name / file stem / variant).")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the ordering / insertion / variant site choice.")

    def _check_options(self, source: str) -> None:
        if source in ("substitute", "dope"):
            for key in ("ion", "n_ions", *self._FILE_ONLY):
                if getattr(self, key) is not None:
                    raise _keyed((key,), f"with {source}: put {key} inside the {source} mapping (it describes the "
                                         "structure the variant starts from)")
            return
        super()._check_options(source)

    @property
    def source(self) -> str:
        return next(k for k in self._SOURCE_KEYS if getattr(self, k) is not None)

    @property
    def label(self) -> str:
        if self.substitute is not None:
            return f"substitute {self.substitute.source_label} -> {self.substitute.to}"
        if self.dope is not None:
            d = self.dope
            return f"dope {d.source_label} {d.site}->{d.dopant} {d.fraction:g}"
        return self.source_label


# ---------------------------------------------------------------------------------------------- stages
class TransportSpec(_Strict):
    """``transport:`` — a preset name, or a mapping with ``preset`` and/or ``overrides`` (TransportProtocol fields)."""

    preset: str | None = Field(None, max_length=MAX_NAME_LENGTH, description="quick | standard; omit for a fully custom protocol.")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Any TransportProtocol field.")
    _protocol: TransportProtocol | None = PrivateAttr(None)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data):
        return {"preset": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _build(self):
        from screening.transport.protocol import preset_names

        if self.preset is not None and self.preset not in preset_names():
            raise _keyed(("preset",), f"unknown preset {self.preset!r}; presets: {', '.join(preset_names())} "
                                      "(or omit preset and give every field in overrides)")
        if "name" in self.overrides:
            raise _keyed(("overrides", "name"), "the protocol name is set by the preset (custom when overridden)")
        if self.preset is None and not self.overrides:
            raise _keyed((), "give a preset, overrides, or both")
        self._protocol = self._make()
        return self

    def _make(self) -> TransportProtocol:
        from screening.transport.protocol import make_protocol, preset

        try:
            if self.preset is not None:
                return preset(self.preset, **self.overrides)
            return make_protocol(name="custom", **self.overrides)
        except InputError as err:
            cause = err.__cause__
            if not isinstance(cause, ValidationError):
                raise _keyed(("overrides",) if self.overrides else ("preset",), str(err)) from None
            problems = []
            for e in cause.errors():
                loc = tuple(e["loc"])
                if loc and loc[0] in self.overrides:
                    where = ("overrides", *loc)
                else:
                    where = ("overrides",) if self.overrides else ("preset",)
                field = ".".join(map(str, loc)) or "protocol"
                if e["type"] == "extra_forbidden":
                    close = difflib.get_close_matches(str(loc[-1]), list(TransportProtocol.model_fields), n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    problems.append((where, f"unknown transport protocol field {field!r}{hint}"))
                else:
                    problems.append((where, f"transport protocol {field}: {clean_message(e['msg'])}"))
            raise _multi(problems, "invalid transport protocol") from None

    def protocol(self) -> TransportProtocol:
        if self._protocol is None:
            self._protocol = self._make()
        return self._protocol


class NebSpec(NebParameters):
    """``neb:`` — every NebParameters field, plus which hops to compute (``neb_for_structure`` arguments)."""

    max_hops: int | None = Field(None, ge=1, le=MAX_HOPS,
                                 description="Compute at most this many distinct hops (shortest first).")
    max_hop_length_A: float | None = Field(None, gt=0, le=MAX_HOP_LENGTH_A,
                                           description="Longest hop considered, Å (default: percolation-based).")
    mechanism: Mechanism | None = Field(None, description="vacancy | interstitial (default from the structure).")

    def parameters(self) -> NebParameters:
        return NebParameters(**self.model_dump(include=set(NebParameters.model_fields)))

    def driver_options(self) -> dict[str, Any]:
        """Keyword arguments of ``screening.neb.driver.neb_for_structure`` besides the parameters."""
        return {"max_hops": self.max_hops, "max_hop_length_A": self.max_hop_length_A, "mechanism": self.mechanism}


class ResourcesSpec(_Strict):
    """``resources:`` — how the job is spread over Ray workers."""

    workers: int | None = Field(None, ge=1, le=4096, description="Model-holding actors; auto (or unset): measured.")
    threads_per_worker: int | None = Field(None, ge=1, le=256, description="CPU threads per actor (torch intra-op); "
                                           "auto (or unset): measured.")
    gpus_per_worker: float = Field(0.0, ge=0, le=MAX_GPUS_PER_WORKER,
                                   description="GPUs requested per actor from Ray (fractions below 1 allowed).")
    max_in_flight: int | None = Field(None, ge=1, le=MAX_IN_FLIGHT,
                                      description="Bounded queue of submitted tasks (default 2 × workers).")
    max_attempts: int = Field(3, ge=1, le=100, description="Tries of a task whose worker died.")
    device: Device = Field(Device.AUTO, description="auto | cpu | cuda.")

    @field_validator("workers", "threads_per_worker", mode="before")
    @classmethod
    def _auto(cls, value):
        return None if isinstance(value, str) and value.strip().lower() == "auto" else value

    @model_validator(mode="after")
    def _sane(self):
        if self.max_in_flight is not None and self.workers is not None and self.max_in_flight < self.workers:
            raise _keyed(("max_in_flight",), f"max_in_flight ({self.max_in_flight}) must be at least workers "
                                             f"({self.workers}), or some workers never get work")
        if self.gpus_per_worker > 1 and self.gpus_per_worker != int(self.gpus_per_worker):
            raise _keyed(("gpus_per_worker",), "more than one GPU per worker must be a whole number (Ray)")
        if self.gpus_per_worker > 0 and self.device is Device.CPU:
            raise _keyed(("gpus_per_worker",), "gpus_per_worker > 0 with device: cpu reserves GPUs nobody uses")
        return self

    @property
    def in_flight_limit(self) -> int | None:
        """The bound on submitted tasks; None while the number of workers is still to be measured."""
        if self.max_in_flight is not None:
            return self.max_in_flight
        return 2 * self.workers if self.workers is not None else None


# ---------------------------------------------------------------------------------------------- the job
class JobSpec(_Strict):
    """A screening job: candidates × stages with one model (and optionally a second one to compare with), ranking
    weights and resources."""

    name: str = Field(pattern=NAME_PATTERN, max_length=MAX_NAME_LENGTH, description="Job name ([A-Za-z0-9._-]+).")
    model: str = Field(max_length=MAX_REFERENCE_LENGTH,
                       description="Model reference (path, mace-mp:<name>, models:/<name>@<alias>, bundled:<name>).")
    agreement_model: str | None = Field(
        None, max_length=MAX_REFERENCE_LENGTH,
        description="Optional second model reference: every stage runs with it too, and each candidate gets its "
                    "model disagreement (ranking weight `disagreement`).")
    working_ion: str | None = Field(None, max_length=8,
                                    description="Ion for file candidates and cathode hosts that do not say.")
    candidates: list[CandidateSpec] = Field(min_length=1, max_length=MAX_CANDIDATES)
    transport: TransportSpec | None = None
    neb: NebSpec | None = None
    ranking: RankingWeights = Field(default_factory=RankingWeights)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)

    @model_validator(mode="before")
    @classmethod
    def _storable_text(cls, data: Any) -> Any:
        """Every key and string of the job is stored (PostgreSQL's text refuses NUL): refuse the others first."""
        problems = unstorable_text(data)
        if problems:
            raise _multi(problems, "text the database cannot store")
        return data

    @field_validator("model", "agreement_model")
    @classmethod
    def _model_ref(cls, value: str | None, info: ValidationInfo) -> str | None:
        from mlip.refs import RefKind, parse_ref

        if value is None:
            return None
        raw = value.strip()
        try:
            ref = parse_ref(raw)  # InputError (a ValueError) listing the accepted forms
        except (OSError, RuntimeError) as err:  # resolving ~user or a symlink loop
            raise ValueError(f"model path {raw!r} cannot be resolved: {err}") from err
        if ref.kind is RefKind.PATH:
            path = _resolve(raw, info)
            if not _is_file(path):
                raise ValueError(f"model file {path} does not exist")
            return str(path)
        if ref.kind is RefKind.BUNDLED:
            from mlip import bundled

            bundled.get(ref.name)  # ModelNotFoundError (an InputError) naming the bundled models
        return ref.text

    @field_validator("working_ion")
    @classmethod
    def _ion(cls, value: str | None) -> str | None:
        return _check_ion(value)

    @model_validator(mode="after")
    def _consistent(self):
        if self.transport is None and self.neb is None:
            raise _keyed((), "give at least one of transport: or neb: (nothing to compute)")
        if self.agreement_model is not None and self.agreement_model == self.model:
            raise _keyed(("agreement_model",), "is the same reference as model; a model agrees with itself, so name "
                                               "a different model (or leave agreement_model out)")
        problems = []
        for i, item in enumerate(self.candidates):
            for sub, source in (((), item), (("substitute",), item.substitute), (("dope",), item.dope)):
                if source is not None and source.file is not None and source.ion is None and self.working_ion is None:
                    problems.append((("candidates", i, *sub, "ion"),
                                     "a structure file needs its working ion: set ion here or working_ion at the top"))
        if problems:
            raise _multi(problems, "missing working ion")
        return self

    # -- derived ---------------------------------------------------------------------------------
    @property
    def stages(self) -> list[Stage]:
        return [s for s, part in ((Stage.TRANSPORT, self.transport), (Stage.NEB, self.neb)) if part is not None]

    def transport_protocol(self) -> TransportProtocol | None:
        return None if self.transport is None else self.transport.protocol()

    def neb_parameters(self) -> NebParameters | None:
        return None if self.neb is None else self.neb.parameters()

    def protocol_dict(self, stage: Stage | str) -> dict[str, Any]:
        """What decides a stage's numbers, as data (stored with results; its hash is part of the task key)."""
        stage = Stage(stage)
        if stage is Stage.TRANSPORT:
            if self.transport is None:
                raise InputError("this job has no transport stage")
            return self.transport.protocol().physics_dict()
        if self.neb is None:
            raise InputError("this job has no neb stage")
        return self.neb.model_dump(mode="json")

    def protocol_hash(self, stage: Stage | str) -> str:
        if Stage(stage) is Stage.TRANSPORT and self.transport is not None:
            return self.transport.protocol().hash
        return canonical_sha256(self.protocol_dict(stage))

    @property
    def spec_hash(self) -> str:
        """SHA-256 of the canonical JSON of the whole spec (paths as resolved absolute paths)."""
        return canonical_sha256(self.model_dump(mode="json"))

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)
