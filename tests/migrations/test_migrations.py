"""The Alembic migration builds the whole schema on SQLite and on a real PostgreSQL server."""

import pytest
from sqlalchemy import inspect

from adapters_store.db import make_engine
from adapters_store.models import Base
from migrations.runner import current_revision, downgrade, head_revision, upgrade


def _check_round_trip(url: str) -> None:
    upgrade(url)
    engine = make_engine(url)
    try:
        assert current_revision(engine) == head_revision()
        tables = set(inspect(engine).get_table_names())
        assert set(Base.metadata.tables) <= tables
        chunk_id = inspect(engine).get_columns("chunks")[0]
        assert chunk_id["name"] == "id" and "BIGINT" in str(chunk_id["type"]).upper()
        downgrade(url, "base")
        assert not set(Base.metadata.tables) & set(inspect(engine).get_table_names())
        upgrade(url)
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_migration_on_sqlite(tmp_path):
    _check_round_trip(f"sqlite:///{tmp_path / 'graft.db'}")


@pytest.mark.postgres
def test_migration_on_postgres(postgres_url):
    _check_round_trip(postgres_url)


def test_models_match_migration(tmp_path):
    """Autogenerate finds nothing to do: the models and the migration agree."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    url = f"sqlite:///{tmp_path / 'graft.db'}"
    upgrade(url)
    engine = make_engine(url)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert diff == []


def test_upgrading_keeps_the_rows_of_cascading_tables(tmp_path):
    """SQLite rebuilds an altered table; the rows that cascade from it (job items) must survive."""
    from sqlalchemy import text

    url = f"sqlite:///{tmp_path / 'graft.db'}"
    upgrade(url, "0001")
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO corpora (id, name, chunk_size, chunk_overlap, embedding_model, "
                                "created_at) VALUES (1, 'c', 200, 32, 'm', '2026-01-01')"))
        connection.execute(text("INSERT INTO jobs (id, corpus_id, status, documents_total, documents_done, "
                                "chunks_total, chunks_done, errors, created_at, updated_at) VALUES "
                                "('j', 1, 'queued', 1, 0, 0, 0, '[]', '2026-01-01', '2026-01-01')"))
        connection.execute(text("INSERT INTO job_items (job_id, filename, kind, metadata, raw_path, bytes, sha256, "
                                "status) VALUES ('j', 'a.txt', 'txt', '{}', '/x', 1, 's', 'pending')"))
    upgrade(url)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM job_items")).scalar() == 1
        assert connection.execute(text("SELECT kind FROM jobs")).scalar() == "ingest"
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
    engine.dispose()
