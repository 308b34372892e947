"""SDXL round and generation speed on one GPU: SDXL-base's architecture with random weights.

Random weights cost exactly what the real ones do; no machine here reaches a model hub. The
parts are built from SDXL-base 1.0's published configs (UNet 2.6 B parameters, CLIP ViT-L and
OpenCLIP bigG text encoders, the SDXL VAE), saved with ``save_pretrained`` in float16 as a
downloaded model is, and the LoRA round loads that folder through herdbook's own loading code
(``from_pretrained``), so its time to the adapter saved includes reading the weights.
At the issue's settings: 1024 px, batch 1, LoRA rank 16, lr 1e-4, the six instance images.

- sdxl-reference-lora: herdbook's trainer with the reference script's math and costs: bf16
  autocast, the VAE and both text encoders every step, torch's AdamW, no graphs;
- sdxl-lora: herdbook's defaults (encodings cached, the UNet in bf16 on a working copy of
  float32 masters, the Triton layers, flash attention, the step captured as a CUDA graph);
- sdxl-full: the whole UNet fine-tuned the same way (s/step and peak; no target);
- sdxl-generation: 4 images at 1024, 30 steps, guidance 5, with SDXL's own sampler (Euler)
  and DPM-Solver++; the first call after loading, then the median of warm calls.

    python3 -m bench.sdxl_round [--steps 400] [--reference-steps 40] [--full-steps 40] [--rows ...]

Prints a table and writes bench/results/sdxl_round-DATE.json.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # before torch is imported: the process's own start-up counts

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from herdbook.training.components import Components, sd_training_scheduler  # noqa: E402
from herdbook.training.families import SDXL  # noqa: E402
from herdbook.training.settings import ModelChain  # noqa: E402
from herdbook.training.tiny import TOKENIZER  # noqa: E402  (a tiny tokenizer suffices: ids only)

from bench.gpu_round import ROOT, synthetic_instance, training_run  # noqa: E402

# UNet forward + backward at 1024 px, batch 1: ~12 TFLOP at the H200's measured ~790 TFLOP/s
FLOOR_S_PER_STEP = 0.016


# SDXL-base 1.0's UNet config (2.6 B parameters)
SDXL_UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),  # diffusers' name for the head count: 64-wide heads
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,  # 6 x 256 + 1280
)


def sdxl_components() -> Components:
    """SDXL-base 1.0's UNet, VAE and two text encoders, from their configs, random weights."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from herdbook.training.components import SD_SCHEDULE
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(0)
    with torch.device("cuda"):  # initialising 3.5 B parameters on the GPU takes seconds, not minutes
        unet = UNet2DConditionModel(**SDXL_UNET)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4,
            block_out_channels=[128, 256, 512, 512],
            layers_per_block=2,
            latent_channels=4,
            sample_size=1024,
            scaling_factor=0.13025,
        )
        clip_l = CLIPTextConfig(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
            bos_token_id=0, eos_token_id=2, pad_token_id=1,
        )  # fmt: skip
        clip_g = CLIPTextConfig(
            vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
            num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280,
            bos_token_id=0, eos_token_id=2, pad_token_id=1,
        )  # fmt: skip
        text_encoder, text_encoder_2 = CLIPTextModel(clip_l), CLIPTextModelWithProjection(clip_g)
    sampler = EulerDiscreteScheduler(**SD_SCHEDULE, timestep_spacing="leading")
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER)
    return Components(
        unet, vae, text_encoder, tokenizer, sd_training_scheduler(), sampler,
        family=SDXL, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer,
    )  # fmt: skip


def save_model(folder: Path) -> dict:
    """The built parts as a diffusers SDXL folder in float16, as the hub's fp16 variant is."""
    from herdbook.training.components import make_pipeline

    began = time.perf_counter()
    parts = sdxl_components()
    for part in (parts.unet, *parts.frozen_parts):
        part.to(torch.float16)
    make_pipeline(parts).save_pretrained(folder, safe_serialization=True)
    size = sum(f.stat().st_size for f in folder.rglob("*.safetensors"))
    del parts
    torch.cuda.empty_cache()
    return {"saved_s": round(time.perf_counter() - began, 1), "gib_on_disk": round(size / 2**30, 2)}


def generation_run(folder: Path, calls: int = 3) -> dict:
    from herdbook.training.components import best_device, inference_dtype, load_components, sampling_pipeline
    from herdbook.training.generate import draw

    device = best_device()
    loaded = time.perf_counter()
    parts = load_components(ModelChain(str(folder)))
    load_seconds = time.perf_counter() - loaded
    results = {"load_s": round(load_seconds, 1)}
    for label, scheduler in [("euler30", "EulerDiscreteScheduler"), ("dpm30", "DPMSolverMultistepScheduler")]:
        pipeline = sampling_pipeline(parts, device, inference_dtype(device), scheduler, graphs=True)
        times = []
        for _ in range(calls + 1):
            torch.cuda.synchronize()
            began = time.perf_counter()
            draw(pipeline, "an image of the oxenai ox", [0, 1, 2, 3], 30, 5.0, 1024)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - began)
        results[f"first_call_{label}_s"] = round(times[0], 2)
        results[label] = round(statistics.median(times[1:]), 3)
    row = {
        "name": "sdxl-generation",
        "s_per_step": None,
        "end_to_end_s": round(load_seconds + results["first_call_euler30_s"], 1),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "s_per_call": results["euler30"],
        "s_per_call_dpm30": results["dpm30"],
        **results,
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="Steps of the sdxl-lora round.")
    parser.add_argument("--reference-steps", type=int, default=40, help="Steps of the reference round (s/step).")
    parser.add_argument("--full-steps", type=int, default=40, help="Steps of the full round (s/step and peak).")
    parser.add_argument("--rows", default="lora,reference,full,generation")
    parser.add_argument("--instance", type=Path, default=ROOT / ".bench-data" / "instance")
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp()))
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    rows = args.rows.split(",")
    instance = args.instance if args.instance.is_dir() else synthetic_instance(args.out / "instance")
    device = torch.cuda.get_device_name()
    print(f"GPU: {device}, torch {torch.__version__}, instance images: {instance}", flush=True)
    folder = args.out / "sdxl-architecture-random-weights"
    saved = save_model(folder)
    print(json.dumps({"model_folder": str(folder), **saved}), flush=True)
    model = ModelChain(str(folder))
    common = dict(resolution=1024, mode="lora", learning_rate=1e-4, lora_rank=16, family="sdxl", model=model)
    runs = []
    if "lora" in rows:
        # loads the saved folder inside the round, as `herdbook train` does: build=False
        started = time.perf_counter()
        row = training_run("sdxl-lora", instance, args.out, args.steps, build=False,
                           floor=FLOOR_S_PER_STEP, **common)  # fmt: skip
        row["process_start_to_weights_saved_s"] = round(
            row["end_to_end_s"] + (started - STARTED) - saved["saved_s"], 1
        )  # the process's imports and CUDA start, not the benchmark's own model save
        runs.append(row)
    if "reference" in rows:
        runs.append(
            training_run("sdxl-reference-lora", instance, args.out, args.reference_steps, build=False,
                         floor=FLOOR_S_PER_STEP, mixed_precision="bf16", cache_encodings=False, fast_path="off",
                         checkpoint_every=0, **common)
        )  # fmt: skip
    if "full" in rows:
        full = {**common, "mode": "full", "learning_rate": 5e-6, "checkpoint_every": 0}
        runs.append(
            training_run("sdxl-full", instance, args.out, args.full_steps, build=False, floor=FLOOR_S_PER_STEP, **full)
        )
    if "generation" in rows:
        torch.cuda.reset_peak_memory_stats()
        runs.append(generation_run(folder))

    print()
    columns = ["name", "s_per_step", "steps_s", "setup_s", "save_s", "end_to_end_s", "peak_gib", "floor_share"]
    columns += ["probe_loss", "s_per_call"]
    print(" | ".join(columns))
    for row in runs:
        print(" | ".join(str(row.get(c)) for c in columns))
    args.results.mkdir(parents=True, exist_ok=True)
    today = datetime.date.today().isoformat()
    path = args.results / f"sdxl_round-{today}.json"
    path.write_text(json.dumps({"device": device, "date": today, "model": saved, "runs": runs}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
