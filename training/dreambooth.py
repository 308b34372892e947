"""A Dreambooth round: teach the model the character from a handful of curated images.

One function, ``train``, reads top to bottom like the loop it is; the helpers below it
set up the parts. It runs the same on one CPU, one GPU, or several GPUs under
``accelerate launch`` (each process takes its slice of the same global batch).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from herdbook.training.components import (
    PRECOMPILED_ATTENTION,
    Components,
    inference_dtype,
    load_components,
    make_pipeline,
    sampling_copy,
    sampling_pipeline,
)
from herdbook.training.data import image_files, load_images
from herdbook.training.generate import draw
from herdbook.training.graphs import CapturedStep
from herdbook.training.layers import fast_layers
from herdbook.training.losses import batch_indices, diffusion_target, dreambooth_loss, step_generator
from herdbook.training.masters import FlatAdamW
from herdbook.training.phases import PhaseClock
from herdbook.training.settings import ModelChain, RoundSettings
from torch.nn.attention import sdpa_kernel

Progress = Callable[[int, int, float], None]  # (step, total steps, loss)


@dataclass
class TrainResult:
    output: Path  # the pipeline folder (full) or the adapter folder (lora)
    loss_history: list[tuple[int, float]]
    metrics: dict = field(default_factory=dict)
    learning_rates: list[float] = field(default_factory=list)  # the rate each step of this run used
    validation: list[dict] = field(default_factory=list)


@sdpa_kernel(PRECOMPILED_ATTENTION)
def train(
    settings: RoundSettings,
    components: Components | None = None,
    progress: Progress | None = None,
    started_at: float | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> TrainResult:
    """``started_at``: when the user's action began (time.time(): a command's process start, a
    job's pickup), so the round's phases count what the user waited for before the loop too.
    ``on_phase`` hears each phase's name as it ends (training.phases.ROUND_PHASES)."""
    clock = PhaseClock(started_at, on_end=on_phase)
    clock.end("start-up")  # the process's imports and the caller's work: everything before this call
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # accelerate keeps one precision per process: a worker's next round may ask for another
    AcceleratorState._reset_state()
    # cpu=True on a machine without CUDA lets several launched processes form a gloo group
    accelerator = Accelerator(
        mixed_precision=resolve_precision(settings.mixed_precision), cpu=not torch.cuda.is_available()
    )
    started = time.perf_counter()
    device = accelerator.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    clock.end("libraries and GPU")
    torch.manual_seed(settings.seed)
    saved = saved_output(settings)
    if saved is not None:  # killed after the weights were safe: only the validation grid is left
        return finish_saved_round(settings, saved, accelerator, clock)
    parts = components or load_components(settings.model)
    clock.end("model load")
    weight_dtype = dtype_of(accelerator)
    if accelerator.is_main_process:
        settings.save()

    # a LoRA round leaves the starting model intact under its adapters: its grid waits until the
    # round's weights are safe (SDXL's at 1024 px took 42 s of a 148 s round on the H200 machine).
    # A full round's is drawn now: drawn after the steps from a host copy, beside the save, its
    # weights were safe 2.8 s sooner but the command ended 3.1 s later (the H100 machine,
    # bench/user_wait.txt), the copy and the grid costing more than the save left room for.
    if accelerator.is_main_process and settings.mode != "lora":
        render_starting_grid(settings, parts, device)
    clock.end("starting model's grid")

    # What trains: the whole UNet, or LoRA adapters on its attention (and the text encoders').
    trainable = prepare_trainable(parts, settings, weight_dtype)
    # The VAE and frozen text encoders run once per image and prompt (their outputs are
    # cached), so they stay in float32: no speed lost, and a full round saves them unchanged.
    for part in parts.frozen_parts:
        part.to(device)

    # The data: instance (and class) pixels, encoded once unless the settings ask for every step.
    files = image_files(Path(settings.instance_dir))
    data = TrainingData(parts, settings, load_images(files, settings.resolution), device)
    if settings.prior_preservation:
        class_files = ensure_class_images(settings, parts, accelerator, weight_dtype)
        data.add_class_images(load_images(class_files, settings.resolution))
    weights = rating_weights(files, settings.rating_weights)
    peaks = PhasePeaks(device)
    peaks.end("encode")
    clock.end("to GPU and encode")

    fast = use_fast_path(settings, accelerator)
    models = [parts.unet, *parts.text_encoders] if settings.train_text_encoder else [parts.unet]
    if fast:  # one process: nothing for accelerate to wrap; the optimizer's buffers live on the device
        for model in models:
            model.to(device)
        if device.type == "cuda":
            # measured on an H100 (bench/gpu_variants.txt): the captured step 50.6 -> 44.7 ms;
            # with training.layers' GroupNorm 34.2 -> 31.0 ms, and its GEGLU -> 30.7 ms
            fast_layers(parts.unet)
        optimizer = FlatAdamW(trainable_groups(parts, settings, weight_dtype), lr=settings.learning_rate)
    else:
        optimizer = make_optimizer(trainable, settings, device)
    from diffusers.optimization import get_scheduler

    # accelerate steps a prepared scheduler once per process each step, so counts scale with them
    lr_scheduler = get_scheduler(
        settings.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=settings.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=settings.steps * accelerator.num_processes,
    )
    if not fast:
        *models, optimizer, lr_scheduler = accelerator.prepare(*models, optimizer, lr_scheduler)
    unet = models[0]
    text_encoders = models[1:] if settings.train_text_encoder else parts.text_encoders

    first_step, loss_history = resume(settings, accelerator, trainable, optimizer, lr_scheduler)
    if fast:  # the captured optimizer reads its rate from the GPU; the scheduler fills it in place
        for group in optimizer.param_groups:
            group["lr"] = torch.tensor(float(group["lr"]), device=device)
    # the probe needs neither encoder once their outputs are cached: on the GPU beside it they
    # only raised the peak (a full round's 15.7 -> 14.9 GiB on an H100, bench/gpu_round.txt)
    data.offload_encoders(settings.train_text_encoder)
    with mixed_precision(device, weight_dtype):
        probe_before = probe_loss(unet, text_encoders, data, parts, settings.seed)
    rank, world = accelerator.process_index, accelerator.num_processes
    global_batch = settings.batch_size * world

    def loss_of(
        latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, weights: dict | None = None
    ) -> torch.Tensor:
        """The Dreambooth loss of one batch: the math of every path. With ``weights`` (the fast
        path's working copies) the UNet runs on them all through instead of under autocast."""
        scheduler = parts.noise_scheduler
        noisy = scheduler.add_noise(latents, noise, timesteps)
        if weights is None:
            hidden, added = data.conditioning(text_encoders, len(latents))
            prediction = unet(noisy, timesteps, hidden, added_cond_kwargs=added).sample
        else:
            with mixed_precision(device, weight_dtype):  # trained text encoders keep autocast
                hidden, added = data.conditioning(text_encoders, len(latents))
            prediction = forward_in(weights, unet, noisy, timesteps, hidden, added)
        velocity = (
            scheduler.get_velocity(latents, noise, timesteps)
            if scheduler.config.prediction_type == "v_prediction"
            else None
        )
        target = diffusion_target(scheduler.config.prediction_type, latents, noise, velocity)
        return dreambooth_loss(prediction, target, data.with_prior, settings.prior_loss_weight)[0]

    def eager_step(latents, noise, timesteps) -> torch.Tensor:
        loss = loss_of(latents, noise, timesteps)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    unet_names = trained_names(unet)

    def fast_step(latents, noise, timesteps) -> torch.Tensor:
        optimizer.zero_grad()
        working = dict(zip(unet_names, optimizer.leaves(0), strict=True))
        loss = loss_of(latents, noise, timesteps, weights=working)
        loss.backward()
        optimizer.step()  # clips to norm 1.0, as eager_step does
        return loss.detach()

    # the fast step is captured as a CUDA graph where there is one; elsewhere it runs as it is
    run_step = (CapturedStep(fast_step) if device.type == "cuda" else fast_step) if fast else eager_step
    checkpoints = CheckpointWriter(checkpoint_path(settings), background=device.type == "cuda")
    train_started = time.perf_counter()
    peaks.end("models and probe")
    clock.end("optimizer and probe")
    step_seconds: list[float] = []
    learning_rates: list[float] = []
    checkpoint_seconds = 0.0
    losses = LaggedLosses(device)

    def record(read: list[tuple[int, float]]) -> None:
        for done, step_loss in read:
            loss_history.append((done, step_loss))
            if progress is not None and accelerator.is_main_process:
                progress(done, settings.steps, step_loss)

    for step in range(first_step, settings.steps + 1):
        step_started = time.perf_counter()
        latents, noise, timesteps = data.draw(step, global_batch, rank, settings.batch_size, weights)
        learning_rates.append(scheduled_lr(lr_scheduler))
        loss = run_step(latents, noise, timesteps)
        lr_scheduler.step()
        losses.add(step, accelerator.reduce(loss, reduction="mean"))
        record(losses.read(but_last=True))  # the earlier steps': meanwhile the GPU runs this one
        step_seconds.append(time.perf_counter() - step_started)
        later_checkpoint = settings.checkpoint_every and settings.steps > settings.checkpoint_every
        if step == first_step and later_checkpoint and accelerator.is_main_process:
            # the optimizer's moments exist from here on: allocate their host copies meanwhile
            checkpoints.reserve(checkpoint_state(trainable, optimizer, lr_scheduler, step, loss_history))
        if settings.checkpoint_every and step % settings.checkpoint_every == 0 and step < settings.steps:
            saving = time.perf_counter()
            record(losses.read())  # the checkpoint holds the history up to this step
            save_checkpoint(checkpoints, accelerator, trainable, optimizer, lr_scheduler, step, loss_history)
            checkpoint_seconds += time.perf_counter() - saving
    record(losses.read())
    run_step = None  # a captured step's graph keeps its activations' memory: the grids can have it

    train_seconds = time.perf_counter() - train_started
    first_steps = sum(step_seconds[: CapturedStep.WARMUP + 1])
    clock.end("steps", split={"first steps (compile, capture)": first_steps})
    peaks.end("steps")
    checkpoints.cancel()
    if fast:  # the parameters are views of the optimizer's flat buffers; saving needs their own
        optimizer.release()
    highest = accelerator.gather(torch.tensor([peaks.highest], device=device)).tolist()
    with mixed_precision(device, weight_dtype):
        probe_after = probe_loss(unet, text_encoders, data, parts, settings.seed)
    accelerator.wait_for_everyone()
    result = TrainResult(Path(settings.output_dir), loss_history, learning_rates=learning_rates)
    if accelerator.is_main_process:
        parts.unet = accelerator.unwrap_model(unet)
        for name, encoder in zip(parts.family.encoder_names, text_encoders, strict=True):
            setattr(parts, name, accelerator.unwrap_model(encoder))
        clock.end("probe")
        saving = time.perf_counter()
        # the weights are written while the validation grid is drawn from a copy (a full round's
        # ~4 GB took ~5 s to write on the H200 machine)
        drawn = sampling_copy(parts, inference_dtype(device)) if settings.validation_prompts else parts
        with ThreadPoolExecutor(1, thread_name_prefix="herdbook-save") as pool:
            saved = pool.submit(with_end_time, save_output, settings, parts, loss_history)
            result.validation = validation_images(settings, drawn, device)
            result.output, saved_at = saved.result()
            if settings.mode == "lora":
                render_starting_grid(settings, parts, device)
        weights_saved = time.perf_counter() - started
        peaks.end("save and validation grid")
        save_seconds = time.perf_counter() - saving
        clock.end("save, validation grid beside it")
        steps_run = settings.steps - first_step + 1
        timed = sorted(step_seconds[3:] or step_seconds)  # the first steps warm up (and capture the graph)
        result.metrics = {
            "steps_run": steps_run,
            "seconds_per_step": sum(step_seconds) / max(1, steps_run),
            "median_step_seconds": timed[len(timed) // 2] if timed else None,
            "checkpoint_seconds": checkpoint_seconds,
            "first_step_seconds": [round(x, 3) for x in step_seconds[:5]],  # warm-up and capture
            "slowest_step_seconds": sorted(round(x, 3) for x in step_seconds)[-5:],
            "train_seconds": train_seconds,
            "setup_seconds": train_started - started,  # loading, encoding, the first probe
            "save_seconds": save_seconds,  # the validation grid drawn meanwhile
            "seconds_to_weights_saved": weights_saved,
            "weights_saved_after_seconds": round(saved_at - clock.started, 3),  # from the user's action
            "total_seconds": time.perf_counter() - started,
            "images_per_second": steps_run * global_batch / max(sum(step_seconds), 1e-9),
            "processes": world,
            "global_batch": global_batch,
            "fast_path": fast,
            "peak_memory_gb": max(highest[0], peaks.highest) if device.type == "cuda" else None,
            "peak_memory_gb_by_phase": peaks.by_phase if device.type == "cuda" else None,
            "peak_memory_gb_per_process": highest if device.type == "cuda" else None,
            "mixed_precision": accelerator.mixed_precision,
            "family": parts.family.name,
            "resolution": settings.resolution,
            "first_step": first_step,
            "probe_loss_before": probe_before,
            "probe_loss_after": probe_after,
            # what the user waited for, phase by phase; they add up to phases_total_seconds
            "phases": clock.phases,
            "phases_total_seconds": clock.total,
        }
        write_metrics(settings, result)
    accelerator.end_training()
    return result


class LaggedLosses:
    """Each step's loss, read back one step late on a GPU: reading it at once made the GPU
    wait, every step, while Python drew the next step's batch (~1.5 ms of a 24-36 ms step)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.pending: list[tuple[int, torch.Tensor, torch.cuda.Event | None]] = []

    def add(self, step: int, loss: torch.Tensor) -> None:
        if self.device.type != "cuda":
            self.pending.append((step, loss, None))
            return
        host = torch.empty((), dtype=loss.dtype, pin_memory=True)
        host.copy_(loss, non_blocking=True)  # copied before a captured step's next replay overwrites it
        copied = torch.cuda.Event()
        copied.record()
        self.pending.append((step, host, copied))

    def read(self, but_last: bool = False) -> list[tuple[int, float]]:
        ready, self.pending = (self.pending[:-1], self.pending[-1:]) if but_last else (self.pending, [])
        for _, _, copied in ready:
            if copied is not None:
                copied.synchronize()
        return [(step, loss.item()) for step, loss, _ in ready]


def scheduled_lr(lr_scheduler) -> float:
    """The learning rate this step uses, computed on the host: the fast path keeps it on the GPU,
    where reading it would wait for the step before. diffusers' schedules are all LambdaLR."""
    schedule = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate wraps it
    return schedule.base_lrs[0] * schedule.lr_lambdas[0](schedule.last_epoch)


class TrainingData:
    """The instance (and class) images as latent distributions and the prompts as ids or
    embeddings, on the device, and each step's random draws.

    Every draw depends on (seed, step) alone and covers the global batch; this process takes
    its slice. Resumed, multi-process and graph-captured runs thus see exactly the same data."""

    def __init__(self, parts: Components, settings: RoundSettings, pixels: torch.Tensor, device: torch.device):
        self.parts, self.settings, self.device = parts, settings, device
        self.cached = settings.cache_encodings
        self.instance = encode_images(parts, pixels, device) if self.cached else pixels.to(device)
        self.classes = None
        self.prompt_rows: dict[tuple, tuple] = {}  # (rows, instance only) -> prompt index, size ids
        prompts = [settings.instance_prompt, settings.class_prompt]
        self.prompt_ids = [ids.to(device) for ids in parts.family.tokenize(parts, prompts)]
        self.embeddings = (
            embed(parts, parts.text_encoders, self.prompt_ids)
            if self.cached and not settings.train_text_encoder
            else None
        )

    @property
    def with_prior(self) -> bool:
        return self.classes is not None

    def offload_encoders(self, text_encoder_trains: bool) -> None:
        """Frozen encoders whose outputs are cached stay in host memory from here on (on a
        GPU: ~0.8 GB less): the save reads them there, and a sampling pipeline (the
        validation images) moves them back to the device itself."""
        if not self.cached or self.device.type != "cuda":
            return
        for part in [self.parts.vae] + ([] if text_encoder_trains else self.parts.text_encoders):
            part.to("cpu")
        torch.cuda.empty_cache()

    def add_class_images(self, pixels: torch.Tensor) -> None:
        self.classes = encode_images(self.parts, pixels, self.device) if self.cached else pixels.to(self.device)

    def instance_means(self) -> torch.Tensor:
        """Each instance image's latent mean (for the probe loss)."""
        if self.cached:
            return self.instance[0]
        return encode_images(self.parts, self.instance, self.device)[0]

    def _latents(self, source, indices: list[int], generator, global_batch: int, rank: int, local: int):
        stats = source if self.cached else encode_images(self.parts, source[indices], self.device)
        rows = indices if self.cached else list(range(len(indices)))
        return sample_latents(stats, rows, generator, global_batch, rank, local)

    def draw(self, step: int, global_batch: int, rank: int, local: int, weights: torch.Tensor | None):
        """This step's latents (instance rows, then class rows), noise and timesteps."""
        settings = self.settings
        generator = step_generator(settings.seed, step)
        indices = batch_indices(len(self.instance[0]), global_batch, generator, weights)[
            rank * local : (rank + 1) * local
        ]
        latents = self._latents(self.instance, indices, generator, global_batch, rank, local)
        if self.classes is not None:
            class_indices = torch.randint(0, len(self.classes[0]), (global_batch,), generator=generator).tolist()
            class_indices = class_indices[rank * local : (rank + 1) * local]
            latents = torch.cat(
                [latents, self._latents(self.classes, class_indices, generator, global_batch, rank, local)]
            )
        latents = latents * self.parts.vae.config.scaling_factor
        scheduler = self.parts.noise_scheduler
        rows = global_batch * (2 if self.classes is not None else 1)
        noise_all = torch.randn((rows, *latents.shape[1:]), generator=generator)
        timesteps_all = torch.randint(0, scheduler.config.num_train_timesteps, (rows,), generator=generator)
        noise = to_device(take_slice(noise_all, global_batch, rank, local), self.device)
        timesteps = to_device(take_slice(timesteps_all, global_batch, rank, local), self.device)
        return latents, noise, timesteps

    def conditioning(self, text_encoders: list, rows: int, instance_only: bool = False) -> tuple:
        """The UNet's text embedding and added conditioning (None for SD-1.x) for a batch of
        ``rows``: instance rows, then class rows (or instance rows alone)."""
        family, key = self.parts.family, (rows, instance_only)
        if key not in self.prompt_rows:  # made on the device once, before any graph capture
            half = rows // 2 if self.with_prior and not instance_only else rows
            size_ids = family.size_ids(self.settings.resolution, rows)
            self.prompt_rows[key] = (
                torch.tensor([0] * half + [1] * (rows - half), device=self.device),
                None if size_ids is None else size_ids.to(self.device),
            )
        index, size_ids = self.prompt_rows[key]
        if self.embeddings is not None:
            embedding = self.embeddings.index_select(index)
        else:
            embedding = family.embed(text_encoders, [ids.index_select(0, index) for ids in self.prompt_ids])
        return embedding.hidden, family.added_conditioning(embedding, size_ids)


def use_fast_path(settings: RoundSettings, accelerator) -> bool:
    """The fast step where it is possible: one process, AdamW without 8-bit state, and not in
    float16, whose gradients need the loss scaling that accelerate's plain path brings."""
    return (
        settings.fast_path == "auto"
        and accelerator.num_processes == 1
        and accelerator.mixed_precision != "fp16"
        and not (settings.use_8bit_adam and _has_bitsandbytes())
        and not settings.gradient_checkpointing
    )


def _has_bitsandbytes() -> bool:
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


# --- set-up helpers -------------------------------------------------------------------


class PhasePeaks:
    """The GPU memory peak (GiB) of each phase of a round, so a peak can be traced to its phase."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.by_phase: dict[str, float] = {}

    def end(self, phase: str) -> None:
        if self.device.type == "cuda":
            self.by_phase[phase] = torch.cuda.max_memory_allocated(self.device) / 2**30
            torch.cuda.reset_peak_memory_stats(self.device)

    @property
    def highest(self) -> float:
        """The round's peak up to the last phase ended."""
        return max(self.by_phase.values(), default=0.0)


def resolve_precision(requested: str) -> str:
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def prepare_trainable(
    parts: Components, settings: RoundSettings, weight_dtype: torch.dtype
) -> list[torch.nn.Parameter]:
    parts.vae.requires_grad_(False)
    for encoder in parts.text_encoders:
        encoder.requires_grad_(False)
    if settings.mode == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        parts.unet.requires_grad_(False)
        # frozen weights in the mixed-precision type halve memory; the adapters train in float32
        parts.unet.to(dtype=weight_dtype)
        if settings.train_text_encoder:
            for encoder in parts.text_encoders:
                encoder.to(dtype=weight_dtype)

        def adapter(targets: list[str]) -> LoraConfig:
            return LoraConfig(
                r=settings.lora_rank,
                lora_alpha=settings.lora_rank,
                init_lora_weights="gaussian",
                target_modules=targets,
            )

        parts.unet.add_adapter(adapter(["to_k", "to_q", "to_v", "to_out.0"]))  # the UNet's attention
        if settings.train_text_encoder:
            # through peft itself: transformers' add_adapter demands a peft release newer than PyPI has
            for encoder in parts.text_encoders:
                inject_adapter_in_model(adapter(["q_proj", "k_proj", "v_proj", "out_proj"]), encoder)
    else:
        parts.unet.requires_grad_(True)
        if settings.train_text_encoder:
            for encoder in parts.text_encoders:
                encoder.requires_grad_(True)
    if settings.gradient_checkpointing:
        parts.unet.enable_gradient_checkpointing()
        if settings.train_text_encoder:
            for encoder in parts.text_encoders:
                encoder.gradient_checkpointing_enable()
    parts.unet.train()
    models = [parts.unet, *parts.text_encoders] if settings.train_text_encoder else [parts.unet]
    trainable = [p for model in models for p in model.parameters() if p.requires_grad]
    for param in trainable:
        param.data = param.data.float()
    return trainable


def make_optimizer(
    params: list[torch.nn.Parameter], settings: RoundSettings, device: torch.device
) -> torch.optim.Optimizer:
    """The reference path's AdamW over float32 master weights (the fast path's is `FlatAdamW`)."""
    lr = settings.learning_rate
    if settings.use_8bit_adam and device.type == "cuda" and _has_bitsandbytes():
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=1e-2)
    return torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)


def trainable_groups(parts: Components, settings: RoundSettings, weight_dtype: torch.dtype) -> list[dict]:
    """The fast path's parameter groups: the UNet's trained weights, which the forward reads
    through a working copy in ``weight_dtype``, and a trained text encoder's, which keeps
    running under autocast on its float32 weights."""
    groups = [{"params": [p for p in parts.unet.parameters() if p.requires_grad], "working_dtype": weight_dtype}]
    if settings.train_text_encoder:
        encoders = [p for encoder in parts.text_encoders for p in encoder.parameters() if p.requires_grad]
        groups.append({"params": encoders, "working_dtype": torch.float32})
    return groups


def trained_names(model: torch.nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def forward_in(weights: dict[str, torch.Tensor], unet, noisy, timesteps, hidden, added=None) -> torch.Tensor:
    """The UNet's prediction computed with ``weights`` (by name) instead of its own parameters,
    with activations in their type all through.

    The fast path passes its bf16 working copies: autocast would run GroupNorm (and so the SiLU
    after it) in float32 on bf16 inputs, ~1,500 cast kernels a step and twice the activation
    traffic, and cast every weight again each step. Weights not named (LoRA's frozen base,
    already in the working type) are the module's own. The prediction comes back in float32."""
    dtype = next(iter(weights.values())).dtype
    arguments = (noisy.to(dtype), timesteps, hidden.to(dtype))
    added = None if added is None else {name: value.to(dtype) for name, value in added.items()}
    return torch.func.functional_call(
        unet, weights, arguments, {"added_cond_kwargs": added}, strict=False
    ).sample.float()


@torch.no_grad()
def embed(parts: Components, text_encoders: list, ids: list[torch.Tensor]):
    return parts.family.embed(text_encoders, ids)


@torch.no_grad()
def encode_images(parts: Components, pixels: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's latent distribution (mean, std), computed once; a fresh sample is drawn every step.
    One image at a time: the VAE's activations at full resolution are the round's memory peak."""
    means, stds = [], []
    for chunk in pixels.split(1):
        dist = parts.vae.encode(chunk.to(device, dtype=parts.vae.dtype)).latent_dist
        means.append(dist.mean.float())
        stds.append(dist.std.float())
    return torch.cat(means), torch.cat(stds)


def sample_latents(
    latents: tuple[torch.Tensor, torch.Tensor],
    indices: list[int],
    generator: torch.Generator,
    global_batch: int,
    rank: int,
    local: int,
) -> torch.Tensor:
    mean, std = latents
    eps_all = torch.randn((global_batch, *mean.shape[1:]), generator=generator)
    eps = to_device(take_slice(eps_all, global_batch, rank, local), mean.device)
    rows = to_device(torch.tensor(indices), mean.device)
    return mean.index_select(0, rows) + std.index_select(0, rows) * eps


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on the device without waiting for the GPU. A blocking copy (and indexing
    with a Python list) waits for all the work queued before it: each step's draw waited for
    the step before, and the GPU idled while Python drew the next (~2.5 ms of a 35 ms step on
    an H100). From pinned memory, without blocking, the copy just joins the queue."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def take_slice(tensor: torch.Tensor, global_batch: int, rank: int, local: int) -> torch.Tensor:
    """This process's rows of a tensor drawn for the global batch (instance rows, then class rows)."""
    groups = tensor.split(global_batch)
    return torch.cat([g[rank * local : (rank + 1) * local] for g in groups])


@torch.no_grad()
def probe_loss(unet, text_encoders, data: TrainingData, parts: Components, seed: int, draws: int = 4) -> float:
    """The instance loss on fixed noise and timesteps: unlike the per-step loss, it is
    comparable before and after training, so it shows whether the round learnt the images."""
    mean = data.instance_means()
    generator = torch.Generator().manual_seed(seed + 99_991)
    was_training = unet.training
    unet.eval()
    hidden, added = data.conditioning(text_encoders, len(mean), instance_only=True)
    total = 0.0
    for _ in range(draws):
        latents = mean * parts.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=generator).to(latents.device)
        timesteps = torch.randint(
            0, parts.noise_scheduler.config.num_train_timesteps, (len(latents),), generator=generator
        ).to(latents.device)
        noisy = parts.noise_scheduler.add_noise(latents, noise, timesteps)
        prediction = unet(noisy, timesteps, hidden, added_cond_kwargs=added).sample
        velocity = (
            parts.noise_scheduler.get_velocity(latents, noise, timesteps)
            if parts.noise_scheduler.config.prediction_type == "v_prediction"
            else None
        )
        target = diffusion_target(parts.noise_scheduler.config.prediction_type, latents, noise, velocity)
        total += torch.nn.functional.mse_loss(prediction.float(), target.float()).item()
    unet.train(was_training)
    return total / draws


def rating_weights(files: list[Path], weights: dict[str, float]) -> torch.Tensor | None:
    if not weights:
        return None
    return torch.tensor([max(weights.get(f.name, 1.0), 1e-3) for f in files])


# --- prior preservation ---------------------------------------------------------------


def mixed_precision(device: torch.device, dtype: torch.dtype):
    """Inference over parts kept in different precisions (a bf16 UNet, a float32 VAE)."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def ensure_class_images(
    settings: RoundSettings, parts: Components, accelerator, weight_dtype: torch.dtype
) -> list[Path]:
    """Class images from the parent model, generated once and cached in ``class_dir``."""
    folder = Path(settings.class_dir or settings.output / "class-images")
    folder.mkdir(parents=True, exist_ok=True)
    have = sorted(folder.glob("*.png"))
    missing = settings.num_class_images - len(have)
    if missing > 0 and accelerator.is_main_process:
        pipeline = sampling_pipeline(parts, accelerator.device)
        batch = parts.family.draw_batch
        for start in range(len(have), settings.num_class_images, batch):
            seeds = [10_000 + i for i in range(start, min(start + batch, settings.num_class_images))]
            with mixed_precision(accelerator.device, weight_dtype):
                images = draw(
                    pipeline,
                    settings.class_prompt,
                    seeds,
                    settings.generation_steps,
                    settings.guidance_scale,
                    settings.resolution,
                )
            for seed, image in zip(seeds, images, strict=True):
                image.save(folder / f"class-{seed - 10_000:05d}.png")
    accelerator.wait_for_everyone()
    return sorted(folder.glob("*.png"))[: settings.num_class_images]


# --- checkpoints ------------------------------------------------------------------------


def checkpoint_path(settings: RoundSettings) -> Path:
    return settings.checkpoint_file


class CheckpointWriter:
    """Writes checkpoints without holding up training: the state is copied into host memory
    (reused from one checkpoint to the next) and a background thread writes it to disk,
    atomically, replacing the previous checkpoint.

    The host copies are ordinary memory, allocated and touched by a background thread ahead of
    the first checkpoint. Pinned memory would copy faster, but pinning a full round's ~10 GB
    took ~38 s on the H100 machine and blocked the training loop's CUDA calls meanwhile
    (bench/gpu_round.txt)."""

    def __init__(self, path: Path, background: bool) -> None:
        self.path, self.background = path, background
        self.buffers: list[torch.Tensor] = []
        self.writing: threading.Thread | None = None
        self.cancelled = threading.Event()

    def reserve(self, state: dict) -> None:
        """Allocate the host copies for states shaped like ``state`` in the background: ~10 GB
        (a full round's weights and AdamW moments) take seconds to fault in."""
        self.writing = threading.Thread(target=self._allocate, args=(self._tensors(state),), daemon=True)
        self.writing.start()

    @staticmethod
    def _tensors(state: dict) -> list[torch.Tensor]:
        from torch.utils._pytree import tree_flatten

        return [leaf for leaf in tree_flatten(state)[0] if isinstance(leaf, torch.Tensor)]

    def _allocate(self, tensors: list[torch.Tensor]) -> None:
        self.buffers = [torch.zeros(t.shape, dtype=t.dtype) for t in tensors]  # zeros: pages faulted in now

    def save(self, state: dict) -> None:
        from torch.utils._pytree import tree_flatten, tree_unflatten

        self.wait()  # one write (or reservation) at a time: the buffers are about to be reused
        leaves, spec = tree_flatten(state)
        tensors = [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]
        if [(b.shape, b.dtype) for b in self.buffers] != [(t.shape, t.dtype) for t in tensors]:
            self._allocate(tensors)
        copies = iter(self.buffers)
        host = [
            next(copies).copy_(leaf, non_blocking=True) if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves
        ]
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        snapshot = tree_unflatten(host, spec)
        if self.background:
            self.writing = threading.Thread(target=self._write, args=(snapshot,), daemon=False)
            self.writing.start()
        else:
            self._write(snapshot)

    def _write(self, state: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".part")
        try:
            with open(partial, "wb") as file:
                torch.save(state, CancellableFile(file, self.cancelled))
        except Exception:  # torch's zip writer reports a stopped write as its own error
            partial.unlink(missing_ok=True)
            if self.cancelled.is_set():
                return
            raise
        partial.replace(self.path)

    def wait(self) -> None:
        if self.writing is not None:
            self.writing.join()
            self.writing = None

    def cancel(self) -> None:
        """Stops a write still in flight and waits for it: the round has finished, and its
        output, about to be saved, supersedes any checkpoint (on an H100 a full round's
        ~10 GB checkpoint takes longer to write than the rest of the round)."""
        self.cancelled.set()
        self.wait()


class CheckpointCancelled(Exception):
    pass


class CancellableFile:
    """A file torch.save writes through, which stops the write once ``cancelled`` is set."""

    def __init__(self, file, cancelled: threading.Event) -> None:
        self.file, self.cancelled = file, cancelled

    def write(self, data) -> int:
        if self.cancelled.is_set():
            raise CheckpointCancelled
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


def checkpoint_state(trainable, optimizer, lr_scheduler, step: int, loss_history) -> dict:
    """Only what changes: the trained parameters, the optimizer and the step."""
    optimizer_state = optimizer.state_dict()
    for group in optimizer_state["param_groups"]:
        group["lr"] = float(group["lr"])  # a captured step's lr is a GPU tensor
    return {
        "step": step,
        "params": [p.detach() for p in trainable],
        "optimizer": optimizer_state,
        "lr_scheduler": lr_scheduler.state_dict(),
        "loss_history": list(loss_history),
    }


def save_checkpoint(writer: CheckpointWriter, accelerator, trainable, optimizer, lr_scheduler, step, loss_history):
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        writer.save(checkpoint_state(trainable, optimizer, lr_scheduler, step, loss_history))
    accelerator.wait_for_everyone()


def resume(settings, accelerator, trainable, optimizer, lr_scheduler) -> tuple[int, list[tuple[int, float]]]:
    path = checkpoint_path(settings)
    if not path.exists():
        return 1, []
    state = torch.load(path, map_location="cpu", weights_only=False)
    with torch.no_grad():
        for param, saved in zip(trainable, state["params"], strict=True):
            param.copy_(saved.to(param.device, param.dtype))
    optimizer.load_state_dict(state["optimizer"])
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    return state["step"] + 1, [tuple(x) for x in state["loss_history"]]


# --- outputs ----------------------------------------------------------------------------


def saved_output(settings: RoundSettings) -> dict | None:
    """What save_output recorded once the round's weights were on disk, if it got that far."""
    path = settings.weights_saved_file
    return json.loads(path.read_text()) if path.is_file() else None


def save_output(settings: RoundSettings, parts: Components, loss_history: list) -> Path:
    """A diffusers pipeline folder (full) or a LoRA adapter plain diffusers can load on the parent,
    then a record that it is complete: a round killed after this resumes from the saved weights
    (the checkpoint goes once they are safe)."""
    if settings.mode == "full":
        folder = settings.output / "model"
        parts.unet.to(memory_format=torch.contiguous_format)  # safetensors stores plain layouts
        make_pipeline(parts).save_pretrained(folder, safe_serialization=True)
    else:
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        folder = settings.output / "lora"
        unet_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(parts.unet))
        encoder_layers = [
            convert_state_dict_to_diffusers(get_peft_model_state_dict(encoder)) if settings.train_text_encoder else None
            for encoder in parts.text_encoders
        ]
        parts.family.save_lora(folder, unet_layers, encoder_layers)
    record = settings.weights_saved_file
    partial = record.with_suffix(".part")
    partial.write_text(json.dumps({"folder": folder.name, "steps": settings.steps, "loss_history": loss_history}))
    partial.replace(record)
    checkpoint_path(settings).unlink(missing_ok=True)  # the saved weights are the resume point now
    return folder


def write_metrics(settings: RoundSettings, result: TrainResult) -> None:
    """metrics.json beside the output: what `rounds --json` and a launched round read back."""
    history = {"loss_history": result.loss_history}
    (settings.output / "metrics.json").write_text(json.dumps({**result.metrics, **history}, indent=2))


def finish_saved_round(settings: RoundSettings, saved: dict, accelerator, clock: PhaseClock) -> TrainResult:
    """What is left of a round whose weights were saved before its process stopped: the
    validation grid, drawn from the saved weights, and the metrics. No step runs again."""
    folder = settings.output / saved["folder"]
    if settings.mode == "full":
        chain = ModelChain(str(folder))
    else:
        chain = ModelChain(settings.model.pipeline, (*settings.model.adapters, str(folder)))
    loss_history = [tuple(x) for x in saved["loss_history"]]
    result = TrainResult(folder, loss_history)
    if accelerator.is_main_process:
        if starting_grid_missing(settings):  # stopped before the starting model's grid was drawn
            render_starting_grid(settings, load_components(settings.model), accelerator.device)
        parts = load_components(chain)
        clock.end("model load")
        result.validation = validation_images(
            settings, sampling_copy(parts, inference_dtype(accelerator.device)), accelerator.device
        )
        clock.end("validation grid")
        result.metrics = {
            "steps_run": 0,
            "resumed_from_saved_weights": True,
            "family": parts.family.name,
            "resolution": settings.resolution,
            "phases": clock.phases,
            "phases_total_seconds": clock.total,
        }
        write_metrics(settings, result)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def dtype_of(accelerator) -> torch.dtype:
    """The working dtype of accelerate's mixed precision."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision, torch.float32)


def with_end_time(work: Callable, *args):
    """What ``work`` returns, and when it returned (time.time())."""
    return work(*args), time.time()


def starting_grid_missing(settings: RoundSettings) -> bool:
    """Whether the starting model's grid is still to draw: it is drawn once per starting model."""
    folder = settings.parent_validation_dir
    return bool(folder and settings.validation_prompts and not grid_covers(Path(folder), settings))


@torch.no_grad()
def render_starting_grid(settings: RoundSettings, parts: Components, device: torch.device) -> None:
    """The starting model at the validation prompts and seeds (once), so rounds compare with it.
    A LoRA round's parts draw it with their adapters left out."""
    if not starting_grid_missing(settings):
        return
    folder = Path(settings.parent_validation_dir)
    for part in (parts.unet, *parts.frozen_parts):
        part.to(device)
    render_grid(sampling_copy(parts, inference_dtype(device), adapters=False), settings, folder, device)


def grid_covers(folder: Path, settings: RoundSettings) -> bool:
    """Whether the grid in ``folder`` has every validation prompt at every seed (a grid drawn
    before the prompts or seeds changed is drawn again)."""
    index = folder / "index.json"
    if not index.is_file():
        return False
    drawn = {(entry["prompt"], entry["seed"]) for entry in json.loads(index.read_text())}
    return all((prompt, seed) in drawn for prompt in settings.validation_prompts for seed in settings.validation_seeds)


@torch.no_grad()
def validation_images(settings: RoundSettings, drawing: Components, device: torch.device) -> list[dict]:
    """The fixed prompts and seeds every round is compared at, drawn from ``drawing`` (a
    sampling_copy of the round's parts)."""
    if not settings.validation_prompts:
        return []
    return render_grid(drawing, settings, settings.output / "validation", device)


@torch.no_grad()
def render_grid(drawing: Components, settings: RoundSettings, folder: Path, device: torch.device) -> list[dict]:
    """The validation prompts at every seed, drawn as `herdbook generate` draws them (in the
    inference type, the UNet's call captured on a GPU) from ``drawing``, a sampling_copy: a
    round's save reads the originals meanwhile. Drawn under autocast from the float32 weights,
    every kernel launched from Python, SD-1.5's 24-image grid took ~14 s on the H200 machine."""
    folder.mkdir(parents=True, exist_ok=True)
    dtype = inference_dtype(device)
    pipeline = sampling_pipeline(drawing, device, dtype, graphs=settings.fast_path == "auto")
    entries = [
        {"prompt": prompt, "seed": seed, "file": f"p{p_index}-s{seed}.png"}
        for p_index, prompt in enumerate(settings.validation_prompts)
        for seed in settings.validation_seeds
    ]
    # several prompts a call: at 512 px an image took 0.197 s in calls of 2, 0.162 s in calls of 8
    # (SD-1.5 on the H100 machine, bench/draw_batch.txt)
    batch = drawing.family.draw_batch
    written = []
    # each call's PNGs are encoded while the next call draws: ~0.2 s an image at 1024 px
    # (Pillow encodes without the GIL), which kept the GPU idle ~5 s of an SDXL grid
    with ThreadPoolExecutor(1, thread_name_prefix="herdbook-grid") as writer:
        for start in range(0, len(entries), batch):
            chunk = entries[start : start + batch]
            images = draw(
                pipeline,
                [entry["prompt"] for entry in chunk],
                [entry["seed"] for entry in chunk],
                settings.validation_steps,
                settings.guidance_scale,
                settings.resolution,
            )
            written.append(writer.submit(write_images, folder, [entry["file"] for entry in chunk], images))
        for images in written:
            images.result()  # a write that failed fails the grid here
    (folder / "index.json").write_text(json.dumps(entries, indent=2))
    return entries


def write_images(folder: Path, names: list[str], images: list) -> None:
    for name, image in zip(names, images, strict=True):
        image.save(folder / name)
