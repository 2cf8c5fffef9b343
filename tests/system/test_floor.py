"""The harness's featureless reference relays, balancer.tools.floors.floor (Python) and floor.c
(C): they must relay correctly, or their figures mean nothing."""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
from conftest import PYTHON, Cluster, Process, exchange, require_tool

from balancer.tools.floors.build import build_cfloor
from balancer.tools.procfs import tree_cpu_seconds

MIB = 1024 * 1024


def floor_command(which: str, tmp_path: Path) -> list[str]:
    if which == "python":
        return [PYTHON, "-m", "balancer.tools.floors.floor"]
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


@pytest.mark.timeout(90)
@pytest.mark.parametrize("which", ["python", "c"])
def test_floor_closes_a_paused_side_that_is_reset(which: str, tmp_path: Path) -> None:
    # A client whose backend stopped reading is paused (not watched for input); epoll still
    # reports its reset, level-triggered, whatever the mask. The relay must close the pair on
    # it rather than be woken for it again and again (it once spun at a full core here).
    command = floor_command(which, tmp_path)
    cluster = Cluster(tmp_path)
    with socket.create_server(("127.0.0.1", 0)) as backend:
        backend.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # (inherited on accept)
        floor = Process([*command, "0", str(backend.getsockname()[1])])
        cluster.processes.append(floor)
        try:
            port = int(floor.expect(r"floor listening on 127\.0\.0\.1:(\d+)").group(1))
            client = socket.create_connection(("127.0.0.1", port), timeout=10)
            backend.settimeout(10)
            upstream, _ = backend.accept()
            with upstream:
                upstream.settimeout(10)
                # Fill the backend's socket, then the relay's, then the client's: once a send
                # has waited a whole second, the relay holds bytes and reads the client no more.
                client.settimeout(1)
                sent = 0
                with pytest.raises(TimeoutError):
                    while sent < 256 * MIB:
                        sent += client.send(b"x" * 65536)
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()  # reset

                # Idle now, it should use next to no CPU over a second (a spin uses all of it).
                before = sum(tree_cpu_seconds(floor.proc.pid))
                time.sleep(1)
                used = sum(tree_cpu_seconds(floor.proc.pid)) - before
                assert used < 0.5, f"the relay used {used:.2f} s of CPU in 1 s while idle"

                # What it held for the backend still comes through, then its EOF.
                received = 0
                while chunk := upstream.recv(MIB):
                    received += len(chunk)
                assert 0 < received <= sent
        finally:
            cluster.stop()
