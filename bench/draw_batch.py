"""How many images a sampling call should draw: seconds a call and an image at each batch size,
as ``herdbook generate`` draws (the inference type, the UNet's call captured as a CUDA graph),
on one GPU with SD-1.5's (or SDXL-base's) architecture and random weights. It sets each family's
``draw_batch`` (training.families): generation's default batch and a validation grid's calls.

    python3 -m bench.draw_batch [--model sd15|sdxl] [--calls 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def seconds_per_call(pipeline, batch: int, steps: int, guidance: float, resolution: int, calls: int) -> float:
    from herdbook.training.generate import draw

    prompts = [f"an image of the oxenai ox, view {i}" for i in range(batch)]  # a grid mixes prompts
    times = []
    for _ in range(calls + 1):  # the first captures this shape's graph
        torch.cuda.synchronize()
        began = time.perf_counter()
        draw(pipeline, prompts, list(range(batch)), steps, guidance, resolution)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - began)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["sd15", "sdxl"], default="sd15")
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    from herdbook.training.components import inference_dtype, sampling_pipeline

    if args.model == "sd15":
        from bench.gpu_round import sd15_components

        parts, sizes = sd15_components(), [1, 2, 4, 8, 16]
    else:
        from bench.sdxl_round import sdxl_components

        parts, sizes = sdxl_components(), [1, 2, 4, 8]
    family, device = parts.family, torch.device("cuda")
    pipeline = sampling_pipeline(
        parts, device, inference_dtype(device), family.default_scheduler or "EulerDiscreteScheduler", graphs=True
    )
    resolution, guidance = family.default_resolution, family.default_guidance
    print(f"{torch.cuda.get_device_name()}, {args.model}, {resolution} px, {args.steps} steps, guidance {guidance}")
    print(f"{'images a call':>14} {'s a call':>9} {'s an image':>11}  (draw_batch now: {family.draw_batch})")
    for batch in sizes:
        call = seconds_per_call(pipeline, batch, args.steps, guidance, resolution, args.calls)
        print(f"{batch:>14} {call:9.3f} {call / batch:11.4f}", flush=True)


if __name__ == "__main__":
    main()
