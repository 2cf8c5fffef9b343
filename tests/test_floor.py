"""The harness's featureless reference relays, balancer.floor (Python) and floor.c (C): they
must relay correctly, or their figures mean nothing."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from pathlib import Path

import pytest
from conftest import PYTHON, Cluster, Process, exchange, require_tool

from balancer.bench import build_cfloor

MIB = 1024 * 1024


def floor_command(which: str, tmp_path: Path) -> list[str]:
    if which == "python":
        return [PYTHON, "-m", "balancer.floor"]
    require_tool("cc")
    binary, error = build_cfloor(tmp_path)
    assert binary is not None, error
    return [str(binary)]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("which", ["python", "c"])
def test_floor_relays_both_ways_with_backpressure(which: str, tmp_path: Path) -> None:
    command = floor_command(which, tmp_path)
    cluster = Cluster(tmp_path)
    try:
        echo = cluster.backend("echo")
        hello = cluster.backend("hello")
        floor = Process([*command, "0", str(echo), str(hello)])
        cluster.processes.append(floor)
        port = int(floor.expect(r"floor listening on 127\.0\.0\.1:(\d+)").group(1))

        # Round robin: the first connection goes to the echo backend. 8 MiB each way at once,
        # into a small receive buffer: the relay's sockets fill up, so it must keep and resend
        # what they refuse.
        payload = os.urandom(8 * MIB)
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.settimeout(30)
            s.connect(("127.0.0.1", port))
            sender = threading.Thread(target=s.sendall, args=(payload,), daemon=True)
            sender.start()
            got = hashlib.sha256()
            received = 0
            while received < len(payload):
                chunk = s.recv(MIB)
                assert chunk, f"closed after {received} of {len(payload)} bytes"
                got.update(chunk)
                received += len(chunk)
            sender.join(timeout=30)
        assert received == len(payload)
        assert got.hexdigest() == hashlib.sha256(payload).hexdigest()

        # The second goes to the hello backend, whose answer and EOF come through.
        assert b"Server" in exchange(port, b"hi")
        assert floor.proc.poll() is None
    finally:
        cluster.stop()
