"""Background jobs through huey: a real worker process, failures, and dead workers."""

import os
import shutil
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from herdbook.db.models import Candidate, Job, utcnow
from sqlalchemy import func, select

from herdbook.config import ProjectConfig
from herdbook.home import init_home
from herdbook.jobs import get_job, mark_lost_jobs, run_next_job, submit
from tests.training.tiny import RESOLUTION


@pytest.fixture
def tiny_home(tmp_path, tiny_model):
    return init_home(tmp_path / "home", ProjectConfig(base_model=str(tiny_model), resolution=RESOLUTION))


def wait_for(store, job_id, statuses=("finished", "failed", "lost"), timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with store.transaction() as session:
            job = get_job(session, job_id)
            if job.status in statuses:
                return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


@pytest.mark.slow
def test_a_queued_job_runs_in_a_real_worker_process(tiny_home):
    store = tiny_home.open_store()
    with store.transaction() as session:
        job = submit(session, tiny_home, "generate", {"prompt": "an ox", "round": "base", "count": 2, "steps": 2})
        assert job.status == "queued"
    worker = subprocess.Popen(
        [sys.executable, "-m", "herdbook.cli", "worker", "--home", str(tiny_home.root)],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        done = wait_for(store, job.id)
    finally:
        worker.terminate()
        output = worker.communicate(timeout=30)[0]
    assert done.status == "finished", (done.error, output)
    assert done.progress == 1.0 and len(done.result["candidate_ids"]) == 2
    assert done.worker_pid == worker.pid
    assert "added 2 candidate(s)" in done.log
    assert "model loaded in" in output  # before the job, which found it loaded
    with store.transaction() as session:
        assert session.scalar(select(func.count(Candidate.id))) == 2


def test_a_worker_loads_the_model_generate_starts_from_before_its_first_job_and_says_when_it_cannot(
    tiny_home, tmp_path
):
    from herdbook.training.pipelines import PipelineCache

    from herdbook.home import load_home, set_base_model
    from herdbook.jobs import preload_generation_model

    cache, store, heard = PipelineCache(), tiny_home.open_store(), []
    preload_generation_model(store, tiny_home, cache, heard.append)
    assert cache.loads == 1 and heard[-1].startswith("model loaded in")
    with store.transaction() as session:
        job = submit(session, tiny_home, "generate", {"prompt": "an ox", "round": "base", "count": 1, "steps": 1})
    assert run_next_job(tiny_home, cache)
    with store.transaction() as session:
        assert get_job(session, job.id).status == "finished"
    assert cache.loads == 1  # the first Generate drew on the model loaded before it
    missing = load_home(set_base_model(tiny_home.root, str(tmp_path / "no-such-model")).root)
    fresh = PipelineCache()
    preload_generation_model(store, missing, fresh, heard.append)  # says so, and the worker goes on
    assert fresh.loads == 0 and heard[-1].startswith("the model Generate starts from did not load (")
    assert "no-such-model" in heard[-1]
    store.close()


def test_a_failed_job_keeps_its_error_and_the_worker_goes_on(tiny_home, tmp_path):
    tiny_home.config.base_model = str(tmp_path / "gone")
    tiny_home.config.save(tiny_home.config_path)
    store = tiny_home.open_store()
    with store.transaction() as session:
        failing = submit(session, tiny_home, "generate", {"prompt": "an ox", "round": "base", "count": 1, "steps": 2})
    assert run_next_job(tiny_home)
    with store.transaction() as session:
        job = get_job(session, failing.id)
        assert job.status == "failed"
        assert "ModelLoadError: no model folder at" in job.error
        assert "Traceback" in job.log
    assert not run_next_job(tiny_home)


def test_a_job_whose_worker_died_is_marked_lost(tiny_home):
    store = tiny_home.open_store()
    with store.transaction() as session:
        job = Job(
            kind="train", status="running", params={}, worker_pid=999999, started_at=utcnow() - timedelta(minutes=10)
        )
        job.heartbeat_at = utcnow() - timedelta(minutes=5)
        fresh = Job(kind="train", status="running", params={}, started_at=utcnow(), heartbeat_at=utcnow())
        session.add_all([job, fresh])
        session.flush()
        assert mark_lost_jobs(session, stale_after_seconds=120) == [job.id]
        assert job.status == "lost" and "stopped answering" in job.error
        assert fresh.status == "running"


def test_a_job_is_queued_only_when_its_transaction_commits(tiny_home):
    store = tiny_home.open_store()
    with pytest.raises(RuntimeError), store.transaction() as session:
        submit(session, tiny_home, "generate", {"prompt": "an ox", "count": 1})
        raise RuntimeError("the request failed after submitting")
    assert not run_next_job(tiny_home)  # nothing was queued for the rolled-back job
    with store.transaction() as session:
        assert session.scalar(select(func.count(Job.id))) == 0


def test_queues_are_named_by_project_and_a_worker_runs_jobs_against_its_own_home(tmp_path, tiny_model):
    from herdbook.home import Home
    from herdbook.jobs import make_queue

    config = ProjectConfig(base_model=str(tiny_model), resolution=RESOLUTION)
    first = init_home(tmp_path / "a" / "herdbook-home", config)
    second = init_home(tmp_path / "b" / "herdbook-home", config)
    assert first.project_id != second.project_id  # same folder name, two projects, two queues
    assert make_queue(first).huey.name != make_queue(second).huey.name

    store = first.open_store()
    with store.transaction() as session:
        job = submit(session, first, "generate", {"prompt": "an ox", "round": "base", "count": 1, "steps": 2})
    # a worker on another machine: its own folder, the same project (id, database, queue); the
    # queue file is copied where a Redis queue would be shared
    elsewhere = Home(tmp_path / "gpu-box", first.config.with_changes(database_url=first.database_url))
    elsewhere.root.mkdir()
    elsewhere.config.save(elsewhere.config_path)  # the README's "copy herdbook.toml into a home folder there"
    for queue_file in first.root.glob("jobs.sqlite*"):  # with its write-ahead log
        shutil.copy(queue_file, elsewhere.root / queue_file.name)
        shutil.copy(queue_file, second.root / queue_file.name)
    assert not run_next_job(second)  # another project's queue holds nothing for it
    assert run_next_job(elsewhere)
    with store.transaction() as session:
        assert get_job(session, job.id).status == "finished"
    store.close()


@pytest.mark.slow
def test_a_worker_keeps_a_model_loaded_between_jobs_until_it_is_replaced_or_a_round_needs_the_memory(
    tiny_home, tiny_model, tmp_path
):
    from herdbook.feedback.curation import sync
    from herdbook.feedback.votes import cast_vote
    from herdbook.training.pipelines import PipelineCache
    from herdbook.training.rounds import plan_round
    from herdbook.training.settings import ModelChain

    from herdbook.home import load_home, set_base_model

    cache, store = PipelineCache(), tiny_home.open_store()

    def generate(seed: int) -> Job:
        with store.transaction() as session:
            job = submit(session, tiny_home, "generate", {"prompt": "an ox", "round": "base", "count": 2, "steps": 2,
                                                          "seed": seed})  # fmt: skip
        assert run_next_job(tiny_home, cache)
        with store.transaction() as session:
            return get_job(session, job.id)

    first, second = generate(0), generate(2)
    assert first.status == second.status == "finished"
    assert cache.loads == 1  # the second job drew on the model the first one loaded
    assert set(second.result["phases"]) == {"settings", "model load", "drawing and storing", "scoring"}
    assert second.result["phases"]["model load"] < first.result["phases"]["model load"]
    other = shutil.copytree(tiny_model, tmp_path / "other-base")
    set_base_model(tiny_home.root, str(other))  # the worker reads the config again for each job
    assert generate(4).status == "finished"
    assert cache.loads == 2 and cache.models == [ModelChain(str(other))]  # the replaced base is gone
    with store.transaction() as session:
        for candidate in session.scalars(select(Candidate.id)).all():
            cast_vote(session, candidate, "ann", "accept")
        home = load_home(tiny_home.root)
        sync(session, home.dataset_repo, home.root, home.config.selection)
        planned = plan_round(session, home.project, steps=1, checkpoint_every=0, validation_prompts=[])
        submit(session, home, "train", {"round_id": planned.id})
    assert run_next_job(tiny_home, cache)
    assert cache.models == []  # freed for the round
    # a worker started now loads the round just finished: what the Generate page offers first
    from herdbook.training.rounds import model_for

    from herdbook.jobs import preload_generation_model

    fresh, heard = PipelineCache(), []
    preload_generation_model(store, home, fresh, heard.append)
    with store.transaction() as session:
        assert fresh.models == [model_for(session, home.project, planned.id)[0]] != [ModelChain(str(other))]
    store.close()


def test_a_worker_without_the_training_libraries_says_so_and_goes_on(tiny_home, monkeypatch):
    """A worker on a machine without torch and diffusers can still run sync jobs: the preload says why
    it loaded nothing instead of stopping the worker."""
    from herdbook.training import pipelines

    from herdbook.jobs import preload_generation_model

    def no_libraries(settings):
        raise ModuleNotFoundError("No module named 'diffusers'")

    heard, store = [], tiny_home.open_store()
    preload_generation_model(store, tiny_home, pipelines.PipelineCache(load=no_libraries), heard.append)
    store.close()
    assert "No module named 'diffusers'" in heard[-1] and "will say why" in heard[-1]
