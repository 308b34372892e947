"""The short load and crash trials (bench/trials.py --short): CI runs them on every change."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_the_short_trials_lose_nothing(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "trials.py"), "--short", "--keep", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "lost 0, doubled 0" in done.stdout and "inconsistencies: 0" in done.stdout
