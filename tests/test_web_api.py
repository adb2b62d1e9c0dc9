"""The REST API and pages through FastAPI's test client: token-guarded writes that leave the database unchanged when
refused, job submission (JSON and YAML) with key-path errors, body size limit, injection strings as plain data,
path traversal refused, closed reads, downloads parsed back, and the real job launcher's command line."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time

import pytest
import yaml
from fastapi.testclient import TestClient

from workflows.db import Store

INJECTIONS = (
    "' OR '1'='1",
    "Li'; DROP TABLE candidates; --",
    "\" OR 1=1 --",
    "%",
    "_",
    "\\",
    "Li%",
    "1; DELETE FROM results",
)


class RecordingLauncher:
    """Stands in for the subprocess launcher: records the jobs it was asked to start, starts nothing."""

    def __init__(self):
        self.launched: list[str] = []

    def launch(self, job_id: str) -> int:
        self.launched.append(job_id)
        return 4242


@pytest.fixture
def web(web_home):
    from mlip.config import load_settings
    from workflows.web import create_app

    home, sample = web_home
    settings = load_settings()
    store = Store.open(settings.db_url)
    launcher = RecordingLauncher()
    app = create_app(settings, store=store, launcher=launcher, refresh_interval_s=0, max_body_bytes=64 * 1024)
    with TestClient(app) as client:
        yield client, store, sample, launcher, settings
    store.close()


@pytest.fixture
def token(web):
    _, store, *_ = web
    _, secret = store.tokens.create("tester")
    return secret


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def all_rows(client, **params) -> list[dict]:
    response = client.get("/api/candidates", params={**params, "per_page": 500})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["total"] == len(body["rows"])
    return body["rows"]


def snapshot(store, settings):
    """Every table's row count, every job's status, and the files under submissions/."""
    sub = settings.home / "submissions"
    files = sorted(p.name for p in sub.rglob("*")) if sub.exists() else []
    return store.table_counts(), {j.id: str(j.status) for j in store.jobs.list()}, files


def tiny_spec(model_path: str = "models/tiny.model") -> dict:
    return {"name": "api-submit", "model": model_path, "candidates": [{"library": "Li2S"}], "transport": "quick",
            "resources": {"workers": 1}}


# ---------------------------------------------------------------------------------------------- the table API
def test_table_filters_and_sort_agree_with_the_rows(web):
    client, store, sample, *_ = web
    rows = all_rows(client)
    assert len(rows) == store.table_counts()["candidate_summaries"] == 7  # 6 candidates, one with a second model
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True) and [r["rank"] for r in rows] == list(range(1, 8))

    li = all_rows(client, ion="Li")
    assert li and all(r["working_ion"] == "Li" for r in li)
    assert len(li) == sum(r["working_ion"] == "Li" for r in rows)
    with_cl = all_rows(client, has="Cl")
    assert {r["name"] for r in with_cl} == {r["name"] for r in rows if ",Cl," in r["elements"]} == {"Li6PS5Cl"}
    no_s = all_rows(client, lacks=["S"])
    assert no_s == [] or all(",S," not in r["elements"] for r in no_s)
    both = all_rows(client, has="Li S", lacks="Cl")
    assert {r["name"] for r in both} == {"beta-Li3PS4", "Li2S"}
    fast = all_rows(client, min_sigma=0.3)
    assert {r["name"] for r in fast} == {r["name"] for r in rows
                                          if (r["conductivity_300K_mS_cm"] or -1) >= 0.3}
    low_ea = all_rows(client, max_ea=0.3)
    assert low_ea and all(r["activation_energy_eV"] <= 0.3 for r in low_ea)
    clean = all_rows(client, clean="true")
    assert clean and all(r["flags"] == [] for r in clean)
    assert len(clean) < len(rows)
    job = all_rows(client, job=sample.job_id[:8])
    assert len(job) == 6  # the job's model only: the second model's row is not this job's

    by_sigma = all_rows(client, sort="conductivity")
    values = [r["conductivity_300K_mS_cm"] for r in by_sigma]
    present = [v for v in values if v is not None]
    assert present == sorted(present, reverse=True)
    assert values[: len(present)] == present  # missing values last
    ascending = all_rows(client, sort="conductivity", order="asc")
    assert [r["conductivity_300K_mS_cm"] for r in ascending][: len(present)] == sorted(present)


def test_pages_partition_a_large_table(web):
    from workflows.web.sample import bulk_seed

    client, store, *_ = web
    bulk_seed(store.db_url, 437, seed=3)
    store.summaries.refresh()
    full = all_rows(client, sort="activation_energy")
    assert len(full) == 444
    seen = []
    for page in range(1, 10):
        body = client.get("/api/candidates", params={"sort": "activation_energy", "page": page, "per_page": 50}).json()
        assert body["total"] == 444 and body["pages"] == 9
        seen += [r["id"] for r in body["rows"]]
    assert seen == [r["id"] for r in full]  # pages are disjoint, complete and in order
    eas = [r["activation_energy_eV"] for r in full if r["activation_energy_eV"] is not None]
    assert eas == sorted(eas)


def test_bad_table_parameters_are_422_naming_the_parameter(web):
    client, *_ = web
    for params, name in (({"has": "Xx"}, "has"), ({"sort": "score; DROP TABLE x"}, "sort"),
                         ({"min_sigma": "1 OR 1=1"}, "min_sigma"), ({"per_page": "100000"}, "per_page"),
                         ({"has": "Li", "lacks": "Li"}, "lacks")):
        response = client.get("/api/candidates", params=params)
        assert response.status_code == 422, (params, response.text)
        assert name in json.dumps(response.json()["detail"])
        page = client.get("/", params=params, headers={"accept": "text/html"})
        assert page.status_code == 422 and "not valid" in page.text


def test_sql_injection_strings_in_filters_are_just_data(web):
    client, store, _, _, settings = web
    before = snapshot(store, settings)
    for text in INJECTIONS:
        for param in ("q", "ion", "kind"):
            response = client.get("/api/candidates", params={param: text})
            assert response.status_code == 200, (param, text, response.text)
            assert response.json()["total"] == 0, (param, text)  # matched literally: nothing has that name
            page = client.get("/", params={param: text}, headers={"accept": "text/html"})
            assert page.status_code == 200 and "No candidate matches" in page.text
        response = client.get("/api/candidates", params={"job": text})
        assert response.status_code in (404, 422)
        assert client.get("/api/candidates.csv", params={"q": text}).text.count("\n") == 1  # header only
        assert client.get("/api/jobs", params={"status": text}).status_code == 422
    assert client.get("/api/candidates/1 OR 1=1").status_code == 422
    # a LIKE wildcard in the search is a literal character: 'Li%' finds nothing, 'Li' finds the Li compounds
    assert client.get("/api/candidates", params={"q": "Li"}).json()["total"] > 0
    assert snapshot(store, settings) == before
    assert len(all_rows(client)) == 7


# ---------------------------------------------------------------------------------------------- writes and tokens
def test_writes_without_a_valid_token_are_refused_and_change_nothing(web):
    client, store, sample, launcher, settings = web
    record, good = store.tokens.create("someone")
    _, revoked = store.tokens.create("former")
    store.tokens.revoke("former")
    waiting = store.jobs.create({"name": "waiting", "model": "bundled:lipscl-demo"})
    store.tasks.add(waiting, sample.candidate_ids["Li2S"], "transport", "ab" * 32)
    before = snapshot(store, settings)
    body = json.dumps(tiny_spec())
    attempts = [
        ({}, 401),
        ({"Authorization": "Bearer"}, 401),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, 401),
        (auth("not-a-token"), 403),
        (auth("isk_00000000_" + "A" * 43), 403),  # right shape, unknown
        (auth(good[:-1] + ("B" if good[-1] != "B" else "C")), 403),  # one character off
        (auth(revoked), 403),
    ]
    for headers, status in attempts:
        for method, url, kwargs in (
            ("POST", "/api/jobs", {"content": body, "headers": {"content-type": "application/json", **headers}}),
            ("POST", f"/api/jobs/{waiting}/cancel", {"headers": headers}),
        ):
            response = client.request(method, url, **kwargs)
            assert response.status_code == status, (headers, url, response.text)
            if status == 401:
                assert response.headers["www-authenticate"] == "Bearer"
    assert snapshot(store, settings) == before
    assert launcher.launched == []
    assert store.jobs.get(waiting).status == "pending"
    # the valid token works for the same request (the refusals above were about the token, not the request)
    response = client.post(f"/api/jobs/{waiting}/cancel", headers=auth(good))
    assert response.status_code == 200 and store.jobs.get(waiting).status == "cancelled"
    assert response.json()["tasks_cancelled"] == 1
    # a finished job cannot be cancelled: a clear 422, nothing changed
    assert client.post(f"/api/jobs/{sample.job_id}/cancel", headers=auth(good)).status_code == 422
    assert store.jobs.get(sample.job_id).status == "done"
    assert store.tokens.list()[0].last_used_utc is not None


def test_submit_with_a_token_stores_the_job_and_launches_it(web, token, tiny_model_copy):
    from mlip.loader import trust

    client, store, _, launcher, settings = web
    models = settings.home / "submissions" / "models"
    models.mkdir(parents=True)
    model = models / "tiny.model"
    model.write_bytes(tiny_model_copy.read_bytes())
    trust(str(model), settings)
    before = store.table_counts()

    response = client.post("/api/jobs", content=json.dumps(tiny_spec()),
                           headers={"content-type": "application/json", **auth(token)})
    assert response.status_code == 202, response.text
    out = response.json()
    job_id = out["job_id"]
    assert launcher.launched == [job_id] and out["n_tasks"] == 1 and out["status_url"] == f"/api/jobs/{job_id}"
    after = store.table_counts()
    assert after["jobs"] == before["jobs"] + 1 and after["tasks"] == before["tasks"] + 1
    assert after["job_candidates"] == before["job_candidates"] + 1
    assert (settings.home / "submissions" / f"{job_id}.json").is_file()

    status = client.get(f"/api/jobs/{job_id}").json()
    assert status["status"] == "pending" and status["counts"]["transport"]["pending"] == 1
    assert status["progress"] == {"transport": 0.0} and status["spec"]["name"] == "api-submit"
    assert job_id in [j["id"] for j in client.get("/api/jobs").json()]

    # the same job as YAML is a second job (a submission is never merged into another)
    response = client.post("/api/jobs", content=yaml.safe_dump(tiny_spec()),
                           headers={"content-type": "application/yaml", **auth(token)})
    assert response.status_code == 202, response.text
    assert len(launcher.launched) == 2

    cancelled = client.post(f"/api/jobs/{job_id}/cancel", headers=auth(token))
    assert cancelled.status_code == 200 and cancelled.json()["tasks_cancelled"] == 1
    assert client.get(f"/api/jobs/{job_id}").json()["counts"]["transport"]["cancelled"] == 1
    assert client.get(f"/api/jobs/{job_id}/results").json()["ranked"] == []


def test_malformed_and_invalid_jobs_are_422_with_key_paths_and_store_nothing(web, token):
    client, store, _, launcher, settings = web
    headers = {"content-type": "application/json", **auth(token)}
    before = snapshot(store, settings)

    response = client.post("/api/jobs", content='{"name": "x", "candidates": [', headers=headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"

    bad = {"name": "bad job", "model": "bundled:nope", "candidates": [{"libary": "Li2S"}], "transport": "quick",
           "resources": {"workers": "many"}}
    response = client.post("/api/jobs", content=json.dumps(bad), headers=headers)
    assert response.status_code == 422
    locs = {tuple(e["loc"]): e["msg"] for e in response.json()["detail"]}
    assert ("body", "candidates", 0, "libary") in locs and "library" in locs[("body", "candidates", 0, "libary")]
    assert ("body", "resources", "workers") in locs
    assert ("body", "name") in locs

    response = client.post("/api/jobs", content="name: y\ncandidates: [\n", headers={
        "content-type": "application/yaml", **auth(token)})
    assert response.status_code == 422 and "YAML" in response.text and response.json()["detail"][0]["line"]

    for reference, loc in (({"file": "/etc/passwd"}, ("body", "candidates", 0, "file")),
                           ({"file": "../../ionscreen.db"}, ("body", "candidates", 0, "file")),
                           ({"substitute": {"file": "~/x.cif", "to": "Na"}}, ("body", "candidates", 0, "substitute", "file"))):
        spec = {**tiny_spec(), "candidates": [reference]}
        response = client.post("/api/jobs", content=json.dumps(spec), headers=headers)
        assert response.status_code == 422, response.text
        assert [tuple(e["loc"]) for e in response.json()["detail"]] == [loc]
    response = client.post("/api/jobs", content=json.dumps(tiny_spec("/tmp/any.model")), headers=headers)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "model"]
    # a well-formed job whose model file is not there: refused by planning, nothing stored
    response = client.post("/api/jobs", content=json.dumps(tiny_spec("models/missing.model")), headers=headers)
    assert response.status_code == 422 and "does not exist" in response.text

    response = client.post("/api/jobs", content="name: x", headers={"content-type": "text/plain", **auth(token)})
    assert response.status_code == 415
    assert snapshot(store, settings) == before and launcher.launched == []


def test_oversized_bodies_are_413_and_store_nothing(web, token):
    client, store, _, launcher, settings = web
    before = snapshot(store, settings)
    spec = tiny_spec()
    spec["padding_comment"] = "x" * (80 * 1024)  # would also be an unknown key; the size is checked first
    body = json.dumps(spec).encode()
    headers = {"content-type": "application/json", **auth(token)}
    response = client.post("/api/jobs", content=body, headers=headers)
    assert response.status_code == 413 and "limit" in response.json()["detail"]

    def chunks():  # no Content-Length: counted while it streams
        for i in range(0, len(body), 8192):
            yield body[i:i + 8192]

    response = client.post("/api/jobs", content=chunks(), headers=headers)
    assert response.status_code == 413
    # unauthenticated oversized bodies are refused without reading them
    assert client.post("/api/jobs", content=body, headers={"content-type": "application/json"}).status_code == 413
    assert snapshot(store, settings) == before and launcher.launched == []


# ---------------------------------------------------------------------------------------------- files
def test_path_traversal_in_download_and_file_names_is_refused(web):
    client, store, sample, *_ = web
    cid = sample.candidate_ids["Li6PS5Cl"]
    rid = sample.result_ids[("Li6PS5Cl", "transport")]
    home = store.db_url.removeprefix("sqlite:///").rsplit("/", 1)[0]
    document = store.results.get(rid)["document_path"]
    workdir = os.path.join(home, os.path.dirname(document))
    os.symlink("/etc/passwd", os.path.join(workdir, "evil.json"))
    os.symlink(os.path.join(home, "ionscreen.db"), os.path.join(workdir, "db.png"))

    refused_names = ["..%2F..%2Fetc%2Fpasswd", "%2e%2e%2fionscreen.db", "..cif", ".cif", "x.cif%00.png",
                     "%2e%2e", "name with space.cif", "x.txt", "x.cif%2F..%2F..%2Fy.cif"]
    for name in refused_names:
        response = client.get(f"/api/candidates/{cid}/download/{name}")
        assert response.status_code in (404, 422), (name, response.status_code)
        assert "ionscreen-candidate" not in response.text and "root:" not in response.text
    refused_files = ["..%2F..%2F..%2Fionscreen.db", "%2e%2e/%2e%2e/%2e%2e/ionscreen.db", "/etc/passwd",
                     "..%5C..%5Cionscreen.db", "evil.json", "db.png", "T700K/../../../../ionscreen.db",
                     "result.json%00.png"]
    for name in refused_files:
        response = client.get(f"/results/{rid}/files/{name}")
        assert response.status_code in (400, 404), (name, response.status_code)
        assert "root:" not in response.text and "SQLite" not in response.text
    assert client.get(f"/results/{rid}/files/result.json").status_code == 200
    assert client.get(f"/results/{rid}/files/T700K/msd.png").headers["content-type"] == "image/png"


def test_candidate_api_and_structure_downloads_parse_back(web):
    from pymatgen.core import Structure
    from pymatgen.io.vasp import Poscar

    client, store, sample, *_ = web
    cid = sample.candidate_ids["beta-Li3PS4"]
    record = store.candidates.get(cid)
    body = client.get(f"/api/candidates/{cid}").json()
    assert body["candidate"]["structure_hash"] == record.structure_hash
    assert body["results"] and body["results"][0]["conductivity_300K_ci95_lo_mS_cm"] is not None
    cif = client.get(body["downloads"]["cif"])
    assert cif.status_code == 200 and "attachment" in cif.headers["content-disposition"]
    structure = Structure.from_str(cif.text, fmt="cif")
    assert structure.composition.reduced_formula == "Li3PS4" and len(structure) == record.n_atoms
    poscar = client.get(body["downloads"]["poscar"])
    parsed = Poscar.from_str(poscar.text).structure
    assert parsed.composition.reduced_formula == "Li3PS4" and len(parsed) == record.n_atoms
    assert client.get("/api/candidates/99999").status_code == 404


def test_csv_export_is_the_filtered_table(web):
    client, *_ = web
    rows = all_rows(client, ion="Li", sort="conductivity")
    text = client.get("/api/candidates.csv", params={"ion": "Li", "sort": "conductivity"}).text
    table = list(csv.DictReader(io.StringIO(text)))
    assert [r["name"] for r in table] == [r["name"] for r in rows]
    assert float(table[0]["conductivity_300K_ci95_lo_mS_cm"]) <= float(table[0]["conductivity_300K_mS_cm"])
    assert {"flags", "model_sha256", "activation_energy_ci95_hi_eV"} <= set(table[0])


def test_pages_render_numbers_plots_and_provenance(web):
    client, store, sample, *_ = web
    html = {"accept": "text/html"}
    cid = sample.candidate_ids["Li6PS5Cl"]
    page = client.get(f"/candidates/{cid}", headers=html)
    assert page.status_code == 200
    for text in ("mS/cm", "cm²/s", "eV", "protocol hash", "model sha256", "code version", "Download CIF",
                 "3Dmol-min.js", 'id="structure-cif"', "/arrhenius.png", "/neb/0.png", "msd.png"):
        assert text in page.text, text
    summary = store.summaries.for_candidate(cid)[0]
    assert summary.model_sha256 in page.text
    rid = sample.result_ids[("Li6PS5Cl", "transport")]
    png = client.get(f"/results/{rid}/arrhenius.png")  # drawn from the document (no stored plot)
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    neb = client.get(f"/results/{sample.result_ids[('Li6PS5Cl', 'neb')]}/neb/1.png")
    assert neb.status_code == 200 and neb.content[:4] == b"\x89PNG"
    assert client.get(f"/results/{rid}/neb/0.png").status_code == 404  # a transport result has no hops
    assert client.get("/jobs", headers=html).status_code == 200
    assert sample.job_id in client.get(f"/jobs/{sample.job_id}", headers=html).text
    assert client.get("/candidates/424242", headers=html).status_code == 404


def test_reads_can_be_closed(web_home, monkeypatch):
    from mlip.config import load_settings
    from workflows.web import create_app

    monkeypatch.setenv("IONSCREEN_API_READS_REQUIRE_TOKEN", "true")
    settings = load_settings()
    with Store.open(settings.db_url) as store:
        _, secret = store.tokens.create("reader")
    app = create_app(settings, launcher=RecordingLauncher(), refresh_interval_s=0)
    assert app.state.reads_require_token
    with TestClient(app) as client:
        assert client.get("/api/candidates").status_code == 401
        assert client.get("/api/candidates", headers=auth("isk_00000000_" + "A" * 43)).status_code == 403
        assert client.get("/api/candidates", headers=auth(secret)).json()["total"] == 7
        page = client.get("/", headers={"accept": "text/html"})
        assert page.status_code == 401 and 'name="token"' in page.text and "Li6PS5Cl" not in page.text
        assert client.post("/login", content="token=wrong", headers={
            "content-type": "application/x-www-form-urlencoded"}).status_code == 403
        login = client.post("/login", content=f"token={secret}&next=//evil.example/",
                            headers={"content-type": "application/x-www-form-urlencoded"}, follow_redirects=False)
        assert login.status_code == 303 and login.headers["location"] == "/"
        assert "httponly" in login.headers["set-cookie"].lower()
        assert "Li6PS5Cl" in client.get("/", headers={"accept": "text/html"}).text  # the cookie now reads
        # the cookie never authorises a write: writes need the header
        assert client.post("/api/jobs", content="{}", headers={"content-type": "application/json"}).status_code == 401


def test_openapi_and_docs_work_offline(web):
    client, *_ = web
    spec = client.get("/openapi.json").json()
    for path in ("/api/jobs", "/api/jobs/{job_id}", "/api/jobs/{job_id}/cancel", "/api/jobs/{job_id}/results",
                 "/api/candidates", "/api/candidates.csv", "/api/candidates/{candidate_id}"):
        assert path in spec["paths"], path
    assert spec["paths"]["/api/jobs"]["post"]["security"] == [{"HTTPBearer": []}]
    docs = client.get("/docs").text
    assert "/static/vendor/swagger-ui/swagger-ui-bundle.js" in docs
    assert "cdn." not in docs and "https://" not in docs
    assert client.get("/static/vendor/swagger-ui/swagger-ui-bundle.js").status_code == 200
    assert client.get("/static/vendor/3dmol/3Dmol-min.js").status_code == 200


# ---------------------------------------------------------------------------------------------- launcher and CLI
def test_real_launcher_runs_the_job_driver_command(web_home):
    from mlip.config import load_settings
    from workflows.web.launcher import SubprocessLauncher, driver_command, driver_log_path

    home, sample = web_home
    settings = load_settings()
    assert driver_command("abc") == [sys.executable, "-m", "workflows.cli", "jobs", "resume", "abc"]
    launcher = SubprocessLauncher(settings)
    env = launcher.environment()
    assert env["IONSCREEN_HOME"] == str(home) and env["IONSCREEN_DB_URL"] == settings.db_url
    with Store.open(settings.db_url) as store:
        store.jobs.set_status(sample.job_id, "running")
        store.jobs.cancel(sample.job_id)  # a cancelled job: the real driver starts, reads the job and stops at once
    pid = launcher.launch(sample.job_id)
    assert pid > 0
    log = driver_log_path(settings, sample.job_id)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "cancelled" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.5)
    assert f"job {sample.job_id} was cancelled" in log.read_text()


def test_tokens_cli_prints_once_and_stores_only_the_hash(isolated_home):
    import hashlib

    import sqlalchemy as sa
    import typer
    from typer.testing import CliRunner

    from workflows.cli import web as cli_web

    app = typer.Typer()  # wired as workflows/cli/__init__.py wires it
    app.command("serve")(cli_web.serve)
    app.add_typer(cli_web.tokens_app, name="tokens")
    runner = CliRunner()
    created = runner.invoke(app, ["tokens", "create", "alice"])
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip().splitlines()[0]
    assert secret.startswith("isk_")
    listed = runner.invoke(app, ["tokens", "list"])
    assert "alice" in listed.stdout and secret not in listed.stdout
    with Store.open() as store:
        engine = sa.create_engine(store.db_url)
        with engine.connect() as conn:
            stored = [tuple(map(str, row)) for row in conn.exec_driver_sql("SELECT * FROM tokens")]
        engine.dispose()
        assert len(stored) == 1 and not any(secret in field for field in stored[0])
        assert hashlib.sha256(secret.encode()).hexdigest() in stored[0]
        assert store.tokens.verify(secret).name == "alice"
        revoked = runner.invoke(app, ["tokens", "revoke", "alice"])
        assert revoked.exit_code == 0 and store.tokens.verify(secret) is None
    assert "revoked" in runner.invoke(app, ["tokens", "list"]).stdout
    assert runner.invoke(app, ["serve", "--help"]).exit_code == 0


def test_names_from_the_database_are_escaped_in_pages(web):
    client, store, *_ = web
    evil = "<script>alert(1)</script>"
    cid = store.candidates.upsert({"structure_hash": "e" * 64, "name": evil, "formula": "Li2S<img src=x>",
                                  "working_ion": "Li", "working_ion_charge": 1, "kind": "electrolyte", "n_atoms": 12})
    store.results.record({"task_key": "f" * 64, "candidate_id": cid, "stage": "transport", "structure_hash": "e" * 64,
                         "protocol_hash": "0" * 64, "model_ref": "<b>model</b>", "model_sha256": "1" * 64,
                         "code_version": "x", "flags": ["<i>flag</i>"], **{"conductivity_300K_mS_cm": 1.0}})
    store.summaries.refresh()
    html = {"accept": "text/html"}
    for page in (client.get("/", headers=html), client.get(f"/candidates/{cid}", headers=html)):
        assert page.status_code == 200
        assert evil not in page.text and "<img src=x>" not in page.text and "<i>flag</i>" not in page.text
        assert "&lt;script&gt;" in page.text
    text = client.get("/api/candidates.csv", params={"q": "script"}).text
    assert "<script>" in text  # CSV is data, not HTML (served as text/csv with a download disposition)


def test_provenance_links_the_mlflow_run_when_a_ui_is_configured(web_home, monkeypatch):
    from mlflow.tracking import MlflowClient

    from mlip.config import load_settings
    from workflows.web import create_app

    monkeypatch.setenv("IONSCREEN_MLFLOW_UI_URL", "http://mlflow.example:5000/")
    settings = load_settings()
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    experiment = client.create_experiment("ionscreen-screening",
                                          artifact_location=settings.mlflow_artifact_location)
    run = client.create_run(experiment)
    with Store.open(settings.db_url) as store:
        cid = store.candidates.upsert({"structure_hash": "c" * 64, "name": "linked", "formula": "Li2S",
                                      "working_ion": "Li", "working_ion_charge": 1, "kind": "electrolyte",
                                      "n_atoms": 12})
        store.results.record({"task_key": "d" * 64, "candidate_id": cid, "stage": "transport",
                             "structure_hash": "c" * 64, "protocol_hash": "0" * 64, "model_ref": "m",
                             "model_sha256": "1" * 64, "code_version": "x", "mlflow_run_id": run.info.run_id,
                             "conductivity_300K_mS_cm": 1.0})
    with TestClient(create_app(settings, launcher=RecordingLauncher(), refresh_interval_s=0)) as web:
        page = web.get(f"/candidates/{cid}", headers={"accept": "text/html"}).text
    assert f'href="http://mlflow.example:5000/#/experiments/{experiment}/runs/{run.info.run_id}"' in page
