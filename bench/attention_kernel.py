"""The sampling attention kernel (training.layers.attention) against torch's attention backends
at SD-1.5's first-level shapes, 4 images with guidance (batch 8, 8 heads of width 40):
self-attention over 4096 tokens and cross-attention to 77. Launch settings swept; each
result's largest gap to float32 attention printed beside flash's.

    python3 -m bench.attention_kernel
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

CONFIGS = [  # BLOCK_M, BLOCK_N, warps, stages
    (128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (128, 32, 4, 3),
    (64, 64, 4, 3), (128, 64, 4, 4), (64, 128, 4, 3), (128, 128, 4, 2),
]  # fmt: skip


def by_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


def main() -> None:
    import triton.testing
    from herdbook.training.layers import attention
    from torch.nn.attention import SDPBackend, sdpa_kernel

    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    heads, batch = 8, 8
    for name, keys in [("self 4096 x 4096", 4096), ("cross 4096 x 77", 77)]:
        torch.manual_seed(0)
        q = torch.randn(batch, 4096, 320, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(batch, keys, 320, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(batch, keys, 320, device="cuda", dtype=torch.bfloat16)
        exact = F.scaled_dot_product_attention(*(by_heads(t.float(), heads) for t in (q, k, v)))
        exact = exact.transpose(1, 2).reshape(batch, 4096, 320)

        def sdpa(q=q, k=k, v=v):
            out = F.scaled_dot_product_attention(*(by_heads(t, heads) for t in (q, k, v)))
            return out.transpose(1, 2).reshape(batch, 4096, 320)

        print(f"## {name}", flush=True)
        for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
            with sdpa_kernel([backend]):
                gap = (sdpa().float() - exact).abs().max().item()
                ms = triton.testing.do_bench(sdpa)
            print(f"  torch {backend.name:<20} {ms * 1e3:7.1f} us  largest gap {gap:.2e}", flush=True)
        for number, (block_m, block_n, warps, stages) in enumerate(CONFIGS):
            tile = {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": warps, "num_stages": stages}
            began = time.perf_counter()
            out = attention(q, k, v, heads, **tile)
            torch.cuda.synchronize()
            first = time.perf_counter() - began
            gap = (out.float() - exact).abs().max().item()
            ms = triton.testing.do_bench(lambda t=tile, q=q, k=k, v=v: attention(q, k, v, heads, **t))
            note = f"  first call {first:.2f} s" if number == 0 else ""
            print(
                f"  kernel {block_m:3d} x {block_n:3d}, {warps} warps, {stages} stages {ms * 1e3:7.1f} us  largest gap {gap:.2e}{note}",
                flush=True,
            )


if __name__ == "__main__":
    main()
