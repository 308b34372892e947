"""`herdbook serve` as a service manager runs it: stopped by SIGTERM, refused a busy port."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def children_of(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as handle:
            found += [int(p) for p in handle.read().split()]
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def herdbook(*args) -> list[str]:
    return [sys.executable, "-m", "herdbook.cli", *map(str, args)]


def test_a_busy_port_is_an_error(tmp_path):
    subprocess.run(herdbook("init", "--home", tmp_path / "h"), check=True, capture_output=True)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run(
            herdbook("serve", "--home", tmp_path / "h", "--port", port), capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 1
    assert f"error: port {port} on 127.0.0.1 is in use" in result.stderr


def test_a_port_left_only_in_time_wait_is_free(tmp_path):
    """A server restarted at once finds its port held by TIME_WAIT sockets only: servers bind
    it anyway (SO_REUSEADDR), and so does herdbook's check."""
    from herdbook.serve import check_port_free

    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        accepted.close()  # the server's side closes first: its end waits in TIME_WAIT
        client.close()
    lingering = subprocess.run(["ss", "-tan", f"sport = :{port}"], capture_output=True, text=True).stdout
    if "TIME-WAIT" not in lingering:
        pytest.skip("this machine left no TIME_WAIT socket to test with")
    check_port_free("127.0.0.1", port)  # no error


@pytest.mark.slow
def test_sigterm_stops_the_app_and_the_worker(tmp_path):
    subprocess.run(herdbook("init", "--home", tmp_path / "h"), check=True, capture_output=True)
    port = free_port()
    server = subprocess.Popen(
        herdbook("serve", "--home", tmp_path / "h", "--port", port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the app never answered"
            time.sleep(0.5)
        children = children_of(server.pid)
        assert len(children) == 2  # the app and the worker
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
        deadline = time.monotonic() + 15
        while any(alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(alive(pid) for pid in children)
    finally:
        server.kill()
