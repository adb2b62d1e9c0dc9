"""OPTIMADE at /optimade/v1/ over the sample candidate database (real library candidates, sample numbers): the
official validator passes with zero failures against a live server, pymatgen's OptimadeRester retrieves the stored
structures by filters on elements and on _ionscreen_ fields, every filter gives what the same predicate evaluated on
the served documents gives (SQLite and PostgreSQL), bad input is an OPTIMADE error and never a 500, reads follow the
read-token setting, and ``ionscreen results JOB --format optimade`` writes the same documents."""

from __future__ import annotations

import json
import math
import shutil
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from workflows.db import Store
from webfuzz import NoLaunch
from webserve import served

V1 = "/optimade/v1"
SIGMA = "_ionscreen_conductivity_300k_ms_cm"


# ---------------------------------------------------------------------------------------------- fixtures
def _app(settings, store=None, **kwargs):
    from workflows.web import create_app

    return create_app(settings, store=store, launcher=NoLaunch(), refresh_interval_s=0, **kwargs)


@pytest.fixture
def client(web_home):
    from mlip.config import load_settings

    home, sample = web_home
    settings = load_settings()
    with Store.open(settings.db_url) as store, TestClient(_app(settings, store)) as test_client:
        yield test_client, store, sample


@pytest.fixture(scope="module")
def server(web_sample_template, tmp_path_factory):
    """uvicorn on loopback in a thread, serving a copy of the sample database."""
    from mlip.config import load_settings

    template, sample = web_sample_template
    home = tmp_path_factory.mktemp("optimade") / "home"
    shutil.copytree(template, home)
    settings = load_settings({"IONSCREEN_HOME": str(home)})
    with served(_app(settings)) as url:
        yield url, settings, sample


def documents(client) -> dict[str, dict]:
    body = client.get(f"{V1}/structures", params={"page_limit": 500}).json()
    assert body["meta"]["data_returned"] == len(body["data"]) and not body["meta"]["more_data_available"]
    return {d["id"]: d for d in body["data"]}


def ids(client, filter_text: str) -> set[str]:
    response = client.get(f"{V1}/structures", params={"filter": filter_text, "page_limit": 500,
                                                       "response_fields": "nsites"})
    assert response.status_code == 200, (filter_text, response.text)
    body = response.json()
    assert body["meta"]["data_returned"] == len(body["data"])
    return {d["id"] for d in body["data"]}


def stored_structure(store, entry_id: str):
    from pymatgen.core import Structure

    record = store.candidates.get(int(entry_id.split("-")[0]))
    structure = Structure.from_str(record.cif, fmt="cif")
    structure.remove_oxidation_states()
    return structure


# ---------------------------------------------------------------------------------------------- the validator
@pytest.mark.parametrize("base", [V1, "/optimade"])
def test_the_official_validator_passes_with_zero_failures(server, base):
    from optimade.validator import ImplementationValidator

    url, *_ = server
    validator = ImplementationValidator(base_url=f"{url}{base}", verbosity=-1, respond_json=False)
    validator.validate_implementation()
    results = validator.results
    messages = results.failure_messages + results.internal_failure_messages + results.optional_failure_messages
    assert validator.valid, messages
    assert (results.failure_count, results.internal_failure_count, results.optional_failure_count) == (0, 0, 0), \
        messages
    # every mandatory check ran: info, versions, entry info, pages, single entries, queries on each property
    assert results.success_count >= 35 and results.optional_success_count >= 8


# ---------------------------------------------------------------------------------------------- a real client
def test_pymatgen_retrieves_the_stored_structures_by_element_and_ionscreen_filters(server):
    from pymatgen.ext.optimade import OptimadeRester

    url, settings, sample = server
    rester = OptimadeRester(f"{url}/optimade/", timeout=30)
    assert rester._providers[f"{url}/optimade/"].prefix == "ionscreen"
    with Store.open(settings.db_url) as store:
        table = store.summaries.browse_all(per_page=500)
        cases = {
            f'{SIGMA} > 1 AND elements HAS "S"':
                [r for r in table if (r.conductivity_300K_mS_cm or 0) > 1 and "S" in r.element_list],
            '_ionscreen_working_ion = "Na" AND elements HAS ALL "P","S"':
                [r for r in table if r.working_ion == "Na" and {"P", "S"} <= set(r.element_list)],
            'elements HAS ALL "Mo","S" AND _ionscreen_percolation_3d_ev < 0.5': [r for r in table if r.name == "Mo6S8"],
        }
        for optimade_filter, rows in cases.items():
            expected = {f"{r.candidate_id}-{r.model_sha256[:12]}" for r in rows}
            assert expected, optimade_filter
            snls = rester.get_snls_with_filter(optimade_filter, additional_response_fields=[SIGMA])
            got = snls.get(f"{url}/optimade/", {})
            assert set(got) == expected, optimade_filter
            for entry_id, snl in got.items():
                stored = stored_structure(store, entry_id)
                retrieved = snl.structure
                assert [s.symbol for s in retrieved.species] == [s.symbol for s in stored.species]
                np.testing.assert_allclose(retrieved.lattice.matrix, stored.lattice.matrix, atol=1e-12)
                np.testing.assert_allclose(retrieved.cart_coords, stored.cart_coords, atol=1e-12)
                row = next(r for r in rows if f"{r.candidate_id}-{r.model_sha256[:12]}" == entry_id)
                assert snl.data["_optimade"][SIGMA] == row.conductivity_300K_mS_cm


# ---------------------------------------------------------------------------------------------- filters
def _num(a, key):
    return a.get(key) if isinstance(a.get(key), (int, float)) else None


def _lt(a, key, v):
    return _num(a, key) is not None and a[key] < v


def _gt(a, key, v):
    return _num(a, key) is not None and a[key] > v


#: filter → the same predicate on a served document's attributes (unknown values compare false, NOT included)
FILTERS = {
    f'{SIGMA} > 1 AND elements HAS "S"': lambda a: _gt(a, SIGMA, 1) and "S" in a["elements"],
    f"NOT {SIGMA} > 1": lambda a: _num(a, SIGMA) is not None and not a[SIGMA] > 1,
    f"{SIGMA} IS UNKNOWN": lambda a: a[SIGMA] is None,
    f"0.3 < {SIGMA} AND _ionscreen_conductivity_300k_ci95_hi_ms_cm >= 1":
        lambda a: _gt(a, SIGMA, 0.3) and _gt(a, "_ionscreen_conductivity_300k_ci95_hi_ms_cm", 1 - 1e-12),
    "_ionscreen_activation_energy_ci95_hi_ev <= 0.4": lambda a: _num(a, "_ionscreen_activation_energy_ci95_hi_ev")
        is not None and a["_ionscreen_activation_energy_ci95_hi_ev"] <= 0.4,
    "_ionscreen_percolation_3d_ev < 0.5 OR _ionscreen_percolation_1d_ev > 0.5":
        lambda a: _lt(a, "_ionscreen_percolation_3d_ev", 0.5) or _gt(a, "_ionscreen_percolation_1d_ev", 0.5),
    "_ionscreen_neb_protocol_hash IS KNOWN AND _ionscreen_transport_protocol_hash IS UNKNOWN":
        lambda a: a["_ionscreen_neb_protocol_hash"] is not None and a["_ionscreen_transport_protocol_hash"] is None,
    '_ionscreen_working_ion = "Mg" OR _ionscreen_kind = "electrolyte" AND nelements = 2':
        lambda a: a["_ionscreen_working_ion"] == "Mg" or (a["_ionscreen_kind"] == "electrolyte" and a["nelements"] == 2),
    '_ionscreen_flags HAS "few_hops"': lambda a: "few_hops" in a["_ionscreen_flags"],
    "_ionscreen_flags LENGTH 0": lambda a: not a["_ionscreen_flags"],
    '_ionscreen_flags HAS ONLY "few_hops", "not_diffusive"':
        lambda a: set(a["_ionscreen_flags"]) <= {"few_hops", "not_diffusive"},
    "_ionscreen_rank <= 3": lambda a: a["_ionscreen_rank"] is not None and a["_ionscreen_rank"] <= 3,
    '_ionscreen_model_sha256 STARTS "39e7"': lambda a: a["_ionscreen_model_sha256"].startswith("39e7"),
    'elements HAS ONLY "Li", "S"': lambda a: set(a["elements"]) <= {"Li", "S"},
    'elements HAS ANY "Na", "Mg" AND NOT elements HAS "Ti"':
        lambda a: bool({"Na", "Mg"} & set(a["elements"])) and "Ti" not in a["elements"],
    'elements HAS "s"': lambda a: False,  # symbols are case-sensitive (SQLite's LIKE is not)
    'elements HAS "Li,S" OR elements HAS ANY ",", "" OR _ionscreen_flags HAS "few_hops\\", \\"x"': lambda a: False,
    "elements LENGTH >= 4": lambda a: len(a["elements"]) >= 4,
    "nelements < 3 OR nsites > 50": lambda a: a["nelements"] < 3 or a["nsites"] > 50,
    "40 <= nsites": lambda a: a["nsites"] >= 40,
    'species_at_sites HAS "Cl"': lambda a: "Cl" in a["species_at_sites"],
    "species_at_sites LENGTH 12": lambda a: len(a["species_at_sites"]) == 12,
    'chemical_formula_reduced = "ClLi6PS5"': lambda a: a["chemical_formula_reduced"] == "ClLi6PS5",
    'chemical_formula_reduced != "Li2S"': lambda a: a["chemical_formula_reduced"] != "Li2S",
    'chemical_formula_anonymous STARTS WITH "A2"': lambda a: a["chemical_formula_anonymous"].startswith("A2"),
    'chemical_formula_hill ENDS "S4"': lambda a: a["chemical_formula_hill"].endswith("S4"),
    'chemical_formula_descriptive CONTAINS "PS"': lambda a: "PS" in a["chemical_formula_descriptive"],
    'chemical_formula_descriptive CONTAINS "ps"': lambda a: False,
    'chemical_formula_descriptive < "M"': lambda a: a["chemical_formula_descriptive"] < "M",
    "elements_ratios HAS > 0.5": lambda a: any(r > 0.5 for r in a["elements_ratios"]),
    "elements_ratios LENGTH 3": lambda a: len(a["elements_ratios"]) == 3,
    'structure_features HAS "disorder"': lambda a: False,
    "nperiodic_dimensions = 3 AND dimension_types LENGTH 3": lambda a: True,
    '_other_bandgap < 2 OR nelements = 2': lambda a: a["nelements"] == 2,  # another provider's field: unknown
    "NOT _other_bandgap = 1": lambda a: False,
    '_other_bandgap IS UNKNOWN AND NOT (nsites > 20 AND nelements > 3)':
        lambda a: not (a["nsites"] > 20 and a["nelements"] > 3),
}


def _check_filters(client) -> None:
    docs = documents(client)
    assert len(docs) >= 2
    first = next(iter(docs.values()))
    stamp = first["attributes"]["last_modified"]
    cases = {**FILTERS,
             f'id = "{first["id"]}"': lambda a, i=first["id"]: a["id"] == i,
             f'last_modified >= "{stamp}"': lambda a, t=stamp: a["last_modified"] >= t,
             f'last_modified = "{stamp}"': lambda a, t=stamp: a["last_modified"] == t,
             f'last_modified < "{stamp}"': lambda a, t=stamp: a["last_modified"] < t}
    for optimade_filter, predicate in cases.items():
        expected = {i for i, d in docs.items() if predicate({**d["attributes"], "id": i})}
        assert ids(client, optimade_filter) == expected, optimade_filter
    assert ids(client, f'{SIGMA} > 1 AND elements HAS "S"'), "the issue's example filter matches something"


def test_filters_select_what_the_same_predicate_selects_on_the_documents(client):
    test_client, store, _ = client
    _check_filters(test_client)
    # composition fields agree with the stored structures
    from pymatgen.core import Composition

    for entry_id, doc in documents(test_client).items():
        a = doc["attributes"]
        stored = stored_structure(store, entry_id)
        assert Composition(a["chemical_formula_reduced"]) == stored.composition.reduced_composition
        assert a["elements"] == sorted(a["elements"]) == sorted({s.symbol for s in stored.species})
        assert a["nsites"] == len(stored) == len(a["species_at_sites"]) == len(a["cartesian_site_positions"])
        assert math.isclose(sum(a["elements_ratios"]), 1.0)
        assert a["_ionscreen_candidate_url"].startswith("http://testserver/candidates/")
        assert test_client.get(a["_ionscreen_candidate_url"].replace("http://testserver", ""),
                               headers={"accept": "text/html"}).status_code == 200


@pytest.mark.postgres
def test_filters_on_postgresql(web_home, postgres_url):
    from mlip.config import load_settings
    from workflows.db.records import CandidateRow
    from workflows.web.sample import seed_sample

    home, sample = web_home
    with Store.open(load_settings().db_url) as sqlite_store:
        rows = [{k: getattr(sqlite_store.candidates.get(sample.candidate_ids[name]), k) for k in CandidateRow.model_fields}
                for name in ("Li6PS5Cl", "Li2S", "Mo6S8")]
    settings = load_settings({"IONSCREEN_HOME": str(home), "IONSCREEN_DB_URL": postgres_url})
    with Store.open(postgres_url) as store:
        seed_sample(store, home, rows)
        with TestClient(_app(settings, store)) as test_client:
            _check_filters(test_client)


def test_pages_follow_next_links_and_sort(client):
    test_client, *_ = client
    everything = documents(test_client)
    seen: list[str] = []
    url = f"{V1}/structures?page_limit=2&response_fields=nsites"
    while url:
        body = test_client.get(url).json()
        assert len(body["data"]) <= 2 and body["meta"]["data_returned"] == len(everything)
        seen += [d["id"] for d in body["data"]]
        url = body["links"]["next"]
        assert bool(url) == body["meta"]["more_data_available"]
    assert len(seen) == len(set(seen)) and set(seen) == set(everything)
    by_number = test_client.get(f"{V1}/structures", params={"page_limit": 2, "page_number": 2}).json()
    assert [d["id"] for d in by_number["data"]] == seen[2:4]

    body = test_client.get(f"{V1}/structures", params={"sort": f"-{SIGMA},id", "page_limit": 500,
                                                      "response_fields": SIGMA}).json()
    values = [d["attributes"][SIGMA] for d in body["data"]]
    known = [v for v in values if v is not None]
    assert known == sorted(known, reverse=True) and values[len(known):] == [None] * (len(values) - len(known))
    # the default order is the ranking, best first
    ranks = [d["attributes"]["_ionscreen_rank"] for d in documents(test_client).values()]
    assert ranks == sorted(ranks, key=lambda r: (r is None, r or 0)) and ranks[0] == 1


def test_single_entries_info_and_links(client):
    from optimade.models import EntryInfoResponse, InfoResponse, LinksResponse, StructureResponseOne

    test_client, store, _ = client
    docs = documents(test_client)
    entry_id, doc = next(iter(docs.items()))
    single = test_client.get(f"{V1}/structures/{entry_id}").json()
    StructureResponseOne(**single)
    assert single["data"] == doc
    info = test_client.get(f"{V1}/info").json()
    InfoResponse(**info)
    assert info["data"]["attributes"]["entry_types_by_format"] == {"json": ["structures"]}
    assert info["meta"]["provider"]["prefix"] == "ionscreen"
    entry_info = test_client.get(f"{V1}/info/structures").json()
    EntryInfoResponse(**entry_info)
    properties = entry_info["data"]["properties"]
    assert set(doc["attributes"]) | {"id", "type"} == set(properties)
    assert properties[SIGMA]["unit"] == "mS/cm" and properties["_ionscreen_activation_energy_ev"]["unit"] == "eV"
    assert all(name.startswith("_ionscreen_") for name in properties if name.startswith("_"))
    LinksResponse(**test_client.get(f"{V1}/links").json())
    versions = test_client.get("/optimade/versions")
    assert versions.text.split() == ["version", "1"] and versions.headers["content-type"].startswith("text/csv")


# ---------------------------------------------------------------------------------------------- refusals
TOO_MANY_COMPARISONS = " OR ".join(["nsites > 1"] * 101)  # 1,410 characters
EDGE_CASES = [
    # (path, params, status, words the detail must contain)
    ("/structures", {"filter": "crazyfield = 2"}, 400, ["crazyfield"]),
    ("/structures", {"filter": "_ionscreen_nonexistent > 1"}, 400, ["_ionscreen_nonexistent"]),
    ("/structures", {"filter": "_ionscreen_conductivity_300K_mS_cm > 1"}, 400,
     ["lowercase", "_ionscreen_conductivity_300k_ms_cm"]),
    ("/structures", {"filter": "nsites >"}, 400, ["syntax error"]),
    ("/structures", {"filter": 'elements HAS "Li" AND AND'}, 400, ["syntax error"]),
    ("/structures", {"filter": 'chemical_formula_reduced = "Li'}, 400, ["syntax error"]),
    ("/structures", {"filter": "nsites > 99999999999999999999999999"}, 400, ["2^63"]),
    ("/structures", {"filter": "nsites > 1e999"}, 400, ["finite"]),
    ("/structures", {"filter": f"{SIGMA} < -1.7976931348623157e308"}, 200, []),
    ("/structures", {"filter": "(" * 21 + "nsites > 1" + ")" * 21}, 400, ["nested", "20"]),
    ("/structures", {"filter": "(" * 5000 + "nsites > 1" + ")" * 5000}, 400, ["characters", "2000"]),
    ("/structures", {"filter": TOO_MANY_COMPARISONS}, 400, ["comparisons", "100"]),
    ("/structures", {"filter": "nsites > 1 " + "x" * 3000}, 400, ["2000"]),
    ("/structures", {"filter": 'chemical_formula_reduced = "Li\x00"'}, 400, ["NUL"]),
    ("/structures", {"filter": 'nsites = "12"'}, 400, ["nsites", "number"]),
    ("/structures", {"filter": "chemical_formula_reduced = 12"}, 400, ["chemical_formula_reduced", "string"]),
    ("/structures", {"filter": 'last_modified > "last week"'}, 400, ["last_modified", "RFC 3339"]),
    ("/structures", {"filter": 'elements = "Li"'}, 400, ["elements", "list"]),
    ("/structures", {"filter": "nsites LENGTH 3"}, 400, ["nsites", "lists"]),
    ("/structures", {"filter": "nsites CONTAINS 3"}, 400, ["strings"]),
    ("/structures", {"filter": "elements HAS TRUE"}, 400, ["boolean"]),
    ("/structures", {"filter": "lattice_vectors LENGTH 3"}, 501, ["lattice_vectors"]),
    ("/structures", {"filter": "nsites = nelements"}, 501, ["another property"]),
    ("/structures", {"filter": "species.name = 1"}, 501, ["nested"]),
    ("/structures", {"filter": 'elements HAS < "C"'}, 501, ["operator"]),
    ("/structures", {"filter": 'elements:elements_ratios HAS "Li":>0.1'}, 501, ["correlated"]),
    ("/structures", {"filter": '"a" = 1'}, 400, ["compare"]),
    ("/structures", {"page_limit": "501"}, 403, ["page_limit", "500"]),
    ("/structures", {"page_limit": "0"}, 400, ["page_limit"]),
    ("/structures", {"page_limit": "ten"}, 400, ["page_limit", "integer"]),
    ("/structures", {"page_offset": "-1"}, 400, ["page_offset"]),
    ("/structures", {"page_offset": "99999999999999999999"}, 400, ["page_offset", "maximum"]),
    ("/structures", {"page_number": "0"}, 400, ["page_number"]),
    ("/structures", {"page_above": "3"}, 501, ["page_above"]),
    ("/structures", {"sort": "elements"}, 400, ["sort", "elements"]),
    ("/structures", {"sort": ",".join(["nsites"] * 6)}, 400, ["sort", "5"]),
    ("/structures", {"response_fields": "bogus"}, 400, ["bogus"]),
    ("/structures", {"response_fields": "Nsites"}, 400, ["Nsites"]),
    ("/structures", {"response_format": "xml"}, 400, ["response_format"]),
    ("/structures", {"include": "authors"}, 400, ["include"]),
    ("/structures", [("filter", "nsites > 1"), ("filter", "nsites < 1")], 400, ["filter", "once"]),
    ("/structures/1-xyz", {}, 404, ["1-xyz"]),
    ("/structures/99999999999-0123456789ab", {}, 404, []),
    ("/structures/424242-0123456789ab", {}, 404, ["no such entry"]),
    ("/info/references", {}, 404, ["structures"]),
    ("/versions", {}, 404, []),
    ("/calculations", {}, 404, []),
]


def test_bad_requests_are_optimade_errors_never_500(client):
    from optimade.models import ErrorResponse

    test_client, *_ = client
    for path, params, status, words in EDGE_CASES:
        started = time.monotonic()
        response = test_client.get(f"{V1}{path}", params=params)
        assert time.monotonic() - started < 5, (path, params)
        assert response.status_code == status, (path, params, response.text)
        assert response.headers["content-type"].startswith("application/vnd.api+json")
        if status == 200:
            continue
        body = response.json()
        ErrorResponse(**body)
        (error,) = body["errors"]
        assert error["status"] == str(status) and "data" not in body
        for word in words:
            assert word in error["detail"], (path, params, error["detail"])
    other_version = test_client.get("/optimade/v2/structures")
    assert other_version.status_code == 553 and "v1" in other_version.json()["errors"][0]["detail"]
    # another provider's field is unknown, not an error; an unregistered prefix is warned about
    warned = test_client.get(f"{V1}/structures", params={"filter": "_zzz_bandgap < 2"}).json()
    assert warned["data"] == [] and "_zzz_bandgap" in warned["meta"]["warnings"][0]["detail"]
    known_provider = test_client.get(f"{V1}/structures", params={"filter": "_mp_bandgap < 2"}).json()
    assert known_provider["data"] == [] and "warnings" not in known_provider["meta"]


def test_fuzzed_filters_and_parameters_never_give_a_server_error(client):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    test_client, *_ = client
    names = ["nsites", "elements", "id", "last_modified", "chemical_formula_reduced", "elements_ratios", SIGMA,
             "_ionscreen_flags", "species_at_sites", "structure_features", "lattice_vectors", "_x_y", "Nsites",
             "type", "nperiodic_dimensions", "_ionscreen_candidate_url", "species"]
    words = ["AND", "OR", "NOT", "HAS", "ALL", "ANY", "ONLY", "LENGTH", "IS", "KNOWN", "UNKNOWN", "CONTAINS",
             "STARTS", "WITH", "ENDS", "(", ")", ",", ":", "=", "!=", "<", "<=", ">", ">=", "TRUE", "."]
    quoted = st.text(max_size=8).map(lambda t: '"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"')
    numbers = st.one_of(st.integers(-2**70, 2**70).map(str), st.floats(allow_nan=False).map(repr))
    values = st.one_of(numbers, quoted, st.text(max_size=4).map(lambda t: f'"{t}'))
    token = st.one_of(st.sampled_from(names), st.sampled_from(words), values)
    ops = st.sampled_from(["=", "!=", "<", "<=", ">", ">="])
    comparison = st.one_of(
        st.tuples(st.sampled_from(["", "NOT "]), st.sampled_from(names),
                  st.sampled_from(["=", "!=", "<", ">=", "HAS", "HAS ALL", "HAS ONLY", "LENGTH", "CONTAINS",
                                   "STARTS", "IS KNOWN", "IS UNKNOWN"]), values).map(" ".join),
        # well-typed comparisons, so that many filters are valid and run in SQL
        st.tuples(st.sampled_from(["nsites", "nelements", SIGMA, "_ionscreen_rank", "nperiodic_dimensions"]), ops,
                  numbers).map(" ".join),
        st.tuples(st.sampled_from(["elements", "species_at_sites", "_ionscreen_flags", "structure_features"]),
                  st.sampled_from(["HAS", "HAS ALL", "HAS ANY", "HAS ONLY"]),
                  st.lists(st.sampled_from(['"Li"', '"S"', '"few_hops"', '"Xx"', '"Cl"']), min_size=1,
                           max_size=3).map(", ".join)).map(" ".join),
        st.tuples(st.sampled_from(["chemical_formula_reduced", "chemical_formula_descriptive", "id",
                                   "_ionscreen_working_ion", "chemical_formula_anonymous", "last_modified"]),
                  st.sampled_from(["=", "!=", "<", "CONTAINS", "STARTS WITH", "ENDS"]), quoted).map(" ".join),
    )
    filters = st.one_of(st.lists(token, max_size=25).map(" ".join), st.text(max_size=60),
                        st.lists(comparison, min_size=1, max_size=4).map(lambda c: " AND ".join(c)),
                        st.lists(comparison, min_size=1, max_size=3).map(lambda c: "(" + " OR ".join(c) + ")"))
    params = st.fixed_dictionaries({"filter": filters}, optional={
        "page_limit": st.one_of(st.integers(-3, 600).map(str), st.text(max_size=5)),
        "page_offset": st.one_of(st.integers(-3, 2**40).map(str), st.text(max_size=5)),
        "sort": st.one_of(st.sampled_from(names).map(lambda n: "-" + n), st.text(max_size=8)),
        "response_fields": st.lists(st.sampled_from(names), max_size=4).map(",".join),
    })
    statuses: dict[int, int] = {}

    @settings(max_examples=150, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(params)
    def check(query):
        response = test_client.get(f"{V1}/structures", params=query)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code in (200, 400, 403, 501), (query, response.text)
        body = response.json()
        assert ("errors" in body) == (response.status_code != 200)

    check()
    assert statuses.get(200, 0) >= 20 and statuses.get(400, 0) >= 30, statuses


# ---------------------------------------------------------------------------------------------- reads, writes, export
def test_reads_follow_the_read_token_setting_and_nothing_writes(web_home):
    from mlip.config import load_settings

    settings = load_settings()
    with Store.open(settings.db_url) as store:
        _, secret = store.tokens.create("reader")
        with TestClient(_app(settings, store, reads_require_token=True)) as test_client:
            for path in ("/info", "/structures", "/info/structures", "/links"):
                refused = test_client.get(f"{V1}{path}")
                assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
                assert refused.json()["errors"][0]["status"] == "401" and "data" not in refused.json()
            bad = test_client.get(f"{V1}/structures", headers={"Authorization": "Bearer isk_00000000_" + "A" * 43})
            assert bad.status_code == 403 and bad.json()["errors"][0]["status"] == "403"
            allowed = test_client.get(f"{V1}/structures", headers={"Authorization": f"Bearer {secret}"})
            assert allowed.status_code == 200 and allowed.json()["data"]
            before = store.table_counts()
            for method in ("post", "put", "patch", "delete"):
                assert getattr(test_client, method)(f"{V1}/structures",
                                                    headers={"Authorization": f"Bearer {secret}"}).status_code == 405
            assert store.table_counts() == before
        with TestClient(_app(settings, store)) as open_client:
            assert open_client.get(f"{V1}/structures").status_code == 200


def test_results_format_optimade_writes_the_served_documents(client, tmp_path):
    import typer
    from optimade.models import StructureResponseMany
    from typer.testing import CliRunner

    from workflows.cli import jobs as cli_jobs

    test_client, store, sample = client
    app = typer.Typer()  # wired as workflows/cli/__init__.py wires it
    app.command("results")(cli_jobs.results)
    app.command("other")(lambda: None)
    out = tmp_path / "deposit.json"
    result = CliRunner().invoke(app, ["results", sample.job_id[:8], "--format", "optimade", "-o", str(out)])
    assert result.exit_code == 0, result.output
    exported = json.loads(out.read_text())
    StructureResponseMany(**exported)
    job = store.jobs.get(sample.job_id)
    assert exported["meta"]["_ionscreen_job_id"] == job.id
    served = documents(test_client)
    job_rows = {f"{r.candidate_id}-{r.model_sha256[:12]}" for r in store.summaries.browse_all(job=job.id)}
    assert {d["id"] for d in exported["data"]} == job_rows and len(job_rows) == len(sample.candidate_ids)
    for doc in exported["data"]:
        same = served[doc["id"]]
        url = same["attributes"]["_ionscreen_candidate_url"]
        assert doc["attributes"]["_ionscreen_candidate_url"] == url.replace("http://testserver", "")
        assert {**doc["attributes"], "_ionscreen_candidate_url": url} == same["attributes"]
    printed = CliRunner().invoke(app, ["results", sample.job_id, "--format", "optimade"])
    assert printed.exit_code == 0 and json.loads(printed.stdout)["data"] == exported["data"]
