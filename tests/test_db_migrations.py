"""Alembic migrations: the migrated schema equals the ORM models, reopening keeps rows, the default database is a
WAL-mode SQLite file under IONSCREEN_HOME, and bad URLs / newer schemas fail with clear errors."""

from __future__ import annotations

import hashlib
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from mlip.errors import ConfigError
from workflows.db import SchemaVersionError, Store
from workflows.db.migrations import alembic_config, head_revision
from workflows.db.models import Base


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def table_counts(url: str) -> dict[str, int]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return {t.name: conn.scalar(sa.select(sa.func.count()).select_from(t)) for t in Base.metadata.sorted_tables}
    finally:
        engine.dispose()


def test_migrated_schema_matches_models(db_url):
    with Store.open(db_url) as store:
        assert store.current_revision() == head_revision()
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            assert set(sa.inspect(conn).get_table_names()) == {t.name for t in Base.metadata.sorted_tables} | {
                "alembic_version"
            }
    finally:
        engine.dispose()


def test_reopening_keeps_rows_and_downgrade_round_trips(db_url):
    with Store.open(db_url) as store:
        job_id = store.jobs.create({"name": "keep", "model": "bundled:lipscl-demo"})
        cid = store.candidates.upsert(
            {
                "structure_hash": sha("s"),
                "name": "c",
                "formula": "Li2S",
                "working_ion": "Li",
                "working_ion_charge": 1,
                "kind": "electrolyte",
                "n_atoms": 12,
            }
        )
        store.tasks.add(job_id, cid, "transport", sha("k"))
        store.results.record(
            {
                "task_key": sha("k"),
                "candidate_id": cid,
                "stage": "transport",
                "structure_hash": sha("s"),
                "protocol_hash": sha("p"),
                "model_ref": "bundled:lipscl-demo",
                "model_sha256": sha("m"),
                "code_version": "test",
            }
        )
    before = table_counts(db_url)
    assert before == {"jobs": 1, "candidates": 1, "job_candidates": 0, "tasks": 1, "results": 1,
                      "candidate_summaries": 0, "tokens": 0}
    for _ in range(2):
        with Store.open(db_url) as store:
            assert store.jobs.get(job_id).name == "keep"
            assert store.results.for_key(sha("k"))["candidate_id"] == cid
        assert table_counts(db_url) == before

    # downgrade to nothing and back: the migration's downgrade drops exactly what upgrade made
    engine = sa.create_engine(db_url)
    try:
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), "base")
        with engine.connect() as conn:
            assert set(sa.inspect(conn).get_table_names()) == {"alembic_version"}
    finally:
        engine.dispose()
    with Store.open(db_url) as store:
        assert store.jobs.list() == []
    assert set(table_counts(db_url).values()) == {0}


def test_default_database_is_wal_sqlite_under_home(isolated_home):
    with Store.open() as store:
        assert store.backend.value == "sqlite"
        store.jobs.create({"name": "x", "model": "m"})
    path = isolated_home / "ionscreen.db"
    assert path.is_file()
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"  # persistent in the file
    finally:
        engine.dispose()
    with Store.open() as store, store._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_db_url_from_environment(isolated_home, tmp_path, monkeypatch):
    target = tmp_path / "elsewhere" / "jobs.db"
    monkeypatch.setenv("IONSCREEN_DB_URL", f"sqlite:///{target}")
    with Store.open() as store:
        store.jobs.create({"name": "x", "model": "m"})
    assert target.is_file() and not (isolated_home / "ionscreen.db").exists()


def test_newer_schema_is_refused(isolated_home):
    with Store.open() as store:
        url = store.db_url
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    engine.dispose()
    with pytest.raises(SchemaVersionError, match="9999_from_the_future.*upgrade ionscreen"):
        Store.open(url)


def test_plain_postgresql_url_uses_psycopg(postgres_url):
    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with Store.open(plain) as store:
        assert store.backend.value == "postgresql" and store.current_revision() == head_revision()


@pytest.mark.parametrize(
    "url, message",
    [
        ("mysql+pymysql://u@localhost/db", "supports sqlite"),
        ("not a url", "not a valid SQLAlchemy URL"),
        ("postgresql+psycopg://postgres@127.0.0.1:1/test", "cannot use the ionscreen database .*IONSCREEN_DB_URL"),
    ],
)
def test_bad_urls_fail_clearly(url, message):
    with pytest.raises(ConfigError, match=message):
        Store.open(url)
