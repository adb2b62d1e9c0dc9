"""``ionscreen validate``: the runner resumes after a kill without redoing entries, writes the report (Markdown, PNG,
JSON), logs to MLflow and the registry version, compares several models (Kendall τ), and refuses bad input.

The runner is exercised with a small fake set (``SlowSet`` below, registered in ``SET_MODULES`` for the test), so
these tests depend neither on MD nor on the barriers set."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scipy import stats as sstats

from mlip.errors import InputError, IonscreenError, ModelNotFoundError
from screening.validation.base import EntryStatus, ValidationEntry
from screening.validation.stats import Bound, RankValue

TESTS = Path(__file__).resolve().parent
N_ENTRIES = 6


class SlowSet:
    """Entries e0..e5: e0..e4 made of ``SLOW_SET_ELEMENT`` (default Li), e5 of Fe, which no test model covers. Each run
    sleeps ``SLOW_SET_SLEEP_S`` and appends its key to the file ``SLOW_SET_CALLS``. The bundled model ranks the
    entries 0..4, any other model in reverse, with e2 an upper bound only."""

    name = "slow"

    def entries(self, *, limit=None, full=False):
        element = os.environ.get("SLOW_SET_ELEMENT", "Li")
        out = [ValidationEntry(key=f"e{i}", label=f"entry {i}", elements=frozenset({element} if i < 5 else {"Fe"}),
                               data={"i": i}) for i in range(N_ENTRIES)]
        return out if limit is None else out[:limit]

    def run_entry(self, entry, context):
        began = time.time()
        if os.environ.get("SLOW_SET_STARTED"):
            with open(os.environ["SLOW_SET_STARTED"], "a") as fh:
                fh.write(f"{entry.key} {os.getpid()}\n")
        time.sleep(float(os.environ.get("SLOW_SET_SLEEP_S", "0")))
        if os.environ.get("SLOW_SET_SPANS"):
            with open(os.environ["SLOW_SET_SPANS"], "a") as fh:
                fh.write(f"{entry.key} {os.getpid()} {began} {time.time()} {os.environ.get('OMP_NUM_THREADS')}\n")
        if os.environ.get("SLOW_SET_CALLS"):
            with open(os.environ["SLOW_SET_CALLS"], "a") as fh:
                fh.write(entry.key + "\n")
        if entry.key == os.environ.get("SLOW_SET_DIE"):
            os._exit(9)  # the process dies (as killed or out of memory would)
        if entry.key == os.environ.get("SLOW_SET_FAIL"):
            (context.workdir / "attempt").write_text("failed")
            return {"status": EntryStatus.FAILED.value, "error": "told to fail"}
        i = entry.data["i"]
        forward = context.model_ref.startswith("bundled:")
        return {"status": EntryStatus.OK.value, "value": float(i if forward else -i),
                "bound": None if forward or i != 2 else Bound.UPPER.value, "workdir_exists": context.workdir.is_dir()}

    def ranking(self, records):
        return {r["key"]: RankValue(r["value"], Bound(r["bound"]) if r.get("bound") else None)
                for r in records if r.get("status") == "ok"}

    value_unit = "u"

    def reference(self, records):
        return {r["key"]: 0.5 * float(r["key"][1:]) for r in records}

    def summarise(self, records):
        ok = [r for r in records if r["status"] == "ok"]
        return {"n_ok": len(ok), "n_uncovered": sum(r["status"] == "uncovered" for r in records),
                "value_sum": sum(r["value"] for r in ok)}

    def plot(self, records, out_dir, *, title):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        out_dir.mkdir(parents=True, exist_ok=True)
        fig = Figure(figsize=(2, 2))
        FigureCanvasAgg(fig)
        fig.add_subplot().plot([r.get("value", 0) for r in records])
        path = out_dir / "slow_values.png"
        fig.savefig(path)
        return [path]


@pytest.fixture
def slow_set(monkeypatch):
    import workflows.validate as v

    monkeypatch.setitem(v.SET_MODULES, "slow", __name__)
    return "slow"


def _journal(out: Path) -> list[dict]:
    paths = list(out.glob("models/*/slow/*/journal.jsonl"))
    assert len(paths) <= 1
    if not paths:
        return []
    return [json.loads(line) for line in paths[0].read_text().splitlines() if line.strip()]


def _slow_env(monkeypatch, tmp_path: Path, **extra: str) -> Path:
    """The slow set on Cu entries (ase:emt covers Cu), logging its calls; ``extra``: more SLOW_SET_* variables.
    Returns the calls file."""
    calls = tmp_path / "calls.log"
    for name, value in {"CALLS": str(calls), "ELEMENT": "Cu", **extra}.items():
        monkeypatch.setenv(f"SLOW_SET_{name}", value)
    return calls


def _validate_cli(out: Path, workers: int, **slow_env: str) -> subprocess.Popen:
    """``ionscreen validate ase:emt --set slow`` in a process of its own (ase:emt and cpu: no torch to import, a fast
    start); ``slow_env``: the SLOW_SET_* variables, without the prefix."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import workflows.validate as v; "
            f"v.SET_MODULES['slow'] = {__name__!r}; from workflows.cli import main; "
            "sys.argv = ['ionscreen', 'validate', 'ase:emt', '--set', 'slow', '--out', sys.argv[2], "
            "'--device', 'cpu', '--no-mlflow', '--workers', sys.argv[3]]; main()")
    env = {**os.environ, "OMP_NUM_THREADS": "1", **{f"SLOW_SET_{k}": v for k, v in slow_env.items()}}
    return subprocess.Popen([sys.executable, "-c", code, str(TESTS), str(out), str(workers)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_validate_resumes_after_a_kill_without_redoing_entries(tmp_path, slow_set, monkeypatch):
    out, calls = tmp_path / "out", tmp_path / "calls.log"
    proc = _validate_cli(out, 1, SLEEP_S="0.3", CALLS=str(calls), ELEMENT="Cu")
    deadline = time.time() + 60
    while time.time() < deadline and len(_journal(out)) < 2:
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _journal(out)
    assert 2 <= len(before) < N_ENTRIES, "killed too late to test resuming"
    assert not (out / "report.md").exists()

    from workflows.validate import run_validation

    monkeypatch.setenv("SLOW_SET_SLEEP_S", "0")
    monkeypatch.setenv("SLOW_SET_CALLS", str(calls))
    monkeypatch.setenv("SLOW_SET_ELEMENT", "Cu")
    result = run_validation(["ase:emt"], ["slow"], out_dir=out, mlflow=False, device="cpu")
    after = _journal(out)
    assert [line["key"] for line in after] == [f"e{i}" for i in range(N_ENTRIES)]
    assert after[:len(before)] == before  # finished lines untouched
    called = calls.read_text().split()
    for line in before:  # journalled before the kill: never run again
        if line["record"]["status"] == "ok":
            assert called.count(line["key"]) == 1
    assert called.count("e5") == 0  # uncovered: recorded, never run
    assert after[-1]["record"] == {"status": "uncovered", "missing_elements": ["Fe"]}
    run = result.models[0].sets["slow"]
    assert run.n_skipped == len(before) and run.n_run_now == N_ENTRIES - len(before)
    assert run.summary == {"n_ok": 5, "n_uncovered": 1, "value_sum": -10.0}
    # a second run does nothing
    again = run_validation(["ase:emt"], ["slow"], out_dir=out, mlflow=False, device="cpu")
    assert again.models[0].sets["slow"].n_run_now == 0
    assert len(calls.read_text().split()) == len(called)


def test_failed_entries_stay_done_unless_retried_from_a_clean_directory(tmp_path, slow_set, monkeypatch):
    from workflows.validate import run_validation

    calls = _slow_env(monkeypatch, tmp_path, FAIL="e1")
    out = tmp_path / "out"
    first = run_validation(["ase:emt"], ["slow"], out_dir=out, mlflow=False, device="cpu")
    assert first.models[0].sets["slow"].records[1]["status"] == "failed"
    assert "failed: told to fail" in (out / "report.md").read_text()
    [attempt] = out.glob("models/*/slow/*/entries/e1-*/attempt")
    monkeypatch.delenv("SLOW_SET_FAIL")
    run_validation(["ase:emt"], ["slow"], out_dir=out, mlflow=False, device="cpu")
    assert calls.read_text().split().count("e1") == 1 and attempt.exists()  # a failure is a finished entry
    retried = run_validation(["ase:emt"], ["slow"], out_dir=out, mlflow=False, device="cpu", retry_failed=True)
    assert retried.models[0].sets["slow"].n_run_now == 1 and not attempt.exists()
    assert calls.read_text().split().count("e1") == 2
    assert retried.models[0].sets["slow"].records[1]["status"] == "ok"


def test_workers_run_entries_at_once_each_once_with_the_same_figures(tmp_path, slow_set, monkeypatch):
    """``workers=2``: two spawned processes run entries side by side; the journal holds every entry once, the records
    come back in entry order and the figures equal a one-process run's; uncovered entries never reach a worker."""
    from workflows.validate import run_validation

    spans = tmp_path / "spans.log"
    calls = _slow_env(monkeypatch, tmp_path, SLEEP_S="1.0", SPANS=str(spans))
    monkeypatch.setenv("OMP_NUM_THREADS", "7")  # what the workers inherit; each must get its share instead
    out = tmp_path / "out"
    result = run_validation(["ase:emt"], ["slow"], out_dir=out, mlflow=False, device="cpu", workers=2)
    rows = [line.split() for line in spans.read_text().splitlines()]
    assert sorted(r[0] for r in rows) == [f"e{i}" for i in range(5)]  # e5 (Fe) is uncovered: not run
    assert len({r[1] for r in rows} - {str(os.getpid())}) == 2  # two worker processes, not this one
    intervals = sorted((float(r[2]), float(r[3])) for r in rows)
    assert any(b[0] < a[1] for a, b in zip(intervals, intervals[1:])), "no two entries ran at the same time"
    # each worker's share of the cores holds for libraries it has not imported yet, and for their own processes
    # (ase:emt imports no torch; SevenNet's worker process takes the count it finds)
    from workflows.jobs.layout import cores

    assert {r[4] for r in rows} == {str(max(1, cores() // 2))}
    journal = _journal(out)
    assert sorted(line["key"] for line in journal) == [f"e{i}" for i in range(N_ENTRIES)]
    run = result.models[0].sets["slow"]
    assert [r["key"] for r in run.records] == [f"e{i}" for i in range(N_ENTRIES)]
    assert run.n_run_now == N_ENTRIES and run.summary == {"n_ok": 5, "n_uncovered": 1, "value_sum": -10.0}
    assert all(r["workdir_exists"] for r in run.records if r["status"] == "ok")
    assert json.loads((out / "report.json").read_text())["params"]["workers"] == 2
    # resuming with workers skips what is done, as one process does
    again = run_validation(["ase:emt"], ["slow"], out_dir=out, mlflow=False, device="cpu", workers=2)
    assert again.models[0].sets["slow"].n_run_now == 0 and len(calls.read_text().split()) == 5


def test_a_worker_that_dies_stops_the_run_with_a_clear_error_and_the_rerun_resumes(tmp_path, slow_set, monkeypatch):
    from workflows.validate import run_validation

    _slow_env(monkeypatch, tmp_path, DIE="e3")
    out = tmp_path / "out"
    with pytest.raises(IonscreenError, match=r"worker process died .*unfinished: .*e3.*running the same command again"):
        run_validation(["ase:emt"], ["slow"], out_dir=out, mlflow=False, device="cpu", workers=2)
    finished = {line["key"] for line in _journal(out)}
    assert "e3" not in finished and finished <= {"e0", "e1", "e2", "e4", "e5"}
    monkeypatch.delenv("SLOW_SET_DIE")
    result = run_validation(["ase:emt"], ["slow"], out_dir=out, mlflow=False, device="cpu", workers=2)
    run = result.models[0].sets["slow"]
    assert run.n_skipped == len(finished) and run.summary == {"n_ok": 5, "n_uncovered": 1, "value_sum": -10.0}
    assert sorted(line["key"] for line in _journal(out)) == [f"e{i}" for i in range(N_ENTRIES)]


def test_workers_end_when_the_driver_is_killed(tmp_path, slow_set):
    """SIGKILL of ``ionscreen validate --workers 2`` (no handler runs) ends its workers too: left running, they would
    go on with their entries for as long as those take, writing into the entry directories of the next run, whose
    lock they do not hold."""
    import psutil

    out, started = tmp_path / "out", tmp_path / "started.log"
    proc = _validate_cli(out, 2, SLEEP_S="120", STARTED=str(started), ELEMENT="Cu")
    workers: list[psutil.Process] = []
    try:
        deadline = time.time() + 90
        while time.time() < deadline and len(started.read_text().splitlines() if started.exists() else []) < 2:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            time.sleep(0.05)
        rows = [line.split() for line in started.read_text().splitlines()]
        assert len(rows) == 2, rows  # two entries running, one in each worker
        workers = [psutil.Process(int(pid)) for _, pid in rows]
        assert {w.ppid() for w in workers} == {proc.pid}
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        gone, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive, f"workers {[w.pid for w in alive]} still run their entries after the driver was killed"
        # no entry finished (e5 is uncovered: journalled without running), and no line is half-written
        assert [line["key"] for line in _journal(out)] == ["e5"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for w in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                w.kill()


def test_a_journal_from_another_run_merges_and_its_entries_are_not_run_again(tmp_path, slow_set, monkeypatch):
    """``--merge-journal``: a run elsewhere (another machine, a copy kept between sessions) finished some entries;
    merged here they are skipped as if finished here, this run's own lines win, and a journal of another protocol
    or a file that is not a journal is refused, naming it, before anything runs."""
    from typer.testing import CliRunner

    from workflows.cli import app
    from workflows.validate import run_validation

    calls = _slow_env(monkeypatch, tmp_path)
    elsewhere, here = tmp_path / "elsewhere", tmp_path / "here"
    run_validation(["ase:emt"], ["slow"], out_dir=elsewhere, mlflow=False, device="cpu", limit=3)
    [theirs] = elsewhere.glob("models/*/slow/*/journal.jsonl")
    kept = tmp_path / "kept-journal.jsonl"  # the copy a session keeps, with a line cut by a kill at its end
    kept.write_text(theirs.read_text() + '{"key": "e3", "record": {"sta')
    run_validation(["ase:emt"], ["slow"], out_dir=here, mlflow=False, device="cpu", limit=1)  # e0 finished here too
    own_e0 = _journal(here)[0]
    assert calls.read_text().split() == ["e0", "e1", "e2", "e0"]

    result = CliRunner().invoke(app, ["validate", "ase:emt", "--set", "slow", "--out", str(here), "--device", "cpu",
                                      "--no-mlflow", "--workers", "1", "--merge-journal", str(kept)])
    assert result.exit_code == 0, result.output
    assert "e1 ok (merged from" in result.output and "e2 ok (merged from" in result.output
    assert calls.read_text().split() == ["e0", "e1", "e2", "e0", "e3", "e4"]  # e1 and e2 were not run again
    journal = _journal(here)
    assert journal[0] == own_e0  # this run's own line wins over the merged one
    assert [(line["key"], "merged_from" in line) for line in journal] == [
        ("e0", False), ("e1", True), ("e2", True), ("e3", False), ("e4", False), ("e5", False)]
    report = json.loads((here / "report.json").read_text())["models"][0]["sets"]["slow"]
    assert (report["n_merged"], report["n_run_now"], report["n_from_journal"]) == (2, 3, 3)
    assert report["figures"] == {"n_ok": 5, "n_uncovered": 1, "value_sum": -10.0}
    assert "3 from the journal, 2 of them merged from another run's journal" in (here / "report.md").read_text()

    # merged lines beyond --limit are kept but not counted as this run's entries
    limited = tmp_path / "limited"
    one = run_validation(["ase:emt"], ["slow"], out_dir=limited, mlflow=False, device="cpu", limit=1,
                         merge_journals=[kept])
    assert (one.models[0].sets["slow"].n_merged, one.models[0].sets["slow"].n_skipped) == (1, 1)
    assert [line["key"] for line in _journal(limited)] == ["e0", "e1", "e2"]
    # merging the same file again adds nothing
    again = run_validation(["ase:emt"], ["slow"], out_dir=here, mlflow=False, device="cpu", merge_journals=[kept])
    assert again.models[0].sets["slow"].n_merged == 0 and len(_journal(here)) == N_ENTRIES

    # another protocol (fingerprint): refused before anything runs, saying why
    stale = tmp_path / "stale.jsonl"
    stale.write_text("".join(json.dumps({**json.loads(line), "fingerprint": "f" * 64}) + "\n"
                             for line in theirs.read_text().splitlines()))
    fresh = tmp_path / "fresh"
    with pytest.raises(InputError, match=r"stale.jsonl: none of its 3 lines is for this run\. It holds 3 of ase:emt "
                       r"\(sha256 \w{12}\) · slow under fingerprint ffffffffffff; .*the protocol or the reference "
                       r"data changed"):
        run_validation(["ase:emt"], ["slow"], out_dir=fresh, mlflow=False, device="cpu", merge_journals=[stale])
    assert not fresh.exists()
    bad_line = tmp_path / "bad-line.jsonl"
    bad_line.write_text(theirs.read_text().splitlines()[0] + "\n" + json.dumps({"key": "e1", "record": {"status": "ok"}}))
    not_journal = tmp_path / "notes.txt"
    not_journal.write_text("these are not journal lines\n")
    for path, message in ((tmp_path / "missing.jsonl", r"missing.jsonl: no such file"),
                          (not_journal, r"notes.txt: holds no journal line"),
                          (bad_line, r"bad-line.jsonl, line 2 \(e1\): lacks set, fingerprint, model_sha256")):
        with pytest.raises(InputError, match=message):
            run_validation(["ase:emt"], ["slow"], out_dir=fresh, mlflow=False, device="cpu", merge_journals=[path])
    assert not fresh.exists() and len(calls.read_text().split()) == 6


def test_entries_runs_only_the_named_entries_and_refuses_unknown_keys_first(tmp_path, slow_set, monkeypatch):
    from typer.testing import CliRunner

    from workflows.cli import app
    from workflows.validate import run_validation

    calls = _slow_env(monkeypatch, tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["validate", "ase:emt", "--set", "slow", "--out", str(out), "--device", "cpu",
                                      "--no-mlflow", "--workers", "1", "--entries", "e3,e1", "-e", "e3"])
    assert result.exit_code == 0, result.output
    assert calls.read_text().split() == ["e3", "e1"]  # in the order given, each once
    report = json.loads((out / "report.json").read_text())
    assert report["params"]["entries"] == ["e3", "e1"]
    assert report["models"][0]["sets"]["slow"]["n_entries"] == 2
    first = run_validation(["ase:emt"], ["slow"], out_dir=out, mlflow=False, device="cpu", entries=["e4", "e0", "e2"],
                           limit=2)
    assert [r["key"] for r in first.models[0].sets["slow"].records] == ["e4", "e0"]  # the first two named, as named
    every = run_validation(["ase:emt"], ["slow"], out_dir=out, mlflow=False, device="cpu")
    assert every.models[0].sets["slow"].n_run_now == 2  # e2 and e5 (uncovered); the rest came from the journal
    assert calls.read_text().split() == ["e3", "e1", "e4", "e0", "e2"]
    fresh = tmp_path / "fresh"
    with pytest.raises(InputError, match=r"--entries: no entry 'e9', 'obelix:122' in the slow set \(without --full: "
                                         r"its CPU subset\), whose keys look like e0, e1, e2, e3, \.\.\."):
        run_validation(["ase:emt"], ["slow"], out_dir=fresh, mlflow=False, device="cpu", entries=["e1", "e9", "obelix:122"])
    with pytest.raises(InputError, match=r"--entries names no entry of the barriers set \(without --full: its CPU "
                                         r"subset\); name one, or leave that set out"):
        run_validation(["ase:emt"], ["slow", "barriers"], out_dir=fresh, mlflow=False, device="cpu", entries=["e1"])
    with pytest.raises(InputError, match="--entries names no entry key"):
        run_validation(["ase:emt"], ["slow"], out_dir=fresh, mlflow=False, device="cpu", entries=[" ", ""])
    assert not fresh.exists() and len(calls.read_text().split()) == 5


def test_report_only_reports_what_the_journals_hold_without_running_or_writing_to_them(tmp_path, slow_set,
                                                                                       monkeypatch):
    from typer.testing import CliRunner

    from mlip.util import exclusive_or_refuse
    from workflows.cli import app
    from workflows.validate import run_validation

    calls = _slow_env(monkeypatch, tmp_path)
    there, here = tmp_path / "there", tmp_path / "here"
    run_validation(["ase:emt"], ["slow"], out_dir=there, mlflow=False, device="cpu", entries=["e2"])
    kept = tmp_path / "kept.jsonl"
    kept.write_text("".join(p.read_text() for p in there.glob("models/*/slow/*/journal.jsonl")))
    run_validation(["ase:emt"], ["slow"], out_dir=here, mlflow=False, device="cpu", limit=2)  # e0, e1 here
    assert calls.read_text().split() == ["e2", "e0", "e1"]
    journal = next(here.glob("models/*/slow/*/journal.jsonl"))
    before = journal.read_bytes()
    for stale in ("report.md", "report.json"):
        (here / stale).unlink()
    model_files = sorted(p.name for p in here.glob("models/*/*") if p.is_file())

    # a run that spans sessions holds the set's lock meanwhile; the interim report reads past it
    with exclusive_or_refuse(journal.parent / ".lock", "held by the test"):
        result = CliRunner().invoke(app, ["validate", "ase:emt", "--set", "slow", "--out", str(here), "--device", "cpu",
                                          "--merge-journal", str(kept), "--report-only"])
    assert result.exit_code == 0, result.output
    assert "(interim: 3 of 6 entries; not finished: e3, e4, e5)" in result.output
    assert calls.read_text().split() == ["e2", "e0", "e1"]  # nothing ran
    assert journal.read_bytes() == before  # and the merged line was not appended
    assert sorted(p.name for p in here.glob("models/*/*") if p.is_file()) == model_files  # no card, no summary
    data = json.loads((here / "report.json").read_text())
    slow = data["models"][0]["sets"]["slow"]
    assert (slow["n_entries"], slow["n_missing"], slow["missing"]) == (3, 3, ["e3", "e4", "e5"])
    assert (slow["n_run_now"], slow["n_from_journal"], slow["n_merged"]) == (0, 3, 1)
    assert slow["figures"] == {"n_ok": 3, "n_uncovered": 0, "value_sum": -3.0}  # e0 + e1 + e2, as ase:emt gives them
    assert data["params"]["report_only"] is True and data["mlflow_tracking_uri"] is None
    assert data["models"][0]["mlflow_run_id"] is None
    md = (here / "report.md").read_text()
    assert md.startswith("# Validation report (interim)") and "`--report-only` ran nothing" in md
    assert "`ase:emt` 3 of 6 finished (0 run now, 3 from the journal, 1 of them merged from another run's journal)" in md
    assert "not finished: e3, e4, e5" in md

    # the run goes on from the same journal afterwards: only what is missing runs, and its report is whole
    whole = run_validation(["ase:emt"], ["slow"], out_dir=here, mlflow=False, device="cpu", merge_journals=[kept])
    assert calls.read_text().split() == ["e2", "e0", "e1", "e3", "e4"]  # e5 is uncovered (Fe)
    assert whole.models[0].sets["slow"].missing == []
    md = (here / "report.md").read_text()
    assert "(interim)" not in md and "not finished" not in md and "`ase:emt` 6 finished" in md


def test_journal_skips_a_line_cut_by_a_kill(tmp_path):
    from workflows.validate import Journal

    j = Journal(tmp_path / "journal.jsonl")
    j.append({"key": "a", "record": {"status": "ok"}})
    with j.path.open("a") as fh:
        fh.write('{"key": "b", "record": {"sta')  # the process died mid-write
    assert set(j.read()) == {"a"}
    j.append({"key": "b", "record": {"status": "ok"}})
    assert set(j.read()) == {"a", "b"}
    assert len(j.path.read_text().splitlines()) == 3


def test_report_mlflow_and_model_agreement(tmp_path, slow_set, tiny_model_copy, settings):
    from mlflow import MlflowClient

    from mlip.loader import trust
    from training.registry import register_model
    from workflows.validate import EXPERIMENT, run_validation

    trust(tiny_model_copy, settings)
    register_model(tiny_model_copy, "tiny", settings, alias="candidate")
    out = tmp_path / "out"
    result = run_validation(["bundled:lipscl-demo", "models:/tiny@candidate"], ["slow"], out_dir=out,
                            settings=settings, command="ionscreen validate ...")

    md = (out / "report.md").read_text()
    data = json.loads((out / "report.json").read_text())
    assert "| value_sum | 10 | -10 |" in md
    assert "uncovered (Fe)" in md
    # bounds as bounds: e2 is '< -2' for the tiny model, so over e0..e4 the orders are reversed except for the
    # entries that recensoring ties (e2, e3, e4 under the bound -2) → τ-b is -1 only over what can be ordered
    pair = data["agreement"]["slow"][0]
    assert pair["n"] == 5 and pair["kendall_tau_b"]["n_bounds_y"] == 1
    tau = pair["kendall_tau_b"]["value"]
    assert tau == pytest.approx(sstats.kendalltau([1, 2, 3, 4, 5], [5, 4, 2, 2, 2]).statistic)
    assert "Kendall τ-b" in md and f"{tau:.3g}" in md
    # spread versus error over e0, e1, e3, e4 (e2 is a bound for the tiny model, e5 uncovered): predictions i and -i,
    # reference i/2, so the spread is 2i, the errors i/2 and 3i/2, both growing with the spread
    spread = data["spread_versus_error"]["slow"]
    assert spread["n"] == 4 and spread["unit"] == "u" and spread["reference_inside_range_share"] == 1.0
    assert spread["median_spread"] == 4.0 and spread["committee_mean_mae"] == pytest.approx(1.0)
    forward = spread["per_model"]["bundled:lipscl-demo"]
    assert (forward["mae_narrow_spread"], forward["mae_wide_spread"]) == (pytest.approx(0.25), pytest.approx(1.75))
    assert spread["per_model"]["models:/tiny@candidate"]["spearman_spread_abs_error"]["value"] == pytest.approx(1.0)
    assert result.spread == data["spread_versus_error"]
    assert "Spread versus error, over the 4 entries" in md and "| `bundled:lipscl-demo` | 1 | 0.25 | 1.75 |" in md
    for model in data["models"]:
        for plot in model["sets"]["slow"]["plots"]:
            assert (out / plot).read_bytes()[:4] == b"\x89PNG"
            assert f"]({plot})" in md
    assert data["models"][1]["registered"] == "models:/tiny/1"

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id])
    assert {r.info.run_id for r in runs} == {m.mlflow_run_id for m in result.models}
    tiny_run = next(r for r in runs if r.data.tags["ionscreen.model_ref"] == "models:/tiny@candidate")
    assert tiny_run.info.status == "FINISHED"
    assert tiny_run.data.metrics["slow.value_sum"] == -10.0
    assert tiny_run.data.tags["ionscreen.registered_model"] == "models:/tiny/1"
    artifacts = {a.path for a in client.list_artifacts(tiny_run.info.run_id)}
    assert {"report.md", "report.json", "plots", "model_card"} <= artifacts
    version = client.get_model_version("tiny", "1")
    assert version.tags["ionscreen.validation.slow.run"] == tiny_run.info.run_id
    assert version.tags["ionscreen.validation.slow.value_sum"] == "-10"
    card = (out / data["models"][1]["card"]).read_text()
    assert "## Validation" in card and "| value_sum | -10 |" in card and tiny_run.info.run_id in card


def test_model_card_renders_the_validation_section():
    from training.modelcard import ModelCard, ValidationFigures, render_markdown

    fields = {name: f.get_default(call_default_factory=True) for name, f in ModelCard.model_fields.items()
              if not f.is_required()}
    card = ModelCard.model_construct(
        **fields, name="m", created_utc="now", model_file="m.model", model_sha256="0" * 64, elements=["Li"],
        n_params=1, dtype="float64", r_max_A=5.0, heads=["Default"], mode="scratch", architecture={},
        hyperparameters={}, e0s_eV={}, e0s_method="given", epochs_run=1, mace_version="x", ionscreen_version="y",
        dataset=type("D", (), {"path": "d", "dataset_hash": "h", "n_frames": 1, "n_atoms": 1, "split_counts": {},
                               "element_atom_counts": {}, "config_type_counts": {}, "split_group_by": None,
                               "sources": []})())
    assert "## Validation" not in render_markdown(card)
    card.validation = [ValidationFigures(set="conductivity", fingerprint="f" * 64, created_utc="now",
                                         figures={"spearman_rho": "0.7 [0.2, 0.9] (n=12)"}, mlflow_run_id="abc")]
    text = render_markdown(card)
    assert "### conductivity" in text and "| spearman_rho | 0.7 [0.2, 0.9] (n=12) |" in text and "`abc`" in text


def test_bad_input_is_refused_with_a_clear_message(tmp_path, slow_set):
    from typer.testing import CliRunner

    from workflows.cli import app
    from workflows.validate import run_validation

    with pytest.raises(InputError, match="unknown validation set 'nope'; sets: conductivity, barriers, frames"):
        run_validation(["bundled:lipscl-demo"], ["nope"], out_dir=tmp_path, mlflow=False)
    with pytest.raises(InputError, match="the frames set needs --dataset"):
        run_validation(["bundled:lipscl-demo"], ["frames"], out_dir=tmp_path, mlflow=False)
    with pytest.raises(InputError, match="does not exist"):
        run_validation(["bundled:lipscl-demo"], ["frames"], out_dir=tmp_path, mlflow=False,
                       set_options={"frames": {"dataset": tmp_path / "missing"}})
    with pytest.raises(InputError, match="not an ionscreen dataset"):
        run_validation(["bundled:lipscl-demo"], ["frames"], out_dir=tmp_path, mlflow=False,
                       set_options={"frames": {"dataset": tmp_path}})
    with pytest.raises(ModelNotFoundError):
        run_validation(["no/such/file.model"], ["slow"], out_dir=tmp_path, mlflow=False)
    with pytest.raises(InputError, match="--limit must be at least 1"):
        run_validation(["bundled:lipscl-demo"], ["slow"], out_dir=tmp_path, limit=0, mlflow=False)
    for bad in (0, 65, "two", "1.5"):
        with pytest.raises(InputError, match=f"--workers must be auto or a whole number between 1 and 64, got {bad!r}"):
            run_validation(["bundled:lipscl-demo"], ["slow"], out_dir=tmp_path, workers=bad, mlflow=False)
    assert not list(tmp_path.glob("models/*"))  # nothing ran
    result = CliRunner().invoke(app, ["validate", "bundled:lipscl-demo", "--set", "nope", "--out", str(tmp_path)])
    assert isinstance(result.exception, InputError) and "unknown validation set" in str(result.exception)


def test_cli_exits_2_with_one_line_for_an_unknown_set(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "workflows.cli", "validate", "bundled:lipscl-demo", "--set", "nope",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: unknown validation set 'nope'")
