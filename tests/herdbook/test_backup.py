"""Backups taken while raters vote, and restores into a new home."""

import threading
import time

import pytest
from herdbook.db.models import DatasetVersion, Vote
from herdbook.db.store import integrity_problems
from herdbook.feedback.votes import cast_vote
from sqlalchemy import select

from herdbook.backup import backup, restore
from herdbook.errors import HomeError
from tests.herdbook.test_cli import run


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
