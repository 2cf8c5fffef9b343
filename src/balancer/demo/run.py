"""`balancer demo`: three demo HTTP backends and a balancer in front of them, until Ctrl-C."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEMO_CONFIG = """\
[admin]
listen = "127.0.0.1:{admin}"

[log]
file = "{log}"

[[services]]
name = "web"
listen = "127.0.0.1:{port}"
algorithm = "least_connections"
backends = [{backends}]

[services.health_check]
interval = "1s"
"""


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def main(
    port: int = 8000,
    backend_ports: tuple[int, ...] = (9001, 9002, 9003),
    log: str = "load_balancer.log",
    admin: int = 8404,
) -> int:
    children: list[subprocess.Popen[bytes]] = []
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM cleans up like Ctrl-C
    exe = [sys.executable, "-m", "balancer"]
    try:
        for backend in backend_ports:
            children.append(subprocess.Popen([*exe, "backend", str(backend), "--mode", "http"]))
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write(
                DEMO_CONFIG.format(
                    log=Path(log).resolve(),
                    admin=admin,
                    port=port,
                    backends=", ".join(f'{{ address = "127.0.0.1:{p}" }}' for p in backend_ports),
                )
            )
            config_path = f.name
        # The backends listen before the balancer starts, so none is ejected as refusing.
        deadline = time.monotonic() + 10
        for backend, child in zip(backend_ports, children, strict=True):
            while not _listening(backend):
                if child.poll() is not None or time.monotonic() > deadline:
                    print(f"demo: backend on port {backend} did not start", file=sys.stderr)
                    return child.poll() or 1
                time.sleep(0.05)
        balancer = subprocess.Popen([*exe, "run", "--config", config_path])
        children.append(balancer)
        deadline = time.monotonic() + 10
        while not _listening(port):
            if balancer.poll() is not None or time.monotonic() > deadline:
                return balancer.poll() or 1
            time.sleep(0.05)
        print()
        print(f"balancer      http://127.0.0.1:{port}")
        for backend in backend_ports:
            print(f"backend       http://127.0.0.1:{backend}")
        print(f"dashboard     http://127.0.0.1:{admin}/")
        print(f"metrics       http://127.0.0.1:{admin}/metrics")
        print(f"admin API     http://127.0.0.1:{admin}/api/stats")
        print(f"log           {Path(log).resolve()}")
        print(f"config        {config_path}")
        print(
            f"try: curl http://127.0.0.1:{port}/   or   balancer client --target 127.0.0.1:{port}"
        )
        print("Ctrl-C stops everything.", flush=True)
        balancer.wait()
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
        for child in children:
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
