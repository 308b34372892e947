"""How long a round's fidelity report takes: DINO ViT-S/16 and CLIP ViT-L/14 at their real sizes
(random weights built from config and saved, so loading reads real files; no download), loaded
with `Embedders` and scoring what a round scores: its grid and its starting model's grid (24
images each: 6 prompts x 4 seeds) against 6 instance images, plus 24 candidates' DINO and CLIP-T.

Issue 22 asks for a few seconds at most for 48 images on an H200.
Run:  .venv/bin/python -m bench.evaluation_speed   (output: bench/evaluation_speed.txt)
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from herdbook.training.evaluation import Embedders, candidate_scores, prompt_fidelity, subject_fidelity
from herdbook.training.settings import EvaluationSettings
from herdbook.training.tiny import TOKENIZER
from PIL import Image


def save_judges(folder: Path) -> EvaluationSettings:
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
        ViTConfig,
        ViTImageProcessor,
        ViTModel,
    )

    dino = ViTConfig(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        intermediate_size=1536,
        image_size=224,
        patch_size=16,
    )  # fmt: skip  (facebook/dino-vits16)
    ViTModel(dino, add_pooling_layer=False).save_pretrained(folder / "dino")
    ViTImageProcessor().save_pretrained(folder / "dino")
    clip = CLIPConfig(
        text_config={"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12},
        vision_config={
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_attention_heads": 16,
            "num_hidden_layers": 24,
            "patch_size": 14,
            "image_size": 224,
        },
        projection_dim=768,
    )  # fmt: skip  (openai/clip-vit-large-patch14; the tokenizer is herdbook's tiny one: ids stay in range)
    CLIPModel(clip).save_pretrained(folder / "clip")
    CLIPProcessor(
        image_processor=CLIPImageProcessor(), tokenizer=CLIPTokenizer.from_pretrained(TOKENIZER)
    ).save_pretrained(folder / "clip")
    return EvaluationSettings(dino_model=str(folder / "dino"), clip_model=str(folder / "clip"))


def images(n: int, size: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    where = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {os.cpu_count()} cores"
    with tempfile.TemporaryDirectory() as scratch:
        settings = save_judges(Path(scratch))
        size = 512
        grid, start, instance, candidates = (
            images(24, size, 0),
            images(24, size, 1),
            images(6, size, 2),
            images(24, size, 3),
        )
        prompts = ["an image of the oxenai ox on a sandy beach"] * 24
        began = time.perf_counter()
        judges = Embedders(settings, device=device)
        if device == "cuda":
            torch.cuda.synchronize()
        loaded = time.perf_counter() - began
        rows = []
        for attempt in ("first", "second"):
            began = time.perf_counter()
            real_dino, real_clip = judges.dino(instance), judges.clip_images(instance)
            for shown in (grid, start):
                subject_fidelity(judges.dino(shown), real_dino)
                clip = judges.clip_images(shown)
                subject_fidelity(clip, real_clip)
                prompt_fidelity(clip, judges.clip_texts(prompts))
            report = time.perf_counter() - began
            began = time.perf_counter()
            candidate_scores(judges, candidates, prompts, real_dino, [None] * len(candidates))
            scored = time.perf_counter() - began
            rows.append((attempt, report, scored))
    print(f"{where}; {judges.dtype}; DINO ViT-S/16 and CLIP ViT-L/14 at full size, random weights; images {size} px")
    print(f"load both models from disk to {device}: {loaded:.2f} s")
    print(f"{'call':<8} {'round report (48 images + 6 instance) s':>40} {'24 candidates scored s':>24}")
    for attempt, report, scored in rows:
        print(f"{attempt:<8} {report:>40.2f} {scored:>24.2f}")


if __name__ == "__main__":
    main()
