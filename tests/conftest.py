"""Shared fixtures: an isolated data directory per test and tiny MACE models built in seconds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tiny test models gain nothing from a second thread, and an oversubscribed core makes torch's
# thread pool spin (10× slower when another process is busy). Subprocesses inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Ray starts its workers at nice 15. The suite runs in two processes (README), so a Ray test's workers would wait
# behind the other process's CPU-bound test (a job test took 2-4x as long); here they share the cores fairly.
os.environ.setdefault("RAY_worker_niceness", "0")

LIPSCL = [3, 15, 16, 17]  # Li, P, S, Cl


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Every test gets its own IONSCREEN_HOME and mace cache; nothing touches the user's."""
    for key in list(os.environ):
        if key.startswith("IONSCREEN_") and key != "IONSCREEN_SEVENNET_DIR":  # where SevenNet is installed, not data
            monkeypatch.delenv(key)
    home = tmp_path / "ionscreen-home"
    monkeypatch.setenv("IONSCREEN_HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return home


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:] if len(args) > 1 else kwargs}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def settings(isolated_home):
    from mlip.config import load_settings

    return load_settings()


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory) -> Path:
    """A tiny float64 MACE model for Li, P, S, Cl (untrusted until a test trusts it)."""
    from mlip.testing import build_mace, save_model

    return save_model(build_mace(LIPSCL, seed=1), tmp_path_factory.mktemp("models") / "tiny-lipscl.model")


@pytest.fixture
def tiny_model_copy(tiny_model_file, tmp_path) -> Path:
    """A private copy of the tiny model file that a test may trust, move or tamper with."""
    dst = tmp_path / "tiny.model"
    dst.write_bytes(tiny_model_file.read_bytes())
    return dst


@pytest.fixture(scope="session")
def soft_model_file(tmp_path_factory) -> Path:
    """A tiny MACE model for Li, P, S, Cl with a pair repulsion and weak interactions: stable, diffusive MD."""
    from mlip.testing import build_mace, save_model

    model = build_mace(LIPSCL, seed=1, pair_repulsion=True, interaction_scale=0.02)
    return save_model(model, tmp_path_factory.mktemp("soft") / "soft.model")


# ---------------------------------------------------------------------------------------------------------------
# Database fixtures (workflows.db): real SQLite and real PostgreSQL. PostgreSQL runs at 127.0.0.1:5432 on the
# development machine; an unreachable server makes the tests FAIL (not skip). Override with TEST_POSTGRES_URL.
POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def postgres_database_url():
    """A uniquely named PostgreSQL database for this test session (dropped afterwards); its URL."""
    import uuid

    import sqlalchemy as sa

    admin_url = sa.make_url(POSTGRES_ADMIN_URL)
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"ionscreen_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.OperationalError as err:
        admin.dispose()
        pytest.fail(
            f"PostgreSQL at {admin_url.render_as_string(hide_password=True)} is unreachable ({err.orig}); "
            "start it or point TEST_POSTGRES_URL at a server where this user may CREATE DATABASE"
        )
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def postgres_url(postgres_database_url):
    """URL of a fresh, empty schema (set as search_path) in the session's PostgreSQL database; dropped afterwards."""
    import uuid

    import sqlalchemy as sa

    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(postgres_database_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = sa.make_url(postgres_database_url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, isolated_home):
    """An empty database on each backend: the default SQLite file under IONSCREEN_HOME, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        from mlip.config import load_settings

        return load_settings().db_url
    return request.getfixturevalue("postgres_url")


# ---------------------------------------------------------------------------------------------------------------
# Web browser / REST API fixtures (workflows.web): a sample database built once per session (real library candidates,
# result documents and plots with made-up numbers, no MD), copied into each test's IONSCREEN_HOME.
WEB_SAMPLE_NAMES = ("Li6PS5Cl", "beta-Li3PS4", "Li2S", "Na3PS4-cubic", "Mo6S8", "TiS2")


@pytest.fixture(scope="session")
def web_sample_template(tmp_path_factory):
    """(home directory, SampleDatabase) of a seeded sample database; never modified (tests use ``web_home``)."""
    from workflows.db import Store
    from workflows.web.sample import build_candidate_rows, seed_sample

    home = tmp_path_factory.mktemp("web-sample") / "home"
    home.mkdir()
    rows = build_candidate_rows(WEB_SAMPLE_NAMES)
    with Store.open(f"sqlite:///{home / 'ionscreen.db'}") as store:
        sample = seed_sample(store, home, rows)
    return home, sample


@pytest.fixture
def web_home(web_sample_template, isolated_home):
    """This test's IONSCREEN_HOME holding a copy of the sample database and its documents; (home, SampleDatabase)."""
    import shutil

    template, sample = web_sample_template
    shutil.copytree(template, isolated_home, dirs_exist_ok=True)
    return isolated_home, sample


@pytest.fixture
def unbuildable_library_entry(monkeypatch) -> str:
    """The library with one more entry that lists a lattice but no coordinates (status missing_coordinates), as an
    entry whose coordinates are not found yet is shipped; returns its name."""
    from screening.candidates import library

    real = library.load_library()
    entry = real.entries[0].model_copy(update={"name": "Unresolved-Li-phase", "sites": [],
                                               "status": library.EntryStatus.missing_coordinates,
                                               "notes": "test entry: coordinates not found"})
    patched = real.model_copy(update={"entries": [*real.entries, entry]})
    monkeypatch.setattr(library, "load_library", lambda: patched)
    return entry.name
