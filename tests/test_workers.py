"""Several worker processes: a killed worker loses only its own connections and is replaced."""

from __future__ import annotations

import os
import re
import selectors
import signal
import socket

from conftest import Cluster, exchange, free_port, read_log, served_by, wait_for_log, wait_until
from test_admin import call


def alive(s: socket.socket) -> bool:
    try:
        s.sendall(b"ping")
        return s.recv(10) == b"ping"
    except OSError:
        return False


def test_killed_worker_is_replaced_and_others_keep_their_connections(cluster: Cluster) -> None:
    echo = cluster.backend("echo")
    hello = cluster.backend()
    admin = free_port()
    _, port = cluster.balancer(
        "--workers", "2", f"--backend=127.0.0.1:{echo}", f"--backend=127.0.0.1:{hello},weight=1",
        "--admin", f"127.0.0.1:{admin}",
    )  # fmt: skip
    log = cluster.tmp / "lb.log"
    pids = {
        int(m.group(1)): int(m.group(2))
        for m in re.finditer(r"worker (\d) started, pid (\d+)", read_log(log))
    }
    assert sorted(pids) == [0, 1]
    held = []
    try:
        opened = 0
        while len(held) < 20:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            opened += 1
            if alive(s):
                held.append(s)  # relayed to the echo backend
            else:
                s.close()

        # The API sums the workers: 20 open, and every connection in the total.
        def summed() -> bool:
            [service] = call(admin, "GET", "/api/services")[1]
            return bool(service["active"] == 20 and service["total"] == opened)

        wait_until(summed, what=f"20 open connections and {opened} in all")
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


def test_max_connections_counts_every_worker(cluster: Cluster) -> None:
    # A backend's max_connections holds over both workers with round robin (which does not
    # otherwise look at load), and a slot that one worker frees goes to a client queued in the
    # other. The kernel spreads the clients over the workers: with eight waiters, some are in
    # the holder's worker and some (but for one chance in 256) in the other.
    echo = cluster.backend("echo")
    port = free_port()
    path = cluster.tmp / "lb.toml"
    path.write_text(
        f'[log]\nfile = "{cluster.tmp / "lb.log"}"\n'
        f'[[services]]\nname = "capped"\nlisten = "127.0.0.1:{port}"\n'
        f'backends = [{{ address = "127.0.0.1:{echo}", max_connections = 1 }}]\n'
        'queue_timeout = "60s"\n[services.health_check]\nenabled = false\n'
    )
    cluster.balancer("--config", str(path), "--workers", "2")
    holder = socket.create_connection(("127.0.0.1", port), timeout=10)
    holder.sendall(b"h")
    assert holder.recv(10) == b"h"
    waiters = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(8)]
    served = [holder]
    try:
        with selectors.DefaultSelector() as answered:
            for i, w in enumerate(waiters):
                w.sendall(b"%d" % i)
                answered.register(w, selectors.EVENT_READ, i)
            assert answered.select(timeout=0.5) == [], "served past max_connections"
            for _ in waiters:
                served[-1].close()  # frees the one slot, in whichever worker held it
                ready = answered.select(timeout=15)
                assert len(ready) == 1, f"{len(ready)} clients served for one free slot"
                key, _ = ready[0]
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                assert sock.recv(10) == b"%d" % key.data
                answered.unregister(sock)
                served.append(sock)
                if len(served) <= len(waiters):
                    assert answered.select(timeout=0.3) == [], "served past max_connections"
    finally:
        for s in [*waiters, holder]:
            s.close()
