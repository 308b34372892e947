"""What every fresh herdbook process pays before its own work, and no change inside herdbook can
take away: a Python process that imports the libraries a round or a draw needs (torch, diffusers'
UNet, transformers' CLIP) and starts CUDA, timed from spawn to exit, with the page cache dropped
first (cold) and again at once (warm); beside it, reading a model's weight files cold.

`bench/user_wait.py` times the commands; this is the floor under their "start-up" phase. A
target below it needs the work done in a process that is already running (`herdbook worker`).

    python3 -m bench.import_floor [--repeat 2] [--model FOLDER]   # as root, to drop the page cache
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CUDA = "torch.zeros(1, device='cuda') if torch.cuda.is_available() else None"
LIBRARIES = (
    "from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel; from transformers import CLIPTextModel"
)
STEPS = [
    ("python alone", "pass"),
    ("herdbook's CLI and database layer", "import herdbook.cli, herdbook.db.models"),
    ("torch", "import torch"),
    ("torch, CUDA started", f"import torch; {CUDA}"),
    ("+ diffusers' UNet, transformers' CLIP", f"import torch; {LIBRARIES}; {CUDA}"),
    ("+ peft (a LoRA round, a LoRA's draw)", f"import torch; {LIBRARIES}; import peft; {CUDA}"),
]


def drop_page_cache() -> bool:
    subprocess.run(["sync"], check=False)
    with contextlib.suppress(OSError):
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    return False


def spawn_to_exit(code: str) -> float:
    began = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return time.perf_counter() - began


def read_seconds(folder: Path) -> tuple[float, int]:
    began, size = time.perf_counter(), 0
    for file in sorted(folder.rglob("*.safetensors")):
        with file.open("rb") as handle:
            while chunk := handle.read(64 << 20):
                size += len(chunk)
    return time.perf_counter() - began, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--model", type=Path, help="a diffusers folder whose weight files to read cold")
    args = parser.parse_args()
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    can_drop = drop_page_cache()
    print(f"device: {device}; python {sys.version.split()[0]}, torch {torch.__version__}; "
          f"page cache {'dropped before each cold run' if can_drop else 'NOT dropped (not root): cold = warm'}")  # fmt: skip
    print(f"{'spawn to exit, each run (s)':<44} {'cold':>16} {'warm':>16}")
    for name, code in STEPS:
        cold, warm = [], []
        for _ in range(args.repeat):
            drop_page_cache()
            cold.append(spawn_to_exit(code))
            warm.append(spawn_to_exit(code))
        shown = [", ".join(f"{s:.2f}" for s in runs) for runs in (cold, warm)]
        print(f"{name:<44} {shown[0]:>16} {shown[1]:>16}   median {statistics.median(cold):.2f} / "
              f"{statistics.median(warm):.2f}", flush=True)  # fmt: skip
    if args.model:
        drop_page_cache()
        seconds, size = read_seconds(args.model)
        print(f"reading {args.model}'s weight files cold: {size / 2**30:.2f} GiB in {seconds:.2f} s "
              f"({size / 2**30 / seconds:.2f} GiB/s)")  # fmt: skip


if __name__ == "__main__":
    main()
