import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from herdbook.db.errors import StoreError
from herdbook.db.models import Base
from herdbook.db.store import KNOWN_REVISIONS, SCHEMA_REVISION, alembic_config, make_engine, open_store
from sqlalchemy import inspect, text


def test_migrations_build_exactly_the_models(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'empty.db'}", create=True)
    with store.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == [], "models and migrations disagree: add an Alembic migration"


def test_schema_revision_constant_is_the_alembic_head(tmp_path):
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head == SCHEMA_REVISION == KNOWN_REVISIONS[-1]


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'x.db'}", create=True)
    with store.engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_opening_twice_keeps_data_and_does_not_remigrate(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    store = open_store(url, create=True)
    with store.transaction() as session:
        session.execute(text("INSERT INTO raters (name, created_at) VALUES ('ann', CURRENT_TIMESTAMP)"))
    store.close()
    again = open_store(url)
    with again.transaction() as session:
        assert session.execute(text("SELECT name FROM raters")).scalars().all() == ["ann"]
    assert "alembic_version" in inspect(make_engine(url)).get_table_names()


def test_upgrading_a_version_one_database_keeps_its_rows(tmp_path):
    from alembic import command

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    config = alembic_config(url)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        connection.execute(
            text(
                "INSERT INTO candidates (sha256, path, source_name, prompt, negative_prompt, generation, extra, width, height,"
                " created_at) VALUES ('ab', 'p', 'a.png', 'an ox', '', '{}', '{}', 1, 1, CURRENT_TIMESTAMP)"
            )
        )
    store = open_store(url)
    with store.transaction() as session:
        assert session.execute(text("SELECT source_name, phash FROM candidates")).all() == [("a.png", None)]


def test_a_missing_database_is_refused_not_recreated(tmp_path):
    with pytest.raises(StoreError, match=r"no database at .*missing\. Restore it from a backup"):
        open_store(f"sqlite:///{tmp_path / 'gone.db'}")
    assert not (tmp_path / "gone.db").exists()


def test_a_damaged_or_foreign_or_newer_database_is_refused_by_name(tmp_path):
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"this is not a database at all" * 200)
    with pytest.raises(StoreError, match=r"cannot read the database.*restore it from a backup"):
        open_store(f"sqlite:///{damaged}")
    newer = f"sqlite:///{tmp_path / 'newer.db'}"
    open_store(newer, create=True).close()
    with make_engine(newer).begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    with pytest.raises(StoreError, match=r"schema 0099.*newer herdbook"):
        open_store(newer)
    foreign = f"sqlite:///{tmp_path / 'foreign.db'}"
    with make_engine(foreign).begin() as connection:
        connection.execute(text("CREATE TABLE notes (x TEXT)"))
    with pytest.raises(StoreError, match="not a herdbook database"):
        open_store(foreign)


def test_a_write_that_meets_a_held_lock_is_retried_then_reported_busy(tmp_path, monkeypatch):
    import sqlite3
    import threading

    from herdbook.db import store as store_module
    from herdbook.db.errors import StoreBusy

    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_MS", 50)
    path = tmp_path / "x.db"
    store = open_store(f"sqlite:///{path}", create=True)

    def add_rater(name):
        return lambda session: session.execute(
            text("INSERT INTO raters (name, created_at) VALUES (:n, CURRENT_TIMESTAMP)"), {"n": name}
        )

    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    with pytest.raises(StoreBusy, match="nothing was lost"):
        store.write(add_rater("ann"), attempts=2, pause=0.05)
    threading.Timer(0.2, lambda: holder.execute("COMMIT")).start()  # ...and lets go meanwhile
    store.write(add_rater("bob"), attempts=5, pause=0.1)
    with store.transaction() as session:
        assert session.execute(text("SELECT name FROM raters")).scalars().all() == ["bob"]
    holder.close()
    store.close()
