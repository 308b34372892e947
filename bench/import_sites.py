"""What importing the text encoder's classes costs, and why: the torch custom ops it registers
(by namespace, with the import chain that registered the first), the optional packages it pulls
in, and the same import in a site that holds only what the import needs (modules linked in one
by one from this site, as each import fails), against this full site. A machine image with
hundreds of packages can cost a command seconds a fresh install of herdbook would not.

    python3 -m bench.import_sites [--code "from transformers import CLIPTextModel"] [--prefer DIR] [--count-only]

``--prefer DIR``: link modules from DIR first (packages carried beside an image's own).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

# run inside the measured process: CODE is the import, the counter wraps torch's registration
COUNT_CUSTOM_OPS = r"""
import collections, sys, time, traceback
import torch._library.custom_ops as ops
register = ops.CustomOpDef._register_to_dispatcher
count, spent, chains = collections.Counter(), collections.Counter(), {}
def counted(self, *args, **kwargs):
    frames = [f.filename.split("site-packages/")[-1] for f in traceback.extract_stack()[:-1]]
    outside = [f for f in frames if "torch/_library" not in f and "torch/library.py" not in f and "<" not in f]
    chains.setdefault(self._namespace, " <- ".join(reversed(outside[-6:])))
    began = time.perf_counter()
    try:
        return register(self, *args, **kwargs)
    finally:
        count[self._namespace] += 1
        spent[self._namespace] += time.perf_counter() - began
ops.CustomOpDef._register_to_dispatcher = counted
began = time.perf_counter()
exec(CODE)
print(f"import after torch's: {time.perf_counter() - began:.2f} s; {sum(count.values())} custom ops "
      f"registered in {sum(spent.values()):.2f} s")
for namespace, seconds in spent.most_common(6):
    print(f"  {seconds:5.2f} s {count[namespace]:4d} ops  {namespace}: first via {chains[namespace][:300]}")
OPTIONAL = {"torchvision", "torchaudio", "sklearn", "scipy", "pandas", "pyarrow", "timm", "kernels", "torchao",
            "flash_attn", "xformers", "bitsandbytes", "jax", "onnxruntime", "numba", "matplotlib"}
print("optional packages imported:", sorted({m.split(".")[0] for m in sys.modules} & OPTIONAL))
"""

# the import's hard needs, linked before the first try (the rest arrive one failure at a time)
SEED_MODULES = [
    "torch", "torchgen", "functorch", "nvidia", "cuda", "triton", "transformers", "tokenizers", "huggingface_hub",
    "safetensors", "numpy", "numpy.libs", "packaging", "yaml", "_yaml", "regex", "tqdm", "filelock", "fsspec",
    "typing_extensions", "sympy", "mpmath", "networkx", "jinja2", "markupsafe", "hf_xet",
]  # fmt: skip


class MinimalSite:
    """A folder of links to the modules (and their dist-info) an import needs, from ``sources``."""

    def __init__(self, folder: Path, sources: list[Path]) -> None:
        self.folder, self.sources = folder, sources
        self.distributions = importlib.metadata.packages_distributions()
        folder.mkdir(parents=True, exist_ok=True)

    def link(self, path: Path) -> None:
        target = self.folder / path.name
        if not target.exists():
            target.symlink_to(path)

    def add_distribution(self, name: str) -> None:
        wanted = name.lower().replace("_", "-")
        for source in self.sources:
            for info in source.glob("*.dist-info"):
                if info.name.split("-")[0].lower().replace("_", "-") == wanted:
                    return self.link(info)

    def add_module(self, name: str) -> None:
        for source in self.sources:
            found = [*source.glob(name), *source.glob(f"{name}.py"), *source.glob(f"{name}.*.so")]
            if found:
                for path in [*found, *source.glob(f"{name}.libs")]:
                    self.link(path)
                break
        for distribution in self.distributions.get(name, []):
            self.add_distribution(distribution)

    def run(self, code: str) -> tuple[float, subprocess.CompletedProcess]:
        """``code`` in a fresh process that sees the standard library and this folder alone."""
        env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
        began = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-S", "-c", f"import sys; sys.path.append({str(self.folder)!r})\n{code}"],
            capture_output=True,
            text=True,
            env=env,
        )
        return time.perf_counter() - began, done

    def fill(self, code: str, tries: int = 80) -> bool:
        for name in SEED_MODULES:
            self.add_module(name)
        for _ in range(tries):
            _, done = self.run(code)
            if done.returncode == 0:
                return True
            missing = re.search(r"No module named '([\w.]+)'", done.stderr) or re.search(
                r"No package metadata was found for (\S+)", done.stderr
            )
            if missing is None:
                print("the minimal site failed:", done.stderr[-1500:])
                return False
            name = missing.group(1).split(".")[0]
            self.add_module(name)
            self.add_distribution(name)
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", default="from transformers import CLIPTextModel, CLIPTokenizer")
    parser.add_argument("--prefer", type=Path, help="link modules from this folder first")
    parser.add_argument("--count-only", action="store_true", help="only the custom ops, in this site")
    parser.add_argument("--site", type=Path, default=Path("/tmp/herdbook-minimal-site"))
    args = parser.parse_args()
    counted = f"CODE = {args.code!r}\n{COUNT_CUSTOM_OPS}"
    print(f"## {args.code}, in this site:")
    print(subprocess.run([sys.executable, "-c", counted], capture_output=True, text=True).stdout)
    if args.count_only:
        return
    site = MinimalSite(args.site, [*([args.prefer] if args.prefer else []), Path(sysconfig.get_paths()["purelib"])])
    if not site.fill(args.code):
        return
    held = sorted(path.name for path in args.site.iterdir() if not path.name.endswith("-info"))
    print(f"## the minimal site holds {len(held)} modules: {', '.join(held)}")
    for _ in range(2):
        seconds, _ = site.run(args.code)
        began = time.perf_counter()
        subprocess.run([sys.executable, "-c", args.code], capture_output=True)
        print(f"spawn to exit: minimal site {seconds:.2f} s, this site {time.perf_counter() - began:.2f} s")
    _, done = site.run(counted)
    print("## in the minimal site:\n" + done.stdout)


if __name__ == "__main__":
    main()
