from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from db.models import Base
from db.store import SCHEMA_REVISION, alembic_config, make_engine, open_store


def test_migrations_build_exactly_the_models(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'empty.db'}")
    with store.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == [], "models and migrations disagree: add an Alembic migration"


def test_schema_revision_constant_is_the_alembic_head(tmp_path):
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head == SCHEMA_REVISION


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'x.db'}")
    with store.engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_opening_twice_keeps_data_and_does_not_remigrate(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    store = open_store(url)
    with store.transaction() as session:
        session.execute(text("INSERT INTO raters (name, created_at) VALUES ('ann', CURRENT_TIMESTAMP)"))
    store.close()
    again = open_store(url)
    with again.transaction() as session:
        assert session.execute(text("SELECT name FROM raters")).scalars().all() == ["ann"]
    assert "alembic_version" in inspect(make_engine(url)).get_table_names()
