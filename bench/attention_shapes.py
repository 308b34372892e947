"""Flash against cuDNN attention at each attention shape of SD-1.5's UNet (batch 1, 512 px,
bf16, forward+backward): what each costs per step and what cuDNN's first call costs (it
compiles its kernels at run time, per shape). Decides which shapes, if any, are worth cuDNN.

    CUDA_CACHE_PATH=$(mktemp -d) python3 -m bench.attention_shapes
"""

from __future__ import annotations

import time

import torch
import triton.testing
from torch.nn.attention import SDPBackend, sdpa_kernel

# (tokens, context tokens, head width, uses per step): 8 heads; self- and cross-attention (77
# tokens of text) at each of the UNet's four resolutions, counted over its down, mid and up blocks
SHAPES = [
    (4096, 4096, 40, 5), (4096, 77, 40, 5),
    (1024, 1024, 80, 5), (1024, 77, 80, 5),
    (256, 256, 160, 5), (256, 77, 160, 5),
    (64, 64, 160, 1), (64, 77, 160, 1),
]  # fmt: skip


def step(backend, q, k, v, dy):
    def run():
        with sdpa_kernel([backend]):
            torch.nn.functional.scaled_dot_product_attention(q, k, v).backward(dy)

    return run


def main() -> None:
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    total = {"flash": 0.0, "cudnn": 0.0}
    for tokens, context, width, uses in SHAPES:
        q = torch.randn(1, 8, tokens, width, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        k, v = (
            torch.randn(1, 8, context, width, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in "kv"
        )
        dy = torch.randn_like(q)
        torch.cuda.synchronize()
        began = time.perf_counter()
        step(SDPBackend.CUDNN_ATTENTION, q, k, v, dy)()
        torch.cuda.synchronize()
        first = time.perf_counter() - began
        times = {
            name: triton.testing.do_bench(step(backend, q, k, v, dy)) * 1e3
            for name, backend in [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)]
        }
        for name in total:
            total[name] += times[name] * uses
        print(
            f"  q {tokens:5d} x kv {context:5d}, width {width:3d}, {uses} per step: flash {times['flash']:6.1f} us, "
            f"cudnn {times['cudnn']:6.1f} us, cudnn's first call {first:.2f} s",
            flush=True,
        )
    print(
        f"  per step (eager, launch-bound at small shapes): flash {total['flash']:.0f} us, cudnn {total['cudnn']:.0f} us"
    )


if __name__ == "__main__":
    main()
