"""A Dreambooth round: teach the model the character from a handful of curated images.

One function, ``train``, reads top to bottom like the loop it is; the helpers below it
set up the parts. It runs the same on one CPU, one GPU, or several GPUs under
``accelerate launch`` (each process takes its slice of the same global batch).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from herdbook.training.components import Components, load_components, make_pipeline, sampling_pipeline
from herdbook.training.data import image_files, load_images
from herdbook.training.generate import draw
from herdbook.training.losses import batch_indices, diffusion_target, dreambooth_loss, step_generator
from herdbook.training.settings import RoundSettings

Progress = Callable[[int, int, float], None]  # (step, total steps, loss)


@dataclass
class TrainResult:
    output: Path  # the pipeline folder (full) or the adapter folder (lora)
    loss_history: list[tuple[int, float]]
    metrics: dict = field(default_factory=dict)
    learning_rates: list[float] = field(default_factory=list)  # the rate each step of this run used
    validation: list[dict] = field(default_factory=list)


def train(
    settings: RoundSettings, components: Components | None = None, progress: Progress | None = None
) -> TrainResult:
    from accelerate import Accelerator

    # cpu=True on a machine without CUDA lets several launched processes form a gloo group
    accelerator = Accelerator(
        mixed_precision=resolve_precision(settings.mixed_precision), cpu=not torch.cuda.is_available()
    )
    started = time.perf_counter()
    if accelerator.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(accelerator.device)
    torch.manual_seed(settings.seed)
    parts = components or load_components(settings.model)
    weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision, torch.float32)
    if accelerator.is_main_process:
        settings.save()

    if accelerator.is_main_process:
        render_starting_grid(settings, parts, accelerator.device, weight_dtype)

    # What trains: the whole UNet, or LoRA adapters on its attention (and the text encoder's).
    trainable = prepare_trainable(parts, settings, weight_dtype)
    # The VAE and a frozen text encoder run once per image and prompt (their outputs are
    # cached), so they stay in float32: no speed lost, and a full round saves them unchanged.
    parts.vae.to(accelerator.device)
    parts.text_encoder.to(accelerator.device)

    # The data, encoded once: VAE latents, and prompt embeddings while the text encoder is frozen.
    files = image_files(Path(settings.instance_dir))
    instance_latents = encode_images(parts, load_images(files, settings.resolution), accelerator.device)
    class_latents = None
    if settings.prior_preservation:
        class_files = ensure_class_images(settings, parts, accelerator, weight_dtype)
        class_latents = encode_images(parts, load_images(class_files, settings.resolution), accelerator.device)
    prompt_ids = tokenize(parts.tokenizer, [settings.instance_prompt, settings.class_prompt]).to(accelerator.device)
    cached_embeddings = None if settings.train_text_encoder else embed(parts.text_encoder, prompt_ids)
    weights = rating_weights(files, settings.rating_weights)

    optimizer = make_optimizer(trainable, settings, accelerator.device)
    from diffusers.optimization import get_scheduler

    # accelerate steps a prepared scheduler once per process each step, so counts scale with them
    lr_scheduler = get_scheduler(
        settings.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=settings.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=settings.steps * accelerator.num_processes,
    )
    models = [parts.unet, parts.text_encoder] if settings.train_text_encoder else [parts.unet]
    *models, optimizer, lr_scheduler = accelerator.prepare(*models, optimizer, lr_scheduler)
    unet = models[0]
    text_encoder = models[1] if settings.train_text_encoder else parts.text_encoder

    first_step, loss_history = resume(settings, accelerator, trainable, optimizer, lr_scheduler)
    probe_before = probe_loss(unet, text_encoder, prompt_ids, instance_latents, parts, settings.seed)
    scheduler = parts.noise_scheduler
    rank, world = accelerator.process_index, accelerator.num_processes
    global_batch = settings.batch_size * world
    train_started = time.perf_counter()
    step_seconds: list[float] = []
    learning_rates: list[float] = []
    checkpoint_seconds = 0.0

    for step in range(first_step, settings.steps + 1):
        step_started = time.perf_counter()
        # Every draw depends on (seed, step) alone and covers the global batch; this process
        # takes its slice. Resumed and multi-process runs thus see exactly the same data.
        generator = step_generator(settings.seed, step)
        indices = batch_indices(len(files), global_batch, generator, weights)[
            rank * settings.batch_size : (rank + 1) * settings.batch_size
        ]
        latents = sample_latents(instance_latents, indices, generator, global_batch, rank, settings.batch_size)
        prompt_index = [0] * len(indices)
        if class_latents is not None:
            class_indices = torch.randint(0, len(class_latents[0]), (global_batch,), generator=generator).tolist()
            class_indices = class_indices[rank * settings.batch_size : (rank + 1) * settings.batch_size]
            latents = torch.cat(
                [
                    latents,
                    sample_latents(class_latents, class_indices, generator, global_batch, rank, settings.batch_size),
                ]
            )
            prompt_index += [1] * len(class_indices)
        latents = latents * parts.vae.config.scaling_factor
        noise_all = torch.randn(
            (global_batch * (2 if class_latents is not None else 1), *latents.shape[1:]), generator=generator
        )
        timesteps_all = torch.randint(
            0, scheduler.config.num_train_timesteps, (noise_all.shape[0],), generator=generator
        )
        noise, timesteps = (
            take_slice(noise_all, global_batch, rank, settings.batch_size),
            take_slice(timesteps_all, global_batch, rank, settings.batch_size),
        )
        noise, timesteps = noise.to(latents.device), timesteps.to(latents.device)

        noisy = scheduler.add_noise(latents, noise, timesteps)
        if cached_embeddings is not None:
            hidden = cached_embeddings[prompt_index]
        else:
            hidden = text_encoder(prompt_ids[prompt_index])[0]
        prediction = unet(noisy, timesteps, hidden).sample
        velocity = (
            scheduler.get_velocity(latents, noise, timesteps)
            if scheduler.config.prediction_type == "v_prediction"
            else None
        )
        target = diffusion_target(scheduler.config.prediction_type, latents, noise, velocity)
        loss, _ = dreambooth_loss(prediction, target, class_latents is not None, settings.prior_loss_weight)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(trainable, 1.0)
        learning_rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        step_loss = accelerator.reduce(loss.detach(), reduction="mean").item()  # waits for the GPU
        step_seconds.append(time.perf_counter() - step_started)
        loss_history.append((step, step_loss))
        if settings.checkpoint_every and step % settings.checkpoint_every == 0 and step < settings.steps:
            saving = time.perf_counter()
            save_checkpoint(settings, accelerator, trainable, optimizer, lr_scheduler, step, loss_history)
            checkpoint_seconds += time.perf_counter() - saving
        if progress is not None and accelerator.is_main_process:
            progress(step, settings.steps, step_loss)

    train_seconds = time.perf_counter() - train_started
    peaks = accelerator.gather(torch.tensor([peak_memory_gb(accelerator.device)], device=accelerator.device)).tolist()
    probe_after = probe_loss(unet, text_encoder, prompt_ids, instance_latents, parts, settings.seed)
    accelerator.wait_for_everyone()
    result = TrainResult(Path(settings.output_dir), loss_history, learning_rates=learning_rates)
    if accelerator.is_main_process:
        parts.unet = accelerator.unwrap_model(unet)
        parts.text_encoder = accelerator.unwrap_model(text_encoder)
        result.output = save_output(settings, parts)
        result.validation = validation_images(settings, parts, accelerator.device, weight_dtype)
        steps_run = settings.steps - first_step + 1
        result.metrics = {
            "steps_run": steps_run,
            "seconds_per_step": sum(step_seconds) / max(1, steps_run),
            "median_step_seconds": sorted(step_seconds)[len(step_seconds) // 2] if step_seconds else None,
            "checkpoint_seconds": checkpoint_seconds,
            "train_seconds": train_seconds,
            "total_seconds": time.perf_counter() - started,
            "images_per_second": steps_run * global_batch / max(sum(step_seconds), 1e-9),
            "processes": world,
            "global_batch": global_batch,
            "peak_memory_gb": peaks[0] if accelerator.device.type == "cuda" else None,
            "peak_memory_gb_per_process": peaks if accelerator.device.type == "cuda" else None,
            "mixed_precision": accelerator.mixed_precision,
            "first_step": first_step,
            "probe_loss_before": probe_before,
            "probe_loss_after": probe_after,
        }
        (settings.output / "metrics.json").write_text(
            json.dumps({**result.metrics, "loss_history": loss_history}, indent=2)
        )
    accelerator.end_training()
    return result


# --- set-up helpers -------------------------------------------------------------------


def peak_memory_gb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0


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
    parts.text_encoder.requires_grad_(False)
    if settings.mode == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        parts.unet.requires_grad_(False)
        # frozen weights in the mixed-precision type halve memory; the adapters train in float32
        parts.unet.to(dtype=weight_dtype)
        if settings.train_text_encoder:
            parts.text_encoder.to(dtype=weight_dtype)

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
            inject_adapter_in_model(adapter(["q_proj", "k_proj", "v_proj", "out_proj"]), parts.text_encoder)
    else:
        parts.unet.requires_grad_(True)
        if settings.train_text_encoder:
            parts.text_encoder.requires_grad_(True)
    if settings.gradient_checkpointing:
        parts.unet.enable_gradient_checkpointing()
        if settings.train_text_encoder:
            parts.text_encoder.gradient_checkpointing_enable()
    parts.unet.train()
    models = [parts.unet, parts.text_encoder] if settings.train_text_encoder else [parts.unet]
    trainable = [p for model in models for p in model.parameters() if p.requires_grad]
    for param in trainable:
        param.data = param.data.float()
    return trainable


def make_optimizer(
    params: list[torch.nn.Parameter], settings: RoundSettings, device: torch.device
) -> torch.optim.Optimizer:
    lr = settings.learning_rate
    if settings.use_8bit_adam and device.type == "cuda":
        try:
            import bitsandbytes as bnb
        except ImportError:
            pass
        else:
            return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=1e-2)
    return torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    return tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


@torch.no_grad()
def embed(text_encoder, ids: torch.Tensor) -> torch.Tensor:
    return text_encoder(ids)[0]


@torch.no_grad()
def encode_images(parts: Components, pixels: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's latent distribution (mean, std), computed once; a fresh sample is drawn every step."""
    means, stds = [], []
    for chunk in pixels.split(4):
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
    eps = take_slice(eps_all, global_batch, rank, local).to(mean.device)
    return mean[indices] + std[indices] * eps


def take_slice(tensor: torch.Tensor, global_batch: int, rank: int, local: int) -> torch.Tensor:
    """This process's rows of a tensor drawn for the global batch (instance rows, then class rows)."""
    groups = tensor.split(global_batch)
    return torch.cat([g[rank * local : (rank + 1) * local] for g in groups])


@torch.no_grad()
def probe_loss(unet, text_encoder, prompt_ids, instance_latents, parts: Components, seed: int, draws: int = 4) -> float:
    """The instance loss on fixed noise and timesteps: unlike the per-step loss, it is
    comparable before and after training, so it shows whether the round learnt the images."""
    mean, _ = instance_latents
    generator = torch.Generator().manual_seed(seed + 99_991)
    was_training = unet.training
    unet.eval()
    hidden_one = text_encoder(prompt_ids[:1])[0]
    total = 0.0
    for _ in range(draws):
        latents = mean * parts.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=generator).to(latents.device)
        timesteps = torch.randint(
            0, parts.noise_scheduler.config.num_train_timesteps, (len(latents),), generator=generator
        ).to(latents.device)
        noisy = parts.noise_scheduler.add_noise(latents, noise, timesteps)
        hidden = hidden_one.expand(len(latents), -1, -1)
        prediction = unet(noisy, timesteps, hidden).sample
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
        for start in range(len(have), settings.num_class_images, 4):
            seeds = [10_000 + i for i in range(start, min(start + 4, settings.num_class_images))]
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
    return settings.output / "checkpoint" / "latest.pt"


def save_checkpoint(settings, accelerator, trainable, optimizer, lr_scheduler, step, loss_history) -> None:
    """Only what changes: the trained parameters, the optimizer and the step. Written by the
    main process, atomically, replacing the previous checkpoint."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        path = checkpoint_path(settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "step": step,
            "params": [p.detach().cpu() for p in trainable],
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": lr_scheduler.state_dict(),
            "loss_history": loss_history,
        }
        partial = path.with_suffix(".part")
        torch.save(state, partial)
        partial.replace(path)
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


def save_output(settings: RoundSettings, parts: Components) -> Path:
    """A diffusers pipeline folder (full) or a LoRA adapter plain diffusers can load on the parent."""
    if settings.mode == "full":
        folder = settings.output / "model"
        make_pipeline(parts).save_pretrained(folder, safe_serialization=True)
    else:
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        folder = settings.output / "lora"
        unet_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(parts.unet))
        text_layers = (
            convert_state_dict_to_diffusers(get_peft_model_state_dict(parts.text_encoder))
            if settings.train_text_encoder
            else None
        )
        StableDiffusionPipeline.save_lora_weights(
            folder, unet_lora_layers=unet_layers, text_encoder_lora_layers=text_layers, safe_serialization=True
        )
    checkpoint = checkpoint_path(settings)
    checkpoint.unlink(missing_ok=True)  # a finished round needs no resume point
    return folder


@torch.no_grad()
def render_starting_grid(settings: RoundSettings, parts: Components, device: torch.device, dtype: torch.dtype) -> None:
    """The starting model at the validation prompts and seeds (once), so rounds compare with it."""
    folder = Path(settings.parent_validation_dir) if settings.parent_validation_dir else None
    if folder is None or not settings.validation_prompts or (folder / "index.json").exists():
        return
    for part in (parts.unet, parts.vae, parts.text_encoder):
        part.to(device)
    with mixed_precision(device, dtype):
        render_grid(parts, settings.validation_prompts, settings.validation_seeds, folder, settings, device)


@torch.no_grad()
def validation_images(
    settings: RoundSettings, parts: Components, device: torch.device, dtype: torch.dtype = torch.float32
) -> list[dict]:
    """The fixed prompts and seeds every round is compared at."""
    if not settings.validation_prompts:
        return []
    with mixed_precision(device, dtype):
        return render_grid(
            parts,
            settings.validation_prompts,
            settings.validation_seeds,
            settings.output / "validation",
            settings,
            device,
        )


@torch.no_grad()
def render_grid(
    parts: Components, prompts: list[str], seeds: list[int], folder: Path, settings: RoundSettings, device: torch.device
) -> list[dict]:
    folder.mkdir(parents=True, exist_ok=True)
    parts.unet.eval()
    pipeline = sampling_pipeline(parts, device)
    entries = []
    for p_index, prompt in enumerate(prompts):
        images = draw(pipeline, prompt, seeds, settings.validation_steps, settings.guidance_scale, settings.resolution)
        for seed, image in zip(seeds, images, strict=True):
            name = f"p{p_index}-s{seed}.png"
            image.save(folder / name)
            entries.append({"prompt": prompt, "seed": seed, "file": name})
    (folder / "index.json").write_text(json.dumps(entries, indent=2))
    return entries
