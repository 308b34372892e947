import json
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from herdbook.cli import main
from tests.conftest import make_image, write_csv


def run(*args, ok=True):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def test_init_import_vote_status(tmp_path):
    home = tmp_path / "home"
    run("init", "--home", home, "--base-model", "/models/sd15", "--instance-prompt", "an image of sks ox")
    assert 'base_model = "/models/sd15"' in (home / "herdbook.toml").read_text()
    folder = tmp_path / "imgs"
    for i in range(3):
        make_image(folder / f"{i}.png", seed=i)
    write_csv(
        folder / "p.csv", [{"file": f"{i}.png", "prompt": "an ox", "rating": "good" if i else "bad"} for i in range(3)]
    )
    out = run("import", folder, "--prompts", folder / "p.csv", "--rater", "ann", "--home", home).output
    assert "Imported 3 new image(s)" in out and "3 vote(s)" in out
    listed = json.loads(run("candidates", "--json", "--home", home).output)
    assert [c["source_name"] for c in listed] == ["0.png", "1.png", "2.png"]
    assert {
        "id",
        "source_name",
        "prompt",
        "round",
        "accepts",
        "rejects",
        "seed",
        "negative_prompt",
        "generation",
    } <= set(listed[0])
    run("vote", listed[0]["id"], "accept", "--rater", "bob", "--home", home)
    status = json.loads(run("status", "--json", "--home", home).output)
    assert status["candidates"] == 3
    assert status["votes"] == 4 and status["raters"] == 2
    assert status["rated"] == 3
    # 0.png: ann bad, bob good -> tied; 1.png and 2.png accepted
    assert status["accepted"] == 2 and status["rejected"] == 0
    assert status["agreement"]["overall"] == {
        "images": 1,
        "pairwise": 0.0,
        "fleiss_kappa": -1.0,  # two raters, opposite votes: as far below chance as kappa goes
    }
    assert status["agreement"]["by_prompt"]["an ox"]["pairwise"] == 0.0
    unrated = json.loads(run("candidates", "--json", "--unrated-by", "bob", "--home", home).output)
    assert [c["source_name"] for c in unrated] == ["1.png", "2.png"]


def test_import_with_bad_files_exits_non_zero_and_names_them(tmp_path):
    home = tmp_path / "home"
    run("init", "--home", home)
    folder = tmp_path / "imgs"
    make_image(folder / "ok.png")
    (folder / "broken.jpg").write_text("nope")
    result = run("import", folder, "--home", home, ok=False)
    assert result.exit_code == 1
    assert "skipped broken.jpg: not an image" in result.output
    assert "Imported 1 new image(s)" in result.output


def test_errors_are_one_line_not_a_traceback(tmp_path):
    result = run("status", "--home", tmp_path / "missing", ok=False)
    assert result.exit_code == 1
    assert result.output.startswith("error: no herdbook project at")
    assert "Traceback" not in result.output
    vote = run("init", "--home", tmp_path / "h")
    assert vote.exit_code == 0
    result = run("vote", "42", "accept", "--rater", "ann", "--home", tmp_path / "h", ok=False)
    assert "error: no candidate with id 42" in result.output


def test_every_command_explains_itself():
    for command in main.commands:
        result = run(command, "--help")
        assert "--home" in result.output or command in ("serve",), command


def test_demo_makes_a_project_ready_to_rate(tmp_path):
    run("demo", "--home", tmp_path / "demo")
    status = json.loads(run("status", "--json", "--home", tmp_path / "demo").output)
    assert status["candidates"] >= 24
    prompts = {c["prompt"] for c in json.loads(run("candidates", "--json", "--home", tmp_path / "demo").output)}
    assert len(prompts) >= 6


@pytest.mark.slow
def test_status_does_not_import_torch(tmp_path):
    run("init", "--home", tmp_path / "h")
    code = (
        "import sys; from herdbook.cli import main\n"
        "try:\n    main(['status', '--home', sys.argv[1]])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'diffusers', 'streamlit', 'oxen') if m in sys.modules]\n"
        "print('heavy:', heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "h")], capture_output=True, text=True, check=True
    ).stdout
    assert "heavy: []" in out


@pytest.mark.slow  # seconds: out of the quick loop
def test_select_sync_and_datasets_from_the_command_line(tmp_path):
    home = tmp_path / "home"
    run("demo", "--home", home)
    for cid, value in [(1, "accept"), (2, "accept"), (3, "reject")]:
        run("vote", cid, value, "--rater", "ann", "--home", home)
    chosen = json.loads(run("select", "--json", "--home", home).output)
    assert [c["id"] for c in chosen] == [1, 2]
    assert {"id", "source_name", "prompt", "accepts", "rejects", "score"} <= set(chosen[0])
    run("select", "--top-k", "1", "--dry-run", "--home", home)
    assert "top_k = 24" in (home / "herdbook.toml").read_text()
    run("select", "--top-k", "1", "--home", home)
    assert "top_k = 1" in (home / "herdbook.toml").read_text()
    assert "Dataset version 1" in run("sync", "--home", home).output
    assert "Nothing new to commit" in run("sync", "--home", home).output
    run("vote", 3, "accept", "--rater", "bob", "--home", home)
    run("vote", 3, "accept", "--rater", "carol", "--home", home)
    run("sync", "--home", home)
    listed = json.loads(run("datasets", "--json", "--home", home).output)
    assert [v["id"] for v in listed] == [1, 2] and listed[0]["selected"] == 1
    diff = run("datasets", "diff", "1", "2", "--home", home).output
    assert "1 ratings changed" in diff
    assert "~ rating    #3 " in diff and "images/" not in diff  # images by number and name, not hash paths
    assert "> selected  #3 " in diff
    out = run("datasets", "export", "latest", tmp_path / "instance", "--home", home).output
    assert "Exported 1 instance image(s)" in out
    import csv as csv_module

    table = list(csv_module.DictReader((tmp_path / "instance" / "instance.csv").open()))
    assert all((tmp_path / "instance" / row["path"]).is_file() for row in table)  # paths name the files
    again = run("datasets", "export", "1", tmp_path / "instance", "--home", home, ok=False)
    assert again.exit_code == 1 and "is not empty" in again.output
    assert "Exported" in run("datasets", "export", "1", tmp_path / "instance", "--clear", "--home", home).output
    failed = run("sync", "--push", "--home", home, ok=False)
    assert failed.exit_code == 1 and "no Oxen remote is configured" in failed.output


def test_bad_settings_are_named_one_line_each_with_no_traceback(tmp_path):
    home = tmp_path / "home"
    run("demo", "--home", home)
    for cid in (1, 2):
        run("vote", cid, "accept", "--rater", "ann", "--home", home)
    run("sync", "--home", home)
    result = run("train", "--resolution", "500", "--home", home, ok=False)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip() == "error: round settings: resolution = 500: value error, must be a multiple of 8, " \
        "at least 8 (the VAE downsamples by 8)"  # fmt: skip
    assert "round" not in run("rounds", "--home", home).output  # nothing was recorded

    config = home / "herdbook.toml"
    text = re.sub(r"^steps = \d+$", 'steps = "lots"', config.read_text(), count=1, flags=re.M)
    config.write_text(text.replace("top_k = 24", 'top_k = "ten"'))
    result = run("status", "--home", home, ok=False)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 2 and "Traceback" not in result.output
    assert lines[0].startswith("error: ") and "training.steps = 'lots'" in lines[0]
    assert "selection.top_k = 'ten'" in lines[1]


def test_init_takes_a_database_url_and_a_missing_driver_is_named(tmp_path):
    result = run("init", "--home", tmp_path / "h", "--database-url", "mysql+nosuchdriver://u@localhost/x", ok=False)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "error:" in result.output
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    run("init", "--home", tmp_path / "h2", "--database-url", url)
    assert (tmp_path / "elsewhere.db").exists() and not (tmp_path / "h2" / "herdbook.db").exists()
    assert f'database_url = "{url}"' in (tmp_path / "h2" / "herdbook.toml").read_text()


def test_queue_shows_what_a_rater_sees_next_and_why(tmp_path):
    home = tmp_path / "home"
    run("demo", "--home", home)
    for rater, values in [("ann", ["accept", "accept", "reject"]), ("bob", ["accept", "reject"])]:
        for cid, value in enumerate(values, start=1):
            run("vote", cid, value, "--rater", rater, "--home", home)
    listed = json.loads(run("queue", "--rater", "carol", "-n", "100", "--json", "--home", home).output)
    assert len(listed) == 36 and {"id", "source_name", "reason"} <= set(listed[0])
    reasons = {entry["id"]: entry["reason"] for entry in listed}
    assert reasons[2].startswith("near the cut") and reasons[2].endswith("1 accept, 1 reject")
    assert reasons[30] == "unrated: the top 24 is not full yet"
    # once carol votes too, the three active raters take different images off the shared order
    run("vote", 36, "reject", "--rater", "carol", "--home", home)
    heads = [
        {e["id"] for e in json.loads(run("queue", "--rater", r, "-n", "3", "--json", "--home", home).output)}
        for r in ("ann", "bob", "carol")
    ]
    assert not (heads[0] & heads[1] or heads[0] & heads[2] or heads[1] & heads[2])
    oldest = json.loads(
        run("queue", "--rater", "carol", "--order", "oldest", "-n", "3", "--json", "--home", home).output
    )
    assert [e["id"] for e in oldest] == [1, 2, 3]
    text = run("queue", "--rater", "carol", "-n", "2", "--home", home).output
    assert len(text.splitlines()) == 2 and text.startswith("#")
    status = run("status", "--home", home).output
    assert "selection" in status and "expected to stay" in status
    firm = json.loads(run("status", "--json", "--home", home).output)["selection"]
    # #1 (2-0) could drop out only if 24 other images went 3-0, which no simulated future does
    assert firm["selected"] == 1 and firm["expected_survivors"] == 1.0 and firm["could_drop"] == 1


def test_a_home_whose_database_is_missing_is_refused_by_every_command(tmp_path):
    home = tmp_path / "home"
    run("demo", "--home", home)
    run("vote", 1, "accept", "--rater", "ann", "--home", home)
    assert "Dataset version 1" in run("sync", "--home", home).output
    (home / "herdbook.db").unlink()
    for command in (["status"], ["sync"], ["candidates"], ["select"], ["vote", "1", "accept", "--rater", "ann"]):
        result = run(*command, "--home", home, ok=False)
        assert result.exit_code == 1 and "Traceback" not in result.output, command
        assert "herdbook.db is missing. Restore it from a backup" in result.output, command
        assert not (home / "herdbook.db").exists(), f"{command} made a new database"


def test_hostile_tables_and_files_are_refused_by_name_and_the_rest_imports(tmp_path):
    import os

    home = tmp_path / "home"
    run("init", "--home", home)
    folder = tmp_path / "drop"
    for i in range(3):
        make_image(folder / f"{i}.png", seed=i)
    os.mkfifo(folder / "pipe.png")  # would block a reader forever
    with (folder / "huge.png").open("wb") as handle:  # 2 GiB, sparse: costs no disk
        handle.truncate(2 * 2**30)
    forged = "evil\nImported 999 new image(s)\x1b[2J.png"
    (folder / forged).write_text("not a picture")  # skipped, so its name is printed
    write_csv(
        folder / "p.csv",
        [
            {"file": "0.png", "prompt": "an ox", "seed": str(10**20)},
            {"file": "1.png", "prompt": "an ox", "seed": "7"},
            {"file": "2.png", "prompt": "an ox", "seed": ""},
            {"file": "pipe.png", "prompt": "an ox", "seed": ""},
            {"file": "huge.png", "prompt": "an ox", "seed": ""},
            {"file": forged, "prompt": "an ox", "seed": ""},
        ],
    )
    result = run("import", folder, "--prompts", folder / "p.csv", "--home", home, ok=False)
    assert result.exit_code == 1 and "Traceback" not in result.output
    out = result.output
    assert "skipped 0.png: seed '100000000000000000000' is not a whole number" in out
    assert "skipped pipe.png: not a regular file" in out
    assert "skipped huge.png: 2,147,483,648 bytes, over the limit" in out
    assert "Imported 2 new image(s)" in out and out.count("\nImported") == 1  # the forged name cannot fake a line
    assert "\x1b[2J" not in out and "skipped evil\\nImported 999 new image(s)\\x1b[2J.png: not an image" in out
    listed = json.loads(run("candidates", "--json", "--home", home).output)
    assert sorted(c["source_name"] for c in listed)[:2] == ["1.png", "2.png"]
    assert [c["seed"] for c in listed if c["source_name"] == "1.png"] == [7]


def test_a_second_table_corrects_prompts(tmp_path):
    home = tmp_path / "home"
    run("init", "--home", home)
    folder = tmp_path / "imgs"
    make_image(folder / "a.png", seed=1)
    write_csv(folder / "first.csv", [{"file": "a.png", "prompt": "an oxx"}])
    write_csv(folder / "fixed.csv", [{"file": "a.png", "prompt": "an ox"}])
    run("import", folder, "--prompts", folder / "first.csv", "--home", home)
    out = run("import", folder, "--prompts", folder / "fixed.csv", "--home", home).output
    assert "prompt of a.png corrected" in out
    assert json.loads(run("candidates", "--json", "--home", home).output)[0]["prompt"] == "an ox"


def test_users_are_added_with_a_password_from_stdin_and_sign_in_opens_the_network(tmp_path):
    home = tmp_path / "home"
    run("init", "--home", home)
    refused = run("serve", "--home", home, "--host", "0.0.0.0", ok=False)
    assert refused.exit_code == 1 and "no users, so no sign-in" in refused.output
    result = CliRunner().invoke(main, ["users", "add", "Ann", "--role", "admin", "--home", str(home)],
                                input="a long password\n")  # fmt: skip
    assert result.exit_code == 0 and "Added Ann (admin)" in result.output
    assert "a long password" not in (home / "herdbook.db").read_bytes().decode("latin-1")
    short = CliRunner().invoke(main, ["users", "add", "bob", "--role", "rater", "--home", str(home)], input="x\n")
    assert short.exit_code == 1 and "too short" in short.output
    assert json.loads(run("users", "--json", "--home", home).output)[0]["role"] == "admin"
    logged = run("log", "--home", home).output
    assert "(cli): add user" in logged and "name=Ann" in logged
    assert "Ann may sign in again" in run("users", "unlock", "Ann", "--home", home).output
    logged = run("log", "--home", home).output
    assert "ann: unlock sign-in" in logged and "(cli): unlock user" in logged


@pytest.mark.slow  # seconds: out of the quick loop
def test_the_demo_starts_without_library_noise(tmp_path):
    """A fresh process, as a user runs it: libraries read their verbosity when first imported."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "herdbook.cli", "demo", "--home", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "Drew 36 cartoon oxen" in done.stdout
    assert "torchvision" not in done.stderr and "Writing model shards" not in done.stderr, done.stderr


def test_a_bad_option_is_one_line_and_exit_status_1(tmp_path):
    for args, said in [
        (["train", "--steps", "0"], "error: invalid value for '--steps': 0 is not in the range x>=1 (see herdbook train --help)"),
        (["users", "add", "x", "--role", "boss"], "error: invalid value for '--role'"),
        (["--bogus"], "error: no such option '--bogus' (see herdbook --help)"),
    ]:  # fmt: skip
        full = [*args, "--home", str(tmp_path / "h")] if args[0] != "--bogus" else args
        result = CliRunner().invoke(main, full, prog_name="herdbook")
        assert result.exit_code == 1, result.output
        assert result.output.strip().splitlines() == [result.output.strip()] and said in result.output


def test_a_new_rater_name_is_checked_and_an_old_one_still_found(tmp_path):
    home = tmp_path / "home"
    run("demo", "--home", home)
    refused = run("vote", 1, "accept", "--rater", "bad name!", "--home", home, ok=False)
    assert refused.exit_code == 1 and "'bad name!' is not a rater name" in refused.output
    assert "Zoë O'Neil-Smith: accept" in run("vote", 1, "accept", "--rater", "Zoë O'Neil-Smith", "--home", home).output


@pytest.mark.slow  # trains a tiny round
def test_a_round_is_judged_and_its_candidates_scored_from_the_cli(tmp_path):
    """The demo's tiny DINO and CLIP judge its rounds: `train` prints the report, `rounds --json`
    carries dino, clip_i and clip_t, generated candidates carry their scores, `status` how far
    the scores agree with the votes."""
    home = tmp_path / "demo"
    run("demo", "--home", home)
    for candidate in (1, 2, 3):
        run("vote", candidate, "accept", "--rater", "ann", "--home", home)
    run("vote", 4, "reject", "--rater", "ann", "--home", home)
    run("sync", "--home", home)
    trained = run("train", "--mode", "lora", "--steps", "2", "--home", home).output
    assert re.search(r"DINO +-?\d\.\d{3} ± \d\.\d{3} over 12 images +\(starting model -?\d\.\d{3}", trained)
    (round_row,) = json.loads(run("rounds", "--json", "--home", home).output)
    assert all(isinstance(round_row[key], float) for key in ("dino", "clip_i", "clip_t", "start_dino"))
    report = json.loads(run("rounds", "report", "1", "--json", "--home", home).output)
    assert report["dino"]["mean"] == round_row["dino"] and report["instance_images"] == 3
    assert run("rounds", "report", "1", "--home", home).output.splitlines()[1].startswith("CLIP-I ")
    run("generate", "--prompt", "the oxenai ox", "-n", "2", "--round", "1", "--home", home)
    made = json.loads(run("candidates", "--json", "--home", home).output)[-2:]
    assert all(isinstance(c["dino"], float) and isinstance(c["clip_t"], float) for c in made)
    assert "Scored 36 candidate(s)" in run("score", "--home", home).output  # the imported drawings
    assert "Every candidate is scored already" in run("score", "--home", home).output
    status = json.loads(run("status", "--json", "--home", home).output)
    # each accepted image is in the instance set: it is scored against the other two
    assert (
        status["fidelity_agreement"]["dino"]["accepted"] == 3 and status["fidelity_agreement"]["dino"]["rejected"] == 1
    )
    assert 0.0 <= status["fidelity_agreement"]["dino"]["auc"] <= 1.0


@pytest.mark.slow  # trains a tiny round
def test_a_round_without_its_judges_says_why_and_evaluate_makes_the_report_later(tmp_path):
    home = tmp_path / "demo"
    run("demo", "--home", home)
    config = (home / "herdbook.toml").read_text()
    judged = config
    config = re.sub(r'dino_model = ".*"', 'dino_model = "/no/such/dino"', config)
    (home / "herdbook.toml").write_text(config)
    run("vote", 1, "accept", "--rater", "ann", "--home", home)
    run("sync", "--home", home)
    trained = run("train", "--mode", "lora", "--steps", "2", "--home", home).output
    assert "no fidelity report: no model folder at /no/such/dino" in trained
    assert json.loads(run("rounds", "--json", "--home", home).output)[0]["dino"] is None
    failed = run("rounds", "evaluate", "1", "--home", home, ok=False)
    assert failed.exit_code == 1 and "no model folder at /no/such/dino" in failed.output
    (home / "herdbook.toml").write_text(judged)
    assert run("rounds", "evaluate", "1", "--home", home).output.startswith("DINO ")
    assert isinstance(json.loads(run("rounds", "--json", "--home", home).output)[0]["dino"], float)


def test_an_empty_queue_says_nothing_more_can_change_and_how_firm_the_selection_is(tmp_path):
    home = tmp_path / "home"
    run("init", "--home", home)
    folder = tmp_path / "imgs"
    for i in range(2):
        make_image(folder / f"{i}.png", seed=i)
    write_csv(folder / "p.csv", [{"file": f"{i}.png", "prompt": "an ox"} for i in range(2)])
    run("import", folder, "--prompts", folder / "p.csv", "--home", home)
    for candidate in (1, 2):
        run("vote", candidate, "accept", "--rater", "ann", "--home", home)
    text = run("queue", "--rater", "ann", "--home", home).output
    assert text.startswith("Nothing left that a vote by ann could change: every image is rated by them or settled.")
    assert re.search(
        r"The selection: all 2 selected are settled in \(an estimated \d+% of them good, 100% expected", text
    )


def test_a_team_that_signs_in_splits_the_queue_before_anyone_votes(tmp_path):
    """Issue 25, defect 1: on a fresh home ana, ben and cai were all given the same first images."""
    home = tmp_path / "home"
    run("demo", "--home", home)
    for name in ("ana", "ben", "cai"):
        added = CliRunner().invoke(main, ["users", "add", name, "--role", "rater", "--home", str(home)],
                                   input="a long enough password\n")  # fmt: skip
        assert added.exit_code == 0, added.output
    heads = [
        [e["id"] for e in json.loads(run("queue", "--rater", name, "-n", "5", "--json", "--home", home).output)]
        for name in ("ana", "ben", "cai")
    ]
    assert len({i for head in heads for i in head}) == 15  # fifteen different images, none twice


def test_status_shows_each_raters_reliability_and_a_spammer_weighs_little(tmp_path):
    home = tmp_path / "home"
    run("demo", "--home", home)
    for candidate in range(1, 21):
        good = candidate % 2 == 0
        for rater in ("ann", "bob", "cai"):
            run("vote", candidate, "accept" if good else "reject", "--rater", rater, "--home", home)
        run("vote", candidate, "accept", "--rater", "spam", "--home", home)
    reliable = {r["name"]: r for r in json.loads(run("status", "--json", "--home", home).output)["rater_reliability"]}
    assert reliable["spam"]["weight"] < 0.3 < reliable["ann"]["weight"] and reliable["ann"]["shared_images"] == 20
    text = run("status", "--home", home).output
    assert re.search(r"rater spam +weight 0\.\d\d: accepts \d+% of good images, rejects \d+% of bad ones", text)
    assert "votes            Votes weigh by each rater's reliability" in text
    # the plain view is one setting away, and status says it is in force
    config = home / "herdbook.toml"
    config.write_text(config.read_text().replace("weigh_raters = true", "weigh_raters = false"))
    assert json.loads(run("status", "--json", "--home", home).output)["weigh_raters"] is False
    assert "One vote each: raters are not weighed" in run("status", "--home", home).output


def test_the_command_leaves_at_once_with_its_status_and_all_it_owed_done(tmp_path):
    """`herdbook` exits without finalising the interpreter (~1 s after a round), but with the
    command's own status, its output flushed, other threads' work and atexit's done."""
    missing = subprocess.run(
        [sys.executable, "-m", "herdbook.cli", "status", "--home", str(tmp_path / "none")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 1 and "no herdbook project" in missing.stderr
    version = subprocess.run([sys.executable, "-m", "herdbook.cli", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and "version" in version.stdout
    script = (
        "import atexit, sys, threading, time\n"
        "from herdbook.cli import leave\n"
        "atexit.register(lambda: print('atexit ran'))\n"
        "threading.Thread(target=lambda: (time.sleep(0.3), print('thread done'))).start()\n"
        "sys.stdout.write('buffered')\n"
        "leave(3)\n"
    )
    owed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert owed.returncode == 3 and owed.stdout == "bufferedthread done\natexit ran\n"
