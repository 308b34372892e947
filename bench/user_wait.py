"""What a user waits for: herdbook's own commands as child processes, each timed from spawn to exit.

A real home on a saved model folder (SD-1.5's or SDXL-base's architecture with random weights
written with ``save_pretrained``, so loading reads real files; or the tiny model, for a dry run on
a CPU):
``herdbook init``, ``import`` (the six instance images, rated), ``sync``, then

- train-full-cold / train-lora-cold: ``herdbook train --mode full|lora --from base`` with fresh
  Triton and CUDA compile caches and, where the machine allows it, the page cache dropped;
- train-full-warm: the full round again, its caches kept;
- generate-4-cold: ``herdbook generate -n 4 --round 1``, fresh caches;
- worker-generate-4-first, -second, worker-generate-24-warm: generation jobs submitted (as the
  app's button does) to a running ``herdbook worker`` once it says it is ready (the base model
  loaded, as a worker started with the app is by the first click), timed from submit to the
  candidates stored. The jobs draw from round 1, as before; the worker loads what the Generate
  page offers first (the latest round), so the first job still loads its model, the libraries
  already imported;
- worker-cli-generate-4, worker-cli-train-lora: ``herdbook generate -n 4`` and ``herdbook train
  --mode lora`` while that worker runs: they hand their work to it and follow it, spawn to exit.

Each run carries the phases the command recorded itself (a round's metrics, generation's closing
line, a job's result). Prints a table and writes bench/results/user_wait-DATE.json.

With ``--model sdxl`` the runs are #23's: ``train --mode lora`` (rank 16, lr 1e-4, 1024 px: the
project's defaults for an SDXL base) and ``generate -n 4`` at 1024.

    python3 -m bench.user_wait [--model sd15|sdxl|tiny] [--steps 400] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "an image of the oxenai ox"


def save_model(kind: str, folder: Path) -> dict:
    """The base model as a diffusers folder: SD-1.5's architecture in float32 (what the hub's main
    branch holds), SDXL-base's in float16 (the hub's fp16 variant), or the tiny one."""
    began = time.perf_counter()
    if kind == "sdxl":
        from bench.sdxl_round import save_model as save_sdxl

        return save_sdxl(folder)
    if kind == "tiny":
        from herdbook.training.tiny import save_tiny_pipeline

        save_tiny_pipeline(folder)
    else:
        import torch
        from herdbook.training.components import make_pipeline

        from bench.gpu_round import sd15_components

        parts = sd15_components()
        make_pipeline(parts).save_pretrained(folder, safe_serialization=True)
        del parts
        torch.cuda.empty_cache()
    size = sum(f.stat().st_size for f in folder.rglob("*.safetensors"))
    return {"saved_s": round(time.perf_counter() - began, 1), "gib_on_disk": round(size / 2**30, 2)}


def caches(out: Path, name: str) -> dict:
    """The compile caches of the runs called ``name``: the same name, the same (warm) caches."""
    return {
        "TRITON_CACHE_DIR": str(out / "caches" / name / "triton"),
        "CUDA_CACHE_PATH": str(out / "caches" / name / "cuda"),
    }


def cold_caches(out: Path, name: str) -> dict:
    """Fresh compile caches for one run, and the page cache dropped where this process may."""
    env = caches(out, name)
    subprocess.run(["sync"], check=False)
    with contextlib.suppress(OSError):  # not root, or not Linux: the model files may stay in memory
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    return env


def herdbook(home: Path, *args: str, env: dict | None = None, timeout: float = 900) -> tuple[float, str]:
    """One command, spawn to exit: (seconds, its output)."""
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "herdbook.cli", *args, "--home", str(home)],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"herdbook {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return wall, done.stdout


def closing_phases(output: str) -> dict:
    """The phases a command printed on its '... s in all: name 1.2, ...' line."""
    match = re.search(r"s in (?:all|the worker): (.*)$", output, re.MULTILINE)
    if not match:
        return {}
    phases = {}
    for part in match.group(1).split(", "):
        name, _, seconds = part.rpartition(" ")
        phases[name] = float(seconds)
    return phases


def make_home(out: Path, model: Path, instance: Path, tiny: bool) -> Path:
    home = out / "home"
    herdbook(home, "init", "--base-model", str(model))
    if tiny:  # the tiny model draws 32 px; its rounds are a dry run of the commands
        config = home / "herdbook.toml"
        config.write_text("resolution = 32\n" + config.read_text())
    table = instance / "bench-prompts.csv"
    with table.open("w", newline="") as handle:
        rows = csv.writer(handle)
        rows.writerow(["file", "prompt", "rating"])
        rows.writerows([path.name, PROMPT, 1] for path in sorted(instance.iterdir()) if path.suffix != ".csv")
    herdbook(home, "import", str(instance), "--prompts", str(table), "--rater", "bench")
    herdbook(home, "sync")
    return home


def train_run(name: str, home: Path, env: dict, *args: str) -> dict:
    wall, _output = herdbook(home, "train", "--from", "base", *args, env=env)
    rounds = json.loads(herdbook(home, "rounds", "--json")[1])
    phases = rounds[-1]["phases"] or {}
    row = {"name": name, "wall_s": round(wall, 2), "phases": phases}
    row["outside_phases_s"] = round(wall - sum(phases.values()), 2)  # spawn and exit
    # from the process's start to the round's weights written (a LoRA round draws its grids after)
    row["to_weights_saved_s"] = rounds[-1]["weights_saved_after_seconds"]
    print(json.dumps(row), flush=True)
    return row


def worker_runs(home: Path, env: dict, round_ref: str, lora_steps: int = 0) -> list[dict]:
    """Generation jobs to a running worker, each timed from submit to its candidates stored; then
    `herdbook generate` (and with ``lora_steps`` `herdbook train --mode lora`) beside the worker,
    which hand their work to it, spawn to exit."""
    from herdbook.home import load_home
    from herdbook.jobs import follow, submit

    worker = subprocess.Popen(
        [sys.executable, "-m", "herdbook.cli", "worker", "--home", str(home)],
        env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    began = time.perf_counter()
    worker.stdout.readline()  # "herdbook worker for ..."
    ready = worker.stdout.readline()  # the base model loaded (or why not): it polls the queue from here on
    print(json.dumps({"worker_ready_s": round(time.perf_counter() - began, 2), "said": ready.strip()}), flush=True)
    project = load_home(home)
    store = project.open_store()
    rows = []
    try:
        for name, count, seed in [
            ("worker-generate-4-first", 4, 1000),
            ("worker-generate-4-second", 4, 2000),
            ("worker-generate-24-warm", 24, 3000),
        ]:
            began = time.perf_counter()
            with store.transaction() as session:
                job = submit(session, project, "generate", {"prompt": PROMPT, "round": round_ref, "count": count,
                                                             "seed": seed})  # fmt: skip
            done = follow(store, home, job.id, lambda _state: None, poll=0.01)
            wall = time.perf_counter() - began
            if done.status != "finished":
                raise SystemExit(f"{name}: job {job.id} {done.status}: {done.error}")
            row = {"name": name, "wall_s": round(wall, 2), "phases": done.result.get("phases", {})}
            row["outside_phases_s"] = round(wall - sum(row["phases"].values()), 2)  # queue and pickup
            print(json.dumps(row), flush=True)
            rows.append(row)
        # the commands themselves, which hand their work to the running worker and follow it
        wall, output = herdbook(home, "generate", "--prompt", PROMPT, "-n", "4", "--round", round_ref,
                                "--seed", "4000", env=env)  # fmt: skip
        if "runs in the worker" not in output:
            raise SystemExit(f"generate did not use the worker:\n{output}")
        row = {"name": "worker-cli-generate-4", "wall_s": round(wall, 2), "phases": closing_phases(output)}
        row["outside_phases_s"] = round(wall - sum(row["phases"].values()), 2)  # the command's own start
        print(json.dumps(row), flush=True)
        rows.append(row)
        if lora_steps:
            rows.append(train_run("worker-cli-train-lora", home, env, "--mode", "lora", "--steps", str(lora_steps)))
    finally:
        store.close()
        worker.terminate()
        worker.wait(timeout=60)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["sd15", "sdxl", "tiny"], default="sd15")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--instance", type=Path, default=ROOT / ".bench-data" / "instance")
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp()))
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--runs", help="of full,lora,generate,worker [all; sdxl: lora,generate]")
    args = parser.parse_args()
    tiny = args.model == "tiny"
    runs = (args.runs or ("lora,generate" if args.model == "sdxl" else "full,lora,generate,worker")).split(",")
    device = "cpu"
    if not tiny:
        import torch

        device = torch.cuda.get_device_name()
    print(f"device: {device}, out: {args.out}", flush=True)
    instance = args.out / "instance"
    if args.instance.is_dir():
        shutil.copytree(args.instance, instance)
    else:
        from bench.gpu_round import synthetic_instance

        synthetic_instance(instance)
    model = args.out / "model"
    print(json.dumps({"model": str(model), **save_model(args.model, model)}), flush=True)
    home = make_home(args.out, model, instance, tiny)
    steps = ["--steps", str(args.steps)]
    rows = []
    if "full" in runs:
        rows.append(train_run("train-full-cold", home, cold_caches(args.out, "full"), "--mode", "full", *steps))
        rows.append(train_run("train-full-warm", home, caches(args.out, "full"), "--mode", "full", *steps))
    if "lora" in runs:
        rows.append(train_run("train-lora-cold", home, cold_caches(args.out, "lora"), "--mode", "lora", *steps))
    if "generate" in runs:
        wall, output = herdbook(home, "generate", "--prompt", PROMPT, "-n", "4", "--round", "1",
                                env=cold_caches(args.out, "generate"))  # fmt: skip
        row = {"name": "generate-4-cold", "wall_s": round(wall, 2), "phases": closing_phases(output)}
        row["outside_phases_s"] = round(wall - sum(row["phases"].values()), 2)
        print(json.dumps(row), flush=True)
        rows.append(row)
    if "worker" in runs:
        rows += worker_runs(home, cold_caches(args.out, "worker"), "1", args.steps if "lora" in runs else 0)

    print()
    print(f"{'run':<26} {'spawn to exit':>14}  phases (s)")
    for row in rows:
        phases = ", ".join(f"{k} {v:.1f}" for k, v in row["phases"].items() if v >= 0.05)
        saved = f"weights saved at {row['to_weights_saved_s']:.1f} s; " if row.get("to_weights_saved_s") else ""
        print(f"{row['name']:<26} {row['wall_s']:>12.2f} s  {saved}{phases}")
    args.results.mkdir(parents=True, exist_ok=True)
    today = datetime.date.today().isoformat()
    path = args.results / f"user_wait-{today}{'' if args.model == 'sd15' else '-' + args.model}.json"
    path.write_text(json.dumps({"device": device, "date": today, "model": args.model, "runs": rows}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
