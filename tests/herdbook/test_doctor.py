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


def test_an_empty_database_file_is_missing_and_nothing_creates_one(tmp_path):
    home = voted_home(tmp_path)
    run("sync", "--home", home)
    database = home / "herdbook.db"
    for leftover in home.glob("herdbook.db-*"):
        leftover.unlink()
    database.write_bytes(b"")
    doctor = run("doctor", "--home", home, ok=False)
    assert doctor.exit_code == 1 and "is empty (0 bytes)" in doctor.output and "database is sound" not in doctor.output
    synced = run("sync", "--home", home, ok=False)
    assert synced.exit_code == 1 and "restore it from a backup" in synced.output.lower()
    assert database.stat().st_size == 0  # neither migrated into an empty database


def test_doctor_finds_a_candidate_file_whose_bytes_changed(tmp_path):
    home = voted_home(tmp_path)
    damaged = candidate_file(home, 3)
    damaged.write_bytes(damaged.read_bytes()[:100])  # truncated
    doctor = run("doctor", "--home", home, ok=False)
    assert doctor.exit_code == 1 and "1 candidate file(s) damaged" in doctor.output and "#3" in doctor.output


def test_a_password_in_a_config_others_can_read_is_named_with_the_fix(tmp_path):
    home = voted_home(tmp_path)
    config = home / "herdbook.toml"
    config.write_text(config.read_text().replace('remote = ""', 'remote = "https://me:hunter22@hub.example/team/ox"'))
    config.chmod(0o644)  # edited by hand: herdbook did not write it
    doctor = run("doctor", "--home", home, ok=False)
    assert doctor.exit_code == 1 and f"chmod 600 {config}" in doctor.output
    assert "hunter22" not in doctor.output
    status = run("status", "--home", home)
    assert f"warning: {config} holds a password" in status.output and "hunter22" not in status.output
    config.chmod(0o600)
    assert "warning" not in run("status", "--home", home).output


def test_doctor_finds_an_image_truncated_in_the_oxen_repository(tmp_path):
    home = voted_home(tmp_path)
    run("sync", "--home", home)
    assert "every image the Oxen repository stores holds the bytes" in run("doctor", "--home", home).output
    objects = sorted((home / "dataset" / ".oxen" / "versions").rglob("data"))
    image = next(o for o in objects if o.read_bytes().startswith(b"\x89PNG"))
    image.write_bytes(image.read_bytes()[:200])  # truncated on disk
    doctor = run("doctor", "--home", home, ok=False)
    assert doctor.exit_code == 1 and "1 image(s) in the Oxen repository damaged" in doctor.output
