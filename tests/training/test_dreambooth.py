"""Dreambooth rounds on tiny random-weight models, on the CPU."""

import json
from pathlib import Path

import pytest
import torch
from herdbook.training.components import load_components
from herdbook.training.dreambooth import train
from herdbook.training.settings import ModelChain

pytestmark = pytest.mark.slow  # trains tiny models


def unet_weights(parts_or_folder):
    if hasattr(parts_or_folder, "unet"):
        return {k: v.detach().clone().float() for k, v in parts_or_folder.unet.state_dict().items()}
    return unet_weights(load_components(ModelChain(str(parts_or_folder))))


def test_a_full_round_changes_the_unet_and_lowers_the_loss(settings_for, tiny_model):
    settings = settings_for("full", steps=25, validation_prompts=["an ox"], validation_seeds=[0])
    result = train(settings)
    assert result.output.name == "model"
    from diffusers import StableDiffusionPipeline

    # plain diffusers loads it, samples with the base's own scheduler (not the training DDPM), and draws
    pipeline = StableDiffusionPipeline.from_pretrained(str(result.output), safety_checker=None)
    base_sampler = StableDiffusionPipeline.from_pretrained(str(tiny_model)).scheduler
    assert type(pipeline.scheduler).__name__ == type(base_sampler).__name__ == "PNDMScheduler"
    assert pipeline.scheduler.config == base_sampler.config
    pipeline.set_progress_bar_config(disable=True)
    images = pipeline("an ox", num_inference_steps=3, height=32, width=32, output_type="np").images
    assert images.shape == (1, 32, 32, 3)
    before, after = unet_weights(tiny_model), unet_weights(result.output)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert result.metrics["probe_loss_after"] < result.metrics["probe_loss_before"] * 0.9
    assert len(result.loss_history) == 25
    saved = json.loads((settings.output / "settings.json").read_text())
    assert saved["mode"] == "full" and saved["steps"] == 25
    assert (settings.output / "validation" / "p0-s0.png").exists()


def test_a_lora_round_trains_an_adapter_plain_diffusers_loads(settings_for, tiny_model):
    from diffusers import StableDiffusionPipeline

    settings = settings_for("lora", mode="lora", steps=25, learning_rate=1e-2)
    result = train(settings)
    assert (result.output / "pytorch_lora_weights.safetensors").exists()
    assert result.metrics["probe_loss_after"] < result.metrics["probe_loss_before"]
    pipeline = StableDiffusionPipeline.from_pretrained(str(tiny_model))
    plain = {k: v.clone() for k, v in pipeline.unet.state_dict().items()}
    pipeline.load_lora_weights(str(result.output))
    pipeline.fuse_lora()
    pipeline.unload_lora_weights()  # keeps the fused weights, drops the adapter layers
    fused = pipeline.unet.state_dict()
    changed = [k for k in plain if k in fused and not torch.equal(plain[k], fused[k])]
    assert changed, "the adapter changed no weight"


def test_lora_with_the_text_encoder_trains_both_adapters_and_plain_diffusers_loads_them(settings_for, tiny_model):
    """Fails when a fresh resolve of the dependency ranges breaks LoRA on the text encoder."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    settings = settings_for("lora-te", mode="lora", train_text_encoder=True, steps=8, learning_rate=1e-2)
    result = train(settings)
    saved = load_file(result.output / "pytorch_lora_weights.safetensors")
    assert any(k.startswith("text_encoder.") for k in saved) and any(k.startswith("unet.") for k in saved)
    pipeline = StableDiffusionPipeline.from_pretrained(str(tiny_model))
    ids = pipeline.tokenizer(["an ox"], padding="max_length", max_length=16, return_tensors="pt").input_ids
    with torch.no_grad():
        before = pipeline.text_encoder(ids)[0]
        pipeline.load_lora_weights(str(result.output))
        pipeline.fuse_lora()
        after = pipeline.text_encoder(ids)[0]
    assert not torch.allclose(before, after), "the text encoder's adapter changed nothing"
    # a round started from it loads the same chain
    from herdbook.training.settings import ModelChain

    parts = load_components(ModelChain(str(tiny_model), (str(result.output),)))
    with torch.no_grad():
        assert torch.allclose(parts.text_encoder(ids)[0], after, atol=1e-5)


def test_a_resumed_round_ends_where_an_uninterrupted_one_does(settings_for):
    whole = train(settings_for("whole", steps=6, checkpoint_every=3))

    class Crash(Exception):
        pass

    def crash_after_checkpoint(step, total, loss):
        if step == 4:
            raise Crash

    interrupted = settings_for("interrupted", steps=6, checkpoint_every=3)
    with pytest.raises(Crash):
        train(interrupted, progress=crash_after_checkpoint)
    assert (interrupted.output / "checkpoint" / "latest.pt").exists()
    resumed = train(interrupted)
    assert resumed.metrics["first_step"] == 4
    a, b = unet_weights(whole.output), unet_weights(resumed.output)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [round(x, 6) for _, x in whole.loss_history] == [round(x, 6) for _, x in resumed.loss_history]
    assert not (interrupted.output / "checkpoint" / "latest.pt").exists()


def test_a_round_stopped_after_its_weights_were_saved_resumes_without_training_again(
    settings_for, monkeypatch, tmp_path
):
    """Killed while the validation grid was drawn: the checkpoint is gone, the weights are
    safe, and a resume draws the grids (the round's from its weights, the starting model's from
    the starting model) instead of running every step again."""
    from herdbook.db.models import Round
    from herdbook.training import dreambooth
    from herdbook.training.rounds import resume_point

    settings = settings_for(
        "stopped", steps=6, checkpoint_every=3, validation_prompts=["an ox"], validation_seeds=[0],
        parent_validation_dir=str(tmp_path / "base-grid"),
    )  # fmt: skip
    draw_grid = dreambooth.validation_images

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies while the grid is drawn

    monkeypatch.setattr(dreambooth, "validation_images", stopped)
    with pytest.raises(KeyboardInterrupt):
        train(settings)
    assert settings.weights_saved_file.exists() and not settings.checkpoint_file.exists()
    saved_weights = unet_weights(settings.output / "model")
    record = Round(settings=settings.model_dump(mode="json"), step=6)
    assert resume_point(record) == "from its saved weights: only its validation grid is left to draw"

    monkeypatch.setattr(dreambooth, "validation_images", draw_grid)
    steps_run = []
    resumed = train(settings, progress=lambda step, total, loss: steps_run.append(step))
    assert steps_run == [] and resumed.metrics["steps_run"] == 0
    assert [step for step, _ in resumed.loss_history] == list(range(1, 7))  # the first run's losses, kept
    after = unet_weights(resumed.output)
    assert all(torch.equal(saved_weights[k], after[k]) for k in saved_weights)
    assert (settings.output / "validation" / "p0-s0.png").exists() and resumed.validation
    assert json.loads((tmp_path / "base-grid" / "index.json").read_text())[0]["file"] == "p0-s0.png"


def test_prior_preservation_generates_class_images_once(settings_for, tmp_path):
    class_dir = tmp_path / "class"
    train(settings_for("one", prior_preservation=True, class_dir=str(class_dir), steps=2))
    made = sorted(class_dir.glob("*.png"))
    assert len(made) == 2
    stamps = [p.stat().st_mtime_ns for p in made]
    train(settings_for("two", prior_preservation=True, class_dir=str(class_dir), steps=2))
    assert [p.stat().st_mtime_ns for p in sorted(class_dir.glob("*.png"))] == stamps


def test_rating_weights_favour_higher_rated_images(settings_for):
    from herdbook.training.losses import batch_indices, step_generator

    weights = torch.tensor([10.0, 0.001, 0.001, 0.001])
    picks = [i for step in range(1, 50) for i in batch_indices(4, 1, step_generator(0, step), weights)]
    assert picks.count(0) > 40
    from herdbook.training.data import image_files
    from herdbook.training.dreambooth import rating_weights

    settings = settings_for("weighted", rating_weights={"ox-2.png": 1e6}, steps=4)
    files = image_files(Path(settings.instance_dir))
    weights = rating_weights(files, settings.rating_weights)
    assert [f.name for f in files] == ["ox-0.png", "ox-1.png", "ox-2.png", "ox-3.png"]
    assert weights.argmax().item() == 2 and weights[0].item() == 1.0  # unrated images keep weight 1
    # the weights reach the loop: the same seed draws other images, so the losses differ
    weighted = [loss for _, loss in train(settings).loss_history]
    uniform = [loss for _, loss in train(settings_for("uniform", steps=4)).loss_history]
    assert weighted != uniform


@pytest.mark.parametrize(
    ("schedule", "warmup", "expected"),
    [
        ("constant", 0, [1e-3] * 4),
        ("constant_with_warmup", 2, [0.0, 5e-4, 1e-3, 1e-3]),
        ("cosine", 0, [1e-3, 8.535533e-4, 5e-4, 1.464466e-4]),
    ],
)
def test_learning_rate_schedules_get_their_step_counts(settings_for, schedule, warmup, expected):
    """Every supported schedule runs, with the lr each step used recorded in the metrics."""
    settings = settings_for(f"lr-{schedule}", steps=4, lr_scheduler=schedule, lr_warmup_steps=warmup)
    assert train(settings).learning_rates == pytest.approx(expected, rel=1e-5)


def test_the_fast_step_learns_what_the_reference_step_learns(settings_for, tiny_model):
    """Same data, loss, clipping and AdamW, whichever path runs them (on a GPU the fast step is
    also captured as a CUDA graph; bench/gpu_round.py checks that there)."""
    fast = train(settings_for("fast", steps=8, fast_path="auto"))
    reference = train(settings_for("reference", steps=8, fast_path="off"))
    assert fast.metrics["fast_path"] is True and reference.metrics["fast_path"] is False
    assert [loss for _, loss in fast.loss_history] == pytest.approx(
        [loss for _, loss in reference.loss_history], rel=1e-3
    )
    a, b, base = unet_weights(fast.output), unet_weights(reference.output), unet_weights(tiny_model)
    moved_fast = sum((a[k] - base[k]).abs().sum().item() for k in a)
    moved_reference = sum((b[k] - base[k]).abs().sum().item() for k in b)
    assert moved_fast == pytest.approx(moved_reference, rel=1e-3)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


def test_encoding_every_step_is_the_same_math_as_encoding_once(settings_for):
    cached = train(settings_for("cached", steps=4, fast_path="off"))
    every_step = train(settings_for("every-step", steps=4, cache_encodings=False, fast_path="off"))
    # the VAE encodes one image at a time instead of all at once: float32 rounding differs by
    # ~1e-7, which Adam's sign-like first updates carry into the weights, so not bit-identical
    assert [x for _, x in cached.loss_history] == pytest.approx([x for _, x in every_step.loss_history], rel=2e-2)


def test_checkpoints_are_written_in_the_background_and_atomically(tmp_path):
    from herdbook.training.dreambooth import CheckpointWriter

    writer = CheckpointWriter(tmp_path / "checkpoint" / "latest.pt", background=True)
    weights = torch.randn(64, 64)
    at_save = weights.clone()
    writer.save({"step": 3, "params": [weights], "note": "x"})
    weights.add_(1.0)  # training goes on; the checkpoint holds the copy taken at save
    writer.wait()
    saved = torch.load(tmp_path / "checkpoint" / "latest.pt", weights_only=False)
    assert saved["step"] == 3 and torch.equal(saved["params"][0], at_save)
    assert not (tmp_path / "checkpoint" / "latest.part").exists()


def test_a_checkpoint_write_cancelled_at_the_rounds_end_leaves_the_last_one_whole(tmp_path):
    """A round that ends while its checkpoint is still being written stops that write (its
    output supersedes it): no partial file, the previous checkpoint untouched."""
    from herdbook.training.dreambooth import CheckpointWriter

    writer = CheckpointWriter(tmp_path / "checkpoint" / "latest.pt", background=True)
    writer.save({"step": 3, "params": [torch.randn(64, 64)]})
    writer.wait()
    writer.cancelled.set()  # as if the round ended before the next write got anywhere
    writer.save({"step": 6, "params": [torch.randn(64, 64)]})
    writer.cancel()
    assert torch.load(tmp_path / "checkpoint" / "latest.pt", weights_only=False)["step"] == 3
    assert not (tmp_path / "checkpoint" / "latest.part").exists()


def test_float16_rounds_take_the_plain_path_with_its_loss_scaling(settings_for):
    from types import SimpleNamespace

    from herdbook.training.dreambooth import use_fast_path

    def fast(precision):
        return use_fast_path(settings_for("x"), SimpleNamespace(num_processes=1, mixed_precision=precision))

    assert fast("bf16") and fast("no") and not fast("fp16")


def test_losses_read_one_step_late_come_in_order_and_all_arrive():
    from herdbook.training.dreambooth import LaggedLosses

    losses = LaggedLosses(torch.device("cpu"))
    losses.add(1, torch.tensor(0.5))
    assert losses.read(but_last=True) == []  # the newest waits for the next step
    losses.add(2, torch.tensor(0.25))
    assert losses.read(but_last=True) == [(1, 0.5)]
    assert losses.read() == [(2, 0.25)] and losses.read() == []


def test_a_graphed_unet_draws_what_the_plain_one_draws(tiny_model):
    """On CPUs the wrapper calls the UNet as it is; on a GPU bench/gpu_round.py replays graphs."""
    import numpy as np
    from herdbook.training.components import sampling_pipeline
    from herdbook.training.generate import draw
    from herdbook.training.graphs import GraphedUNet

    parts = load_components(ModelChain(str(tiny_model)))
    pipeline = sampling_pipeline(parts, torch.device("cpu"), torch.float32, graphs=True)
    plain = draw(pipeline, "an ox", [0, 1], 2, 7.5, 32)
    pipeline.unet = GraphedUNet(pipeline.unet)
    assert pipeline.unet.config.in_channels == 4  # the pipeline reads the wrapped UNet's config
    graphed = draw(pipeline, "an ox", [0, 1], 2, 7.5, 32)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(plain, graphed, strict=True))


def test_a_grid_fills_each_call_across_prompts_and_each_image_is_its_own_draw(settings_for, tiny_model, monkeypatch):
    """render_grid draws the family's draw_batch images a call, prompts mixed (SD-1.5's
    2-image calls, one prompt each, left the GPU idle between them); each image is what drawing
    its prompt and seed alone gives, and the index names each file's prompt and seed."""
    import numpy as np
    from herdbook.training import dreambooth
    from herdbook.training.components import inference_dtype, sampling_pipeline
    from herdbook.training.families import SD1
    from PIL import Image

    monkeypatch.setattr(SD1, "draw_batch", 4)
    calls = []

    def counted(pipeline, prompt, seeds, *args):
        calls.append(list(zip([prompt] * len(seeds) if isinstance(prompt, str) else prompt, seeds, strict=True)))
        return dreambooth.draw.__wrapped__(pipeline, prompt, seeds, *args)

    counted.__wrapped__ = dreambooth.draw
    monkeypatch.setattr(dreambooth, "draw", counted)
    prompts = ["an ox", "an ox in the snow", "a red ox"]
    settings = settings_for("grid", validation_prompts=prompts, validation_seeds=[0, 1])
    parts = load_components(ModelChain(str(tiny_model)))
    cpu = torch.device("cpu")
    entries = dreambooth.render_grid(parts, settings, settings.output / "grid", cpu)

    assert [len(call) for call in calls] == [4, 2]
    assert calls[0][1:3] == [("an ox", 1), ("an ox in the snow", 0)]  # one call, two prompts
    assert [(e["prompt"], e["seed"]) for e in entries] == [(p, s) for p in prompts for s in (0, 1)]
    pipeline = sampling_pipeline(parts, cpu, inference_dtype(cpu))
    for entry in entries:
        (alone,) = dreambooth.draw.__wrapped__(pipeline, entry["prompt"], [entry["seed"]], 2, 7.5, settings.resolution)
        drawn = np.asarray(Image.open(settings.output / "grid" / entry["file"]), dtype=int)
        assert np.abs(drawn - np.asarray(alone, dtype=int)).max() <= 1, entry


def test_drawn_images_are_the_pipelines_own_pixels(tiny_model):
    """draw converts to 8-bit pixels itself (on the GPU where there is one): the same pixels
    diffusers' PIL output gives."""
    import numpy as np
    from herdbook.training.components import sampling_pipeline
    from herdbook.training.generate import draw

    pipeline = sampling_pipeline(load_components(ModelChain(str(tiny_model))), torch.device("cpu"), torch.bfloat16)
    drawn = draw(pipeline, "an ox", [3, 4], 2, 7.5, 32)
    theirs = pipeline(
        ["an ox"] * 2,
        num_inference_steps=2,
        height=32,
        width=32,
        generator=[torch.Generator().manual_seed(seed) for seed in (3, 4)],
    ).images
    assert [image.size for image in drawn] == [(32, 32)] * 2 and drawn[0].mode == "RGB"
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(drawn, theirs, strict=True))
    assert not np.array_equal(np.asarray(drawn[0]), np.asarray(drawn[1]))


def test_one_process_trains_rounds_of_different_precision_one_after_another(settings_for):
    """A worker runs round after round in one process; accelerate keeps state per process."""
    first = train(settings_for("fp32", steps=1, mixed_precision="no"))
    second = train(settings_for("bf16", steps=1, mixed_precision="bf16"))
    assert (first.metrics["mixed_precision"], second.metrics["mixed_precision"]) == ("no", "bf16")


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_the_bf16_fast_step_learns_what_bf16_autocast_learns(settings_for, mode):
    """The fast step runs the UNet in bf16 all through (no autocast) on the working copy of
    float32 masters (training.masters); the reference runs under accelerate's bf16 autocast."""
    fast = train(settings_for(f"fast-{mode}", mode=mode, steps=6, fast_path="auto", mixed_precision="bf16"))
    reference = train(settings_for(f"ref-{mode}", mode=mode, steps=6, fast_path="off", mixed_precision="bf16"))
    assert fast.metrics["fast_path"] and fast.metrics["mixed_precision"] == "bf16"
    fast_losses = [loss for _, loss in fast.loss_history]
    assert fast_losses == pytest.approx([loss for _, loss in reference.loss_history], rel=0.05, abs=2e-3)
    assert fast.metrics["probe_loss_after"] == pytest.approx(reference.metrics["probe_loss_after"], rel=0.05)


def test_a_round_records_where_the_users_wait_went_and_the_phases_add_up(settings_for):
    """From when the user's action began (here 2 s before the call) to the validation grid."""
    import time

    from herdbook.training.phases import ROUND_PHASES, next_round_phase

    settings = settings_for("timed", steps=3, validation_prompts=["an ox"], validation_seeds=[0])
    heard = []
    metrics = train(settings, started_at=time.time() - 2.0, on_phase=heard.append).metrics
    phases = metrics["phases"]
    # a live view hears each phase end, in the order ROUND_PHASES names them, and what comes next
    assert heard == [name for name in ROUND_PHASES if name in heard] and heard[-1] == "save, validation grid beside it"
    assert set(heard) <= set(phases) and next_round_phase("probe") == "saving the weights, drawing the validation grid"
    assert next_round_phase(heard[-1]) == "scoring the round (DINO, CLIP)"  # training.rounds.evaluate_round
    assert list(phases)[:3] == ["start-up", "libraries and GPU", "model load"]
    assert {"steps", "probe", "save, validation grid beside it"} <= set(phases)
    assert phases["start-up"] >= 2.0 and all(seconds >= 0 for seconds in phases.values())
    assert sum(phases.values()) == pytest.approx(metrics["phases_total_seconds"], abs=0.01)
    assert metrics["phases_total_seconds"] >= 2.0 + metrics["train_seconds"]
    saved = json.loads((settings.output / "metrics.json").read_text())
    assert saved["phases"] == phases


def test_a_lora_rounds_starting_grid_is_drawn_after_its_weights_are_saved_and_shows_the_base(settings_for, tmp_path):
    """The base's grid, drawn with the round's adapters switched off once the adapters are safe,
    is the grid a full round draws from the untouched base before it trains."""
    import numpy as np
    from PIL import Image

    grid = dict(validation_prompts=["an ox", "an ox on a beach"], validation_seeds=[0, 1], validation_steps=2)
    lora = settings_for("lora", mode="lora", steps=2, parent_validation_dir=str(tmp_path / "base-lora"), **grid)
    metrics = train(lora).metrics
    full = settings_for("full", mode="full", steps=1, parent_validation_dir=str(tmp_path / "base-full"), **grid)
    train(full)
    after, before = tmp_path / "base-lora", tmp_path / "base-full"
    index = json.loads((after / "index.json").read_text())
    assert len(index) == 4 and index == json.loads((before / "index.json").read_text())
    for entry in index:
        drawn_after = np.asarray(Image.open(after / entry["file"]), dtype=int)
        assert np.abs(drawn_after - np.asarray(Image.open(before / entry["file"]), dtype=int)).max() <= 1
    # the adapters themselves were on again for the round's own grid and stay in the saved weights
    assert metrics["phases"]["starting model's grid"] < metrics["phases"]["save, validation grid beside it"]
    assert 0 < metrics["weights_saved_after_seconds"] < metrics["phases_total_seconds"]


def test_the_process_start_is_read_from_the_system():
    import time

    from herdbook.training.phases import process_started_at

    started = process_started_at()
    assert started is not None and 0 < time.time() - started < 24 * 3600


def test_a_lora_rounds_grid_is_what_generate_draws_from_the_round(settings_for, tiny_model):
    """The grid is drawn from a copy with the adapters merged, as a later job loads the round:
    the same pixels `herdbook generate --round` gives at those seeds, and not the base's."""
    import numpy as np
    from herdbook.training.generate import generate_images
    from herdbook.training.settings import GenerationSettings
    from PIL import Image

    settings = settings_for(
        "lora", mode="lora", steps=3, learning_rate=5e-2, validation_prompts=["an ox"], validation_seeds=[0, 1]
    )
    result = train(settings)

    def generated(*adapters: str) -> list:
        chain = ModelChain(str(tiny_model), adapters)
        made = GenerationSettings(
            prompt="an ox", model=chain, count=2, steps=settings.validation_steps,
            guidance_scale=settings.guidance_scale, resolution=settings.resolution,
        )  # fmt: skip
        return [np.asarray(image.image, dtype=int) for image in generate_images(made)]

    grid = [np.asarray(Image.open(settings.output / "validation" / f"p0-s{seed}.png"), dtype=int) for seed in (0, 1)]
    from_round, from_base = generated(str(result.output)), generated()
    assert all(np.abs(a - b).max() <= 1 for a, b in zip(grid, from_round, strict=True))
    assert all(np.abs(a - b).max() > 8 for a, b in zip(grid, from_base, strict=True))


def test_a_sampling_copy_leaves_the_parts_it_copies_as_they_are(tiny_model):
    """The save reads the round's float32 weights while the grid is drawn from the copy."""
    from herdbook.training.components import sampling_copy

    parts = load_components(ModelChain(str(tiny_model)))
    before = unet_weights(parts)
    copy = sampling_copy(parts, torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in parts.unet.parameters())
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in copy.unet.parameters())
    assert all(p.dtype == torch.bfloat16 for p in copy.text_encoder.parameters())
    for name, weight in copy.unet.state_dict().items():
        assert torch.equal(weight, before[name].to(torch.bfloat16))
    with torch.no_grad():
        next(copy.unet.parameters()).add_(1.0)
    assert all(torch.equal(weight, before[name]) for name, weight in parts.unet.state_dict().items())
