"""A `herdbook vote` while `herdbook sync --push` runs, timed from spawn to exit (issue 24, item 3).

Builds a home of N images (all rated), points [oxen] remote at a local socket that accepts
connections and never answers, then runs `herdbook sync --push` and casts one CLI vote after
another until it exits. Each vote is placed in the phase it ran in: the sync's Oxen commit
(before "Dataset version" is printed) or the push. A vote before the sync gives the quiet figure.

Run:  .venv/bin/python -m bench.vote_during_push [N]   (output: bench/vote_during_push.txt)
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.sync_speed import make_rated_home

HERDBOOK = str(Path(sys.executable).with_name("herdbook"))


def silent_remote() -> int:
    """A port that accepts every connection and never says a word."""
    server = socket.create_server(("127.0.0.1", 0))
    held = []

    def accept():
        while True:
            held.append(server.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    return server.getsockname()[1]


def make_home(scratch: Path, n: int, port: int) -> Path:
    home = make_rated_home(scratch, n)
    config = home.config_path.read_text()
    config = config.replace('remote = ""', f'remote = "http://127.0.0.1:{port}/team/ox"')
    home.config_path.write_text(config.replace("push_timeout_seconds = 120.0", "push_timeout_seconds = 20"))
    return home.root


def timed_vote(home: Path, candidate: int) -> float:
    start = time.perf_counter()
    subprocess.run([HERDBOOK, "vote", str(candidate), "accept", "--rater", "bob", "--home", str(home)],
                   check=True, capture_output=True)  # fmt: skip
    return time.perf_counter() - start


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["OXEN_CONFIG_DIR"] = str(Path(scratch) / "oxen-config")
        home = make_home(Path(scratch), n, silent_remote())
        quiet = [timed_vote(home, i) for i in range(1, 6)]
        sync = subprocess.Popen([HERDBOOK, "sync", "--push", "--home", str(home)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        committed = threading.Event()

        def watch():
            for line in sync.stdout:
                if line.startswith("Dataset version"):
                    committed.set()

        threading.Thread(target=watch, daemon=True).start()
        phases: dict[str, list[float]] = {
            "no sync running": quiet,
            "during the sync's commit": [],
            "during the push": [],
        }
        candidate = 6
        while sync.poll() is None:
            phase = "during the push" if committed.is_set() else "during the sync's commit"
            phases[phase].append(timed_vote(home, candidate % n + 1))
            candidate += 1
    print(
        f"{n} rated images of 512x512, {os.cpu_count()} cores; remote: a socket that never answers (push gives up at 20 s)"
    )
    print(f"{'when':<26} {'votes':>5} {'median s':>9} {'max s':>6}")
    for phase, seconds in phases.items():
        if seconds:
            print(f"{phase:<26} {len(seconds):>5} {statistics.median(seconds):>9.2f} {max(seconds):>6.2f}")


if __name__ == "__main__":
    main()
