"""200 concurrent task-result writes from several processes, on real SQLite and real PostgreSQL: every row is
present exactly once, and each key is reported as newly inserted by exactly one writer.

4 processes open the same fresh database at the same moment (racing the migration), upsert the same 5
candidates (racing the structure-hash key), then write 50 results each; every one of the 100 task keys is
written by two processes, in shuffled order so that the pairs collide.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import random
import time
import traceback

import sqlalchemy as sa

N_PROCESSES = 4
WRITES_PER_PROCESS = 50
N_KEYS = 100  # each key written by 2 processes: 4 × 50 = 200 writes
N_CANDIDATES = 5
TIMEOUT_S = 180


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def keys_of(worker: int) -> list[int]:
    """Worker p writes keys 25p … 25p+49 (mod 100): each key by workers p and p-1."""
    stride = N_KEYS // N_PROCESSES
    keys = [(stride * worker + j) % N_KEYS for j in range(WRITES_PER_PROCESS)]
    random.Random(worker).shuffle(keys)
    return keys


def candidate(i: int) -> dict:
    return {
        "structure_hash": sha(f"structure-{i}"),
        "name": f"cand-{i}",
        "formula": "Li3PS4",
        "working_ion": "Li",
        "working_ion_charge": 1,
        "kind": "electrolyte",
        "n_atoms": 16,
    }


def result(key: int, candidate_id: int, worker: int) -> dict:
    c = key % N_CANDIDATES
    return {
        "task_key": sha(f"task-{key}"),
        "candidate_id": candidate_id,
        "stage": "transport",
        "structure_hash": sha(f"structure-{c}"),
        "protocol_hash": sha("quick"),
        "model_ref": "bundled:lipscl-demo",
        "model_sha256": sha("model"),
        "code_version": f"writer-{worker}",
        "flags": [],
        "conductivity_300K_mS_cm": float(key),
        "conductivity_300K_ci95_lo_mS_cm": key / 2,
        "conductivity_300K_ci95_hi_mS_cm": key * 2.0,
    }


def writer(url: str, worker: int, start, out) -> None:
    try:
        from workflows.db import Store

        start.wait()  # all processes open the fresh database together
        with Store.open(url) as store:
            ids = [store.candidates.upsert(candidate(i)) for i in range(N_CANDIDATES)]
            inserted = {}
            for key in keys_of(worker):
                inserted[key] = store.results.record(result(key, ids[key % N_CANDIDATES], worker))
        out.put((worker, "ok", ids, inserted))
    except BaseException:
        out.put((worker, "error", traceback.format_exc(), None))


def test_200_concurrent_result_writes_every_row_once(db_url):
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(N_PROCESSES), ctx.Queue()
    procs = [ctx.Process(target=writer, args=(db_url, p, start, out)) for p in range(N_PROCESSES)]
    t0 = time.perf_counter()
    for proc in procs:
        proc.start()
    reports = {}
    try:
        for _ in procs:
            worker, status, payload, inserted = out.get(timeout=TIMEOUT_S)
            assert status == "ok", f"writer {worker} failed:\n{payload}"
            reports[worker] = (payload, inserted)
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    elapsed = time.perf_counter() - t0
    assert all(proc.exitcode == 0 for proc in procs)

    candidate_ids = {tuple(ids) for ids, _ in reports.values()}
    assert len(candidate_ids) == 1, f"writers saw different candidate ids: {candidate_ids}"
    (ids,) = candidate_ids
    assert len(set(ids)) == N_CANDIDATES

    # each key was reported as newly inserted by exactly one of its two writers
    writes = [(key, new) for _, inserted in reports.values() for key, new in inserted.items()]
    assert len(writes) == N_PROCESSES * WRITES_PER_PROCESS == 200
    inserted_by = {key: sum(new for k, new in writes if k == key) for key in range(N_KEYS)}
    writers_of = {key: sum(1 for k, _ in writes if k == key) for key in range(N_KEYS)}
    assert set(writers_of.values()) == {2}
    assert inserted_by == {key: 1 for key in range(N_KEYS)}

    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text('SELECT task_key, candidate_id, "conductivity_300K_mS_cm" FROM results')
            ).all()
            n_candidates = conn.scalar(sa.text("SELECT count(*) FROM candidates"))
    finally:
        engine.dispose()
    assert len(rows) == N_KEYS, f"{len(rows)} result rows for {N_KEYS} distinct keys"
    expected = {sha(f"task-{k}"): (ids[k % N_CANDIDATES], float(k)) for k in range(N_KEYS)}
    assert {key: (cid, sigma) for key, cid, sigma in rows} == expected  # none missing, none duplicated
    assert n_candidates == N_CANDIDATES
    print(f"{db_url.split(':')[0]}: 200 writes from {N_PROCESSES} processes in {elapsed:.1f} s")
