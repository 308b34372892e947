"""Starting the app (and a worker) as processes, so either can restart without the other."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

APP = Path(__file__).resolve().parents[1] / "streamlit_app.py"


def app_command(port: int, host: str) -> list[str]:
    return [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.port", str(port),
        "--server.address", host,
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
        "--client.toolbarMode", "minimal",
        # Streamlit forces a full garbage collection after every run, fragment reruns included.
        # With herdbook's libraries loaded that took ~70 ms per key press on the Rate page;
        # Python's own collector still runs as usual (bench/rate_latency.txt).
        "--runner.postScriptGC", "false",
    ]  # fmt: skip


def serve(home, port: int = 8501, host: str = "127.0.0.1", with_worker: bool = True) -> int:
    env = {**os.environ, "HERDBOOK_HOME": str(home.root)}
    worker = None
    if with_worker:
        worker = subprocess.Popen([sys.executable, "-m", "herdbook.cli", "worker", "--home", str(home.root)], env=env)
    print(f"herdbook: http://{host}:{port}  (project {home.root}; Ctrl-C stops)", flush=True)
    try:
        return subprocess.call(app_command(port, host), env=env)
    except KeyboardInterrupt:
        return 0
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=10)
