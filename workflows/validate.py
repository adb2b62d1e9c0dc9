"""``ionscreen validate``: run named validation sets for one or more models, journal every finished entry (a re-run
skips them), and write one report (Markdown with plots, JSON of every figure), logged to MLflow per model.

Layout under the output directory::

    models/<sha256[:16]>/<set>/<fingerprint[:12]>/journal.jsonl   one line per finished entry (append, fsync)
                                                 /entries/<key>/    the entry's work directory (MD checkpoints)
                                                 /plots/*.png
    models/<sha256[:16]>/validation_card.md                          the figures as they appear on the model card
    report.md, report.json                                           this run: every model and set side by side

A set's ``fingerprint()`` (protocol and data) is part of the path, so a changed protocol never reuses entries or
checkpoints computed under another. ``merge_journals`` brings in the journal lines of another run of the same model,
set and fingerprint (another machine, or a copy kept between sessions); lines computed under another model or
fingerprint are never merged. The runner owns the journal, MLflow and the report; the sets own physics and
statistics (:mod:`screening.validation.base`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib
import inspect
import json
import math
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from mlip.config import Settings, load_settings, mask_password
from mlip.errors import InputError, IonscreenError
from mlip.util import atomic_write_text, end_with_parent, exclusive_or_refuse
from screening.validation.base import EntryStatus, RunContext, ValidationEntry, ValidationSet
from workflows.jobs.layout import cores

#: Set name → module that defines it (imported only when the set is asked for). The class is the one in the
#: module whose ``name`` is the set name.
SET_MODULES: dict[str, str] = {
    "conductivity": "screening.validation.conductivity",
    "barriers": "screening.validation.barriers",
    "frames": "training.validation_frames",
    "dynamics": "screening.validation.dynamics",
}
EXPERIMENT = "ionscreen-validation"
#: Most worker processes one set may run at once (``--workers``).
MAX_WORKERS = 64
Progress = Callable[[str, dict], None]


def set_names() -> list[str]:
    return list(SET_MODULES)


def make_set(name: str, options: Mapping[str, Any] | None = None, *, module_name: str | None = None) -> ValidationSet:
    """The named set, built with those ``options`` its constructor takes (None values left out). ``module_name``
    (default: the one ``SET_MODULES`` names) is where its class is defined."""
    if module_name is None:
        if name not in SET_MODULES:
            raise InputError(f"unknown validation set {name!r}; sets: {', '.join(SET_MODULES)}")
        module_name = SET_MODULES[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        raise InputError(f"the {name} validation set is not part of this installation ({module_name} "
                         "is missing)") from err
    classes = [obj for obj in vars(module).values()
               if inspect.isclass(obj) and getattr(obj, "name", None) == name and obj.__module__ == module.__name__]
    if len(classes) != 1:
        raise InputError(f"{module_name} defines {len(classes)} classes named {name!r}; expected one")
    cls = classes[0]
    params = inspect.signature(cls).parameters
    given = {k: v for k, v in (options or {}).items() if v is not None and k in params}
    missing = [k for k, p in params.items() if p.default is inspect.Parameter.empty
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and k not in given]
    if missing:
        flags = ", ".join("--" + k.replace("_", "-") for k in missing)
        raise InputError(f"the {name} set needs {flags}")
    instance = cls(**given)
    if not isinstance(instance, ValidationSet):
        raise InputError(f"{cls.__qualname__} does not implement the validation set protocol")
    return instance


def set_fingerprint(vset) -> str:
    """The set's own fingerprint (protocol and data), or its name when it has none."""
    fp = getattr(vset, "fingerprint", None)
    return fp() if callable(fp) else hashlib.sha256(vset.name.encode()).hexdigest()


def _safe(key: str) -> str:
    """A directory name for an entry key (readable part + hash, so distinct keys never collide)."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", key)[:60]
    return f"{readable}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


class Journal:
    """One JSON line per finished entry, appended and fsynced as the entry finishes. A line cut by a kill is
    ignored when read (that entry simply runs again)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def read(self) -> dict[str, dict]:
        if not self.path.exists():
            return {}
        return {item["key"]: item for _, item in self.parse(self.path.read_text(encoding="utf-8"))}

    @staticmethod
    def parse(text: str) -> list[tuple[int, dict]]:
        """(line number, item) of every whole journal line in ``text``; a line cut by a kill is left out."""
        items = []
        for number, line in enumerate(text.splitlines(), start=1):
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(item, dict) and isinstance(item.get("key"), str) and isinstance(item.get("record"), dict):
                items.append((number, item))
        return items

    def append(self, item: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            if fh.tell() and not self.path.read_bytes().endswith(b"\n"):
                fh.write("\n")  # a kill left half a line: start a fresh one
            fh.write(json.dumps(item, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


#: What a journal line must carry to be merged into another run's journal.
_MERGE_FIELDS = ("set", "fingerprint", "model_sha256")


def read_merge_journals(paths: Sequence[str | Path]) -> list[tuple[Path, list[dict]]]:
    """The lines of each journal named by ``--merge-journal``: a file that is missing, unreadable, holds no journal
    line, or holds a line without its set, fingerprint, model SHA-256 or a known status is refused, naming the file
    and line. Lines cut by a kill are left out, as :meth:`Journal.read` does."""
    statuses = {s.value for s in EntryStatus}
    out = []
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            raise InputError(f"--merge-journal {path}: no such file")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(f"--merge-journal {path}: cannot read it ({err})") from err
        items = Journal.parse(text)
        if not items:
            raise InputError(f"--merge-journal {path}: holds no journal line (one JSON object per finished entry, "
                             "as `ionscreen validate` writes to journal.jsonl)")
        for number, item in items:
            lacking = [k for k in _MERGE_FIELDS if not isinstance(item.get(k), str)]
            if lacking:
                raise InputError(f"--merge-journal {path}, line {number} ({item['key']}): lacks "
                                 f"{', '.join(lacking)}; only journal lines `ionscreen validate` wrote can be merged")
            if item["record"].get("status") not in statuses:
                raise InputError(f"--merge-journal {path}, line {number} ({item['key']}): record status "
                                 f"{item['record'].get('status')!r} is not one of {', '.join(sorted(statuses))}")
        out.append((path, [item for _, item in items]))
    return out


def _check_entry_keys(keys: Sequence[str], sets: Mapping[str, Any], *, full: bool) -> None:
    """Refuse ``--entries`` keys that no set holds (in the subset ``full`` picks), and sets none of the keys is in."""
    held = {name: {e.key for e in vset.entries(full=full)} for name, vset in sets.items()}
    unknown = [k for k in keys if not any(k in h for h in held.values())]
    where = "" if full else " (without --full: its CPU subset)"
    if unknown:
        examples = {name: ", ".join(sorted(h)[:4]) + (", ..." if len(h) > 4 else "") for name, h in held.items()}
        raise InputError(f"--entries: no entry {', '.join(map(repr, unknown))} in "
                         + " or ".join(f"the {name} set{where}, whose keys look like {examples[name]}" for name in sets))
    empty = [name for name, h in held.items() if not h.intersection(keys)]
    if empty:
        raise InputError(f"--entries names no entry of the {' or '.join(empty)} set{where}; name one, or leave "
                         "that set out")


def _merge_mismatch(path: Path, lines: Sequence[dict], runs: Mapping[tuple[str, str], str],
                    refs: Mapping[str, str]) -> str:
    """Why none of a merged journal's lines belongs to this run (``runs``: (model SHA-256, set) → fingerprint)."""
    groups: dict[tuple[str, str, str, str], int] = {}
    for item in lines:
        group = (item.get("model_ref") or "?", item["model_sha256"], item["set"], item["fingerprint"])
        groups[group] = groups.get(group, 0) + 1
    held = "; ".join(f"{n} of {ref} (sha256 {sha[:12]}) · {name} under fingerprint {fp[:12]}"
                     for (ref, sha, name, fp), n in groups.items())
    this = "; ".join(f"{refs[sha]} (sha256 {sha[:12]}) · {name} under fingerprint {fp[:12]}"
                     for (sha, name), fp in runs.items())
    stale = any((sha, name) in runs for _, sha, name, _ in groups)
    why = (" The same model and set under another fingerprint means the protocol or the reference data changed: "
           "those entries do not count for this run." if stale else "")
    return f"--merge-journal {path}: none of its {len(lines)} lines is for this run. It holds {held}; this run is {this}.{why}"


@dataclass
class SetRun:
    """One (model, set) of a validation run: its records (journal order = entry order), figures and plots."""

    set_name: str
    fingerprint: str
    directory: Path
    records: list[dict]
    n_run_now: int
    n_skipped: int
    wall_s: float
    n_merged: int = 0  # of the skipped entries, how many this run merged from --merge-journal files
    missing: list[str] = field(default_factory=list)  # entries without a journal line (only --report-only has any)
    summary: dict = field(default_factory=dict)
    plots: list[Path] = field(default_factory=list)
    describe: dict = field(default_factory=dict)

    @property
    def entry_wall_s(self) -> float:
        """Wall time of the finished entries as the journal recorded it (this run and earlier ones)."""
        return float(sum(r.get("entry_wall_s") or 0.0 for r in self.records))

    def document(self, root: Path) -> dict:
        """What the report and the model's validation.json both say of this set (plots relative to ``root``)."""
        return {"fingerprint": self.fingerprint, "describe": self.describe, "figures": self.summary,
                "n_entries": len(self.records), "n_missing": len(self.missing), "missing": self.missing,
                "plots": [_rel(p, root) for p in self.plots]}


@dataclass
class ModelRun:
    ref: str
    sha256: str
    family: str
    elements: list[str]
    registered: str | None  # models:/NAME/VERSION when the reference is a registry version
    sets: dict[str, SetRun] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    card_path: Path | None = None


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _registered(ref: str, settings: Settings) -> tuple[str | None, Any]:
    from mlip.refs import RefKind, parse_ref

    parsed = parse_ref(ref)
    if parsed.kind is not RefKind.REGISTRY:
        return None, None
    from mlip import registry

    version = registry.get_version(parsed, settings)
    return f"models:/{version.name}/{version.version}", version


def _run_entry(loaded, vset, entry: ValidationEntry, workdir: Path, *, device: str, seed: int, fresh: bool) -> dict:
    """One entry the model covers: the set's record (an ``IonscreenError`` becomes a failed record), exactly as the
    journal will hold it. ``fresh``: start from an empty work directory (a retried failure never continues from its
    checkpoints)."""
    from mlip.calculators import Task

    if fresh and workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    context = RunContext(
        model_ref=loaded.ref, model_sha256=loaded.sha256, loaded=loaded,
        calculator=lambda task=Task.SINGLE_POINT, dtype=None: loaded.calculator(task=task, device=device, dtype=dtype),
        device=device, workdir=workdir, seed=seed)
    try:
        record = vset.run_entry(entry, context)
    except IonscreenError as err:  # the set should say so itself; a failed entry never stops the run
        record = {"status": EntryStatus.FAILED.value, "error": f"{type(err).__name__}: {err}"[:1000]}
    record = json.loads(json.dumps(record, default=str))  # what the journal will hold, exactly
    EntryStatus(record.get("status"))
    return record


def _uncovered(missing: Sequence[str]) -> dict:
    """The record of an entry with elements the model does not cover (it never runs)."""
    return {"status": EntryStatus.UNCOVERED.value, "missing_elements": list(missing)}


#: What a worker process of ``run_set(workers=N)`` holds: its loaded model and its set, built once.
_WORKER: dict[str, Any] = {}


def _init_worker(model_ref: str, model_sha256: str, settings: Settings, set_name: str, set_module: str,
                 set_options: Mapping[str, Any] | None, threads: int, driver_pid: int) -> None:
    """Initialiser of a worker process: end with the driver (a killed driver's workers would go on running their
    entries for hours, writing into the entry directories of its next run, whose lock they do not hold), load the
    parent's model (it must be the same file) and build its set."""
    from mlip.loader import load_model

    end_with_parent(driver_pid)

    loaded = load_model(model_ref, settings)
    if loaded.sha256 != model_sha256:
        raise IonscreenError(f"a validation worker loaded {model_ref} as sha256 {loaded.sha256[:12]}, the driver as "
                             f"{model_sha256[:12]}; the model changed during the run")
    # the share holds for torch imported later too (a family whose loading imports nothing, as SevenNet's, whose
    # worker process takes this process's thread count), and for threads of libraries that read the variable
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:  # models without torch (ase:emt) never import it
        sys.modules["torch"].set_num_threads(threads)
    _WORKER.update(loaded=loaded, vset=make_set(set_name, set_options, module_name=set_module))


def _worker_entry(entry: ValidationEntry, workdir: str, device: str, seed: int, fresh: bool) -> tuple[dict, float]:
    started = time.perf_counter()
    record = _run_entry(_WORKER["loaded"], _WORKER["vset"], entry, Path(workdir), device=device, seed=seed,
                        fresh=fresh)
    return record, time.perf_counter() - started


def _check_workers(workers: int | str) -> int | str:
    """``workers`` as given to ``run_validation``: ``auto`` or a whole number from 1 to ``MAX_WORKERS``."""
    if workers == "auto":
        return workers
    try:
        value = int(workers)
    except (TypeError, ValueError):
        value = None
    if value is None or str(value) != str(workers).strip() or not 1 <= value <= MAX_WORKERS:
        raise InputError(f"--workers must be auto or a whole number between 1 and {MAX_WORKERS}, got {workers!r}")
    return value


def run_set(loaded, vset, *, model_dir: Path, device: str, limit: int | None, full: bool, retry_failed: bool,
            progress: Progress, seed: int = 0, workers: int = 1, settings: Settings | None = None,
            set_options: Mapping[str, Any] | None = None,
            merge: Sequence[tuple[Path, Sequence[dict]]] = (), only: Sequence[str] = (),
            report_only: bool = False) -> SetRun:
    """Run (or resume) one set for one loaded model; every finished entry is journalled as it finishes.

    ``workers`` > 1 runs that many entries at once, each in its own process (spawned; the model loaded once per
    process, torch threads split between them), the way to use every core of a CPU machine on sets of many small
    entries: the set is rebuilt in each process from its name and ``set_options``. The journal is written by this
    process only, in the order entries finish; records are returned in entry order either way.

    ``merge``: (file, journal lines) of other runs. Each line of this model, set and fingerprint whose entry this
    journal lacks is appended to it (with ``merged_from``) before anything runs, so it is skipped like an entry
    finished here; this journal's own lines win over merged ones, and lines of other models, sets or fingerprints
    are left alone. ``only``: run just the entries with these keys, in the order given (so the ones wanted first run
    first; ``limit`` then takes the first of them); keys of other sets are ignored. ``report_only``: run nothing
    and append nothing to the journal; the records are what the journal and the merged lines hold, and ``missing``
    names the entries neither holds. It takes no lock, so it reads a journal that a running validation appends to."""
    fingerprint = set_fingerprint(vset)
    directory = model_dir / vset.name / fingerprint[:12]
    directory.mkdir(parents=True, exist_ok=True)
    entries: list[ValidationEntry] = vset.entries(limit=None if only else limit, full=full)
    if only:
        position = {key: i for i, key in enumerate(dict.fromkeys(only))}
        entries = sorted((e for e in entries if e.key in position), key=lambda e: position[e.key])[:limit]
    keys = [e.key for e in entries]
    if len(set(keys)) != len(keys):
        raise InputError(f"the {vset.name} set lists an entry key twice; keys must be unique")
    journal = Journal(directory / "journal.jsonl")
    t0 = time.perf_counter()
    n_now = 0
    describe = vset.describe() if callable(getattr(vset, "describe", None)) else {}

    def read_and_merge(*, append: bool) -> tuple[dict[str, dict], int]:
        """The journal's lines by key, with the merged lines it lacks (appended to it when ``append``), and how many
        of this run's entries were merged. A key merged once is in ``done``, so a second file's line is left out."""
        done, n_merged = journal.read(), 0
        for path, lines in merge:
            for item in lines:
                if (item["model_sha256"], item["set"], item["fingerprint"]) != (loaded.sha256, vset.name, fingerprint) \
                        or item["key"] in done:
                    continue
                item = {**item, "merged_from": str(path)}
                if append:
                    journal.append(item)
                    progress("merged", {"set": vset.name, "key": item["key"], "file": str(path),
                                        "status": item["record"]["status"]})
                done[item["key"]] = item
                n_merged += item["key"] in keys  # every line is kept; the count is of this run's entries
        return done, n_merged

    def set_run(done: Mapping[str, dict], n_merged: int) -> SetRun:
        records = [{**done[k]["record"], "key": k, "label": done[k]["label"], "entry_wall_s": done[k]["wall_s"]}
                   for k in keys if k in done]
        return SetRun(vset.name, fingerprint, directory, records, n_now, len(records) - n_now,
                      time.perf_counter() - t0, n_merged=n_merged, describe=describe,
                      missing=[k for k in keys if k not in done])

    if report_only:
        return set_run(*read_and_merge(append=False))
    with exclusive_or_refuse(directory / ".lock", f"{directory} is being validated by another process; wait for it "
                             "or use another --out"):
        done, n_merged = read_and_merge(append=True)

        def finish(index: int, entry: ValidationEntry, record: dict, wall_s: float) -> None:
            nonlocal n_now
            line = {"key": entry.key, "label": entry.label, "set": vset.name, "fingerprint": fingerprint,
                    "model_ref": loaded.ref, "model_sha256": loaded.sha256, "finished_utc": _now(),
                    "wall_s": round(wall_s, 3), "record": record}
            journal.append(line)
            done[entry.key] = line
            n_now += 1
            progress("done", {"set": vset.name, "index": index, "n": len(entries), "key": entry.key,
                              "status": record["status"], "wall_s": line["wall_s"], "error": record.get("error")})

        todo = []
        for index, entry in enumerate(entries):
            prior = done.get(entry.key)
            if prior is not None and not (retry_failed and prior["record"].get("status") == EntryStatus.FAILED.value):
                continue
            todo.append((index, entry, directory / "entries" / _safe(entry.key), prior is not None,
                         loaded.missing_elements(sorted(entry.elements))))
        n_covered = sum(not missing for *_, missing in todo)
        if workers > 1 and n_covered > 1:
            _run_parallel(loaded, vset, todo, finish, progress=progress, device=device, seed=seed,
                          workers=min(workers, n_covered), settings=settings or load_settings(),
                          set_options=set_options, n_entries=len(entries))
        else:
            for index, entry, workdir, fresh, missing in todo:
                progress("entry", {"set": vset.name, "index": index, "n": len(entries), "key": entry.key,
                                   "label": entry.label})
                started = time.perf_counter()
                record = _uncovered(missing) if missing else _run_entry(loaded, vset, entry, workdir, device=device,
                                                                         seed=seed, fresh=fresh)
                finish(index, entry, record, time.perf_counter() - started)
    return set_run(done, n_merged)


def _run_parallel(loaded, vset, todo, finish, *, progress: Progress, device: str, seed: int, workers: int,
                  settings: Settings, set_options: Mapping[str, Any] | None, n_entries: int) -> None:
    """The entries of ``todo`` on ``workers`` spawned processes; uncovered ones are recorded here without running."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    module = type(vset).__module__
    threads = max(1, cores() // workers)
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker,
                             initargs=(loaded.ref, loaded.sha256, settings, vset.name, module, set_options,
                                       threads, os.getpid())) as pool:
        running = {}
        for index, entry, workdir, fresh, missing in todo:
            progress("entry", {"set": vset.name, "index": index, "n": n_entries, "key": entry.key, "label": entry.label})
            if missing:
                finish(index, entry, _uncovered(missing), 0.0)
                continue
            future = pool.submit(_worker_entry, entry, str(workdir), device, seed, fresh)
            running[future] = (index, entry)
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            broken, lost = None, []
            for future in finished:
                index, entry = running.pop(future)
                try:
                    record, wall_s = future.result()
                except BrokenProcessPool as err:  # a worker died: killed, out of memory, or its start-up failed
                    broken = broken or err
                    lost.append(entry.key)
                    continue
                finish(index, entry, record, wall_s)  # what finished is journalled even when the pool broke
            if broken is not None:
                lost = sorted(lost + [e.key for _, e in running.values()])
                raise IonscreenError(
                    f"a validation worker process died ({broken}); unfinished: {', '.join(lost)}. The entries that "
                    "finished are in the journal, and running the same command again resumes from them") from broken


# -------------------------------------------------------------------------------------------------------
# Figures: formatting and flattening


def _is_estimate(value: Any) -> bool:
    return isinstance(value, Mapping) and "value" in value and ("ci95" in value or "n" in value)


def format_figure(value: Any) -> str:
    """A figure as text: numbers to 3 significant digits, estimates as 'v [lo, hi] (n=…)'."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        return f"{value:.0f}" if 1e3 <= abs(value) < 1e7 else f"{value:.3g}"
    if _is_estimate(value):
        text = format_figure(value.get("value"))
        ci = value.get("ci95")
        if ci:
            text += f" [{format_figure(ci[0])}, {format_figure(ci[1])}]"
        if value.get("n") is not None:
            text += f" (n={value['n']})"
        return text
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
        return "[" + ", ".join(format_figure(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "; ".join(f"{k} {format_figure(v)}" for k, v in value.items())
    return str(value)


def flat_metrics(summary: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """Numeric figures as MLflow metrics: ``prefix.name``, and for estimates ``.value``, ``.ci95_lo``, ``.ci95_hi``."""
    out: dict[str, float] = {}
    for key, value in summary.items():
        name = f"{prefix}.{key}"
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            if math.isfinite(value):
                out[name] = float(value)
        elif _is_estimate(value):
            if isinstance(value.get("value"), (int, float)):
                out[f"{name}.value"] = float(value["value"])
            if value.get("ci95"):
                out[f"{name}.ci95_lo"], out[f"{name}.ci95_hi"] = map(float, value["ci95"])
            if isinstance(value.get("n"), int):
                out[f"{name}.n"] = float(value["n"])
        elif isinstance(value, Mapping):
            out.update(flat_metrics(value, name))
    return out


def _table_rows(summaries: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Figure names in first-seen order over the models, only those that are numbers or estimates."""
    names: list[str] = []
    for summary in summaries.values():
        for key, value in summary.items():
            if key not in names and (isinstance(value, (int, float)) or _is_estimate(value) or value is None):
                names.append(key)
    return names


# -------------------------------------------------------------------------------------------------------
# Agreement between models


def _set_rankings(models: Sequence[ModelRun], sets: Mapping[str, Any]):
    """(set name, set, {model ref: its ranking}) for every set that ranks its entries (a ``ranking(records)``
    method), over the models that ran it: what the agreement and spread figures compare."""
    for name, vset in sets.items():
        ranking = getattr(vset, "ranking", None)
        if callable(ranking):
            yield name, vset, {m.ref: ranking(m.sets[name].records) for m in models if name in m.sets}


def model_agreement(models: Sequence[ModelRun], sets: Mapping[str, Any], seed: int = 0) -> dict[str, list[dict]]:
    """Per set that ranks its entries (a ``ranking(records)`` method): Kendall τ-b and Spearman ρ between every
    pair of models over the entries both ranked, bounds as bounds."""
    from screening.validation.stats import pairwise_agreement

    if len(models) < 2:
        return {}
    return {name: pairwise_agreement(rankings, seed=seed) for name, _, rankings in _set_rankings(models, sets)}


def spread_versus_error(models: Sequence[ModelRun], sets: Mapping[str, Any], seed: int = 0) -> dict[str, dict]:
    """Per set with a reference (a ``reference(records)`` method beside ``ranking``): does the models' spread
    predict their error? Over the entries every model and the reference give as numbers (bounds left out), see
    :func:`screening.validation.stats.spread_vs_error`. This is the measured meaning of the model-disagreement
    column of screening jobs (``agreement_model``)."""
    from screening.validation.stats import spread_vs_error

    out: dict[str, dict] = {}
    if len(models) < 2:
        return out
    for name, vset, rankings in _set_rankings(models, sets):
        reference = getattr(vset, "reference", None)
        if not callable(reference) or len(rankings) < 2:
            continue
        numbers = {ref: {k: v.value for k, v in ranked.items() if v.bound is None} for ref, ranked in rankings.items()}
        references: dict[str, float] = {}
        for m in models:
            if name in m.sets:
                references.update(reference(m.sets[name].records))
        result = spread_vs_error(numbers, references, unit=getattr(vset, "value_unit", ""), seed=seed)
        if result is not None:
            out[name] = result
    return out


# -------------------------------------------------------------------------------------------------------
# Report


def _rel(path: Path, root: Path) -> str:
    return os.path.relpath(path, root)


def render_report(models: Sequence[ModelRun], agreement: Mapping[str, list[dict]], out_dir: Path,
                  *, command: str = "", spread: Mapping[str, dict] | None = None, report_only: bool = False) -> str:
    set_order: list[str] = []
    for m in models:
        set_order += [s for s in m.sets if s not in set_order]
    lines = ["# Validation report" + (" (interim)" if report_only else ""), "",
             f"Created {_now()} by ionscreen validate" + (f": `{command}`" if command else "") + ".", ""]
    if report_only:
        lines += ["Interim: `--report-only` ran nothing. Its figures cover only the entries the journals hold so far; "
                  "the ones still missing are named under each set. Once they are in, the figures will change.", ""]
    lines += ["| model | family | SHA-256 | registered | MLflow run |", "| --- | --- | --- | --- | --- |"]
    for m in models:
        lines.append(f"| `{m.ref}` | {m.family} | `{m.sha256[:16]}` | {m.registered or '–'} | "
                     f"{('`' + m.mlflow_run_id + '`') if m.mlflow_run_id else '–'} |")
    for name in set_order:
        runs = {m.ref: m.sets[name] for m in models if name in m.sets}
        lines += ["", f"## Set `{name}`", ""]
        first = next(iter(runs.values()))
        if first.describe:
            lines += ["Set parameters:", ""]
            for key, value in first.describe.items():
                text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)
                lines.append(f"- {key}: `{text[:400]}`" if not isinstance(value, str) else f"- {key}: {text[:400]}")
            lines.append("")
        lines += ["Entries per model: " + "; ".join(
            f"`{ref}` {len(r.records)}" + (f" of {len(r.records) + len(r.missing)}" if r.missing else "")
            + f" finished ({r.n_run_now} run now, {r.n_skipped} from the journal"
            + (f", {r.n_merged} of them merged from another run's journal" if r.n_merged else "") + "), "
            f"{r.entry_wall_s:.0f} s of entry wall time"
            + (f"; not finished: {', '.join(r.missing)}" if r.missing else "") for ref, r in runs.items()) + ".", ""]
        summaries = {ref: r.summary for ref, r in runs.items()}
        rows = _table_rows(summaries)
        lines += ["| figure | " + " | ".join(f"`{ref}`" for ref in runs) + " |",
                  "| --- |" + " --- |" * len(runs)]
        for row in rows:
            lines.append(f"| {row} | " + " | ".join(format_figure(summaries[ref].get(row)) for ref in runs) + " |")
        notes = {ref: s.get("rule") for ref, s in summaries.items() if s.get("rule")}
        if notes:
            lines += ["", f"How: {next(iter(notes.values()))}."]
        if name in agreement and agreement[name]:
            lines += ["", "Agreement between the models' rankings (bounds as bounds; 95% bootstrap intervals):", "",
                      "| model A | model B | entries | Kendall τ-b | Spearman ρ |", "| --- | --- | --- | --- | --- |"]
            for pair in agreement[name]:
                lines.append(f"| `{pair['a']}` | `{pair['b']}` | {pair['n']} | {format_figure(pair['kendall_tau_b'])} | "
                             f"{format_figure(pair['spearman'])} |")
        if spread and spread.get(name):
            lines += ["", *_spread_lines(spread[name])]
        lines += ["", "### Entries", "", "| entry | " + " | ".join(f"`{ref}`" for ref in runs) + " |",
                  "| --- |" + " --- |" * len(runs)]
        labels: dict[str, str] = {}
        for r in runs.values():
            for rec in r.records:
                labels.setdefault(rec["key"], rec.get("label", rec["key"]))
        by_model = {ref: {rec["key"]: rec for rec in r.records} for ref, r in runs.items()}
        for key, label in labels.items():
            cells = []
            for ref in runs:
                rec = by_model[ref].get(key)
                cells.append("–" if rec is None else _entry_cell(rec))
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        for ref, r in runs.items():
            for plot in r.plots:
                lines += ["", f"![{name} {ref} {plot.stem}]({_rel(plot, out_dir)})"]
    return "\n".join(lines) + "\n"


def _spread_lines(result: Mapping[str, Any]) -> list[str]:
    """The report's paragraph and table on the models' spread versus their error."""
    unit, n = result["unit"], result["n"]
    if not n:
        return ["Spread versus error: no entry where every model and the reference give a number."]
    lines = [f"Spread versus error, over the {n} entries where every model and the reference give a number: the "
             f"models' range (largest minus smallest prediction) has a median of {result['median_spread']:.3g} {unit} "
             f"and holds the reference in {100 * result['reference_inside_range_share']:.0f}% of them; the models' "
             f"mean is off by {result['committee_mean_mae']:.3g} {unit} on average. Per model, the mean absolute error "
             f"on the {result['n_narrow']} entries of at most median spread and on the {result['n_wide']} above it, "
             "and the Spearman ρ between spread and absolute error (95% bootstrap interval): a usable disagreement "
             "column needs ρ clearly above 0.", "",
             f"| model | MAE {unit} | MAE, narrow spread | MAE, wide spread | ρ(spread, abs. error) |",
             "| --- | --- | --- | --- | --- |"]
    for name, row in result["per_model"].items():
        lines.append(f"| `{name}` | {format_figure(row['mae'])} | {format_figure(row['mae_narrow_spread'])} | "
                     f"{format_figure(row['mae_wide_spread'])} | {format_figure(row['spearman_spread_abs_error'])} |")
    return lines


def _entry_cell(record: Mapping[str, Any]) -> str:
    status = record.get("status")
    if status == EntryStatus.UNCOVERED.value:
        return "uncovered (" + " ".join(record.get("missing_elements", [])) + ")"
    if status == EntryStatus.FAILED.value:
        return "failed: " + str(record.get("error", "")).replace("|", "/")[:140]
    parts = []
    if record.get("shown"):  # the set's own one-line summary of the entry
        parts.append(str(record["shown"]))
    elif record.get("predicted_S_cm") is not None:
        parts.append(f"{format_figure(record['predicted_S_cm'])} S/cm")
    elif record.get("predicted_upper_bound_S_cm") is not None:
        parts.append(f"< {format_figure(record['predicted_upper_bound_S_cm'])} S/cm")
    if record.get("flags"):
        parts.append(",".join(record["flags"]))
    wall = record.get("entry_wall_s")
    if wall is not None:
        parts.append(f"{wall:.0f} s")
    return " ".join(parts).replace("|", "/") or "ok"


# -------------------------------------------------------------------------------------------------------
# MLflow and the model card


def _card_figures(model: ModelRun):
    from training.modelcard import ValidationFigures

    out = []
    for name, run in model.sets.items():
        figures = {k: format_figure(v) for k, v in run.summary.items() if k in _table_rows({"m": run.summary})}
        out.append(ValidationFigures(set=name, fingerprint=run.fingerprint, figures=figures,
                                     mlflow_run_id=model.mlflow_run_id, created_utc=_now()))
    return out


def write_card(model: ModelRun, model_dir: Path, settings: Settings, registry_version=None) -> Path:
    """The model's validation figures as they appear on its card: for a registry version trained by ionscreen, its
    own model card (from the training run) with the Validation section added; otherwise that section alone."""
    from training.modelcard import render_markdown, render_validation_section

    figures = _card_figures(model)
    card = None
    if registry_version is not None and registry_version.run_id:
        card = _fetch_card(registry_version.run_id, settings, model_dir)
    if card is not None:
        merged = [f for f in card.validation if f.set not in {g.set for g in figures}] + figures
        card = card.model_copy(update={"validation": merged})
        atomic_write_text(model_dir / "model_card.json", card.model_dump_json(indent=1) + "\n")
        path = model_dir / "model_card.md"
        atomic_write_text(path, render_markdown(card))
        return path
    path = model_dir / "validation_card.md"
    text = "\n".join([f"# Validation of {model.ref}", "", f"SHA-256 `{model.sha256}` ({model.family}).", ""]
                     + render_validation_section(figures))
    atomic_write_text(path, text + "\n")
    return path



MODEL_SUMMARY = "validation.json"  # per model directory: the latest figures of each set (the browser's model page)


def write_model_summary(model: ModelRun, model_dir: Path, *, params: Mapping[str, Any], command: str) -> Path:
    """Merge this run's sets into ``models/<sha>/validation.json``: per set the latest figures, plots (relative to
    the model directory), entry counts and the command, so that a page can show every model's track record."""
    path = model_dir / MODEL_SUMMARY
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        data = {}
    sets = data.get("sets") if isinstance(data.get("sets"), dict) else {}
    for name, run in model.sets.items():
        sets[name] = {**run.document(model_dir), "mlflow_run_id": model.mlflow_run_id, "command": command,
                      "params": dict(params), "updated_utc": _now()}
    data = {"ref": model.ref, "sha256": model.sha256, "family": model.family, "elements": model.elements,
            "registered": model.registered, "sets": sets}
    atomic_write_text(path, json.dumps(data, indent=1, default=str) + "\n")
    return path


def read_model_summary(validation_dir: Path, sha256: str) -> dict | None:
    """The model's ``validation.json`` under ``validation_dir`` (``$IONSCREEN_HOME/validation``), or None."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        return None
    path = validation_dir / "models" / sha256[:16] / MODEL_SUMMARY
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data if data.get("sha256") == sha256 else None


def _fetch_card(run_id: str, settings: Settings, model_dir: Path):
    from mlflow.exceptions import MlflowException

    from mlip import registry
    from training.modelcard import ModelCard

    client = registry.client(settings)
    try:
        local = client.download_artifacts(run_id, "model_card.json", str(model_dir))
    except (MlflowException, OSError):
        return None
    try:
        return ModelCard.model_validate_json(Path(local).read_text())
    except ValueError:
        return None


def start_mlflow_run(model: ModelRun, settings: Settings) -> str:
    """Create this model's validation run (the id goes on the card and in the report before they are logged)."""
    from mlip import registry
    from training.registry import ensure_experiment

    client = registry.client(settings)
    experiment_id = ensure_experiment(client, EXPERIMENT, settings)
    tags = {"ionscreen.model_ref": model.ref, "ionscreen.model_sha256": model.sha256, "ionscreen.kind": "validation",
            "ionscreen.sets": ",".join(model.sets)}
    if model.registered:
        tags["ionscreen.registered_model"] = model.registered
    run = client.create_run(experiment_id, run_name=f"validate-{model.ref}"[:250], tags=tags)
    model.mlflow_run_id = run.info.run_id
    return model.mlflow_run_id


def finish_mlflow_run(model: ModelRun, settings: Settings, out_dir: Path, *, params: Mapping[str, Any],
                      registry_version=None) -> None:
    """Log the figures (metrics, one batch), parameters, report, plots and card to the model's run, tag its registry
    version with the run and the headline figures, and end the run."""
    from mlflow.entities import Metric, Param

    from mlip import registry

    client = registry.client(settings)
    run_id = model.mlflow_run_id
    try:
        stamp = int(time.time() * 1000)
        metrics = {}
        for name, set_run in model.sets.items():
            metrics.update(flat_metrics(set_run.summary, name))
        all_params = {**params, "model_ref": model.ref, "model_sha256": model.sha256, "model_family": model.family}
        for name, set_run in model.sets.items():
            all_params[f"{name}.fingerprint"] = set_run.fingerprint
        items = [Metric(k, v, stamp, 0) for k, v in sorted(metrics.items())]
        client.log_batch(run_id, metrics=items[:900], params=[Param(k, str(v)[:6000]) for k, v in all_params.items()])
        for start in range(900, len(items), 900):
            client.log_batch(run_id, metrics=items[start:start + 900])
        for name in ("report.md", "report.json"):
            client.log_artifact(run_id, str(out_dir / name))
        for name, set_run in model.sets.items():
            for plot in set_run.plots:
                client.log_artifact(run_id, str(plot), artifact_path=f"plots/{name}")
        if model.card_path is not None:
            client.log_artifact(run_id, str(model.card_path), artifact_path="model_card")
            json_card = model.card_path.with_suffix(".json")
            if json_card.exists():
                client.log_artifact(run_id, str(json_card), artifact_path="model_card")
        if registry_version is not None:
            version = str(registry_version.version)
            for name, set_run in model.sets.items():
                client.set_model_version_tag(registry_version.name, version, f"ionscreen.validation.{name}.run", run_id)
                for key, value in flat_metrics(set_run.summary, name).items():
                    client.set_model_version_tag(registry_version.name, version, f"ionscreen.validation.{key}",
                                                 f"{value:.4g}")
    except Exception:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id)


# -------------------------------------------------------------------------------------------------------
# The whole command


@dataclass
class ValidationRun:
    out_dir: Path
    models: list[ModelRun]
    agreement: dict[str, list[dict]]
    report_md: Path
    report_json: Path
    wall_s: float
    spread: dict[str, dict] = field(default_factory=dict)


def run_validation(
    model_refs: Sequence[str],
    set_names_: Sequence[str],
    *,
    out_dir: str | Path | None = None,
    limit: int | None = None,
    full: bool = False,
    device: str = "auto",
    set_options: Mapping[str, Mapping[str, Any]] | None = None,
    retry_failed: bool = False,
    mlflow: bool = True,
    settings: Settings | None = None,
    progress: Progress | None = None,
    command: str = "",
    seed: int = 0,
    workers: int | str = 1,
    merge_journals: Sequence[str | Path] = (),
    entries: Sequence[str] = (),
    report_only: bool = False,
) -> ValidationRun:
    """Validate every model on every set, resuming from the journals; write and log the report.

    ``merge_journals``: journal files of other runs of these models and sets (see :func:`run_set`); a file none of
    whose lines belongs to this run is refused before anything runs, saying what it holds. ``entries``: run only
    the entries with these keys (every key must belong to one of the sets, and every set must get one).
    ``report_only``: run nothing; write the report of what the journals (and ``merge_journals``) hold so far, each
    set with the entries still missing, while a run that spans sessions goes on (it reads journals a running
    validation is appending to). It logs no MLflow run and leaves model cards and validation summaries alone: an
    interim figure is not the model's track record."""
    from mlip.calculators import resolve_device
    from mlip.loader import load_model

    t0 = time.perf_counter()
    settings = settings or load_settings()
    progress = progress or (lambda stage, info: None)
    if not model_refs:
        raise InputError("name at least one model (e.g. bundled:lipscl-dzvp-fast, chgnet:0.3.0, sevennet:7net-0, models:/NAME@ALIAS)")
    if not set_names_:
        raise InputError(f"name at least one set with --set ({', '.join(SET_MODULES)})")
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be at least 1, got {limit}")
    workers = _check_workers(workers)
    merges = read_merge_journals(merge_journals)
    unknown = [s for s in set_names_ if s not in SET_MODULES]
    if unknown:
        raise InputError(f"unknown validation set {', '.join(map(repr, unknown))}; sets: {', '.join(SET_MODULES)}")
    names = list(dict.fromkeys(set_names_))
    sets = {name: make_set(name, (set_options or {}).get(name)) for name in names}  # bad options fail before loading
    only = list(dict.fromkeys(k.strip() for k in entries if k.strip()))
    if entries and not only:
        raise InputError("--entries names no entry key")
    if only:
        _check_entry_keys(only, sets, full=full)
    device = device if device == "cpu" else resolve_device(device)  # cpu needs no CUDA check (nor torch import)
    if workers == "auto":  # one entry per core on a CPU; a GPU runs one entry at a time
        workers = 1 if device.startswith("cuda") else min(cores(), MAX_WORKERS)
    loaded_models = []
    for ref in dict.fromkeys(model_refs):
        loaded = load_model(ref, settings)
        registered, version = _registered(ref, settings)
        loaded_models.append((loaded, registered, version))
    fingerprints = {name: set_fingerprint(vset) for name, vset in sets.items()}
    this_run = {(loaded.sha256, name): fp for loaded, *_ in loaded_models for name, fp in fingerprints.items()}
    for path, lines in merges:
        if not any(this_run.get((item["model_sha256"], item["set"])) == item["fingerprint"] for item in lines):
            raise InputError(_merge_mismatch(path, lines, this_run, {m.sha256: m.ref for m, *_ in loaded_models}))
    out_dir = Path(out_dir) if out_dir is not None else settings.home / "validation"
    out_dir.mkdir(parents=True, exist_ok=True)

    runs: list[ModelRun] = []
    for loaded, registered, _ in loaded_models:
        model = ModelRun(loaded.ref, loaded.sha256, loaded.family, list(loaded.elements), registered)
        model_dir = out_dir / "models" / loaded.sha256[:16]
        for name, vset in sets.items():
            progress("set", {"model": loaded.ref, "set": name})
            set_run = run_set(loaded, vset, model_dir=model_dir, device=device, limit=limit, full=full,
                              retry_failed=retry_failed, progress=lambda s, i, ref=loaded.ref: progress(s, {**i, "model": ref}),
                              seed=seed, workers=workers, settings=settings, set_options=(set_options or {}).get(name),
                              merge=merges, only=only, report_only=report_only)
            set_run.summary = vset.summarise(set_run.records)
            set_run.plots = vset.plot(set_run.records, set_run.directory / "plots", title=f"{loaded.ref} · {name}")
            model.sets[name] = set_run
        runs.append(model)
    agreement = model_agreement(runs, sets, seed=seed)
    spread = spread_versus_error(runs, sets, seed=seed)
    params = {"sets": ",".join(names), "limit": limit, "full": full, "device": device, "seed": seed, "workers": workers,
              "entries": only or None, "report_only": report_only}

    def write_report() -> tuple[Path, Path]:
        md = out_dir / "report.md"
        atomic_write_text(md, render_report(runs, agreement, out_dir, command=command, spread=spread,
                                            report_only=report_only))
        data = {
            "created_utc": _now(), "command": command, "params": params,
            "mlflow_tracking_uri": mask_password(settings.mlflow_tracking_uri) if mlflow and not report_only else None,
            "models": [{"ref": m.ref, "sha256": m.sha256, "family": m.family, "registered": m.registered,
                        "mlflow_run_id": m.mlflow_run_id,
                        "card": _rel(m.card_path, out_dir) if m.card_path else None,
                        "sets": {name: {**r.document(out_dir), "n_run_now": r.n_run_now,
                                        "n_from_journal": r.n_skipped, "n_merged": r.n_merged,
                                        "wall_s_this_run": r.wall_s,
                                        "entry_wall_s_total": r.entry_wall_s,
                                        "journal": _rel(r.directory / "journal.jsonl", out_dir)}
                                 for name, r in m.sets.items()}} for m in runs],
            "agreement": agreement,
            "spread_versus_error": spread,
        }
        js = out_dir / "report.json"
        atomic_write_text(js, json.dumps(data, indent=1, default=str) + "\n")
        return md, js

    if report_only:
        report_md, report_json = write_report()
        return ValidationRun(out_dir, runs, agreement, report_md, report_json, time.perf_counter() - t0, spread)
    if mlflow:
        for model in runs:
            start_mlflow_run(model, settings)
    for model, (_, _, version) in zip(runs, loaded_models):
        model.card_path = write_card(model, out_dir / "models" / model.sha256[:16], settings, version)
        write_model_summary(model, out_dir / "models" / model.sha256[:16], params=params, command=command)
    report_md, report_json = write_report()
    if mlflow:
        for model, (_, _, version) in zip(runs, loaded_models):
            finish_mlflow_run(model, settings, out_dir, params=params, registry_version=version)
    return ValidationRun(out_dir, runs, agreement, report_md, report_json, time.perf_counter() - t0, spread)
