"""Where an SDXL sampling call spends its time: 4 images at 1024 (batch 8 with guidance), SDXL-base's
architecture with random weights, on one GPU.

Per UNet call (the CUDA graph's replay, median of 30, captured as the trainer captures a step): herdbook's sampling set-up against other attention
choices; the VAE decoding 4 images; then one whole draw() profiled by kernel family, with the GPU's
idle time between kernels.

    python3 -m bench.sdxl_sampling [--steps 30] [--variants herdbook,flash,cudnn,efficient]
    python3 -m bench.sdxl_sampling --arithmetic   # no GPU: the UNet call's FLOPs, and the floor they set
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections import defaultdict

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench.sdxl_round import SDXL_UNET, sdxl_components
from bench.step_profile import captured_ms, family, profiled_call

BACKENDS = {
    "flash": [SDPBackend.FLASH_ATTENTION],
    "cudnn": [SDPBackend.CUDNN_ATTENTION],
    "efficient": [SDPBackend.EFFICIENT_ATTENTION],
}


@torch.no_grad()
def unet_calls(parts, variants: list[str]) -> None:
    from diffusers.models.attention_processor import AttnProcessor2_0
    from herdbook.training.layers import SamplingAttention, fast_layers

    unet = fast_layers(parts.unet.to("cuda", torch.bfloat16).eval())
    torch.manual_seed(0)
    sample = torch.randn(8, 4, 128, 128, device="cuda", dtype=torch.bfloat16)
    hidden = torch.randn(8, 77, 2048, device="cuda", dtype=torch.bfloat16)
    added = {
        "text_embeds": torch.randn(8, 1280, device="cuda", dtype=torch.bfloat16),
        "time_ids": torch.tensor([[1024, 1024, 0, 0, 1024, 1024]] * 8, device="cuda", dtype=torch.bfloat16),
    }
    t = torch.tensor(500, device="cuda")

    def call():
        return unet(sample, t, hidden, added_cond_kwargs=added, return_dict=False)[0]

    reference = None
    for variant in variants:
        if variant == "herdbook":
            unet.set_attn_processor(SamplingAttention())
            backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
        else:
            unet.set_attn_processor(AttnProcessor2_0())
            backends = BACKENDS[variant]
        with sdpa_kernel(backends):
            began = time.perf_counter()
            out = call()
            torch.cuda.synchronize()
            first = time.perf_counter() - began
            ms = captured_ms(call)
        reference = out if reference is None else reference
        gap = ((out.float() - reference.float()).norm() / reference.float().norm()).item()
        print(f"  UNet call, batch 8 at 1024, {variant:<10} {ms:7.1f} ms  (first call {first:5.2f} s, "
              f"relative gap to the first variant {gap:.1e})", flush=True)  # fmt: skip


@torch.no_grad()
def vae_decode(parts) -> None:
    from herdbook.training.layers import fast_layers

    vae = fast_layers(parts.vae.to("cuda", torch.bfloat16).eval())
    latents = torch.randn(4, 4, 128, 128, device="cuda", dtype=torch.bfloat16)
    ms = captured_ms(lambda: vae.decode(latents, return_dict=False)[0])
    print(f"  VAE decode of 4 images at 1024: {ms:7.1f} ms", flush=True)


def draw_profile(steps: int) -> None:
    from herdbook.training.components import inference_dtype, sampling_pipeline
    from herdbook.training.generate import draw

    parts = sdxl_components()
    pipeline = sampling_pipeline(parts, torch.device("cuda"), inference_dtype(torch.device("cuda")), graphs=True)
    wall, events = profiled_call(lambda: draw(pipeline, "an image of the oxenai ox", [0, 1, 2, 3], steps, 5.0, 1024))
    events = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(e.device_time for e in events) / 1e3
    print(f"\n## one draw() of 4 images at 1024, {steps} steps: {wall * 1e3:.0f} ms wall, {busy:.0f} ms of kernels")
    kernels: dict[str, list[float]] = defaultdict(list)
    names: dict[str, float] = defaultdict(float)
    for e in events:
        kernels[family(e.name)].append(e.device_time / 1e3)
        names[e.name] += e.device_time / 1e3
    for name, times in sorted(kernels.items(), key=lambda kv: -sum(kv[1])):
        print(f"  {name:<14} {sum(times):8.1f} ms {len(times):6d} kernels")
    print("  the largest kernels:")
    for name, ms in sorted(names.items(), key=lambda kv: -kv[1])[:15]:
        print(f"    {ms:8.1f} ms  {family(name):<12} {name[:110]}")
    timeline = sorted((e.time_range.start, e.time_range.end) for e in events)
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(timeline) if b[0] > a[1]]
    print(f"  GPU idle between kernels: {sum(gaps) / 1e3:.1f} ms in {len(gaps)} gaps", flush=True)


PEAK_TFLOPS = 790  # the H200's measured bf16 matrix rate (bench/sdxl_round.py)
# kernel time of one 30-step draw, above: the UNet's 30 calls, with the text encoders' matmuls and the
# VAE decode's convolutions (~130 ms in all) in it too, so the rates below are the UNet's at least
MEASURED_MS = {"matmul": 1602.8, "convolution": 593.3, "attention": 658.4}


def arithmetic(steps: int = 30, target_s: float = 3.0, vae_ms: float = 129.9) -> None:
    """FLOPs of one UNet call at batch 8 and 1024 px, counted on the meta device (no GPU, no
    weights), against the kernel time the profile above measured for each kind of work."""
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    kinds = {"aten.addmm": "matmul", "aten.mm": "matmul", "aten.convolution": "convolution", "aten.bmm": "attention"}
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET)
        added = {"text_embeds": torch.empty(8, 1280), "time_ids": torch.empty(8, 6)}
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            unet(torch.empty(8, 4, 128, 128), torch.tensor(500.0), torch.empty(8, 77, 2048), added_cond_kwargs=added)
    flops: dict[str, float] = defaultdict(float)
    for op, count in counter.get_flop_counts()["Global"].items():
        flops[kinds.get(str(op), str(op))] += count
    total = sum(flops.values())
    floor_ms = total / PEAK_TFLOPS / 1e9
    print(f"one UNet call, batch 8 at 1024 (4 images with guidance): {total / 1e12:.1f} TFLOP, "
          f"{floor_ms:.1f} ms at {PEAK_TFLOPS} TFLOP/s")  # fmt: skip
    for kind, count in sorted(flops.items(), key=lambda kv: -kv[1]):
        ms = count / PEAK_TFLOPS / 1e9
        measured = MEASURED_MS.get(kind)
        rate = (
            f"; the draw's {measured / steps:.1f} ms a call, {ms / (measured / steps):.0%} of peak or more"
            if measured
            else ""
        )
        print(f"  {kind:<12} {count / 1e12:6.1f} TFLOP  {ms:5.1f} ms at peak{rate}")
    per_call = (target_s * 1e3 - vae_ms) / steps
    print(f"a {target_s:.1f} s draw of {steps} steps leaves {per_call:.0f} ms a UNet call after the VAE's "
          f"{vae_ms:.0f} ms: {floor_ms / per_call:.0%} of peak over the whole call, norms and all "
          f"(measured: 121.4 ms, {floor_ms / 121.4:.0%})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--variants", default="herdbook,flash,cudnn,efficient")
    parser.add_argument("--skip-draw", action="store_true")
    parser.add_argument("--arithmetic", action="store_true", help="count the UNet call's FLOPs (no GPU)")
    args = parser.parse_args()
    if args.arithmetic:
        arithmetic(args.steps)
        return
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    parts = sdxl_components()
    unet_calls(parts, args.variants.split(","))
    vae_decode(parts)
    del parts
    torch.cuda.empty_cache()
    if not args.skip_draw:
        draw_profile(args.steps)


if __name__ == "__main__":
    main()
