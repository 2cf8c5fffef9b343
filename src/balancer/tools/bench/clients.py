"""The harness's clients: wrk's report read, a bulk download timed, idle connections held."""

from __future__ import annotations

import re
import selectors
import socket
import time
from typing import Any

from balancer.tools.bench.options import BODY, HOLD_BATCH, HOST

_TIME_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def parse_wrk(text: str) -> dict[str, Any]:
    """The numbers in wrk's report: requests/s, requests, latency percentiles (ms), errors."""
    result: dict[str, Any] = {}
    if match := re.search(r"Requests/sec:\s*([\d.]+)", text):
        result["requests_per_s"] = float(match.group(1))
    if match := re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)", text):
        result["requests"] = int(match.group(1))
        result["seconds"] = float(match.group(2)) * _TIME_UNITS[match.group(3)] / 1000
    percentiles = {}
    for match in re.finditer(r"^\s*(\d+(?:\.\d+)?)%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M):
        percentiles[match.group(1)] = float(match.group(2)) * _TIME_UNITS[match.group(3)]
    if percentiles:
        result["latency_ms"] = percentiles
    if match := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    ):
        keys = ("connect", "read", "write", "timeout")
        result["socket_errors"] = dict(zip(keys, map(int, match.groups()), strict=True))
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
        result["non_2xx"] = int(match.group(1))
    return result


def download(port: int, path: str, size: int, timeout: float = 60.0) -> float:
    """Seconds to fetch `path` (at least `size` bytes of body) over one new connection."""
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode()
    buffer = bytearray(1 << 20)
    received = 0
    start = time.perf_counter()
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(request)
        first = s.recv(65536)
        if not first.startswith(b"HTTP/1.1 200"):
            raise OSError(f"unexpected answer {first[:60]!r}")
        received = len(first) - (first.find(b"\r\n\r\n") + 4)
        while n := s.recv_into(buffer):
            received += n
    elapsed = time.perf_counter() - start
    if received < size:
        raise OSError(f"connection closed after {received} of {size} bytes")
    return elapsed


def hold_connections(port: int, count: int, timeout: float) -> tuple[list[socket.socket], int]:
    """Open `count` connections, each proven relayed by one request and its answer, then
    left idle (keep-alive); returns the open sockets and how many failed."""
    held: list[socket.socket] = []
    failed = 0
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        for first in range(0, count, HOLD_BATCH):
            if time.monotonic() > deadline:
                failed += count - first
                break
            pending: dict[socket.socket, bytes] = {}
            for _ in range(min(HOLD_BATCH, count - first)):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    s.settimeout(5.0)
                    s.connect((HOST, port))
                    s.sendall(request)
                    s.setblocking(False)
                except OSError:
                    s.close()
                    failed += 1
                    continue
                pending[s] = b""
                selector.register(s, selectors.EVENT_READ, s)
            while pending and time.monotonic() < deadline:
                for key, _ in selector.select(timeout=0.5):
                    sock: socket.socket = key.data
                    try:
                        data = sock.recv(4096)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    answer = pending[sock] + data
                    done = b"\r\n\r\n" in answer and answer.endswith(BODY)
                    if not data or done:
                        selector.unregister(sock)
                        del pending[sock]
                        if done:
                            held.append(sock)
                        else:
                            sock.close()
                            failed += 1
                    else:
                        pending[sock] = answer
            for sock in pending:
                selector.unregister(sock)
                sock.close()
                failed += 1
    return held, failed
