"""Engines, sessions and migrations.

The caller owns the session: services take a ``Session`` and never commit; the CLI and
each app action wrap their work in ``with store.transaction() as session``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from herdbook.db.errors import StoreBusy, StoreError
from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"
# The newest migration's id. Checking it with one query spares every command the ~0.4 s
# Alembic takes to load its scripts; tests/db/test_migrations.py keeps it equal to the head.
SCHEMA_REVISION = "0005"
T = TypeVar("T")
BUSY_TIMEOUT_MS = 10_000  # how long a write waits for another writer before it counts as locked


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL lets the app read while a worker writes; SQLite leaves foreign keys off by default.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.close()


def make_engine(url: str) -> Engine:
    try:
        engine = create_engine(url)
    except ModuleNotFoundError as error:
        raise StoreError(
            f"the database driver {error.name!r} is not installed; for Postgres: pip install 'herdbook[postgres]'"
        ) from None
    except ArgumentError as error:
        raise StoreError(f"database_url is not a SQLAlchemy URL ({error})") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def alembic_config(url: str):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def migrate(engine: Engine) -> None:
    """Bring the schema up to the newest Alembic revision."""
    from alembic import command

    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


@dataclass
class Store:
    engine: Engine
    sessions: sessionmaker[Session]

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work: committed when the block ends, rolled back on any error."""
        with self.sessions.begin() as session:
            yield session

    def write(self, work: Callable[[Session], T], attempts: int = 3, pause: float = 0.5) -> T:
        """``work`` in its own transaction, tried again when the database is locked (SQLite
        allows one writer; its busy timeout already waited). Raises StoreBusy when every try
        met the lock, so the caller can keep what the user did and retry it later."""
        for attempt in range(1, attempts + 1):
            try:
                with self.transaction() as session:
                    return work(session)
            except OperationalError as error:
                if not _is_lock(error) or attempt == attempts:
                    if _is_lock(error):
                        raise StoreBusy(
                            "the database is busy (another process is writing to it); nothing was lost: try again"
                        ) from None
                    raise
                time.sleep(pause * attempt)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.engine.dispose()


def _is_lock(error: OperationalError) -> bool:
    text = str(error.orig).lower()
    return "locked" in text or "busy" in text


KNOWN_REVISIONS = ("0001", "0002", "0003", "0004", "0005")  # oldest first; the last is SCHEMA_REVISION


def open_store(url: str, *, create: bool = False, upgrade: bool = True) -> Store:
    """The database at ``url``, migrated to the newest schema.

    Only ``create`` makes a new one: opening a home whose SQLite file is missing must never
    quietly start an empty database (a sync would then commit an empty dataset over the
    curated one). A damaged file or one from a newer herdbook is refused, named."""
    engine = make_engine(url)
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if database and database != ":memory:":
        path = Path(database)
        # an empty file is what a failed copy or a full disk leaves: opening it as a database
        # would migrate it into an empty one, and a sync would commit an empty dataset
        empty = path.exists() and path.stat().st_size == 0
        if not create and (empty or not path.exists()):
            engine.dispose()
            raise StoreError(
                f"{'the database at ' + database + ' is empty (0 bytes)' if empty else 'no database at ' + database}"
                ": the home's herdbook.db is missing. Restore it from a backup (nothing else holds the votes); "
                "`herdbook init` makes a new, empty home elsewhere"
            )
        if create and not path.exists():
            private_file(path)
    try:
        revision = current_revision(engine)
    except DBAPIError as error:
        engine.dispose()
        reason = str(error.orig).splitlines()[0] if error.orig else type(error).__name__
        raise StoreError(f"cannot read the database at {database or url}: {reason}; restore it from a backup") from None
    if revision is not None and revision not in KNOWN_REVISIONS:
        engine.dispose()
        raise StoreError(
            f"the database is at schema {revision}, which this herdbook does not know: it was made by a newer "
            "herdbook; upgrade herdbook (pip install -U herdbook) before opening it"
        )
    if upgrade and revision != SCHEMA_REVISION:
        if revision is None and not create and _has_tables(engine):
            engine.dispose()
            raise StoreError(f"{database or url} holds tables but no herdbook schema version: not a herdbook database")
        migrate(engine)
    return Store(engine, sessionmaker(engine, expire_on_commit=False))


def private_file(path: Path) -> None:
    """A new, empty file only its owner may read: the database holds password hashes (SQLite
    gives its -wal and -shm files the database's own mode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


def _has_tables(engine: Engine) -> bool:
    with engine.connect() as connection:
        return bool(inspect(connection).get_table_names())


def copy_database(store: Store, dest: Path) -> None:
    """A consistent copy of a SQLite database while others read and write it (``VACUUM INTO``:
    one snapshot, every committed transaction up to its start and nothing after). A plain file
    copy during voting can lose acknowledged votes or tear an index."""
    if store.engine.dialect.name != "sqlite":
        raise StoreError(
            f"herdbook backs up SQLite databases; for {store.engine.dialect.name} use its own tool (e.g. pg_dump)"
        )
    if dest.exists():
        raise StoreError(f"{dest} exists already; a backup never overwrites")
    private_file(dest)  # VACUUM INTO fills an empty file and keeps its mode: the hashes stay private
    with store.engine.connect() as connection:
        connection.exec_driver_sql("VACUUM INTO ?", (str(dest),))


def integrity_problems(store: Store) -> list[str]:
    """SQLite's own check of the file: empty when the database is sound."""
    if store.engine.dialect.name != "sqlite":
        return []
    try:
        with store.engine.connect() as connection:
            rows = [row[0] for row in connection.exec_driver_sql("PRAGMA integrity_check")]
    except DBAPIError as error:  # damage can stop the check itself
        return [str(error.orig).splitlines()[0] if error.orig else type(error).__name__]
    return [] if rows == ["ok"] else rows


def beat_while_running(store: Store, model, record_id: int, stop, every: float = 5.0) -> None:
    """Touch a running record's ``heartbeat_at`` every ``every`` seconds until ``stop`` is set
    or the record stops running (a job or a round: a silent heartbeat means its process died)."""
    from herdbook.db.models import utcnow

    while not stop.wait(every):
        with store.transaction() as session:
            record = session.get(model, record_id)
            if record is None or record.status != "running":
                return
            record.heartbeat_at = utcnow()
