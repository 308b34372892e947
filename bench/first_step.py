"""Where a cold process's first training step goes: SD-1.5's UNet (random weights), batch 1,
512 px, bf16 all through as the fast path runs it; each call timed, first and second.

    python3 -m bench.first_step [--channels-last]     # from the repository root; one process per variant

bench/first_step.txt holds the runs: on a fresh H100 machine the first forward and backward
take ~12 s, in any later process on that machine ~1.8 s. The difference is the CUDA driver
compiling PTX for kernels the libraries ship no H100 code for, and caching it (~/.nv/ComputeCache):
with CUDA_CACHE_DISABLE=1 every process pays it again. Reading the libraries into the page
cache first did not help (tried: 11.3 s); cuDNN's older API (TORCH_CUDNN_V8_API_DISABLED=1)
neither (14.6 s)."""

from __future__ import annotations

import argparse
import time

import torch


def timed(label: str, work) -> None:
    torch.cuda.synchronize()
    began = time.perf_counter()
    work()
    torch.cuda.synchronize()
    print(f"  {label:<28} {time.perf_counter() - began:8.3f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    from herdbook.training.dreambooth import forward_in

    from bench.gpu_round import sd15_components

    began = time.perf_counter()
    unet = sd15_components().unet.train()
    print(f"channels_last={args.channels_last}; built in {time.perf_counter() - began:.1f} s", flush=True)
    if args.channels_last:
        unet.to(memory_format=torch.channels_last)
    noisy = torch.randn(1, 4, 64, 64, device="cuda")
    hidden = torch.randn(1, 77, 768, device="cuda")
    steps = torch.tensor([500], device="cuda")
    for n in (1, 2, 3):
        out = {}
        timed(
            f"forward {n}", lambda out=out: out.setdefault("y", forward_in(torch.bfloat16, unet, noisy, steps, hidden))
        )
        timed(f"backward {n}", lambda out=out: out["y"].pow(2).mean().backward())
        unet.zero_grad(set_to_none=True)


if __name__ == "__main__":
    main()
