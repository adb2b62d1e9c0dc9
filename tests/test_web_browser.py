"""End to end in headless Chromium (Debian's /usr/bin/chromium driven by Playwright, no Playwright-downloaded
browser): the table loads, filters and sorts; a candidate page shows its plots and a 3D structure that is really
drawn (pixels sampled from a screenshot); the CIF download parses back with pymatgen; no request leaves the server.

Needs ``apt-get install -y chromium`` and ``pip install playwright`` (no ``playwright install``). Set
``IONSCREEN_DOCS_SCREENSHOTS=1`` to also write the screenshots into docs/.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from webfuzz import NoLaunch
from webserve import served

CHROMIUM = os.environ.get("IONSCREEN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DOCS = Path(__file__).resolve().parents[1] / "docs"
WRITE_DOCS = bool(os.environ.get("IONSCREEN_DOCS_SCREENSHOTS"))  # read at import: tests clear IONSCREEN_* variables



@pytest.fixture(scope="module", autouse=True)
def _chromium_present():
    # like the PostgreSQL tests: a missing browser FAILS (CI must install it), it is not skipped
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: apt-get install -y chromium (or set IONSCREEN_CHROMIUM)")


@pytest.fixture(scope="module")
def server(web_sample_template, tmp_path_factory):
    """uvicorn on loopback in a thread, serving a copy of the sample database."""
    from mlip.config import load_settings
    from workflows.web import create_app

    template, sample = web_sample_template
    home = tmp_path_factory.mktemp("browser") / "home"
    shutil.copytree(template, home)
    settings = load_settings({"IONSCREEN_HOME": str(home)})

    app = create_app(settings, launcher=NoLaunch(), refresh_interval_s=0)  # the browser tests submit nothing
    with served(app) as url:
        yield url, sample, settings


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    from playwright.sync_api import sync_playwright  # pip install playwright (no `playwright install` needed)

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            tempfile.mkdtemp(prefix="chromium-profile-"), executable_path=CHROMIUM, args=CHROMIUM_ARGS,
            headless=True, viewport={"width": 1400, "height": 900}, accept_downloads=True,
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser_context, server):
    base, *_ = server
    page = browser_context.new_page()
    page.outside = []
    page.console_errors = []
    page.on("request", lambda r: page.outside.append(r.url) if not r.url.startswith((base, "data:", "blob:")) else None)
    page.on("pageerror", lambda err: page.console_errors.append(str(err)))
    yield page
    page.close()


def _rows(page) -> list[dict]:
    return page.eval_on_selector_all(
        "#candidates tbody tr[data-candidate]",
        "rows => rows.map(r => ({name: r.querySelector('a.cand').textContent, ion: r.dataset.ion,"
        " elements: r.dataset.elements, sigma: r.dataset.sigma === '' ? null : parseFloat(r.dataset.sigma),"
        " flags: parseInt(r.dataset.flags)}))")


def _save(image_path: Path, name: str) -> None:
    if WRITE_DOCS:
        DOCS.mkdir(exist_ok=True)
        shutil.copy(image_path, DOCS / name)


def test_table_loads_filters_sorts_and_exports(page, server, tmp_path):
    base, sample, _ = server
    page.goto(base + "/")
    rows = _rows(page)
    assert len(rows) == 7 and page.text_content("#total").startswith("7 rows")
    assert {"Li6PS5Cl", "Mo6S8", "TiS2"} <= {r["name"] for r in rows}
    page.screenshot(path=str(tmp_path / "table.png"), full_page=True)
    _save(tmp_path / "table.png", "screenshot-table.png")

    # filter: working ion Na
    page.select_option("select[name=ion]", "Na")
    page.click("form#filters button[type=submit]")
    page.wait_for_url("**ion=Na**")
    rows = _rows(page)
    assert [r["name"] for r in rows] == ["Na3PS4-cubic"] and all(r["ion"] == "Na" for r in rows)

    # filter: contains S, excludes Cl, no flags, any ion
    page.goto(base + "/")
    page.fill("input[name=has]", "S")
    page.fill("input[name=lacks]", "Cl")
    page.check("input[name=clean]")
    page.click("form#filters button[type=submit]")
    page.wait_for_url("**clean=1**")
    rows = _rows(page)
    assert rows and all(",S," in r["elements"] and ",Cl," not in r["elements"] and r["flags"] == 0 for r in rows)
    names = {r["name"] for r in rows}
    assert "Li6PS5Cl" not in names and "Li2S" not in names  # Cl-bearing, and flagged

    # sort by σ: click the header (best first), then again (ascending); missing values stay last
    page.goto(base + "/")
    page.click("th a:has-text('σ(300 K)')")
    page.wait_for_url("**sort=conductivity**")
    sigmas = [r["sigma"] for r in _rows(page)]
    present = [s for s in sigmas if s is not None]
    assert present == sorted(present, reverse=True) and sigmas[: len(present)] == present and len(present) >= 4
    page.click("th a:has-text('σ(300 K)')")
    page.wait_for_url("**order=asc**")
    present = [r["sigma"] for r in _rows(page) if r["sigma"] is not None]
    assert present == sorted(present)

    # CSV export of the current (filtered) table
    page.goto(base + "/?ion=Li")
    shown = [r["name"] for r in _rows(page)]
    with page.expect_download() as info:
        page.click("#csv")
    path = tmp_path / "export.csv"
    info.value.save_as(path)
    exported = list(csv.DictReader(path.open()))
    assert [r["name"] for r in exported] == shown and all(r["working_ion"] == "Li" for r in exported)
    assert page.outside == [] and page.console_errors == []


def test_candidate_page_plots_viewer_and_cif_download(page, server, tmp_path):
    from PIL import Image
    from pymatgen.core import Structure

    base, sample, settings = server
    page.goto(base + "/")
    page.click("a.cand:has-text('Li6PS5Cl') >> nth=0")
    page.wait_for_url("**/candidates/**")
    assert page.text_content("h1").startswith("Li6PS5Cl")

    # plots: Arrhenius (drawn by the server), MSD per temperature, NEB profiles; every image decoded
    page.wait_for_function("document.getElementById('arrhenius').complete")
    sizes = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.getAttribute('src'), i.naturalWidth])")
    page.evaluate("() => Promise.all([...document.images].map(i => i.decode ? i.decode().catch(() => null) : null))")
    sizes = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.getAttribute('src'), i.naturalWidth])")
    assert any(src.endswith("/arrhenius.png") for src, _ in sizes)
    assert sum("msd.png" in src for src, _ in sizes) == 3 and sum("/neb/" in src for src, _ in sizes) == 2
    assert all(width > 100 for _, width in sizes), sizes
    assert "mS/cm" in page.text_content("#numbers") and "eV" in page.text_content("#numbers")
    assert "model sha256" in page.text_content("#provenance")

    # the 3D viewer drew the structure: the screenshot of its canvas is not blank
    page.wait_for_selector("#viewer[data-rendered=true] canvas")
    page.wait_for_timeout(500)
    shot = tmp_path / "viewer.png"
    page.locator("#viewer").screenshot(path=str(shot))
    image = Image.open(shot).convert("RGB")
    pixels = list(image.getdata())
    non_white = sum(1 for p in pixels if min(p) < 235) / len(pixels)
    colours = {(r // 32, g // 32, b // 32) for r, g, b in pixels}
    assert non_white > 0.03, f"viewer looks blank ({non_white:.1%} non-white pixels)"
    assert len(colours) >= 8, "viewer shows too few colours for atoms of four elements"
    legend = page.text_content("#legend")
    assert all(el in legend for el in ("Li", "P", "S", "Cl"))
    page.screenshot(path=str(tmp_path / "candidate.png"), full_page=True)
    _save(tmp_path / "candidate.png", "screenshot-candidate.png")
    page.click("button[data-style=supercell]")  # the controls redraw: still not blank
    page.wait_for_timeout(300)
    page.locator("#viewer").screenshot(path=str(shot))
    assert sum(1 for p in Image.open(shot).convert("RGB").getdata() if min(p) < 235) / len(pixels) > non_white

    # CIF download, parsed back
    with page.expect_download() as info:
        page.click("#download-cif")
    path = tmp_path / info.value.suggested_filename
    info.value.save_as(path)
    assert path.suffix == ".cif"
    structure = Structure.from_file(path)
    assert structure.composition.reduced_formula == "Li6PS5Cl" and len(structure) == 52
    assert page.outside == [] and page.console_errors == []


def test_cathode_host_page_and_jobs_page(page, server):
    base, sample, _ = server
    page.goto(f"{base}/candidates/{sample.candidate_ids['TiS2']}")
    page.wait_for_selector("#viewer[data-rendered=true] canvas")
    assert "intermediate_minimum" in page.text_content("#neb")
    assert "percolation" in page.text_content("#neb").lower()
    page.goto(base + "/jobs")
    page.click(f"a[href='/jobs/{sample.job_id}']")
    assert "done" in page.text_content("h1")
    page.click("text=Ranked candidates of this job")
    assert len(_rows(page)) == 6
    page.goto(base + "/docs")
    page.wait_for_selector(".swagger-ui .opblock", timeout=20000)  # the vendored Swagger UI renders the API
    assert page.outside == [] and page.console_errors == []
