"""Where a user's wait goes: consecutive phases of wall-clock time, from when their action began
(a command's process start, a job's pickup) to its end. No torch here: the CLI and jobs use it too."""

from __future__ import annotations

import os
import time
from pathlib import Path


class PhaseClock:
    """Consecutive phases of wall-clock time from ``started_at`` (time.time(); now if None):
    each ``end`` closes the phase running since the last, so the phases add up to the total."""

    def __init__(self, started_at: float | None = None) -> None:
        self.started = self.last = time.time() if started_at is None else started_at
        self.phases: dict[str, float] = {}

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
