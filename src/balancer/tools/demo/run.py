"""`balancer demo`: three demo HTTP backends and a balancer in front of them, until stopped.

A backend that is stopped (to watch the balancer route around it) leaves the demo running;
the balancer's exit ends it.

SIGINT, SIGTERM or SIGHUP to the demo process alone (a service manager's or `kill PID`, not
only Ctrl-C to the whole terminal group) stops everything it started: the handlers are its
own, even where SIGINT came ignored (a shell's background job). Its children are also told
by the kernel to stop should the demo die without cleaning up (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

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
type = "http"
path = "/health"
interval = "1s"
"""

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
PR_SET_PDEATHSIG = 1


class Stop(Exception):
    """A stop signal came."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the demo process goes away."""
    # (Not Linux: no prctl, and the demo's own handlers still stop them.)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _wait_listening(port: int, child: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    while not _listening(port):
        if child.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def balancer_command() -> str:
    """How to run `balancer` from the shell this demo was started from."""
    beside = Path(sys.executable).parent / "balancer"
    found = shutil.which("balancer")
    if found and (not beside.exists() or Path(found).resolve() == beside.resolve()):
        return "balancer"
    if beside.exists():
        try:
            return str(beside.relative_to(Path.cwd()))
        except ValueError:
            return str(beside)
    return f"{sys.executable} -m balancer"


def main(
    port: int = 8000,
    backend_ports: tuple[int, ...] = (9001, 9002, 9003),
    log: str = "load_balancer.log",
    admin: int = 8404,
) -> int:
    children: list[subprocess.Popen[bytes]] = []
    names: dict[int, str] = {}
    for sig in STOP_SIGNALS:
        signal.signal(sig, _stop)
    exe = [sys.executable, "-m", "balancer"]
    config = Path(tempfile.mkstemp(prefix="balancer-demo-", suffix=".toml")[1])

    def start(args: list[str]) -> subprocess.Popen[bytes]:
        child = subprocess.Popen([*exe, *args], preexec_fn=_die_with_parent)
        children.append(child)
        names[child.pid] = " ".join(args[:2])
        return child

    try:
        busy = [p for p in (port, *backend_ports, admin) if _listening(p)]
        if busy:
            print(f"demo: ports in use: {', '.join(map(str, busy))}", file=sys.stderr)
            return 1
        config.write_text(
            DEMO_CONFIG.format(
                log=Path(log).resolve(),
                admin=admin,
                port=port,
                backends=", ".join(f'{{ address = "127.0.0.1:{p}" }}' for p in backend_ports),
            )
        )
        # The backends listen before the balancer starts, so none is ejected as refusing.
        for backend in backend_ports:
            if not _wait_listening(backend, start(["backend", str(backend), "--mode", "http"])):
                print(f"demo: backend on port {backend} did not start", file=sys.stderr)
                return 1
        balancer = start(["run", "--config", str(config)])
        if not _wait_listening(port, balancer) or not _wait_listening(admin, balancer):
            print("demo: the balancer did not start", file=sys.stderr)
            return 1
        command = balancer_command()
        print()
        print(f"balancer      http://127.0.0.1:{port}")
        for backend in backend_ports:
            print(f"backend       http://127.0.0.1:{backend}")
        print(f"dashboard     http://127.0.0.1:{admin}/")
        print(f"metrics       http://127.0.0.1:{admin}/metrics")
        print(f"admin API     http://127.0.0.1:{admin}/api/stats")
        print(f"log           {Path(log).resolve()}")
        print(f"config        {config}")
        print(f"try:          curl http://127.0.0.1:{port}/")
        print(f"              {command} client --target 127.0.0.1:{port}")
        print(f"              {command} status --admin http://127.0.0.1:{admin}")
        print("Ctrl-C stops everything.", flush=True)
        while True:  # until a stop signal, or the balancer's exit
            pid, status = os.wait()
            code = os.waitstatus_to_exitcode(status)
            if pid == balancer.pid:
                print(f"demo: the balancer exited with {code}; stopping", file=sys.stderr)
                return 1
            # A backend stopped (by the user, to watch failover): the demo goes on.
            print(f"demo: `balancer {names.get(pid, '?')}` exited with {code}", file=sys.stderr)
    except (Stop, KeyboardInterrupt):
        return 0
    finally:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)  # (a second Ctrl-C must not cut the cleanup short)
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
        for child in children:
            try:
                child.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        config.unlink(missing_ok=True)
