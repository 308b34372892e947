"""Damaged homes: one line saying what is wrong and what to do, never a traceback; `herdbook doctor`."""

import json
import shutil

from tests.herdbook.test_cli import run


def voted_home(tmp_path):
    home = tmp_path / "home"
    run("demo", "--home", home)
    for cid in (1, 2, 3):
        run("vote", cid, "accept", "--rater", "ann", "--home", home)
    return home


def candidate_file(home, cid):
    listed = json.loads(run("candidates", "--json", "--home", home).output)
    return home / next(c["path"] for c in listed if c["id"] == cid)


def test_a_healthy_home_passes(tmp_path):
    home = voted_home(tmp_path)
    run("sync", "--home", home)
    result = run("doctor", "--home", home)
    assert result.exit_code == 0 and "NO " not in result.output
    assert "all 1 version(s) recorded and present" in result.output


def test_a_missing_candidate_file_no_longer_blocks_sync_and_doctor_names_it(tmp_path):
    home = voted_home(tmp_path)
    candidate_file(home, 2).unlink()
    result = run("sync", "--home", home)
    assert "Dataset version 1" in result.output and "candidate 2: its file" in result.output
    doctor = run("doctor", "--home", home, ok=False)
    assert doctor.exit_code == 1 and "1 candidate file(s) missing, e.g. #2" in doctor.output
    assert "restore candidates/ from a backup" in doctor.output


def test_a_missing_oxen_repository_says_restore_not_init(tmp_path):
    home = voted_home(tmp_path)
    run("sync", "--home", home)
    shutil.rmtree(home / "dataset" / ".oxen")
    result = run("sync", "--home", home, ok=False)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "(its .oxen folder is missing): restore the dataset folder from a backup" in result.output
    assert "herdbook init" not in result.output
    doctor = run("doctor", "--home", home, ok=False)
    assert "dataset:" in doctor.output and doctor.exit_code == 1


def test_doctor_reports_a_damaged_database_and_a_bad_config(tmp_path):
    home = voted_home(tmp_path)
    (home / "herdbook.db").write_bytes(b"garbage" * 1000)
    for leftover in home.glob("herdbook.db-*"):
        leftover.unlink()
    doctor = run("doctor", "--home", home, ok=False)
    assert doctor.exit_code == 1 and "database: cannot read the database" in doctor.output
    config = home / "herdbook.toml"
    config.write_text(config.read_text().replace("top_k = 24", 'top_k = "ten"'))
    doctor = run("doctor", "--home", home, ok=False)
    assert "selection.top_k = 'ten'" in doctor.output and "correct herdbook.toml" in doctor.output
    selected = run("select", "--home", home, ok=False)
    assert selected.exit_code == 1 and "Traceback" not in selected.output
