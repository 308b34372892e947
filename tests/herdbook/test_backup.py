"""Backups taken while raters vote, and restores into a new home."""

import shutil
import threading
import time

import pytest
from herdbook.db.models import DatasetVersion, Vote
from herdbook.db.store import integrity_problems
from herdbook.feedback.votes import cast_vote
from sqlalchemy import select

from herdbook.backup import backup, restore, snapshot_counts
from herdbook.errors import HomeError
from tests.herdbook.test_cli import run


@pytest.mark.slow  # seconds: out of the quick loop
def test_a_backup_taken_during_voting_restores_every_acknowledged_vote_and_version(tmp_path):
    home_path = tmp_path / "home"
    run("demo", "--home", home_path)
    from herdbook.home import load_home

    home = load_home(home_path)
    store = home.open_store()
    for cid in (1, 2, 3):
        with store.transaction() as session:
            cast_vote(session, cid, "ann", "accept")
    run("sync", "--home", home_path)
    acknowledged: list[tuple[int, str]] = []
    stop = threading.Event()

    def rater(name: str) -> None:
        voter = home.open_store()
        cid = 0
        while not stop.is_set():
            cid = cid % 36 + 1
            with voter.transaction() as session:
                cast_vote(session, cid, name, "accept" if cid % 3 else "reject")
            acknowledged.append((cid, name))  # the transaction committed: the rater saw it stored
        voter.close()

    raters = [threading.Thread(target=rater, args=(f"rater-{i}",)) for i in range(3)]
    for thread in raters:
        thread.start()
    while len(acknowledged) < 30:
        time.sleep(0.01)
    before_backup = list(acknowledged)
    manifest = backup(home, tmp_path / "backup")
    stop.set()
    for thread in raters:
        thread.join()
    assert manifest["votes"] >= len(before_backup) + 3

    restored = restore(tmp_path / "backup", tmp_path / "restored")
    copy = restored.open_store()
    assert integrity_problems(copy) == []
    with copy.transaction() as session:
        rows = session.execute(select(Vote.candidate_id, Vote.rater_id, Vote.is_current)).all()
        versions = session.scalars(select(DatasetVersion.commit_id)).all()
    with store.transaction() as session:
        original_versions = session.scalars(select(DatasetVersion.commit_id)).all()
    from herdbook.db.models import Rater

    with copy.transaction() as session:
        names = dict(session.execute(select(Rater.id, Rater.name)).all())
    stored = {(cid, names[rid]) for cid, rid, _ in rows}
    assert set(before_backup) <= stored  # every vote acknowledged before the backup is in it
    assert versions == original_versions and len(versions) == 1
    assert (restored.dataset_dir / ".oxen").is_dir() and (restored.root / "candidates").is_dir()
    counted = snapshot_counts(restored.root / "herdbook.db")  # what the manifest said is what it holds
    assert {key: manifest[key] for key in counted} == counted
    # the restored home works: a status and a sync
    assert "candidates       36" in run("status", "--home", restored.root).output
    run("sync", "--home", restored.root)
    copy.close()
    store.close()


def test_backup_and_restore_never_overwrite(tmp_path):
    run("demo", "--home", tmp_path / "home")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    from herdbook.home import load_home

    with pytest.raises(HomeError, match="not empty"):
        backup(load_home(tmp_path / "home"), tmp_path / "full")
    result = run("backup", tmp_path / "b", "--home", tmp_path / "home")
    assert "Backed up 36 candidates" in result.output
    failed = run("restore", tmp_path / "b", "--home", tmp_path / "home", ok=False)
    assert failed.exit_code == 1 and "not empty" in failed.output
    assert "Restored" in run("restore", tmp_path / "b", "--home", tmp_path / "new").output


def test_a_home_its_backups_and_restores_keep_the_database_to_their_owner(tmp_path):
    run("demo", "--home", tmp_path / "home")
    run("backup", tmp_path / "b", "--home", tmp_path / "home")
    run("restore", tmp_path / "b", "--home", tmp_path / "new")
    for database in (
        tmp_path / "home" / "herdbook.db",
        tmp_path / "b" / "herdbook.db",
        tmp_path / "new" / "herdbook.db",
    ):
        assert database.stat().st_mode & 0o777 == 0o600, database


def test_a_backup_inside_the_home_is_refused_and_leaves_nothing(tmp_path):
    run("demo", "--home", tmp_path / "home")
    inside = tmp_path / "home" / "candidates" / "bk"
    result = run("backup", inside, "--home", tmp_path / "home", ok=False)
    assert result.exit_code == 1 and "is inside the home" in result.output and "Traceback" not in result.output
    assert not inside.exists()


def test_restore_refuses_a_damaged_backup_and_one_that_disagrees_with_its_manifest(tmp_path):
    run("demo", "--home", tmp_path / "home")
    run("vote", "1", "accept", "--rater", "ann", "--home", tmp_path / "home")
    run("backup", tmp_path / "b", "--home", tmp_path / "home")
    shutil.copytree(tmp_path / "b", tmp_path / "b2")
    manifest = tmp_path / "b2" / "herdbook-backup.json"
    manifest.write_text(manifest.read_text().replace('"votes": 1', '"votes": 7'))
    result = run("restore", tmp_path / "b2", "--home", tmp_path / "r2", ok=False)
    assert result.exit_code == 1 and "does not hold what its manifest says (votes 7 -> 1)" in result.output
    database = tmp_path / "b" / "herdbook.db"
    data = bytearray(database.read_bytes())
    page = 4096
    for n in (2, 3, 5):  # three pages scribbled over, the header left alone
        data[n * page : n * page + 512] = b"\xa5" * 512
    database.write_bytes(bytes(data))
    result = run("restore", tmp_path / "b", "--home", tmp_path / "r", ok=False)
    assert result.exit_code == 1 and "the backup's database" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()
