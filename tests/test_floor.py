"""balancer.floor, the harness's featureless reference relay: it must relay correctly, or its
figures mean nothing."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from pathlib import Path

import pytest
from conftest import PYTHON, Cluster, Process, exchange

MIB = 1024 * 1024


@pytest.mark.timeout(90)
def test_floor_relays_both_ways_with_backpressure(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    try:
        echo = cluster.backend("echo")
        hello = cluster.backend("hello")
        floor = Process([PYTHON, "-m", "balancer.floor", "0", str(echo), str(hello)])
        cluster.processes.append(floor)
        port = int(floor.expect(r"floor listening on 127\.0\.0\.1:(\d+)").group(1))

        # Round robin: the first connection goes to the echo backend. 8 MiB each way at once:
        # both sockets of the pair fill up, so the relay must keep and resend what they refuse.
        payload = os.urandom(8 * MIB)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
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
