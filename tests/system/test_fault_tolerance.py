"""Fault tolerance with real processes: killed, flapping, hanging and silent backends."""

from __future__ import annotations

import re
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from conftest import (
    Cluster,
    Process,
    balancer_cmd,
    exchange,
    free_port,
    read_log,
    served_by,
    wait_for_log,
    wait_until,
)
from support.clients import call
from support.config import service


def write_config(cluster: Cluster, backends: list[int], extra: str = "", health: str = "") -> Path:
    """One round-robin service `web` over `backends`, with `extra` keys and checks."""
    web = service("web", free_port(), backends, 'algorithm = "round_robin"\n' + extra)
    return cluster.config(web + "[services.health_check]\n" + health)


class Load:
    """`balancer client` running for a while: 10 concurrent clients, short connections."""

    def __init__(self, port: int, seconds: float, concurrency: int = 10) -> None:
        self.proc = Process(
            balancer_cmd(
                "client",
                "--protocol",
                "line",
                "--target",
                f"127.0.0.1:{port}",
                "--concurrency",
                str(concurrency),
                "--duration",
                f"{seconds}s",
            )
        )

    def result(self, timeout: float) -> tuple[int, int, str]:
        self.proc.wait(timeout=timeout)
        self.proc.stop()
        text = self.proc.text
        match = re.search(r"succeeded: (\d+)\s+failed: (\d+)", text)
        assert match, text
        return int(match.group(1)), int(match.group(2)), text


def event_time(line: str) -> float:
    stamp = line.split()[0]
    base, millis = stamp.split(".")
    return time.mktime(time.strptime(base, "%Y-%m-%dT%H:%M:%S")) + int(millis) / 1000


def test_sigkill_under_load_loses_no_client(any_cluster: Cluster) -> None:
    cluster = any_cluster
    backends = [cluster.backend() for _ in range(3)]
    victim = backends[1]
    config = write_config(
        cluster,
        backends,
        extra='retry_replay = true\nejection_time = "2s"',
        health='interval = "1s"\nrise = 2\nfall = 3',
    )
    _, port = cluster.balancer("--config", str(config))
    log = cluster.tmp / "lb.log"
    load = Load(port, seconds=9)
    wait_for_log(log, rf"backend=127\.0\.0\.1:{victim} .*termination=backend_closed")
    killed_at = time.time()
    cluster.backend_process(victim).signal(signal.SIGKILL)
    down = wait_for_log(log, rf".* event down .*backend=127\.0\.0\.1:{victim} .*", timeout=5)
    assert event_time(down.group(0)) - killed_at < 1.0, down.group(0)
    succeeded, failed, text = load.result(timeout=30)
    assert failed == 0, text
    assert succeeded > 100, text

    # Restarted (the 2s ejection long over), it serves again within rise x interval (2 x 1s).
    restart = Process(balancer_cmd("backend", str(victim)))
    cluster.processes.append(restart)
    restart.expect("listening")
    restarted_at = time.time()
    up = wait_for_log(log, rf".* event up .*backend=127\.0\.0\.1:{victim} .*", timeout=10)
    assert event_time(up.group(0)) - restarted_at <= 2 * 1.0 * 1.1 + 0.5, up.group(0)
    assert victim in {served_by(exchange(port)) for _ in range(6)}


def test_sigkill_without_traffic_is_found_by_checks(any_cluster: Cluster) -> None:
    cluster = any_cluster
    backends = [cluster.backend() for _ in range(3)]
    config = write_config(cluster, backends, health='interval = "500ms"\nfall = 3')
    cluster.balancer("--config", str(config))
    log = cluster.tmp / "lb.log"
    wait_until(lambda: len(re.findall(r"event ", read_log(log))) >= 2, 5)
    killed_at = time.time()
    cluster.backend_process(backends[0]).signal(signal.SIGKILL)
    down = wait_for_log(log, rf".* event down .*backend=127\.0\.0\.1:{backends[0]} .*", timeout=5)
    # interval x fall, plus the check timeout and jitter
    assert event_time(down.group(0)) - killed_at <= 0.5 * 1.1 * 3 + 1.0, down.group(0)
    assert "3 consecutive tcp check failures, connection refused" in down.group(0)


def test_flapping_backend_loses_no_client(any_cluster: Cluster) -> None:
    cluster = any_cluster
    backends = [cluster.backend() for _ in range(3)]
    flapper = backends[2]
    config = write_config(cluster, backends, extra="retry_replay = true", health='interval = "1s"')
    _, port = cluster.balancer("--config", str(config))
    load = Load(port, seconds=22)
    stop = threading.Event()

    def flap() -> None:
        proc = cluster.backend_process(flapper)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not stop.is_set():
            stop.wait(1.0)
            proc.signal(signal.SIGKILL)
            proc.wait()
            stop.wait(1.0)
            proc = Process(balancer_cmd("backend", str(flapper)))
            cluster.processes.append(proc)
            proc.expect("listening")

    flapping = threading.Thread(target=flap)
    flapping.start()
    try:
        succeeded, failed, text = load.result(timeout=60)
    finally:
        stop.set()
        flapping.join(timeout=30)
    assert failed == 0, text
    assert succeeded > 100, text
    downs = re.findall(
        rf"event down .*backend=127\.0\.0\.1:{flapper}", read_log(cluster.tmp / "lb.log")
    )
    assert downs, "the flapping backend was never taken out"


def test_http_check_marks_silent_backend_down(any_cluster: Cluster) -> None:
    cluster = any_cluster
    good = cluster.backend("http")
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # accepts (in the kernel) but never answers
    silent_port = silent.getsockname()[1]
    try:
        config = write_config(
            cluster,
            [good, silent_port],
            health='type = "http"\npath = "/health"\n'
            'interval = "500ms"\ntimeout = "300ms"\nfall = 2',
        )
        cluster.balancer("--config", str(config))
        line = wait_for_log(
            cluster.tmp / "lb.log",
            rf"event down .*backend=127\.0\.0\.1:{silent_port} .*",
            timeout=10,
        ).group(0)
        assert "2 consecutive http check failures, no answer within 0.3s" in line
        assert f"127.0.0.1:{good} down" not in read_log(cluster.tmp / "lb.log")
    finally:
        silent.close()


def test_checks_send_the_proxy_header_that_traffic_sends(cluster: Cluster) -> None:
    # A backend that insists on the PROXY header gets one with every check too (as in HAProxy,
    # where a server's send-proxy also covers its checks): v1 UNKNOWN or v2 LOCAL, which say
    # the connection is the balancer's own. Discovered backends start down and only a passed
    # check brings one up, so each "up" proves checks pass with the header the service sends;
    # the listed backend proves a per-backend send_proxy reaches checks too.
    backend = cluster.backend("http", "--accept-proxy")
    log = cluster.tmp / "lb.log"
    discover = f'discover = {{ host = "127.0.0.1", ports = "{backend}-{backend}" }}\n'
    listed = f'[{{ address = "127.0.0.1:{backend}", send_proxy = "v1" }}]'
    check = 'type = "http"\npath = "/health"\ninterval = "200ms"\n'
    config = cluster.config(
        *(
            service(name, free_port(), backends, keys, checks=check + more)
            for name, backends, keys, more in [
                ("one", "[]", f'send_proxy = "v1"\n{discover}', "rise = 3\n"),
                ("two", "[]", f'send_proxy = "v2"\n{discover}', "rise = 3\n"),
                ("listed", listed, "", "fall = 1\n"),
            ]
        )
    )
    cluster.balancer("--config", str(config))
    for name in ("one", "two"):
        wait_for_log(log, rf"event up service={name} backend=127\.0\.0\.1:{backend} ", timeout=10)
    # The listed service's first check came within 0.2 s of the start, before the third
    # check of the others (0.36 s at the soonest), and one failure would have taken its
    # backend down.
    text = read_log(log)
    assert "event down" not in text, text
    assert "bad PROXY header" not in cluster.backend_process(backend).text


def test_hanging_connect_costs_only_the_connect_timeout(any_cluster: Cluster) -> None:
    cluster = any_cluster
    good = [cluster.backend() for _ in range(2)]
    hanging = socket.socket()
    hanging.bind(("127.0.0.1", 0))
    hanging.listen(0)
    hang_port = hanging.getsockname()[1]
    fillers = []
    try:
        # Fill the accept queue: further SYNs are dropped and connects to it hang.
        for _ in range(3):
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex(("127.0.0.1", hang_port))
            fillers.append(f)
        config = write_config(
            cluster,
            [*good, hang_port],
            extra='max_fails = 1\n[services.timeouts]\nconnect = "500ms"',
            health="enabled = false",
        )
        _, port = cluster.balancer("--config", str(config))
        timings = []
        for _ in range(9):
            begin = time.monotonic()
            assert served_by(exchange(port)) in good
            timings.append(time.monotonic() - begin)
        # One client waited for the connect timeout, then was served elsewhere; the
        # backend was ejected, so no one else waited.
        slow = [t for t in timings if t >= 0.45]
        assert len(slow) == 1, timings
        assert slow[0] < 1.5, timings
        line = wait_for_log(
            cluster.tmp / "lb.log", rf"event down .*backend=127\.0\.0\.1:{hang_port} .*"
        )
        assert "connect timeout" in line.group(0)
    finally:
        for f in fillers:
            f.close()
        hanging.close()


def test_reload_keeps_ejections_and_slow_starts(any_cluster: Cluster) -> None:
    # A reload that changes health settings carries on what health is doing: an ejection
    # still ends, a slow start still ramps to the full weight, and a backend held down only
    # by checks that are turned off comes back.
    cluster = any_cluster
    good, late = cluster.backend(), free_port()
    admin = free_port()
    config = cluster.tmp / "lb.toml"
    log = cluster.tmp / "lb.log"

    def write(health: str, max_fails: int) -> None:
        keys = f'ejection_time = "1s"\nslow_start = "2s"\nmax_fails = {max_fails}'
        cluster.config(service("web", port, [good, late], keys, checks=health), admin=admin)

    def reload(count: int) -> None:
        proc.signal(signal.SIGHUP)
        wait_until(lambda: len(re.findall(r"event reload ", read_log(log))) == count, 10)

    def late_backend() -> dict[str, object]:
        backends = call(admin, "GET", "/api/backends")[1]
        return next(b for b in backends if b["address"] == f"127.0.0.1:{late}")

    port = free_port()
    write('interval = "300ms"\nfall = 1', 3)
    proc, _ = cluster.balancer("--config", str(config))
    wait_for_log(log, rf"event down .*127\.0\.0\.1:{late} down: 1 consecutive tcp check failure")
    write("enabled = false", 3)
    reload(1)
    wait_for_log(log, rf"event up .*127\.0\.0\.1:{late} up: health checks turned off")

    # Nothing listens there yet: a refused connect ejects it (the client is served anyway).
    wait_until(lambda: exchange(port) != b"" and "ejected for 1s" in read_log(log), 10)
    listening = Process(balancer_cmd("backend", str(late)))
    cluster.processes.append(listening)
    listening.expect("listening")
    write("enabled = false", 4)
    reload(2)
    wait_for_log(log, rf"event up .*127\.0\.0\.1:{late} up: ejection of 1s over, slow start")
    write("enabled = false", 5)
    reload(3)  # (in the middle of the slow start)
    wait_until(lambda: late_backend()["effective_weight"] == 1, 10, "the slow start's end")
    assert late in {served_by(exchange(port)) for _ in range(6)}


def test_discovered_server_is_up_at_its_first_passed_check(cluster: Cluster) -> None:
    # A port found by `discover` whose server fails its first checks (it is still starting)
    # takes traffic at its first passed check, not after `rise` of them.
    checker = socket.socket()
    checker.bind(("127.0.0.1", 0))
    checker.listen(64)
    late = checker.getsockname()[1]
    checks, ready = threading.Semaphore(0), threading.Event()

    def answer() -> None:
        while True:
            try:
                conn, _ = checker.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                status = b"200 OK" if ready.is_set() else b"503 Starting"
                conn.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n")
            checks.release()

    threading.Thread(target=answer, daemon=True).start()
    port, log = free_port(), cluster.tmp / "lb.log"
    discover = f'discover = {{ host = "127.0.0.1", ports = "{late}-{late}" }}'
    health = 'type = "http"\ninterval = "200ms"\nrise = 3'
    config = cluster.config(service("web", port, (), discover, checks=health))
    try:
        cluster.balancer("--config", str(config))
        for _ in range(2):
            assert checks.acquire(timeout=10), "no check came"
        ready.set()
        line = wait_for_log(log, rf"event up .*127\.0\.0\.1:{late} up: .*").group(0)
        assert line.endswith("up: http check passed"), line
    finally:
        checker.close()


def test_slow_start_takes_its_whole_time_and_panic_says_why_it_ends(cluster: Cluster) -> None:
    good, late, admin = cluster.backend(), free_port(), free_port()
    dead, dead2, panic_port, port = free_port(), free_port(), free_port(), free_port()
    log = cluster.tmp / "lb.log"
    web = service(
        "web", port, [good, late], 'ejection_time = "500ms"\nslow_start = "2s"', checks=False
    )
    lost = service(
        "lost",
        panic_port,
        [dead, dead2],
        'max_ejection_percent = 100\nejection_time = "60s"',
        checks=False,
    )
    config = cluster.config(web, lost, admin=admin)
    cluster.balancer("--config", str(config))

    # Ejected by a refused connect, then listening: it returns at a tenth of its weight and
    # reaches the whole weight slow_start (2 s) after its return, not before.
    wait_until(lambda: exchange(port) != b"" and "ejected for 0.5s" in read_log(log), 10)
    listening = Process(balancer_cmd("backend", str(late)))
    cluster.processes.append(listening)
    listening.expect("listening")
    up = wait_for_log(log, rf".* event up .*127\.0\.0\.1:{late} up: .*slow start over 2s").group(0)

    def weight() -> float:
        backends = call(admin, "GET", "/api/backends?service=web")[1]
        return float(
            next(b for b in backends if b["address"].endswith(f":{late}"))["effective_weight"]
        )

    wait_until(lambda: weight() == 1.0, 10, "the whole weight")
    assert time.time() - event_time(up) >= 1.95, "slow start ended early"

    # A panic: both of lost's backends ejected by refused connects (every backend may be, here),
    # and the checks (off) hold them up, so it spreads over them. It ends when the operator
    # drains the last one: it says so.
    assert exchange(panic_port) == b""
    wait_for_log(log, r"event panic service=lost .*0 of 2 enabled backends up")
    for backend in (dead, dead2):
        address = f"/api/backends/lost/127.0.0.1:{backend}"
        assert call(admin, "PATCH", address, {"state": "drain"})[0] == 200
    ended = wait_for_log(log, r"event panic_over service=lost .*").group(0)
    assert ended.endswith("panic over: no backend is enabled"), ended


@pytest.mark.timeout(60)
@pytest.mark.parametrize("change", ["drain", "remove"])
def test_retry_skips_a_backend_taken_out_while_connecting(cluster: Cluster, change: str) -> None:
    # A client waits on a connect that hangs; meanwhile the operator drains or removes the
    # backend its retry would have gone to next. The retry goes to one still in rotation.
    hanging = socket.socket()
    hanging.bind(("127.0.0.1", 0))
    hanging.listen(0)
    hang_port = hanging.getsockname()[1]
    filler = socket.socket()
    filler.setblocking(False)
    filler.connect_ex(("127.0.0.1", hang_port))  # (the accept queue is full: SYNs are dropped)
    taken, kept = cluster.backend(), cluster.backend()
    try:
        port, admin = cluster.with_admin(
            [hang_port, taken, kept], "--connect-timeout", "2s", "--no-health-check"
        )

        def active(backend_port: int) -> int:
            address = f"127.0.0.1:{backend_port}"
            backends = call(admin, "GET", "/api/backends")[1]
            return int(next(b["active"] for b in backends if b["address"] == address))

        answer: list[bytes] = []
        client = threading.Thread(target=lambda: answer.append(exchange(port)), daemon=True)
        client.start()  # round robin: the first pick is the first backend, the hanging one
        wait_until(lambda: active(hang_port) == 1, timeout=10, what="a connect to the hanging one")
        path = f"/api/backends/default/127.0.0.1:{taken}"
        if change == "drain":
            status, _ = call(admin, "PATCH", path, {"state": "drain"})
        else:
            status, _ = call(admin, "DELETE", path)
        assert status == 200
        client.join(timeout=20)
        assert answer and served_by(answer[0]) == kept, answer
        line = wait_for_log(cluster.tmp / "lb.log", r"access .*retries=1 .*").group(0)
        assert f"backend=127.0.0.1:{kept} " in line, line
    finally:
        filler.close()
        hanging.close()
