"""The relay end to end: real balancer and backend processes on 127.0.0.1."""

from __future__ import annotations

import errno
import itertools
import json
import os
import random
import re
import signal
import socket
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import (
    Cluster,
    Process,
    balancer_cmd,
    descriptors,
    exchange,
    free_port,
    read_log,
    served_by,
    wait_for_log,
    wait_until,
)
from support.clients import MIB, echo_transfer
from support.config import service


def test_parallel_large_echo_with_half_close(any_cluster: Cluster) -> None:
    cluster = any_cluster
    backends = [cluster.backend("echo") for _ in range(3)]
    _, port = cluster.balancer(*[f"--backend=127.0.0.1:{p}" for p in backends])
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: echo_transfer(port, 16 * MIB, i), range(16)))
    for sent, got in results:
        assert sent == got
    assert len({sent for sent, _ in results}) == 16


def test_round_robin_exact_shares(any_cluster: Cluster) -> None:
    cluster = any_cluster
    backends = [cluster.backend() for _ in range(3)]
    _, port = cluster.balancer(
        "--algorithm", "round_robin", *[f"--backend=127.0.0.1:{p}" for p in backends]
    )
    counts = Counter(served_by(exchange(port)) for _ in range(300))
    assert counts == {p: 100 for p in backends}


def test_weighted_round_robin_exact_shares(any_cluster: Cluster) -> None:
    cluster = any_cluster
    backends = [cluster.backend() for _ in range(3)]
    flags = [
        f"--backend=127.0.0.1:{p},weight={w}" for p, w in zip(backends, (1, 2, 3), strict=True)
    ]
    _, port = cluster.balancer("--algorithm", "round_robin", *flags)
    order = [served_by(exchange(port)) for _ in range(600)]
    assert Counter(order) == {backends[0]: 100, backends[1]: 200, backends[2]: 300}
    # Smooth: interleaved, not in bursts; the heaviest never takes more than two in a row.
    assert max(len(list(run)) for _, run in itertools.groupby(order)) <= 2


def http_get(sock: socket.socket) -> bytes:
    sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, "connection closed before a response"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(
            line.split(b":")[1]
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
    )
    while len(body) < length:
        body += sock.recv(4096)
    return body


def test_least_connections_spreads_held_connections(any_cluster: Cluster) -> None:
    cluster = any_cluster
    backends = [cluster.backend("http") for _ in range(3)]
    _, port = cluster.balancer(
        "--algorithm", "least_connections", *[f"--backend=127.0.0.1:{p}" for p in backends]
    )
    held = []
    try:
        for _ in range(30):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            held.append(s)
            served_by(http_get(s))  # the connection is established through the balancer
        counts = Counter(served_by(http_get(s)) for s in held)
        assert counts == {p: 10 for p in backends}
    finally:
        for s in held:
            s.close()


def test_failed_connect_is_retried_on_another_backend(any_cluster: Cluster) -> None:
    cluster = any_cluster
    live = [cluster.backend() for _ in range(2)]
    dead = cluster.backend()
    cluster.backend_process(dead).stop()
    flags = [f"--backend=127.0.0.1:{p}" for p in (*live, dead)]
    _, port = cluster.balancer("--algorithm", "round_robin", *flags)
    answers = [served_by(exchange(port)) for _ in range(30)]
    assert set(answers) == set(live)
    log = wait_for_log(
        cluster.tmp / "lb.log", rf"event down .*backend=127\.0\.0\.1:{dead} .*connection refused"
    )
    assert log


def test_no_reachable_backend_sends_message_and_closes(any_cluster: Cluster) -> None:
    cluster = any_cluster
    dead = cluster.backend()
    cluster.backend_process(dead).stop()
    # A lone backend is never ejected passively by default, and with too few backends up the
    # service panics and tries it anyway: both are turned off here, to see no_backend.
    keys = (
        'no_backend_message = "503 Service Unavailable\\n"\n'
        "max_ejection_percent = 100\npanic = false"
    )
    port = free_port()
    cluster.balancer(
        "--config", str(cluster.config(service("web", port, [dead], keys, checks=False)))
    )
    assert exchange(port) == b"503 Service Unavailable\n"
    log = cluster.tmp / "lb.log"
    wait_for_log(log, r"termination=connect_failed")
    # The backend is now ejected (with workers, once the supervisor's word has reached the
    # worker that takes the next client), so clients find no eligible backend at all.
    wait_for_log(log, rf"event down .*backend=127\.0\.0\.1:{dead} .*ejected")

    def refused_without_trying() -> bool:
        assert exchange(port) == b"503 Service Unavailable\n"
        return "termination=no_backend" in read_log(log)

    wait_until(refused_without_trying, what="a client refused with no eligible backend")


def test_idle_timeout_ends_connection(any_cluster: Cluster) -> None:
    cluster = any_cluster
    backend = cluster.backend("echo")
    _, port = cluster.balancer(f"--backend=127.0.0.1:{backend}", "--idle-timeout", "300ms")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"ping")
        assert s.recv(100) == b"ping"
        assert s.recv(100) == b""  # closed by the balancer after 300 ms of silence
    wait_for_log(
        cluster.tmp / "lb.log",
        r"bytes_in=4 bytes_out=4 retries=0 failures=- termination=idle_timeout",
    )


def test_access_log_fields_json(any_cluster: Cluster) -> None:
    cluster = any_cluster
    backend = cluster.backend()
    _, port = cluster.balancer(f"--backend=127.0.0.1:{backend}", "--log-format", "json")
    assert served_by(exchange(port, b"hello")) == backend

    line = wait_for_log(cluster.tmp / "lb.log", r'\{"time".*"type":"access".*\}').group(0)
    record = json.loads(line)
    assert record["backend"] == f"127.0.0.1:{backend}"
    assert record["bytes_in"] == 5
    assert record["bytes_out"] == len(f"Hello from Server {backend}!")
    assert record["termination"] == "backend_closed"
    assert record["retries"] == 0
    assert record["connect_ms"] >= 0 and record["duration_ms"] >= record["connect_ms"]
    assert set(record) >= {"time", "service", "client", "backend", "connect_ms", "duration_ms"}


def test_access_log_fields_text(any_cluster: Cluster) -> None:
    # The line of a connection without a failure is written by the compiled data plane when
    # it serves the service, and by Python otherwise: the same fields, in the same order.
    cluster = any_cluster
    backend = cluster.backend()
    _, port = cluster.balancer(f"--backend=127.0.0.1:{backend}")
    for _ in range(3):
        assert served_by(exchange(port, b"hello")) == backend
    answer = len(f"Hello from Server {backend}!")

    def access_lines() -> list[str]:
        lines = [
            line for line in read_log(cluster.tmp / "lb.log").splitlines() if " access " in line
        ]
        return lines if len(lines) >= 3 else []

    lines = wait_until(access_lines, 10, "three access lines")
    pattern = (
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} access service=\S+ client=127\.0\.0\.1:\d+ "
        rf"backend=127\.0\.0\.1:{backend} connect_ms=\d+\.\d{{3}} duration_ms=\d+\.\d{{3}} "
        rf"bytes_in=5 bytes_out={answer} retries=0 failures=- termination=backend_closed"
    )
    for line in lines:
        assert re.fullmatch(pattern, line), line


def test_sigterm_drains_open_connection(any_cluster: Cluster) -> None:
    cluster = any_cluster
    backend = cluster.backend("echo")
    proc, port = cluster.balancer(f"--backend=127.0.0.1:{backend}")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"before")
        assert s.recv(100) == b"before"
        proc.signal(15)
        wait_for_log(cluster.tmp / "lb.log", r"SIGTERM: stopping, 1 connections open")
        s.sendall(b"during")
        assert s.recv(100) == b"during"  # still relayed while draining
        s.shutdown(socket.SHUT_WR)
        assert s.recv(100) == b""
    assert proc.wait() == 0
    wait_for_log(cluster.tmp / "lb.log", r"event stop")


def test_reload_applies_grace_and_service_limit(cluster: Cluster) -> None:
    backend = cluster.backend("echo")
    port = free_port()
    log = cluster.tmp / "lb.log"

    def write(limit: int, grace: str) -> Path:
        web = service("web", port, [backend], f"max_connections = {limit}")
        return cluster.config(web, top=f'grace = "{grace}"')

    config = write(1, "60s")
    proc, _ = cluster.balancer("--config", str(config))
    first = socket.create_connection(("127.0.0.1", port), timeout=10)
    second = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        first.sendall(b"1")
        assert first.recv(10) == b"1"
        second.sendall(b"2")
        wait_for_log(log, r"accept_paused service=web .*max_connections 1 reached")
        # A higher limit lets the waiting client in at once, not when the first one leaves.
        write(5, "1s")
        proc.signal(signal.SIGHUP)
        wait_for_log(log, r"event reload ")
        assert second.recv(10) == b"2"
        # SIGTERM waits the grace of the config now in force: 1 s, not 60.
        proc.signal(signal.SIGTERM)
        wait_for_log(log, r"SIGTERM: stopping, 2 connections open, grace 1s")
        assert proc.wait(timeout=15) == 0
    finally:
        first.close()
        second.close()


def test_reload_renames_and_swaps_services_on_their_ports(cluster: Cluster) -> None:
    h1, h2, echo = cluster.backend(), cluster.backend(), cluster.backend("echo")
    p1, p2 = free_port(), free_port()
    log = cluster.tmp / "lb.log"
    config = cluster.tmp / "lb.toml"

    def write(*services: tuple[str, int, int]) -> None:
        cluster.config(*(service(name, port, [backend]) for name, port, backend in services))

    def reload(count: int) -> None:
        proc.signal(signal.SIGHUP)
        wait_until(lambda: len(re.findall(r"event reload", read_log(log))) == count, 10)
        assert "reload_failed" not in read_log(log)

    write(("web", p1, echo), ("other", p2, h2))
    proc, _ = cluster.balancer("--config", str(config))
    with socket.create_connection(("127.0.0.1", p1), timeout=10) as held:
        held.sendall(b"a")
        assert held.recv(10) == b"a"
        # Two services trade their addresses: each takes over the other's listener.
        write(("web", p2, h1), ("other", p1, h2))
        reload(1)
        assert served_by(exchange(p1)) == h2
        assert served_by(exchange(p2)) == h1
        # A service renamed on the same address: the new name takes it over at once.
        write(("www", p2, h1), ("other", p1, h2))
        reload(2)
        assert served_by(exchange(p2)) == h1
        wait_for_log(log, r"service web removed by reload")
        held.sendall(b"b")  # opened before both reloads, on the old service: still relayed
        assert held.recv(10) == b"b"


def test_error_names_tell_a_connect_timeout_from_a_dropped_connection() -> None:
    from balancer.core.errors import describe_error

    assert describe_error(TimeoutError()) == "connect timeout"  # the balancer's own timer
    dropped = TimeoutError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT))  # the kernel's
    assert describe_error(dropped) == os.strerror(errno.ETIMEDOUT).lower()
    assert (
        describe_error(ConnectionResetError(errno.ECONNRESET, "reset"))
        == os.strerror(errno.ECONNRESET).lower()
    )
    assert describe_error(None) == "closed"


FLAKY_ALGORITHM = """
class Flaky:
    # Round robin, but every second choice raises (as a user's algorithm with a bug might).
    def __init__(self):
        self.backends, self.calls = [], 0
    def update(self, backends):
        self.backends = list(backends)
    def candidates(self, client):
        self.calls += 1
        if self.calls % 2 == 0:
            raise RuntimeError(f"choice {self.calls} went wrong")
        yield from self.backends
"""


def test_algorithm_that_raises_refuses_that_client_and_serves_the_next(tmp_path: Path) -> None:
    (tmp_path / "flaky.py").write_text(FLAKY_ALGORITHM)
    paths = [str(tmp_path), os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    cluster = Cluster(tmp_path)
    try:
        hello = cluster.backend()
        log = tmp_path / "lb.log"
        args = ["run", "--listen", "127.0.0.1:0", f"--backend=127.0.0.1:{hello}"]
        args += ["--algorithm", "flaky.Flaky", "--no-health-check", "--log-file", str(log)]
        proc = Process(balancer_cmd(*args), env=env)
        cluster.processes.append(proc)
        port = int(proc.expect(r"listening on 127\.0\.0\.1:(\d+)").group(1))
        answers = [exchange(port) for _ in range(4)]
        assert [served_by(a) for a in answers[::2]] == [hello, hello]
        assert answers[1::2] == [b"", b""]  # (refused as when no backend is left)
        # (each refused session ends once its client has closed, just after the exchange)
        wait_until(
            lambda: read_log(log).count("termination=no_backend") == 2, what="two access lines"
        )
        text = read_log(log)
        assert text.count("event algorithm_failed") == 2, text
        assert "RuntimeError: choice 4 went wrong" in text
        assert text.count("Traceback") == 1  # (the first time only)
        # Nothing is left waiting: SIGTERM finds no connection open and exits at once.
        proc.signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert "stopping, 0 connections open" in read_log(log)
    finally:
        cluster.stop()


def slow_echo(port: int, payload: bytes, pid: int) -> tuple[bytes, int]:
    """Send `payload` through the balancer at `port` to an echo backend and read it back
    slowly; what came back, and the most pipes the balancer (`pid`) held meanwhile."""
    most = 0
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)

        def send() -> None:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        while chunk := s.recv(16384):
            received += chunk
            most = max(most, descriptors(pid, "pipe"))
        sender.join(20)
    return bytes(received), most


@pytest.mark.parametrize("workers", [1, 2], ids=["1-worker", "2-workers"])
def test_bulk_transfer_splices_through_pipes_unless_turned_off(
    tmp_path: Path, workers: int
) -> None:
    # 8 MiB echoed and read back slowly, twice: with splicing (the default) the balancer holds
    # pipes while the bytes flow, and leaves none behind but a few empty ones for the next
    # transfer; with BALANCER_SPLICE=off it holds none. Either way nothing is lost.
    for setting in ("on", "off"):
        env = {**os.environ, "BALANCER_SPLICE": setting}
        cluster = Cluster(tmp_path)
        try:
            backend = cluster.backend("echo")
            log = tmp_path / f"lb-{setting}.log"
            args = ["run", "--listen", "127.0.0.1:0", f"--backend=127.0.0.1:{backend}"]
            args += ["--workers", str(workers)]
            proc = Process(balancer_cmd(*args, "--log-file", str(log)), env=env)
            cluster.processes.append(proc)
            port = int(proc.expect(r"listening on 127\.0\.0\.1:(\d+)").group(1))
            pid = proc.proc.pid
            before = descriptors(pid, "pipe")  # (standard output and the like)
            ended = r"bytes_in=8388608 bytes_out=8388608 .*termination=client_closed"
            kept = []
            for seed in (1, 2):
                payload = random.Random(seed).randbytes(8 * MIB)
                received, most = slow_echo(port, payload, pid)
                assert received == payload, f"{len(payload) - len(received)} bytes lost or wrong"
                wait_until(lambda: len(re.findall(ended, read_log(log))) == seed)  # noqa: B023
                kept.append(descriptors(pid, "pipe"))
                if setting == "on":
                    assert most > before, "no pipe while 8 MiB went through"
                else:
                    assert most == before, f"{most - before} pipes with BALANCER_SPLICE=off"
            # Each transfer leaves no pipe but those kept empty for the next: at most the two it
            # used at once (one each way), two descriptors each, in the process that served
            # it. With one process, the second takes those rather than new ones (or four would
            # be kept); with two, it may be the other worker's turn.
            assert all(before <= k <= before + 4 * workers for k in kept), kept
            pipes = r"and [1-9]\d* pipes" if setting == "on" else r"and 0 pipes"
            wait_for_log(log, pipes + " to splice bulk transfers through")
        finally:
            cluster.stop()
