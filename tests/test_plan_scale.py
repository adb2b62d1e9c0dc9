"""Planning at scale: ``plan_job`` builds candidates one at a time and stores them (and their tasks) in chunks inside
its one transaction, so its memory does not grow with the number of candidates; the driver builds each task's payload
when it is submitted, not all of them up front; and a job file of 10,000 candidates fits the input limits.

Memory is measured with ``tracemalloc`` (peak of Python allocations), comparing N with 4N candidates: all of them
built and stored, while the peak stays where it was. (Kept in memory, even a 2-atom pymatgen candidate costs ~6 kB of
Python objects, and a 100-atom one far more.)"""

from __future__ import annotations

import gc
import hashlib
import time
import tracemalloc

import pytest
import yaml

from mlip.errors import InputError
from mlip.loader import trust

# P1 rock-salt-like LiCl cells of distinct lattices: 2 atoms, oxidation states given, so each builds in milliseconds
CIF = """data_x
_symmetry_space_group_name_H-M 'P 1'
_cell_length_a {a:.2f}
_cell_length_b {b:.2f}
_cell_length_c {c:.2f}
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
Li1 Li 0 0 0
Cl1 Cl 0.5 0.5 0.5
"""
TRANSPORT = {"preset": "quick", "overrides": {"supercell_min_length_A": 5.0}}


@pytest.fixture
def model(tmp_path, tiny_model_file, settings):
    path = tmp_path / "tiny.model"
    path.write_bytes(tiny_model_file.read_bytes())
    trust(str(path), settings)
    return path


def write_job(directory, n: int, model, *, name: str, start: int = 0, neb: bool = False):
    """A job of ``n`` distinct file candidates (``c<i>.cif``, i from ``start``), one bad one at the end."""
    from workflows.jobs.spec import load_job_spec

    directory.mkdir(exist_ok=True)
    candidates = []
    for i in range(start, start + n):
        a, b, c = 4.0 + (i % 40) * 0.02, 4.011 + (i // 40 % 40) * 0.02, 4.023 + (i // 1600) * 0.02
        (directory / f"c{i}.cif").write_text(CIF.format(a=a, b=b, c=c))
        candidates.append({"file": f"c{i}.cif", "oxidation": {"Li": 1, "Cl": -1}})
    (directory / "bad.cif").write_text(CIF.format(a=4, b=4, c=4).replace("Cl1 Cl", "Na1 Na"))
    candidates.append({"file": "bad.cif", "oxidation": {"Li": 1, "Na": -1}})  # Na: outside the model's elements
    job = {"name": name, "model": str(model), "working_ion": "Li", "candidates": candidates, "transport": TRANSPORT}
    if neb:
        job["neb"] = {"max_hops": 1, "min_length_A": 5.0}
    path = directory / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return load_job_spec(path)


def traced_peak(work):
    """(result of ``work()``, peak bytes of Python allocations while it ran)."""
    gc.collect()
    tracemalloc.start()
    try:
        out = work()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_planning_memory_does_not_grow_with_the_number_of_candidates(tmp_path, settings, model):
    from workflows.db import Store
    from workflows.db.jobs import CANDIDATE_CHUNK
    from workflows.jobs.plan import plan_job

    n = 40
    assert 4 * n > CANDIDATE_CHUNK  # the larger job is stored in more than one chunk
    store = Store.open(settings.db_url)
    plan_job(write_job(tmp_path / "warm", 2, model, name="warm", start=10_000), settings, store=store)  # imports

    peaks, jobs = {}, {}
    for count, start in ((n, 0), (4 * n, n)):
        spec = write_job(tmp_path / f"n{count}", count, model, name=f"n{count}", start=start)
        started = time.perf_counter()
        jobs[count], peaks[count] = traced_peak(lambda: plan_job(spec, settings, store=store))
        print(f"{count} candidates: {time.perf_counter() - started:.1f} s, peak {peaks[count] / 1e6:.2f} MB")

    for count, planned in jobs.items():  # everything stored: every candidate once, one task each, the bad one said
        assert planned.n_candidates == count and planned.n_tasks == count
        (failure,) = planned.failures  # kept as its short message
        assert failure.startswith(f"candidates[{count}]") and "ModelDomainError" in failure and "Na" in failure
        assert len(store.candidates.for_job(planned.job_id)) == count
        tasks = store.tasks.list(planned.job_id)
        assert len(tasks) == count and {t.state for t in tasks} == {"pending"}
        assert len({t.candidate_id for t in tasks}) == count
        assert store.jobs.get(planned.job_id).plan_json["candidate_failures"] == planned.failures
    # kept in memory, each of these 2-atom candidates added ~6 kB (before streaming: 2.54 -> 3.08 MB for 30 -> 120);
    # streamed, the peak stays where it was (2.47 -> 2.51 MB for 40 -> 160)
    growth_per_candidate = (peaks[4 * n] - peaks[n]) / (3 * n)
    assert peaks[4 * n] < 1.15 * peaks[n], peaks
    assert growth_per_candidate < 2_000, peaks


class Rows:
    """``n`` candidate rows and one task each, made as they are read, any number of times (as plan_job's are)."""

    def __init__(self, n: int, *, bad_task: int | None = None):
        self.n, self.bad_task = n, bad_task

    def candidates(self):
        for i in range(self.n):
            yield {"structure_hash": hashlib.sha256(f"cand{i}".encode()).hexdigest(), "name": f"c{i}",
                   "formula": "LiCl", "working_ion": "Li", "working_ion_charge": 1, "kind": "electrolyte",
                   "n_atoms": 2, "cif": f"data_c{i}\n" + "x" * 2000, "metadata_json": {"i": i}}

    def tasks(self):
        from workflows.db.jobs import PlannedTask

        for i in range(self.n):
            key = "not-a-key" if i == self.bad_task else hashlib.sha256(f"task{i}".encode()).hexdigest()
            yield PlannedTask(i, "transport", key)


class Again:
    def __init__(self, make):
        self.make = make

    def __iter__(self):
        return self.make()


def test_storing_a_plan_reads_candidates_and_tasks_in_chunks(settings):
    """The store's half at a larger scale (rows without pymatgen): 1,000 and 4,000 candidates and tasks, same peak."""
    from workflows.db import Store

    store = Store.open(settings.db_url)
    store.jobs.create({"name": "warm", "model": "m"}, candidates=Again(Rows(5).candidates), tasks=Again(Rows(5).tasks))
    peaks = {}
    for n in (1000, 4000):
        rows = Rows(n)
        job_id, peaks[n] = traced_peak(lambda: store.jobs.create(
            {"name": f"n{n}", "model": "m"}, candidates=Again(rows.candidates), tasks=Again(rows.tasks)))
        assert len(store.candidates.for_job(job_id)) == n and len(store.tasks.list(job_id)) == n
    print({n: f"{p / 1e6:.2f} MB" for n, p in peaks.items()})
    assert peaks[4000] < 1.6 * peaks[1000], peaks


def test_a_failure_in_a_later_chunk_leaves_nothing(settings):
    """Earlier chunks were already written inside the transaction when the last task fails: all of it goes."""
    from workflows.db import Store
    from workflows.db.jobs import CANDIDATE_CHUNK, TASK_CHUNK

    store = Store.open(settings.db_url)
    n = max(2 * CANDIDATE_CHUNK, TASK_CHUNK) + 1
    rows = Rows(n, bad_task=n - 1)
    before = store.table_counts()
    with pytest.raises(InputError, match="task_key"):
        store.jobs.create({"name": "half", "model": "m"}, candidates=Again(rows.candidates), tasks=Again(rows.tasks))
    assert store.table_counts() == before and store.jobs.list() == []


def test_streams_that_cannot_be_read_twice_are_refused(settings):
    """A generator would be empty when a transaction retried after a lock conflict reads it again: refused."""
    from workflows.db import Store

    store = Store.open(settings.db_url)
    with pytest.raises(TypeError, match="iterable more than once"):
        store.jobs.create({"name": "gen", "model": "m"}, candidates=Rows(2).candidates(), tasks=[])
    assert store.jobs.list() == []


def test_the_driver_builds_each_payload_when_it_is_looked_up(tmp_path, settings, model, monkeypatch):
    """``task_specs`` builds nothing up front; a payload (and its candidate's structure) is built when asked for,
    the last ``keep`` built are kept, and the layout measurement builds one."""
    from screening.candidates import Candidate
    from screening.stages import Stage
    from workflows.db import Store
    from workflows.jobs.plan import TaskSpec, load_plan, plan_job, task_specs
    from workflows.jobs.run import _layout_structures

    store = Store.open(settings.db_url)
    planned = plan_job(write_job(tmp_path / "job", 6, model, name="lazy", neb=True), settings, store=store)
    assert planned.n_tasks == 12
    parsed = []
    from_cif_text = Candidate.from_cif_text.__func__
    monkeypatch.setattr(Candidate, "from_cif_text", classmethod(lambda cls, text: parsed.append(1) or
                                                                from_cif_text(cls, text)))
    plan = load_plan(store, planned.job_id)
    tasks = store.tasks.list(planned.job_id)
    payloads = task_specs(store, planned.job_id, plan, tasks)
    assert len(payloads) == 12 and list(payloads) == [t.id for t in tasks] and tasks[0].id in payloads
    assert payloads.builds == 0 and not parsed and payloads.stage(tasks[1].id) is Stage.NEB
    assert payloads.model(tasks[0].id) == plan.model

    first = payloads[tasks[0].id]
    assert isinstance(first, TaskSpec) and first.task_key == tasks[0].task_key and first.stage is Stage.TRANSPORT
    assert first.candidate.structure_hash == store.candidates.get(tasks[0].candidate_id).structure_hash
    assert payloads[tasks[0].id] is first and payloads.builds == 1 and len(parsed) == 1
    second = payloads[tasks[1].id]  # the same candidate's NEB task: its structure is parsed once
    assert second.neb == plan.neb and second.candidate is first.candidate and len(parsed) == 1

    payloads.keep = 2
    for t in tasks[2:6]:
        payloads[t.id]
    assert payloads.builds == 6 and len(parsed) == 3
    assert payloads[tasks[0].id] == first and payloads.builds == 7  # dropped, built again: the same payload
    assert len(payloads._built) == 2 and len(payloads._candidates) == 2  # noqa: SLF001 - what the driver holds

    fresh = task_specs(store, planned.job_id, plan, tasks[::-1])
    (atoms,) = _layout_structures(fresh)
    assert fresh.builds == 1 and len(atoms) >= 2


def test_a_job_file_of_the_largest_number_of_candidates_fits(tmp_path):
    """10,000 candidates written the long way (a path, a name and an oxidation block each) fit MAX_JOB_FILE_BYTES,
    which the old limit (512 KiB) did not, and the job file is read."""
    from workflows.jobs.spec import load_job_spec
    from workflows.jobs.spec.parse import MAX_JOB_FILE_BYTES
    from workflows.jobs.spec.schema import MAX_CANDIDATES

    assert MAX_CANDIDATES == 10_000
    folder = tmp_path / "structures" / "Li6PS5Cl-substituted"
    folder.mkdir(parents=True)
    (tmp_path / "x.model").write_bytes(b"not read while parsing")
    entry = ("  - file: structures/Li6PS5Cl-substituted/candidate-{i:05d}.cif\n    name: Li6PS5Cl-variant-{i:05d}\n"
             "    oxidation:\n      Li: 1\n      P: 5\n      S: -2\n      Cl: -1\n")
    for i in range(MAX_CANDIDATES):
        (folder / f"candidate-{i:05d}.cif").touch()
    text = "name: big\nmodel: x.model\nworking_ion: Li\ntransport: {preset: quick}\ncandidates:\n" + \
        "".join(entry.format(i=i) for i in range(MAX_CANDIDATES))
    assert 512 * 1024 < len(text.encode()) < MAX_JOB_FILE_BYTES
    (tmp_path / "job.yaml").write_text(text)
    spec = load_job_spec(tmp_path / "job.yaml")
    assert len(spec.candidates) == MAX_CANDIDATES and spec.candidates[-1].name == "Li6PS5Cl-variant-09999"
