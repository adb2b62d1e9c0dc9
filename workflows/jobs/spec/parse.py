"""Reading a job file: YAML (or JSON) text → :class:`JobSpec`, with every problem named by key path and file line.

``load_job_spec(path)`` turns every problem (YAML syntax, unknown key, wrong type, missing structure file,
malformed model reference, invalid protocol override) into one :class:`JobSpecError` that names each key
path and its file line (``job.yaml:14: candidates[2].libary: unknown key (did you mean 'library'?)``).
Lines come from PyYAML's node marks (``yaml.compose``), since pydantic sees only the parsed data.

A job file is data written by hand, so it is read within bounds checked while composing, before any value
is built: at most ``MAX_JOB_FILE_BYTES``, nesting at most ``MAX_YAML_DEPTH`` deep, and no anchors or
aliases (``&a`` / ``*a``: six nested aliases in 500 bytes expand to a billion values).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from mlip.errors import InputError
from workflows.jobs.spec.schema import JobSpec, clean_message

MAX_JOB_FILE_BYTES = 4 * 1024 * 1024  # MAX_CANDIDATES entries of up to ~400 bytes (a file: with an oxidation: block)
MAX_YAML_DEPTH = 32  # a job file nests 5 levels; JSON or YAML deeper than this is not a job file


@dataclasses.dataclass(frozen=True)
class SpecProblem:
    """One problem of a job file: where (key path, line) and what."""

    path: str
    line: int | None
    message: str

    def render(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line is not None else source
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class JobSpecError(InputError):
    """A job file that cannot be used; ``problems`` lists each with its key path and line."""

    def __init__(self, source: str, problems: list[SpecProblem]):
        self.source = source
        self.problems = problems
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        lines = "\n".join("  " + p.render(source) for p in problems)
        super().__init__(f"job file {source} has {count}:\n{lines}")


def load_job_spec(path: str | Path) -> JobSpec:
    """Read and validate a job file; relative paths in it are relative to its directory."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_JOB_FILE_BYTES:
            raise JobSpecError(str(path), [SpecProblem("", None, _too_large(size))])
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise InputError(f"job file {path} does not exist") from err
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read job file {path}: {err}") from err
    return parse_job_spec(text, source=str(path), base_dir=path.resolve().parent)


def parse_job_spec(text: str, *, source: str = "<job>", base_dir: str | Path | None = None) -> JobSpec:
    """Validate job YAML (or JSON) text; errors name key paths and lines of ``source``."""
    data, lines = load_job_yaml(text, source)
    if data is None:
        raise JobSpecError(source, [SpecProblem("", 1, "the job file is empty")])
    if not isinstance(data, dict):
        raise JobSpecError(source, [SpecProblem("", 1, f"the job file must be a mapping of keys, got {type(data).__name__}")])
    context = {"base_dir": Path(base_dir) if base_dir is not None else Path.cwd()}
    try:
        return JobSpec.model_validate(data, context=context)
    except ValidationError as err:
        raise JobSpecError(source, _problems(err, lines)) from err


@dataclasses.dataclass
class _Lines:
    """1-based lines of keys and values, by key path (str keys, int indexes)."""

    key: dict[tuple, int]
    value: dict[tuple, int]


def _too_large(size: int) -> str:
    return (f"the job file is {size:,} bytes, more than the {MAX_JOB_FILE_BYTES:,} a job file may have "
            "(MAX_JOB_FILE_BYTES); split the candidates over several jobs")


class _RefusedYAML(Exception):
    """A construct the job-file loader does not accept, at a line."""

    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line = line
        self.message = message


def _loader_class():
    """libyaml's SafeLoader when PyYAML was built with it (5x faster on a large job), else the Python one."""
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def too_deep_message() -> str:
    return f"nested more than {MAX_YAML_DEPTH} levels deep (MAX_YAML_DEPTH); a job file is a few levels of mappings and lists"


def _check_events(text: str, loader) -> None:
    """Refuse anchors, aliases and nesting deeper than ``MAX_YAML_DEPTH`` from the parser's events, before any
    node is composed (the parser reads events one at a time, so a 100,000-deep document stops at level 33)."""
    import yaml

    depth = 0
    for event in yaml.parse(text, Loader=loader):
        anchor = getattr(event, "anchor", None)
        if isinstance(event, yaml.AliasEvent) or anchor is not None:
            raise _RefusedYAML(event.start_mark.line + 1, f"YAML anchors and aliases (&{anchor} / *{anchor}) are not "
                                                          "allowed in job files; write each value out")
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise _RefusedYAML(event.start_mark.line + 1, too_deep_message())
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1


def load_job_yaml(text: str, source: str) -> tuple[Any, _Lines]:
    """The job text as data (and its line table), within the bounds every job file and request body obeys:
    size, no anchors or aliases, nesting depth; JobSpecError naming the line otherwise."""
    import yaml

    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > MAX_JOB_FILE_BYTES:
        raise JobSpecError(source, [SpecProblem("", None, _too_large(size))])
    loader_class = _loader_class()
    loader = None
    try:
        _check_events(text, loader_class)
        loader = loader_class(text)
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except _RefusedYAML as err:
        raise JobSpecError(source, [SpecProblem("", err.line, err.message)]) from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark is not None else None
        message = " ".join(x for x in (err.context, err.problem) if x) or str(err)
        if "maximum nesting depth" in message:  # libyaml's own bound (1,000 levels), met before ours while scanning
            raise JobSpecError(source, [SpecProblem("", line, too_deep_message())]) from None
        raise JobSpecError(source, [SpecProblem("", line, f"YAML syntax: {message}")]) from err
    except yaml.YAMLError as err:
        raise JobSpecError(source, [SpecProblem("", None, f"YAML: {err}")]) from err
    except (ValueError, TypeError, OverflowError) as err:  # int()/date() of a scalar; text libyaml cannot encode
        raise JobSpecError(source, [SpecProblem("", None, f"YAML value: {err}")]) from err
    finally:
        if loader is not None:
            loader.dispose()
    lines = _Lines({}, {})
    duplicates: list[SpecProblem] = []
    if node is not None:
        _walk(node, (), lines, duplicates)
    if duplicates:
        raise JobSpecError(source, duplicates)
    return data, lines


def _walk(node, path: tuple, lines: _Lines, duplicates: list[SpecProblem]) -> None:
    import yaml

    lines.value.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.start_mark)
            line = key_node.start_mark.line + 1
            if key in seen:
                duplicates.append(SpecProblem(_format_path((*path, key)), line,
                                              f"duplicate key (first at line {seen[key]}); give each key once"))
                continue
            seen[key] = line
            lines.key[(*path, key)] = line
            _walk(value_node, (*path, key), lines, duplicates)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.key[(*path, i)] = item.start_mark.line + 1
            _walk(item, (*path, i), lines, duplicates)


def _format_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _line_for(loc: tuple, lines: _Lines) -> int | None:
    for n in range(len(loc), -1, -1):
        prefix = loc[:n]
        if prefix in lines.key:
            return lines.key[prefix]
        if prefix in lines.value:
            return lines.value[prefix]
    return None


def _problems(err: ValidationError, lines: _Lines) -> list[SpecProblem]:
    problems: list[SpecProblem] = []
    for e in err.errors():
        loc = tuple(e["loc"])
        ctx = e.get("ctx") or {}
        if e["type"] == "job_spec":
            for subloc, message in ctx["problems"]:
                full = (*loc, *subloc)
                problems.append(SpecProblem(_format_path(full), _line_for(full, lines), message))
            continue
        if e["type"] == "extra_forbidden":
            message = "unknown key" + _suggestion(loc)
        elif e["type"] == "missing":
            message = "required key is missing"
        else:
            message = clean_message(e["msg"])
            value = e.get("input")
            if isinstance(value, (str, int, float, bool)) and e["type"] not in ("value_error",):
                message += f" (got {value!r})"
        problems.append(SpecProblem(_format_path(loc), _line_for(loc, lines), message))
    seen: set = set()
    unique = []
    for p in problems:
        if (p.path, p.message) not in seen:
            seen.add((p.path, p.message))
            unique.append(p)
    return sorted(unique, key=lambda p: (p.line if p.line is not None else 0, p.path))


def _allowed_keys(loc: tuple) -> list[str]:
    """Field names of the model at ``loc`` (a path into JobSpec), for 'did you mean' hints."""
    current: Any = JobSpec
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return []
            current = field.annotation
        elif typing.get_origin(current) in (list, tuple) and isinstance(part, int):
            current = typing.get_args(current)[0]
        else:
            return []
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _unwrap(args[0])
    return annotation


def _suggestion(loc: tuple) -> str:
    allowed = _allowed_keys(loc[:-1])
    if not allowed:
        return ""
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (allowed here: {', '.join(allowed)})"
