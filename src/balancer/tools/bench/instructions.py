"""User-space instructions per connection (or per keep-alive request) of a relay, counted with
callgrind: repeatable on a noisy shared machine, where wall-clock figures move by 10-20%.

The relay runs under `valgrind --tool=callgrind` twice, once serving `--few` connections and
once `--many`, after the same warm-up; the difference of the two totals over the difference of
the counts is the cost of one, with start-up and warm-up cancelled out. Eight clients (threads
here) send `GET /` with `Connection: close` (or, with `--keepalive`, keep one connection each)
to a demo HTTP backend through the relay, all on 127.0.0.1.

    python -m balancer.tools.bench.instructions              # the balancer
    python -m balancer.tools.bench.instructions --keepalive
    python -m balancer.tools.bench.instructions \
        --relay "python3 -m balancer.tools.floors.floor {port} {backend}"
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from balancer.tools.bench.processes import free_ports

CLIENTS = 8
WARM_UP = 100
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n%s\r\n"
BALANCER = (
    f"{sys.executable} -m balancer run --listen 127.0.0.1:{{port}} --backend 127.0.0.1:{{backend}}"
    " --no-health-check --log-file {log}"
)


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with status {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"not listening on {port} after {timeout:.0f}s")


def _read_answer(sock: socket.socket, buffer: bytearray) -> None:
    """One HTTP answer with a Content-Length body (the demo backend's)."""
    while True:
        head_end = buffer.find(b"\r\n\r\n")
        if head_end >= 0:
            match = re.search(rb"content-length: *(\d+)", bytes(buffer[:head_end]).lower())
            length = int(match.group(1)) if match else 0
            if len(buffer) >= head_end + 4 + length:
                del buffer[: head_end + 4 + length]
                return
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a whole answer")
        buffer += chunk


def load(port: int, count: int, keepalive: bool) -> None:
    """`count` requests through the relay from CLIENTS threads."""
    shares = [count // CLIENTS + (i < count % CLIENTS) for i in range(CLIENTS)]
    errors: list[BaseException] = []

    def client(share: int) -> None:
        try:
            if keepalive:
                with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
                    buffer = bytearray()
                    for _ in range(share):
                        s.sendall(REQUEST % b"")
                        _read_answer(s, buffer)
                return
            for _ in range(share):
                with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
                    s.sendall(REQUEST % b"Connection: close\r\n")
                    while s.recv(65536):
                        pass
        except BaseException as exc:  # (reported by the caller)
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(share,)) for share in shares]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{len(errors)} clients failed: {errors[0]!r}")


def count_instructions(relay: str, backend: int, count: int, keepalive: bool, tmp: Path) -> int:
    """Instructions the relay's process ran in all, serving warm-up and `count` requests."""
    port = free_ports(1)[0]
    out = tmp / f"callgrind.{count}.out"
    command = shlex.split(relay.format(port=port, backend=backend, log=tmp / "relay.log"))
    valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--quiet"]
    proc = subprocess.Popen([*valgrind, *command], stdin=subprocess.DEVNULL)
    try:
        _wait_listening(port, proc, 300)
        load(port, WARM_UP, keepalive)
        load(port, count, keepalive)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=300)
    text = out.read_text(errors="replace")
    match = re.search(r"^(?:summary|totals):\s*(\d+)", text, re.M)
    if match is None:
        raise RuntimeError(f"no instruction total in {out}")
    return int(match.group(1))


def measure(relay: str, few: int, many: int, keepalive: bool) -> float:
    if shutil.which("valgrind") is None:
        raise RuntimeError("valgrind is not installed (Debian package valgrind)")
    tmp = Path(tempfile.mkdtemp(prefix="balancer-instructions-"))
    backend = free_ports(1)[0]
    server = subprocess.Popen(
        [sys.executable, "-m", "balancer", "backend", str(backend), "--mode", "http"],
        stdout=subprocess.DEVNULL,
    )
    try:
        _wait_listening(backend, server, 30)
        low = count_instructions(relay, backend, few, keepalive, tmp)
        high = count_instructions(relay, backend, many, keepalive, tmp)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
    return (high - low) / (many - few)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m balancer.tools.bench.instructions",
        description="User-space instructions per connection of a relay, with callgrind.",
    )
    parser.add_argument("--few", type=int, default=400, help="connections of the first run")
    parser.add_argument("--many", type=int, default=1200, help="connections of the second run")
    parser.add_argument(
        "--keepalive", action="store_true", help="per request on kept-alive connections instead"
    )
    parser.add_argument(
        "--relay",
        default=BALANCER,
        help="the relay's command, with {port}, {backend} and {log} (default: the balancer)",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("PYTHONHASHSEED", "0")  # (the same hashing in both runs)
    per = measure(args.relay, args.few, args.many, args.keepalive)
    what = "keep-alive request" if args.keepalive else "new connection"
    print(f"{per:,.0f} user-space instructions per {what} ({args.few} and {args.many} counted)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
