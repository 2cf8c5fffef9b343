"""Shared test helpers: real processes and real sockets on 127.0.0.1."""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.config import write_config

from balancer.tools.procfs import process_tree

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
DEADLINE = 15.0  # default bound for waiting on one event


def require_tool(name: str) -> str:
    """The tool's path; in CI a missing tool fails the test rather than skipping it."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; .ci/run should install it")
        pytest.skip(f"{name} is not installed")
    return path


def _ephemeral_ports() -> tuple[int, int]:
    """The range the kernel takes the local ports of outgoing connections from."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A port free on 127.0.0.1 now, for a test to listen on later.

    Not one the kernel would hand out itself: between this call and the listen, any
    outgoing connection on the machine could take such a port as its local port (a test
    once failed with "address already in use" that way). So a port below the kernel's range
    for those, checked free with a bind.
    """
    low, high = _ephemeral_ports()
    first, last = (10000, low - 1) if low > 11000 else (high + 1, 65535)
    for _ in range(200):
        port = random.randint(first, last)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port found in {first}-{last}")


def wait_until(predicate, timeout: float = DEADLINE, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll `predicate` until it returns a truthy value; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def descriptors(pid: int, kind: str) -> int:
    """Open descriptors of one kind, as /proc names them ("socket", "pipe"), of the process
    and its descendants (a balancer's workers)."""
    count = 0
    for process in process_tree(pid):
        with contextlib.suppress(OSError):  # (gone meanwhile)
            for fd in os.listdir(f"/proc/{process}/fd"):
                with contextlib.suppress(OSError):  # (closed meanwhile)
                    count += os.readlink(f"/proc/{process}/fd/{fd}").startswith(f"{kind}:")
    return count


# A slow reader: a small receive buffer and segments, so the balancer's socket toward it takes
# only some 200 KB and the rest waits in the balancer, under the pause threshold (64 KiB).
SLOW_READER = (
    (socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),
    (socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1000),
)


def unsent(sock: socket.socket) -> int:
    """Bytes in the socket's send queue that the peer has not acknowledged."""
    return int(struct.unpack("i", fcntl.ioctl(sock, termios.TIOCOUTQ, b"\0" * 4))[0])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class Process:
    """A child process whose output lines can be waited for."""

    def __init__(
        self,
        args: list[str],
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        **popen: object,
    ):
        self.args = args
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self.proc = subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            **popen,  # type: ignore[call-overload]
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            self.lines.put(line)

    def expect(self, pattern: str, timeout: float = DEADLINE) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"{self.args[:4]} printed no line matching {pattern!r} in {timeout}s; "
                    f"output so far:\n{''.join(self.output)}"
                )
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if match := regex.search(line):
                return match

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float = DEADLINE) -> int:
        return int(self.proc.wait(timeout=timeout))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._reader.join(timeout=5)

    @property
    def text(self) -> str:
        return "".join(self.output)


def balancer_cmd(*args: str) -> list[str]:
    return [PYTHON, "-m", "balancer", *args]


class Cluster:
    """Starts demo backends and balancers for one test and stops them all afterwards."""

    def __init__(self, tmp: Path, workers: int = 1) -> None:
        self.tmp = tmp
        self.workers = workers
        self.processes: list[Process] = []

    def backend(self, mode: str = "hello", *extra: str) -> int:
        proc = Process(balancer_cmd("backend", "0", "--mode", mode, *extra))
        self.processes.append(proc)
        match = proc.expect(r"listening on 127\.0\.0\.1:(\d+)")
        port = int(match.group(1))
        proc.port = port  # type: ignore[attr-defined]
        return port

    def backend_process(self, port: int) -> Process:
        return next(p for p in self.processes if getattr(p, "port", None) == port)

    def balancer(self, *args: str, log: str = "lb.log") -> tuple[Process, int]:
        """Start `balancer run ARGS`; return the process and its first listening port."""
        log_path = self.tmp / log
        cmd = ["run", *args]
        if self.workers > 1 and "--workers" not in args:
            cmd += ["--workers", str(self.workers)]
        if "--config" not in args:
            if "--listen" not in args:
                cmd += ["--listen", "127.0.0.1:0"]
            if "--log-file" not in args:
                cmd += ["--log-file", str(log_path)]
        proc = Process(balancer_cmd(*cmd))
        self.processes.append(proc)
        match = proc.expect(r"listening on 127\.0\.0\.1:(\d+)")
        return proc, int(match.group(1))

    def with_admin(self, backends: list[int], *args: str) -> tuple[int, int]:
        """`balancer run` over `backends` with its admin API on a free port: both ports."""
        admin = free_port()
        _, port = self.balancer(
            "--admin", f"127.0.0.1:{admin}", *[f"--backend=127.0.0.1:{p}" for p in backends], *args
        )
        return port, admin

    def config(self, *services: str, admin: int | None = None, top: str = "") -> Path:
        """A config file `lb.toml` in the test's directory, logging to its `lb.log`."""
        return write_config(
            self.tmp / "lb.toml", *services, log=self.tmp / "lb.log", admin=admin, top=top
        )

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()


def make_cluster(tmp: Path, workers: int = 1) -> Iterator[Cluster]:
    c = Cluster(tmp, workers)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    yield from make_cluster(tmp_path)


@pytest.fixture(params=[1, 2], ids=["1-worker", "2-workers"])
def any_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    """A cluster whose balancer runs with one worker, then again with two."""
    yield from make_cluster(tmp_path, request.param)


def read_log(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def wait_for_log(path: Path, pattern: str, timeout: float = DEADLINE) -> re.Match[str]:
    regex = re.compile(pattern)
    return wait_until(  # type: ignore[no-any-return]
        lambda: regex.search(read_log(path)), timeout, f"{pattern!r} in {path.name}"
    )


def exchange(
    port: int, message: bytes = b"hi", timeout: float = 10.0, half_close: bool = False
) -> bytes:
    """Connect, send (then half-close if asked: echo backends answer until EOF), read to EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(message)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def served_by(answer: bytes) -> int:
    match = re.search(rb"Server (\d+)", answer)
    assert match, f"unexpected answer {answer!r}"
    return int(match.group(1))
