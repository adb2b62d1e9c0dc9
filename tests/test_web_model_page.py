"""The browser shows each model's validation figures on a page linked from every result computed with it."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from workflows.db import Store


@pytest.fixture
def web(web_home, monkeypatch):
    import workflows.validate as v
    from mlip.config import load_settings
    from workflows.web import create_app

    monkeypatch.setitem(v.SET_MODULES, "slow", "test_validate")  # the SlowSet of tests/test_validate.py
    home, sample = web_home
    settings = load_settings()
    store = Store.open(settings.db_url)
    with TestClient(create_app(settings, store=store, refresh_interval_s=0)) as client:
        yield client, store, sample, settings
    store.close()


def test_a_validated_model_shows_its_figures_and_plots(web):
    from workflows.validate import run_validation

    client, store, sample, settings = web
    run = run_validation(["bundled:lipscl-demo"], ["slow"], mlflow=False, device="cpu", command="ionscreen validate")
    assert run.out_dir == settings.home / "validation"
    sha = run.models[0].sha256
    page = client.get(f"/models/{sha}")
    assert page.status_code == 200, page.text
    text = page.text
    assert "bundled:lipscl-demo" in text and "slow" in text
    assert '<td>value_sum</td><td class="num">10</td>' in text  # 0+1+2+3+4, the set's own figure
    assert "No validation on record" not in text
    src = text.split('src="')[1].split('"')[0]
    assert src.startswith(f"/models/{sha}/files/") and src.endswith(".png")
    png = client.get(src)
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    # the page shows each set's latest run: a --limit 2 run (entries reused from the journal) replaces the figures
    again = run_validation(["bundled:lipscl-demo"], ["slow"], mlflow=False, device="cpu", limit=2)
    assert again.models[0].sets["slow"].summary["value_sum"] == 1.0
    row = client.get(f"/models/{sha}").text.split("value_sum")[1].split("</tr>")[0]
    assert '<td class="num">1</td>' in row

def test_results_link_to_their_models_page_which_says_when_there_is_no_validation(web):
    client, store, sample, _ = web
    cid = sample.candidate_ids["Li6PS5Cl"]
    row = store.results.get(sample.result_ids[("Li6PS5Cl", "transport")])
    sha = row["model_sha256"]
    assert f'href="/models/{sha}"' in client.get(f"/candidates/{cid}").text
    page = client.get(f"/models/{sha}")
    assert page.status_code == 200
    assert "No validation on record" in page.text and row["model_ref"] in page.text


def test_model_pages_refuse_bad_and_unknown_hashes_and_unlisted_files(web):
    client, store, sample, settings = web
    assert client.get("/models/" + "0" * 64).status_code == 404
    assert client.get("/models/abc").status_code == 422
    assert client.get("/models/" + "A" * 64).status_code == 422
    sha = store.results.get(sample.result_ids[("Li6PS5Cl", "transport")])["model_sha256"]
    (settings.home / "secret.png").write_bytes(b"\x89PNG")
    for path in ("../../../secret.png", "slow/plots/none.png", "..%2F..%2F..%2Fionscreen.db"):
        r = client.get(f"/models/{sha}/files/{path}")
        assert r.status_code in (404, 422), (path, r.status_code)
