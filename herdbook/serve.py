"""Starting the app (and a worker) as processes, so either can restart without the other.

Both children stop whenever ``serve`` stops: Ctrl-C, SIGTERM (a service manager, `kill`),
or either child exiting."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from herdbook.errors import HerdbookError

APP = Path(__file__).resolve().parent / "app" / "main.py"  # installed with the package
PRIMARY_COLOR = "#1f7a4d"  # a calm green; .streamlit/config.toml says the same for `streamlit run`


def app_command(port: int, host: str) -> list[str]:
    return [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.port", str(port),
        "--server.address", host,
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
        "--client.toolbarMode", "minimal",
        # Streamlit's default primary colour is red, which reads as "reject" next to Accept.
        "--theme.primaryColor", PRIMARY_COLOR,
        # Streamlit forces a full garbage collection after every run, fragment reruns included.
        # With herdbook's libraries loaded that took ~70 ms per key press on the Rate page;
        # Python's own collector still runs as usual (bench/rate_latency.txt).
        "--runner.postScriptGC", "false",
    ]  # fmt: skip


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_port_free(host: str, port: int) -> None:
    """Streamlit on a busy port quietly picks another or exits 0; say so instead."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # as servers bind (Streamlit's included): a port left in TIME_WAIT by a server that just
        # stopped is free; one that something listens on is not
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise HerdbookError(
                f"port {port} on {host} is in use ({error.strerror}); stop what holds it or choose --port"
            ) from None


def _stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def serve(home, port: int = 8501, host: str = "127.0.0.1", with_worker: bool = True) -> int:
    check_port_free(host, port)
    env = {**os.environ, "HERDBOOK_HOME": str(home.root)}

    def on_term(_signum, _frame):
        raise KeyboardInterrupt  # unwinds into the finally below, which stops both children

    previous = signal.signal(signal.SIGTERM, on_term)
    worker = app = None
    try:
        if with_worker:
            worker = subprocess.Popen(
                [sys.executable, "-m", "herdbook.cli", "worker", "--home", str(home.root)], env=env
            )
        app = subprocess.Popen(app_command(port, host), env=env)
        print(f"herdbook: http://{host}:{port}  (project {home.root}; Ctrl-C stops)", flush=True)
        while True:
            if app.poll() is not None:
                return app.returncode
            if worker is not None and worker.poll() is not None:
                print(f"herdbook: the job worker exited ({worker.returncode}); stopping the app", file=sys.stderr)
                return worker.returncode or 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    finally:
        _stop(app)
        _stop(worker)
        signal.signal(signal.SIGTERM, previous)
