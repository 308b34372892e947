"""Compiling the Triton kernels a round or a draw will run, in a child process started with the
command, so that a fresh machine's first steps find them in Triton's cache instead of
compiling them one after another while the GPU waits: a cold round's first steps took 8.3 s on
the H200 machine against 2.2 s once the caches were warm (bench/user_wait.txt), while the
process was still reading weights and importing libraries for several seconds before them.

training.kernels' kernels compile once per element type, not per shape, so tiny inputs of the
types a round uses compile what the real ones run. Where a guess misses (another type, another
alignment), the real call compiles as it always did: nothing depends on the child finishing.

    python3 -m herdbook.training.precompile   # what `start` runs; prints what it compiled
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

# SD-1.x's narrowest attention heads are 40 wide, SDXL's 64 (training.layers.ATTENTION_WIDTHS)
HEAD_WIDTHS = (40, 64)


def has_nvidia_gpu() -> bool:
    """Whether an NVIDIA driver is loaded and a GPU is visible, judged without importing torch
    (~3 s a process), so a machine without one starts no child."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidiactl").exists()


def start() -> subprocess.Popen | None:
    """The child compiling the kernels, where there is a GPU; it ends by itself."""
    if not has_nvidia_gpu():
        return None
    return subprocess.Popen(
        [sys.executable, "-m", "herdbook.training.precompile"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def compile_kernels() -> list[str]:
    """Run each kernel once on tiny inputs of the types rounds and draws use; what ran."""
    import torch
    from herdbook.training.components import inference_dtype
    from herdbook.training.layers import (
        ChannelsLastGroupNorm,
        GegluFunction,
        add_bias_,
        attention,
        on_gpu_with_triton,
    )
    from herdbook.training.masters import FlatAdamW

    if not torch.cuda.is_available():
        return []
    device = torch.device("cuda")
    dtype = inference_dtype(device)  # and the fast path's working copy's (bf16, where the GPU has it)
    like = {"device": device, "dtype": dtype}
    if not on_gpu_with_triton(torch.empty(1, **like)):
        return []
    ran = []

    # GroupNorm over channels-last activations, forward and backward (training.layers)
    norm = ChannelsLastGroupNorm(32, 64).to(**like)
    x = torch.randn(1, 64, 8, 8, **like).to(memory_format=torch.channels_last).requires_grad_()
    norm(x).float().sum().backward()
    ran.append("group norm")

    projected = torch.randn(16, 128, **like, requires_grad=True)
    GegluFunction.apply(projected).float().sum().backward()
    ran.append("geglu")

    with torch.no_grad():  # sampling's own: a convolution's bias, narrow attention heads
        add_bias_(torch.randn(1, 64, 8, 8, **like).to(memory_format=torch.channels_last), torch.randn(64, **like))
        ran.append("convolution bias")
        for width in HEAD_WIDTHS:
            q = torch.randn(1, 64, 8 * width, **like)
            attention(q, q, q, heads=8)
            ran.append(f"attention ({width}-wide heads)")

    # the optimizer's two table kernels, over float32 masters with a working copy (training.masters)
    weights = [torch.nn.Parameter(torch.randn(64, 64, device=device)) for _ in range(2)]
    optimizer = FlatAdamW([{"params": weights, "working_dtype": dtype}], lr=1e-4)
    for group in optimizer.param_groups:
        group["lr"] = torch.tensor(1e-4, device=device)
    loss = sum((leaf.float() ** 2).sum() for leaf in optimizer.leaves(0))
    loss.backward()
    optimizer.step()
    ran.append("optimizer")
    torch.cuda.synchronize()
    return ran


def main() -> None:
    began = time.perf_counter()
    ran = compile_kernels()
    print(
        f"compiled or found in the cache in {time.perf_counter() - began:.1f} s: {', '.join(ran) or 'nothing (no GPU)'}"
    )


if __name__ == "__main__":
    main()
