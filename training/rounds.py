"""Rounds and generated candidates as records: the services the CLI, app and worker call."""

from __future__ import annotations

import io
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path

from herdbook.db.errors import HerdbookError, NotFound
from herdbook.db.models import Candidate, Round, utcnow
from herdbook.db.store import beat_while_running
from herdbook.feedback.curation import export_version, resolve_version
from herdbook.feedback.images import CheckedImage, check_image_data, store_image
from herdbook.training.errors import ModelLoadError
from herdbook.training.lineage import RoundNode, chain_for, tree_lines
from herdbook.training.models import hub_reachable, model_family, model_problem, model_sampler
from herdbook.training.phases import PhaseClock
from herdbook.training.settings import (
    EvaluationSettings,
    GenerationSettings,
    ModelChain,
    RoundSettings,
    TrainingDefaults,
    class_images_key,
)
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

Progress = Callable[[int, int, float], None]


@dataclass(frozen=True)
class Project:
    """What rounds and generation need to know of a project, as plain values (the project's
    config and folders; the top layer builds one)."""

    root: Path  # candidate paths are relative to it
    dataset_dir: Path  # the Oxen repository of curated datasets
    base_model: str
    instance_prompt: str
    class_prompt: str
    resolution: int | None  # None: the model family's default
    reference_prompts: tuple[str, ...]
    training: TrainingDefaults
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)

    @property
    def candidates_dir(self) -> Path:
        return self.root / "candidates"

    @property
    def rounds_dir(self) -> Path:
        return self.root / "rounds"

    @property
    def class_images_dir(self) -> Path:
        return self.root / "class-images"

    def round_dir(self, round_id: int) -> Path:
        return self.rounds_dir / f"round-{round_id:03d}"


def round_nodes(session: Session) -> dict[int, RoundNode]:
    return {
        r.id: RoundNode(r.id, r.parent_id, r.mode, r.status, r.base_model, r.output_path)
        for r in session.scalars(select(Round).order_by(Round.id))
    }


def latest_finished(session: Session) -> Round | None:
    return session.scalars(
        select(Round).where(Round.status == "finished").order_by(Round.id.desc()).limit(1)
    ).one_or_none()


def resolve_round(session: Session, ref: str | int | None) -> int | None:
    """'base' (or None) -> None; 'latest' -> the newest finished round; a number -> that round."""
    text = "base" if ref is None else str(ref).strip().lower()
    if text == "base":
        return None
    if text == "latest":
        newest = latest_finished(session)
        if newest is None:
            raise NotFound("no round has finished yet; use --round base")
        return newest.id
    if not text.isdigit() or session.get(Round, int(text)) is None:
        raise NotFound(f"no round {ref!r} (see `herdbook rounds`)")
    return int(text)


def model_for(session: Session, project: Project, ref: str | int | None) -> tuple[ModelChain, int | None]:
    round_id = resolve_round(session, ref)
    return chain_for(round_id, round_nodes(session), project.base_model), round_id


def plan_round(
    session: Session,
    project: Project,
    *,
    dataset: str | int = "latest",
    start_from: str | int | None = None,
    weight_by_rating: bool = False,
    **overrides,
) -> Round:
    """Record a pending round with its whole settings object; ``run_round`` trains it.

    ``overrides`` are RoundSettings fields (mode, steps, learning_rate, resolution, ...);
    anything not given comes from the project's [training] defaults."""
    defaults = project.training
    version = resolve_version(session, dataset)
    if version.n_selected == 0:
        raise HerdbookError(f"dataset version {version.id} selects no images: accept some, then `herdbook sync`")
    start = start_from if start_from is not None else defaults.start_from
    if start == "parent":
        newest = latest_finished(session)
        parent_id = newest.id if newest else None
    else:
        parent_id = resolve_round(session, start)
    chain = chain_for(parent_id, round_nodes(session), project.base_model)
    problem = chain_problem(chain)
    if problem:  # refused before anything is recorded
        raise ModelLoadError(problem)
    family = model_family(chain.pipeline)
    changes = {k: v for k, v in overrides.items() if v is not None}
    options = defaults.for_round(changes.pop("mode", None))
    if weight_by_rating:
        options["weight_by_rating"] = True
    # checked before anything is recorded: a bad value leaves no pending round behind
    settings = RoundSettings.from_dict(
        {
            **options,
            "instance_dir": "",
            "output_dir": "",
            "model": chain,
            "family": family.name,
            "instance_prompt": project.instance_prompt,
            "class_prompt": project.class_prompt,
            "resolution": project.resolution or family.default_resolution,
            "guidance_scale": family.default_guidance,
            # the validation grid is the evaluation set: reference prompts and new contexts, 4 seeds
            "validation_prompts": project.evaluation.prompts(project.instance_prompt, project.reference_prompts),
            "validation_seeds": list(project.evaluation.seeds),
            "parent_validation_dir": str(base_validation_dir(project)) if parent_id is None else "",
            **changes,
        }
    )
    record = Round(
        parent_id=parent_id,
        base_model=project.base_model,
        dataset_version_id=version.id,
        mode=settings.mode,
        status="pending",
    )
    session.add(record)
    session.flush()
    out = project.round_dir(record.id)
    class_dir = settings.class_dir or str(
        project.class_images_dir
        / class_images_key(
            chain, settings.class_prompt, settings.resolution, settings.generation_steps, settings.guidance_scale
        )
    )
    settings = settings.with_changes(instance_dir=str(out / "instance"), output_dir=str(out), class_dir=class_dir)
    record.settings = settings.model_dump(mode="json")
    session.flush()
    return record


def base_validation_dir(project: Project) -> Path:
    """The base model's grid, drawn once per base: a new base model gets a folder of its own."""
    import hashlib

    return project.rounds_dir / "base-validation" / hashlib.sha256(project.base_model.encode()).hexdigest()[:12]


def comparison_grid(session: Session, project) -> dict:
    """Validation images of the base and every finished round at the same prompts and seeds:
    {"prompts": [...], "seeds": [...], "columns": [{"label", "images": {(prompt, seed): path}}]}."""
    import json

    columns = []
    sources = [("base", base_validation_dir(project))]
    sources += [
        (f"round {r.id} ({r.mode})", Path(r.settings["output_dir"]) / "validation")
        for r in session.scalars(select(Round).where(Round.status == "finished").order_by(Round.id))
    ]
    prompts: list[str] = []
    seeds: list[int] = []
    for label, folder in sources:
        index = folder / "index.json"
        if not index.exists():
            continue
        entries = json.loads(index.read_text())
        images = {(e["prompt"], e["seed"]): folder / e["file"] for e in entries}
        prompts += [prompt for prompt in dict.fromkeys(e["prompt"] for e in entries) if prompt not in prompts]
        seeds += [seed for seed in dict.fromkeys(e["seed"] for e in entries) if seed not in seeds]
        columns.append({"label": label, "images": images})
    return {"prompts": prompts, "seeds": seeds, "columns": columns}


def model_choices(session: Session) -> list[str]:
    """What generation can start from: the base and every finished round."""
    finished = session.scalars(select(Round.id).where(Round.status == "finished").order_by(Round.id)).all()
    return ["base", *[str(i) for i in finished]]


def chain_problem(chain: ModelChain, reachable=None) -> str | None:
    """``model_problem`` with where to set the base model."""
    problem = model_problem(chain, reachable or hub_reachable)
    if problem is None:
        return None
    return (
        f"{problem}. The base model is set by base_model in herdbook.toml (a hub id such as "
        "stable-diffusion-v1-5/stable-diffusion-v1-5 or a local diffusers folder); on a machine without the hub, "
        "point it at a local folder"
    )


def training_available() -> str | None:
    """None when torch and diffusers can be imported; otherwise what to install."""
    import importlib.util

    missing = [
        name
        for name in ("torch", "diffusers", "transformers", "accelerate", "peft")
        if importlib.util.find_spec(name) is None
    ]
    if missing:
        return f"{', '.join(missing)} not installed: pip install 'herdbook[train]'"
    return None


def planned_settings(session: Session, round_id: int) -> RoundSettings:
    """A recorded round's settings: the model it starts from, its mode."""
    return settings_of(get_round(session, round_id))


def settings_of(record: Round) -> RoundSettings:
    return RoundSettings.from_dict(record.settings)


def resume_point(record: Round) -> str:
    """Where a resume of ``record`` carries on from, as the files on disk say."""
    settings = settings_of(record)
    if settings.weights_saved_file.exists():
        return "from its saved weights: only its validation grid is left to draw"
    if settings.checkpoint_file.exists():
        return f"from its last checkpoint (last recorded at step {record.step})"
    return "from the start: it has no checkpoint yet"


HEARTBEAT_SECONDS = 5.0  # a training round's record is touched this often while it runs


def _aware(moment):
    return moment if moment is None or moment.tzinfo else moment.replace(tzinfo=UTC)


def heartbeat_age(record: Round, now=None) -> float | None:
    """Seconds since the round's process last beat (or started); None if it never did."""
    beat = _aware(record.heartbeat_at or record.started_at)
    return None if beat is None else ((now or utcnow()) - beat).total_seconds()


def is_alive(record: Round, stale_after_seconds: float, now=None) -> bool:
    """A running round whose process still beats."""
    age = heartbeat_age(record, now)
    return record.status == "running" and age is not None and age <= stale_after_seconds


def training_elsewhere(record: Round, stale_after_seconds: float, doing: str = "") -> HerdbookError:
    """The refusal for a round that still beats (`is_alive`): which process holds it, and, for
    a process that was just killed, when the round will count as interrupted."""
    age = heartbeat_age(record)
    wait = max(1, round(stale_after_seconds - age))
    return HerdbookError(
        f"round {record.id} is training in another process (its last heartbeat {age:.0f} s ago){doing}. "
        f"If that process was stopped, the round counts as interrupted in {wait} s: try again then"
    )


def mark_interrupted_rounds(session: Session, stale_after_seconds: float) -> list[int]:
    """Running rounds whose process stopped beating (killed, machine lost) become interrupted:
    their checkpoint is kept and `herdbook rounds resume` carries on from it."""
    now = utcnow()
    stopped = []
    for record in session.scalars(select(Round).where(Round.status == "running")):
        if not is_alive(record, stale_after_seconds, now):
            record.status = "interrupted"
            record.error = (
                f"its process stopped at step {record.step}; resume it (`herdbook rounds resume {record.id}`)"
            )
            stopped.append(record.id)
    return stopped


def cancel_round(session: Session, round_id: int, stale_after_seconds: float) -> Round:
    """A round that will not run (again): pending, interrupted or failed ones."""
    record = get_round(session, round_id)
    if record.status == "finished":
        raise HerdbookError(f"round {round_id} has finished; nothing to cancel")
    if is_alive(record, stale_after_seconds):
        raise training_elsewhere(record, stale_after_seconds, "; stop that process first")
    record.status, record.finished_at = "cancelled", utcnow()
    record.error = record.error or "cancelled"
    return record


def delete_round(session: Session, project: Project, round_id: int) -> Path:
    """Forget a failed or cancelled round, so it leaves the lineage. Returns its folder, for
    `remove_round_files` once the caller's transaction has committed (files go last: a crash
    in between leaves a stray folder, never a record without its files)."""
    record = get_round(session, round_id)
    if record.status not in ("failed", "cancelled"):
        raise HerdbookError(
            f"round {round_id} is {record.status}; only failed or cancelled rounds can be deleted"
            + (" (cancel it first)" if record.status in ("pending", "interrupted") else "")
        )
    children = session.scalars(select(Round.id).where(Round.parent_id == round_id)).all()
    if children:
        raise HerdbookError(
            f"round {round_id} is the parent of round(s) {', '.join(map(str, children))}; delete those first"
        )
    if session.scalar(select(func.count()).where(Candidate.round_id == round_id)):
        raise HerdbookError(f"round {round_id} made candidates; it stays in the lineage")
    session.delete(record)
    session.flush()
    return project.round_dir(round_id)


def remove_round_files(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def resumable(session: Session, round_id: int, stale_after_seconds: float) -> Round:
    """The round, if it can start or carry on (what `start_round` will accept)."""
    record = get_round(session, round_id)
    if record.status in ("finished", "cancelled"):
        raise HerdbookError(f"round {round_id} is {record.status}; nothing to resume")
    if is_alive(record, stale_after_seconds):
        raise training_elsewhere(record, stale_after_seconds)
    return record


def get_round(session: Session, round_id: int) -> Round:
    record = session.get(Round, round_id)
    if record is None:
        raise NotFound(f"no round {round_id} (see `herdbook rounds`)")
    return record


def claim_round(session: Session, round_id: int, stale_after_seconds: float = 120) -> Round:
    """Mark the round running for this process alone; commit before touching its files.

    A pending, interrupted or failed round may start (or resume from its checkpoint); a
    finished, cancelled or live one is refused. The check and the mark are one conditional
    UPDATE, so of two processes resuming the same round at once the second is refused (both
    once cleared its instance folder while the other was filling it)."""
    record = get_round(session, round_id)
    if record.status == "finished":
        raise HerdbookError(f"round {round_id} has already finished")
    if record.status == "cancelled":
        raise HerdbookError(f"round {round_id} was cancelled; plan a new round instead")
    if is_alive(record, stale_after_seconds):
        raise training_elsewhere(record, stale_after_seconds)
    now = utcnow()
    seen = Round.heartbeat_at.is_(None) if record.heartbeat_at is None else Round.heartbeat_at == record.heartbeat_at
    claimed = session.execute(
        update(Round)
        .where(Round.id == round_id, Round.status == record.status, seen)
        .values(status="running", started_at=record.started_at or now, heartbeat_at=now, error=None)
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:
        raise HerdbookError(f"round {round_id} was just started by another process; one round trains in one process")
    session.refresh(record)
    return record


def start_round(session: Session, project: Project, round_id: int) -> RoundSettings:
    """Put the instance images of a round this process claimed (`claim_round`) in place."""
    record = get_round(session, round_id)
    settings = settings_of(record)
    instance = Path(settings.instance_dir)
    if instance.exists():
        shutil.rmtree(instance)
    export_version(session, project.dataset_dir, record.dataset_version_id, instance)
    if settings.weight_by_rating:
        import csv

        with (instance / "instance.csv").open(newline="") as handle:
            settings.rating_weights = {
                Path(row["path"]).name: 0.5 + float(row["score"]) for row in csv.DictReader(handle)
            }
        record.settings = settings.model_dump(mode="json")  # the weights it trained with, for reproducing it
    return settings


def run_round(
    store,
    project: Project,
    round_id: int,
    components=None,
    progress: Progress | None = None,
    report_every: float = 5.0,
    processes: int = 1,
    started_at: float | None = None,
    prepare: Callable[[], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> Round:
    """Train a planned round; its record follows along (step, loss) and ends finished or failed.

    With ``processes`` > 1 the round runs under accelerate's launcher (one process per GPU);
    the record is then written when the launch returns. ``started_at`` (time.time()) is when the
    user's action began: the round's phases then count the wait before training too. ``prepare``
    runs once the round's data are in place, before the trainer is imported; ``on_phase`` hears
    each of the round's phases end (one process only)."""
    with store.transaction() as session:
        claim_round(session, round_id)
    with store.transaction() as session:
        settings = start_round(session, project, round_id)  # exports the dataset: no torch needed yet
    last_report = [0.0]
    beating = threading.Event()
    heart = threading.Thread(target=beat_while_running, args=(store, Round, round_id, beating, HEARTBEAT_SECONDS))
    heart.daemon = True
    heart.start()

    def on_step(step: int, total: int, loss: float) -> None:
        now = time.monotonic()
        if now - last_report[0] >= report_every or step == total:
            last_report[0] = now
            with store.transaction() as session:
                record = session.get(Round, round_id)
                record.step = step
                record.loss_history = [*record.loss_history, [step, loss]]
        if progress is not None:
            progress(step, total, loss)

    try:
        if prepare is not None:
            prepare()
        if processes == 1:
            from herdbook.training.dreambooth import train

            result = train(settings, components, progress=on_step, started_at=started_at, on_phase=on_phase)
        else:
            result = launched(settings, processes)
    except BaseException as error:
        beating.set()
        with store.transaction() as session:
            record = session.get(Round, round_id)
            record.status, record.error = "failed", f"{type(error).__name__}: {error}"
        raise
    beating.set()
    with store.transaction() as session:
        record = session.get(Round, round_id)
        record.status = "finished"
        record.step = settings.steps
        record.output_path = str(result.output)
        record.loss_history = [list(x) for x in result.loss_history]
        record.metrics = {**result.metrics, "validation": result.validation}
        record.finished_at = utcnow()
    evaluate_round(store, project, round_id, waited_for=True)  # the round is usable meanwhile: its weights are saved
    with store.transaction() as session:
        return session.get(Round, round_id)


def starting_grid(session: Session, project: Project, record: Round) -> Path:
    """The validation grid of the model a round started from: the base's, or its parent round's."""
    if record.parent_id is None:
        return Path(record.settings.get("parent_validation_dir") or base_validation_dir(project))
    return Path(get_round(session, record.parent_id).settings["output_dir"]) / "validation"


def evaluate_round(store, project: Project, round_id: int, embedders=None, waited_for: bool = False) -> dict:
    """Score a finished round's validation grid, and its starting model's, against the round's
    instance images (training.evaluation: DINO, CLIP-I, CLIP-T). The report, or one line saying
    why there is none, is stored with the round and in its metrics.json; the round stays finished
    either way. ``embedders``: DINO and CLIP already loaded (a worker's, a test's). ``waited_for``:
    run as the end of the round's own command or job, so its time is one of the round's phases."""
    from herdbook.training.evaluation import EvaluationUnavailable

    with store.transaction() as session:
        record = get_round(session, round_id)
        if record.status != "finished":
            raise HerdbookError(f"round {round_id} is {record.status}: only a finished round has a report")
        settings = settings_of(record)
        start = starting_grid(session, project, record)
    began = time.perf_counter()
    try:
        if not project.evaluation.enabled:
            raise EvaluationUnavailable("it is off in herdbook.toml ([evaluation] enabled = false)")
        from herdbook.training.data import image_files
        from herdbook.training.evaluation import Embedders, round_report

        embedders = embedders or Embedders(project.evaluation)
        instance = Path(settings.instance_dir)
        files = image_files(instance) if instance.is_dir() else []
        report = round_report(embedders, settings.output / "validation", start, files)
        report["seconds"] = round(time.perf_counter() - began, 3)
    except EvaluationUnavailable as error:
        report = {"error": f"no fidelity report: {error}"}
    except (OSError, RuntimeError, ValueError) as error:  # a damaged image, GPU memory: the round stays finished
        report = {"error": f"no fidelity report: {type(error).__name__}: {str(error).splitlines()[0]}"}
    metrics_file = settings.output / "metrics.json"
    if metrics_file.is_file():
        import json

        metrics_file.write_text(json.dumps({**json.loads(metrics_file.read_text()), "evaluation": report}, indent=2))
    with store.transaction() as session:
        record = get_round(session, round_id)
        metrics = {**record.metrics, "evaluation": report}
        if waited_for and "phases" in metrics:
            spent = time.perf_counter() - began
            metrics["phases"] = {**metrics["phases"], "fidelity report": round(spent, 3)}
            metrics["phases_total_seconds"] = metrics.get("phases_total_seconds", 0) + spent
        record.metrics = metrics
    return report


def launched(settings: RoundSettings, processes: int):
    """Run the round in several processes and read back what the main process wrote."""
    import json

    import torch
    from herdbook.training.dreambooth import TrainResult
    from herdbook.training.launch import launch

    launch(settings, processes, cpu=not torch.cuda.is_available())
    metrics = json.loads((settings.output / "metrics.json").read_text())
    history = [tuple(x) for x in metrics.pop("loss_history")]
    output = settings.output / ("model" if settings.mode == "full" else "lora")
    index = settings.output / "validation" / "index.json"
    validation = json.loads(index.read_text()) if index.exists() else []
    return TrainResult(output, history, metrics, validation)


def list_rounds(session: Session) -> list[dict]:
    rows = []
    for r in session.scalars(select(Round).order_by(Round.id)):
        rows.append(
            {
                "id": r.id,
                "parent": r.parent_id,
                "dataset_version": r.dataset_version_id,
                "mode": r.mode,
                "family": r.settings.get("family") or "sd1",  # rounds from before SDXL were all SD-1.x
                "resolution": r.settings.get("resolution"),
                "steps": r.settings.get("steps"),
                "step": r.step,
                "status": r.status,
                "created": r.created_at.isoformat(timespec="seconds") if r.created_at else None,
                "started": r.started_at.isoformat(timespec="seconds") if r.started_at else None,
                "finished": r.finished_at.isoformat(timespec="seconds") if r.finished_at else None,
                "seconds_per_step": r.metrics.get("seconds_per_step"),
                "train_seconds": r.metrics.get("train_seconds"),
                "peak_memory_gb": r.metrics.get("peak_memory_gb"),
                "phases": r.metrics.get("phases"),  # seconds the user waited, by phase
                "weights_saved_after_seconds": r.metrics.get("weights_saved_after_seconds"),
                **fidelity_of(r.metrics.get("evaluation")),
                "output": r.output_path,
                "error": r.error,
            }
        )
    return rows


def fidelity_of(report: dict | None) -> dict:
    """A round's fidelity means under the keys `rounds --json` prints (None where not measured),
    its starting model's beside them, and why a report is missing."""
    report = report or {}
    start = report.get("start") or {}
    figures = {key: (report.get(key) or {}).get("mean") for key in ("dino", "clip_i", "clip_t")}
    started = {f"start_{key}": (start.get(key) or {}).get("mean") for key in ("dino", "clip_i", "clip_t")}
    missing = report.get("error") or (None if report else "no fidelity report yet")
    return {**figures, **started, "fidelity_missing": missing, "fidelity_report": report or None}


FIDELITY_NAMES = {"dino": "DINO", "clip_i": "CLIP-I", "clip_t": "CLIP-T"}


def report_lines(report: dict | None) -> list[str]:
    """A round's fidelity report as a person reads it: each figure with its spread, the starting
    model's beside it; or the one line that says why there is none."""
    if not report:
        return ["no fidelity report yet (`herdbook rounds evaluate ROUND` makes one)"]
    if "error" in report:
        return [report["error"]]
    start = report.get("start") or {}
    lines = []
    for key, name in FIDELITY_NAMES.items():
        figure = report[key]
        line = f"{name:<7}{figure['mean']:.3f} ± {figure['spread']:.3f} over {figure['images']} images"
        if key in start:
            line += f"  (starting model {start[key]['mean']:.3f}, {figure['mean'] - start[key]['mean']:+.3f})"
        lines.append(line)
    lines.append(
        f"against {report['instance_images']} instance images; {report['models']['dino']}, {report['models']['clip']}"
        f" in {report['dtype']}, {report.get('seconds', 0):.1f} s"
    )
    return lines


def round_report_of(session: Session, round_id: int) -> dict | None:
    return get_round(session, round_id).metrics.get("evaluation")


def loss_histories(session: Session) -> dict[str, list]:
    """Each round's [step, loss] pairs, for the loss chart."""
    return {
        f"round {r.id}": r.loss_history for r in session.scalars(select(Round).order_by(Round.id)) if r.loss_history
    }


def lineage(session: Session) -> list[str]:
    return tree_lines(round_nodes(session))


def family_label(name: str, resolution: int | None = None) -> str | None:
    """What the pipeline ``name`` is and the size it draws at, e.g. "SDXL, 1024 px": the
    project's ``resolution`` where one is set, else the family's own. None where the model
    cannot be read (the model check says why)."""
    try:
        family = model_family(name)
    except HerdbookError:
        return None
    return f"{family.label}, {resolution or family.default_resolution} px"


def generation_settings(
    session: Session, project, prompt: str, round_ref=None, **options
) -> tuple[GenerationSettings, int | None]:
    """What a generation job draws: the size, guidance and sampler left unset are the model family's own."""
    chain, round_id = model_for(session, project, round_ref)
    options = {k: v for k, v in options.items() if v is not None}
    if "resolution" not in options and project.resolution:
        options["resolution"] = project.resolution
    family = model_family(chain.pipeline)
    options.setdefault("resolution", family.default_resolution)
    options.setdefault("guidance_scale", family.default_guidance)
    # named, not left to the pipeline, so each candidate records the sampler that drew it
    options.setdefault("scheduler", family.default_scheduler or model_sampler(chain.pipeline))
    return GenerationSettings(prompt=prompt, model=chain, **options), round_id


def png_checked(made) -> CheckedImage:
    """A drawn image as the PNG bytes that are stored, checked as an imported file is."""
    buffer = io.BytesIO()
    made.image.save(buffer, format="PNG")
    return check_image_data(buffer.getvalue(), ".png")


def encoded_batch(images: list) -> list[CheckedImage]:
    """A batch's images as stored PNGs, side by side: PNG encoding and hashing let go of the GIL,
    and the last batch of a draw is stored while the user waits."""
    with ThreadPoolExecutor(max(1, min(len(images), 8)), thread_name_prefix="herdbook-encode") as pool:
        return list(pool.map(png_checked, images))


def record_generated(
    session: Session,
    project,
    settings: GenerationSettings,
    round_id: int | None,
    images: list,
    encoded: list[CheckedImage],
) -> list[Candidate]:
    """Store generated images (``encoded``: theirs, from encoded_batch) as candidates with
    everything needed to make them again."""
    added = []
    label = "base" if round_id is None else f"round-{round_id:03d}"
    for made, checked in zip(images, encoded, strict=True):
        if session.scalar(select(Candidate.id).where(Candidate.sha256 == checked.sha256)) is not None:
            continue
        stored = store_image(checked, project.candidates_dir)
        candidate = Candidate(
            sha256=checked.sha256,
            path=str(stored.relative_to(project.root)),
            source_name=f"{label}-seed-{made.seed}.png",
            prompt=settings.prompt,
            negative_prompt=settings.negative_prompt,
            seed=made.seed,
            generation={
                "model": settings.model.describe(),
                "scheduler": settings.scheduler,
                "steps": settings.steps,
                "guidance_scale": settings.guidance_scale,
                "resolution": settings.resolution,
            },
            extra={},
            round_id=round_id,
            width=checked.width,
            height=checked.height,
            phash=checked.phash,
        )
        session.add(candidate)
        added.append(candidate)
    session.flush()
    return added


SCORED_AT_ONCE = 128  # candidates read, scored and stored per transaction: memory stays flat


def score_candidates(store, project: Project, ids: list[int], load_judges=None) -> str | None:
    """Store each candidate's DINO similarity to the current instance set (the latest dataset
    version's selection; an image in it leaves its own copy out) and CLIP similarity to its own
    prompt. Returns why they were not scored, or None. ``load_judges(settings)`` gives the
    training.evaluation.Embedders (a worker's cache keeps them loaded); by default they load here."""
    from herdbook.feedback.curation import latest_version
    from herdbook.training.evaluation import EvaluationUnavailable, candidate_scores, read_images

    if not ids:
        return None
    settings = project.evaluation
    if not (settings.enabled and settings.score_candidates):
        return "scoring candidates is off in herdbook.toml ([evaluation])"
    with store.transaction() as session:
        version = latest_version(session)
        selected = version.selected_ids if version else []
        instance = session.execute(select(Candidate.id, Candidate.path).where(Candidate.id.in_(selected))).all()
    instance = [(cid, path) for cid, path in instance if (project.root / path).is_file()]
    position = {cid: index for index, (cid, _) in enumerate(instance)}
    damaged: list[int] = []
    try:
        if load_judges is None:
            from herdbook.training.evaluation import Embedders as load_judges
        judges = load_judges(settings)
        # no dataset version yet: no instance set, so DINO stays unset and CLIP-T is still scored
        reference = judges.dino(read_images([project.root / path for _, path in instance])) if instance else []
        for start in range(0, len(ids), SCORED_AT_ONCE):
            with store.transaction() as session:
                rows = session.execute(
                    select(Candidate.id, Candidate.path, Candidate.prompt).where(
                        Candidate.id.in_(ids[start : start + SCORED_AT_ONCE])
                    )
                ).all()
            readable = [(row, image) for row in rows if (image := _readable(project.root / row[1])) is not None]
            damaged += sorted({row[0] for row in rows} - {row[0] for row, _ in readable})
            rows, images = [row for row, _ in readable], [image for _, image in readable]
            if not rows:
                continue
            scores = candidate_scores(
                judges, images, [p for _, _, p in rows], reference, [position.get(cid) for cid, _, _ in rows]
            )
            with store.transaction() as session:
                for (cid, _, _), (dino, clip_t) in zip(rows, scores, strict=True):
                    session.execute(update(Candidate).where(Candidate.id == cid).values(dino=dino, clip_t=clip_t))
    except EvaluationUnavailable as error:
        return f"candidates not scored: {error}"
    except (OSError, RuntimeError, ValueError) as error:  # GPU memory, a damaged instance image: nothing lost
        return f"candidates not scored: {type(error).__name__}: {str(error).splitlines()[0]}"
    if damaged:  # the others are scored; these want `herdbook doctor`
        return f"candidates {', '.join(map(str, damaged))} not scored: their files are missing or damaged"
    return None


def _readable(path: Path):
    from herdbook.training.evaluation import read_images

    try:
        return read_images([path])[0]
    except OSError:  # missing, truncated or not an image
        return None


def current_models(session: Session, project: Project) -> set[ModelChain]:
    """Every model generation can start from now: the base and each finished round's."""
    nodes = round_nodes(session)
    finished = [round_id for round_id, node in nodes.items() if node.status == "finished"]
    return {chain_for(round_id, nodes, project.base_model) for round_id in [None, *finished]}


def generate_candidates(
    store,
    project: Project,
    prompt: str,
    round_ref=None,
    pipeline=None,
    progress=None,
    cache=None,
    clock: PhaseClock | None = None,
    stored: Callable[[list[int]], None] | None = None,
    **options,
) -> list[int]:
    """Generate and record candidates, each batch stored as soon as it is drawn (``stored`` hears
    the ids so far after each); the model loads (or comes from ``cache``, a
    training.pipelines.PipelineCache) outside any transaction. ``clock`` (training.phases) gets
    the phases: settings, model load, drawing and storing."""
    from contextlib import nullcontext

    from herdbook.training.generate import generate_batches, load_pipeline

    clock = clock or PhaseClock()
    with store.transaction() as session:
        settings, round_id = generation_settings(session, project, prompt, round_ref, **options)
    clock.end("settings")
    ids: list[int] = []
    drawn = 0

    def store_batch(images) -> tuple[list[int], int]:
        encoded = encoded_batch(images)  # before the transaction: no session waits on the encoding
        with store.transaction() as session:
            return [c.id for c in record_generated(session, project, settings, round_id, images, encoded)], len(images)

    def stored_now(batch: tuple[list[int], int]) -> None:
        nonlocal drawn
        ids.extend(batch[0])
        drawn += batch[1]
        if stored is not None:
            stored(list(ids))
        if progress is not None:
            progress(drawn, settings.count)

    if pipeline is None and cache is None:
        pipeline = load_pipeline(settings)
    # each batch is stored (PNG, hashes, rows) while the next one is drawn
    with (
        cache.using(settings) if cache is not None else nullcontext(pipeline) as loaded,
        ThreadPoolExecutor(1, thread_name_prefix="herdbook-store") as storer,
    ):
        clock.end("model load")
        storing = None
        for images in generate_batches(settings, pipeline=loaded):
            if storing is not None:
                stored_now(storing.result())
            storing = storer.submit(store_batch, images)
        if storing is not None:
            stored_now(storing.result())
    clock.end("drawing and storing")
    return ids
