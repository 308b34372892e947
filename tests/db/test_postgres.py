"""herdbook on a real Postgres server, started here for these tests: the schema migrates, and
votes from many tabs at once are all kept (insert-or-get raters, retried vote replacement)."""

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from pathlib import Path

import pytest
from herdbook.db.models import Rater, Vote
from herdbook.feedback.votes import cast_vote, current_vote, undo_last_vote
from sqlalchemy import create_engine, func, select, text


def postgres_programs() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@pytest.fixture(scope="module")
def postgres_server():
    programs = postgres_programs()
    if programs is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed, and `make test` installs it")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; `make test` does)")
    folder = Path(tempfile.mkdtemp(prefix="herdbook-postgres-"))
    as_owner = []
    if os.geteuid() == 0:  # initdb refuses root: run the server as Debian's postgres user
        shutil.chown(folder, "postgres")
        as_owner = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = folder / "data"
    subprocess.run([*as_owner, programs / "initdb", "-D", data, "-U", "herdbook", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)  # fmt: skip
    options = f"-p {port} -k {folder} -c listen_addresses='' -c fsync=off"
    subprocess.run([*as_owner, programs / "pg_ctl", "-D", data, "-o", options, "-l", folder / "log", "-w", "start"],
                   check=True, capture_output=True)  # fmt: skip
    yield f"postgresql+psycopg://herdbook@/{{database}}?host={folder}&port={port}"
    subprocess.run([*as_owner, programs / "pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def home(postgres_server, tmp_path):
    """A home whose database is a fresh Postgres database (the shared fixtures build on it)."""
    from herdbook.config import ProjectConfig
    from herdbook.home import init_home

    name = f"herdbook_{uuid.uuid4().hex[:8]}"
    admin = create_engine(postgres_server.format(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return init_home(tmp_path / "home", ProjectConfig(database_url=postgres_server.format(database=name)))


def all_at_once(work, arguments: list[tuple]) -> list[Exception]:
    start = threading.Barrier(len(arguments))
    failures = []

    def run(*args):
        start.wait()
        try:
            work(*args)
        except Exception as error:
            failures.append(error)

    threads = [threading.Thread(target=run, args=args) for args in arguments]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return failures


def test_the_schema_migrates_and_votes_undo_and_users_work(home, store, imported):
    from herdbook.db.access import add_user, authenticate

    assert store.engine.dialect.name == "postgresql"
    with store.transaction() as session:
        cast_vote(session, imported[0], "Ann", "accept")
        cast_vote(session, imported[0], "ann", "reject")
        assert undo_last_vote(session, "ANN") == imported[0]
        assert current_vote(session, imported[0], "ann") == "accept"
        add_user(session, "kim", "rater", "a long password")
    with store.transaction() as session:
        assert authenticate(session, "Kim", "a long password").name == "kim"


def test_a_new_raters_first_votes_from_many_tabs_at_once_are_all_kept(home, store, imported):
    stores = [home.open_store() for _ in imported]

    def first_vote(tab, candidate_id):
        with tab.transaction() as session:
            cast_vote(session, candidate_id, "zed", "accept")

    assert all_at_once(first_vote, list(zip(stores, imported, strict=True))) == []
    with store.transaction() as session:
        assert session.scalar(select(func.count(Rater.id)).where(Rater.name == "zed")) == 1
        assert session.scalar(select(func.count(Vote.id))) == len(imported)
    for tab in stores:
        tab.close()


def test_one_image_voted_from_many_tabs_at_once_keeps_every_vote_and_one_current(home, store, imported):
    with store.transaction() as session:
        cast_vote(session, imported[0], "zed", "skip")  # the rater exists; the race is on the vote
    stores = [home.open_store() for _ in range(16)]

    def vote(tab, value):
        with tab.transaction() as session:
            cast_vote(session, imported[0], "zed", value)

    values = ["accept", "reject"] * 8
    assert all_at_once(vote, list(zip(stores, values, strict=True))) == []
    with store.transaction() as session:
        current = session.scalars(select(Vote.value).where(Vote.candidate_id == imported[0], Vote.is_current)).all()
        assert len(current) == 1
        assert session.scalar(select(func.count(Vote.id)).where(Vote.candidate_id == imported[0])) == 17
    for tab in stores:
        tab.close()
