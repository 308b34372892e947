"""Round and generation speed on one GPU: SD-1.5's architecture with random weights.

Random weights cost exactly what the real ones do; no machine here reaches a model hub. In one
process, at the reference settings (512 px, batch 1, 400 steps, lr 5e-6 constant, the six
instance images when given, else six drawn ones):

- reference-full: herdbook's trainer with the reference example's math and costs: float32,
  the VAE and text encoder run every step, no caching, no graphs (fast_path = off);
- herdbook-full, herdbook-lora (rank 16): herdbook's defaults (the UNet in bf16 all through
  on a working copy of float32 master weights, which two Triton kernels clip and update,
  reading the gradients in place (training.masters), flash attention, encodings cached, the
  whole step captured as one CUDA graph);
- generation: 4 images at 512, guidance 7.5, with 25 DPM-Solver++ steps, 30 (the default)
  and 50 PNDM steps; the first call after loading, then the median of warm calls.

Each round's model is built on the GPU (standing in for reading it from disk: build_s), then
left in host memory, where from_pretrained leaves a real one: the round moves it to the GPU.
Each training run prints the probe loss before and after (fixed noise and timesteps), so the
fast and reference runs can be seen to learn alike.

    python3 -m bench.gpu_round [--steps 400] [--instance DIR] [--out DIR] [--skip-reference]

Prints a table and writes bench/results/gpu_round-DATE.json.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from herdbook.training.components import Components, sd_inference_scheduler, sd_training_scheduler
from herdbook.training.dreambooth import train
from herdbook.training.settings import ModelChain, RoundSettings

ROOT = Path(__file__).resolve().parents[1]
from herdbook.training.tiny import TOKENIZER  # noqa: E402  (a tiny tokenizer suffices: ids only)

# What one batch-1 step must do: UNet forward + backward at 512 px, 2.47 TFLOP at the measured
# 712 TFLOP/s, plus fused AdamW over 860 M float32 parameters (~9 ms) and clipping (~2.5 ms).
FLOOR_S_PER_STEP = 0.015


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


def training_run(
    name: str, instance: Path, out: Path, steps: int, build=None, floor: float = FLOOR_S_PER_STEP, **options
) -> dict:
    """One round. ``build`` makes the model's parts (SD-1.5's by default) and stands in for
    reading them from disk; None with a ``model`` option loads that folder inside the round."""
    settings = RoundSettings(
        instance_dir=str(instance),
        output_dir=str(out / name),
        model=options.pop("model", ModelChain("sd15-architecture-random-weights")),
        steps=steps,
        validation_prompts=[],
        **options,
    )
    built = time.perf_counter()
    components = (build or sd15_components)() if build is not False else None
    torch.cuda.synchronize()
    build_seconds = time.perf_counter() - built
    if components is not None:
        for part in (components.unet, *components.frozen_parts):
            part.to("cpu")  # where from_pretrained leaves them: train() moves them, as it does a real model
    m = train(settings, components).metrics
    row = {
        "name": name,
        "s_per_step": round(m["median_step_seconds"], 4),
        "mean_s_per_step": round(m["seconds_per_step"], 4),
        "steps_s": round(m["train_seconds"], 1),
        "setup_s": round(m["setup_seconds"], 1),
        "save_s": round(m["save_seconds"], 1),
        "checkpoint_s": round(m["checkpoint_seconds"], 2),
        "first_steps_s": m["first_step_seconds"],
        "slowest_steps_s": m["slowest_step_seconds"],
        "build_s": round(build_seconds, 1),
        "end_to_end_s": round(build_seconds + m["seconds_to_weights_saved"], 1),
        "peak_gib": round(m["peak_memory_gb"], 2),
        "peak_gib_by_phase": {phase: round(gib, 2) for phase, gib in m["peak_memory_gb_by_phase"].items()},
        "floor_share": round(floor / m["median_step_seconds"], 2),
        "fast_path": m["fast_path"],
        "probe_loss": [round(m["probe_loss_before"], 4), round(m["probe_loss_after"], 4)],
        "s_per_call": None,
    }
    print(json.dumps(row), flush=True)
    del components
    gc.collect()
    torch.cuda.empty_cache()
    return row


def generation_run(calls: int = 5) -> dict:
    from herdbook.training.components import best_device, inference_dtype, sampling_pipeline
    from herdbook.training.generate import draw

    device = best_device()
    loaded = time.perf_counter()
    parts = sd15_components()
    results = {}
    for label, scheduler, steps in [
        ("dpm25", "DPMSolverMultistepScheduler", 25),
        ("dpm30", "DPMSolverMultistepScheduler", 30),
        ("pndm50", "PNDMScheduler", 50),
    ]:
        pipeline = sampling_pipeline(parts, device, inference_dtype(device), scheduler, graphs=True)
        times = []
        for call in range(calls + 1):
            torch.cuda.synchronize()
            began = time.perf_counter()
            draw(pipeline, "an image of the oxenai ox", [0, 1, 2, 3], steps, 7.5, 512)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - began)
            if call == 0 and label == "dpm25":
                results["first_call_after_loading_s"] = round(time.perf_counter() - loaded, 2)
        results[label] = round(statistics.median(times[1:]), 3)
    # a variant worth knowing: query, key and value as one projection (base models only), with
    # diffusers' fused processor (torch's attention) in place of training.layers.SamplingAttention
    from herdbook.training.graphs import GraphedUNet

    pipeline = sampling_pipeline(parts, device, inference_dtype(device), "DPMSolverMultistepScheduler")
    pipeline.fuse_qkv_projections()
    pipeline.unet = GraphedUNet(pipeline.unet)
    times = []
    for _ in range(calls + 1):
        torch.cuda.synchronize()
        began = time.perf_counter()
        draw(pipeline, "an image of the oxenai ox", [0, 1, 2, 3], 25, 7.5, 512)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - began)
    results["dpm25_fused_qkv"] = round(statistics.median(times[1:]), 3)
    row = {
        "name": "generation",
        "s_per_step": None,
        "end_to_end_s": results["first_call_after_loading_s"],
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "s_per_call": results["dpm25"],
        "s_per_call_dpm30": results["dpm30"],
        "s_per_call_pndm50": results["pndm50"],
        "s_per_call_dpm25_fused_qkv": results["dpm25_fused_qkv"],
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--instance", type=Path, default=ROOT / ".bench-data" / "instance")
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp()))
    parser.add_argument("--skip-reference", action="store_true", help="Only herdbook's defaults and generation.")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--ablate", action="store_true", help="Also a full run without its checkpoint.")
    args = parser.parse_args()
    instance = args.instance if args.instance.is_dir() else synthetic_instance(args.out / "instance")
    device = torch.cuda.get_device_name()
    print(f"GPU: {device}, torch {torch.__version__}, instance images: {instance}", flush=True)
    runs = []
    if not args.skip_reference:
        runs.append(
            training_run(
                "reference-full", instance, args.out, args.steps,
                mixed_precision="no", cache_encodings=False, fast_path="off", checkpoint_every=0,
            )
        )  # fmt: skip
    runs.append(training_run("herdbook-full", instance, args.out, args.steps, mode="full"))
    if args.ablate:  # the same without its checkpoint, to see what writing one costs the loop
        runs.append(training_run("herdbook-full-no-checkpoint", instance, args.out, args.steps, checkpoint_every=0))
    runs.append(training_run("herdbook-lora", instance, args.out, args.steps, mode="lora", learning_rate=1e-4))
    torch.cuda.reset_peak_memory_stats()
    runs.append(generation_run())

    print()
    columns = ["name", "s_per_step", "steps_s", "checkpoint_s", "build_s", "end_to_end_s", "peak_gib", "floor_share"]
    columns += ["probe_loss", "s_per_call"]
    print(" | ".join(columns))
    for row in runs:
        print(" | ".join(str(row.get(c)) for c in columns))
    generation = runs[-1]
    print(
        f"generation, 4 images at 512: {generation['s_per_call']} s (25 DPM-Solver++), "
        f"{generation['s_per_call_dpm30']} s (30), {generation['s_per_call_pndm50']} s (50 PNDM); "
        f"first call {generation['end_to_end_s']} s after the build started"
    )
    args.results.mkdir(parents=True, exist_ok=True)
    today = datetime.date.today().isoformat()
    path = args.results / f"gpu_round-{today}.json"
    path.write_text(json.dumps({"device": device, "date": today, "runs": runs}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
