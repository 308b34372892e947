"""Curated datasets against a real local Oxen repository (no mock of oxen)."""

import csv
import os
from pathlib import Path

import pytest
from herdbook.db.models import DatasetVersion
from herdbook.feedback import curation, versioning
from herdbook.feedback.errors import VersioningError
from herdbook.feedback.ingest import import_images, rows_from_csv
from herdbook.feedback.selection import SelectionPolicy
from herdbook.feedback.votes import cast_vote
from sqlalchemy import func, select

from herdbook.errors import PushError
from herdbook.home import init_home


def vote_all(store, ids, rater, values):
    with store.transaction() as session:
        for cid, value in zip(ids, values, strict=False):
            cast_vote(session, cid, rater, value)


def do_sync(store, home, **kwargs):
    with store.transaction() as session:
        return curation.sync(session, home.dataset_repo, home.root, home.config.selection, **kwargs)


def sync_killed_in(module, function, store, home, monkeypatch):
    """Run a sync that is killed (Ctrl-C) when it reaches ``module.function``."""

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, function, killed)
    with pytest.raises(KeyboardInterrupt):
        do_sync(store, home)
    monkeypatch.undo()


def versions(store):
    with store.transaction() as session:
        return session.scalar(select(func.count(DatasetVersion.id)))


def test_sync_writes_an_oxen_readable_layout(home, store, imported):
    vote_all(store, imported, "ann", ["accept", "reject", "accept", "skip"])
    result = do_sync(store, home)
    assert result.version is not None and result.version.n_images == 3 and result.version.n_selected == 2
    repo = home.dataset_dir
    with (repo / "train.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {"prompt", "path", "rating"} <= set(rows[0])
    assert sorted(r["rating"] for r in rows) == ["bad", "good", "good"]
    assert all((repo / r["path"]).exists() for r in rows)
    assert len(list((repo / "images").iterdir())) == 3
    assert versioning.history(repo)[0].id == result.version.commit_id
    with (repo / "votes.csv").open() as handle:
        assert {r["rater"] for r in csv.DictReader(handle)} == {"ann"}


@pytest.mark.slow  # seconds: out of the quick loop
def test_a_sync_with_nothing_new_makes_no_commit(home, store, imported):
    vote_all(store, imported, "ann", ["accept"])
    do_sync(store, home)
    again = do_sync(store, home)
    assert again.version is None
    assert len(versioning.history(home.dataset_dir)) == 1
    assert versions(store) == 1


@pytest.mark.slow  # seconds: out of the quick loop
def test_undone_votes_take_images_out_of_the_next_version(home, store, imported):
    vote_all(store, imported, "ann", ["accept", "accept"])
    first = do_sync(store, home).version
    from herdbook.feedback.votes import undo_last_vote

    with store.transaction() as session:
        undo_last_vote(session, "ann")
    second = do_sync(store, home).version
    assert second.n_images == 1
    with store.transaction() as session:
        diff = curation.diff_versions(session, home.dataset_dir, first.id, second.id)
    assert len(diff.removed) == 1 and len(diff.selected_removed) == 1
    assert len(list((home.dataset_dir / "images").iterdir())) == 1


@pytest.mark.slow  # seconds: out of the quick loop
def test_diff_and_export_of_an_older_version(home, store, imported, tmp_path):
    vote_all(store, imported[:2], "ann", ["accept", "accept"])
    v1 = do_sync(store, home).version
    vote_all(store, imported[1:4], "bob", ["reject", "accept", "accept"])
    vote_all(store, imported[1:2], "carol", ["reject"])
    v2 = do_sync(store, home).version
    with store.transaction() as session:
        diff = curation.diff_versions(session, home.dataset_dir, v1.commit_id[:8], "latest")
        assert len(diff.added) == 2 and len(diff.rating_changed) == 1
        exported = curation.export_version(session, home.dataset_dir, v1.id, tmp_path / "v1")
    assert len(exported) == 2
    assert (tmp_path / "v1" / "instance.csv").exists()
    # the working tree is left as the newest version had it
    assert not versioning.has_changes(home.dataset_dir)
    with (home.dataset_dir / "instance.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == v2.n_selected


@pytest.mark.slow  # seconds: out of the quick loop
def test_a_sync_killed_after_the_commit_is_recorded_by_the_next(home, store, imported, monkeypatch):
    vote_all(store, imported, "ann", ["accept"])
    sync_killed_in(curation, "_record", store, home, monkeypatch)
    assert versions(store) == 0 and len(versioning.history(home.dataset_dir)) == 1
    result = do_sync(store, home)
    assert len(result.recovered) == 1 and result.version is None
    assert result.recovered[0].commit_id == versioning.history(home.dataset_dir)[0].id
    assert result.recovered[0].n_selected == 1


def test_a_sync_killed_before_the_commit_is_completed_by_the_next(home, store, imported, monkeypatch):
    vote_all(store, imported, "ann", ["accept", "accept"])
    sync_killed_in(versioning, "commit", store, home, monkeypatch)
    (home.dataset_dir / "train.csv").write_text("half a fi")  # as if killed mid-write
    result = do_sync(store, home)
    assert result.version is not None and result.version.n_images == 2
    assert not versioning.has_changes(home.dataset_dir)


def test_push_without_a_remote_says_what_to_set_and_keeps_the_commit(home, store, imported):
    vote_all(store, imported, "ann", ["accept"])
    result = do_sync(store, home)
    assert result.version is not None
    with pytest.raises(PushError, match="no Oxen remote is configured"):
        curation.push_versions(home.dataset_repo)
    assert len(versioning.history(home.dataset_dir)) == 1


def test_a_failed_push_keeps_the_local_commit_and_never_shows_credentials(home, store, imported):
    home.config.oxen.remote = "http://ann:s3cret-token@127.0.0.1:9/team/ox"  # nothing listens on port 9
    vote_all(store, imported, "ann", ["accept"])
    result = do_sync(store, home)
    with pytest.raises(PushError, match="is committed locally") as failed:
        curation.push_versions(home.dataset_repo)
    assert "s3cret" not in str(failed.value) and "ann:" not in str(failed.value)
    assert "http://***@127.0.0.1:9/team/ox" in str(failed.value)
    with store.transaction() as session:
        assert session.get(DatasetVersion, result.version.id).pushed is False


def oxen_children() -> list[int]:
    """This process's children that run one Oxen operation (versioning._in_child)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and b"herdbook.feedback.versioning" in command:
            found.append(int(entry.name))
    return found


@pytest.mark.slow  # seconds: out of the quick loop
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the Oxen child through /proc (Linux)")
def test_a_remote_that_never_answers_times_out_and_holds_no_database_lock(home, store, imported):
    """Before, sync --push held its transaction through a push that hung for minutes, and every
    vote meanwhile failed with 'database is locked'."""
    import socket
    import threading
    import time

    from click.testing import CliRunner

    from herdbook.cli import main

    silent = socket.socket()  # a remote on this machine that takes connections and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    port = silent.getsockname()[1]
    config = home.config_path.read_text().replace('remote = ""', f'remote = "http://127.0.0.1:{port}/team/ox"')
    home.config_path.write_text(config.replace("push_timeout_seconds = 120", "push_timeout_seconds = 4"))
    vote_all(store, imported[:1], "ann", ["accept"])
    outcome = {}
    cli = threading.Thread(
        target=lambda: outcome.update(result=CliRunner().invoke(main, ["sync", "--push", "--home", str(home.root)]))
    )
    cli.start()
    deadline = time.monotonic() + 30
    while versions(store) == 0:  # the sync has committed and recorded its version; the push hangs
        assert time.monotonic() < deadline
        time.sleep(0.1)
    started = time.monotonic()
    vote_all(store, imported[1:2], "bob", ["accept"])  # must not wait on any lock
    assert time.monotonic() - started < 1.0
    # Oxen's push runs below the priority of what people wait on (a CLI vote beside it)
    wanted = os.getpriority(os.PRIO_PROCESS, 0) + versioning.BACKGROUND_NICENESS
    niceness = None
    while niceness != wanted:
        assert time.monotonic() < deadline, f"the push's Oxen process runs at niceness {niceness}, not {wanted}"
        niceness = next((os.getpriority(os.PRIO_PROCESS, pid) for pid in oxen_children()), None)
        time.sleep(0.05)
    cli.join(30)
    silent.close()
    result = outcome["result"]
    assert result.exit_code == 1
    assert "got no answer in 4 s" in result.output and "committed locally" in result.output
    with store.transaction() as session:
        assert session.scalars(select(DatasetVersion)).one().pushed is False


def test_the_dataset_layout_imports_back_with_its_ratings(home, store, imported, tmp_path):
    vote_all(store, imported, "ann", ["accept", "reject", "accept"])
    do_sync(store, home)
    other = init_home(tmp_path / "other")
    other_store = other.open_store()
    with other_store.transaction() as session:
        report = import_images(
            session,
            home.dataset_dir,
            other.candidates_dir,
            other.root,
            rows_from_csv(home.dataset_dir / "train.csv"),
            rater="ann",
        )
    assert report.ok and len(report.added) == 3 and report.votes == 3
    with other_store.transaction() as session:
        decisions, _ = curation.decide(session, other.config.selection)
    assert sum(d.selected for d in decisions) == 2


def test_what_sync_writes_imports_back_ties_included(home, store, imported, tmp_path):
    """A version's images/ and train.csv (good, bad and tied rows) import into a new home."""
    vote_all(store, imported, "ann", ["accept", "reject", "accept", "accept"])
    vote_all(store, imported, "bob", ["accept", "reject", "reject"])  # image 3: one accept, one reject
    plain = home.config.selection.model_copy(update={"weigh_raters": False})  # one vote each: a tie stays a tie
    with store.transaction() as session:
        curation.sync(session, home.dataset_repo, home.root, plain)
    rows = {row["path"]: row for row in csv.DictReader((home.dataset_dir / "train.csv").open())}
    assert {row["rating"] for row in rows.values()} == {"good", "bad", "tied"}

    other = init_home(tmp_path / "other")
    other_store = other.open_store()
    with other_store.transaction() as session:
        report = import_images(
            session, home.dataset_dir, other.candidates_dir, other.root, rows_from_csv(home.dataset_dir / "train.csv"),
            rater="curator",
        )  # fmt: skip
    assert report.ok, report.problems
    assert len(report.added) == 4 and report.votes == 3  # the tied image comes in with no vote
    other_store.close()


@pytest.mark.slow  # seconds: out of the quick loop
def test_two_syncs_killed_in_a_row_leave_no_commit_unrecorded(home, store, imported, monkeypatch):
    vote_all(store, imported, "ann", ["accept"])
    sync_killed_in(curation, "_record", store, home, monkeypatch)  # commit 1 made, not recorded
    vote_all(store, imported[1:], "ann", ["accept"])
    # the second sync records commit 1, makes commit 2, and is killed recording it: its
    # transaction rolls back, so neither is recorded
    real_record, calls = curation._record, []

    def killed_on_second_record(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_record(*args, **kwargs)

    monkeypatch.setattr(curation, "_record", killed_on_second_record)
    with pytest.raises(KeyboardInterrupt):
        do_sync(store, home)
    monkeypatch.undo()
    commits = versioning.history(home.dataset_dir)
    assert len(commits) == 2 and versions(store) == 0
    result = do_sync(store, home)
    assert [v.commit_id for v in result.recovered] == [c.id for c in reversed(commits)]  # oldest first
    assert result.version is None  # nothing new since commit 2
    assert versions(store) == 2


def test_a_version_is_one_snapshot_even_while_votes_arrive(home, store, imported, monkeypatch):
    """A vote landing between the sync's reads used to make train.csv and votes.csv disagree."""
    from herdbook.feedback import selection

    vote_all(store, imported[:2], "ann", ["accept", "accept"])
    other = home.open_store()
    real_select = selection.select_instance_images

    def select_while_a_vote_arrives(*args, **kwargs):
        with other.transaction() as session:  # another rater's vote, committed mid-sync
            cast_vote(session, imported[0], "bob", "reject")
        return real_select(*args, **kwargs)

    monkeypatch.setattr(curation, "select_instance_images", select_while_a_vote_arrives)
    do_sync(store, home)
    monkeypatch.undo()
    other.close()
    train = {row["candidate_id"]: row for row in csv.DictReader((home.dataset_dir / "train.csv").open())}
    votes = list(csv.DictReader((home.dataset_dir / "votes.csv").open()))
    for cid, row in train.items():
        mine = [v for v in votes if v["candidate_id"] == cid]
        assert int(row["accepts"]) == sum(v["vote"] == "accept" for v in mine)
        assert int(row["rejects"]) == sum(v["vote"] == "reject" for v in mine)


@pytest.mark.slow  # seconds: out of the quick loop
def test_another_process_can_sync_after_this_one_used_the_repository(home, store, imported):
    """Oxen keeps a repository's refs locked for the life of the process that opened it: after
    "Sync now" in the app, `herdbook sync` failed with RefsDbOpenFailed until the app stopped."""
    import subprocess
    import sys

    vote_all(store, imported[:2], "ann", ["accept", "accept"])
    do_sync(store, home)
    with store.transaction() as session:
        curation.diff_versions(session, home.dataset_dir, "latest", "latest")  # reads a commit here too
    vote_all(store, imported[2:3], "ann", ["accept"])
    other = subprocess.run(
        [sys.executable, "-m", "herdbook.cli", "sync", "--home", str(home.root)], capture_output=True, text=True
    )
    assert other.returncode == 0, other.stderr
    assert "Dataset version 2" in other.stdout
    assert versions(store) == 2


def test_a_rater_who_accepts_everything_weighs_less_in_the_selection_and_the_plain_view_is_one_setting_away(
    home, store, imported
):
    """Eight images: ann, bob and cai agree on the first six (three good, three bad); spam
    accepts everything. Image 7 only spam accepted, image 8 only ann. Weighed, spam's accept
    counts for less (0.57 of a vote on six shared images; it falls as they grow, see
    test_reliability), so ann's image outranks spam's; one vote each, they score the same."""
    honest = ["accept", "reject"] * 3
    for rater in ("ann", "bob", "cai"):
        vote_all(store, imported[:6], rater, honest)
    vote_all(store, imported[:7], "spam", ["accept"] * 7)
    vote_all(store, [imported[7]], "ann", ["accept"])
    policy = SelectionPolicy(top_k=1, max_per_prompt=8)
    with store.transaction() as session:
        # three of the six have three honest accepts: top_k=1 takes one of those; compare 7 and 8 alone
        weighed = {d.image.id: d for d in curation.decide(session, policy)[0]}
        plain = {d.image.id: d for d in curation.decide(session, policy.model_copy(update={"weigh_raters": False}))[0]}
    spams, anns = imported[6], imported[7]
    assert weighed[spams].score < weighed[anns].score - 0.05
    assert plain[spams].score == plain[anns].score == pytest.approx(0.2065, abs=1e-3)
    assert weighed[imported[1]].image.tally.evidence[0] < 0.6 < weighed[imported[0]].image.tally.evidence[0] / 3


def hold_in_another_process(lock_path: Path):
    """A process that holds a file lock until its standard input closes (as an orphaned Oxen child holds the writer lock)."""
    import subprocess
    import sys

    code = "import sys; from filelock import FileLock; held = FileLock(sys.argv[1]); held.acquire(); print('held', flush=True); sys.stdin.read()"
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(lock_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_the_working_tree_is_not_ours_while_an_oxen_child_still_writes_it(home, store, imported):
    """A process killed with -9 releases its lock at once, but its Oxen child goes on committing:
    the next sync must wait for the child (which holds the writer lock) before it looks."""
    import filelock

    repo = home.dataset_repo.path
    holder = hold_in_another_process(versioning.writer_lock_path(repo))
    try:
        with pytest.raises(filelock.Timeout), versioning.working_tree_lock(repo, timeout=0.2):
            pass
    finally:
        holder.stdin.close()
        holder.wait()
    with versioning.working_tree_lock(repo, timeout=30):
        pass


def test_a_backup_copies_the_repository_between_commits(home, store, imported, tmp_path):
    """A backup taken while an Oxen child commits would copy half a commit: it waits for the child."""
    import filelock

    repo = home.dataset_repo.path
    holder = hold_in_another_process(versioning.writer_lock_path(repo))
    try:
        with pytest.raises(filelock.Timeout):
            versioning.copy_repository(repo, tmp_path / "copy", timeout=0.2)
        assert not (tmp_path / "copy").exists()
    finally:
        holder.stdin.close()
        holder.wait()
    versioning.copy_repository(repo, tmp_path / "copy", timeout=30)
    assert (tmp_path / "copy" / ".oxen").is_dir()


def test_a_folder_where_a_lock_file_goes_is_named_not_a_traceback(home, store, imported):
    repo = home.dataset_repo.path
    versioning.writer_lock_path(repo).mkdir()
    with pytest.raises(VersioningError, match=r"can't take the lock .*writer\.lock.*must be a file"):
        do_sync(store, home)
    versioning.writer_lock_path(repo).rmdir()
    assert do_sync(store, home).version is not None  # nothing was half done


def flock_holders(path: Path) -> set[int]:
    """The processes holding a flock on ``path``, from /proc/locks."""
    inode = path.stat().st_ino if path.exists() else None
    holders = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "FLOCK" in fields and inode is not None and fields[-3].endswith(f":{inode}"):
            holders.add(int(fields[-4]))
    return holders


@pytest.mark.slow
@pytest.mark.skipif(
    not Path("/proc/locks").exists(), reason="finding the Oxen child that holds a lock needs /proc/locks"
)
def test_a_sync_killed_with_9_while_oxen_commits_is_recorded_by_the_next_sync(home, store, imported):
    """Before, a sync started at once ran beside the orphaned Oxen child, said "Nothing new to
    commit" and left the child's commit unrecorded until the sync after."""
    import signal
    import subprocess
    import sys

    from click.testing import CliRunner

    from herdbook.cli import main

    vote_all(store, imported, "ann", ["accept", "reject"] * 4)
    sync = subprocess.Popen(
        [sys.executable, "-m", "herdbook.cli", "sync", "--home", str(home.root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    writer = versioning.writer_lock_path(home.dataset_repo.path)
    # until its Oxen child holds the writer lock (the sync itself takes it for a moment first)
    while sync.poll() is None and not flock_holders(writer) - {sync.pid}:
        pass
    assert sync.poll() is None, "the sync ended before its Oxen child was seen committing"
    os.kill(sync.pid, signal.SIGKILL)
    sync.wait()
    after = CliRunner().invoke(main, ["sync", "--home", str(home.root)], catch_exceptions=False)
    assert after.exit_code == 0, after.output
    assert "left unrecorded by an interrupted sync" in after.output
    assert versions(store) == 1 and len(versioning.history(home.dataset_repo.path)) == 1
