"""A full-size Dreambooth round on the GPU: SD-1.5's architecture with random weights.

Random weights cost exactly what the real ones do; no machine here reaches a model hub.
Runs herdbook's own train() at the reference settings (512 px, batch 1, 400 steps,
constant lr, checkpoint every 100 steps, validation grid at the end) for a full fine-tune
and for LoRA, plus a shorter full run without gradient checkpointing for comparison.

    python bench/gpu_round.py [--steps 400] [--instance DIR] [--out DIR]

Prints one table; bench/gpu_round.txt holds the output of the run reported in the notes.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path

import torch
from herdbook.training.components import Components, sd_inference_scheduler, sd_training_scheduler
from herdbook.training.dreambooth import train
from herdbook.training.settings import ModelChain, RoundSettings

TOKENIZER = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "tiny-clip-tokenizer"
REFERENCE_PROMPTS = [
    "an image of a happy white fluffy cartoon ox eating almonds",
    "the oxenai ox eating almonds",
    "an ox",
]


def sd15_components() -> Components:
    """Stable Diffusion 1.5's UNet, VAE and CLIP ViT-L/14 text encoder, from config, random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    with torch.device("cuda"):  # initialising 1.1 B parameters on the GPU takes seconds, not minutes
        unet = UNet2DConditionModel(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=768,
            attention_head_dim=8,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4,
            block_out_channels=[128, 256, 512, 512],
            layers_per_block=2,
            latent_channels=4,
            sample_size=512,
            scaling_factor=0.18215,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=49408,
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                max_position_embeddings=77,
                hidden_act="quick_gelu",
                projection_dim=768,
                bos_token_id=0,
                eos_token_id=2,
                pad_token_id=1,
            )
        )
    scheduler = sd_training_scheduler()
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER)
    return Components(unet, vae, text_encoder, tokenizer, scheduler, sd_inference_scheduler())


def synthetic_instance(folder: Path, n: int = 6) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.effect_noise((512, 512), 40 + 5 * i).convert("RGB").save(folder / f"noise-{i}.png")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--instance", type=Path, default=Path(".bench-data/instance"))
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp()))
    parser.add_argument(
        "--runs", default="defaults", choices=["defaults", "gradient-checkpointing"], help="Which table to make."
    )
    args = parser.parse_args()
    instance = args.instance if args.instance.is_dir() else synthetic_instance(args.out / "instance")
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, instance images: {instance}", flush=True)
    if args.runs == "defaults":  # herdbook's defaults: no gradient checkpointing, a checkpoint every 200 steps
        runs = [
            ("full", dict(mode="full", learning_rate=5e-6, steps=args.steps)),
            ("lora r16", dict(mode="lora", learning_rate=1e-4, steps=args.steps)),
        ]
    else:  # the first table: gradient checkpointing on, a checkpoint every 100 steps
        runs = [
            (
                "full, grad ckpt",
                dict(
                    mode="full", learning_rate=5e-6, steps=args.steps, gradient_checkpointing=True, checkpoint_every=100
                ),
            ),
            (
                "lora r16, grad ckpt",
                dict(
                    mode="lora", learning_rate=1e-4, steps=args.steps, gradient_checkpointing=True, checkpoint_every=100
                ),
            ),
            (
                "full",
                dict(
                    mode="full",
                    learning_rate=5e-6,
                    steps=min(100, args.steps),
                    checkpoint_every=0,
                    validation_prompts=[],
                ),
            ),
        ]
    rows = []
    for label, options in runs:
        settings = RoundSettings(
            instance_dir=str(instance),
            output_dir=str(args.out / label.replace(" ", "-").replace(",", "")),
            model=ModelChain("sd15-architecture-random-weights"),
            **{"validation_prompts": REFERENCE_PROMPTS, "validation_seeds": [0, 1], **options},
        )
        built = time.perf_counter()
        components = sd15_components()
        build_seconds = time.perf_counter() - built
        result = train(settings, components)
        m = result.metrics
        rows.append(
            {
                "run": label,
                "steps": m["steps_run"],
                "s_per_step_mean": round(m["seconds_per_step"], 4),
                "s_per_step_median": round(m["median_step_seconds"], 4),
                "loop_s": round(m["train_seconds"], 1),
                "checkpoints_s": round(m["checkpoint_seconds"], 1),
                "total_s": round(m["total_seconds"], 1),
                "build_s": round(build_seconds, 1),
                "peak_gib": round(m["peak_memory_gb"], 2),
                "precision": m["mixed_precision"],
                "probe_loss": f"{m['probe_loss_before']:.4f}->{m['probe_loss_after']:.4f}",
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        del components, result
        gc.collect()
        torch.cuda.empty_cache()
    print()
    columns = list(rows[0])
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(str(row[c]) for c in columns))


if __name__ == "__main__":
    main()
