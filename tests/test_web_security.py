"""Hardening of the web server against hostile input, on real SQLite and real PostgreSQL where the database is
involved: ids outside 1 ≤ id < 2**31 and malformed job ids are 422 naming the parameter (never 500), control
characters in table filters are refused, deeply nested job bodies are refused before any recursive parser runs,
responses never show server paths, the browser session cookie is a random id (not the API token) that signing out
ends, and every response carries the security headers."""

from __future__ import annotations

import json
import re

import pytest
from fastapi.testclient import TestClient

from workflows.db import Store
from workflows.web.params import ID_LIMIT
from webfuzz import NoLaunch

HTML = {"accept": "text/html"}
FORM = {"content-type": "application/x-www-form-urlencoded"}


def make_client(settings, store, **kwargs) -> TestClient:
    from workflows.web import create_app

    app = create_app(settings, store=store, launcher=NoLaunch(), refresh_interval_s=0, **kwargs)
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def backend(db_url, settings):
    """(client, store, settings) over an empty database on SQLite and on PostgreSQL."""
    with Store.open(db_url) as store, make_client(settings, store) as client:
        yield client, store, settings


@pytest.fixture
def web(web_home):
    """(client, store, settings, sample) over a copy of the sample database (SQLite)."""
    from mlip.config import load_settings

    _, sample = web_home
    settings = load_settings()
    with Store.open(settings.db_url) as store, make_client(settings, store) as client:
        yield client, store, settings, sample


def bearer(store) -> dict[str, str]:
    _, token = store.tokens.create("tester")
    return {"Authorization": f"Bearer {token}"}


def error_items(response) -> list[dict]:
    detail = response.json()["detail"]
    return detail if isinstance(detail, list) else [{"msg": detail}]


# ---------------------------------------------------------------------------------------------- path parameters
ID_ROUTES = [  # (URL template, parameter name)
    ("/api/candidates/{}", "candidate_id"),
    ("/api/candidates/{}/download/POSCAR", "candidate_id"),
    ("/candidates/{}", "candidate_id"),
    ("/results/{}/arrhenius.png", "result_id"),
    ("/results/{}/neb/0.png", "result_id"),
    ("/results/{}/files/result.json", "result_id"),
]
OUT_OF_RANGE = [0, -1, ID_LIMIT, 2**63 - 1, 2**63, 2**64, 10**30]


def test_integer_ids_outside_the_database_range_are_422_naming_the_parameter_and_limit(backend):
    client, *_ = backend
    for template, name in ID_ROUTES:
        for value in OUT_OF_RANGE:
            response = client.get(template.format(value), headers={"accept": "application/json"})
            assert response.status_code == 422, (template, value, response.status_code, response.text)
            (item,) = error_items(response)
            assert item["loc"] == ["path", name]
            limit = "1" if value < 1 else str(ID_LIMIT)
            assert limit in item["msg"], item
        for value in (1, ID_LIMIT - 1):  # in range, not stored: a plain 404
            assert client.get(template.format(value)).status_code == 404, (template, value)
    hop = client.get(f"/results/1/neb/{2**64}.png")
    assert hop.status_code == 422 and error_items(hop)[0]["loc"] == ["path", "hop_index"]


def test_malformed_job_ids_are_422_and_never_reach_the_database(backend):
    client, store, _ = backend
    headers = bearer(store)
    for bad in ("abcd%00", "ABCD", "zzzz", "abc", "a" * 33, "abcd'--", "%F0%9F%92%A5abcd"):
        for method, url in (("GET", f"/api/jobs/{bad}"), ("GET", f"/api/jobs/{bad}/results"),
                            ("POST", f"/api/jobs/{bad}/cancel"), ("GET", f"/jobs/{bad}")):
            response = client.request(method, url, headers={**headers, "accept": "application/json"})
            assert response.status_code == 422, (url, response.text)
            assert error_items(response)[0]["loc"] == ["path", "job_id"]
    assert client.get("/api/jobs/abcdef12").status_code == 404


def test_control_characters_in_table_filters_are_422_naming_the_parameter(backend):
    client, *_ = backend
    for param in ("q", "ion", "kind", "job", "has", "sort"):
        for value in ("Li\x00", "\x00", "a\x1bb"):
            response = client.get("/api/candidates", params={param: value})
            assert response.status_code == 422, (param, value, response.text)
            assert [e["loc"] for e in error_items(response)] == [["query", param]]
            assert client.get("/api/candidates.csv", params={param: value}).status_code == 422
            assert client.get("/", params={param: value}, headers=HTML).status_code == 422
    assert client.get("/api/candidates", params={"q": "Li\tS"}).status_code == 200  # whitespace is fine


# ---------------------------------------------------------------------------------------------- request bodies
def post_job(client, headers, body: str, content_type: str = "application/json"):
    return client.post("/api/jobs", content=body.encode("utf-8", "surrogatepass"),
                       headers={**headers, "content-type": content_type})


def deep_by_indentation(levels: int) -> str:
    return "".join(f"{' ' * i}k{i}:\n" for i in range(levels))


def test_deeply_nested_job_bodies_are_422_naming_the_limit_and_store_nothing(web):
    from workflows.jobs.spec.parse import MAX_JOB_FILE_BYTES, MAX_YAML_DEPTH

    client, store, settings, _ = web
    headers = bearer(store)
    before = store.table_counts()
    deep = 100_000
    bodies = [
        ("[" * deep + "]" * deep, "application/json"),
        ('{"name": ' + '{"a": ' * 30_000 + "1" + "}" * 30_001, "application/json"),
        ("[" * deep, "application/json"),  # unterminated as well
        ("name: x\ncandidates: " + "[" * deep + "]" * deep, "application/yaml"),
        ("- " * 50_000 + "x", "application/yaml"),  # block sequences, one line
        # block mappings by indentation, deeper than libyaml's 1,000 levels and Python's recursion limit, and
        # within the size of a job file (1,200 levels would be too large as well: see below)
        (deep_by_indentation(1010), "application/yaml"),
        ("[" * (MAX_YAML_DEPTH + 1) + "]" * (MAX_YAML_DEPTH + 1), "application/json"),
        ("name: x\ncandidates: " + "[" * 40 + "]" * 40, "application/yaml"),  # a little too deep, either format
        ("[" * 40 + "]" * 40, "application/json"),
    ]
    messages = set()
    for body, content_type in bodies:
        response = post_job(client, headers, body, content_type)
        assert response.status_code == 422, (body[:40], response.status_code, response.text[:300])
        (item,) = error_items(response)
        assert item["type"] == "nesting_too_deep" and str(MAX_YAML_DEPTH) in item["msg"]
        messages.add(item["msg"])
    assert len(messages) == 1, messages  # one limit, one message, whatever the format
    # too deep and larger than a job file: the job-file parser measures first (a server that takes bodies that large)
    levels = int((2 * MAX_JOB_FILE_BYTES) ** 0.5) + 100  # n levels indent n²/2 spaces
    with make_client(settings, store, max_body_bytes=2 * MAX_JOB_FILE_BYTES) as large:
        response = post_job(large, headers, deep_by_indentation(levels), "application/yaml")
    assert response.status_code == 422 and f"{MAX_JOB_FILE_BYTES:,}" in error_items(response)[0]["msg"]
    # brackets inside strings do not count, and nesting up to the limit is left to the job schema
    shallow = {"name": "[[[[" * 100, "model": "x", "candidates": [{"library": "Li2S", "x": [[[[[[1]]]]]]}]}
    response = post_job(client, headers, json.dumps(shallow))
    assert response.status_code == 422 and all(e.get("type") != "nesting_too_deep" for e in error_items(response))
    assert store.table_counts() == before


def test_text_the_database_cannot_store_is_422_with_its_key_path(backend):
    client, store, _ = backend
    headers = bearer(store)
    spec = {"name": "x", "model": "bundled:lipscl-demo", "candidates": [{"library": "Li2S"}], "transport": "quick"}
    for key, value, loc in (("name", "a\x00b", ["body", "name"]), ("name", "a\ud800b", ["body", "name"])):
        body = json.dumps({**spec, key: value})  # json escapes them: \u0000, \ud800
        response = post_job(client, headers, body)
        assert response.status_code == 422, response.text
        assert [e["loc"] for e in error_items(response)] == [loc]
    response = post_job(client, headers, 'name: "x\\0y"\ncandidates: [{library: Li2S}]\n', "application/yaml")
    assert response.status_code == 422 and error_items(response)[0]["loc"] == ["body", "name"]
    assert store.table_counts()["jobs"] == 0


@pytest.mark.parametrize("error", [RecursionError("maximum recursion depth exceeded"), ValueError("odd"),
                                   __import__("mlip.errors", fromlist=["InputError"]).InputError("refused")])
def test_any_refusal_of_the_job_parser_is_422(web, monkeypatch, error):
    import workflows.jobs.spec

    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(workflows.jobs.spec, "parse_job_spec", refuse)
    client, store, *_ = web
    response = post_job(client, bearer(store), "name: x\n", "application/yaml")
    assert response.status_code == 422 and str(error) in response.text


# ---------------------------------------------------------------------------------------------- server paths
def test_responses_never_show_server_paths(web, monkeypatch):
    client, store, settings, sample = web
    home = str(settings.home)
    headers = bearer(store)
    cid, rid = sample.candidate_ids["Li6PS5Cl"], sample.result_ids[("Li6PS5Cl", "neb")]
    tid = sample.result_ids[("Li6PS5Cl", "transport")]
    store.jobs.set_status(sample.job_id, "done", error=f"driver log at {home}/jobs/{sample.job_id}/driver.log")
    missing_model = {"name": "x", "model": "models/missing.model", "candidates": [{"library": "Li2S"}],
                     "transport": "quick"}
    responses = {
        "unknown job prefix": client.get("/api/candidates", params={"job": "abcdef"}),
        "unknown job prefix page": client.get("/", params={"job": "abcdef"}, headers=HTML),
        "unknown job": client.get("/api/jobs/abcdef12"),
        "missing model": post_job(client, headers, json.dumps(missing_model)),
        "job status": client.get(f"/api/jobs/{sample.job_id}"),
        "job page": client.get(f"/jobs/{sample.job_id}", headers=HTML),
        "candidate": client.get(f"/api/candidates/{cid}"),
        "candidate page": client.get(f"/candidates/{cid}", headers=HTML),
        "404 page": client.get("/candidates/424242", headers=HTML),
        "neb document": client.get(f"/results/{rid}/files/result.json"),
        "transport document": client.get(f"/results/{tid}/files/result.json"),
        "no such file": client.get(f"/results/{tid}/files/nothing.json"),
    }
    assert "$IONSCREEN_HOME/submissions/models/missing.model" in responses["missing model"].text
    assert "$IONSCREEN_HOME/jobs/" in responses["job status"].text
    for name, response in responses.items():
        assert response.status_code < 500, (name, response.text)
        for leak in (home, str(settings.home.resolve()), "/tmp/", "/work/", settings.db_url):
            assert leak not in response.text, (name, leak, response.text[:500])

    # the last resort: an unexpected exception is a bare 500 that names nothing of the server
    def explode(*args, **kwargs):
        raise RuntimeError(f"boom in {home}/secret.db")

    monkeypatch.setattr(store.summaries, "browse", explode)
    for accept in ("application/json", "text/html"):
        response = client.get("/api/candidates", headers={"accept": accept})
        assert response.status_code == 500 and home not in response.text and "boom" not in response.text
        assert response.headers["x-frame-options"] == "DENY"


def test_the_redactor_replaces_whole_server_paths_only():
    from pathlib import Path

    from workflows.web.redact import PathRedactor

    home = Path("/srv/ionscreen-test/home")
    redactor = PathRedactor.for_server(home, [f"sqlite:///{home}/ionscreen.db",
                                              "postgresql+psycopg://user:secret@db:5432/ions"])
    assert redactor.redact(f"file {home}/sub/x.model") == "file $IONSCREEN_HOME/sub/x.model"
    assert redactor.redact(f'"{home}"') == '"$IONSCREEN_HOME"'
    assert redactor.redact(f"no job in sqlite:///{home}/ionscreen.db;") == "no job in <database>;"
    assert redactor.redact("no job in postgresql+psycopg://user:***@db:5432/ions") == "no job in <database>"
    assert redactor.redact(f"{home}2/x and /x{home}") == f"{home}2/x and /x{home}"  # not the same directory
    assert redactor.redact("/api/candidates/3/download/POSCAR") == "/api/candidates/3/download/POSCAR"
    tracking = PathRedactor.for_server(home, [], ["http://ionscreen:secret@mlflow.internal:5000", ""])
    assert tracking.redact("store http://ionscreen:***@mlflow.internal:5000;") == "store <mlflow>;"
    assert tracking.redact("store http://ionscreen:secret@mlflow.internal:5000") == "store <mlflow>"
    assert tracking.redact("no URI here") == "no URI here"  # an empty URI replaces nothing


def test_the_mlflow_tracking_password_never_reaches_a_page(web_home, monkeypatch):
    from mlip.config import load_settings

    password = "s3cret-Tr4cking"
    monkeypatch.setenv("IONSCREEN_MLFLOW_TRACKING_URI", f"http://ionscreen:{password}@mlflow.internal:5000")
    settings = load_settings()
    assert settings.mlflow_ui_url is None  # no UI to link: the page names the tracking store instead
    with Store.open(settings.db_url) as store, make_client(settings, store) as client:
        cid = store.candidates.upsert({"structure_hash": "c" * 64, "name": "tracked", "formula": "Li2S",
                                       "working_ion": "Li", "working_ion_charge": 1, "kind": "electrolyte",
                                       "n_atoms": 12})
        store.results.record({"task_key": "d" * 64, "candidate_id": cid, "stage": "transport",
                              "structure_hash": "c" * 64, "protocol_hash": "0" * 64, "model_ref": "m",
                              "model_sha256": "1" * 64, "code_version": "x", "mlflow_run_id": "0123456789abcdef",
                              "conductivity_300K_mS_cm": 1.0})
        page = client.get(f"/candidates/{cid}", headers=HTML)
    assert page.status_code == 200 and "0123456789abcdef" in page.text and "tracking store" in page.text
    assert password not in page.text and "mlflow.internal" not in page.text


# ---------------------------------------------------------------------------------------------- browser sessions
@pytest.fixture
def closed(web_home, monkeypatch):
    """(client, store) of a server with closed reads, and a valid token."""
    from mlip.config import load_settings

    monkeypatch.setenv("IONSCREEN_API_READS_REQUIRE_TOKEN", "true")
    settings = load_settings()
    with Store.open(settings.db_url) as store, make_client(settings, store) as client:
        _, token = store.tokens.create("reader")
        yield client, store, token


def sign_in(client, token: str, **headers):
    return client.post("/login", content=f"token={token}&next=/", headers={**FORM, **headers},
                       follow_redirects=False)


def test_the_session_cookie_is_a_random_id_not_the_token(closed):
    client, _, token = closed
    login = sign_in(client, token)
    assert login.status_code == 303
    cookie = login.headers["set-cookie"]
    assert token not in cookie
    assert cookie.startswith("ionscreen_session=")
    assert re.search(r"(?i)httponly", cookie) and re.search(r"(?i)samesite=strict", cookie)
    assert "secure" not in cookie.lower()  # plain http: a Secure cookie would never come back
    session_id = client.cookies["ionscreen_session"]
    assert len(session_id) >= 43 and session_id != token
    assert client.get("/api/candidates").json()["total"] == 7  # the session reads
    assert "Li6PS5Cl" in client.get("/", headers=HTML).text
    assert "Sign out" in client.get("/", headers=HTML).text
    # the session never writes: writes need the bearer header
    assert client.post("/api/jobs", content="{}", headers={"content-type": "application/json"}).status_code == 401


def test_the_raw_token_in_a_cookie_authenticates_nothing(closed):
    client, _, token = closed
    for name in ("ionscreen_token", "ionscreen_session"):
        client.cookies.clear()
        client.cookies.set(name, token)
        assert client.get("/api/candidates").status_code == 401, name
        page = client.get("/", headers=HTML)
        assert page.status_code == 401 and "Li6PS5Cl" not in page.text
        assert client.post("/api/jobs", content="{}", headers={"content-type": "application/json"}).status_code == 401
    client.cookies.clear()
    assert client.get("/api/candidates", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_signing_out_ends_the_session_on_the_server(closed):
    client, _, token = closed
    sign_in(client, token)
    session_id = client.cookies["ionscreen_session"]
    out = client.post("/logout", follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert 'ionscreen_session=""' in out.headers["set-cookie"] or "max-age=0" in out.headers["set-cookie"].lower()
    client.cookies.clear()
    client.cookies.set("ionscreen_session", session_id)  # a copy of the cookie kept from before
    assert client.get("/api/candidates").status_code == 401


def test_revoking_the_token_ends_its_sessions(closed):
    client, store, token = closed
    sign_in(client, token)
    assert client.get("/api/candidates").status_code == 200
    store.tokens.revoke("reader")
    assert client.get("/api/candidates").status_code == 401


def test_signing_in_again_replaces_the_session(closed):
    client, _, token = closed
    sign_in(client, token)
    first = client.cookies["ionscreen_session"]
    sign_in(client, token)
    second = client.cookies["ionscreen_session"]
    assert first != second
    client.cookies.clear()
    client.cookies.set("ionscreen_session", first)
    assert client.get("/api/candidates").status_code == 401


def test_sign_in_from_another_site_is_refused(closed):
    client, _, token = closed
    response = sign_in(client, token, **{"sec-fetch-site": "cross-site"})
    assert response.status_code == 403 and "set-cookie" not in response.headers
    assert sign_in(client, token, **{"sec-fetch-site": "same-origin"}).status_code == 303


def test_without_sec_fetch_site_the_origin_must_be_this_server(closed):
    client, _, token = closed
    for origin in ("https://evil.example", "http://testserver.evil.example", "https://testserver",
                   "http://testserver:8080", "null", "http://testserver:99999"):
        response = sign_in(client, token, origin=origin)
        assert response.status_code == 403 and "set-cookie" not in response.headers, origin
    for origin in ("http://testserver", "http://TestServer:80"):
        assert sign_in(client, token, origin=origin).status_code == 303, origin
    assert sign_in(client, token).status_code == 303  # neither header: a script, not a browser
    out = client.post("/logout", headers={"origin": "https://evil.example"}, follow_redirects=False)
    assert out.status_code == 403 and client.get("/api/candidates").status_code == 200  # still signed in


def test_a_session_looks_up_its_own_token_not_every_token(closed, monkeypatch):
    client, store, token = closed
    sign_in(client, token)

    def list_every_token(*args, **kwargs):
        raise AssertionError("a session request listed every token")

    monkeypatch.setattr(store.tokens, "list", list_every_token)
    assert client.get("/api/candidates").status_code == 200
    store.tokens.revoke("reader")
    assert client.get("/api/candidates").status_code == 401


def test_the_cookie_is_secure_over_https_and_behind_a_tls_proxy(closed):
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    client, _, token = closed
    https = TestClient(client.app, base_url="https://testserver")
    assert "secure" in sign_in(https, token).headers["set-cookie"].lower()

    proxied = TestClient(ProxyHeadersMiddleware(client.app, trusted_hosts="*"))
    cookie = sign_in(proxied, token, **{"x-forwarded-proto": "https"}).headers["set-cookie"]
    assert "secure" in cookie.lower()
    untrusted = TestClient(ProxyHeadersMiddleware(client.app, trusted_hosts="10.9.8.7"))
    assert "secure" not in sign_in(untrusted, token, **{"x-forwarded-proto": "https"}).headers["set-cookie"].lower()


def test_serve_passes_the_proxy_options_to_uvicorn(isolated_home, monkeypatch):
    import typer
    import uvicorn
    from typer.testing import CliRunner

    from workflows.cli import web as cli_web

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append(kwargs))
    app = typer.Typer()
    app.command("serve")(cli_web.serve)
    app.command("other")(lambda: None)
    runner = CliRunner()
    result = runner.invoke(app, ["serve", "--proxy-headers", "--forwarded-allow-ips", "10.0.0.2,10.0.0.3"])
    assert result.exit_code == 0, result.output
    assert calls[-1]["proxy_headers"] is True and calls[-1]["forwarded_allow_ips"] == "10.0.0.2,10.0.0.3"
    assert runner.invoke(app, ["serve"]).exit_code == 0
    assert calls[-1]["proxy_headers"] is False and calls[-1]["forwarded_allow_ips"] == "127.0.0.1"


def test_session_store_expires_bounds_and_keeps_only_digests():
    from workflows.web.sessions import SessionStore

    now = [1000.0]
    sessions = SessionStore(lifetime_s=60, max_sessions=3, clock=lambda: now[0])
    first = sessions.open("aaaa0001")
    assert sessions.lookup(first).token_id == "aaaa0001"
    assert first not in repr(sessions._sessions)  # only SHA-256 digests are kept
    now[0] += 61
    assert sessions.lookup(first) is None
    ids = [sessions.open(f"t{i}") for i in range(5)]
    assert len(sessions) == 3 and sessions.lookup(ids[0]) is None and sessions.lookup(ids[-1]).token_id == "t4"
    sessions.close(ids[-1])
    assert sessions.lookup(ids[-1]) is None
    assert sessions.lookup(None) is None and sessions.lookup("x" * 10_000) is None


# ---------------------------------------------------------------------------------------------- security headers
def test_every_response_carries_the_security_headers(web):
    client, *_, sample = web
    cid = sample.candidate_ids["Li6PS5Cl"]
    rid = sample.result_ids[("Li6PS5Cl", "transport")]
    responses = [
        client.get("/", headers=HTML),
        client.get(f"/candidates/{cid}", headers=HTML),
        client.get("/candidates/424242", headers=HTML),
        client.get("/docs"),
        client.get("/login"),
        client.get("/api/candidates"),
        client.get("/api/candidates/0"),
        client.get(f"/results/{rid}/arrhenius.png"),
        client.get("/static/app.js"),
        client.get("/openapi.json"),
        client.post("/api/jobs", content=b"x" * (1100 * 1024), headers={"content-type": "application/json"}),
    ]
    assert responses[-1].status_code == 413
    for response in responses:
        headers = response.headers
        csp = headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert headers["x-frame-options"] == "DENY"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"


def test_pages_need_no_inline_script_or_style(web):
    """What the Content-Security-Policy forbids is not in any page (the browser tests check pages still work)."""
    client, *_, sample = web
    urls = ["/", f"/candidates/{sample.candidate_ids['Li6PS5Cl']}", f"/candidates/{sample.candidate_ids['TiS2']}",
            "/jobs", f"/jobs/{sample.job_id}", "/docs", "/login", "/candidates/424242"]
    for url in urls:
        text = client.get(url, headers=HTML).text
        inline_scripts = re.findall(r"<script(?![^>]*\bsrc=)(?![^>]*application/json)[^>]*>", text)
        assert inline_scripts == [], (url, inline_scripts)
        assert not re.search(r"<[^>]+\sstyle=", text), url
        assert not re.search(r"<[^>]+\son[a-z]+=", text), url  # no inline event handlers
