"""One round on 1 and on 2 GPUs at the same global batch, through accelerate's launcher.

For nvidia-h200-x2 (issue 6): SD-1.5's architecture with random weights at 512 px, global
batch 2 (2 per step on one GPU, 1 per GPU on two), reporting images per second, the scaling
ratio (goal: at least 1.8x), peak memory per GPU and the command. NVLink multicast stays off.

    python3 bench/multi_gpu_round.py [--steps 100] [--global-batch 2]
    python3 bench/multi_gpu_round.py --tiny      # the same orchestration on the CPU (gloo), tiny model

Results of a GPU run go to bench/multi_gpu_round.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

# Multicast can put a shared host's GPUs out of service: keep it off in every process we start.
for name in ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS"):
    os.environ[name] = "0" if name == "NCCL_NVLS_ENABLE" else "1"

from herdbook.training.components import make_pipeline  # noqa: E402
from herdbook.training.dreambooth import train  # noqa: E402
from herdbook.training.launch import launch  # noqa: E402
from herdbook.training.settings import ModelChain, RoundSettings  # noqa: E402


def build_model(folder: Path, tiny: bool) -> Path:
    if tiny:
        from tests.training.tiny import tiny_components

        parts = tiny_components()
    else:
        from bench.gpu_round import sd15_components

        parts = sd15_components()
    make_pipeline(parts).save_pretrained(folder, safe_serialization=True)
    return folder


def instance_images(folder: Path, resolution: int) -> Path:
    source = Path(".bench-data/instance")
    if source.is_dir():
        return source
    from bench.gpu_round import synthetic_instance

    return synthetic_instance(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--global-batch", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU: checks the orchestration only")
    args = parser.parse_args()
    import torch

    scratch = Path(tempfile.mkdtemp())
    model = build_model(scratch / "model", args.tiny)
    resolution = 32 if args.tiny else 512
    rows = []
    for processes in (1, 2):
        settings = RoundSettings(
            instance_dir=str(instance_images(scratch / "instance", resolution)),
            output_dir=str(scratch / f"{processes}-process"),
            model=ModelChain(str(model)),
            resolution=resolution,
            batch_size=args.global_batch // processes,
            steps=args.steps,
            checkpoint_every=0,
            validation_prompts=[],
        )
        if processes == 1:
            train(settings)
        else:
            launch(settings, processes, cpu=not torch.cuda.is_available())
        metrics = json.loads((settings.output / "metrics.json").read_text())
        rows.append(
            {
                "processes": processes,
                "global_batch": metrics["global_batch"],
                "images_per_second": round(metrics["images_per_second"], 2),
                "median_step_s": round(metrics["median_step_seconds"], 4),
                "peak_gib_per_gpu": metrics.get("peak_memory_gb_per_process"),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    ratio = rows[1]["images_per_second"] / rows[0]["images_per_second"]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (gloo)"
    print(f"\n{device}; {args.steps} steps at {resolution} px, global batch {args.global_batch}")
    print("processes | images/s | median step s | peak GiB per GPU")
    for row in rows:
        print(f"{row['processes']} | {row['images_per_second']} | {row['median_step_s']} | {row['peak_gib_per_gpu']}")
    print(f"scaling 1 -> 2 processes: {ratio:.2f}x (goal 1.8x)")


if __name__ == "__main__":
    main()
