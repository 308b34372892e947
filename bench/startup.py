"""What a herdbook command's start-up costs before any model work: each heavy import, and CUDA's
start, each timed in a fresh process (twice: the first also fills the page and bytecode caches).

It first says whether each heavy package has bytecode beside its sources: pip byte-compiles what
it installs, but an image built otherwise may hold sources only in a folder Python can't write,
and then every process compiles them again. ``--bytecode DIR`` compiles them into DIR first
(PYTHONPYCACHEPREFIX), as pip would have, and times the imports with it. ``--why`` then says
where the slowest imports spend their time: the modules slowest in themselves (-X importtime's
self time) and the functions slowest in themselves (cProfile's tottime), each in a fresh process.

    python3 -m bench.startup [--bytecode DIR] [--why]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

PACKAGES = ["torch", "transformers", "diffusers", "accelerate", "peft", "triton", "safetensors", "huggingface_hub"]

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


def package_folders() -> dict[str, Path]:
    folders = {}
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            folders[name] = Path(spec.origin).parent
    return folders


def bytecode_state(folder: Path) -> str:
    """How many of a package's sources have this Python's bytecode beside them."""
    tag = sys.implementation.cache_tag
    sources = list(folder.rglob("*.py"))
    compiled = {p.name.split(".")[0] for p in folder.rglob(f"*.{tag}.pyc")}
    have = sum(1 for p in sources if p.stem in compiled)
    writable = "writable" if os.access(folder, os.W_OK) else "read-only"
    return f"{have} of {len(sources)} sources compiled, {writable}"


def timed(code: str, env: dict) -> float:
    """Seconds the fresh process took; NaN if it failed (no GPU here, a package missing)."""
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env)
    return time.perf_counter() - began if done.returncode == 0 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bytecode", type=Path, help="byte-compile the heavy packages into this folder first")
    parser.add_argument("--why", action="store_true", help="profile the slowest imports")
    args = parser.parse_args()
    env = dict(os.environ)
    folders = package_folders()
    print(f"site-packages: {sysconfig.get_paths()['purelib']}")
    for name, folder in folders.items():
        print(f"  {name:<16} {bytecode_state(folder)}  ({folder})")
    if args.bytecode:
        env["PYTHONPYCACHEPREFIX"] = str(args.bytecode)
        began = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", "-j", "0", *map(str, folders.values())],
            env=env,
            capture_output=True,
        )
        print(f"byte-compiled into {args.bytecode} in {time.perf_counter() - began:.1f} s")
    print(f"\n{'what':<34} {'first':>7} {'again':>7}")
    for name, code in STEPS:
        print(f"{name:<34} {timed(code, env):6.2f}s {timed(code, env):6.2f}s", flush=True)
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import herdbook.training.dreambooth, herdbook.cli"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
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
    if args.why:
        for name, code in WHY:
            why(name, code, env)
        custom_ops("what a round imports", WHY[-1][1], env)


WHY = [
    ("import transformers (CLIP)", "from transformers import CLIPTextModel"),
    ("import diffusers (UNet, VAE)", "from diffusers import AutoencoderKL, UNet2DConditionModel"),
    ("import peft", "import peft"),
    ("what a round imports", "import herdbook.cli as c; c.quiet_libraries(); import herdbook.training.dreambooth"),
]


def why(name: str, code: str, env: dict, rows: int = 15) -> None:
    """The modules and the functions ``code`` spends the most time in, themselves."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, env=env)
    modules = []
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            own, cumulative, module = line.split(":", 1)[1].split("|")
            if own.strip().isdigit():
                modules.append((int(own) / 1e6, int(cumulative) / 1e6, module.strip()))
    total = sum(own for own, _, _ in modules)
    print(f"\n## {name}: {len(modules)} modules, {total:.2f} s in their own code; slowest in themselves:")
    for own, cumulative, module in sorted(modules, reverse=True)[:rows]:
        print(f"  {own:6.2f} s own {cumulative:6.2f} s with imports  {module}")
    profile = (
        "import cProfile, pstats, io; p = cProfile.Profile(); p.enable(); "
        f"exec({code!r}); p.disable(); out = io.StringIO(); "
        f"pstats.Stats(p, stream=out).sort_stats('tottime').print_stats({rows}); print(out.getvalue())"
    )
    done = subprocess.run([sys.executable, "-c", profile], capture_output=True, text=True, env=env)
    lines = done.stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    print(f"  functions slowest in themselves ({name}):")
    for line in lines[max(0, start - 3) : start + rows + 1]:
        print("   " + line[:160])


COUNT_CUSTOM_OPS = """
import collections, time, traceback
import torch._library.custom_ops as ops
register = ops.CustomOpDef._register_to_dispatcher
count, spent = collections.Counter(), collections.Counter()
def counted(self, *args, **kwargs):
    frames = [f.filename for f in traceback.extract_stack()[:-1]]
    outside = [f for f in frames if "torch/_library" not in f and "torch/library.py" not in f and "<" not in f]
    where = outside[-1].split("site-packages/")[-1] if outside else "?"
    began = time.perf_counter()
    try:
        return register(self, *args, **kwargs)
    finally:
        count[where] += 1
        spent[where] += time.perf_counter() - began
ops.CustomOpDef._register_to_dispatcher = counted
exec(CODE)
print(sum(count.values()), round(sum(spent.values()), 2))
for where, seconds in spent.most_common(8):
    print(f"{seconds:6.2f} s {count[where]:4d} ops  {where}")
"""


def custom_ops(name: str, code: str, env: dict) -> None:
    """Which modules register torch custom ops while ``code`` runs, and what that costs: on the
    H200's image one profile spent 3.4 s of an import in 128 such registrations."""
    done = subprocess.run(
        [sys.executable, "-c", f"CODE = {code!r}\n{COUNT_CUSTOM_OPS}"], capture_output=True, text=True, env=env
    )
    lines = done.stdout.splitlines()
    if done.returncode or not lines:
        print(f"\n## torch custom ops registered by {name}: failed ({done.stderr.strip()[-300:]})")
        return
    total, seconds = lines[0].split()
    print(f"\n## torch custom ops registered by {name}: {total} ops in {seconds} s, by the module registering them:")
    for line in lines[1:]:
        print("  " + line)


if __name__ == "__main__":
    main()
