"""The child that compiles the GPU kernels while a command loads: started only where there is
a GPU, and a command line that runs (its output goes nowhere, so a broken one would go unseen)."""

import subprocess
import sys

from herdbook.training import precompile


def test_no_child_is_started_without_a_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert not precompile.has_nvidia_gpu() and precompile.start() is None


def test_the_child_runs_and_ends_by_itself(monkeypatch):
    monkeypatch.setattr(precompile, "has_nvidia_gpu", lambda: True)
    child = precompile.start()
    assert child is not None and child.wait(timeout=120) == 0
    # what it says when run by hand: here, that there was nothing to compile
    shown = subprocess.run([sys.executable, "-m", "herdbook.training.precompile"], capture_output=True, text=True)
    assert shown.returncode == 0 and "compiled or found in the cache" in shown.stdout
