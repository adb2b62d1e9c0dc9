"""Job submission through the REST API: the job file's schema (JSON or YAML body), a file-reference policy for
remote callers, planning (``workflows.jobs.plan_job``) and the background launch.

Everything that can be wrong with a submission is found before the database changes: body syntax and nesting
depth (the job-file parser's bounds, checked before any recursive parser runs), text the database cannot store,
the job schema (errors carry key paths and lines), file references, the model (resolved and trusted) and the
candidates. Remote callers may name structure and model files only by relative paths inside
``$IONSCREEN_HOME/submissions`` (an operator puts files there), never by absolute or ``..`` paths, so a token holder
cannot make the server read or probe other files.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from mlip.config import Settings
from mlip.errors import InputError, IonscreenError

SUBMISSIONS_DIR = "submissions"
_SOURCE = "request body"  # how the job parser's messages name a submission
_JSON_STRUCTURE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


class BodyFormat(enum.StrEnum):
    json = "json"
    yaml = "yaml"


#: Content types accepted by POST /api/jobs.
CONTENT_TYPES: dict[str, BodyFormat] = {
    "application/json": BodyFormat.json,
    "application/yaml": BodyFormat.yaml,
    "application/x-yaml": BodyFormat.yaml,
    "text/yaml": BodyFormat.yaml,
    "text/x-yaml": BodyFormat.yaml,
}


@dataclass
class SubmitError(Exception):
    """A refused submission: HTTP status and FastAPI-style error items (``loc``, ``msg``, ``type``, ``line``)."""

    status_code: int
    errors: list[dict[str, Any]] = field(default_factory=list)

    def __str__(self) -> str:
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in self.errors)


def submissions_dir(settings: Settings) -> Path:
    return settings.home / SUBMISSIONS_DIR


def _loc(path: str) -> list[str | int]:
    """``candidates[2].substitute.file`` → ["candidates", 2, "substitute", "file"]."""
    out: list[str | int] = []
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path):
        out.append(int(index) if index else name)
    return out


def _error(loc: list, msg: str, kind: str, line: int | None = None) -> dict[str, Any]:
    item = {"loc": ["body", *loc], "msg": msg, "type": kind}
    if line is not None:
        item["line"] = line
    return item


def _check_file_reference(value: Any, loc: list) -> list[dict[str, Any]]:
    if not isinstance(value, str):
        return []  # the schema reports the type
    parts = PurePosixPath(value.replace("\\", "/")).parts
    if value.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", value) or ".." in parts or "\x00" in value:
        return [_error(loc, f"{value!r}: files in an API submission are named relative to the server's "
                            f"{SUBMISSIONS_DIR}/ directory (no absolute paths, no '..')", "file_not_allowed")]
    return []


def check_file_references(data: Any) -> list[dict[str, Any]]:
    """Policy errors for structure-file and model-file references in a parsed job (before any file is looked at)."""
    if not isinstance(data, dict):
        return []
    problems: list[dict[str, Any]] = []
    for key in ("model", "agreement_model"):
        model = data.get(key)
        if not isinstance(model, str):
            continue
        from mlip.refs import RefKind, parse_ref

        try:
            is_path = parse_ref(model.strip()).kind is RefKind.PATH
        except Exception:  # noqa: BLE001 - a malformed reference is the schema's to report
            is_path = False
        if is_path:
            problems += _check_file_reference(model.strip(), [key])
    candidates = data.get("candidates")
    if isinstance(candidates, list):
        for i, item in enumerate(candidates):
            if not isinstance(item, dict):
                continue
            problems += _check_file_reference(item.get("file"), ["candidates", i, "file"])
            for variant in ("substitute", "dope"):
                inner = item.get(variant)
                if isinstance(inner, dict):
                    problems += _check_file_reference(inner.get("file"), ["candidates", i, variant, "file"])
    return problems


def _json_depth_exceeds(text: str, limit: int) -> bool:
    """Whether JSON ``text`` opens more than ``limit`` nested arrays/objects (brackets inside strings ignored).
    Counted before ``json.loads``, which recurses and would exhaust Python's stack on a deep enough body."""
    depth = 0
    for match in _JSON_STRUCTURE.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > limit:
                return True
        elif token in "]}":
            depth -= 1
    return False


def _load(text: str, fmt: BodyFormat) -> Any:
    """The body parsed just enough for the policy checks, within the job-file parser's bounds (one nesting limit,
    no YAML anchors or aliases); JobSpecError for a body outside them."""
    from workflows.jobs.spec.parse import MAX_YAML_DEPTH, load_job_yaml, too_deep_message

    if fmt is BodyFormat.yaml:
        return load_job_yaml(text, _SOURCE)[0]
    if _json_depth_exceeds(text, MAX_YAML_DEPTH):
        raise SubmitError(422, [_error([], too_deep_message(), "nesting_too_deep")])
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise SubmitError(422, [_error([], f"malformed JSON: {err.msg} (line {err.lineno}, column {err.colno})",
                                       "json_invalid", err.lineno)]) from None


def parse_body(body: bytes, fmt: BodyFormat, base_dir: Path):
    """Decode and validate a submitted job (relative files inside ``base_dir``); returns (text, JobSpec).
    SubmitError(422) on any problem."""
    from workflows.jobs.spec import JobSpecError, parse_job_spec
    from workflows.jobs.spec.parse import too_deep_message
    from workflows.jobs.spec.schema import unstorable_text

    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SubmitError(422, [_error([], f"the body is not UTF-8 text: {err}", "unicode_invalid")]) from None
    try:
        data = _load(text, fmt)
        problems = [_error(list(loc), message, "string_unstorable") for loc, message in unstorable_text(data)]
        problems = problems or check_file_references(data)
        if problems:
            raise SubmitError(422, problems)
        spec = parse_job_spec(text, source=_SOURCE, base_dir=base_dir)
    except JobSpecError as err:
        raise SubmitError(422, [_error(_loc(p.path), p.message,
                                       "nesting_too_deep" if p.message == too_deep_message() else "job_spec", p.line)
                                for p in err.problems]) from None
    except (InputError, ValueError, RecursionError) as err:  # the parser's own refusals, whatever their shape
        raise SubmitError(422, [_error([], f"the job cannot be read: {err}", "job_invalid")]) from None
    return text, spec


@dataclass
class Submitted:
    job_id: str
    name: str
    n_candidates: int
    n_tasks: int
    candidate_failures: list[str]
    spec_file: Path
    driver_pid: int | None


def submit(body: bytes, fmt: BodyFormat, *, settings: Settings, store, launcher,
           submitted_by: str | None = None) -> Submitted:
    """Validate, store (``plan_job``, atomic) and launch a job, recorded as submitted by ``submitted_by`` (the API
    token's name). Nothing is stored when it raises SubmitError."""
    from workflows.jobs.plan import plan_job

    directory = submissions_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    text, spec = parse_body(body, fmt, directory)
    try:
        plan = plan_job(spec, settings, store=store, submitted_by=submitted_by)
    except IonscreenError as err:
        raise SubmitError(422, [_error([], str(err), type(err).__name__)]) from err
    final = directory / f"{plan.job_id}.{fmt.value}"  # the submission as sent, kept beside the job
    final.write_text(text, encoding="utf-8")
    try:
        pid = launcher.launch(plan.job_id)
    except OSError as err:
        store.jobs.set_status(plan.job_id, "failed", error=f"the server could not start the job driver: {err}")
        raise SubmitError(500, [_error([], f"job {plan.job_id} was stored but its driver could not start: {err}",
                                       "launch_failed")]) from err
    return Submitted(plan.job_id, spec.name, plan.n_candidates, plan.n_tasks, plan.failures, final, pid)


__all__ = [
    "BodyFormat",
    "CONTENT_TYPES",
    "SUBMISSIONS_DIR",
    "SubmitError",
    "Submitted",
    "check_file_references",
    "parse_body",
    "submissions_dir",
    "submit",
]
