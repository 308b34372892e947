"""Which speed-ups pay on the GPU: each variant measured against the same baseline, in one process.

Predictions (written before the run, checked against its output in bench/gpu_variants.txt):

- sampling UNet at batch 8 (4 images with guidance), bf16: cuDNN's autotuner (benchmark mode)
  and channels-last convolutions should take the 55 ms call measured with plain settings
  toward ~20 ms (6.6 TFLOP a call); a CUDA graph of the UNet call removes ~1,000 launches
  (a few ms more).
- the captured training step (50 ms): channels-last and the autotuner should save ~10-20%
  of the UNet's share (~25 ms), so ~45 ms; the optimizer and clipping (~11 ms) stay.

    python3 bench/gpu_variants.py
"""

from __future__ import annotations

import statistics
import time

import torch

from bench.gpu_round import sd15_components


def timed(fn, repeats: int = 10) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def sampling_unet(channels_last: bool, benchmark: bool, graph: bool) -> float:
    torch.backends.cudnn.benchmark = benchmark
    parts = sd15_components()
    unet = parts.unet.to(torch.bfloat16).eval()
    if channels_last:
        unet.to(memory_format=torch.channels_last)
    latents = torch.randn(8, 4, 64, 64, device="cuda", dtype=torch.bfloat16)
    hidden = torch.randn(8, 77, 768, device="cuda", dtype=torch.bfloat16)
    t = torch.tensor(500, device="cuda")
    if channels_last:
        latents = latents.to(memory_format=torch.channels_last)

    def call():
        return unet(latents, t, hidden).sample

    if not graph:
        result = timed(call)
    else:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                call()
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            call()
        result = timed(g.replay)
    del parts
    torch.cuda.empty_cache()
    return result


def training_step(channels_last: bool, benchmark: bool, steps: int = 40) -> tuple[float, float]:
    import tempfile
    from pathlib import Path

    from herdbook.training.dreambooth import train
    from herdbook.training.settings import ModelChain, RoundSettings

    from bench.gpu_round import ROOT, synthetic_instance

    torch.backends.cudnn.benchmark = benchmark
    instance = ROOT / ".bench-data" / "instance"
    out = Path(tempfile.mkdtemp())
    if not instance.is_dir():
        instance = synthetic_instance(out / "instance")
    parts = sd15_components()
    if channels_last:
        parts.unet.to(memory_format=torch.channels_last)
    settings = RoundSettings(
        instance_dir=str(instance),
        output_dir=str(out / "round"),
        model=ModelChain("sd15"),
        steps=steps,
        checkpoint_every=0,
        validation_prompts=[],
    )
    torch.cuda.reset_peak_memory_stats()
    metrics = train(settings, parts).metrics
    del parts
    torch.cuda.empty_cache()
    return metrics["median_step_seconds"], metrics["peak_memory_gb"]


def main() -> None:
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    print("sampling UNet, batch 8 (4 images x guidance), bf16, 512 px; median of 10 calls, ms")
    for channels_last, benchmark, graph in [
        (False, False, False),
        (False, True, False),
        (True, True, False),
        (True, True, True),
        (False, True, True),
    ]:
        ms = 1000 * sampling_unet(channels_last, benchmark, graph)
        print(
            f"  channels_last={channels_last!s:<5} cudnn.benchmark={benchmark!s:<5} graph={graph!s:<5} {ms:7.1f}",
            flush=True,
        )
    print("captured training step, full fine-tune, batch 1, 512 px; median s/step over 40 steps, peak GiB")
    for channels_last, benchmark in [(False, False), (False, True), (True, True)]:
        seconds, peak = training_step(channels_last, benchmark)
        print(
            f"  channels_last={channels_last!s:<5} cudnn.benchmark={benchmark!s:<5} {seconds:.4f} s/step {peak:.2f} GiB",
            flush=True,
        )


if __name__ == "__main__":
    main()
