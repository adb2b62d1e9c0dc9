"""The candidate table (candidate_summaries) and API tokens in the Store, on real SQLite and real PostgreSQL:
refresh merges the newest result per stage and model, is idempotent and incremental; SQL order and filters agree
with the same operations done in Python; tokens are stored hashed and refused once revoked."""

from __future__ import annotations

import hashlib
import math
import random

import pytest

from mlip.errors import InputError
from workflows.db import NotFoundError, Store
from workflows.db.summaries import BrowseQuery, elements_of


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


FORMULAS = [("Li6PS5Cl", "Li"), ("Li3PS4", "Li"), ("Na3PS4", "Na"), ("Li10Ge(PS6)2", "Li"), ("MgMo6S8", "Mg"),
            ("Li3YCl6", "Li"), ("Li2S", "Li")]


def add_candidate(store, i: int) -> int:
    formula, ion = FORMULAS[i % len(FORMULAS)]
    return store.candidates.upsert({
        "structure_hash": sha(f"s{i}"), "name": f"cand-{i:03d}", "formula": formula, "working_ion": ion,
        "working_ion_charge": 2 if ion == "Mg" else 1, "kind": "cathode_host" if ion == "Mg" else "electrolyte",
        "n_atoms": 20,
    })


def add_result(store, cid: int, i: int, stage: str = "transport", model: str = "a", **values) -> None:
    store.results.record({
        "task_key": sha(f"k{i}-{stage}-{model}-{values}"), "candidate_id": cid, "stage": stage,
        "structure_hash": sha(f"s{i}"), "protocol_hash": sha("p"), "model_ref": f"model-{model}",
        "model_sha256": sha(model), "code_version": "test", **values,
    })


def transport(sigma: float, ea: float, flags=()) -> dict:
    return {"conductivity_300K_mS_cm": sigma, "conductivity_300K_ci95_lo_mS_cm": sigma / 2,
            "conductivity_300K_ci95_hi_mS_cm": sigma * 2, "activation_energy_eV": ea,
            "activation_energy_ci95_lo_eV": ea - 0.03, "activation_energy_ci95_hi_eV": ea + 0.03, "flags": list(flags)}


def test_refresh_merges_newest_results_and_is_incremental(db_url):
    with Store.open(db_url) as store:
        assert store.summaries.refresh().changed is False  # empty database
        c0, c1 = add_candidate(store, 0), add_candidate(store, 1)
        add_result(store, c0, 0, **transport(2.0, 0.25))
        add_result(store, c0, 0, stage="neb", migration_barrier_eV=0.2, percolation_1d_eV=0.2,
                   percolation_3d_eV=0.3, flags=["few_hops"])
        add_result(store, c1, 1, **transport(0.1, 0.4))
        report = store.summaries.refresh()
        assert (report.changed, report.inserted, report.rows) == (True, 2, 2)
        assert store.summaries.refresh().skipped is True  # nothing new: no work
        with Store.open(db_url) as other:  # another process: rebuilds once, finds nothing to change
            report = other.summaries.refresh()
            assert (report.skipped, report.changed, report.rows) == (False, False, 2)

        (row0,) = store.summaries.for_candidate(c0)
        assert row0.conductivity_300K_mS_cm == 2.0 and row0.migration_barrier_eV == 0.2
        assert row0.percolation_barrier_eV == 0.3 and row0.percolation_dimension == 3  # 1D + 0.30 eV penalty loses
        assert row0.flags == ["few_hops"] and row0.n_flags == 1 and row0.elements == ",Cl,Li,P,S,"
        assert row0.transport_result_id is not None and row0.neb_result_id is not None

        # a newer transport result of c1 under the same model replaces the old one; c0 keeps its values
        add_result(store, c1, 1, **transport(5.0, 0.2))
        report = store.summaries.refresh()
        assert report.inserted == 0 and report.updated >= 1
        (row1,) = store.summaries.for_candidate(c1)
        assert row1.conductivity_300K_mS_cm == 5.0
        assert store.summaries.for_candidate(c0)[0].conductivity_300K_mS_cm == 2.0
        # another model: a second row for the same candidate
        add_result(store, c1, 1, model="b", **transport(0.5, 0.3))
        assert store.summaries.refresh().inserted == 1
        assert {r.model_sha256 for r in store.summaries.for_candidate(c1)} == {sha("a"), sha("b")}
        ranks = sorted(r.rank for r in store.summaries.browse(per_page=10).rows)
        assert ranks == [1, 2, 3]


def test_a_result_committed_late_with_a_smaller_id_is_not_missed(db_url):
    """On PostgreSQL a transaction holding a smaller id may commit after a larger one: the count catches it."""
    import sqlalchemy as sa

    from workflows.db import create_db_engine
    from workflows.db.models import Result, Stage, utc_now

    with Store.open(db_url) as store:
        c0, c1 = add_candidate(store, 0), add_candidate(store, 1)
        engine = create_db_engine(db_url)
        base = {"stage": Stage.TRANSPORT, "protocol_hash": sha("p"), "model_ref": "m", "model_sha256": sha("a"),
                "code_version": "test", "created_utc": utc_now(), "flags": []}
        with engine.begin() as conn:
            conn.execute(sa.insert(Result), [{**base, "id": 50, "task_key": sha("late-0"), "candidate_id": c0,
                                              "structure_hash": sha("s0"), "conductivity_300K_mS_cm": 1.0}])
        store.summaries.refresh()
        with engine.begin() as conn:  # id 7 < 50: the maximum does not move
            conn.execute(sa.insert(Result), [{**base, "id": 7, "task_key": sha("late-1"), "candidate_id": c1,
                                              "structure_hash": sha("s1"), "conductivity_300K_mS_cm": 2.0}])
        engine.dispose()
        report = store.summaries.refresh()
        assert report.inserted == 1 and store.summaries.for_candidate(c1)[0].conductivity_300K_mS_cm == 2.0


def test_sql_order_and_filters_agree_with_python(db_url):
    rng = random.Random(5)
    with Store.open(db_url) as store:
        for i in range(60):
            cid = add_candidate(store, i)
            if i % 7 == 6:
                continue  # no result: no row
            sigma = 10 ** rng.uniform(-4, 1)
            flags = ["not_diffusive"] if rng.random() < 0.3 else []
            add_result(store, cid, i, **transport(sigma, rng.uniform(0.15, 0.6), flags))
            if i % 3 == 0:
                b = rng.uniform(0.1, 0.9)
                add_result(store, cid, i, stage="neb", migration_barrier_eV=b, percolation_3d_eV=b + 0.1, flags=[])
        store.summaries.refresh()
        everything = store.summaries.browse_all(BrowseQuery(sort="name"))
        assert len(everything) == 60 - 60 // 7
        assert [r.name for r in everything] == sorted(r.name for r in everything)

        def python(predicate, key, reverse):
            rows = [r for r in everything if predicate(r)]
            present = sorted((r for r in rows if key(r) is not None), key=lambda r: (key(r), r.id) if not reverse
                             else (-key(r), r.id))
            return [r.id for r in present] + [r.id for r in sorted(rows, key=lambda r: r.id) if key(r) is None]

        cases = [
            (dict(sort="conductivity"), lambda r: True, lambda r: r.conductivity_300K_mS_cm, True),
            (dict(sort="activation_energy", working_ion="Li"), lambda r: r.working_ion == "Li",
             lambda r: r.activation_energy_eV, False),
            (dict(sort="barrier", order="desc", no_flags=True), lambda r: r.n_flags == 0,
             lambda r: r.percolation_barrier_eV, True),
            (dict(sort="score", elements_present=["S"], elements_absent=["Ge", "Cl"]),
             lambda r: "S" in r.element_list and not {"Ge", "Cl"} & set(r.element_list), lambda r: r.score, True),
            (dict(sort="conductivity", order="asc", min_conductivity_mS_cm=0.01, max_activation_energy_eV=0.4),
             lambda r: (r.conductivity_300K_mS_cm or -1) >= 0.01 and (r.activation_energy_eV or 9) <= 0.4,
             lambda r: r.conductivity_300K_mS_cm, False),
            (dict(sort="score", text="CAND-01"), lambda r: "cand-01" in r.name, lambda r: r.score, True),
        ]
        for filters, predicate, key, reverse in cases:
            expected = python(predicate, key, reverse)
            got = [r.id for r in store.summaries.browse_all(BrowseQuery(**filters))]
            assert got == expected, filters
            page = store.summaries.browse(BrowseQuery(**filters, per_page=7, page=2))
            assert page.total == len(expected) and [r.id for r in page.rows] == expected[7:14]
        for injection in ("' OR 1=1 --", "%", "_", "\\"):
            assert store.summaries.browse(text=injection).total == 0
            assert store.summaries.browse(working_ion=injection).total == 0
        assert store.table_counts()["candidates"] == 60


def test_browse_query_validation():
    assert BrowseQuery(elements_present="Li, S  Cl").elements_present == ("Li", "S", "Cl")
    for bad in (dict(elements_present=["Xx"]), dict(sort="nope"), dict(per_page=0), dict(page=0),
                dict(elements_present=["Li"], elements_absent=["Li"]), dict(min_conductivity_mS_cm=-1)):
        with pytest.raises(ValueError):
            BrowseQuery(**bad)
    assert elements_of("Li10Ge(PS6)2") == ["Ge", "Li", "P", "S"]
    assert math.isclose(BrowseQuery(min_conductivity_mS_cm="0.5").min_conductivity_mS_cm, 0.5)


def test_tokens_are_hashed_verified_and_revoked(db_url):
    with Store.open(db_url) as store:
        record, secret = store.tokens.create("ci runner")
        assert secret.startswith(f"isk_{record.token_id}_") and record.active and record.last_used_utc is None
        _, other = store.tokens.create("ci runner")
        assert other != secret
        verified = store.tokens.verify(secret)
        assert verified.token_id == record.token_id and verified.last_used_utc is not None
        assert store.tokens.verify(secret[:-2]) is None and store.tokens.verify("") is None
        assert store.tokens.verify("isk_" + "0" * 8 + "_" + "x" * 43) is None
        with pytest.raises(InputError, match="2 active tokens"):
            store.tokens.revoke("ci runner")  # ambiguous name: refuse, revoke nothing
        assert all(t.active for t in store.tokens.list())
        assert store.tokens.get_active(record.token_id).name == "ci runner"
        assert store.tokens.get_active("0" * 8) is None
        revoked = store.tokens.revoke(record.token_id)
        assert not revoked.active and store.tokens.verify(secret) is None
        assert store.tokens.get_active(record.token_id) is None
        assert store.tokens.verify(other) is not None
        assert store.tokens.revoke("ci runner").token_id != record.token_id  # now unambiguous
        with pytest.raises(NotFoundError):
            store.tokens.revoke("nobody")
        with pytest.raises(InputError):
            store.tokens.create("bad\nname")
        assert len(store.tokens.list()) == 2 and store.tokens.list(include_revoked=False) == []
