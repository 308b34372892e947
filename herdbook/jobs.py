"""Background jobs: the one module that talks to the task queue (huey).

A job is a row in herdbook's database (what the app and CLI show: status, progress, log,
error) plus a message in huey's queue (what a worker picks up). Jobs outlive the browser
and the app: the queue is a SQLite file in the home, or Redis for several machines.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from herdbook.db.models import Job, utcnow
from herdbook.db.store import beat_while_running
from herdbook.errors import HerdbookError, JobError, NotFound
from herdbook.home import Home

LOG_LIMIT = 20_000  # characters of log kept per job
WORKER_BEAT_SECONDS = 2.0  # a worker rewrites its file this often; silent for 3 beats, it is gone
DONE = ("finished", "failed", "lost")


@dataclass
class Queue:
    huey: object  # huey.Huey
    run_job: object  # the registered task; calling it enqueues


def queue_name(project_id: str) -> str:
    """Named by the project, not the folder: two homes never share a queue, and a worker on
    another machine (with its own home on the same database) finds this one."""
    return f"herdbook-{project_id}"


def make_queue(home: Home, cache=None) -> Queue:
    """The huey instance for a home, with the one task it runs registered on it. A message
    carries the project id and the job id; each worker runs it against its own home, with
    ``cache`` (a training.pipelines.PipelineCache) keeping models loaded between its jobs."""
    from huey import RedisHuey, SqliteHuey

    queue_url = home.config.jobs.queue
    if queue_url == "sqlite":
        huey = SqliteHuey(name=queue_name(home.project_id), filename=str(home.root / "jobs.sqlite"))
    else:
        try:
            huey = RedisHuey(name=queue_name(home.project_id), url=queue_url)
        except ImportError:
            raise JobError("a redis queue needs the redis client: pip install 'herdbook[redis]'") from None

    def run_queued(project_id: str, job_id: int) -> None:
        if project_id != home.project_id:
            raise JobError(f"job {job_id} belongs to project {project_id}, not this worker's {home.project_id}")
        run_job(home, job_id, cache)

    return Queue(huey, huey.task(name="herdbook.run_job")(run_queued))


def submit(session: Session, home: Home, kind: str, params: dict) -> Job:
    """Record a job; it is queued when the caller's transaction commits (never if it rolls back),
    so a worker always finds the row it is handed."""
    if kind not in WORK:
        raise JobError(f"unknown job kind {kind!r}")
    job = Job(kind=kind, params=params, status="queued", message="waiting for a worker (herdbook worker)")
    session.add(job)
    session.flush()
    queue, job_id = make_queue(home), job.id
    event.listen(session, "after_commit", lambda _session: queue.run_job(home.project_id, job_id), once=True)
    return job


def run_job(home: Home, job_id: int, cache=None) -> None:
    """What a worker runs: the job's work, with its record kept current. The home's config is
    read again for each job: the base model may have changed since the worker started."""
    from herdbook.home import load_home

    home = load_home(home.root)
    store = home.open_store()
    try:
        _run_job(store, home, job_id, cache)
    finally:
        store.close()


def _run_job(store, home: Home, job_id: int, cache=None) -> None:
    with store.transaction() as session:
        job = session.get(Job, job_id)
        if job is None or job.status != "queued":
            return  # gone, or already taken by another worker
        job.status, job.started_at, job.worker_pid = "running", utcnow(), os.getpid()
        job.heartbeat_at, job.message = utcnow(), "starting"
        kind, params = job.kind, dict(job.params)
    beating = threading.Event()
    heart = threading.Thread(target=beat_while_running, args=(store, Job, job_id, beating), daemon=True)
    heart.start()
    reporter = JobReporter(store, job_id)
    try:
        result = WORK[kind](store, home, params, reporter, cache)
    except BaseException as error:  # a job's failure is data for the user, not a crash of the worker
        beating.set()
        with store.transaction() as session:
            job = session.get(Job, job_id)
            job.status, job.finished_at = "failed", utcnow()
            job.error = f"{type(error).__name__}: {error}"
            job.log = _clip(job.log + reporter.flush_text() + traceback.format_exc())
        if not isinstance(error, Exception):
            raise
        return
    beating.set()
    with store.transaction() as session:
        job = session.get(Job, job_id)
        job.status, job.finished_at, job.progress = "finished", utcnow(), 1.0
        job.result, job.message = result, "done"
        job.log = _clip(job.log + reporter.flush_text())


def _clip(text: str) -> str:
    return text if len(text) <= LOG_LIMIT else "…" + text[-LOG_LIMIT:]


class JobReporter:
    """Progress and log lines from the work, written to the job record at most every second."""

    def __init__(self, store, job_id: int, every: float = 1.0) -> None:
        self.store, self.job_id, self.every = store, job_id, every
        self.pending: list[str] = []
        self.last = 0.0

    def log(self, line: str) -> None:
        self.pending.append(f"{datetime.now(UTC):%H:%M:%S} {line}\n")

    def progress(self, fraction: float, message: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.every:
            return
        self.last = now
        with self.store.transaction() as session:
            job = session.get(Job, self.job_id)
            job.progress, job.message, job.heartbeat_at = max(0.0, min(1.0, fraction)), message, utcnow()
            job.log = _clip(job.log + self.flush_text())

    def partial_result(self, result: dict) -> None:
        """What the job has made so far (the Generate page shows its images as they are stored)."""
        with self.store.transaction() as session:
            job = session.get(Job, self.job_id)
            job.result, job.heartbeat_at = result, utcnow()

    def flush_text(self) -> str:
        text, self.pending = "".join(self.pending), []
        return text


# --- the work of each kind ---------------------------------------------------------------


def _generate(store, home: Home, params: dict, reporter: JobReporter, cache=None) -> dict:
    from herdbook.training.phases import PhaseClock
    from herdbook.training.rounds import current_models, generate_candidates, score_candidates

    clock = PhaseClock()

    if cache is not None:  # models the project no longer has (a deleted round, a replaced base) go
        with store.transaction() as session:
            cache.keep_only(current_models(session, home.project))

    reporter.log(
        f"generating {params.get('count', 4)} image(s) for {params['prompt']!r} from {params.get('round') or 'base'}"
    )
    reporter.progress(0.0, "loading the model", force=True)
    ids = generate_candidates(
        store,
        home.project,
        params["prompt"],
        params.get("round"),
        progress=lambda done, total: reporter.progress(done / total, f"{done}/{total} images stored"),
        cache=cache,
        clock=clock,
        stored=lambda ids: reporter.partial_result({"candidate_ids": ids}),
        **{
            k: params[k]
            for k in ("negative_prompt", "count", "seed", "steps", "resolution", "guidance_scale")
            if k in params
        },
    )
    reporter.progress(1.0, "scoring the images (DINO, CLIP)", force=True)
    unscored = score_candidates(store, home.project, ids, cache.judges if cache is not None else None)
    clock.end("scoring")
    if unscored:
        reporter.log(unscored)
    reporter.log(f"added {len(ids)} candidate(s) in {clock.total:.1f} s")
    return {"candidate_ids": ids, "phases": clock.phases}


def _train(store, home: Home, params: dict, reporter: JobReporter, cache=None) -> dict:
    from herdbook.training.phases import next_round_phase
    from herdbook.training.rounds import run_round

    if cache is not None:
        cache.clear()  # the round needs the GPU memory the loaded models hold

    round_id = params["round_id"]
    reporter.log(f"training round {round_id}")
    started, started_at = time.monotonic(), time.time()

    done = [0.0]  # the share of steps taken, for the bar while other phases run

    def on_step(step: int, total: int, loss: float) -> None:
        elapsed = time.monotonic() - started
        eta = elapsed / step * (total - step) if step else 0
        done[0] = step / total
        reporter.progress(done[0], f"step {step}/{total}, loss {loss:.4f}, ETA {timedelta(seconds=int(eta))}")

    def on_phase(ended: str) -> None:
        doing = next_round_phase(ended)
        if doing is not None and doing != "training":  # the steps report themselves
            reporter.progress(done[0], doing, force=True)

    record = run_round(
        store,
        home.project,
        round_id,
        progress=on_step,
        processes=params.get("processes", 1),
        started_at=started_at,
        on_phase=on_phase,
    )
    reporter.log(f"round {round_id} finished: {record.output_path}")
    return {"round_id": round_id, "output": record.output_path}


WORK = {"generate": _generate, "train": _train}


# --- reading jobs --------------------------------------------------------------------------


def mark_lost_jobs(session: Session, stale_after_seconds: int, now: datetime | None = None) -> list[int]:
    """Running jobs whose worker stopped beating are marked lost, so nobody waits on them."""
    now = now or utcnow()
    lost = []
    for job in session.scalars(select(Job).where(Job.status == "running").order_by(Job.id)):
        beat = job.heartbeat_at or job.started_at
        if beat is not None and beat.tzinfo is None:
            beat = beat.replace(tzinfo=UTC)
        if beat is None or now - beat > timedelta(seconds=stale_after_seconds):
            job.status, job.finished_at = "lost", now
            round_id = job.params.get("round_id") if job.kind == "train" else None
            # resume_interrupted_rounds queues the round again when a worker starts: no resubmit
            then = (
                f"the next `herdbook worker` resumes round {round_id} where it stopped"
                if round_id is not None
                else "start `herdbook worker` and submit the job again"
            )
            job.error = f"the worker (pid {job.worker_pid}) stopped answering; {then}"
            lost.append(job.id)
    return lost


def list_jobs(session: Session, limit: int = 50) -> list[Job]:
    return list(session.scalars(select(Job).order_by(Job.id.desc()).limit(limit)))


def get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


def resume_interrupted_rounds(session: Session, home: Home) -> list[int]:
    """Queue a resume for every round whose process died with no job left to carry it on
    (its job was lost with the worker, or it ran in a killed `herdbook train`)."""
    from herdbook.db.models import Round
    from herdbook.training.rounds import mark_interrupted_rounds

    stale = home.config.jobs.stale_after_seconds
    mark_lost_jobs(session, stale)
    mark_interrupted_rounds(session, stale)
    waiting = rounds_in_jobs(session)
    queued = []
    for record in session.scalars(select(Round).where(Round.status == "interrupted").order_by(Round.id)):
        if record.id not in waiting:
            submit(session, home, "train", {"round_id": record.id})
            queued.append(record.id)
    return queued


def run_worker(home: Home, workers: int = 1, announce=print) -> None:
    """Run the consumer in this process until interrupted (Ctrl-C); first queue a resume for
    every interrupted round, or else load the model Generate starts from, saying so through
    ``announce``."""
    from herdbook.training.pipelines import PipelineCache

    cache = PipelineCache()
    # commands hand their work to this worker from now on: a job sent during the preload waits
    # for it, still sooner than a process of its own would import and load
    stop = threading.Event()
    beating = threading.Thread(target=beat_as_worker, args=(home.root, stop), daemon=True, name="herdbook-worker-beat")
    beating.start()
    try:
        store = home.open_store()
        try:
            with store.transaction() as session:
                resumed = resume_interrupted_rounds(session, home)
                for round_id in resumed:
                    announce(f"round {round_id} was interrupted: queued to resume from its checkpoint")
            if not resumed:  # a round frees the memory first
                preload_generation_model(store, home, cache, announce)
        finally:
            store.close()
        # huey backs off polling an idle queue up to 10 s by default: a click waited that long for
        # its job to start. Polling a local SQLite file 4 times a second costs nothing; Redis blocks.
        consumer = make_queue(home, cache).huey.create_consumer(
            workers=workers, worker_type="thread", periodic=False, initial_delay=0.05, max_delay=0.25
        )
        consumer.run()
    finally:
        stop.set()
        beating.join()


def worker_files(home_root: Path) -> Path:
    return home_root / "workers"


def beat_as_worker(home_root: Path, stop: threading.Event, every: float = WORKER_BEAT_SECONDS) -> None:
    """Say that this process is a worker on this home, taking jobs, until ``stop``: its pid,
    host and the time, rewritten every ``every`` seconds (what ``live_worker`` reads); gone when
    it stops. A worker killed outright leaves a file whose time stops moving."""
    folder = worker_files(home_root)
    folder.mkdir(exist_ok=True)
    mine = folder / f"{socket.gethostname()}-{os.getpid()}.json"
    written = mine.with_suffix(".part")
    try:
        while True:
            written.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "at": time.time()}))
            written.replace(mine)
            if stop.wait(every):
                return
    finally:
        mine.unlink(missing_ok=True)


def live_worker(home_root: Path, now: float | None = None) -> dict | None:
    """A worker that has said in the last three beats that it runs on this home, if any."""
    workers = live_workers(home_root, now)
    return workers[0] if workers else None


def live_workers(home_root: Path, now: float | None = None) -> list[dict]:
    """The workers that have said in the last three beats that they run on this home (on this
    host, one whose process is gone does not count). Reads only: a home without workers has no
    folder for them, and gets none."""
    now = time.time() if now is None else now
    try:
        files = sorted(worker_files(home_root).glob("*.json"))
    except OSError:  # an unreadable folder: no worker this command can count on
        return []
    alive = []
    for path in files:
        try:
            beat = json.loads(path.read_text())
            at, pid, host = float(beat["at"]), int(beat["pid"]), str(beat["host"])
        except (OSError, ValueError, KeyError, TypeError):  # half-written by hand, or damaged: not a worker
            continue
        if now - at > 3 * WORKER_BEAT_SECONDS:
            continue
        if host == socket.gethostname() and not process_alive(pid):
            continue
        alive.append(beat)
    return alive


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def rounds_in_jobs(session: Session) -> set[int]:
    """The rounds a train job waits to run or is running."""
    jobs = session.scalars(select(Job).where(Job.kind == "train", Job.status.in_(("queued", "running"))))
    return {job.params.get("round_id") for job in jobs}


@dataclass
class JobState:
    """What a follower sees of a job at one moment (plain values: no session kept)."""

    id: int
    status: str
    progress: float
    message: str
    result: dict | None
    error: str | None
    worker_pid: int | None = None


def follow(store, home_root: Path, job_id: int, on_change: Callable[[JobState], None], poll: float = 0.1) -> JobState:
    """Read a job until it is done, telling ``on_change`` each time its progress or message moves;
    returns its last state. A job left running by the worker that took it, or waiting with no
    worker left, ends as it is once that worker stopped (its process gone, or silent for three
    beats), ``error`` saying so: nobody waits on it."""
    last = None
    while True:
        with store.transaction() as session:
            job = get_job(session, job_id)
            state = JobState(job.id, job.status, job.progress, job.message, job.result, job.error, job.worker_pid)
        if (state.status, state.progress, state.message) != last:
            last = (state.status, state.progress, state.message)
            on_change(state)
        if state.status in DONE:
            return state
        pids = {worker["pid"] for worker in live_workers(home_root)}
        # a running job needs the worker that took it; a waiting one, any
        if (state.worker_pid not in pids) if state.status == "running" else not pids:
            where = "running it" if state.status == "running" else "before taking it"
            state.error = f"the worker stopped {where}; `herdbook jobs` shows job {job_id}"
            return state
        time.sleep(poll)


def preload_generation_model(store, home: Home, cache, announce=print) -> None:
    """Load the model the Generate page offers first (the latest finished round, else the base)
    as it draws, before taking jobs: a worker's first job otherwise imported the model code and
    read the weights itself (9.9 s of its 13.0 on the H200, bench/user_wait.txt). Jobs queued
    meanwhile wait and then find it loaded; loading here rather than beside them keeps two
    threads from importing the same libraries at once. A model that does not load, or is not on
    this machine yet, is left to the job that needs it."""
    from herdbook.training.models import on_this_machine
    from herdbook.training.rounds import generation_settings, model_choices

    began = time.perf_counter()
    try:
        with store.transaction() as session:
            settings, _ = generation_settings(session, home.project, prompt="", round_ref=model_choices(session)[-1])
        if not on_this_machine(settings.model):  # a download is for a job someone asked for
            announce(
                f"{settings.model.describe()} is not on this machine yet: the first job that needs it downloads it"
            )
            return
        cache.preload(settings)
    # ImportError: no training libraries on this machine; RuntimeError: CUDA out of memory, say
    except (HerdbookError, OSError, ImportError, RuntimeError) as error:
        announce(f"the model Generate starts from did not load ({error}); the jobs that need it will say why")
        return
    announce(f"model loaded in {time.perf_counter() - began:.1f} s, ready to generate: {settings.model.describe()}")


def run_next_job(home: Home, cache=None) -> bool:
    """Run one queued job in this process (for scripts and tests); False when none was queued."""
    huey = make_queue(home, cache).huey
    task = huey.dequeue()
    if task is None:
        return False
    huey.execute(task)
    return True
