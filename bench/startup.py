"""What a herdbook command's start-up costs before any model work: each heavy import, and CUDA's
start, each timed in a fresh process (twice: the first also fills the page and bytecode caches).

    python3 -m bench.startup
"""

from __future__ import annotations

import subprocess
import sys
import time

STEPS = [
    ("python alone", "pass"),
    ("import torch", "import torch"),
    ("torch + CUDA start", "import torch; torch.cuda.is_available(); torch.zeros(1, device='cuda')"),
    ("import triton", "import triton"),
    ("import transformers (CLIP)", "from transformers import CLIPTextModel"),
    ("import diffusers (UNet, VAE)", "from diffusers import AutoencoderKL, UNet2DConditionModel"),
    ("import diffusers pipeline", "from diffusers import StableDiffusionPipeline"),
    ("import peft", "import peft"),
    ("import accelerate", "import accelerate"),
    ("import oxen", "import oxen"),
    ("import sqlalchemy + herdbook.db", "import herdbook.db.store, herdbook.db.models"),
    ("herdbook.cli", "import herdbook.cli"),
    ("herdbook training (dreambooth)", "import herdbook.training.dreambooth"),
    ("quiet_libraries", "import herdbook.cli as c; c.quiet_libraries()"),
]


def timed(code: str) -> float:
    """Seconds the fresh process took; NaN if it failed (no GPU here, a package missing)."""
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True)
    return time.perf_counter() - began if done.returncode == 0 else float("nan")


def main() -> None:
    print(f"{'what':<34} {'first':>7} {'again':>7}")
    for name, code in STEPS:
        print(f"{name:<34} {timed(code):6.2f}s {timed(code):6.2f}s", flush=True)
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import herdbook.training.dreambooth, herdbook.cli"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = []
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = line.split(":", 1)[1].split("|")
            if cumulative.strip().isdigit() and name.startswith(" ") and not name.startswith("  "):
                rows.append((int(cumulative) / 1e6, name.strip()))
    print("\nthe slowest top-level imports of herdbook.training.dreambooth + herdbook.cli:")
    for seconds, name in sorted(rows, reverse=True)[:12]:
        print(f"  {seconds:6.2f} s  {name}")


if __name__ == "__main__":
    main()
