"""Several worker processes: a killed worker loses only its own connections and is replaced."""

from __future__ import annotations

import os
import re
import signal
import socket

from conftest import Cluster, exchange, read_log, served_by, wait_for_log


def alive(s: socket.socket) -> bool:
    try:
        s.sendall(b"ping")
        return s.recv(10) == b"ping"
    except OSError:
        return False


def test_killed_worker_is_replaced_and_others_keep_their_connections(cluster: Cluster) -> None:
    echo = cluster.backend("echo")
    hello = cluster.backend()
    _, port = cluster.balancer(
        "--workers", "2", f"--backend=127.0.0.1:{echo}", f"--backend=127.0.0.1:{hello},weight=1"
    )
    log = cluster.tmp / "lb.log"
    pids = {
        int(m.group(1)): int(m.group(2))
        for m in re.finditer(r"worker (\d) started, pid (\d+)", read_log(log))
    }
    assert sorted(pids) == [0, 1]
    held = []
    try:
        while len(held) < 20:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            if alive(s):
                held.append(s)  # relayed to the echo backend
            else:
                s.close()
        os.kill(pids[0], signal.SIGKILL)
        wait_for_log(log, r"event worker_died .*worker 0 .*signal 9; restarting")
        wait_for_log(log, rf"event worker .*worker 0 started, pid (?!{pids[0]}\b)\d+")
        survivors = [s for s in held if alive(s)]
        # The kernel spread the connections over both workers; only worker 0's are gone.
        assert 0 < len(survivors) < len(held)
    finally:
        for s in held:
            s.close()
    # New connections are served as before: round robin over both backends.
    answers = [exchange(port, half_close=True) for _ in range(10)]
    assert answers.count(b"hi") == 5
    assert {served_by(a) for a in answers if a != b"hi"} == {hello}
