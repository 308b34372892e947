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
        ago = utcnow() - timedelta(minutes=5)
        job = Job(kind="train", status="running", params={"round_id": 3}, worker_pid=999999, started_at=ago)
        job.heartbeat_at = ago
        drawing = Job(kind="generate", status="running", params={}, worker_pid=999998, started_at=ago)
        fresh = Job(kind="train", status="running", params={}, started_at=utcnow(), heartbeat_at=utcnow())
        session.add_all([job, drawing, fresh])
        session.flush()
        assert mark_lost_jobs(session, stale_after_seconds=120) == [job.id, drawing.id]
        # a lost round is resumed by the next worker (resume_interrupted_rounds): no resubmitting
        assert job.status == "lost" and job.error == (
            "the worker (pid 999999) stopped answering; the next `herdbook worker` resumes round 3 where it stopped"
        )
        assert drawing.error.endswith("start `herdbook worker` and submit the job again")
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


def wait_until(condition, timeout=120):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_worker_says_it_is_alive_until_it_stops_and_a_gone_or_silent_one_does_not_count(tmp_path):
    import json
    import socket
    import threading

    from herdbook.jobs import WORKER_BEAT_SECONDS, beat_as_worker, live_worker

    home = tmp_path / "home"
    home.mkdir()
    assert live_worker(home) is None and not (home / "workers").exists()  # reading creates nothing
    stop = threading.Event()
    beating = threading.Thread(target=beat_as_worker, args=(home, stop, 0.05))
    beating.start()
    wait_until(lambda: live_worker(home) is not None)
    assert live_worker(home)["pid"] == os.getpid()
    stop.set()
    beating.join()
    assert live_worker(home) is None and list((home / "workers").iterdir()) == []

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host, now = socket.gethostname(), time.time()
    files = {
        "gone": {"pid": int(gone.stdout), "host": host, "at": now},  # killed outright: its file stays
        "silent": {"pid": os.getpid(), "host": "elsewhere", "at": now - 4 * WORKER_BEAT_SECONDS},
    }
    for name, beat in files.items():
        (home / "workers" / f"{name}.json").write_text(json.dumps(beat))
    (home / "workers" / "damaged.json").write_text('{"pid": ')
    assert live_worker(home, now=now) is None
    elsewhere = {"pid": 1, "host": "elsewhere", "at": now}  # another machine's worker on a shared home
    (home / "workers" / "other.json").write_text(json.dumps(elsewhere))
    assert live_worker(home, now=now) == elsewhere


def test_following_a_job_hears_its_progress_and_stops_when_its_worker_is_gone(tiny_home):
    import json
    import threading

    from herdbook.jobs import beat_as_worker, follow, live_worker

    store = tiny_home.open_store()
    with store.transaction() as session:
        job_id = submit(session, tiny_home, "generate", {"prompt": "an ox", "round": "base"}).id
    heard = []
    lost = follow(store, tiny_home.root, job_id, heard.append)  # no worker on this home
    assert (lost.status, lost.error) == (
        "queued",
        f"the worker stopped before taking it; `herdbook jobs` shows job {job_id}",
    )

    stop = threading.Event()
    beating = threading.Thread(target=beat_as_worker, args=(tiny_home.root, stop, 0.05))
    beating.start()
    wait_until(lambda: live_worker(tiny_home.root) is not None)
    heard.clear()

    def work() -> None:  # what a worker writes as it goes
        for status, progress, message in [("running", 0.5, "1/2 images stored"), ("finished", 1.0, "done")]:
            wanted = 1 if status == "running" else 2  # the states heard before this one is written
            wait_until(lambda wanted=wanted: len(heard) >= wanted)
            with store.transaction() as session:
                job = get_job(session, job_id)
                job.status, job.progress, job.message, job.worker_pid = status, progress, message, os.getpid()
                job.result = {"candidate_ids": [1, 2]} if status == "finished" else None

    writer = threading.Thread(target=work)
    writer.start()
    try:
        done = follow(store, tiny_home.root, job_id, heard.append, poll=0.01)
    finally:
        writer.join()
        stop.set()
        beating.join()
    assert [(s.status, s.message) for s in heard] == [
        ("queued", "waiting for a worker (herdbook worker)"),
        ("running", "1/2 images stored"),
        ("finished", "done"),
    ]
    assert done.result == {"candidate_ids": [1, 2]} and done.error is None

    # running in a worker that stopped, while another worker on the home goes on
    other = {"pid": 1, "host": "elsewhere", "at": time.time() + 60}
    (tiny_home.root / "workers" / "elsewhere-1.json").write_text(json.dumps(other))
    with store.transaction() as session:
        job = get_job(session, job_id)
        job.status, job.worker_pid = "running", 999_999_999  # the worker that took it is gone
    stopped = follow(store, tiny_home.root, job_id, heard.append)
    assert stopped.status == "running" and stopped.error.startswith("the worker stopped running it")


@pytest.mark.slow  # a real worker, a generation and a tiny round in it
def test_generate_and_train_hand_their_work_to_a_running_worker_and_follow_it(tmp_path):
    from click.testing import CliRunner
    from herdbook.db.models import Round

    from herdbook.cli import main
    from herdbook.home import load_home
    from herdbook.jobs import live_worker

    def run(*args):
        result = CliRunner().invoke(main, [*map(str, args), "--home", str(root)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    root = tmp_path / "demo"
    run("demo")
    for candidate in (1, 2, 3):
        run("vote", candidate, "accept", "--rater", "ann")
    run("sync")
    worker = subprocess.Popen(
        [sys.executable, "-m", "herdbook.cli", "worker", "--home", str(root)],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(lambda: live_worker(root) is not None or worker.poll() is not None)
        generated = run("generate", "--prompt", "an ox in the worker", "-n", "2", "--steps", "2")
        trained = run("train", "--mode", "lora", "--steps", "2")
        here = run("generate", "--prompt", "an ox here", "-n", "1", "--steps", "2", "--here")
        listed = run("jobs")
    finally:
        worker.terminate()
        output = worker.communicate(timeout=60)[0]
    assert f"runs in the worker (pid {worker.pid})" in generated and "Added 2 candidate(s) from base" in generated
    assert "s in the worker: settings" in generated
    assert f"runs in the worker (pid {worker.pid})" in trained and "Round 1 finished:" in trained, output
    assert "DINO" in trained  # the round's report, as a round trained here prints it
    assert "runs in the worker" not in here and "Added 1 candidate(s)" in here
    store = load_home(root).open_store()
    with store.transaction() as session:
        jobs = session.scalars(select(Job).order_by(Job.id)).all()
        assert [(job.kind, job.status, job.worker_pid) for job in jobs] == [
            ("generate", "finished", worker.pid),
            ("train", "finished", worker.pid),
        ]
        assert session.get(Round, 1).status == "finished"
    assert f"a worker runs on this home (pid {worker.pid} on " in listed
    assert live_worker(root) is None  # a stopped worker says so
    assert "no worker runs on this home" in run("jobs")
