"""Candidate generation: N images for a prompt, batched, each reproducible from its own seed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image

from training.components import best_device, inference_dtype, load_components, make_pipeline
from training.settings import GenerationSettings


@dataclass
class GeneratedImage:
    image: Image.Image
    seed: int


def load_pipeline(settings: GenerationSettings):
    device = best_device()
    components = load_components(settings.model)
    pipeline = make_pipeline(components, settings.scheduler).to(device, inference_dtype(device))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@torch.no_grad()
def generate_images(
    settings: GenerationSettings, pipeline=None, progress: Callable[[int, int], None] | None = None
) -> list[GeneratedImage]:
    """Image i uses seed ``settings.seed + i``: any one image can be made again on its own."""
    pipeline = pipeline or load_pipeline(settings)
    made: list[GeneratedImage] = []
    for start in range(0, settings.count, settings.batch_size):
        seeds = [settings.seed + i for i in range(start, min(settings.count, start + settings.batch_size))]
        images = pipeline(
            [settings.prompt] * len(seeds),
            negative_prompt=[settings.negative_prompt] * len(seeds) if settings.negative_prompt else None,
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance_scale,
            height=settings.resolution,
            width=settings.resolution,
            generator=[torch.Generator().manual_seed(seed) for seed in seeds],
        ).images
        made += [GeneratedImage(image, seed) for image, seed in zip(images, seeds, strict=True)]
        if progress is not None:
            progress(len(made), settings.count)
    return made
