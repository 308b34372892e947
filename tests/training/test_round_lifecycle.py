"""Rounds killed with kill -9 halfway: detected as interrupted, resumed from the checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from herdbook.config import ProjectConfig
from herdbook.home import init_home
from tests.conftest import make_image, write_csv
from tests.herdbook.test_cli import run
from tests.training.tiny import RESOLUTION

pytestmark = pytest.mark.slow  # trains tiny models in a subprocess


@pytest.fixture
def home(tmp_path, tiny_model):
    config = ProjectConfig(base_model=str(tiny_model), resolution=RESOLUTION, reference_prompts=[])
    config = config.with_changes(
        training=config.training.with_changes(checkpoint_every=4, steps=40),
        jobs=config.jobs.with_changes(stale_after_seconds=2),
    )
    home = init_home(tmp_path / "home", config)
    folder = tmp_path / "imgs"
    for i in range(3):
        make_image(folder / f"{i}.png", seed=i, size=(48, 48))
    write_csv(folder / "p.csv", [{"file": f"{i}.png", "prompt": "an ox", "rating": "good"} for i in range(3)])
    run("import", folder, "--prompts", folder / "p.csv", "--rater", "ann", "--home", home.root)
    run("sync", "--home", home.root)
    return home


def test_a_round_killed_halfway_shows_interrupted_and_resumes_from_its_checkpoint(home):
    checkpoint = home.root / "rounds" / "round-001" / "checkpoint" / "latest.pt"
    trainer = subprocess.Popen(
        [sys.executable, "-m", "herdbook.cli", "train", "--home", str(home.root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not checkpoint.exists():
        assert trainer.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.05)
    os.kill(trainer.pid, signal.SIGKILL)
    trainer.wait()
    time.sleep(2.5)  # the heartbeat goes stale
    listed = {r["id"]: r for r in json.loads(run("rounds", "--json", "--home", home.root).output)}
    assert listed[1]["status"] == "interrupted" and "resume it" in listed[1]["error"]

    out = run("rounds", "resume", 1, "--home", home.root).output
    assert "Round 1 finished" in out
    resumed_from = int(out.split("s/step from step ")[1].split(";")[0])
    assert resumed_from > 1  # carried on from the checkpoint, not from step 1
    listed = {r["id"]: r for r in json.loads(run("rounds", "--json", "--home", home.root).output)}
    assert listed[1]["status"] == "finished" and listed[1]["step"] == 40
    again = run("rounds", "resume", 1, "--home", home.root, ok=False)
    assert again.exit_code == 1 and "finished; nothing to resume" in again.output


def test_the_worker_queues_a_resume_for_an_interrupted_round_and_cancel_stops_it(home):
    from herdbook.db.models import Job, Round, utcnow
    from herdbook.training.rounds import plan_round
    from sqlalchemy import select

    from herdbook.jobs import resume_interrupted_rounds

    store = home.open_store()
    with store.transaction() as session:  # a round whose worker died mid-training, long ago
        record = plan_round(session, home.project)
        record.status, record.step = "running", 12
        record.started_at = record.heartbeat_at = utcnow().replace(year=2000)
    with store.transaction() as session:
        assert resume_interrupted_rounds(session, home) == [1]
        assert resume_interrupted_rounds(session, home) == []  # one resume, not one per worker start
        job = session.scalars(select(Job)).one()
        assert (job.kind, job.params) == ("train", {"round_id": 1})
        assert session.get(Round, 1).status == "interrupted"
    assert "Round 1 cancelled" in run("rounds", "cancel", 1, "--home", home.root).output
    refused = run("rounds", "resume", 1, "--home", home.root, ok=False)
    assert refused.exit_code == 1 and "cancelled; nothing to resume" in refused.output
    store.close()


def test_a_failed_round_can_be_deleted_and_leaves_the_lineage_a_finished_one_cannot(home):
    from herdbook.db.models import Round
    from herdbook.training.rounds import plan_round

    store = home.open_store()
    with store.transaction() as session:
        failed, pending = plan_round(session, home.project), plan_round(session, home.project)
        session.get(Round, failed.id).status = "failed"
    folder = home.root / "rounds" / f"round-{failed.id:03d}"
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "checkpoint" / "latest.pt").write_bytes(b"x")
    refused = run("rounds", "delete", pending.id, "--home", home.root, ok=False)
    assert refused.exit_code == 1 and "cancel it first" in refused.output
    assert f"Round {failed.id} deleted" in run("rounds", "delete", failed.id, "--home", home.root).output
    assert not folder.exists()
    listed = [r["id"] for r in json.loads(run("rounds", "--json", "--home", home.root).output)]
    assert listed == [pending.id]
    store.close()
