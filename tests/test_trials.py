"""The load and crash trials (bench/trials.py): the short run CI does on every change, and each
of its checks shown to fail when the defect it guards against is put back."""

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from bench import trials
from tests.conftest import make_image, write_csv
from tests.herdbook.test_cli import run

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_short_trials_lose_nothing(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "trials.py"), "--short", "--keep", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "lost 0, doubled 0" in done.stdout and "inconsistencies: 0" in done.stdout


@pytest.fixture
def home(tmp_path):
    home = tmp_path / "home"
    run("init", "--home", home)
    for i in range(2):
        make_image(tmp_path / "images" / f"{i}.png", seed=i)
    write_csv(tmp_path / "images" / "p.csv", [{"file": f"{i}.png", "prompt": "an ox"} for i in range(2)])
    run("import", tmp_path / "images", "--prompts", tmp_path / "images" / "p.csv", "--home", home)
    return home


def test_an_acknowledged_vote_missing_from_the_database_counts_as_lost(home, tmp_path):
    log = tmp_path / "ann.log"
    log.write_text("try 1 accept\nok\ntry 2 reject\n")  # the second was killed before its answer
    assert trials.lost_votes(home, {"ann": log}) == 1  # the acknowledged accept is not stored
    run("vote", 1, "accept", "--rater", "ann", "--home", home)
    assert trials.lost_votes(home, {"ann": log}) == 0
    run("vote", 1, "reject", "--rater", "ann", "--home", home)  # replaced by a vote nobody tried
    assert trials.lost_votes(home, {"ann": log}) == 1
    assert trials.lost_votes(home, {"ben": tmp_path / "never-started.log"}) == 0  # killed before its first try


def test_two_current_votes_of_one_rater_on_one_image_count_as_doubled(home):
    run("vote", 1, "accept", "--rater", "ann", "--home", home)
    assert trials.current_votes(home)[1] == 0
    with sqlite3.connect(home / "herdbook.db") as db:  # the defect put back: no unique current vote
        db.execute("DROP INDEX uq_votes_current")
        db.execute(
            "INSERT INTO votes (candidate_id, rater_id, value, is_current, created_at) "
            "SELECT candidate_id, rater_id, value, is_current, created_at FROM votes"
        )
    assert trials.current_votes(home)[1] == 1


def test_each_defect_the_trials_look_for_counts_as_an_inconsistency():
    load = {"lost": 0, "doubled": 0, "failed_processes": 0, "cli_refused": []}
    kills = {"doctor_failed": 0, "sync_failed": 0, "dataset_differs": 0, "lost_votes": 0, "import_incomplete": 0,
             "rounds_unfinished": 0}  # fmt: skip
    hostile = {"imported": 1, "new_votes": 1, "traceback": False, "raw_escape_in_output": False,
               "votes_changed": False, "unnamed": []}  # fmt: skip
    assert trials.inconsistencies(load, kills, hostile) == 0
    defects = [
        ("load", "lost", 1), ("load", "doubled", 1), ("load", "failed_processes", 1), ("load", "cli_refused", ["x"]),
        ("kills", "doctor_failed", 1), ("kills", "sync_failed", 1), ("kills", "dataset_differs", 1),
        ("kills", "lost_votes", 1), ("kills", "import_incomplete", 1), ("kills", "rounds_unfinished", 1),
        ("hostile", "imported", 2), ("hostile", "new_votes", 2), ("hostile", "traceback", True),
        ("hostile", "raw_escape_in_output", True), ("hostile", "votes_changed", True), ("hostile", "unnamed", ["a"]),
    ]  # fmt: skip
    attacker = {"got_through": [], "guesses_checked": 10, "right_password_got_in_after": False}
    assert trials.inconsistencies(load, kills, hostile, attacker) == 0
    defects += [("attacker", "got_through", ["mallory: action 5"]), ("attacker", "guesses_checked", 11),
                ("attacker", "right_password_got_in_after", True)]  # fmt: skip
    parts = {"load": load, "kills": kills, "hostile": hostile, "attacker": attacker}
    for part, key, bad in defects:
        changed = {**parts, part: {**parts[part], key: bad}}
        assert trials.inconsistencies(**changed) == 1, (part, key)


def test_a_hostile_file_without_its_own_refusal_line_is_found():
    names = ["empty.png", "bad\nname.png", "../outside.png"]
    output = "skipped empty.png: the file is empty\nskipped bad\\nname.png: not an image\nImported 1 new image(s)"
    assert trials.unnamed_refusals(names, output) == ["../outside.png"]


def test_only_a_process_killed_while_it_works_counts_as_a_kill(tmp_path):
    import random

    started = tmp_path / "started"
    working = [sys.executable, "-c", f"import pathlib, time; pathlib.Path({str(started)!r}).touch(); time.sleep(120)"]
    assert trials.kill_when(working, started.exists, random.Random(0), 0.0, 0.1) is True
    finished = [sys.executable, "-c", "pass"]
    assert trials.kill_when(finished, lambda: False, random.Random(0), 0.0, 0.1) is False
