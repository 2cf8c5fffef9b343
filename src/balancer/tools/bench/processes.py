"""The harness's child processes, each in its own process group and stopped on the way out,
and the small HTTP exchanges that tell when one is ready."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

from balancer.tools.bench.options import BODY, HOST, STOP_TIMEOUT


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


class Children:
    """Every process the harness starts, each in its own process group, stopped on exit."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        """A long-running child; its output goes to NAME.out in the temporary directory."""
        with open(self.tmp / f"{name}.out", "wb") as out:
            proc = subprocess.Popen(
                args,
                cwd=self.tmp,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def output(self, name: str, lines: int = 15) -> str:
        try:
            text = (self.tmp / f"{name}.out").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def run(self, args: list[str], timeout: float) -> tuple[int, str]:
        """A short child (wrk): its exit status and output; killed if it overruns."""
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(proc)
            return -1, f"timed out after {timeout:.0f}s"
        finally:
            if proc.poll() is None:
                self.stop(proc)
            with suppress(ValueError):
                self.procs.remove(proc)
        return proc.returncode, out.decode(errors="replace")

    @staticmethod
    def stop(proc: subprocess.Popen[bytes]) -> None:
        """SIGINT the process group (every peer stops at once on it), then SIGKILL it."""
        if proc.poll() is None:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGINT)
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=STOP_TIMEOUT)
        # Whatever is left of the group (workers of a leader that exited), and the leader.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_TIMEOUT)
        if proc.stdout is not None:
            proc.stdout.close()

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)
        self.procs.clear()


def free_ports(count: int) -> list[int]:
    """Ports the OS hands out on 127.0.0.1, all different."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            sockets.append(s)
            s.bind((HOST, 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def http_get(port: int, path: str = "/", timeout: float = 2.0) -> bytes:
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode()
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def wait_ready(port: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> str | None:
    """None once `GET /` through `port` answers hello; otherwise why not."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return f"exited with status {proc.returncode}"
        try:
            answer = http_get(port)
            if answer.startswith(b"HTTP/1.1 200") and answer.endswith(BODY):
                return None
            last = f"unexpected answer {answer[:60]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    return f"not ready after {timeout:.0f}s: {last}"
