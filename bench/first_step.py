"""Where a cold process's first training step goes: SD-1.5's UNet (random weights), batch 1,
512 px, bf16 all through as the fast path runs it; each call timed, first and second.

    python3 -m bench.first_step [--channels-last] [--by-op] [--attention default|flash]

bench/first_step.txt holds the runs. On a fresh H100 machine the first forward and backward
took ~11 s, in any later process ~1.8 s: kernels compiled on first use and cached by the CUDA
driver (with CUDA_CACHE_DISABLE=1, or a fresh CUDA_CACHE_PATH, every process pays again).
`--by-op` in a fresh cache found them: scaled-dot-product attention's first call took 1.4-1.8 s,
every other kind of kernel under 0.2 s. torch picks cuDNN's attention on an H100, whose kernels
cuDNN generates at run time, for each of the UNet's attention shapes. With flash attention
(`--attention flash`, what training now uses) the first forward and backward took 0.8 s."""

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


def bf16_weights(unet) -> dict:
    """bf16 copies of the float32 weights, differentiable (what the fast path's working copy holds)."""
    return {name: p.to(torch.bfloat16) for name, p in unet.named_parameters()}


def by_op() -> None:
    """The first and second call of each kind of work the step does, smallest first, so a
    cold process shows which library's kernels are compiled on first use."""
    import torch.nn.functional as F

    bf16 = {"device": "cuda", "dtype": torch.bfloat16}
    x = torch.randn(1, 320, 64, 64, **bf16).to(memory_format=torch.channels_last).requires_grad_()
    conv = torch.nn.Conv2d(320, 320, 3, padding=1).to(**bf16).to(memory_format=torch.channels_last)
    linear = torch.nn.Linear(320, 320).to(**bf16)
    q = torch.randn(1, 8, 4096, 40, **bf16, requires_grad=True)
    tokens = torch.randn(4096, 320, **bf16)
    params = [torch.randn(1000, device="cuda", requires_grad=True) for _ in range(3)]
    for p in params:
        p.grad = torch.randn_like(p)
    adam = torch.optim.AdamW(params, fused=True)
    work = {
        "elementwise add/mul": lambda: (x * 2 + 1).sum(),
        "silu fwd+bwd": lambda: F.silu(x).sum().backward(),
        "group_norm fwd+bwd": lambda: F.group_norm(x, 32).sum().backward(),
        "layer_norm fwd+bwd": lambda: F.layer_norm(q, (40,)).sum().backward(),
        "linear fwd+bwd (cuBLAS)": lambda: linear(tokens).sum().backward(),
        "sdpa fwd+bwd": lambda: F.scaled_dot_product_attention(q, q, q).sum().backward(),
        "conv2d fwd+bwd (cuDNN)": lambda: conv(x).sum().backward(),
        "fused AdamW": adam.step,
    }
    for label, fn in work.items():
        timed(f"{label} 1", fn)
        timed(f"{label} 2", fn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--by-op", action="store_true", help="First time each kind of kernel, then the UNet.")
    parser.add_argument("--attention", choices=["default", "flash"], default="default", help="SDPA backend")
    args = parser.parse_args()
    from bench.step_profile import attention_context

    print(f"arch list {torch.cuda.get_arch_list()}, cuDNN {torch.backends.cudnn.version()}", flush=True)
    print(f"attention: {args.attention}", flush=True)
    with attention_context(args.attention):
        first_steps(args)


def first_steps(args) -> None:
    if args.by_op:
        by_op()
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
            f"forward {n}",
            lambda out=out: out.setdefault("y", forward_in(bf16_weights(unet), unet, noisy, steps, hidden)),
        )
        timed(f"backward {n}", lambda out=out: out["y"].pow(2).mean().backward())
        unet.zero_grad(set_to_none=True)


if __name__ == "__main__":
    main()
