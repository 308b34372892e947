"""Rounds and generated candidates as records: the services the CLI, app and worker call."""

from __future__ import annotations

import io
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Candidate, Round, utcnow
from feedback.curation import export_version, resolve_version
from feedback.images import check_image_data, store_image
from herdbook.errors import HerdbookError, NotFound
from training.lineage import RoundNode, chain_for, tree_lines
from training.settings import GenerationSettings, ModelChain, RoundSettings

Progress = Callable[[int, int, float], None]


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


def model_for(session: Session, home, ref: str | int | None) -> tuple[ModelChain, int | None]:
    round_id = resolve_round(session, ref)
    return chain_for(round_id, round_nodes(session), home.config.base_model), round_id


def plan_round(
    session: Session,
    home,
    *,
    dataset: str | int = "latest",
    start_from: str | int | None = None,
    weight_by_rating: bool = False,
    **overrides,
) -> Round:
    """Record a pending round with its whole settings object; ``run_round`` trains it.

    ``overrides`` are RoundSettings fields (mode, steps, learning_rate, resolution, ...);
    anything not given comes from the project's [training] defaults."""
    defaults = home.config.training
    version = resolve_version(session, dataset)
    if version.n_selected == 0:
        raise HerdbookError(f"dataset version {version.id} selects no images: accept some, then `herdbook sync`")
    start = start_from if start_from is not None else defaults.start_from
    if start == "parent":
        newest = latest_finished(session)
        parent_id = newest.id if newest else None
    else:
        parent_id = resolve_round(session, start)
    chain = chain_for(parent_id, round_nodes(session), home.config.base_model)
    mode = overrides.pop("mode", None) or defaults.mode
    lora = mode == "lora"
    record = Round(
        parent_id=parent_id,
        base_model=home.config.base_model,
        dataset_version_id=version.id,
        mode=mode,
        status="pending",
    )
    session.add(record)
    session.flush()
    out = home.round_dir(record.id)
    settings = RoundSettings(
        instance_dir=str(out / "instance"),
        output_dir=str(out),
        model=chain,
        instance_prompt=home.config.instance_prompt,
        class_prompt=home.config.class_prompt,
        mode=mode,
        resolution=home.config.resolution,
        batch_size=defaults.batch_size,
        steps=defaults.steps,
        learning_rate=defaults.lora_learning_rate if lora else defaults.learning_rate,
        lora_rank=defaults.lora_rank,
        train_text_encoder=defaults.train_text_encoder,
        prior_preservation=defaults.prior_preservation,
        prior_loss_weight=defaults.prior_loss_weight,
        num_class_images=defaults.num_class_images,
        class_dir=str(
            home.class_images_dir
            / f"from-{'base' if parent_id is None else f'round-{parent_id:03d}'}-{home.config.resolution}px"
        ),
        mixed_precision=defaults.mixed_precision,
        gradient_checkpointing=defaults.gradient_checkpointing,
        checkpoint_every=defaults.checkpoint_every,
        validation_prompts=list(home.config.reference_prompts),
        parent_validation_dir=str(base_validation_dir(home)) if parent_id is None else "",
        weight_by_rating=weight_by_rating,
    )
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    record.settings = asdict(settings)
    session.flush()
    return record


def base_validation_dir(home) -> Path:
    return home.rounds_dir / "base-validation"


def comparison_grid(session: Session, home) -> dict:
    """Validation images of the base and every finished round at the same prompts and seeds:
    {"prompts": [...], "seeds": [...], "columns": [{"label", "images": {(prompt, seed): path}}]}."""
    import json

    columns = []
    sources = [("base", base_validation_dir(home))]
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
        prompts += [e["prompt"] for e in entries if e["prompt"] not in prompts]
        seeds += [e["seed"] for e in entries if e["seed"] not in seeds]
        columns.append({"label": label, "images": images})
    return {"prompts": prompts, "seeds": seeds, "columns": columns}


def model_choices(session: Session) -> list[str]:
    """What generation can start from: the base and every finished round."""
    finished = session.scalars(select(Round.id).where(Round.status == "finished").order_by(Round.id)).all()
    return ["base", *[str(i) for i in finished]]


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


def settings_of(record: Round) -> RoundSettings:
    return RoundSettings.from_dict(record.settings)


def start_round(session: Session, home, round_id: int) -> RoundSettings:
    """Mark the round running and put its instance images in place."""
    record = session.get(Round, round_id)
    if record is None:
        raise NotFound(f"no round {round_id}")
    if record.status == "finished":
        raise HerdbookError(f"round {round_id} has already finished")
    settings = settings_of(record)
    instance = Path(settings.instance_dir)
    if instance.exists():
        shutil.rmtree(instance)
    export_version(session, home, record.dataset_version_id, instance)
    if settings.weight_by_rating:
        import csv

        with (instance / "instance.csv").open(newline="") as handle:
            settings.rating_weights = {
                Path(row["path"]).name: 0.5 + float(row["score"]) for row in csv.DictReader(handle)
            }
    record.status, record.started_at, record.error = "running", record.started_at or utcnow(), None
    return settings


def run_round(
    store,
    home,
    round_id: int,
    components=None,
    progress: Progress | None = None,
    report_every: float = 5.0,
    processes: int = 1,
) -> Round:
    """Train a planned round; its record follows along (step, loss) and ends finished or failed.

    With ``processes`` > 1 the round runs under accelerate's launcher (one process per GPU);
    the record is then written when the launch returns."""
    from training.dreambooth import train

    with store.transaction() as session:
        settings = start_round(session, home, round_id)
    last_report = [0.0]

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
        result = train(settings, components, progress=on_step) if processes == 1 else launched(settings, processes)
    except BaseException as error:
        with store.transaction() as session:
            record = session.get(Round, round_id)
            record.status, record.error = "failed", f"{type(error).__name__}: {error}"
        raise
    with store.transaction() as session:
        record = session.get(Round, round_id)
        record.status = "finished"
        record.step = settings.steps
        record.output_path = str(result.output)
        record.loss_history = [list(x) for x in result.loss_history]
        record.metrics = {**result.metrics, "validation": result.validation}
        record.finished_at = utcnow()
        return record


def launched(settings: RoundSettings, processes: int):
    """Run the round in several processes and read back what the main process wrote."""
    import json

    import torch

    from training.dreambooth import TrainResult
    from training.launch import launch

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
                "steps": r.settings.get("steps"),
                "step": r.step,
                "status": r.status,
                "created": r.created_at.isoformat(timespec="seconds") if r.created_at else None,
                "started": r.started_at.isoformat(timespec="seconds") if r.started_at else None,
                "finished": r.finished_at.isoformat(timespec="seconds") if r.finished_at else None,
                "seconds_per_step": r.metrics.get("seconds_per_step"),
                "train_seconds": r.metrics.get("train_seconds"),
                "peak_memory_gb": r.metrics.get("peak_memory_gb"),
                "output": r.output_path,
                "error": r.error,
            }
        )
    return rows


def loss_histories(session: Session) -> dict[str, list]:
    """Each round's [step, loss] pairs, for the loss chart."""
    return {
        f"round {r.id}": r.loss_history for r in session.scalars(select(Round).order_by(Round.id)) if r.loss_history
    }


def lineage(session: Session) -> list[str]:
    return tree_lines(round_nodes(session))


def generation_settings(
    session: Session, home, prompt: str, round_ref=None, **options
) -> tuple[GenerationSettings, int | None]:
    chain, round_id = model_for(session, home, round_ref)
    options = {k: v for k, v in options.items() if v is not None}
    options.setdefault("resolution", home.config.resolution)
    return GenerationSettings(prompt=prompt, model=chain, **options), round_id


def record_generated(
    session: Session, home, settings: GenerationSettings, round_id: int | None, images
) -> list[Candidate]:
    """Store generated images as candidates with everything needed to make them again."""
    added = []
    label = "base" if round_id is None else f"round-{round_id:03d}"
    for made in images:
        buffer = io.BytesIO()
        made.image.save(buffer, format="PNG")
        checked = check_image_data(buffer.getvalue(), ".png")
        if session.scalar(select(Candidate.id).where(Candidate.sha256 == checked.sha256)) is not None:
            continue
        stored = store_image(checked, home.candidates_dir)
        candidate = Candidate(
            sha256=checked.sha256,
            path=str(stored.relative_to(home.root)),
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


def generate_candidates(store, home, prompt: str, round_ref=None, pipeline=None, progress=None, **options) -> list[int]:
    """Generate and record candidates; the model loads outside any transaction."""
    from training.generate import generate_images

    with store.transaction() as session:
        settings, round_id = generation_settings(session, home, prompt, round_ref, **options)
    images = generate_images(settings, pipeline=pipeline, progress=progress)
    with store.transaction() as session:
        return [c.id for c in record_generated(session, home, settings, round_id, images)]
