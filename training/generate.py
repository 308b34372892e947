"""Candidate generation: N images for a prompt, batched, each reproducible from its own seed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from herdbook.training.components import (
    PRECOMPILED_ATTENTION,
    best_device,
    inference_dtype,
    load_components,
    sampling_pipeline,
)
from herdbook.training.settings import GenerationSettings
from PIL import Image
from torch.nn.attention import sdpa_kernel


@dataclass
class GeneratedImage:
    image: Image.Image
    seed: int


def load_pipeline(settings: GenerationSettings):
    device = best_device()
    return sampling_pipeline(
        load_components(settings.model),
        device,
        inference_dtype(device),
        settings.scheduler,
        graphs=settings.fast_path == "auto",
    )


@sdpa_kernel(PRECOMPILED_ATTENTION)  # so the first call after loading compiles no attention kernels
def draw(
    pipeline,
    prompt: str | list[str],
    seeds: list[int],
    steps: int,
    guidance_scale: float,
    resolution: int,
    negative_prompt: str = "",
) -> list[Image.Image]:
    """One image per seed, each from its own generator, so any one can be drawn again alone.
    ``prompt``: the same for every seed, or one per seed (a grid draws several prompts a call)."""
    prompts = [prompt] * len(seeds) if isinstance(prompt, str) else prompt
    images = pipeline(
        prompts,
        negative_prompt=[negative_prompt] * len(seeds) if negative_prompt else None,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        height=resolution,
        width=resolution,
        generator=[torch.Generator().manual_seed(seed) for seed in seeds],
        output_type="pt",
    ).images
    return to_pil(images)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """diffusers' conversion of [0, 1] images to 8-bit pixels (the same values), done where the
    images are: on a GPU the host then copies bytes instead of floats and does no arithmetic,
    which took ~15 ms of each 4-image call on a CPU."""
    pixels = (images.float() * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(image) for image in pixels]


@torch.no_grad()
def generate_batches(settings: GenerationSettings, pipeline=None) -> Iterator[list[GeneratedImage]]:
    """The images batch by batch, each as soon as it is drawn. Image i uses seed
    ``settings.seed + i``: any one image can be made again on its own."""
    pipeline = pipeline or load_pipeline(settings)
    for start in range(0, settings.count, settings.batch_size):
        seeds = [settings.seed + i for i in range(start, min(settings.count, start + settings.batch_size))]
        images = draw(
            pipeline,
            settings.prompt,
            seeds,
            settings.steps,
            settings.guidance_scale,
            settings.resolution,
            settings.negative_prompt,
        )
        yield [GeneratedImage(image, seed) for image, seed in zip(images, seeds, strict=True)]


def generate_images(
    settings: GenerationSettings, pipeline=None, progress: Callable[[int, int], None] | None = None
) -> list[GeneratedImage]:
    made: list[GeneratedImage] = []
    for images in generate_batches(settings, pipeline):
        made += images
        if progress is not None:
            progress(len(made), settings.count)
    return made
