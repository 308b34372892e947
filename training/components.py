"""Loading the Stable Diffusion parts, from a hub id or a local folder, with LoRA adapters fused on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from herdbook.training.errors import ModelLoadError
from herdbook.training.families import SD1, Family
from herdbook.training.models import load_pretrained, model_family
from herdbook.training.settings import ModelChain
from torch.nn.attention import SDPBackend

# Attention without cuDNN's kernels, which are compiled at run time on first use, per shape:
# ~10 s of a fresh machine's first SD-1.5 training step and ~5 s of the first sampling call,
# against ~0.7 s that flash attention costs over 400 steps and ~0.07 s a sampling call
# (bench/first_step.txt, bench/step_profile.txt). A CPU's choice is unchanged.
PRECOMPILED_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


@dataclass
class Components:
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any  # the training schedule (DDPM over the model's betas)
    # the model's own sampler (SD-1.x ships PNDM, SDXL Euler); a full round saves it, as diffusers' example does
    inference_scheduler: Any = None
    family: Family = SD1
    text_encoder_2: Any = None  # SDXL's second encoder (with a projection) and its tokenizer
    tokenizer_2: Any = None

    @property
    def text_encoders(self) -> list:
        return [getattr(self, name) for name in self.family.encoder_names]

    @property
    def tokenizers(self) -> list:
        return [getattr(self, name) for name in self.family.tokenizer_names]

    @property
    def frozen_parts(self) -> list:
        """Everything but the UNet."""
        return [self.vae, *self.text_encoders]


SD_SCHEDULE = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, steps_offset=1
)


def sd_training_scheduler():
    """Stable Diffusion 1.x's noise schedule, for models built from config (tests, benchmarks)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SD_SCHEDULE, clip_sample=False)


def sd_inference_scheduler():
    """The sampler SD-1.x ships with (PNDM, skipping PRK steps), for models built from config."""
    from diffusers import PNDMScheduler

    return PNDMScheduler(**SD_SCHEDULE, skip_prk_steps=True, set_alpha_to_one=False)


class _SchedulerConfig:
    """Reads a scheduler's config without choosing its class, through the same loading path."""

    @staticmethod
    def from_pretrained(name: str, **kwargs) -> dict:
        from diffusers import DDPMScheduler

        return DDPMScheduler.load_config(name, **kwargs)


def best_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def inference_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_components(chain: ModelChain, device: torch.device | None = None) -> Components:
    import diffusers
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    family = model_family(chain.pipeline)

    def load(loader, subfolder: str):
        return load_pretrained(loader, chain.pipeline, subfolder=subfolder)

    schedule = load(_SchedulerConfig, "scheduler")
    sampler = getattr(diffusers, str(schedule.get("_class_name")), None) or diffusers.PNDMScheduler
    components = Components(
        unet=load(UNet2DConditionModel, "unet"),
        vae=load(AutoencoderKL, "vae"),
        noise_scheduler=DDPMScheduler.from_config(schedule),
        inference_scheduler=sampler.from_config(schedule),
        family=family,
        **family.load_text_parts(load),
    )
    if chain.adapters:
        pipeline = make_pipeline(components)
        for adapter in chain.adapters:
            if not Path(adapter).exists():
                raise ModelLoadError(f"LoRA adapter {adapter} is missing (was its round's output moved?)")
            pipeline.load_lora_weights(adapter)
            pipeline.fuse_lora()
            pipeline.unload_lora_weights()
    if device is not None:
        for part in (components.unet, *components.frozen_parts):
            part.to(device)
    return components


def sampling_copy(components: Components, dtype: torch.dtype, adapters: bool = True) -> Components:
    """The components again, for drawing, with their weights in ``dtype``; the originals stay as
    they are (a round's save reads them meanwhile). LoRA adapters are merged into the copy's
    weights (as a round's adapters are fused when a later job loads it), or with
    ``adapters=False`` left out: the starting model under them."""
    import dataclasses

    copied = {
        name: cast_copy(getattr(components, name), dtype) for name in ("unet", "vae", *components.family.encoder_names)
    }
    for model in copied.values():
        for layer in model.modules():
            if not (hasattr(layer, "base_layer") and hasattr(layer, "merge")):  # not a peft adapter layer
                continue
            if adapters:
                layer.merge()
            else:
                layer.enable_adapters(False)
        model.requires_grad_(False).eval()
    return dataclasses.replace(components, **copied)


def cast_copy(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A copy of ``model`` whose floating-point weights are in ``dtype``, made without copying
    them in their own type first (a deepcopy then cast would hold SDXL's float32 UNet twice)."""
    import copy
    import itertools

    copies: dict[int, torch.Tensor] = {}
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        cast = tensor.detach().to(dtype, copy=True) if tensor.is_floating_point() else tensor.detach().clone()
        copies[id(tensor)] = (
            torch.nn.Parameter(cast, requires_grad=False) if isinstance(tensor, torch.nn.Parameter) else cast
        )
    # deepcopy takes a tensor it finds in its memo as already copied: the module tree is copied,
    # the weights are the cast tensors (tied weights stay tied: one id, one copy)
    return copy.deepcopy(model, copies)


def sampling_pipeline(
    components: Components,
    device: torch.device,
    dtype: torch.dtype | None = None,
    scheduler: str | None = None,
    graphs: bool = False,
):
    """A pipeline ready to draw images: on the device, with diffusers' own progress bar off.

    ``graphs``: on a CUDA GPU, with the weights in ``dtype`` (no autocast), the UNet's call is
    captured as a CUDA graph per batch shape and replayed (training.graphs.GraphedUNet).
    ``scheduler``: a diffusers class name; by default the family's sampler (Family.default_scheduler)."""
    pipeline = make_pipeline(components, scheduler or components.family.default_scheduler)
    pipeline = pipeline.to(device) if dtype is None else pipeline.to(device, dtype)
    pipeline.set_progress_bar_config(disable=True)
    if graphs and dtype is not None and device.type == "cuda":
        from herdbook.training.graphs import GraphedUNet
        from herdbook.training.layers import SamplingAttention, fast_layers

        # measured on an H100 (bench/step_profile.txt, runs 5-9): a UNet call at batch 8
        # 31.1 -> 20.4 ms (against torch's flash attention), decoding 4 images 66.1 -> 31.2 ms
        unet = fast_layers(pipeline.unet)
        unet.set_attn_processor(SamplingAttention())
        pipeline.unet = GraphedUNet(unet)
        fast_layers(pipeline.vae)
    return pipeline


def make_pipeline(components: Components, scheduler: str | None = None):
    """A plain diffusers pipeline over the components (no safety checker: the raters are the
    filter), sampling with ``scheduler`` or else the model's own sampler (what a saved folder keeps)."""
    import diffusers

    noise_scheduler = components.inference_scheduler or components.noise_scheduler
    if scheduler:
        noise_scheduler = getattr(diffusers, scheduler).from_config(noise_scheduler.config)
    return components.family.pipeline(components, noise_scheduler)
