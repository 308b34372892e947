"""Where a user's wait goes: consecutive phases of wall-clock time, from when their action began
(a command's process start, a job's pickup) to its end. No torch here: the CLI and jobs use it too."""

from __future__ import annotations

import os
import time
from pathlib import Path

# A round's phases in the order they run (training.dreambooth.train), and what each next one is
# called while it runs, for a live view; a round resumed from saved weights only draws its grid.
ROUND_PHASES = {
    "start-up": "starting",
    "libraries and GPU": "loading libraries and the GPU",
    "model load": "loading the model",
    "starting model's grid": "drawing the starting model's grid",
    "to GPU and encode": "encoding the images",
    "optimizer and probe": "setting up the optimizer",
    "steps": "training",
    "probe": "measuring the probe loss",
    "save, validation grid beside it": "saving the weights, drawing the validation grid",
    "validation grid": "drawing the validation grid",
    "fidelity report": "scoring the round (DINO, CLIP)",  # training.rounds.evaluate_round, after train
}
GRID_DRAWN = ("save, validation grid beside it", "validation grid")  # a round's last phase in train


def next_round_phase(ended: str) -> str | None:
    """What a round does after the phase ``ended``, as a live view says it."""
    names = list(ROUND_PHASES)
    if ended in GRID_DRAWN:
        return ROUND_PHASES["fidelity report"]
    if ended not in names or ended == "fidelity report":
        return None
    return ROUND_PHASES[names[names.index(ended) + 1]]


class PhaseClock:
    """Consecutive phases of wall-clock time from ``started_at`` (time.time(); now if None):
    each ``end`` closes the phase running since the last, so the phases add up to the total.
    ``on_end`` hears each phase's name as it ends (a live view)."""

    def __init__(self, started_at: float | None = None, on_end=None) -> None:
        self.started = self.last = time.time() if started_at is None else started_at
        self.phases: dict[str, float] = {}
        self.on_end = on_end

    def end(self, phase: str, split: dict[str, float] | None = None) -> None:
        """Close ``phase``; ``split`` names parts of it measured inside (moved out of it)."""
        now = time.time()
        seconds = now - self.last
        for part, part_seconds in (split or {}).items():
            part_seconds = min(part_seconds, seconds)
            self.phases[part] = round(self.phases.get(part, 0.0) + part_seconds, 3)
            seconds -= part_seconds
        self.phases[phase] = round(self.phases.get(phase, 0.0) + seconds, 3)
        self.last = now
        if self.on_end is not None:
            self.on_end(phase)

    @property
    def total(self) -> float:
        return round(self.last - self.started, 3)


def process_started_at() -> float | None:
    """When this process started (time.time()), from Linux's /proc; None elsewhere."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(
            int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
        )
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None
