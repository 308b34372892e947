"""One round across several processes through accelerate's launcher.

    accelerate launch --num_processes 2 -m herdbook.training.launch ROUND_DIR/settings.json

Each process runs the same ``train``; accelerate wires up the process group (NCCL on GPUs,
gloo on CPUs), each process takes its slice of every global batch, and only the main
process writes settings, checkpoints, outputs and metrics. Records in herdbook's database
are written by the caller once the launch returns (``run_round``), never by the processes.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from herdbook.training.settings import RoundSettings


def launch_command(settings_file: Path, processes: int, cpu: bool = False, port: int | None = None) -> list[str]:
    # --multi_gpu picks accelerate's torchrun launcher; on a machine without GPUs the processes
    # then form a gloo group on the CPU (accelerate's --cpu would start a single process).
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes)]
    command += ["--num_machines", "1", "--mixed_precision", "no" if cpu else "bf16", "--dynamo_backend", "no"]
    if port is not None:
        command += ["--main_process_port", str(port)]
    return [*command, "-m", "herdbook.training.launch", str(settings_file)]


def free_port() -> int:
    """A port nothing listens on now. accelerate's default (29500) is one per machine: a second
    round launched beside the first failed with EADDRINUSE."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(settings: RoundSettings, processes: int, cpu: bool = False, port: int | None = None) -> None:
    """Run ``train`` in ``processes`` processes and wait; raises if any of them fails."""
    settings_file = settings.save()
    subprocess.run(launch_command(settings_file, processes, cpu, port or free_port()), check=True)


def main() -> None:
    from herdbook.training.dreambooth import train

    settings = RoundSettings.from_json(Path(sys.argv[1]).read_text(encoding="utf-8"))
    train(settings)


if __name__ == "__main__":
    main()
