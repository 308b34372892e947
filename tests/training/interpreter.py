"""Triton kernels tested on the CPU: a script run in Triton's interpreter, in a process of its
own (the interpreter is chosen by an environment variable read when triton is imported)."""

import os
import subprocess
import sys

import pytest


def passes_in_triton_interpreter(script: str) -> None:
    """Runs ``script``, which prints "same" once all its checks hold; fails the test otherwise."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "same" in done.stdout
